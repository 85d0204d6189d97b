"""Modules that processes the tests start import by name or run as scripts.

Pool workers, multiprocessing children and ``python SPAWNED/name.py`` interpreters load them,
so each one imports the standard library and embedshare only (``helpers.waiting`` at most):
never pytest, whose imports would be in every worker that a test measures or inspects.
"""
