"""libvirt-pusher: libvirt domain stats, labelled with Nova instance data, pushed to Mimir.

How a sample travels, one module per stage:

    config      YAML file -> validated Config (exit 2 on any bad key)
    collect     one bulk getAllDomainStats call per cycle, domain XML fetched once per domain
    nova        Nova's <nova:instance> metadata -> NovaInstance (pure, cached by UUID)
    catalog     the table of every metric; libvirt stats -> samples in base units (pure)
    encode      samples -> snappy remote-write 1.0 request bodies; text exposition (pure)
    spool       SQLite queue of request bodies, written before the first send
    sender      one HTTP POST of one body; the result carries the retry decision
    loop        the agent: ticks, collects, spools, drains, retries, counts
    cli         the command line
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
