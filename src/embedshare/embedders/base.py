"""The one interface every embedder implements, and the checks every output passes.

An embedder turns a list of texts into an ``(n, dim)`` float32 array of L2-normalised rows.
Like httpx's transports, the rest of embedshare only ever sees this interface, so a new
backend is one small class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import EmbedderError, InvalidTextError

# The longest text we accept, in characters. Longer texts are truncated to this before they
# reach a model (all-MiniLM-L6-v2 reads at most 256 word pieces, ~1-2k characters, anyway), so
# the cache key, the model input and the memory a request costs all stay bounded.
MAX_TEXT_CHARS = 8192


@runtime_checkable
class Embedder(Protocol):
    """What every backend provides, and all that the rest of embedshare reads of one.

    ``model_id`` names the model *and* every setting that changes its vectors; it is part of
    every cache key, so two embedders with different ``model_id`` never share cached vectors.
    The members after ``embed`` are what the store and the service's batcher use to size and
    prepare the work; :class:`EmbedderDefaults` gives a backend that needs none of them the
    neutral values, so a new backend writes only ``model_id``, ``dim`` and ``embed``.
    """

    model_id: str

    @property
    def dim(self) -> int:
        """Of every vector; an attribute or a read-only property."""
        ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 array, each row L2-normalised."""
        ...

    @property
    def concurrency(self) -> int:
        """Batches the service may run on it at once: 1 for a model that already uses every
        core, more for a network API whose time is spent waiting."""
        ...

    @property
    def max_tokens(self) -> int | None:
        """Tokens the model reads of one text (the rest is cut); None when it does not say.
        The batcher caps a text's estimated cost at it."""
        ...

    @property
    def max_batch_tokens(self) -> int | None:
        """Padded tokens one forward takes at most; None when batches are not cut by tokens.
        The batcher gathers a few forwards' worth per batch."""
        ...

    def load(self) -> None:
        """Do now what the first ``embed`` would (weights, graph, session), so that a service
        is ready before it answers and no client's first request pays for it."""
        ...

    def keep_graphs_in(self, folder: Path) -> None:
        """Where to keep what it builds to run (a local model's ONNX graph), so the next load
        reuses it; the store's folder. A backend that builds nothing ignores it."""
        ...


class EmbedderDefaults:
    """The neutral members of :class:`Embedder`, for a backend to inherit: one batch at a time,
    no token limits it knows of, nothing to load ahead or to keep."""

    concurrency: int = 1
    max_tokens: int | None = None
    max_batch_tokens: int | None = None

    def load(self) -> None:
        """Nothing to do ahead of the first ``embed``."""

    def keep_graphs_in(self, folder: Path) -> None:
        """Nothing built to keep."""


# What an object must define to be an Embedder, in the order the Protocol lists them.
EMBEDDER_MEMBERS = tuple(name for name in dict.fromkeys([*Embedder.__annotations__, *vars(Embedder)]) if name[0] != "_")


def missing_members(candidate: object) -> list[str]:
    """The :class:`Embedder` members ``candidate`` lacks (empty for an embedder).

    Unlike ``isinstance(candidate, Embedder)``, this names them, for a one-line error.
    """
    return [name for name in EMBEDDER_MEMBERS if not hasattr(candidate, name)]


def validate_texts(texts: object) -> list[str]:
    """Check a batch of texts and return it as a list of clean strings.

    Rejects non-strings (``None``, bytes, numbers), empty strings and strings that cannot be
    encoded as UTF-8 (lone surrogates), naming the first offender. Texts longer than
    ``MAX_TEXT_CHARS`` are truncated (documented in the README).

    A whitespace-only string is a text like any other and is embedded as the model embeds it,
    as OpenAI's API does (it refuses only empty strings). Refusing it failed the whole batch of
    every framework that sends documents as they come (LangChain, LlamaIndex, Haystack).
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (list, tuple)):
        raise InvalidTextError(f"texts must be a list of strings, got {type(texts).__name__}")
    clean: list[str] = []
    for i, text in enumerate(texts):
        clean.append(validate_text(text, where=f"texts[{i}]"))
    return clean


def validate_text(text: object, where: str = "text") -> str:
    """Check one text; see :func:`validate_texts`."""
    if not isinstance(text, str):
        raise InvalidTextError(f"{where} must be a str, got {type(text).__name__}")
    if not text:
        raise InvalidTextError(f"{where} is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidTextError(f"{where} is not valid Unicode (lone surrogate at position {exc.start})") from None
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS]
    return text


def check_vectors(vectors: object, count: int, dim: int, source: str) -> np.ndarray:
    """Make a backend's output safe to cache: right shape, finite, float32, unit length.

    A backend that returns the wrong count or dimension, NaN or infinity, or an all-zero row is
    an error naming ``source``; nothing it returned is cached.
    """
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != count or array.shape[1] != dim:
        raise EmbedderError(f"{source} returned vectors of shape {array.shape}, expected ({count}, {dim})")
    if not np.isfinite(array).all():
        raise EmbedderError(f"{source} returned NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise EmbedderError(f"{source} returned an all-zero vector")
    return np.ascontiguousarray(array / norms, dtype=np.float32)
