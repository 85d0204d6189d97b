"""``EmbeddingConfig`` and how the original manager's model names map onto embedshare's specs.

The original embedded with OpenAI's ``text-embedding-3-large`` (3,072 dims). That name maps to
the spec ``openai:text-embedding-3-large``; an embedshare spec (``local``, ``hash:64``,
``openai:...``) is taken as it is. When the config does not name a model, the model is, in
order: ``EMBEDSHARE_MODEL``, the running service's, the original's when an API key is set,
else the local model, with one warning that says so.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from ..env import ENV_MODEL
from ..errors import ArgumentError
from ..util.user_warning import warn_user

ORIGINAL_MODEL = "text-embedding-3-large"
API_KEY_ENV = "OPENAI_API_KEY"
LOCAL_SPEC = "local"

MAX_DIMENSION = 65_536  # far beyond any embedding model's (OpenAI's largest: 3,072)
LOCAL_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class _Default(str):
    """A default value, told apart from the same value given explicitly.

    ``EmbeddingConfig()`` must show the original's defaults, yet only a model the user *asked
    for* is binding: an unasked default gives way to a running service or, with no API key,
    to the local model.
    """

    __slots__ = ()


class _DefaultInt(int):
    """An ``int`` default, told apart from the same number given explicitly (see ``_Default``)."""

    __slots__ = ()


class LocalModelWarning(UserWarning):
    """No API key is set: the compat manager embeds with the local model instead."""


@dataclass
class EmbeddingConfig:
    """The original's configuration. Only ``model`` and ``dimension`` change what embedshare does.

    The weights are embedshare's (the same 0.4/0.3/0.3 as the original); ``batch_size`` and
    ``cache_dir`` are kept for code that reads them: the service batches, and the cache lives
    in the store (``EMBEDSHARE_STORE``), shared by every process.
    """

    model: str = _Default(ORIGINAL_MODEL)
    dimension: int = _DefaultInt(3072)
    description_weight: float = 0.4
    parameter_weight: float = 0.3
    functionality_weight: float = 0.3
    batch_size: int = 100
    cache_dir: str = ".mcp_embedding_cache"

    def __post_init__(self) -> None:
        """``model=123`` or ``dimension='abc'`` is one line naming the field, here, not an
        ``AttributeError`` from deep inside the manager later."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise ArgumentError(
                f"EmbeddingConfig: model must be a model name such as {ORIGINAL_MODEL!r} or an embedshare "
                f"spec such as 'local', got {self.model!r}"
            )
        dimension = self.dimension
        if isinstance(dimension, bool) or not isinstance(dimension, int) or not 1 <= dimension <= MAX_DIMENSION:
            raise ArgumentError(
                f"EmbeddingConfig: dimension must be a whole number in 1..{MAX_DIMENSION}, got {dimension!r}"
            )

    @property
    def model_given(self) -> bool:
        """True when the model was named, not left at its default."""
        return not isinstance(self.model, _Default)

    @property
    def dimension_given(self) -> bool:
        return not isinstance(self.dimension, _DefaultInt)


def to_spec(model: str) -> str:
    """The embedshare spec of a model name the original's config could hold."""
    name = model.strip()
    if name.startswith("text-embedding-"):  # OpenAI's names: 3-large, 3-small, ada-002
        return f"openai:{name}"
    if name in LOCAL_NAMES:
        return LOCAL_SPEC
    return name  # an embedshare spec (local, hash:<dim>, openai:<model>), checked when built


def expected_dimension(spec: str) -> int | None:
    """The dimension a spec embeds with, when it is known without building the embedder."""
    kind, _, arg = spec.partition(":")
    if kind == "openai":  # imported here: the openai module brings logging, workers stay light
        from ..embedders.openai import KNOWN_DIMS

        return KNOWN_DIMS.get(arg)
    from ..embedders import create_embedder
    from ..errors import EmbedderError, UnknownModelError

    try:  # hash and local embedders know their size without loading anything
        return int(create_embedder(spec).dim)
    except (UnknownModelError, EmbedderError):
        return None


def asked_model(config: EmbeddingConfig | None) -> str | None:
    """The spec the caller asked for (config, then ``EMBEDSHARE_MODEL``), or None."""
    if config is not None and config.model_given:
        return to_spec(config.model)
    return os.environ.get(ENV_MODEL) or None


def fallback_model() -> str:
    """What a local manager embeds with when nothing names a model: the original's if it can."""
    return f"openai:{ORIGINAL_MODEL}" if os.environ.get(API_KEY_ENV) else LOCAL_SPEC


_warned = False
_warn_lock = threading.Lock()


def warn_local_default() -> None:
    """Say once per process that the local model replaces the original's, and why."""
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    warn_user(
        f"{API_KEY_ENV} is not set, so embedshare.compat embeds with the local model "
        f"(all-MiniLM-L6-v2, 384 dims), not the original's {ORIGINAL_MODEL} (3,072 dims). "
        f"Set {API_KEY_ENV}, or choose a model with EMBEDSHARE_MODEL or EmbeddingConfig(model=...).",
        LocalModelWarning,
    )


def reset_warning() -> None:
    """Allow the local-model warning again (``reset_embedding_manager``)."""
    global _warned
    with _warn_lock:
        _warned = False
