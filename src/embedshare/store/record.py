"""``<store>/store.json``: what a store serves, so every entry point finds it without being told.

A store records its model (spec, model_id, dim) and the tool registry it serves (content hash,
where it came from, and the index folder under ``indexes/``, which keeps its own copy of the
tools in ``tools.jsonl``). It is written when an index is built and when a service starts, and
read by every process that is given no registry: a local manager or fallback opens the
recorded index, ``embedshare serve`` with no ``--registry`` serves it, the CLI searches it.

Standard library only (json): pool workers import this.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import StoreRecordError, UnsafeStoreError
from ..registry import Registry
from .files import read_private_text, write_atomic
from .layout import StoreLayout

RECORD_VERSION = 1


def read_record(store: str | Path | StoreLayout) -> dict[str, Any]:
    """The store's record, or ``{}`` when it has none (or it cannot be read as JSON).

    A ``store.json`` that is not a regular file of ours (a FIFO would block the read for
    ever, a link could point anywhere) is refused with ``UnsafeStoreError``.
    """
    layout = store if isinstance(store, StoreLayout) else StoreLayout(store)
    try:
        record = json.loads(read_private_text(layout.record))
    except UnsafeStoreError:
        raise
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(
    store: str | Path | StoreLayout,
    *,
    model: str | None,
    model_id: str,
    dim: int,
    registry_hash: str | None,
    registry_source: str | None,
    index: str | None,
    tools: int | None = None,
) -> None:
    """Record what the store serves (owner-only, written whole or not at all); a record that
    already says the same is left as it is (a service start often follows an index build)."""
    layout = store if isinstance(store, StoreLayout) else StoreLayout(store)
    layout.make_private_root()  # 0700, or refused if another user could write it
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "model": {"spec": model, "model_id": model_id, "dim": int(dim)},
        "registry": None,
    }
    if registry_hash:
        record["registry"] = {"hash": registry_hash, "source": registry_source, "index": index, "tools": tools}
    if read_record(layout) == record:
        return
    write_atomic(layout.record, json.dumps(record, indent=2, sort_keys=True))


def recorded_registry(store: str | Path | StoreLayout) -> dict[str, Any] | None:
    """The registry part of the record (hash, source, index), or None."""
    registry = read_record(store).get("registry")
    if not (isinstance(registry, dict) and registry.get("hash")):
        return None
    for key in ("hash", "source", "index"):
        _check_text(store, f"registry.{key}", registry.get(key))
    return registry


def recorded_model(store: str | Path | StoreLayout) -> str | None:
    """The model spec the store last served or indexed with, or None."""
    model = read_record(store).get("model")
    spec = model.get("spec") if isinstance(model, dict) else None
    _check_text(store, "model.spec", spec)
    return spec


def _check_text(store: str | Path | StoreLayout, key: str, value: Any) -> None:
    """A recorded name or path must be a string (or absent): 123 is not a folder."""
    if value is not None and not isinstance(value, str):
        path = (store if isinstance(store, StoreLayout) else StoreLayout(store)).record
        raise StoreRecordError(
            f"{path}: {key} must be a string, got {value!r}; remove the file and build the "
            f"store's index again (embedshare index build FILE --store {path.parent})"
        )


def registry_name(registry: str | Path | Registry) -> str:
    """How the store's record names a registry: ``bundled``, its file's absolute path, or its
    own ``source`` when it was given as loaded data."""
    if isinstance(registry, Registry):
        return registry.source
    return "bundled" if str(registry) == "bundled" else str(Path(registry).resolve())


def describe_registry(hash_: str | None, source: str | None) -> str:
    """``'tools.json' (sha256 3f2a9c...)``: how errors name a registry."""
    return f"{source or 'an unnamed registry'} (content hash {str(hash_)[:12]})"


def no_registry_advice(store: str | Path) -> str:
    """The commands that give a store a registry (for a NoIndexError's message)."""
    root = StoreLayout(store).root
    return (
        f"the store {root} records no tool registry: build one with "
        f"`embedshare index build FILE --store {root}` (or `embedshare index build bundled "
        f"--store {root}` for the example), or pass --registry / registry= ('bundled' or a JSON file) or call "
        "load_registry() once: the store remembers it"
    )
