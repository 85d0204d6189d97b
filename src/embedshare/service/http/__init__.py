"""The service's optional OpenAI-compatible HTTP endpoint (the ``http`` extra): ``app`` (the
routes), ``inputs`` (reading a request), ``errors`` (OpenAI's error shape), ``guard`` (bearer
token, loopback Host names, h11 limits), ``endpoint`` (uvicorn in the service's loop),
``probes`` (/health, /ready, /metrics), ``tokens`` (token-array inputs), ``address`` (HOST:PORT
and the token, no starlette). Nothing is imported here: checking an address must not load
starlette."""
