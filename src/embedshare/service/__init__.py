"""The shared service: server (service process), protocol (wire format), client (workers),
launcher (start, join, stop). Import the submodule you need; nothing is imported here so
that a worker's client does not load the server's asyncio machinery."""
