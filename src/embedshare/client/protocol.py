"""The wire protocol between workers and the service: length-prefixed msgpack frames.

Why msgpack and not pickle: a peer can write anything on the socket, and unpickling runs
code. msgpack only ever yields plain data (maps, lists, strings, numbers, bytes), and we
check every field we read.

A frame is a 4-byte big-endian length, then one msgpack map. Requests::

    {"v": 1, "id": 7, "op": "embed", "texts": ["..."]}

``op`` is one of hello, embed, preload, stats, ping, shutdown. Replies carry the same ``id``::

    {"id": 7, "ok": true, "vectors": <float32 bytes>, "n": 1, "dim": 384}
    {"id": 7, "ok": false, "error": {"code": "bad_request", "message": "texts[0] must be a str"}}

The ``hello`` and ``stats`` replies have the shapes below (``HelloReply``, ``StatsReply``):
the service builds them, clients, the CLI, ``embedshare top`` and ``/metrics`` read them.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import msgpack

from ..errors import EmbedshareError, from_code
from ..errors import ProtocolError as ProtocolError  # the protocol's error: `protocol.ProtocolError`

if TYPE_CHECKING:  # util.latency imports numpy, which `embedshare stop` and `stats` need not load
    from ..util.latency import Summary

VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20  # 64 MiB: 100k texts of ~600 characters, or 40k vectors of 384 dims
MAX_TEXTS_PER_REQUEST = 100_000
OPS = ("hello", "embed", "preload", "stats", "ping", "shutdown")


# -- the replies' shapes ---------------------------------------------------------------------------


class ServedRegistry(TypedDict):
    """The tool registry a service serves."""

    hash: str  # its content hash
    source: str | None  # ``bundled`` or the file's absolute path; None if the store does not know
    index: str  # the index's folder


class HelloReply(TypedDict):
    """What a client checks before its first request (``Engine.hello``)."""

    version: int  # of this protocol
    model_id: str
    dim: int
    cache: str  # the cache file's folder: clients read their hits from it themselves
    index: str | None  # the tool index's folder
    registry: ServedRegistry | None
    pid: int
    max_texts: int  # per request


class Peer(TypedDict):
    """Who is at the other end of a connection."""

    pid: int | None  # a Unix peer's (SO_PEERCRED); None over TCP
    tcp: NotRequired[str]  # a TCP peer's HOST:PORT


class Connection(Peer):
    connected: float  # time.time() at accept
    requests: int


class ClientInfo(Connection):
    """One connected client, in ``StatsReply.clients``."""

    id: int  # the connection's serial number


class ClientMemory(ClientInfo):
    pss: int | None  # bytes; None for a TCP client, or a process gone or not ours to read


class ListenerStats(TypedDict):
    open: int
    cap: int
    refused: int
    evicted: int
    timed_out: int


class BudgetStats(TypedDict):
    """Bytes a listener's frames or bodies hold (``limits.ByteBudget``)."""

    used: int
    peak: int
    capacity: int
    waiting: int
    refused: int  # HTTP: bodies answered 429 because the budget was full


class LimitStats(TypedDict):
    socket: ListenerStats
    tcp: ListenerStats
    http: ListenerStats
    frame_bytes: BudgetStats
    http_body_bytes: BudgetStats


class MetricsSnapshot(TypedDict):
    """What the service counts (``ServiceMetrics``)."""

    uptime_s: float
    requests: int
    errors: int
    embed_requests: int
    texts: int
    hits: int
    misses: int
    joined_inflight: int
    model_calls: int
    texts_embedded: int
    cache_write_failures: int
    connections_total: int
    refused_peers: int
    auth_failures: int
    http_requests: NotRequired[int]  # from the HTTP endpoint's first request on
    queue_depth: int
    max_queue_depth: int
    request_latency: Summary
    batch_size: Summary
    model_call_seconds: Summary


class EngineStats(MetricsSnapshot):
    """The counters with the model's and the store's (``Engine.stats``); while the model loads
    (``ready`` false), ``model_id`` is the spec asked for and ``dim`` None."""

    startup_model_calls: int  # the service's own (index build, preloads), counted in model_calls too
    startup_texts_embedded: int
    corrupt_vectors: int  # cached values that failed their checksum, replaced
    old_format_vectors: int
    ready: bool
    pid: int
    model_id: str
    dim: int | None
    store: str
    index: str | None
    tools: int
    max_batch: int
    max_wait_ms: float
    torch_imported: bool
    embedder: str | None  # its repr


class StatsReply(EngineStats):
    """The ``stats`` reply: the engine's, and the listeners' (``EmbeddingServer.stats``)."""

    clients: list[ClientInfo]
    http: str | None  # the HTTP endpoint's URL
    limits: LimitStats


class StatsWithMemory(EngineStats):
    """A ``StatsReply`` with the PSS of the service and of each client, read by whoever shows
    it (``service.observe.with_memory``): the CLI, ``embedshare top``, ``/metrics``."""

    clients: list[ClientMemory]
    http: str | None
    limits: LimitStats
    pss: int | None  # the service's, in bytes


def pack(message: dict[str, Any]) -> bytes:
    """One frame: header and msgpack body."""
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ProtocolError("too_large", f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """Length of the body announced by a header; too large is a ProtocolError."""
    length: int = HEADER.unpack(header)[0]
    if length > MAX_FRAME:
        raise ProtocolError("too_large", f"frame of {length} bytes exceeds the limit of {MAX_FRAME}")
    return length


def unpack(body: bytes) -> dict[str, Any]:
    """Decode one frame body into a map, or raise ProtocolError naming the problem."""
    try:
        message = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except UnicodeDecodeError as exc:
        raise ProtocolError("bad_request", f"a string is not valid UTF-8 ({exc.reason})") from None
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise ProtocolError("bad_request", f"frame is not valid msgpack ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # msgpack raises a few other types on garbage
        raise ProtocolError("bad_request", f"frame is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_request", f"a frame must hold a map, got {type(message).__name__}")
    return message


def reply_id(message: dict[str, Any]) -> int:
    """The id to answer a request with, even one that fails validation (0 if it has none).

    An error about the envelope (another protocol version, an unknown op) must still carry the
    request's id: a client waits for the reply with its id, and would otherwise wait until its
    timeout (ten minutes by default) for an answer that was sent with id 0.
    """
    request_id = message.get("id", 0)
    return request_id if isinstance(request_id, int) and not isinstance(request_id, bool) else 0


def check_request(message: dict[str, Any], ops: tuple[str, ...] = OPS) -> tuple[int, str]:
    """Validate the envelope of a request: returns ``(id, op)``, ``op`` one of ``ops``."""
    request_id = message.get("id", 0)
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        raise ProtocolError("bad_request", "field 'id' must be an integer")
    version = message.get("v")
    if version != VERSION:
        raise ProtocolError("version", f"protocol version {version!r} is not supported; this service speaks {VERSION}")
    op = message.get("op")
    if op not in ops:
        raise ProtocolError("unknown_op", f"unknown op {op!r}; expected one of {', '.join(ops)}")
    return request_id, op


def request_texts(message: dict[str, Any]) -> list[str]:
    """The ``texts`` field of an embed or preload request, checked."""
    texts = message.get("texts")
    if not isinstance(texts, list):
        raise ProtocolError("bad_request", f"field 'texts' must be a list, got {type(texts).__name__}")
    if len(texts) > MAX_TEXTS_PER_REQUEST:
        raise ProtocolError("too_large", f"{len(texts)} texts in one request; the limit is {MAX_TEXTS_PER_REQUEST}")
    return texts


def error_reply(request_id: int, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


def reply_exception(reply: dict[str, Any]) -> EmbedshareError:
    """The exception an error reply stands for, for the client to raise: the class of the
    service's failure when its code is in ``errors.WIRE_ERRORS``, else ``RemoteError``."""
    error = reply.get("error")
    if not isinstance(error, dict):
        error = {}
    return from_code(str(error.get("code")), str(error.get("message")))
