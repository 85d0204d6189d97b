"""The README's Python blocks run as written, in order, for a newcomer: a fresh folder, a fresh
HOME, each block a script run by a fresh interpreter.

A block that names no model runs with the hashing model (``EMBEDSHARE_MODEL=hash:64``); a block
that names ``model="local"`` gets the real local model, as a reader who copies it would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.DOTALL | re.MULTILINE)

# Blocks that cannot run yet, and why; strict, so that the day they run this list must shrink.
NOT_YET: dict[int, str] = {}


def _first_line(block: str) -> str:
    return next(line for line in block.splitlines() if line.strip() and not line.startswith("#"))


def _params():
    for number, block in enumerate(BLOCKS):
        marks = []
        if 'model="local"' in block:
            marks += [pytest.mark.model, pytest.mark.slow]
        if number in NOT_YET:
            marks.append(pytest.mark.xfail(strict=True, reason=NOT_YET[number]))
        yield pytest.param(number, marks=marks, id=f"{number + 1}:{_first_line(block)[:40]}")


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    """One fresh folder and HOME for all the blocks, in README order (state carries over)."""
    root = tmp_path_factory.mktemp("newcomer")
    (root / "home").mkdir()
    (root / "work").mkdir()
    return root


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 7
    for block in BLOCKS:
        assert not re.search(r"^await ", block, re.MULTILINE), "top-level await"
        if "SharedPool(" in block or "ProcessPool" in block:
            assert 'if __name__ == "__main__":' in block, block[:80]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("number", list(_params()))
def test_readme_block_runs_as_written(number, newcomer):
    block = BLOCKS[number]
    script = newcomer / "work" / f"readme_block_{number + 1}.py"
    script.write_text(block)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSHARE_")}
    env.update(
        HOME=str(newcomer / "home"), HF_HUB_OFFLINE="1", PYTHONWARNINGS="default", HAYSTACK_TELEMETRY_ENABLED="False"
    )  # this machine has no network for its posthog calls
    if "model=" not in block:
        env["EMBEDSHARE_MODEL"] = "hash:64"
    result = subprocess.run(
        [sys.executable, script.name],
        cwd=script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"block {number + 1} failed:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr[-3000:]
    assert len(result.stderr.splitlines()) < 20, result.stderr[-3000:]  # quiet: no error per worker
