"""libvirt-pusher: libvirt domain stats, labelled with Nova instance data, pushed to Mimir.

How a sample travels, one module per stage:

    config      YAML file -> validated, nested Config (exit 2 on any bad key)
    secrets     credential files read and checked; secrets kept out of what is printed
    collect     one bulk getAllDomainStats call per cycle within collect.timeout, domain XML
                fetched once per domain
    host        the node's capacity (CPU by mode, memory, free huge pages), with
                collect.host_stats: three calls a cycle
    pools       the host's storage pools, with collect.storage_pools: a list call and one
                or two calls per pool a cycle
    placement   where each vCPU runs, with collect.vcpu_placement: a call per running domain
    nova        Nova's <nova:instance> metadata -> NovaInstance (pure, cached by UUID)
    devices     the domain XML's NICs and disks -> info series and I/O limits (pure)
    filters     which domains are exported (pure)
    catalog     the table of every metric; libvirt stats -> plans in base units (pure)
    series      a snapshot -> one cycle's series and stale markers (pure)
    encode      samples -> snappy remote-write 1.0 / 2.0 bodies; text exposition (pure)
    record      a cycle as a record: series once per chain, values as integer differences (pure)
    spooldb     the spool's SQLite file: schema, checks, salvage
    spoolrec    records in that file; a record read back as its request
    spool       SQLite queue of cycles, written before the first send
    delivery    lanes drain the spool: retry, hold, split, fall back, drop and count
    sender      one HTTP POST of one body; the result carries the retry decision
    mimir       what Mimir's error answers say: its own error id, the limits it names (pure)
    health      the health file behind --health
    agent       ticks every interval at its offset, runs the sending threads, stops cleanly
    cli         the command line
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
