"""The service's optional OpenAI-compatible HTTP endpoint (the ``http`` extra): ``app`` (routes),
``guard`` (bearer token, h11 limits), ``address`` (HOST:PORT and the token file, no starlette),
``probes`` (/health, /ready, /metrics), ``tokens`` (token-array inputs). Nothing is imported
here: checking an address must not load starlette."""
