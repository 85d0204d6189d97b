"""Embedders: one interface, several backends, chosen by a spec string.

``create_embedder("hash:384")``, ``create_embedder("local")``,
``create_embedder("openai:text-embedding-3-small")``.

``local`` takes a backend after ``@``: ``local`` and ``local@onnx`` are ONNX Runtime fp32 (the
default, no torch), ``local@torch`` is sentence-transformers on torch (same vectors, same
``model_id``), ``local@int8`` is ONNX Runtime with dynamic int8 quantisation (its own
``model_id``). ``local:<model>@<backend>`` names the model too.
"""

from __future__ import annotations

from typing import Any, cast

from ..errors import EmbedderError, InvalidTextError, UnknownModelError
from .base import (
    EMBEDDER_MEMBERS,
    MAX_TEXT_CHARS,
    Embedder,
    EmbedderDefaults,
    check_vectors,
    missing_members,
    validate_text,
    validate_texts,
)

__all__ = [
    "MAX_TEXT_CHARS",
    "Embedder",
    "EmbedderDefaults",
    "EmbedderError",
    "InvalidTextError",
    "UnknownModelError",
    "check_vectors",
    "create_embedder",
    "model_id_of",
    "validate_text",
    "validate_texts",
]

SPEC_HELP = "'hash:<dim>' (e.g. hash:384), 'local' (or local@torch, local@int8), or 'openai:<model>'"
LOCAL_BACKENDS = ("onnx", "torch", "int8")


def create_embedder(spec: str | Embedder, **options: Any) -> Embedder:
    """Build the embedder a spec string names; an :class:`Embedder` is returned as is.

    ``options`` go to the backend's constructor (for example ``threads=`` for ``local``,
    ``base_url=`` for ``openai``).
    """
    if not isinstance(spec, str):
        return _as_embedder(spec)
    kind, arg = _split_spec(spec)
    if kind == "hash":
        from .hashing import HashingEmbedder

        try:
            dim = int(arg) if arg else 384
        except ValueError:
            raise UnknownModelError(f"bad model spec {spec!r}: hash:<dim> needs an integer") from None
        return HashingEmbedder(dim=dim, **options)
    if kind == "local":
        return _create_local(spec, arg, options)
    if kind == "openai":
        from .openai import OpenAIEmbedder

        if not arg:
            raise UnknownModelError(f"bad model spec {spec!r}: openai:<model> needs a model name")
        return OpenAIEmbedder(model=arg, **options)
    raise UnknownModelError(f"unknown model spec {spec!r}; expected {SPEC_HELP}")


def _split_spec(spec: str) -> tuple[str, str]:
    """``(kind, arg)`` of a spec: ``hash:64`` is ``("hash", "64")``, ``local@int8`` ``("local", "@int8")``."""
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()
    if kind.startswith("local@"):  # "local@torch" is "local:@torch": the bundled model
        kind, arg = "local", f"{arg}{kind[len('local') :]}"
    return kind, arg


def takes_token_budget(spec: str) -> bool:
    """Whether the spec's embedder cuts its forwards by ``max_batch_tokens`` (the local ONNX
    model, fp32 or int8); for any other, a budget given would be silently ignored."""
    kind, arg = _split_spec(spec)
    return kind == "local" and _local_backend(arg) != "torch"


def _local_backend(arg: str) -> str:
    """The backend of a local spec's argument: ``all-MiniLM-L6-v2@int8`` is ``int8``; none is ``onnx``."""
    return arg.partition("@")[2].strip().lower() or "onnx"


def _as_embedder(candidate: object) -> Embedder:
    """An object given as the model, if it is an :class:`Embedder`; a one-line error otherwise."""
    missing = missing_members(candidate)
    if len(missing) == len(EMBEDDER_MEMBERS) or "embed" in missing:
        raise UnknownModelError(f"model must be a spec string ({SPEC_HELP}) or an Embedder, got {candidate!r}")
    if missing:
        raise UnknownModelError(
            f"{candidate!r} is not a whole Embedder: it lacks {', '.join(missing)} "
            "(inherit embedshare.embedders.EmbedderDefaults for their neutral values)"
        )
    return cast(Embedder, candidate)  # every member is there


def _create_local(spec: str, arg: str, options: dict[str, Any]) -> Embedder:
    """``local[:<model>][@<backend>]``: ONNX Runtime unless the backend says torch."""
    name, backend = arg.partition("@")[0], _local_backend(arg)
    if backend not in LOCAL_BACKENDS:
        raise UnknownModelError(
            f"bad model spec {spec!r}: unknown local backend {backend!r}; expected one of "
            + ", ".join(f"local@{b}" for b in LOCAL_BACKENDS)
        )
    named: dict[str, Any] = {"model_name": name.strip()} if name.strip() else {}
    if backend == "torch":
        from .local import LocalEmbedder

        return LocalEmbedder(**named, **options)
    from .onnx_local import OnnxLocalEmbedder

    quantize: dict[str, Any] = {"quantize": "int8"} if backend == "int8" else {}
    return OnnxLocalEmbedder(**named, **quantize, **options)


def model_id_of(spec: str | Embedder) -> str:
    """The ``model_id`` that ``create_embedder(spec)`` would have, without building an API client.

    A worker that only checks which model a service embeds with must not pay for the backend:
    an ``openai:`` embedder imports the openai SDK and opens a connection pool (tens of MB and
    a second or more in each of 25 workers; httpx alone measured several MB and a few hundred
    ms by ``embedshare bench``).
    """
    if isinstance(spec, str):
        kind, _, arg = spec.strip().partition(":")
        if kind.lower() == "openai":
            if not arg.strip():
                raise UnknownModelError(f"bad model spec {spec!r}: openai:<model> needs a model name")
            return f"openai:{arg.strip()}"  # what OpenAIEmbedder names a bare model (no options)
    return create_embedder(spec).model_id
