"""Process pools: a crash-safe ``WorkerPool``, and ``SharedPool`` whose workers share a service.

Import from the submodules (``embedshare.pool.shared``, ``.workers``, ``.outcomes``): workers
import only what they run, so this package imports nothing itself.
"""
