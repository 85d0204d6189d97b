"""The ``embedshare`` command's entry point, empty on purpose.

multiprocessing's spawn start method imports the parent's main script again in every child it
starts; for the ``embedshare`` command that script imports this module. Importing the CLI here
(click, logging and every command: ~3 MB) would cost that much in each of 25 pool workers, so
it is imported only when the command runs, in the parent.
"""

from __future__ import annotations


def main() -> None:
    from .cli import main as cli_main

    cli_main()
