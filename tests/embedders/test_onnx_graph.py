"""The local model's ONNX graph: its fused form, kept in the store, and forwards within a token budget.

The census proves the builder emits ONNX Runtime's fused ops (one Attention per layer, softmax
inside it), not the MatMul/Transpose/Softmax blocks its session optimiser left unfused. The
graph kept in the store spares a service the build (and int8's 3.3 s quantisation) on every
load, and a graph of an older form, or a damaged one, is never what a session runs.
"""

from __future__ import annotations

import re
import stat
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers.extras import requires

from embedshare.embedders import EmbedderError, create_embedder
from embedshare.settings import SettingError

pytestmark = requires("local", "onnxruntime", "tokenizers")

TEXTS = ["short", "a somewhat longer text about reading files", "word " * 300, "csv", "parse json " * 40]


def _builds(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every graph build from now on, by output path."""
    from embedshare.embedders import graph_files

    built: list[Path] = []
    real = graph_files.build_graph

    def counting(folder: Path, out: Path, int8: bool) -> None:
        built.append(out)
        real(folder, out, int8)

    monkeypatch.setattr(graph_files, "build_graph", counting)
    return built


def _kept(store: Path) -> list[Path]:
    return sorted((store / "graphs").glob("*.onnx"))


def _keeping(spec: str, store: Path):
    """An embedder that keeps its graph in ``store``'s graphs folder, as a service's does."""
    embedder = create_embedder(spec)
    embedder.keep_graphs_in(store / "graphs")
    return embedder


@pytest.mark.model
def test_the_built_graph_is_onnx_runtimes_fused_form():
    from embedshare.embedders.bert_graph import build_from_folder
    from embedshare.embedders.local import bundled_model_path

    fp32 = build_from_folder(bundled_model_path(), word_embeddings_input=True).graph
    ops = Counter(node.op_type for node in fp32.node)
    assert ops["EmbedLayerNormalization"] == 1
    assert ops["Attention"] == 6  # one per layer: Q, K, V in one packed MatMul, softmax inside
    assert ops["SkipLayerNormalization"] == 12  # residual + bias + LayerNorm, twice per layer
    assert ops["BiasGelu"] == 6
    assert ops["MatMul"] == 18  # attention output, intermediate and output dense layers
    for unfused in ("Softmax", "Transpose", "Reshape", "LayerNormalization", "Erf", "Gather"):
        assert ops[unfused] == 0, (unfused, ops)
    assert sum(ops.values()) <= 60, ops
    # fp32 reads the word-embedding rows it is fed (word_rows.py); int8 quantises the initializer
    assert [feed.name for feed in fp32.input] == ["input_ids", "attention_mask", "word_embeddings"]
    assert "word_embeddings" not in {init.name for init in fp32.initializer}
    for_int8 = build_from_folder(bundled_model_path()).graph
    assert [feed.name for feed in for_int8.input] == ["input_ids", "attention_mask"]
    assert "word_embeddings" in {init.name for init in for_int8.initializer}


@pytest.mark.model
def test_the_graph_is_kept_in_the_store_and_loaded_from_it(tmp_path, monkeypatch):
    import onnx

    built = _builds(monkeypatch)
    first = _keeping("local@int8", tmp_path)
    vectors = first.embed(TEXTS)
    assert len(built) == 1
    (kept,) = _kept(tmp_path)
    assert kept.name.startswith("int8-")
    # int8 quantises the word embeddings: the table stays inside its graph (word_rows is fp32's)
    int8_graph = onnx.load(str(kept)).graph
    assert "word_embeddings_quantized" in {init.name for init in int8_graph.initializer}
    assert [feed.name for feed in int8_graph.input] == ["input_ids", "attention_mask"]
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "graphs").stat().st_mode) == 0o700
    second = _keeping("local@int8", tmp_path)
    assert np.array_equal(second.embed(TEXTS), vectors)
    assert len(built) == 1  # loaded, not built (nor quantised) again


@pytest.mark.model
def test_a_graph_of_an_older_form_is_never_loaded(tmp_path, monkeypatch):
    from embedshare.embedders import graph_files

    built = _builds(monkeypatch)
    old = _keeping("local", tmp_path)
    old.load()
    (old_file,) = _kept(tmp_path)
    monkeypatch.setattr(graph_files, "GRAPH_FORM", "fused-next")  # the builder's form changed
    new = _keeping("local", tmp_path)
    new.load()
    assert len(built) == 2
    (new_file,) = _kept(tmp_path)  # the old form's file is removed
    assert new_file != old_file and "fused-next" in new_file.name


@pytest.mark.model
def test_a_kept_fp32_graph_of_the_form_before_word_rows_is_built_again(tmp_path, monkeypatch):
    import onnx

    from embedshare.embedders import graph_files
    from embedshare.embedders.bert_graph import build_from_folder
    from embedshare.embedders.local import bundled_model_path

    folder, runtime = bundled_model_path(), _runtime_version()
    monkeypatch.setattr(graph_files, "GRAPH_FORM", "fused-1")  # the form with the table inside
    old = tmp_path / "graphs" / graph_files.graph_name(folder, False, runtime)
    monkeypatch.undo()
    old.parent.mkdir(mode=0o700)
    onnx.save_model(build_from_folder(folder), str(old))
    built = _builds(monkeypatch)
    embedder = _keeping("local", tmp_path)
    embedder.load()
    assert len(built) == 1 and not old.exists()
    assert "word_embeddings" in {feed.name for feed in embedder._session.get_inputs()}


def _runtime_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


@pytest.mark.model
def test_a_damaged_kept_graph_is_built_again(tmp_path, monkeypatch):
    built = _builds(monkeypatch)
    first = _keeping("local", tmp_path)
    expected = first.embed(TEXTS)
    (kept,) = _kept(tmp_path)
    kept.write_bytes(kept.read_bytes()[: kept.stat().st_size // 3])  # truncated
    second = _keeping("local", tmp_path)
    assert np.abs(second.embed(TEXTS) - expected).max() <= 1e-6
    assert len(built) == 2  # the damaged file was replaced by a whole one


@pytest.mark.model
@pytest.mark.parametrize("budget", [256, 1000, 4096])
def test_forwards_stay_within_the_token_budget_and_keep_the_order(budget):
    embedder = create_embedder("local", max_batch_tokens=budget)
    embedder.load()
    shapes: list[tuple[int, int]] = []
    session = embedder._session
    real_run = session.run

    class Recording:
        def run(self, names, feeds):
            shapes.append(feeds["input_ids"].shape)
            return real_run(names, feeds)

    embedder._session = Recording()
    texts = [f"text {i} " + "about files " * (i % 7) * (1 + 20 * (i % 5 == 0)) for i in range(90)]
    together = embedder.embed(texts)
    assert len(shapes) > 1
    assert all(rows * width <= budget or rows == 1 for rows, width in shapes), shapes
    assert sum(rows for rows, _ in shapes) == len(texts)
    alone = np.stack([embedder.embed([t])[0] for t in texts[::9]])
    assert np.abs(together[::9] - alone).max() <= 1e-5  # each vector back in its text's place


@pytest.mark.model
def test_a_batch_of_two_lengths_runs_without_padding_and_a_long_text_alone():
    embedder = create_embedder("local")
    embedder.load()
    feeds: list[np.ndarray] = []
    real_run = embedder._session.run

    class Recording:
        def run(self, names, inputs):
            feeds.append(inputs["attention_mask"])
            return real_run(names, inputs)

    embedder._session = Recording()
    texts = ["read the file " + "and parse it " * 5 + str(i) for i in range(32)]
    texts += ["send mail " + str(i) for i in range(32)] + ["a document " * 120]
    vectors = embedder.embed(texts)
    padded = sum(mask.size for mask in feeds)
    assert padded == sum(int(mask.sum()) for mask in feeds)  # one forward per length: no padding
    assert any(mask.shape[0] == 1 for mask in feeds)  # the long text went alone
    alone = embedder.embed([texts[0], texts[40]])
    assert np.abs(vectors[[0, 40]] - alone).max() <= 1e-5


@pytest.mark.parametrize("budget", [0, 255, 65537, 2.5, "2048", True])
def test_max_batch_tokens_out_of_range_is_a_clear_error(budget):
    from embedshare.service.config import ServiceConfig

    with pytest.raises(SettingError, match="max_batch_tokens"):
        create_embedder("local", max_batch_tokens=budget)
    with pytest.raises(SettingError, match="max_batch_tokens"):
        ServiceConfig(store="/tmp/embedshare-test-store", max_batch_tokens=budget)


def test_max_batch_tokens_is_a_serve_option_and_refused_by_torch():
    from click.testing import CliRunner

    from embedshare.cli.serve import serve
    from embedshare.service.config import ServiceConfig

    assert ServiceConfig(store="/tmp/embedshare-test-store", max_batch_tokens=4096).max_batch_tokens == 4096
    help_text = CliRunner().invoke(serve, ["--help"]).output
    assert "--max-batch-tokens" in help_text
    with pytest.raises(EmbedderError, match="max_batch_tokens is for local and local@int8"):
        create_embedder("local@torch", max_batch_tokens=4096)


@pytest.mark.parametrize(
    "model", ["hash:64", "openai:text-embedding-3-small", "local@torch", "local:all-MiniLM-L6-v2@torch"]
)
def test_a_token_budget_for_a_model_without_one_is_warned_about_not_ignored(model):
    """Before, the service dropped max_batch_tokens for every model but local in silence: a user
    who set it for hash or openai believed it bounded their forwards. Every way of making a
    config (the API, ``serve``, the service's argv) goes through ServiceConfig's check.
    (local@torch also refuses it when it loads, as before.)"""
    import warnings

    from embedshare.service.config import ServiceConfig

    with pytest.warns(UserWarning, match=f"max_batch_tokens has no effect with model {re.escape(repr(model))}"):
        config = ServiceConfig(store="/tmp/embedshare-test-store", model=model, max_batch_tokens=4096)
    assert config.max_batch_tokens == 4096  # a config that ran before still runs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for local in ("local", "local@int8", "LOCAL@ONNX", "local:all-MiniLM-L6-v2"):
            assert ServiceConfig(store="/tmp/embedshare-test-store", model=local, max_batch_tokens=512)
