"""The command line: `libvirt-pusher` / `python -m pusher`.

Exit status: 0 success; 1 a cycle or its delivery failed (`--once`, `--dry-run`);
2 the configuration is wrong (the message names the key).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from pusher import __version__, config
from pusher.agent import Agent, BuildInfo, own_samples
from pusher.collect import Collector, DeadlineCollector
from pusher.config import Config, ConfigError
from pusher.encode import exposition
from pusher.health import check_health
from pusher.sender import Sender
from pusher.series import Planner
from pusher.spool import Spool, SpoolError

__all__ = ["main"]

log = logging.getLogger("pusher")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="libvirt-pusher",
        description="Push libvirt domain stats, labelled with Nova instance data, "
        "to a Prometheus remote-write receiver such as Grafana Mimir.",
    )
    p.add_argument("-c", "--config", metavar="FILE", help="YAML config file (default: built-in)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--once",
        action="store_true",
        help="run one cycle, deliver it (and any backlog), exit 0 if delivered",
    )
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="print one cycle in Prometheus text format; push nothing",
    )
    mode.add_argument("--check-config", action="store_true", help="validate the config and exit")
    mode.add_argument(
        "--health",
        action="store_true",
        help="exit 0 if the running agent cycled recently and is delivering "
        "(reads buffer.path/health.json; for container healthchecks)",
    )
    p.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override log.level"
    )
    p.add_argument("--version", action="version", version=f"libvirt-pusher {__version__}")
    return p  # fmt: skip


def _setup_logging(level: str) -> None:
    # The agent's own loggers at the chosen level; libraries (urllib3…) at warnings only.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pusher").setLevel(getattr(logging, level.upper()))


def _summary(cfg: Config) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in sorted(cfg.external_labels.items()))
    return (
        f"libvirt {cfg.libvirt.uri}, every {cfg.collect.interval:g}s -> "
        f"{config.redact_url(cfg.remote_write.url) or '(no remote_write.url)'}"
        f"{' tenant ' + cfg.remote_write.tenant if cfg.remote_write.tenant else ''}; "
        f"spool {cfg.buffer.path}; external labels {labels}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config.load(args.config)
    except ConfigError as e:
        print(f"libvirt-pusher: config error: {e}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level or cfg.log.level)

    if args.check_config:
        if not cfg.remote_write.url:
            print("libvirt-pusher: config error: remote_write.url: required", file=sys.stderr)
            return 2
        print(f"config OK: {_summary(cfg)}")
        return 0
    if args.dry_run:
        return _dry_run(cfg)
    if args.health:
        healthy, why = check_health(cfg.buffer.path, time.time())
        print(("healthy: " if healthy else "unhealthy: ") + why)
        return 0 if healthy else 1
    if not cfg.remote_write.url:
        print("libvirt-pusher: config error: remote_write.url: required", file=sys.stderr)
        return 2
    try:
        spool = Spool(cfg.buffer.path, cfg.buffer.max_bytes, cfg.buffer.fsync)
    except SpoolError as e:
        print(f"libvirt-pusher: config error: {e}", file=sys.stderr)
        return 2
    sender = Sender(cfg.remote_write)
    agent = Agent(cfg, sender, spool)
    if args.once:
        return _once(agent, cfg)
    return _serve(agent, cfg)


def _dry_run(cfg: Config) -> int:
    """One cycle from the collector and the planner, printed; no spool, nothing sent."""
    collection = DeadlineCollector(
        Collector.from_config(cfg, use_events=False), cfg.collect.timeout
    )
    planner = Planner.from_config(cfg)
    try:
        snapshot = collection.collect()
        cycle = planner.cycle(snapshot, frozenset(collection.stuck), int(time.time() * 1000))
        own = own_samples([BuildInfo(), collection, planner.limits], planner.external)
        samples = cycle.all_samples() + own
    finally:
        collection.close()
    sys.stdout.write(exposition(samples))
    return 0 if snapshot is not None else 1


def _once(agent: Agent, cfg: Config) -> int:
    agent.run_cycle()
    deadline = time.monotonic() + max(cfg.shutdown_grace, cfg.remote_write.timeout)
    delivered = agent.drain_once(deadline)
    agent.shutdown(0)
    stats = agent.delivery.stats
    dropped = {r: n for r, n in stats.dropped.items() if n}
    rejected = {r: n for r, n in stats.rejected_samples.items() if n}
    if not delivered:
        log.error("delivery did not finish; the rest stays in the spool")
        return 1
    if dropped or rejected:
        log.error("samples dropped: %s; samples in rejected requests: %s", dropped, rejected)
        return 1
    if not agent.libvirt_up:
        return 1
    log.info("delivered %d sample(s)", stats.sent)
    return 0


def _serve(agent: Agent, cfg: Config) -> int:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("libvirt-pusher %s: %s", __version__, _summary(cfg))
    agent.run()
    return 0
