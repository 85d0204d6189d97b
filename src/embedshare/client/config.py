"""``ClientConfig``: how long a client waits on the service, declared once.

``SharedEmbeddingManager``, ``RayEmbeddingManager`` and ``ServiceSource`` each wrote the
defaults out and checked them on their own; they now take them from here, and a manager hands
one checked object to its source (and, on Ray, to every source it rebinds after a restart).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import settings

__all__ = ["CLIENT_DEFAULTS", "ClientConfig"]


@dataclass(frozen=True)
class ClientConfig:
    """A client's timeouts, in seconds, each checked when the object is made.

    ``request_timeout``: the longest a call waits for the service's answer. A service that is
    alive but frozen costs a call this long, so it is generous (a cold model's first batch
    and a large registry's index build fit in it). ``connect_timeout``: the longest a
    connection (and, over TCP, its handshake) may take.
    """

    request_timeout: float = 600.0
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        # Checked here, before any connection: a typo must not wait for the service.
        object.__setattr__(self, "request_timeout", settings.seconds("request_timeout", self.request_timeout))
        object.__setattr__(self, "connect_timeout", settings.seconds("connect_timeout", self.connect_timeout))


CLIENT_DEFAULTS = ClientConfig()  # what the managers' keyword arguments default to
