"""The node's service process: the ordinary embedshare service, tied to its Ray actor's life.

    python -m embedshare.ray._service --lifeline-fd N <the arguments of embedshare.service>

The actor that starts it keeps the write end of a pipe whose read end is ``N``. When the
actor's process dies, however it dies (``ray.kill`` is a SIGKILL), the kernel closes that end,
our read returns, and we stop the service as on SIGTERM: no service outlives the actor that
owns it, and the next actor on the node starts a fresh one on the same node-local store.
Imports no Ray: the service costs what it costs on one machine.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def _watch_lifeline(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass  # nobody writes; only the end of file matters
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "--lifeline-fd":
        print("usage: python -m embedshare.ray._service --lifeline-fd N SERVICE-ARGS...", file=sys.stderr)
        return 2
    fd = int(args[1])
    threading.Thread(target=_watch_lifeline, args=(fd,), name="embedshare-lifeline", daemon=True).start()
    from ..service.process import main as serve

    return serve(args[2:])


if __name__ == "__main__":
    sys.exit(main())
