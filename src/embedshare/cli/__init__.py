"""The ``embedshare`` command line.

Every command takes ``--store`` (default ``$EMBEDSHARE_STORE`` or ``~/.cache/embedshare``) and
``--model`` (default ``$EMBEDSHARE_MODEL`` or ``local``). Commands that read use the store's
service when one runs, else a local manager. Errors are one line on stderr and exit code 1.

The commands live by subject: ``serve`` (serve, stop, cache), ``query`` (index, search, embed),
``observe`` (stats, top) and ``run`` (demo, ray-demo, bench); ``common`` holds what they share.
Only click and the standard library at import time: pool workers spawned from this command
re-import its entry point, and whatever it imports costs memory in every worker.
"""

from __future__ import annotations

import logging
import os

import click

from .observe import stats, top
from .query import embed, index, search
from .run import bench, demo, ray_demo
from .serve import cache, serve, stop


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="embedshare")
def main(verbose: int) -> None:
    """Share one embedding model, cache and tool index between all the processes of a machine."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _command in (serve, stop, cache, index, search, embed, stats, top, demo, ray_demo, bench):
    main.add_command(_command)
