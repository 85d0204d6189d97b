"""The one interface every embedder implements, and the checks every output passes.

An embedder turns a list of texts into an ``(n, dim)`` float32 array of L2-normalised rows.
Like httpx's transports, the rest of embedshare only ever sees this interface, so a new
backend is one small class.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import EmbedderError, InvalidTextError

# The longest text we accept, in characters. Longer texts are truncated to this before they
# reach a model (all-MiniLM-L6-v2 reads at most 256 word pieces, ~1-2k characters, anyway), so
# the cache key, the model input and the memory a request costs all stay bounded.
MAX_TEXT_CHARS = 8192


@runtime_checkable
class Embedder(Protocol):
    """What every backend provides.

    ``model_id`` names the model *and* every setting that changes its vectors; it is part of
    every cache key, so two embedders with different ``model_id`` never share cached vectors.
    """

    model_id: str

    @property
    def dim(self) -> int:
        """Of every vector; an attribute or a read-only property."""
        ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 array, each row L2-normalised."""
        ...


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
