"""A module that raises while it is imported: a preload that kills a pool's forkserver."""

raise RuntimeError("forkserver_broken: this module fails on import, on purpose")
