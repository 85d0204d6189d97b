"""The service's side: one process per store that owns the model, the cache writes and the
index (``server``, ``engine``, ``batcher``, ``listeners``, ``http/``, ``process``), how it is
configured (``config``) and started, joined or stopped (``launcher``). Nothing is imported here:
a worker that only restarts a service must not load the server's asyncio machinery."""
