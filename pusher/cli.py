"""The command line: `libvirt-pusher` / `python -m pusher`.

Exit status: 0 success; 1 a cycle or its delivery failed (`--once`, `--dry-run`; with several
endpoints `--once` exits 0 only when every endpoint got everything); 2 the configuration is
wrong (the message names the key).
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
from pusher.agent import Agent, BuildInfo, configured_offset, own_samples
from pusher.catalog import Reporter
from pusher.collect import Collector, DeadlineCollector
from pusher.config import Config, ConfigError
from pusher.encode import exposition
from pusher.endpoint import EndpointLogFilter, open_spools
from pusher.health import check_health
from pusher.sender import Sender
from pusher.series import Planner
from pusher.spool import SpoolError

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


def _setup_logging(level: str, endpoints: int = 1) -> None:
    # The agent's own loggers at the chosen level; libraries (urllib3…) at warnings only.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pusher").setLevel(getattr(logging, level.upper()))
    if endpoints > 1:  # say which endpoint a delivery or spool line is about
        for handler in logging.getLogger().handlers:
            handler.addFilter(EndpointLogFilter())


def _summary(cfg: Config) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in sorted(cfg.external_labels.items()))
    several = len(cfg.endpoints) > 1
    targets = "; ".join(
        f"{rw.name + ': ' if several else ''}"
        f"{config.redact_url(rw.url) or '(no remote_write.url)'}"
        f"{' tenant ' + rw.tenant if rw.tenant else ''}"
        for rw in cfg.endpoints
    )
    spool = f"spools under {cfg.buffer.path}" if several else f"spool {cfg.buffer.path}"
    offset = configured_offset(cfg)
    return (
        f"libvirt {cfg.libvirt.uri}, every {cfg.collect.interval:g}s at +{offset:.3f}s -> "
        f"{targets}; "
        f"{spool}; external labels {labels}"
    )


def _missing_url(cfg: Config) -> bool:
    """A single `remote_write` without a URL (a list's entries must have one to load)."""
    if any(not rw.url for rw in cfg.endpoints):
        print("libvirt-pusher: config error: remote_write.url: required", file=sys.stderr)
        return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config.load(args.config)
    except ConfigError as e:
        print(f"libvirt-pusher: config error: {e}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level or cfg.log.level, len(cfg.endpoints))

    if args.check_config:
        if _missing_url(cfg):
            return 2
        print(f"config OK: {_summary(cfg)}")
        return 0
    if args.dry_run:
        return _dry_run(cfg)
    if args.health:
        healthy, why = check_health(cfg.buffer.path, time.time())
        print(("healthy: " if healthy else "unhealthy: ") + why)
        return 0 if healthy else 1
    if _missing_url(cfg):
        return 2
    try:
        spools = open_spools(cfg)
    except SpoolError as e:
        print(f"libvirt-pusher: config error: {e}", file=sys.stderr)
        return 2
    outputs = [(Sender(rw), spool) for rw, spool in zip(cfg.endpoints, spools, strict=True)]
    agent = Agent(cfg, outputs)
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
        reporters: list[Reporter] = [BuildInfo(), collection, planner.limits]
        if planner.relabeler is not None:
            reporters.append(planner.relabeler)
        planner.add_own(cycle, own_samples(reporters, planner.external))
        samples = cycle.all_samples()
    finally:
        collection.close()
    sys.stdout.write(exposition(samples))
    return 0 if snapshot is not None else 1


def _once(agent: Agent, cfg: Config) -> int:
    """One cycle, delivered with the backlog: 0 only when every endpoint got everything,
    nothing was dropped or rejected, and libvirt was read."""
    agent.run_cycle()
    timeout = max(rw.timeout for rw in cfg.endpoints)
    agent.drain_once(time.monotonic() + max(cfg.shutdown_grace, timeout))
    ok = agent.libvirt_up
    several = len(agent.endpoints) > 1
    for endpoint in agent.endpoints:
        who = f"endpoint {endpoint.name}: " if several else ""
        stats = endpoint.delivery.stats
        dropped = {r: n for r, n in stats.dropped.items() if n}
        rejected = {r: n for r, n in stats.rejected_samples.items() if n}
        if endpoint.pending():
            log.error("%sdelivery did not finish; the rest stays in the spool", who)
            ok = False
        elif dropped or rejected:
            log.error("%ssamples dropped: %s; samples in rejected requests: %s", who, dropped,
                      rejected)  # fmt: skip
            ok = False
        else:
            log.info("%sdelivered %d sample(s)", who, stats.sent)
    agent.shutdown(0)
    return 0 if ok else 1


def _serve(agent: Agent, cfg: Config) -> int:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("libvirt-pusher %s: %s", __version__, _summary(cfg))
    agent.run()
    return 0
