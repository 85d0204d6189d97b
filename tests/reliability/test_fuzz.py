"""Protocol fuzzing (issue #5): at least 10,000 random and mutated frames against a live service.

A seeded generator (``EMBEDSHARE_FUZZ_SEED``, ``EMBEDSHARE_FUZZ_FRAMES``) makes well-framed bodies
(valid requests, requests with a field replaced by a random value, byte-level mutations of valid
requests, random msgpack of random types, random bytes) and framing attacks on their own
connections (a declared length past the limit, a body shorter than declared, a cut header, a
zero-length frame, a connection closed at once). Meanwhile a well-behaved client in another
thread keeps asking for new vectors and searches and checks every answer.

The service must never crash or hang: every well-framed frame gets exactly one reply (an error
or a result) within the socket timeout, every framing attack ends in a clean close, and the
well-behaved client never sees an error or a wrong answer. Plus property tests (hypothesis) of
the decoding functions the service runs on every frame.
"""

from __future__ import annotations

import math
import os
import random
import socket
import struct
import threading
import time
from collections import Counter

import msgpack
import pytest
from helpers.extras import skip_module_unless
from helpers.figures import record
from helpers.frames import closed_by_peer, connect_raw, read_reply
from helpers.waiting import wait_for

from embedshare.access import SharedEmbeddingManager
from embedshare.client import protocol
from embedshare.embedders import (
    InvalidTextError,
    create_embedder,
    validate_text,
    validate_texts,
)
from embedshare.manager import EmbeddingManager

skip_module_unless("dev", "hypothesis")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SEED = int(os.environ.get("EMBEDSHARE_FUZZ_SEED", "5150"))
FRAMES = int(os.environ.get("EMBEDSHARE_FUZZ_FRAMES", "20000"))
PIPELINE = 50  # well-framed frames sent back to back on one connection before reading replies
EMBEDDER = create_embedder("hash:64")
MODEL_ID = EMBEDDER.model_id


# -- the generator --------------------------------------------------------------------------------


def random_text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.6:
        return (
            " ".join(
                rng.choice(["read", "csv", "file", "http", "post", "json", "zip", "hash"])
                for _ in range(rng.randint(1, 5))
            )
            + f" {rng.randrange(10**6)}"
        )
    if kind < 0.8:  # any code point but surrogates (msgpack cannot encode those)
        return "".join(
            chr(rng.choice([rng.randrange(0x20, 0x7F), rng.randrange(0xA0, 0xD800), rng.randrange(0xE000, 0x110000)]))
            for _ in range(rng.randint(0, 40))
        )
    return rng.choice(["", " ", "\t\n", "\x00", "\u200b", "a" * rng.randint(1, 20000)])


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12 if depth < 3 else 9)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 2**31, -(2**31), 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 1e308, rng.random()])
    if kind in (4, 5):
        return random_text(rng)
    if kind == 6:
        return rng.randbytes(rng.randint(0, 64))
    if kind == 7:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randint(0, 16)))
    if kind == 8:
        return rng.choice(["hello", "embed", "preload", "stats", "ping", "texts", "v", "id", "op"])
    if kind == 9:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 6))]
    if kind == 10:
        return {random_text(rng)[:10]: random_value(rng, depth + 1) for _ in range(rng.randint(0, 6))}
    return {
        rng.choice(["v", "id", "op", "texts", "model_id", "token"]): random_value(rng, depth + 1)
        for _ in range(rng.randint(0, 6))
    }


def valid_request(rng: random.Random) -> dict:
    op = rng.choice(["ping", "stats", "hello", "embed", "embed", "preload"])
    message = {"v": 1, "id": rng.randrange(1, 2**32), "op": op}
    if op in ("embed", "preload"):
        message["texts"] = [random_text(rng) for _ in range(rng.randint(0, 6))]
    if op == "hello" and rng.random() < 0.5:
        message["model_id"] = rng.choice([MODEL_ID, "hash:32:v1", random_text(rng)])
    return message


def mutate_bytes(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        if choice == 0 and data:  # flip bits of a byte
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif choice == 1 and data:  # a random byte
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice == 2 and data:  # a msgpack type byte that claims a large length
            data[rng.randrange(len(data))] = rng.choice([0xC1, 0xC6, 0xC7, 0xC8, 0xC9, 0xDB, 0xDD, 0xDF, 0xDC, 0xDE])
        elif choice == 3:  # cut it short
            del data[rng.randrange(len(data) + 1) :]
        elif choice == 4:  # insert random bytes
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.randint(1, 8))
        elif data:  # duplicate a slice
            i = rng.randrange(len(data))
            data[i:i] = data[i : i + rng.randint(1, 16)]
    return bytes(data)


def well_framed_body(rng: random.Random) -> tuple[str, bytes]:
    roll = rng.random()
    if roll < 0.10:
        return "valid", msgpack.packb(valid_request(rng))
    if roll < 0.35:
        message = valid_request(rng)
        field = rng.choice(["v", "id", "op", "texts", "texts[i]", "extra"])
        if field == "texts[i]" and message.get("texts"):
            message["texts"][rng.randrange(len(message["texts"]))] = random_value(rng)
        elif field == "extra":
            message[random_text(rng)[:8]] = random_value(rng)
        else:
            message[field if field != "texts[i]" else "texts"] = random_value(rng)
        return "field", msgpack.packb(message)
    if roll < 0.70:
        return "mutated", mutate_bytes(rng, msgpack.packb(valid_request(rng)))
    if roll < 0.85:
        return "random_msgpack", msgpack.packb(random_value(rng))
    return "random_bytes", rng.randbytes(rng.randint(0, 200))


def harmless(body: bytes) -> bytes:
    """A frame the fuzzer must not send as is: a valid shutdown would end the run (by design)."""
    try:
        message = protocol.unpack(body)
    except protocol.ProtocolError:
        return body
    if message.get("op") == "shutdown":
        return msgpack.packb({**message, "op": "ping"})
    return body


# -- the live run ---------------------------------------------------------------------------------------


def _framing_attack(address: str, rng: random.Random) -> str:
    """One malformed stream on its own connection; the service must answer or close cleanly."""
    kind = rng.choice(["too_large", "short_body", "cut_header", "zero_length", "close_at_once", "garbage_after"])
    sock = connect_raw(address)
    try:
        if kind == "too_large":
            sock.sendall(
                struct.pack(">I", rng.randrange(protocol.MAX_FRAME + 1, 2**32)) + rng.randbytes(rng.randint(0, 64))
            )
            reply = read_reply(sock)
            assert reply["ok"] is False and reply["error"]["code"] == "too_large"
            assert closed_by_peer(sock)
        elif kind == "short_body":
            declared = rng.randint(1, 1 << 20)
            sock.sendall(struct.pack(">I", declared) + rng.randbytes(rng.randrange(min(declared, 4096))))
            sock.shutdown(socket.SHUT_WR)
            assert closed_by_peer(sock), "a connection with a cut body was left open"
        elif kind == "cut_header":
            sock.sendall(rng.randbytes(rng.randint(1, 3)))
            sock.shutdown(socket.SHUT_WR)
            assert closed_by_peer(sock)
        elif kind == "zero_length":
            sock.sendall(struct.pack(">I", 0))
            reply = read_reply(sock)
            assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
            sock.sendall(struct.pack(">I", 0) + b"")
            assert read_reply(sock)["ok"] is False  # the connection still works
        elif kind == "garbage_after":  # a good frame, then a header past the limit
            body = msgpack.packb({"v": 1, "id": 9, "op": "ping"})
            sock.sendall(struct.pack(">I", len(body)) + body + b"\xff\xff\xff\xff")
            replies = []
            try:
                while True:
                    replies.append(read_reply(sock))
            except (EOFError, ConnectionResetError):
                pass  # closed: its stream cannot be resynchronised
            # the ping's reply may or may not have left before the connection was dropped
            assert [r for r in replies if r.get("error", {}).get("code") == "too_large"]
            assert all(r == {"id": 9, "ok": True} or r["error"]["code"] == "too_large" for r in replies)
        # close_at_once: nothing sent
    finally:
        sock.close()
    return kind


class WellBehavedClient(threading.Thread):
    """Asks for new vectors and searches until stopped, checking every answer."""

    def __init__(self, address: str, reference: EmbeddingManager) -> None:
        super().__init__(daemon=True)
        self.client = SharedEmbeddingManager(address, on_failure="error", request_timeout=60)
        self.reference = reference
        self.stop = threading.Event()
        self.checks = 0
        self.failures: list[str] = []

    def run(self) -> None:
        queries = ["read a csv file", "send an http post", "hash a file", "zip a folder"]
        i = 0
        while not self.stop.is_set():
            i += 1
            texts = [f"well behaved text {i} {j}" for j in range(3)]
            try:
                got = self.client.get_embeddings(texts)
                if got.tobytes() != EMBEDDER.embed(texts).tobytes():
                    self.failures.append(f"wrong vectors for {texts}")
                query = f"{queries[i % len(queries)]} {i}"
                names = [r.name for r in self.client.search(query, k=3)]
                if names != [r.name for r in self.reference.search(query, k=3)]:
                    self.failures.append(f"wrong search results for {query!r}")
                self.checks += 1
            except Exception as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_10k_random_and_mutated_frames_never_crash_or_hang_the_service(hash_service, tmp_path):
    rng = random.Random(SEED)
    reference = EmbeddingManager(tmp_path / "reference", model="hash:64", registry="bundled")
    checker = WellBehavedClient(hash_service.address, reference)
    checker.start()
    kinds: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    attacks: Counter[str] = Counter()
    sent = shutdowns_defused = 0
    started = time.monotonic()
    try:
        while sent < FRAMES:
            sock = connect_raw(hash_service.address, timeout=60)
            try:
                batch = []
                for _ in range(min(PIPELINE, FRAMES - sent)):
                    kind, body = well_framed_body(rng)
                    safe = harmless(body)
                    shutdowns_defused += safe is not body
                    batch.append(struct.pack(">I", len(safe)) + safe)
                    kinds[kind] += 1
                sock.sendall(b"".join(batch))
                for _ in batch:  # exactly one reply per frame; a hang is a socket timeout
                    reply = read_reply(sock)
                    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool) and "id" in reply
                    if reply["ok"]:
                        codes["ok"] += 1
                    else:
                        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
                        codes[reply["error"]["code"]] += 1
                sent += len(batch)
            finally:
                sock.close()
            for _ in range(rng.randint(0, 5)):  # ~2.5 framing attacks per 50 frames
                attacks[_framing_attack(hash_service.address, rng)] += 1
            assert checker.is_alive() and not checker.failures, checker.failures[:3]
    finally:
        checker.stop.set()
        checker.join(60)
    seconds = time.monotonic() - started
    assert not checker.failures, checker.failures[:5]
    assert checker.checks > 0
    stats = hash_service.stats()
    assert stats["pid"] == hash_service.pid  # never restarted, never crashed
    assert codes["internal"] == 0, "a frame reached an unexpected exception in the service"
    # every connection the fuzzer opened is gone from the service's books (the checker's stays)
    wait_for(lambda: len(hash_service.stats()["clients"]) <= 2, 30, "the fuzz connections to be forgotten")
    log = hash_service.log_tail(100000)
    assert "Traceback" not in log, log[-3000:]
    record(
        "protocol_fuzz",
        seed=SEED,
        frames=sent,
        frame_kinds=dict(kinds),
        replies=dict(codes),
        framing_attacks=dict(attacks),
        framing_attacks_total=sum(attacks.values()),
        shutdowns_defused=shutdowns_defused,
        well_behaved_checks=checker.checks,
        seconds=round(seconds, 1),
        service_errors_counted=stats["errors"],
    )


# -- property tests of what the service runs on every frame -------------------------------------------

DECODED = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "v": DECODED | st.just(1),
        "id": DECODED | st.integers(-(2**63), 2**64 - 1),
        "op": DECODED | st.sampled_from(protocol.OPS),
        "texts": DECODED | st.lists(DECODED | st.text(max_size=20), max_size=5),
    },
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_map_or_a_protocol_error(body):
    try:
        message = protocol.unpack(body)
    except protocol.ProtocolError as exc:
        assert exc.code == "bad_request" and str(exc)
    else:
        assert isinstance(message, dict)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FIELDS | DECODED)
def test_any_decoded_value_is_a_request_or_a_clear_error(value):
    """What the service does with a frame before any model work: check, then validate texts."""
    try:
        message = protocol.unpack(msgpack.packb(value))
        request_id = protocol.reply_id(message)
        checked_id, op = protocol.check_request(message)
        assert checked_id == request_id and op in protocol.OPS
        if op in ("embed", "preload"):
            texts = [validate_text(t, f"texts[{i}]") for i, t in enumerate(protocol.request_texts(message))]
            assert all(isinstance(t, str) and t for t in texts)
    except protocol.ProtocolError as exc:
        assert exc.code in ("bad_request", "version", "unknown_op", "too_large") and str(exc)
    except InvalidTextError as exc:
        assert str(exc).startswith("texts[")


@settings(max_examples=500, deadline=None)
@given(st.lists(DECODED | st.text(st.characters(blacklist_categories=[])), max_size=5) | DECODED)
def test_text_validation_accepts_only_usable_strings(texts):
    try:
        clean = validate_texts(texts)
    except InvalidTextError as exc:
        assert str(exc)
    else:
        assert isinstance(texts, (list, tuple)) and len(clean) == len(texts)
        assert all(isinstance(t, str) and t and len(t) <= 8192 for t in clean)
        for t in clean:
            t.encode("utf-8")  # no lone surrogate got through
