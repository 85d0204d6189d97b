"""The worker's side of the service: the wire protocol, one connection shared by a process's
threads, and the store's ``run/`` folder (lock, state file). Light on purpose: every worker
imports it, so it needs only the standard library and msgpack."""
