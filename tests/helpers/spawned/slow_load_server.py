"""Run the embedding service with a model whose load blocks until the test lets it finish.

    python tests/helpers/spawned/slow_load_server.py --gate FIFO <the service's own arguments>

The hashing embedder gets a ``load()`` that opens FIFO and reads one line: the service stays
"loading the model" exactly as long as the test keeps the FIFO unwritten, like the local model's
~15 s load, without timing anything.
"""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    at = argv.index("--gate")
    gate = argv[at + 1]
    del argv[at : at + 2]

    from embedshare.embedders import hashing

    def load(self: hashing.HashingEmbedder) -> None:
        with open(gate) as fifo:  # blocks until the test opens it for writing
            fifo.readline()

    hashing.HashingEmbedder.load = load  # type: ignore[attr-defined]
    from embedshare.service.process import main as serve

    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
