"""The fp32 graph's word embeddings, read on demand: the same vectors, a few MB instead of 47.

The table of all-MiniLM-L6-v2 is 30522 x 384 float32 (47 MB), half the service's weights, but
a workload reads only the rows of its tokens. These tests prove the vectors equal the graph
with the table as an initializer, that only the rows of the ids seen are read and resident,
and that a damaged weights file is a one-line error naming it.
"""

from __future__ import annotations

import ctypes
import mmap
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.extras import requires

from embedshare.embedders import EmbedderError, create_embedder

pytestmark = requires("local", "onnxruntime", "tokenizers")

TEXTS = ["read a csv file", "send an email to the team", "Ωmega naïve résumé 🙂", "parse json " * 30]
TABLE_BYTES = 30522 * 384 * 4


def _resident_bytes(array: np.ndarray) -> int:
    """Bytes of the pages under ``array`` that are resident, from mincore(2).

    Counted over the array's own pages, not its mapping's Rss in /proc/self/smaps: the kernel
    merges neighbouring anonymous mappings of equal flags (another embedder's table), and then
    smaps reports their Rss together.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    start = array.ctypes.data - array.ctypes.data % page
    length = array.ctypes.data + array.nbytes - start
    pages = (length + page - 1) // page
    vector = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vector) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return sum(flag & 1 for flag in vector) * page


def _small_safetensors(path: Path, dtype: type = np.float32) -> np.ndarray:
    from safetensors.numpy import save_file

    table = np.random.default_rng(7).standard_normal((1000, 8)).astype(dtype)
    other = np.arange(5, dtype=np.float32)
    save_file({"a.before": other, "embeddings.word_embeddings.weight": table, "z.after": other}, str(path))
    return table


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_rows_are_read_on_demand_in_runs_and_converted_to_float32(tmp_path, dtype):
    from embedshare.embedders.word_rows import WordRows

    expected = _small_safetensors(tmp_path / "model.safetensors", dtype)
    rows = WordRows(tmp_path / "model.safetensors")
    assert rows.table.dtype == np.float32 and rows.table.shape == (1000, 8) and rows.table.flags.c_contiguous
    ids = np.array([[101, 5, 6, 7, 999, 0], [7, 7, 500, 5, 0, 0]])
    rows.ensure(ids)
    seen = np.unique(ids)
    assert rows.loaded_rows == len(seen) and np.flatnonzero(rows.loaded).tolist() == seen.tolist()
    assert np.array_equal(rows.table[seen], expected[seen].astype(np.float32))
    unseen = np.setdiff1d(np.arange(1000), seen)
    assert not rows.table[unseen].any()  # never read
    with pytest.raises(EmbedderError, match="token id 1000 is outside"):
        rows.ensure(np.array([[1000]]))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) - 100], "is truncated"),
        (lambda data: data[:5], "not a safetensors file"),
        (lambda data: data[:8] + b"{garbled" + data[16:], "no readable tensor"),
        (lambda data: data.replace(b"word_embeddings.weight", b"word_embeddingX.weight"), "no readable tensor"),
    ],
    ids=["truncated", "no-header", "garbled-header", "tensor-missing"],
)
def test_a_damaged_weights_file_is_a_one_line_error_naming_it(tmp_path, damage, message):
    from embedshare.embedders.word_rows import WordRows

    path = tmp_path / "model.safetensors"
    _small_safetensors(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(EmbedderError, match=message) as caught:
        WordRows(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.model
def test_fp32_vectors_equal_the_graph_with_the_table_as_an_initializer(tmp_path):
    import onnx
    import onnxruntime

    from embedshare.embedders.bert_graph import build_from_folder
    from embedshare.embedders.local import bundled_model_path
    from embedshare.embedders.onnx_local import _session_on

    embedder = create_embedder("local")
    texts = [f"{i} " + " ".join(TEXTS[: 1 + i % 4]) * (1 + i % 9) for i in range(60)]
    lazy = embedder.embed(texts)
    assert "word_embeddings" in {feed.name for feed in embedder._session.get_inputs()}
    initializer_graph = tmp_path / "initializer.onnx"
    onnx.save_model(build_from_folder(bundled_model_path()), str(initializer_graph))
    embedder._session = _session_on(onnxruntime, initializer_graph, onnxruntime.SessionOptions())
    embedder._word_rows = None  # the graph of the previous form, fed as it was
    assert np.array_equal(embedder.embed(texts), lazy)


@pytest.mark.model
def test_only_the_rows_of_the_tokens_seen_are_read_and_resident():
    from embedshare.embedders.onnx_local import WARMUP_TEXTS

    embedder = create_embedder("local")
    embedder.embed(TEXTS)
    rows = embedder._word_rows
    seen = {token for text in WARMUP_TEXTS + TEXTS for token in embedder._tokenizer.encode(text).ids}
    assert set(np.flatnonzero(rows.loaded).tolist()) - {0} == seen - {0}  # 0: [PAD], read if a forward pads
    resident = _resident_bytes(rows.table)
    print(f"\n{rows.loaded_rows} rows read, {resident / 1e6:.2f} MB of the table's {TABLE_BYTES / 1e6:.0f} MB resident")
    assert resident <= rows.loaded_rows * 2 * 4096  # a row (1.5 KB) spans at most 2 pages
    assert resident < TABLE_BYTES / 50


@pytest.mark.model
def test_weights_truncated_under_a_running_model_are_a_one_line_error(tmp_path):
    from embedshare.embedders.local import bundled_model_path

    folder = tmp_path / "model"
    shutil.copytree(bundled_model_path(), folder, symlinks=True)
    embedder = create_embedder("local", model_path=folder)
    embedder.embed(["read a file"])
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as file:  # cut short in place, as an interrupted reinstall would
        file.truncate(1_000_000)  # the header and the table's first ~120 rows
    with pytest.raises(EmbedderError, match="model.safetensors is truncated") as caught:
        embedder.embed(["zebra xylophone quartz"])  # rows not read yet
    assert str(weights) in str(caught.value) and "\n" not in str(caught.value)
