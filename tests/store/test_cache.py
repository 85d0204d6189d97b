"""EmbeddingCache: round trips, model separation, many processes, kills, fork, growth, limits."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import signal
import threading

import numpy as np
import pytest
from helpers.spawned import cachetools_workers

from embedshare.embedders import create_embedder
from embedshare.store import CacheError, CacheFullError, EmbeddingCache

pytestmark = pytest.mark.timeout(120)

EMBEDDER = create_embedder("hash:64")
SPAWN = mp.get_context("spawn")
FORK = mp.get_context("fork")
DEADLINE = 60.0  # seconds any wait on another process may take before the test fails


def _texts(prefix: str, n: int) -> list[str]:
    return [f"{prefix} text number {i}" for i in range(n)]


@pytest.fixture()
def cache(tmp_path):
    with EmbeddingCache(tmp_path / "cache", EMBEDDER.model_id, EMBEDDER.dim) as c:
        yield c


def _join(proc, timeout: float = DEADLINE) -> None:
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
        pytest.fail(f"child {proc.pid} did not finish within {timeout}s")


# -- basics --------------------------------------------------------------------------------------


def test_round_trip_bit_for_bit(cache):
    texts = [*_texts("round trip", 50), "ünïcödé ✓", "lone � surrogate is still a key"]
    vectors = EMBEDDER.embed(texts)
    assert cache.put_many(texts, vectors) == len(texts)
    got, found = cache.get_many(texts)
    assert found.dtype == bool and found.all()
    assert got.dtype == np.float32 and got.shape == vectors.shape
    assert got.tobytes() == vectors.tobytes()
    for i in (0, 17, len(texts) - 1):
        one = cache.get(texts[i])
        assert one is not None and one.tobytes() == vectors[i].tobytes()
        assert texts[i] in cache
    assert cache.count() == len(texts)
    # writing the same texts again adds nothing
    assert cache.put_many(texts[:10], vectors[:10]) == 0
    assert cache.count() == len(texts)


def test_missing_texts(cache):
    cache.put_many(["present"], EMBEDDER.embed(["present"]))
    assert cache.get("absent") is None
    assert "absent" not in cache
    got, found = cache.get_many(["absent", "present", "also absent"])
    assert found.tolist() == [False, True, False]
    assert not got[0].any() and not got[2].any()
    assert got[1].tobytes() == EMBEDDER.embed(["present"])[0].tobytes()
    got, found = cache.get_many([])
    assert got.shape == (0, EMBEDDER.dim) and found.shape == (0,)


def test_returned_arrays_are_independent_copies(cache):
    texts = ["alpha", "beta"]
    vectors = EMBEDDER.embed(texts)
    cache.put_many(texts, vectors)
    one = cache.get("alpha")
    one[:] = 42.0
    many, _ = cache.get_many(texts)
    many[:] = -1.0
    again, found = cache.get_many(texts)
    assert found.all()
    assert again.tobytes() == vectors.tobytes()
    assert cache.get("alpha").tobytes() == vectors[0].tobytes()


def test_put_checks_shape(cache):
    with pytest.raises(CacheError, match="shape"):
        cache.put_many(["a", "b"], np.ones((3, EMBEDDER.dim), np.float32))
    with pytest.raises(CacheError, match="shape"):
        cache.put_many(["a"], np.ones((1, EMBEDDER.dim + 1), np.float32))
    assert cache.count() == 0


def test_readonly_handle(tmp_path):
    path = tmp_path / "cache"
    with EmbeddingCache(path, EMBEDDER.model_id, EMBEDDER.dim) as writer:
        writer.put_many(["x"], EMBEDDER.embed(["x"]))
    with EmbeddingCache(path, EMBEDDER.model_id, EMBEDDER.dim, readonly=True) as reader:
        assert reader.get("x").tobytes() == EMBEDDER.embed(["x"])[0].tobytes()
        with pytest.raises(CacheError, match="read-only"):
            reader.put_many(["y"], EMBEDDER.embed(["y"]))


def test_open_error_is_clear(tmp_path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(CacheError) as info:
        EmbeddingCache(missing, EMBEDDER.model_id, EMBEDDER.dim, readonly=True)
    assert str(missing) in str(info.value)


# -- model separation ---------------------------------------------------------------------------------


def test_models_are_separate(tmp_path):
    # one LMDB file holds every model; py-lmdb allows one open handle per file and process,
    # so the handles are opened one after another
    path = tmp_path / "cache"
    other = create_embedder("hash:32")
    text = "shared text"
    a_vec, b_vec, c_vec = EMBEDDER.embed([text]), -EMBEDDER.embed([text]), other.embed([text])
    with EmbeddingCache(path, EMBEDDER.model_id, 64) as a:
        assert a.put_many([text], a_vec) == 1
    with EmbeddingCache(path, "another-model:64", 64) as b:  # same dim, other model
        assert b.get(text) is None
        assert text not in b
        assert not b.get_many([text])[1].any()
        assert b.put_many([text], b_vec) == 1  # its own entry for the same text
        assert b.get(text).tobytes() == b_vec[0].tobytes()
    with EmbeddingCache(path, other.model_id, 32) as c:
        assert c.get(text) is None
        assert c.put_many([text], c_vec) == 1
    with EmbeddingCache(path, EMBEDDER.model_id, 64) as a:
        assert a.get(text).tobytes() == a_vec[0].tobytes()
        assert a.count() == 3
    with EmbeddingCache(path, "another-model:64", 64) as b:
        assert b.get(text).tobytes() == b_vec[0].tobytes()
    with EmbeddingCache(path, other.model_id, 32) as c:
        assert c.get(text).tobytes() == c_vec[0].tobytes()


def test_wrong_length_value_is_a_miss(tmp_path):
    """A value written for another dimension under the same model_id is never returned."""
    path = tmp_path / "cache"
    model_id = "same-model-id-string"
    texts = ["written with dim 32", "written with dim 64"]
    with EmbeddingCache(path, model_id, 32) as narrow:
        narrow.put_many(texts[:1], create_embedder("hash:32").embed(texts[:1]))
    with EmbeddingCache(path, model_id, 64) as wide:
        wide.put_many(texts[1:], EMBEDDER.embed(texts[1:]))
        assert wide.get(texts[0]) is None
        assert texts[0] not in wide
        got, found = wide.get_many(texts)
        assert found.tolist() == [False, True]
        assert not got[0].any()
    with EmbeddingCache(path, model_id, 32) as narrow:
        assert narrow.get(texts[1]) is None
        assert texts[1] not in narrow
    with EmbeddingCache(path, model_id, 64) as wide:
        # the miss is repaired by the next write of the right length (a manager writes what
        # it computed after a miss; it must not miss on that text forever)
        vec = EMBEDDER.embed(texts[:1])
        assert wide.put_many(texts[:1], vec) == 1
        assert wide.get(texts[0]).tobytes() == vec[0].tobytes()
        assert wide.count() == 2


# -- many processes ---------------------------------------------------------------------------------


def test_eight_processes_overlapping_keys(tmp_path):
    path = tmp_path / "cache"
    universe = _texts("concurrent", 440)
    EmbeddingCache(path, EMBEDDER.model_id, EMBEDDER.dim, map_size=1 << 16).close()
    barrier = SPAWN.Barrier(8)
    results = SPAWN.Queue()
    procs = [
        SPAWN.Process(target=cachetools_workers.concurrent_worker, args=(i, str(path), universe, barrier, results))
        for i in range(8)
    ]
    for p in procs:
        p.start()
    try:
        reports = [results.get(timeout=DEADLINE) for _ in procs]
    finally:
        for p in procs:
            _join(p)
    assert sorted(r[0] for r in reports) == list(range(8))
    for index, problems, hits, misses in reports:
        assert problems == [], f"process {index}: {problems[:5]}"
        assert hits + misses == 160
    assert all(p.exitcode == 0 for p in procs)

    used = sorted({t for i in range(8) for t in universe[i * 40 : i * 40 + 160]})
    with EmbeddingCache(path, EMBEDDER.model_id, EMBEDDER.dim) as cache:
        got, found = cache.get_many(used)
        assert found.all()
        assert got.tobytes() == EMBEDDER.embed(used).tobytes()
        assert cache.count() == len(used)
        # overlapping keys were written once and then read by the others
        assert sum(r[2] for r in reports) > 0
        assert sum(r[3] for r in reports) >= len(used)


def test_sigkill_while_writing(tmp_path):
    path = tmp_path / "cache"
    rounds, batches_per_round, per_batch = 5, 8, 100
    all_batches: list[list[list[str]]] = []
    committed: list[int] = []
    for r in range(rounds):
        # each round writes its own texts plus some of the previous round's
        batches = [_texts(f"kill round {r} batch {b}", per_batch) for b in range(batches_per_round)]
        if all_batches:
            batches.append(all_batches[-1][0][:50] + _texts(f"kill round {r} extra", 100))
        all_batches.append(batches)
        parent_conn, child_conn = FORK.Pipe(duplex=False)
        proc = FORK.Process(  # fork: starts fast; the child never returns into pytest
            target=cachetools_workers.killed_writer, args=(str(path), per_batch, batches, child_conn)
        )
        proc.start()
        child_conn.close()
        try:
            acks = 0
            # the first commit, then a few more: the kill lands at a different point each round
            for _ in range(1 + r % 3):
                if not parent_conn.poll(DEADLINE):
                    pytest.fail(f"round {r}: the writer did not commit within {DEADLINE}s")
                parent_conn.recv_bytes()
                acks += 1
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.join(DEADLINE)
            parent_conn.close()
        assert proc.exitcode == -signal.SIGKILL
        committed.append(acks)

    with EmbeddingCache(path, EMBEDDER.model_id, EMBEDDER.dim) as cache:
        total = cache.count()
        every_text = sorted({t for batches in all_batches for b in batches for t in b})
        got, found = cache.get_many(every_text)
        assert int(found.sum()) == total > 0
        expected = EMBEDDER.embed(every_text)
        assert got[found].tobytes() == expected[found].tobytes()
        lookup = dict(zip(every_text, found, strict=True))
        for r, batches in enumerate(all_batches):
            for b in batches[: committed[r]]:
                assert all(lookup[t] for t in b), f"round {r}: an acknowledged commit is missing"
        # the write lock was not left held by a killed writer
        fresh = _texts("after the kills", 20)
        assert cache.put_many(fresh, EMBEDDER.embed(fresh)) == 20
        assert cache.get_many(fresh)[1].all()


def test_fork_child_reopens(cache):
    before = ["written before the fork"]
    cache.put_many(before, EMBEDDER.embed(before))
    assert cache.get(before[0]) is not None  # the parent's environment is in use
    child_texts = _texts("written by the forked child", 10)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report through the pipe, never return into pytest
        status = 1
        try:
            os.close(read_fd)
            ok = cache.get(before[0]).tobytes() == EMBEDDER.embed(before)[0].tobytes()
            added = cache.put_many(child_texts, EMBEDDER.embed(child_texts))
            got, found = cache.get_many(child_texts)
            ok = ok and added == 10 and found.all() and got.tobytes() == EMBEDDER.embed(child_texts).tobytes()
            os.write(write_fd, b"ok" if ok else b"wrong")
            status = 0
        except BaseException as exc:
            os.write(write_fd, repr(exc).encode()[:500])
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        report = f.read()  # EOF when the child exits
    _, status = os.waitpid(pid, 0)
    assert report == b"ok"
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent keeps working and sees what the child wrote
    got, found = cache.get_many(child_texts)
    assert found.all() and got.tobytes() == EMBEDDER.embed(child_texts).tobytes()
    after = ["written by the parent after the child exited"]
    assert cache.put_many(after, EMBEDDER.embed(after)) == 1
    assert cache.get(after[0]).tobytes() == EMBEDDER.embed(after)[0].tobytes()
    assert cache.count() == 12


# -- map size -------------------------------------------------------------------------------------------


def test_map_grows_and_other_process_sees_it(tmp_path):
    path = tmp_path / "cache"
    dim = 256
    model_id = "random-vectors:256"
    rng = np.random.default_rng(1)
    texts = _texts("growth", 5000)  # 5000 x 1 KiB = ~5 MiB of values into a 64 KiB map
    vectors = rng.standard_normal((len(texts), dim)).astype(np.float32)
    writer = EmbeddingCache(path, model_id, dim, map_size=1 << 16, durable=False)
    writer.put_many(texts[:5], vectors[:5])

    ready, go, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    reader = SPAWN.Process(
        target=cachetools_workers.late_reader, args=(str(path), model_id, dim, texts, ready, go, results)
    )
    reader.start()
    try:
        assert ready.wait(DEADLINE), "the reader did not open the cache"
        for start in range(5, len(texts), 500):
            writer.put_many(texts[start : start + 500], vectors[start : start + 500])
        go.set()
        report = results.get(timeout=DEADLINE)
    finally:
        _join(reader)
    assert (path / "data.mdb").stat().st_size > 4 << 20  # far past the initial 64 KiB map
    got, found = writer.get_many(texts)
    assert found.all() and got.tobytes() == vectors.tobytes()
    assert report[0] == "ok", report
    _, before, found_there, digest, count_there = report
    assert before == 5
    assert found_there == len(texts)
    assert count_there == len(texts)
    assert digest == hashlib.sha256(vectors.tobytes()).hexdigest()
    writer.close()


def test_open_retries_when_another_process_grew_the_map_meanwhile(tmp_path, monkeypatch):
    """py-lmdb begins a transaction inside ``lmdb.open``; a commit elsewhere that grew the data
    between the two makes that open fail with MapResizedError. Opening again maps the new size."""
    import lmdb

    EmbeddingCache(tmp_path / "cache", EMBEDDER.model_id, EMBEDDER.dim).close()
    real_open, failures = lmdb.open, [2]

    def open_losing_the_race_twice(*args, **kwargs):
        if failures[0]:
            failures[0] -= 1
            raise lmdb.MapResizedError("mdb_txn_begin: MDB_MAP_RESIZED")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(lmdb, "open", open_losing_the_race_twice)
    with EmbeddingCache(tmp_path / "cache", EMBEDDER.model_id, EMBEDDER.dim) as cache:
        cache.put_many(["opened"], EMBEDDER.embed(["opened"]))
        assert "opened" in cache
    assert failures == [0]


@pytest.mark.slow
def test_opens_succeed_while_another_process_keeps_growing_the_map(tmp_path):
    """The race above, for real: a writer grows a small map while another process opens the
    cache thousands of times. Every open must succeed (a pool worker attaching while the
    service writes is this case)."""
    path = str(tmp_path / "cache")
    EmbeddingCache(path, EMBEDDER.model_id, EMBEDDER.dim, map_size=1 << 16).close()
    stop, results = SPAWN.Event(), SPAWN.Queue()
    writer = SPAWN.Process(target=cachetools_workers.growing_writer, args=(path, stop))
    opener = SPAWN.Process(target=cachetools_workers.repeated_opener, args=(path, 5000, results))
    writer.start()
    opener.start()
    try:
        failures, opens = results.get(timeout=DEADLINE * 2)
    finally:
        stop.set()
        _join(opener)
        _join(writer)
    assert opens == 5000
    assert failures == [], failures[:3]


def test_max_map_size_gives_cache_full(tmp_path):
    path = tmp_path / "cache"
    cache = EmbeddingCache(path, EMBEDDER.model_id, EMBEDDER.dim, map_size=1 << 16, max_map_size=1 << 18)
    written: list[list[str]] = []
    with pytest.raises(CacheFullError) as info:
        for b in range(1000):  # 1000 x 50 x 256 B = 12 MiB: far past the 256 KiB limit
            batch = _texts(f"full batch {b}", 50)
            cache.put_many(batch, EMBEDDER.embed(batch))
            written.append(batch)
    message = str(info.value)
    assert str(path) in message and "size limit" in message and "max_map_size" in message
    assert 0 < len(written) < 1000
    failed = _texts(f"full batch {len(written)}", 50)
    # everything committed before is still there, the failed batch is not there at all
    flat = [t for batch in written for t in batch]
    got, found = cache.get_many(flat)
    assert found.all() and got.tobytes() == EMBEDDER.embed(flat).tobytes()
    assert not cache.get_many(failed)[1].any()
    assert cache.count() == len(flat)
    with pytest.raises(CacheFullError):
        cache.put_many(failed, EMBEDDER.embed(failed))
    cache.close()
    # and it opens again with everything in it
    with EmbeddingCache(path, EMBEDDER.model_id, EMBEDDER.dim, map_size=1 << 16, max_map_size=1 << 18) as again:
        assert again.get_many(flat)[1].all()


# -- readers ---------------------------------------------------------------------------------------------


class _WaitInsideTransaction:
    """A key sequence that holds every reader inside its read transaction until all are in."""

    def __init__(self, keys: list[bytes], barrier: threading.Barrier) -> None:
        self.keys, self.barrier = keys, barrier

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        self.barrier.wait(timeout=DEADLINE)  # called inside get_many_into's transaction
        return iter(self.keys)


@pytest.mark.parametrize("max_readers", [64, 126])
def test_many_threads_read_concurrently(tmp_path, max_readers, run_threads):
    threads_n = 64
    texts = _texts("readers", 200)
    vectors = EMBEDDER.embed(texts)
    with EmbeddingCache(tmp_path / "cache", EMBEDDER.model_id, EMBEDDER.dim, max_readers=max_readers) as cache:
        cache.put_many(texts, vectors)
        inside = threading.Barrier(threads_n)
        errors: list[str] = []

        def read(i: int) -> None:
            try:
                mine = texts[i : i + 100]
                out = np.empty((len(mine), EMBEDDER.dim), np.float32)
                found = cache.get_many_into(_WaitInsideTransaction([cache.key(t) for t in mine], inside), out)
                if not found.all() or out.tobytes() != vectors[i : i + 100].tobytes():
                    errors.append(f"thread {i}: wrong result")
                for _ in range(20):
                    got, found = cache.get_many(mine)
                    if not found.all() or got.tobytes() != vectors[i : i + 100].tobytes():
                        errors.append(f"thread {i}: wrong result")
            except BaseException as exc:
                inside.abort()
                errors.append(f"thread {i}: {exc!r}")

        run_threads(threads_n, read, timeout=DEADLINE)
        assert errors == []


def test_too_many_concurrent_readers_is_a_clear_cache_error(tmp_path):
    import threading

    from embedshare.store import CacheError, EmbeddingCache

    cache = EmbeddingCache(tmp_path / "c", "m", 4, max_readers=2)
    cache.put_many(["a"], np.ones((1, 4), dtype=np.float32))
    inside, release = threading.Barrier(3), threading.Event()

    def hold_a_read_transaction():
        with cache._transaction(write=False):
            inside.wait(timeout=30)
            release.wait(timeout=30)

    holders = [threading.Thread(target=hold_a_read_transaction) for _ in range(2)]
    for t in holders:
        t.start()
    inside.wait(timeout=30)  # both slots are taken now
    try:
        with pytest.raises(CacheError, match="max_readers=2"):
            cache.get("a")
    finally:
        release.set()
        for t in holders:
            t.join(timeout=30)
    assert cache.get("a") is not None
