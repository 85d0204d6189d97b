"""The shared service: lifecycle, security basics, protocol robustness, single-flight,
equality with the local manager, and the client's failure policies."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import stat
import struct

import msgpack
import numpy as np
import pytest
from helpers.frames import connect_raw, exchange, frame, read_reply
from helpers.services import kill_service
from helpers.spawned import service_tasks

from embedshare.access import SharedEmbeddingManager
from embedshare.client import protocol
from embedshare.client.connection import ServiceUnavailable
from embedshare.manager import EmbeddingManager
from embedshare.service.launcher import EmbeddingService, ServiceStartError

TEXTS = [f"tool query number {i} about files and networks" for i in range(40)]


# -- lifecycle -------------------------------------------------------------------------------


def test_run_folder_and_socket_are_private(hash_service):
    layout = hash_service.layout
    assert stat.S_IMODE(os.stat(layout.run).st_mode) == 0o700
    assert stat.S_ISSOCK(os.stat(layout.socket).st_mode)
    assert stat.S_IMODE(os.stat(layout.socket).st_mode) == 0o600


def test_second_service_joins_instead_of_competing(hash_service, store):
    second = EmbeddingService(store, model="hash:64", export_env=False).start()
    assert second.owned is False
    assert second.pid == hash_service.pid
    second.stop()  # not the owner: must not stop the first
    assert hash_service.stats()["pid"] == hash_service.pid


def test_second_service_with_another_model_is_a_clear_error(hash_service, store):
    with pytest.raises(ServiceStartError, match="hash:64:v1.*hash:32:v1"):
        EmbeddingService(store, model="hash:32", export_env=False).start()


def test_a_service_that_fails_to_start_leaves_no_process_behind(store):
    import psutil

    def children() -> dict[int, str]:
        return {p.pid: p.status() for p in psutil.Process().children()}

    before = children()
    with pytest.raises(ServiceStartError, match="unknown"):
        EmbeddingService(store, model="no-such-model:1", export_env=False).start()
    assert {pid: status for pid, status in children().items() if pid not in before} == {}


def test_stale_socket_of_a_killed_service_is_replaced(make_service):
    first = make_service(registry=None, export_env=False)
    kill_service(first)
    assert first.layout.socket.exists()  # left behind: nobody cleaned up
    second = make_service(registry=None, export_env=False)
    assert second.owned and second.pid != first.pid
    assert SharedEmbeddingManager(second.address).get_embedding("hello").shape == (64,)


def test_stop_removes_socket_and_exports_address_while_running(store):
    with EmbeddingService(store, model="hash:64") as service:
        assert os.environ["EMBEDSHARE_ADDRESS"] == service.address
    assert "EMBEDSHARE_ADDRESS" not in os.environ
    assert not service.layout.socket.exists()


# -- results ---------------------------------------------------------------------------------


def test_shared_client_equals_local_manager_bit_for_bit(hash_service, tmp_path):
    shared = SharedEmbeddingManager(hash_service.address)
    local = EmbeddingManager(tmp_path / "local-store", model="hash:64", registry="bundled")
    assert shared.get_embeddings(TEXTS).tobytes() == local.get_embeddings(TEXTS).tobytes()
    for query in ("read a csv file", "send an http post request", "hash a file"):
        a, b = shared.search(query, k=5), local.search(query, k=5)
        assert [(r.name, r.score, r.reason) for r in a] == [(r.name, r.score, r.reason) for r in b]
    a, b = shared.find_similar_tools("csv_parser"), local.find_similar_tools("csv_parser")
    assert [(r.name, r.score) for r in a] == [(r.name, r.score) for r in b]


def test_cache_hits_and_searches_need_no_request_to_the_service(hash_service):
    client = SharedEmbeddingManager(hash_service.address)
    client.get_embeddings(TEXTS)
    client.search("read a csv file")
    before = hash_service.stats()["requests"]
    for _ in range(3):
        client.get_embeddings(TEXTS)
        client.search("Read a CSV   file")
        client.find_similar_tools("csv_parser")
        client.get_tool_protocols(["csv_parser"])
    assert hash_service.stats()["requests"] == before + 1  # only this stats request itself
    assert client.stats()["service_requests"] == 1 + 1  # the texts, then the query


def test_all_misses_of_one_call_go_in_one_request(hash_service):
    client = SharedEmbeddingManager(hash_service.address)
    client.get_embeddings(TEXTS + TEXTS[:5])
    assert client.stats()["service_requests"] == 1
    assert hash_service.stats()["embed_requests"] == 1


def test_hundred_threads_get_the_serial_results(hash_service, tmp_path, run_threads):
    client = SharedEmbeddingManager(hash_service.address)
    reference = EmbeddingManager(tmp_path / "ref", model="hash:64", registry="bundled")
    calls = [("embed", t) for t in TEXTS] + [("search", q) for q in ("csv", "http post", "zip a folder")]
    expected = {
        c: (
            reference.get_embedding(c[1]).tobytes()
            if c[0] == "embed"
            else [(r.name, r.score) for r in reference.search(c[1])]
        )
        for c in calls
    }

    def worker(i: int) -> list[bool]:
        results = []
        for call in calls[i % len(calls) :] + calls[: i % len(calls)]:
            got = (
                client.get_embedding(call[1]).tobytes()
                if call[0] == "embed"
                else [(r.name, r.score) for r in client.search(call[1])]
            )
            results.append(got == expected[call])
        return results

    results = [same for per_thread in run_threads(100, worker, timeout=120) for same in per_thread]
    assert len(results) == 100 * len(calls) and all(results)


# -- single flight across processes ----------------------------------------------------------


@pytest.mark.slow
def test_25_processes_asking_the_same_new_text_cause_one_model_call(make_service):
    service = make_service(registry=None)
    ctx = multiprocessing.get_context("fork")  # 25 spawned pytest children would take ~20 s
    barrier, results = ctx.Barrier(25), ctx.Queue()
    procs = [
        ctx.Process(
            target=service_tasks.embed_after_barrier, args=(service.address, "a brand new text", barrier, results)
        )
        for _ in range(25)
    ]
    for p in procs:
        p.start()
    vectors = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    stats = service.stats()
    assert len({v for _, v in vectors}) == 1
    assert stats["texts_embedded"] == 1
    assert stats["model_calls"] == 1
    # processes that ask after the vector was stored read it from the cache themselves
    assert 1 <= stats["texts"] <= 25 and stats["misses"] + stats["hits"] == stats["texts"]


@pytest.mark.slow
def test_model_calls_over_a_run_equal_its_distinct_texts(store, make_service):
    texts = [f"distinct text {i}" for i in range(300)]
    service = make_service(registry=None)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=service_tasks.embed_subset, args=(service.address, texts, seed, results))
        for seed in range(8)
    ]
    for p in procs:
        p.start()
    outputs = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    stats = service.stats()
    distinct = set().union(*outputs)
    assert stats["texts_embedded"] == len(distinct)
    reference = EmbeddingManager(store.parent / "ref", model="hash:64")
    for out in outputs:
        for text, vector in out.items():
            assert vector == reference.get_embedding(text).tobytes()


# -- protocol robustness ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (b"\xc1\xc1\xc1", "bad_request", "not valid msgpack"),
        (msgpack.packb([1, 2, 3]), "bad_request", "must hold a map"),
        (msgpack.packb({"v": 1, "id": 5, "op": "explode"}), "unknown_op", "explode"),
        (msgpack.packb({"v": 99, "id": 5, "op": "ping"}), "version", "99"),
        (msgpack.packb({"v": 1, "id": 5, "op": "embed", "texts": "abc"}), "bad_request", "texts"),
        (msgpack.packb({"v": 1, "id": 5, "op": "embed", "texts": [None]}), "invalid_text", "texts[0]"),
        (msgpack.packb({"v": 1, "id": 5, "op": "embed", "texts": [""]}), "invalid_text", "empty"),
        (msgpack.packb({"v": 1, "id": 5, "op": "embed", "texts": [b"bytes"]}), "invalid_text", "bytes"),
        (b"\x91\xa3\xff\xfe\xfd", "bad_request", "UTF-8"),  # invalid UTF-8 in a string
        (msgpack.packb({"v": 1, "id": "x", "op": "ping"}), "bad_request", "id"),
    ],
)
def test_bad_requests_get_a_clear_error_and_the_service_keeps_serving(hash_service, body, code, words):
    with connect_raw(hash_service.address) as sock:
        reply = exchange(sock, frame(body))
        assert reply["ok"] is False
        assert reply["error"]["code"] == code
        assert words in reply["error"]["message"]
        # the same connection still works
        ok = exchange(sock, frame(msgpack.packb({"v": 1, "id": 6, "op": "ping"})))
        assert ok == {"id": 6, "ok": True}
    assert SharedEmbeddingManager(hash_service.address).get_embedding("still fine").shape == (64,)


def test_an_oversized_frame_is_refused_without_reading_it(hash_service):
    with connect_raw(hash_service.address) as sock:
        sock.sendall(struct.pack(">I", protocol.MAX_FRAME + 1))
        reply = read_reply(sock)
        assert reply["error"]["code"] == "too_large"
        assert sock.recv(1) == b""  # that connection is closed: its stream cannot be resynchronised
    assert hash_service.stats()["errors"] >= 1
    assert SharedEmbeddingManager(hash_service.address).get_embedding("still fine").shape == (64,)


def test_a_client_vanishing_mid_frame_harms_no_one(hash_service):
    with connect_raw(hash_service.address) as sock:
        sock.sendall(struct.pack(">I", 1000) + b"only part of it")
    assert SharedEmbeddingManager(hash_service.address).get_embedding("after a broken peer").shape == (64,)


def test_hello_with_another_model_is_refused(hash_service):
    with pytest.raises(ValueError, match="hash:64:v1.*hash:32:v1"):
        SharedEmbeddingManager(hash_service.address, model="hash:32")


def test_stats_count_requests_hits_misses_batches_and_clients(hash_service):
    client = SharedEmbeddingManager(hash_service.address)
    client.get_embeddings(TEXTS[:10])
    stats = hash_service.stats()
    assert stats["texts_embedded"] >= 10 and stats["model_calls"] >= 1
    assert stats["request_latency"]["count"] >= 1 and stats["request_latency"]["p99"] is not None
    assert stats["batch_size"]["count"] == stats["model_calls"] - stats["startup_model_calls"]
    assert stats["startup_texts_embedded"] > 0  # the bundled registry's index was built
    assert os.getpid() in [c["pid"] for c in stats["clients"]]


# -- failure policies ------------------------------------------------------------------------


def test_restart_policy_brings_the_service_back(make_service):
    # the service the client restarts is stopped by make_service: this handle stops whatever
    # service runs on the store
    service = make_service(export_env=False)
    client = SharedEmbeddingManager(service.address, on_failure="restart")
    expected = client.get_embedding("before the crash")
    kill_service(service)
    vector = client.get_embedding("after the crash")  # a miss: needs the service
    assert vector.shape == (64,)
    assert client.get_embedding("before the crash").tobytes() == expected.tobytes()
    assert client.stats()["restarts"] == 1
    assert client.service_stats()["pid"] != service.pid
    assert [r.name for r in client.search("read csv")]  # the index is still there


def test_local_policy_falls_back_once_with_a_warning(store, make_service, caplog):
    service = make_service(export_env=False)
    client = SharedEmbeddingManager(service.address, on_failure="local")
    kill_service(service)
    with caplog.at_level(logging.WARNING, logger="embedshare"):
        a = client.get_embedding("new text one")
        b = client.get_embedding("new text two")
    reference = EmbeddingManager(store.parent / "ref", model="hash:64")
    assert a.tobytes() == reference.get_embedding("new text one").tobytes()
    assert b.tobytes() == reference.get_embedding("new text two").tobytes()
    warnings = [r for r in caplog.records if "local manager" in r.getMessage()]
    assert len(warnings) == 1
    assert client.stats()["fallback"] is True
    assert client.search("read csv")[0].name


def test_error_policy_raises_but_cache_hits_still_work(make_service):
    service = make_service(registry=None, export_env=False)
    client = SharedEmbeddingManager(service.address, on_failure="error")
    cached = client.get_embedding("cached before the crash")
    kill_service(service)
    with pytest.raises(ServiceUnavailable):
        client.get_embedding("needs the service")
    assert np.array_equal(client.get_embedding("cached before the crash"), cached)


def test_serve_on_a_served_store_reports_the_running_service(hash_service, store):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "embedshare.cli", "serve", "--store", str(store), "--model", "hash:64"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert f"already runs on this store (pid {hash_service.pid})" in out.stderr
    assert hash_service.stats()["pid"] == hash_service.pid


def test_the_owner_s_clients_default_to_restart_and_others_to_local(make_service, monkeypatch):
    service = make_service(registry=None)  # it exports EMBEDSHARE_ON_FAILURE=restart, as its owner
    assert SharedEmbeddingManager(service.address).on_failure == "restart"
    monkeypatch.delenv("EMBEDSHARE_ON_FAILURE")  # a process that did not start it
    assert SharedEmbeddingManager(service.address).on_failure == "local"


@pytest.mark.parametrize("policy", ["error", "local"])
def test_a_connection_that_died_under_a_running_service_is_replaced_whatever_the_policy(hash_service, policy):
    # The service closed this client's connection (an idle timeout, say) but still answers:
    # the next call reconnects instead of raising (error) or leaving the service (local).
    client = SharedEmbeddingManager(hash_service.address, on_failure=policy)
    try:
        first = client.get_embedding("before the connection dies")
        client.source.primary._conn._sock.shutdown(socket.SHUT_WR)  # its next send fails, as on a dead peer
        again = client.get_embedding("after the connection died")
        stats = client.stats()
        assert stats["reconnects"] == 1 and not stats["fallback"]
        assert again.shape == first.shape
    finally:
        client.close()
