"""``POST /tokenize``, after TEI's: how the model reads a text, one token at a time.

Why a tool-search service has it: the local model reads at most 256 word pieces of a text
(all-MiniLM-L6-v2's window), and a tool description or differentiation text past that is not
read at all. ``/tokenize`` shows where a text is cut, and ``/info``'s ``max_input_length`` says
how many tokens the model reads.

The request and reply are TEI's: ``{"inputs": "text" or ["text", ...], "add_special_tokens":
true}`` gives, for each input, its tokens as ``{"id", "text", "special", "start", "stop"}``
(``start``/``stop``: character offsets into the text; None for special tokens). The text is
cut at 8,192 characters first, as it is before it is embedded.

The tokenizer is the model package's own ``tokenizer.json``, loaded here on the first request:
a second instance, so the model thread's tokenizer is never called from another thread. Models
without a tokenizer of their own (the hashing model; an API's) get a 400 that says so.
"""

from __future__ import annotations

import threading
from typing import Any

from ...embedders.base import MAX_TEXT_CHARS
from .errors import ApiError
from .inputs import check_input_count


def _is_bundled_local(model_id: str) -> bool:
    return model_id.startswith("local:all-MiniLM-L6-v2:")


def max_input_length(model_id: str) -> int | None:
    """Tokens the model reads of a text (the rest is not read), or None when it has no window."""
    if not _is_bundled_local(model_id):
        return None
    from ...embedders.onnx_local import MAX_TOKENS

    return MAX_TOKENS


class ModelTokenizer:
    """The word-piece tokenizer of the local model, loaded once, used under a lock."""

    def __init__(self) -> None:
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._tokenizer is None:
            import tokenizers

            from ...embedders.local import bundled_model_path

            tokenizer = tokenizers.Tokenizer.from_file(str(bundled_model_path() / "tokenizer.json"))
            tokenizer.no_padding()
            tokenizer.no_truncation()  # every token, so a client sees where the model stops reading
            self._tokenizer = tokenizer
        return self._tokenizer

    def tokenize(self, texts: list[str], add_special_tokens: bool) -> list[list[dict[str, Any]]]:
        """Blocking (call it in a thread): TEI's token objects for each text."""
        with self._lock:
            encodings = self._load().encode_batch(texts, add_special_tokens=add_special_tokens)
        return [_tokens(text, encoding) for text, encoding in zip(texts, encodings, strict=True)]


def _tokens(text: str, encoding: Any) -> list[dict[str, Any]]:
    tokens = []
    for token_id, token, (start, stop), special in zip(
        encoding.ids, encoding.tokens, encoding.offsets, encoding.special_tokens_mask, strict=True
    ):
        if special:
            tokens.append({"id": token_id, "text": token, "special": True, "start": None, "stop": None})
        else:
            tokens.append({"id": token_id, "text": text[start:stop], "special": False, "start": start, "stop": stop})
    return tokens


def tokenize_request(body: dict[str, Any], model_id: str, max_inputs: int) -> tuple[list[str], bool]:
    """The texts (cut as they are embedded) and ``add_special_tokens`` of a /tokenize body."""
    if not _is_bundled_local(model_id):
        raise ApiError(
            400,
            f"model '{model_id}' has no tokenizer to show: /tokenize reads the local model's word pieces "
            "(serve --model local); the hashing model hashes words, an API model tokenizes on its side",
            param="model",
            code="no_tokenizer",
        )
    inputs = body.get("inputs")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "'inputs' must be a string or a non-empty list of strings", param="inputs")
    for index, text in enumerate(texts):
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ApiError(400, f"'inputs[{index}]' is not valid Unicode (a lone surrogate)", param="inputs") from None
    check_input_count(len(texts), max_inputs, "inputs")
    special = body.get("add_special_tokens", True)
    if not isinstance(special, bool):
        raise ApiError(400, "'add_special_tokens' must be true or false", param="add_special_tokens")
    return [t[:MAX_TEXT_CHARS] for t in texts], special
