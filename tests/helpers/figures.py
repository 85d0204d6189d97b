"""``record(test, **figures)``: what a reliability, security or fuzz test measured.

Printed (``pytest -s`` shows them) and, when ``EMBEDSHARE_RELIABILITY_REPORT`` names a file,
appended to it as one JSON line, so a run's figures can be compared with another's.
"""

from __future__ import annotations

import json
import os
from typing import Any

REPORT_ENV = "EMBEDSHARE_RELIABILITY_REPORT"


def record(test: str, **figures: Any) -> None:
    """Print the figures of ``test`` and append them to the report file, if one is named."""
    line = json.dumps({"test": test, **figures}, default=str, sort_keys=True)
    print(f"\n[reliability] {line}")
    target = os.environ.get(REPORT_ENV)
    if target:
        with open(target, "a") as f:
            f.write(line + "\n")
