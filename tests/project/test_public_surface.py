"""The public surface is what docs/api.md lists, module by module, and each of those modules'
``__all__`` says exactly that; ``import embedshare`` changes nothing in the import system."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.extras import requires

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
NEEDS = {"embedshare.ray": "ray", "embedshare.integrations.langchain": "langchain"}


def documented() -> dict[str, list[str]]:
    """docs/api.md's ``## `module` `` headings, each with its ``- `name` `` bullets."""
    modules: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in API_DOC.read_text().splitlines():
        if heading := re.match(r"## `([\w.]+)`$", line):
            current = modules.setdefault(heading[1], [])
        elif (name := re.match(r"- `(\w+)`", line)) and current is not None:
            current.append(name[1])
    return modules


DOCUMENTED = documented()


def test_the_api_page_lists_the_package_and_its_public_subpackages():
    assert {"embedshare", "embedshare.embedders", "embedshare.store", "embedshare.registry"} <= set(DOCUMENTED)
    assert all(DOCUMENTED.values()), "a public module with no name listed"


@pytest.mark.parametrize(
    "module", [pytest.param(m, marks=requires(NEEDS[m])) if m in NEEDS else m for m in sorted(DOCUMENTED)]
)
def test_a_public_module_s_all_is_what_the_api_page_lists(module):
    imported = importlib.import_module(module)
    exported = getattr(imported, "__all__", None)
    assert exported is not None, f"{module} is public (docs/api.md) but declares no __all__"
    listed = DOCUMENTED[module]
    assert len(listed) == len(set(listed)), f"docs/api.md lists a name of {module} twice"
    assert sorted(exported) == sorted(listed), (
        f"{module}: exported but not in docs/api.md: {sorted(set(exported) - set(listed))}; "
        f"in docs/api.md but not exported: {sorted(set(listed) - set(exported))}"
    )
    for name in exported:  # each one resolves (the lazy packages import it on first use)
        getattr(imported, name)


def test_importing_embedshare_installs_no_import_hook_and_keeps_no_0_1_path():
    """The 0.1 paths' finder (``_moved.py``) is gone: nothing is added to ``sys.meta_path``
    by every worker's ``import embedshare``, and an old path is an ordinary ImportError."""
    probe = (
        "import sys; before = list(sys.meta_path); import embedshare; "
        "assert sys.meta_path == before, sys.meta_path\n"
        "try:\n import embedshare.service.client\nexcept ModuleNotFoundError: print('gone')"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "gone"
