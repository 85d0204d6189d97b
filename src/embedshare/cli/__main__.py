"""``python -m embedshare.cli``: the same command as ``embedshare``."""

from . import main

main()
