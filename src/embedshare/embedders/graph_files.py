"""Where the ONNX graph of the local model comes from: kept in the store, or built for this load.

Building costs a child interpreter (onnx's import and the weights' copies stay out of the
service); int8 adds ONNX Runtime's quantiser, 3.3 s on every load before the graph was kept.
So a service keeps each graph in its store (``<store>/graphs``, 0700, files 0600, written
whole then renamed), under a name that says everything the file depends on: fp32 or int8, the
builder's ``GRAPH_FORM``, ONNX Runtime's version (the quantiser's output is its) and a digest of
the model folder's config and weights file. A graph of an older form or another model is never
loaded: its name differs, and it is removed when the new one is written. A damaged file is
found when ONNX Runtime refuses it: the caller removes it (:func:`discard`) and builds again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import EmbedderError
from ..util.children import python_child
from .bert_graph import GRAPH_FORM


def graph_name(folder: Path, int8: bool, runtime_version: str) -> str:
    """The file name of this model's graph in this form (see the module doc)."""
    weights = folder / "model.safetensors"
    stat = weights.stat()
    digest = hashlib.sha256()
    for part in (str(folder.resolve()), str(stat.st_size), str(stat.st_mtime_ns), runtime_version):
        digest.update(part.encode() + b"\0")
    digest.update((folder / "config.json").read_bytes())
    return f"{'int8' if int8 else 'fp32'}-{GRAPH_FORM}-{digest.hexdigest()[:16]}.onnx"


@contextlib.contextmanager
def graph_file(folder: Path, int8: bool, runtime_version: str, keep_in: Path | None) -> Iterator[tuple[Path, bool]]:
    """The graph's path while the caller opens it, and whether it was already kept.

    Without ``keep_in`` it is built into a private temporary folder, removed afterwards.
    """
    if keep_in is None:
        with tempfile.TemporaryDirectory(prefix="embedshare-onnx-") as tmp:
            graph = Path(tmp) / "model.onnx"
            build_graph(folder, graph, int8)
            yield graph, False
        return
    keep_in.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        kept = keep_in / graph_name(folder, int8, runtime_version)
    except OSError as exc:
        raise EmbedderError(f"{folder} is not a model folder the ONNX builder can read: {exc}") from None
    if kept.exists():
        yield kept, True
        return
    with tempfile.TemporaryDirectory(prefix=".building-", dir=keep_in) as tmp:
        building = Path(tmp) / kept.name
        build_graph(folder, building, int8)
        os.chmod(building, 0o600)
        os.replace(building, kept)  # whole or absent: a reader never sees half a graph
    _remove_other_forms(kept)
    yield kept, False


def discard(path: Path) -> None:
    """Remove a kept graph ONNX Runtime refused (damaged, truncated): the next load builds it."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _remove_other_forms(kept: Path) -> None:
    """Graphs of the same kind but another form, model or runtime: never loaded again."""
    kind = kept.name.split("-", 1)[0]
    for old in kept.parent.glob(f"{kind}-*.onnx"):
        if old != kept:
            discard(old)


def build_graph(folder: Path, out: Path, int8: bool) -> None:
    """Run ``bert_graph`` in a child interpreter; its error, if any, becomes an EmbedderError."""
    args = ["-m", "embedshare.embedders.bert_graph", str(folder), str(out), *(["--int8"] if int8 else [])]
    proc = subprocess.run(**python_child(*args, cwd=out.parent), capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        lines = (proc.stderr or "").strip().splitlines()
        raise EmbedderError(f"building the ONNX graph of {folder} failed: {lines[-1] if lines else proc.returncode}")
