"""Run the embedding service with a capped cache map (the map-size-limit test, no root needed).

    python tests/helpers/spawned/reliability_server.py --max-map-size BYTES <the service's own arguments>

Every cache the service opens starts at a 64 KiB map and may grow to BYTES, no further.
"""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    at = argv.index("--max-map-size")
    limit = int(argv[at + 1])
    del argv[at : at + 2]

    from embedshare.store import cache as cache_module

    original = cache_module.EmbeddingCache.__init__

    def capped(self, *args, **kwargs):
        kwargs["map_size"] = min(kwargs.get("map_size", 1 << 16), limit)
        kwargs["max_map_size"] = limit
        original(self, *args, **kwargs)

    cache_module.EmbeddingCache.__init__ = capped
    from embedshare.service.process import main as serve

    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
