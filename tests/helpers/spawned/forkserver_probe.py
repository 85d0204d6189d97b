"""A module a pool preloads: at import it records which process imported it and its sys.path.

One JSON line per import, appended to the file named by ``EMBEDSHARE_TEST_PROBE``: imported
once in the pool's forkserver, it has one line, written by the forkserver.
"""

from __future__ import annotations

import json
import os
import sys

_probe = os.environ.get("EMBEDSHARE_TEST_PROBE")
if _probe:
    with open(_probe, "a") as _out:
        _out.write(json.dumps({"pid": os.getpid(), "sys_path": sys.path, "cwd": os.getcwd()}) + "\n")
