"""``python -m embedshare``: the same command as ``embedshare``."""

from embedshare.console import main

if __name__ == "__main__":
    main()
