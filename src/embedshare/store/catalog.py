"""What a store's ``indexes/`` folder holds: one summary per index folder, read from its manifest.

For ``embedshare index list`` and ``index show``: a folder whose manifest cannot be read is
listed as damaged (with why), never skipped, so a user sees every folder that takes room.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ToolIndexError
from .index import ToolIndex


def list_indexes(indexes: Path) -> list[dict[str, Any]]:
    """A summary of every index folder under ``indexes`` (folders being written excluded)."""
    if not indexes.is_dir():
        return []
    return [summary(path) for path in sorted(indexes.iterdir()) if path.is_dir() and not path.name.startswith(".tmp-")]


def summary(path: Path) -> dict[str, Any]:
    """Folder, model, size and registry of one index folder, or why it cannot be read."""
    out: dict[str, Any] = {"name": path.name, "path": str(path)}
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        out.update(
            model_id=manifest["model_id"],
            dim=int(manifest["dim"]),
            tools=int(manifest["count"]),
            registry_hash=manifest["registry_hash"],
            registry_source=manifest.get("registry_source"),
            ann=(manifest.get("ann") or {}).get("kind"),
        )
    except FileNotFoundError:
        out["damaged"] = "manifest.json is missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        out["damaged"] = f"manifest.json cannot be read ({exc})"
    return out


def find_index(indexes: Path, name: str) -> Path:
    """The index folder ``name`` names: a path, a folder under ``indexes``, or a unique prefix."""
    given = Path(name).expanduser()
    if (given / "manifest.json").exists() or given.is_absolute():
        return given
    matches = [s["path"] for s in list_indexes(indexes) if s["name"].startswith(name)]
    if len(matches) == 1:
        return Path(matches[0])
    if not matches:
        raise ToolIndexError(f"no index {name!r} in {indexes} (embedshare index list shows them)")
    raise ToolIndexError(f"{name!r} names {len(matches)} indexes in {indexes}; give more of the name")


def describe(path: Path) -> dict[str, Any]:
    """An index's summary plus its categories and tool names, checked against its manifest."""
    index = ToolIndex(path)  # sizes and shapes checked; a damaged folder is a clear error
    out = summary(path)
    by_category: dict[str, list[str]] = {}
    for row in range(len(index)):
        by_category.setdefault(index.category_of(row), []).append(index.name_of(row))
    out["categories"] = {c: sorted(names) for c, names in sorted(by_category.items())}
    out["category_counts"] = {c: len(names) for c, names in out["categories"].items()}
    out["files"] = {name: meta["bytes"] for name, meta in sorted(index.manifest["files"].items())}
    return out
