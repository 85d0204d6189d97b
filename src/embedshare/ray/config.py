"""Names, settings and the text-to-node partition of embedshare on Ray. Imports no Ray.

Kept free of Ray so that the node's service process (``_service.py``) and unit tests can use
it, and so that ``import embedshare`` costs nothing in a process that never uses Ray.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..env import ENV_RAY_NAMESPACE, ENV_RAY_STORE
from ..util.digests import blake2b

NAMESPACE = "embedshare"  # the Ray namespace of every embedshare actor
COORDINATOR_NAME = "embedshare-cluster"
SERVICE_PREFIX = "embedshare-service-"


def namespace() -> str:
    return os.environ.get(ENV_RAY_NAMESPACE) or NAMESPACE


def service_name(node_id: str) -> str:
    """The Ray actor name of a node's service."""
    return f"{SERVICE_PREFIX}{node_id}"


def default_store_root() -> str:
    """Node-local by default: a folder under the node's temporary directory."""
    return os.environ.get(ENV_RAY_STORE) or str(Path(tempfile.gettempdir()) / "embedshare-ray")


def node_key(node_id: str, hosts: dict[str, str]) -> str:
    """A name for a node's store that outlives its Ray session: its host name, plus its rank
    among the alive nodes of that host (0 on a real cluster; simulated nodes share a host).

    Ray's node id is new at every ``ray start`` / ``ray.init()``, so a store named by it was
    never found again: the cache was rebuilt each session and folders piled up. ``hosts``:
    alive node id -> host name.
    """
    host = hosts.get(node_id) or node_id[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in host)[:40]
    same_host = sorted(n for n, h in hosts.items() if (h or n[:16]) == host)
    rank = same_host.index(node_id) if node_id in same_host else 0
    return f"{safe}-{rank}"


def node_store(store_root: str | Path, key: str) -> Path:
    """The store folder of one node, by its :func:`node_key` (short: a Unix socket path has at
    most 107 bytes)."""
    return Path(store_root).expanduser() / f"node-{key}"


def registry_copy(store_root: str | Path) -> Path:
    """Where the coordinator keeps the deployment's registry, for a later session's
    coordinator created by a task with no registry given (node-local, like the stores)."""
    return Path(store_root).expanduser() / "registry.json"


def owner_ranking(key: bytes, ring: Sequence[str]) -> list[str]:
    """Ring nodes in the order they own ``key``: rendezvous (highest random weight) hashing.

    The first is the owner. Every process computes the same order from the same ring, a node
    leaving moves only the keys it owned (to their second choice), and no table is kept.
    """

    def weight(node_id: str) -> bytes:
        return blake2b(key + node_id.encode(), digest_size=8).digest()

    return sorted(ring, key=weight, reverse=True)


def owner_of(key: bytes, ring: Sequence[str]) -> str:
    """The ring node that computes ``key``'s vector for the whole cluster."""
    best, best_weight = "", b""
    for node_id in ring:
        w = blake2b(key + node_id.encode(), digest_size=8).digest()
        if w > best_weight:
            best, best_weight = node_id, w
    return best
