"""Every ``EMBEDSHARE_*`` environment variable embedshare reads or sets, named once.

A variable is how a setting reaches processes nobody configures by hand: pool workers, Ray
tasks, shards started with ``subprocess``. Spelling its name in one place keeps the readers and
the writers in step. Standard library only: every worker imports this.
"""

from __future__ import annotations

import os
from pathlib import Path

# The service of one machine, and its clients.
ENV_ADDRESS = "EMBEDSHARE_ADDRESS"  # the service's socket (or tcp://HOST:PORT); inherited by children
ENV_STORE = "EMBEDSHARE_STORE"  # the store folder (cache, indexes, run/); default_store()
ENV_MODEL = "EMBEDSHARE_MODEL"  # the embedder spec a process expects (local, hash:64, openai:...)
ENV_REGISTRY = "EMBEDSHARE_REGISTRY"  # the tool registry a process asks for (a file, or bundled)
ENV_ON_FAILURE = "EMBEDSHARE_ON_FAILURE"  # restart | local | error: what a client does if the service dies
ENV_TOKEN = "EMBEDSHARE_TOKEN"  # the token a client presents on a tcp:// address
ENV_HTTP_TOKEN = "EMBEDSHARE_HTTP_TOKEN"  # the HTTP endpoint's bearer token, if no --http-token-file
# Set by a process that said it builds its own model (no service): its children do not say it again.
ENV_NO_SERVICE_SAID = "EMBEDSHARE_NO_SERVICE_SAID"

# embedshare on Ray (ray/).
ENV_RAY = "EMBEDSHARE_RAY"  # "0": get_embedding_manager() ignores Ray in this process
ENV_RAY_NAMESPACE = "EMBEDSHARE_RAY_NAMESPACE"  # the Ray namespace of embedshare's actors
ENV_RAY_STORE = "EMBEDSHARE_RAY_STORE"  # the node-local folder that holds each node's store


def default_store() -> Path:
    """``$EMBEDSHARE_STORE``, else ``~/.cache/embedshare``."""
    value = os.environ.get(ENV_STORE)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "embedshare"
