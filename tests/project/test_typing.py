"""A user's mypy sees embedshare's annotations: the wheel ships ``py.typed``, and the lazily
imported top-level names have real types for type checkers (not ``__getattr__``'s ``Any``).

Built and installed the way a user gets it: a wheel, unpacked into a fresh environment's
site-packages, and mypy pointed at that environment's interpreter."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from helpers.extras import skip_module_unless

skip_module_unless("dev", "mypy")
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

USER_CODE = """
from embedshare import EmbeddingManager, get_embedding_manager

manager = EmbeddingManager("/tmp/store", model="hash:64")
reveal_type(manager.search)
reveal_type(get_embedding_manager)
wrong: int = manager.search("read a csv file")
"""


def test_users_mypy_sees_the_annotations(tmp_path):
    source = tmp_path / "source"  # a clean copy: no build/ or egg-info left by earlier builds
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (wheel,) = wheels.glob("embedshare-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "embedshare/py.typed" in archive.namelist()
        env = tmp_path / "env"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=60)
        purelib = sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)})
        archive.extractall(purelib)
    user = tmp_path / "user.py"
    user.write_text(USER_CODE)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--python-executable",
            str(env / "bin" / "python"),
            "--ignore-missing-imports",
            str(user),
        ],  # numpy is not in that environment
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    out = result.stdout
    assert "missing library stubs or py.typed marker" not in out, out
    assert 'Revealed type is "def (query: str, k: int =, category: str | None =' in out, out
    assert "-> list[embedshare.store.index.SearchResult]" in out, out
    assert "-> embedshare.manager.EmbeddingManager" in out, out  # the lazily imported name too
    assert 'Revealed type is "Any"' not in out, out
    assert 'Incompatible types in assignment (expression has type "list[' in out, out
