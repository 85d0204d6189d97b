"""Building a tool index folder: embed every field of every tool, write the arrays, rename.

What the folder holds, and how it is read and searched, is :mod:`embedshare.store.index`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ToolIndexError
from ..registry import FIELDS, Registry, field_texts, field_weights
from .files import PRIVATE_FILE_MODE, private_dir
from .index import DATA_FILES, FORMAT_VERSION, ToolIndex, file_sha256, index_folder_name

EmbedFn = Callable[[list[str]], np.ndarray]
ANN_MIN_TOOLS = 100_000  # from here on an approximate index takes over search_hits (bench/README.md)
TMP_PREFIX = ".tmp-"  # a folder being built: .tmp-<builder's pid>-<random>
_TMP_NAME = re.compile(rf"{re.escape(TMP_PREFIX)}(\d+)-.+")


def remove_stale_builds(folder: Path) -> list[Path]:
    """Remove the temporary folders in ``folder`` whose builder process is gone.

    A builder killed mid-build (SIGKILL, OOM, power loss) cannot clean up after itself; its
    folder, named ``.tmp-<pid>-...``, would take room for ever. Only folders whose pid is no
    longer running are removed: a live builder's (or one whose pid was reused) is left alone,
    and so is a ``.tmp-`` folder without a pid (an older version's: its builder is unknown).
    """
    import shutil

    import psutil  # here: workers import this module, and psutil costs them memory

    removed = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        match = _TMP_NAME.fullmatch(entry.name)
        if match is None or psutil.pid_exists(int(match[1])):
            continue
        shutil.rmtree(entry, ignore_errors=True)  # a link is not followed (rmtree refuses it)
        removed.append(entry)
    return removed


def _manifest_files(folder: Path, names: Iterable[str]) -> dict[str, dict[str, int | str]]:
    """The manifest's entry for each of ``names`` in ``folder``: its size and SHA-256."""
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)} for name in names}


def build_index(
    registry: Registry,
    embed: EmbedFn,
    model_id: str,
    dim: int,
    destination: str | Path,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = 256,
    ann_min_tools: int | None = None,
) -> Path:
    """Embed every field of every tool and write the index folder at ``destination``.

    From ``ann_min_tools`` tools on (default ``ANN_MIN_TOOLS``), an approximate index
    (``store/ann.py``) is written beside the vectors and takes over ``search_hits``.

    Written into a temporary folder beside it and renamed into place, so a reader never sees
    half an index; when another process finished the same index first, its copy is kept.
    """
    per_tool = [field_texts(t) for t in registry.tools]
    vectors_of = _embed_unique_texts(per_tool, embed, dim, batch_size, progress)
    arrays, categories = _index_arrays(registry, per_tool, vectors_of, dim)
    manifest = {
        "format": FORMAT_VERSION,
        "model_id": model_id,
        "dim": dim,
        "count": len(registry.tools),
        "registry_hash": registry.content_hash,
        "registry_source": registry.source,
        "fields": list(FIELDS),
        "categories": categories,
    }
    with_ann = len(registry.tools) >= (ANN_MIN_TOOLS if ann_min_tools is None else ann_min_tools)
    return _write_index_folder(Path(destination), registry, arrays, manifest, with_ann)


def _embed_unique_texts(
    per_tool: list[dict[str, str]],
    embed: EmbedFn,
    dim: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, np.ndarray]:
    """Each distinct field text's vector, embedded ``batch_size`` texts at a time."""
    unique = sorted({text for texts in per_tool for text in texts.values()})
    vectors_of: dict[str, np.ndarray] = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        vecs = np.asarray(embed(chunk), dtype=np.float32)
        if vecs.shape != (len(chunk), dim):
            raise ToolIndexError(f"embedder returned shape {vecs.shape}, expected ({len(chunk)}, {dim})")
        vectors_of.update(zip(chunk, vecs, strict=True))
        if progress:
            progress(min(start + batch_size, len(unique)), len(unique))
    return vectors_of


def _index_arrays(
    registry: Registry, per_tool: list[dict[str, str]], vectors_of: dict[str, np.ndarray], dim: int
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The index's arrays (``DATA_FILES`` but ``tools.jsonl``'s offsets), and its categories."""
    tools = registry.tools
    fields = np.zeros((len(tools), len(FIELDS), dim), dtype=np.float32)
    weights = np.zeros((len(tools), len(FIELDS)), dtype=np.float32)
    for row, texts in enumerate(per_tool):
        for name, weight in field_weights(texts).items():
            col = FIELDS.index(name)
            fields[row, col] = vectors_of[texts[name]]
            weights[row, col] = weight
    combined = np.einsum("nf,nfd->nd", weights, fields)
    combined /= np.linalg.norm(combined, axis=1, keepdims=True)
    categories = sorted({t.category for t in tools})
    names = np.array([t.name.encode("utf-8") for t in tools])
    order = np.argsort(names, kind="stable")
    arrays = {
        "vectors.npy": combined.astype(np.float32),
        "fields.npy": fields,
        "weights.npy": weights,
        "categories.npy": np.array([categories.index(t.category) for t in tools], dtype=np.int32),
        "names_sorted.npy": names[order],
        "rows_by_name.npy": order.astype(np.int64),
    }
    return arrays, categories


def _write_index_folder(
    destination: Path, registry: Registry, arrays: dict[str, np.ndarray], manifest: dict[str, Any], with_ann: bool
) -> Path:
    """Write the folder beside ``destination``, private and synced, then rename it into place."""
    import shutil
    import tempfile

    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(destination.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=destination.parent))
    try:
        offsets = [0]
        with open(tmp / "tools.jsonl", "wb") as f:
            for tool in registry.tools:
                line = json.dumps(tool.raw, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n"
                f.write(line)
                offsets.append(offsets[-1] + len(line))
        arrays = {**arrays, "tool_offsets.npy": np.array(offsets, dtype=np.int64)}
        for fname, array in arrays.items():
            np.save(tmp / fname, array)
        manifest = {**manifest, "files": _manifest_files(tmp, DATA_FILES)}
        if with_ann:
            from .ann import ANN_FILES, build_ivf

            build_ivf(arrays["vectors.npy"], tmp)
            manifest["ann"] = {"kind": "ivf-flat", "files": _manifest_files(tmp, ANN_FILES)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fchmod(f.fileno(), PRIVATE_FILE_MODE)  # owner-only, whatever the umask
                os.fsync(f.fileno())
        try:
            os.rename(tmp, destination)
        except OSError:
            if not (destination / "manifest.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # built concurrently by someone else
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return destination


def open_or_build_index(
    root: str | Path,
    registry: Registry,
    embed: EmbedFn,
    model_id: str,
    dim: int,
    progress: Callable[[int, int], None] | None = None,
) -> ToolIndex:
    """Open the index of this registry and model under ``root``, building it if needed."""
    path = private_dir(root) / index_folder_name(registry.content_hash, model_id)
    if not (path / "manifest.json").exists():
        if path.exists():
            raise ToolIndexError(
                f"tool index {path} exists but has no manifest.json (damaged); delete the folder to rebuild it"
            )
        build_index(registry, embed, model_id, dim, path, progress=progress)
    try:
        index = ToolIndex(path, verify=True)
    except ToolIndexError as exc:  # damaged or tampered with: never searched, never rebuilt silently
        raise ToolIndexError(f"{exc}; delete the folder to rebuild it") from None
    if index.model_id != model_id or index.manifest["registry_hash"] != registry.content_hash:
        raise ToolIndexError(
            f"tool index {path} was built for another model or registry (model {index.model_id!r}, "
            f"this service's is {model_id!r}); delete the folder to rebuild it"
        )
    return index
