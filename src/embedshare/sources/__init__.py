"""Where a manager's cache misses are computed: one interface (``base.VectorSource``), several
kinds (``local``, ``service``, ``failover``; Ray's is in ``embedshare/ray/source.py``)."""
