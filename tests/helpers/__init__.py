"""What the tests share, one module per kind of help (the fixtures in conftest.py use them).

- ``services``: starting services the way the tests do (``make_service``, ``running_service``)
- ``waiting``: ``wait_for``, a polled fact with a deadline
- ``threads``: ``run_threads``, n threads started together and joined by a deadline
- ``embedders``: ``RecordingEmbedder``, the hashing model recording every batch it is asked
- ``frames``: raw frames on a service socket
- ``processes``: processes the tests start, their memory, stopping them
- ``users``: acting as another local user (root only)
- ``figures``: ``record``, what a reliability test measured
- ``disks``: a small tmpfs, filling a disk
- ``extras``: skipping a test whose optional extra is not installed
- ``spawned/``: modules that processes the tests start import or run (pool workers,
  multiprocessing children, ``python SPAWNED/name.py`` interpreters)

Processes the tests start import this package by name (tests/ is on their ``sys.path``), so
this file imports nothing.
"""
