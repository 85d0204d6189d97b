"""Damaged files fail loudly and safely (issue 10, part 4).

- A cache ``data.mdb`` cut short (to half): before, the service started and every embed or
  search died of SIGBUS (exit 135) with no message. Now opening it is a ``CacheDamagedError``
  naming the file and ``embedshare cache reset``, which moves it aside and recovers.
- One flipped bit inside a stored vector: before, it was returned (norm 1.57, the API promises
  unit length). Now every value carries a checksum: the vector is recomputed, rewritten and
  counted. A value of the old format (no checksum) is never returned unverified either.
- Garbled LMDB pages: a ``CacheDamagedError`` (a ``CacheError``), not a raw ``lmdb`` error; the
  service answers ``cache_damaged`` and lives on.
- A full disk when the service writes ``run/service.json`` (a real 4 MiB tmpfs), and a garbled
  ``service.json``: a clear error, nothing half-written, and the next start works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from helpers.disks import fill
from helpers.extras import requires
from helpers.frames import connect_raw, exchange

from embedshare.access import SharedEmbeddingManager
from embedshare.client.connection import ServiceConnection
from embedshare.embedders import create_embedder
from embedshare.manager import EmbeddingManager
from embedshare.service.launcher import EmbeddingService, ServiceStartError
from embedshare.store import CacheDamagedError, CacheError, EmbeddingCache, StoreLayout

EMBEDDER = create_embedder("hash:64")
TEXTS = [f"damaged files text {i}" for i in range(300)]


def _cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """``embedshare ARGS`` in its own interpreter: a SIGBUS there is an exit code, not our crash."""
    return subprocess.run(
        [sys.executable, "-m", "embedshare", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def _filled_store(store: Path, registry: str | None = "bundled") -> None:
    manager = EmbeddingManager(store, model="hash:64", registry=registry)
    manager.get_embeddings(TEXTS)
    manager.close()


def _truncate_to_half(store: Path) -> tuple[Path, int]:
    data = StoreLayout(store).cache / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, size // 2)
    return data, size


def _flip_bit_in_stored_vector(store: Path, vector: np.ndarray) -> None:
    """Flip one exponent bit inside ``vector``'s bytes where the cache file holds them (in place:
    a running service keeps its map of the same file)."""
    data_file = StoreLayout(store).cache / "data.mdb"
    content = data_file.read_bytes()
    at = content.find(vector.tobytes())
    assert at >= 0 and content.find(vector.tobytes(), at + 1) < 0, "the vector is in the file once"
    with open(data_file, "r+b") as f:
        f.seek(at + 3)  # the high byte of the first float: sign and exponent
        f.write(bytes([content[at + 3] ^ 0x20]))


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, f"exit code {result.returncode} (-7 is SIGBUS); stderr: {result.stderr[-2000:]}"
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# -- a data.mdb cut short ------------------------------------------------------------------------------


def test_a_truncated_cache_is_a_clear_error_for_a_local_manager_and_reset_recovers(store):
    _filled_store(store)
    data_file, size = _truncate_to_half(store)
    line = _one_error_line(_cli("embed", "a new text", "--store", str(store), "--model", "hash:64"))
    assert str(data_file) in line and "cut short" in line
    assert f"embedshare cache reset --store {StoreLayout(store).root}" in line
    with pytest.raises(CacheDamagedError, match="cut short"):  # in-process too: at open, before any read
        EmbeddingManager(store, model="hash:64")

    reset = _cli("cache", "reset", "--store", str(store))
    assert reset.returncode == 0, reset.stderr
    moved = [p for p in StoreLayout(store).root.iterdir() if p.name.startswith("cache.broken-")]
    assert len(moved) == 1 and (moved[0] / "data.mdb").stat().st_size == size // 2  # kept, not deleted
    assert moved[0].name in reset.stdout
    after = _cli("embed", TEXTS[0], "--json", "--store", str(store), "--model", "hash:64")
    assert after.returncode == 0, after.stderr
    got = np.array(json.loads(after.stdout)["vectors"][0], dtype=np.float32)
    assert got.tobytes() == EMBEDDER.embed([TEXTS[0]])[0].tobytes()


def test_a_truncated_cache_stops_the_service_from_starting_with_the_fix_named(store, make_service):
    _filled_store(store)
    data_file, _ = _truncate_to_half(store)
    service = EmbeddingService(store, model="hash:64", registry="bundled", export_env=False, start_timeout=60)
    try:
        with pytest.raises(ServiceStartError) as error:
            service.start()
    finally:
        service.stop()  # (a build without the check starts it; never leave it running)
    first_line = str(error.value).splitlines()[0]
    assert "CacheDamagedError" in first_line and str(data_file) in first_line
    assert "embedshare cache reset --store" in first_line
    # the foreground command says the same in one line
    line = _one_error_line(_cli("serve", "--store", str(store), "--model", "hash:64"))
    assert "cut short" in line and "embedshare cache reset" in line

    assert _cli("cache", "reset", "--store", str(store)).returncode == 0
    service = make_service(export_env=False)
    client = SharedEmbeddingManager(service.address, on_failure="error")
    assert client.get_embeddings(TEXTS[:50]).tobytes() == EMBEDDER.embed(TEXTS[:50]).tobytes()
    assert [r.name for r in client.search("read a csv file")]
    # a reset while a service runs is refused: it has the cache open
    refused = _one_error_line(_cli("cache", "reset", "--store", str(store)))
    assert "a service already runs" in refused and "embedshare stop --store" in refused
    client.close()


# -- a flipped bit, the old format ---------------------------------------------------------------------


def test_a_flipped_bit_in_a_stored_vector_is_never_returned_but_recomputed_and_counted(store):
    _filled_store(store, registry=None)
    expected = EMBEDDER.embed(TEXTS[:2])
    for vector in expected:
        _flip_bit_in_stored_vector(store, vector)
    manager = EmbeddingManager(store, model="hash:64")
    try:
        one = manager.get_embedding(TEXTS[0])  # the hit path (get_one)
        many = manager.get_embeddings(TEXTS[1:4])  # the batch path (lookup, get_many_into)
        for got, want in ((one, expected[0]), (many[0], expected[1])):
            assert got.tobytes() == want.tobytes()
            assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5
        stats = manager.stats()
        assert stats["corrupt_vectors"] == 2 and stats["old_format_vectors"] == 0
        assert stats["model_calls"] == 2 and stats["texts_embedded"] == 2  # only the two damaged
        # rewritten: hits now, nothing computed or counted again
        assert manager.get_embeddings(TEXTS[:2]).tobytes() == expected.tobytes()
        assert manager.stats()["model_calls"] == 2 and manager.stats()["corrupt_vectors"] == 2
    finally:
        manager.close()


def test_a_flipped_bit_read_by_a_worker_of_a_service_is_recomputed_by_the_service(store, make_service):
    _filled_store(store)
    _flip_bit_in_stored_vector(store, EMBEDDER.embed([TEXTS[5]])[0])
    service = make_service(export_env=False)
    client = SharedEmbeddingManager(service.address, on_failure="error")
    got = client.get_embedding(TEXTS[5])
    assert got.tobytes() == EMBEDDER.embed([TEXTS[5]])[0].tobytes()
    stats = service.stats()
    assert stats["corrupt_vectors"] == 1 and stats["texts_embedded"] - stats["startup_texts_embedded"] == 1
    assert client.stats()["misses"] == 1
    assert client.get_embedding(TEXTS[5]).tobytes() == got.tobytes()
    assert client.stats()["hits"] == 1  # rewritten: a hit from the map now
    client.close()


def test_values_of_the_old_format_without_a_checksum_are_rewritten_never_returned(store):
    layout = StoreLayout(store)
    cache = EmbeddingCache(layout.cache, EMBEDDER.model_id, EMBEDDER.dim)
    key = cache.key(TEXTS[0])
    wrong = EMBEDDER.embed(["some other text"])[0]  # a unit vector, but not this text's
    cache.close()
    env = lmdb.open(str(layout.cache), map_size=1 << 24)  # what a build before checksums wrote
    with env.begin(write=True) as txn:
        txn.put(key, wrong.tobytes())
    env.close()
    manager = EmbeddingManager(store, model="hash:64")
    try:
        assert manager.get_embedding(TEXTS[0]).tobytes() == EMBEDDER.embed([TEXTS[0]])[0].tobytes()
        assert manager.stats()["old_format_vectors"] == 1 and manager.stats()["corrupt_vectors"] == 0
        with manager.cache._transaction(write=False) as txn:
            assert len(txn.get(key)) == EMBEDDER.dim * 4 + 8  # now with its checksum
    finally:
        manager.close()


# -- garbled pages -------------------------------------------------------------------------------------


def _garble_pages_after_the_meta_pages(store: Path) -> None:
    data_file = StoreLayout(store).cache / "data.mdb"
    size = data_file.stat().st_size
    with open(data_file, "r+b") as f:  # in place: a running service maps this file
        f.seek(2 * 4096)
        f.write(b"\0" * (size - 2 * 4096))


def test_garbled_pages_are_a_project_error_naming_the_path_and_the_fix(store):
    _filled_store(store, registry=None)
    _garble_pages_after_the_meta_pages(store)
    manager = EmbeddingManager(store, model="hash:64")
    try:
        for read in (
            lambda: manager.get_embedding(TEXTS[0]),
            lambda: manager.get_embeddings(TEXTS[:3]),
            lambda: TEXTS[0] in manager.cache,
        ):
            with pytest.raises(CacheDamagedError) as error:
                read()
            assert isinstance(error.value, CacheError)
            assert str(StoreLayout(store).cache) in str(error.value) and "embedshare cache reset" in str(error.value)
    finally:
        manager.close()


def test_the_service_answers_a_request_on_garbled_pages_with_an_error_and_lives_on(store, make_service):
    service = make_service(export_env=False)
    sock = connect_raw(service.address)
    try:
        assert exchange(sock, {"v": 1, "id": 1, "op": "embed", "texts": TEXTS[:100]})["ok"]
        _garble_pages_after_the_meta_pages(store)
        reply = exchange(sock, {"v": 1, "id": 2, "op": "embed", "texts": TEXTS[:3]})
        assert not reply["ok"] and reply["error"]["code"] == "cache_damaged", reply
        assert "embedshare cache reset" in reply["error"]["message"]
        assert exchange(sock, {"v": 1, "id": 3, "op": "ping"})["ok"]  # alive, same connection
    finally:
        sock.close()
    assert service.stats()["pid"] == service.pid


@requires("http")
def test_garbled_pages_are_cache_damaged_error_through_the_socket_and_a_503_over_http(store, make_service):
    """The same failure, the same class: in-process, the socket's client raises
    CacheDamagedError (not RemoteError), and HTTP answers the table's 503, not a 500."""
    import httpx

    service = make_service(export_env=False, http="127.0.0.1:0")
    conn = ServiceConnection(service.address)
    try:
        conn.request("embed", timeout=60, texts=TEXTS[:100])
        _garble_pages_after_the_meta_pages(store)
        with pytest.raises(CacheDamagedError, match="embedshare cache reset"):
            conn.request("embed", timeout=60, texts=TEXTS[:3])
        body = {"model": "hash:64", "input": TEXTS[:3]}
        reply = httpx.post(f"{service.http_url}/v1/embeddings", json=body, timeout=60)
        assert reply.status_code == 503, reply.text
        error = reply.json()["error"]
        assert error["code"] == "cache_damaged" and error["type"] == "server_error"
        assert "embedshare cache reset" in error["message"]
        assert conn.request("ping", timeout=60)["ok"]  # alive, same connection
    finally:
        conn.close()
    manager = EmbeddingManager(store, model="hash:64")  # and in-process, the same class
    try:
        with pytest.raises(CacheDamagedError):
            manager.get_embeddings(TEXTS[:3])
    finally:
        manager.close()


# -- run/service.json: a full disk, a garbled file -----------------------------------------------------


def test_a_full_disk_at_the_state_write_leaves_nothing_half_written_and_a_later_start_works(small_tmpfs, make_service):
    store = small_tmpfs / "store"
    layout = StoreLayout(store)
    make_service(store=store, export_env=False).stop()  # it wrote its small files
    small_files = [layout.state, layout.record]  # what a service writes at start
    before = [f.read_text() for f in small_files]
    fill(small_tmpfs)
    # the store's small files cannot be written: a clear error naming the first, each one intact
    with pytest.raises(ServiceStartError) as error:
        EmbeddingService(store, model="hash:64", registry="bundled", export_env=False, start_timeout=60).start()
    first_line = str(error.value).splitlines()[0]
    assert "No space left" in first_line and any(f"cannot write {f}" in first_line for f in small_files), first_line
    # a preload list cannot be written either: an error, no partial preload file
    with pytest.raises(OSError, match="No space left"):
        EmbeddingService(store, model="hash:64", preload=["x" * 100_000], export_env=False).start()
    leftovers = sorted(
        p.name
        for p in [*layout.run.iterdir(), *layout.root.iterdir()]
        if p.name.endswith(".tmp") or p.name.startswith("preload-")
    )
    assert leftovers == [], leftovers
    assert [f.read_text() for f in small_files] == before
    # room again: the next start works and cleans up its preload file
    (small_tmpfs / "filler").unlink()
    service = make_service(store=store, preload=["a", "b"], export_env=False)
    client = SharedEmbeddingManager(service.address, on_failure="error")
    assert client.get_embeddings(TEXTS[:5]).tobytes() == EMBEDDER.embed(TEXTS[:5]).tobytes()
    client.close()
    assert not [p for p in layout.run.iterdir() if p.name.startswith("preload-")]
    assert json.loads(layout.state.read_text())["pid"] == service.pid


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"pid": 12, "config": {"model": "hash:6', "is damaged"),
        ("", "is damaged"),
        ("[1, 2]", "not an object"),
        ('{"pid": 12, "config": "hash:64"}', "holds an invalid config"),
    ],
)
def test_a_garbled_state_file_is_a_clear_restart_error_and_does_not_block_a_new_service(
    store, make_service, content, message
):
    layout = StoreLayout(store)
    layout.make_private_run_dir()
    layout.state.write_text(content)
    with pytest.raises(ServiceStartError) as error:
        EmbeddingService.from_state(store)
    assert message in str(error.value) and "service.json" in str(error.value)
    assert "no service has run" not in str(error.value)
    service = make_service(registry=None, export_env=False)
    assert json.loads(layout.state.read_text())["pid"] == service.pid  # rewritten


def test_data_mdb_cut_short_under_a_live_service_is_a_sigbus_that_its_log_and_the_next_start_explain(
    store, make_service, wait_for
):
    """Issue 21: truncated while open, the file kills the process that reads it (SIGBUS): that
    cannot be caught, so what the user sees is documented (docs/reliability.md, "Damaged
    files") and checked here: the service's log ends with faulthandler's line and stack (it
    said nothing), and the next start names the fix."""
    from helpers.processes import alive

    service = make_service(export_env=False)
    texts = [f"{t} cut short under a live service" * 4 for t in TEXTS * 4]
    sock = connect_raw(service.address)
    try:
        assert exchange(sock, {"v": 1, "id": 1, "op": "embed", "texts": texts})["ok"]
        data = StoreLayout(store).cache / "data.mdb"
        os.truncate(data, 8192)  # the two meta pages are left; every other page is gone
        with pytest.raises((EOFError, ConnectionError)):  # the service reads a page that is gone
            exchange(sock, {"v": 1, "id": 2, "op": "embed", "texts": [f"new {t}" for t in texts[:50]]})
    finally:
        sock.close()
    wait_for(lambda: not alive(service.pid), 30, "the service to die of SIGBUS")
    log = StoreLayout(store).log.read_text()
    assert "Fatal Python error: Bus error" in log, log[-2000:]
    with pytest.raises(ServiceStartError, match="was cut short.*embedshare cache reset"):
        EmbeddingService(store, model="hash:64", export_env=False, start_timeout=120).start()
