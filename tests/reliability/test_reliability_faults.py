"""Reliability under faults (issue #5): the service and workers SIGKILLed mid-run, cache writers
SIGKILLed mid-transaction, a full disk and a map-size limit, stale run files, and a client that
disappears while others wait for the same text.

Random choices are seeded (``EMBEDSHARE_FAULT_SEED`` overrides the seed) and reported with the
figures (see tests/helpers/figures.record). Kills are driven by task progress (the pool's
``on_result`` hook) or by commit acknowledgements, never by timers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import stat
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers.disks import fill
from helpers.figures import record
from helpers.frames import connect_raw, exchange, read_reply, request_frame
from helpers.processes import PYTHON, SPAWNED, alive, start_with_ready_pipe, stop_process
from helpers.services import kill_service
from helpers.spawned import reliability_tasks
from helpers.waiting import wait_for

from embedshare.access import SharedEmbeddingManager
from embedshare.client.connection import ServiceConnection
from embedshare.client.state import read_state
from embedshare.embedders import create_embedder
from embedshare.manager import EmbeddingManager
from embedshare.pool.shared import SharedPool
from embedshare.service.launcher import EmbeddingService, ServiceStartError
from embedshare.store import EmbeddingCache, StoreLayout

SEED = int(os.environ.get("EMBEDSHARE_FAULT_SEED", "20261128"))
EMBEDDER = create_embedder("hash:64")
FORK = mp.get_context("fork")


def _reference(tmp_path: Path, n: int) -> dict[int, dict]:
    local = EmbeddingManager(tmp_path / "reference", model="hash:64", registry="bundled")
    try:
        return {i: reliability_tasks.fault_task_expected(local, i) for i in range(n)}
    finally:
        local.close()


def _check_results(results: list[dict], reference: dict[int, dict]) -> None:
    assert [r["index"] for r in results] == sorted(reference)
    wrong = [
        r["index"] for r in results if {k: r[k] for k in ("index", "digest", "top", "similar")} != reference[r["index"]]
    ]
    assert not wrong, f"results that differ from a fault-free run: tasks {wrong[:10]}"
    assert {r["mode"] for r in results} == {"shared"}


def _check_cache(store: Path, texts: list[str]) -> int:
    """Every one of ``texts`` is in the store's cache with exactly the embedder's vector."""
    with EmbeddingCache(StoreLayout(store).cache, EMBEDDER.model_id, EMBEDDER.dim) as cache:
        got, found = cache.get_many(texts)
        assert found.all(), f"{int((~found).sum())} answered texts are missing from the cache"
        assert got.tobytes() == EMBEDDER.embed(texts).tobytes()
        return cache.count()


# -- the service SIGKILLed at random moments of a 25-worker run ------------------------------------


@pytest.mark.slow
def test_service_sigkilled_repeatedly_in_a_25_worker_run_every_task_exactly_once(store, tmp_path):
    tasks, kills_wanted = 600, 6
    rng = random.Random(SEED)
    kill_points = sorted(rng.sample(range(tasks // 20, tasks * 7 // 10), kills_wanted))
    reference = _reference(tmp_path, tasks)
    markers = tmp_path / "markers"
    markers.mkdir()
    layout = StoreLayout(store)
    completed: Counter[int] = Counter()
    killed: list[dict] = []

    def on_result(index, outcome) -> None:
        """Runs in this process as each task finishes: kill the service at the chosen counts."""
        completed[index] += 1
        done = sum(completed.values())
        if len(killed) < len(kill_points) and done >= kill_points[len(killed)]:
            pid = read_state(layout).get("pid")
            # only a service that a worker has restarted since the last kill (and that is up)
            if pid and pid not in [k["pid"] for k in killed] and alive(pid):
                os.kill(pid, signal.SIGKILL)
                killed.append({"pid": pid, "after_tasks": done})

    started = time.monotonic()
    with SharedPool(workers=25, store=store, model="hash:64", progress=False) as pool:
        first_pid = pool.service.pid
        results = pool.map(
            reliability_tasks.fault_task, [(i, str(markers), 0.0, True) for i in range(tasks)], on_result=on_result
        )
        final = pool.service.stats()
    wall = time.monotonic() - started

    assert len(killed) == kills_wanted, f"only {len(killed)} kills happened: {killed}"
    assert killed[0]["pid"] == first_pid
    assert final["pid"] not in [k["pid"] for k in killed]
    _check_results(results, reference)
    assert all(c == 1 for c in completed.values()) and len(completed) == tasks  # reported once each
    assert sorted(int(p.stem) for p in markers.glob("*.done")) == list(range(tasks))  # ran once each
    assert all(o.attempts == 1 for o in pool.outcomes)  # no worker died: no task was re-run
    restarts = sum(s["restarts"] for s in pool.report.worker_stats)
    reconnects = sum(s["reconnects"] for s in pool.report.worker_stats)
    assert restarts >= kills_wanted  # each kill was noticed and repaired by a worker
    # every text that was answered is in the cache, with the right vector: nothing corrupted
    entries = _check_cache(store, [t for i in range(tasks) for t in reliability_tasks.fault_task_texts(i)])
    record(
        "service_sigkill_25_workers",
        seed=SEED,
        tasks=tasks,
        workers=25,
        kills=len(killed),
        killed_after_tasks=[k["after_tasks"] for k in killed],
        worker_restarts=restarts,
        worker_reconnects=reconnects,
        wall_seconds=round(wall, 1),
        cache_entries=entries,
    )


# -- workers SIGKILLed at random ----------------------------------------------------------------------


@pytest.mark.slow
def test_workers_sigkilled_at_random_their_tasks_rerun_none_lost_none_duplicated(store, tmp_path):
    tasks, kills_wanted, workers = 400, 10, 10
    rng = random.Random(SEED + 1)
    kill_points = sorted(rng.sample(range(tasks // 20, tasks * 8 // 10), kills_wanted))
    reference = _reference(tmp_path, tasks)
    markers = tmp_path / "markers"
    markers.mkdir()
    completed: Counter[int] = Counter()
    killed: list[int] = []

    seen: set[int] = set()

    def on_result(index, outcome) -> None:
        completed[index] += 1
        seen.add(outcome.worker_pid)  # a worker that ran a task: started, attached, busy
        if len(killed) < kills_wanted and sum(completed.values()) >= kill_points[len(killed)]:
            victim = rng.choice(sorted(p for p in seen if p not in killed and alive(p)))
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    with SharedPool(workers=workers, store=store, model="hash:64", progress=False, max_retries=5) as pool:
        # 50 ms of work per task: workers are busy, so a kill usually lands inside a task
        results = pool.map(
            reliability_tasks.fault_task, [(i, str(markers), 0.05, False) for i in range(tasks)], on_result=on_result
        )
    crashes = pool.report.crashes
    assert len(killed) == kills_wanted
    assert sorted(c.pid for c in crashes) == sorted(killed)
    assert {c.signal for c in crashes} == {"SIGKILL"}
    _check_results(results, reference)  # none lost, each equal to a fault-free run
    assert all(c == 1 for c in completed.values()) and len(completed) == tasks  # none duplicated
    mid_task = [c for c in crashes if c.task_index is not None]
    # each task was handed out once, plus once more for every worker that died while running it
    crashes_per_task = Counter(c.task_index for c in mid_task)
    assert {o.index: o.attempts - 1 for o in pool.outcomes if o.attempts > 1} == dict(crashes_per_task)
    rerun = sorted(crashes_per_task)
    assert len(mid_task) >= 1
    # Every task ran to its end at least once. One killed after its marker but before its reply
    # ran to its end twice (a side effect may repeat; its result is still delivered once):
    runs = Counter(int(p.name.split("-")[0]) for p in markers.glob("*.done"))
    assert sorted(runs) == list(range(tasks))
    twice = sorted(i for i, n in runs.items() if n > 1)
    assert set(twice) <= set(rerun)
    record(
        "worker_sigkill",
        seed=SEED + 1,
        tasks=tasks,
        workers=workers,
        kills=len(killed),
        kills_inside_a_task=len(mid_task),
        tasks_rerun=len(rerun),
        tasks_whose_side_effect_repeated=len(twice),
        results_lost=0,
        results_duplicated=0,
    )


# -- a client that vanishes while others wait for the same text ---------------------------------------


def test_a_client_leaving_mid_request_does_not_strand_others_waiting_for_the_same_text(make_service):
    """Regression: the waiter's cancellation used to cancel the shared in-flight future, and
    every other client waiting for that text never got an answer (it hung until its timeout)."""
    service = make_service(registry=None, max_wait_ms=3000, export_env=False)
    text = "a text two clients want at once"
    leaver, stayer = connect_raw(service.address), connect_raw(service.address)
    leaver.sendall(request_frame({"v": 1, "id": 1, "op": "embed", "texts": [text]}))
    stayer.sendall(request_frame({"v": 1, "id": 2, "op": "embed", "texts": [text]}))
    conn = ServiceConnection(service.address)
    # the second request joined the first one's computation (the batch waits 3 s to fill)
    wait_for(
        lambda: conn.request("stats", timeout=30)["stats"]["joined_inflight"] >= 1,
        30,
        "the second request to join the first",
    )
    leaver.close()
    reply = read_reply(stayer)  # before the fix: no reply, ever
    assert reply["ok"] is True and reply["id"] == 2
    assert np.frombuffer(reply["vectors"], np.float32).tobytes() == EMBEDDER.embed([text])[0].tobytes()
    stayer.close()
    conn.close()


def test_a_peer_pipelining_without_reading_is_throttled_not_buffered_forever(hash_service):
    """Thousands of pipelined requests whose replies are never read: the service stops reading
    that peer (backpressure) and keeps answering everyone else."""
    from embedshare.service.listeners import MAX_PENDING_PER_CONNECTION

    greedy = connect_raw(hash_service.address)
    greedy.setblocking(False)
    ping = request_frame({"v": 1, "id": 1, "op": "stats"})
    sent = 0
    try:
        for _ in range(200_000):  # until the service stops reading and the socket buffer fills
            greedy.send(ping)
            sent += 1
    except BlockingIOError:
        pass
    # the service stopped reading it: the sends blocked long before 200k (without the limit it
    # read them all and held 200k tasks and their replies for a peer that never reads)
    assert MAX_PENDING_PER_CONNECTION < sent < 200_000
    client = SharedEmbeddingManager(hash_service.address, on_failure="error")
    assert (
        client.get_embedding("others are still served").tobytes()
        == EMBEDDER.embed(["others are still served"])[0].tobytes()
    )
    greedy.close()
    record("pipelining_backpressure", frames_sent_unread=sent, limit=MAX_PENDING_PER_CONNECTION)


# -- cache writers SIGKILLed mid-transaction, 50 times ----------------------------------------------------


def _killed_writers(path: str, batches: list[list[str]], vectors: list[np.ndarray], conn, order_seed: int) -> None:
    """Fork target: write batches in a random order forever, acking each commit with its number."""
    cache = EmbeddingCache(path, EMBEDDER.model_id, EMBEDDER.dim, map_size=1 << 16)
    rng = random.Random(order_seed)
    while True:
        i = rng.randrange(len(batches))
        cache.put_many(batches[i], vectors[i])
        conn.send(i)


def _reader_in_a_transaction(path: str, conn) -> None:
    """Fork target: hold a read transaction (a reader slot) until killed."""
    cache = EmbeddingCache(path, EMBEDDER.model_id, EMBEDDER.dim, readonly=True)
    with cache._transaction(write=False):
        conn.send("inside")
        while True:
            signal.pause()  # until SIGKILL


@pytest.mark.slow
def test_cache_survives_50_sigkills_of_concurrent_writers_and_readers(tmp_path):
    rounds = 50
    rng = random.Random(SEED + 2)
    path = str(tmp_path / "cache")
    # 1 to 3 writers a round, batches of 1 to 2,000 texts that overlap earlier rounds' texts;
    # a small map, so it grows (and other processes adopt the new size) between kills
    universe = [f"cache kill text {i}" for i in range(20_000)]
    expected = EMBEDDER.embed(universe)
    acknowledged = np.zeros(len(universe), dtype=bool)
    kills = killed_readers = 0
    EmbeddingCache(path, EMBEDDER.model_id, EMBEDDER.dim, map_size=1 << 16, max_readers=16).close()
    for r in range(rounds):
        ranges = []
        for _ in range(rng.randint(2, 6)):
            size = rng.choice([1, 10, 100, 500, 2000])
            first = rng.randrange(len(universe) - size)
            ranges.append((first, first + size))
        batches = [universe[a:b] for a, b in ranges]
        vectors = [expected[a:b] for a, b in ranges]  # computed here, inherited through fork
        writers = []
        for _ in range(rng.randint(1, 3)):
            parent, child = FORK.Pipe(duplex=False)
            proc = FORK.Process(target=_killed_writers, args=(path, batches, vectors, child, rng.random()))
            proc.start()
            child.close()
            writers.append((proc, parent))
        readers = []
        if r % 5 == 0:  # a reader killed inside its transaction leaves a stale reader slot
            parent, child = FORK.Pipe(duplex=False)
            proc = FORK.Process(target=_reader_in_a_transaction, args=(path, child))
            proc.start()
            child.close()
            assert parent.poll(60), "the reader did not start"
            assert parent.recv() == "inside"
            readers.append(proc)

        def acked(i: int, ranges: list[tuple[int, int]] = ranges) -> None:
            a, b = ranges[i]
            acknowledged[a:b] = True

        # kill every writer once the first has acknowledged 1..4 commits: the others are wherever
        # they are, and the first is inside its next transaction (or its fsync)
        _, conn0 = writers[0]
        for _ in range(rng.randint(1, 4)):
            assert conn0.poll(60), f"round {r}: no commit within 60 s"
            acked(conn0.recv())
        for proc, _ in writers:
            os.kill(proc.pid, signal.SIGKILL)
        for proc in readers:
            os.kill(proc.pid, signal.SIGKILL)
        for proc, conn in writers:
            proc.join(60)
            assert proc.exitcode == -signal.SIGKILL
            while conn.poll():  # commits acknowledged before the kill count too
                try:
                    acked(conn.recv())
                except EOFError:
                    break
            conn.close()
        for proc in readers:
            proc.join(60)
        kills += len(writers)
        killed_readers += len(readers)
        # a fresh open every round: it must open, and hold only right vectors
        with EmbeddingCache(path, EMBEDDER.model_id, EMBEDDER.dim, max_readers=16) as cache:
            got, found = cache.get_many(universe)
            assert cache.count() == int(found.sum())
            assert found[acknowledged].all(), f"round {r}: an acknowledged commit is missing"
            assert got[found].tobytes() == expected[found].tobytes(), f"round {r}: a wrong vector"
    with EmbeddingCache(path, EMBEDDER.model_id, EMBEDDER.dim, max_readers=16) as cache:
        fresh = [f"after {rounds} rounds of kills {i}" for i in range(50)]
        assert cache.put_many(fresh, EMBEDDER.embed(fresh)) == 50  # the write lock is free
        entries = cache.count()
        size = (Path(path) / "data.mdb").stat().st_size
    record(
        "cache_sigkill",
        seed=SEED + 2,
        rounds=rounds,
        writers_killed=kills,
        readers_killed_in_a_transaction=killed_readers,
        acknowledged_texts=int(acknowledged.sum()),
        entries=entries,
        data_mdb_bytes=size,
        max_readers=16,
    )


# -- a full disk (tmpfs) and a map-size limit ------------------------------------------------------------


def _raw_embed(address: str, texts: list[str]) -> dict:
    sock = connect_raw(address)
    try:
        return exchange(sock, {"v": 1, "id": 1, "op": "embed", "texts": texts})
    finally:
        sock.close()


def _warm_up(address: str, store: Path, stats, name: str) -> dict:
    """A client, 300 texts it made the service cache, and the service's stats before the fault."""
    client = SharedEmbeddingManager(address, on_failure="error")
    warm = [f"{name} warm text {i}" for i in range(300)]
    assert client.get_embeddings(warm).tobytes() == EMBEDDER.embed(warm).tobytes()
    before = stats()
    assert before["cache_write_failures"] == 0
    return {"client": client, "warm": warm, "before": before}


@pytest.mark.slow
def test_a_full_disk_keeps_the_service_serving_hits_and_uncached_misses(small_tmpfs, make_service):
    store = small_tmpfs / "store"
    service = make_service(store=store, export_env=False)
    state = _warm_up(service.address, store, service.stats, "disk")
    client, warm, before = state["client"], state["warm"], state["before"]
    filler = fill(small_tmpfs)
    assert shutil.disk_usage(small_tmpfs).free < 64 << 10
    # misses while the disk is full: computed by the model, answered, not cached
    misses = [f"disk full miss {i}" for i in range(3000)]
    assert client.get_embeddings(misses).tobytes() == EMBEDDER.embed(misses).tobytes()
    during = service.stats()
    assert during["pid"] == service.pid
    assert during["cache_write_failures"] > before["cache_write_failures"]
    # hits through the service itself (a raw request; the client reads hits from the map)
    reply = _raw_embed(service.address, warm)
    assert reply["ok"] and np.frombuffer(reply["vectors"], np.float32).tobytes() == EMBEDDER.embed(warm).tobytes()
    assert service.stats()["hits"] - during["hits"] == len(warm)
    assert [r.name for r in client.search("read a csv file")]  # the index still serves
    # the error says what happened (the service's log is on the full disk too, so it is
    # checked here, on a handle of this process)
    from embedshare.store import CacheFullError

    more = [f"one more {i}" for i in range(2000)]
    with pytest.raises(CacheFullError, match="disk full"):
        client.cache.put_many(more, EMBEDDER.embed(more))
    # room again: new misses are cached again
    (small_tmpfs / "filler").unlink()
    after = [f"after the disk was freed {i}" for i in range(20)]
    client.get_embeddings(after)
    assert service.stats()["cache_write_failures"] == during["cache_write_failures"]
    client.close()
    service.stop()
    # a fresh open, once the service is gone: everything it holds is right, the warm texts and
    # the late ones all there
    with EmbeddingCache(StoreLayout(store).cache, EMBEDDER.model_id, EMBEDDER.dim) as cache:
        got, found = cache.get_many(warm + after + misses)
        assert found[: len(warm) + len(after)].all()
        assert got[found].tobytes() == EMBEDDER.embed(warm + after + misses)[found].tobytes()
        cached_misses = int(found[len(warm) + len(after) :].sum())
    record(
        "disk_full_tmpfs",
        tmpfs_bytes=4 << 20,
        filler_bytes=filler,
        misses_while_full=len(misses),
        misses_cached_anyway=cached_misses,
        cache_write_failures=during["cache_write_failures"],
        hits_served_while_full=len(warm),
    )


def test_a_map_size_limit_keeps_the_service_serving_hits_and_uncached_misses(store, tmp_path):
    """The same without root: a service whose cache may not grow past 1 MiB."""
    layout = StoreLayout(store)
    layout.make_private_run_dir()
    proc, line = start_with_ready_pipe(
        [
            PYTHON,
            str(SPAWNED / "reliability_server.py"),
            "--max-map-size",
            str(1 << 20),
            "--store",
            str(store),
            "--model",
            "hash:64",
            "--registry",
            "bundled",
        ],
        layout.log,
    )
    try:
        assert line.startswith("ready"), f"{line}\n{layout.log.read_text()[-2000:]}"
        conn = ServiceConnection(str(layout.socket))
        stats = lambda: conn.request("stats", timeout=30)["stats"]
        state = _warm_up(str(layout.socket), store, stats, "map")
        client, warm, before = state["client"], state["warm"], state["before"]
        misses = [f"over the map limit {i}" for i in range(6000)]  # ~1 KiB each in LMDB: past 1 MiB
        assert client.get_embeddings(misses).tobytes() == EMBEDDER.embed(misses).tobytes()
        during = stats()
        assert during["cache_write_failures"] > before["cache_write_failures"]
        reply = _raw_embed(str(layout.socket), warm)
        assert reply["ok"] and np.frombuffer(reply["vectors"], np.float32).tobytes() == EMBEDDER.embed(warm).tobytes()
        assert proc.poll() is None
        log = layout.log.read_text()
        assert "reached its size limit" in log and "max_map_size" in log
        client.close()
        conn.close()
    finally:
        stop_process(proc)
    with EmbeddingCache(layout.cache, EMBEDDER.model_id, EMBEDDER.dim) as cache:
        got, found = cache.get_many(warm + misses)
        assert found[: len(warm)].all()
        assert got[found].tobytes() == EMBEDDER.embed(warm + misses)[found].tobytes()
        cached = int(found[len(warm) :].sum())
    assert cached < len(misses)
    record(
        "map_size_limit",
        max_map_size=1 << 20,
        misses=len(misses),
        misses_cached=cached,
        cache_write_failures=during["cache_write_failures"],
    )


# -- stale run files of a dead service --------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([PYTHON, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_state_and_a_regular_file_at_the_socket_path_are_replaced(store, make_service):
    layout = StoreLayout(store)
    layout.make_private_run_dir()
    layout.lock.write_text("")  # a lock file nobody holds (its flock died with its process)
    layout.state.write_text(json.dumps({"pid": _dead_pid(), "socket": str(layout.socket), "model": "hash:64"}))
    layout.socket.write_text("not a socket")  # e.g. restored from a backup, or a stray write
    from embedshare.access import NoServiceWarning, get_embedding_manager

    with pytest.warns(NoServiceWarning, match="service.sock"):  # nobody answers there: local
        assert get_embedding_manager(model="hash:64", store=store).stats()["mode"] == "local"
    from embedshare.access import reset_embedding_manager

    reset_embedding_manager()
    service = make_service(registry=None, export_env=False)
    assert service.owned
    assert stat.S_ISSOCK(os.stat(layout.socket).st_mode)
    assert stat.S_IMODE(os.stat(layout.socket).st_mode) == 0o600
    assert read_state(layout)["pid"] == service.pid
    assert SharedEmbeddingManager(service.address).get_embedding("fresh").shape == (64,)


def test_a_directory_at_the_socket_path_is_a_clear_start_error(store):
    layout = StoreLayout(store)
    layout.make_private_run_dir()
    layout.socket.mkdir()
    with pytest.raises(ServiceStartError, match="service.sock"):
        EmbeddingService(store, model="hash:64", export_env=False, start_timeout=60).start()


def test_a_lock_held_by_a_silent_process_is_a_bounded_clear_error(store, make_service):
    """A process holds the store's lock but never answers (hung, or not a service): starting
    gives up after start_timeout with an error that names the lock; it does not hang."""
    layout = StoreLayout(store)
    layout.make_private_run_dir()
    holder = subprocess.Popen(
        [
            PYTHON,
            "-c",
            (
                "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
                "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"
            ),
            str(layout.lock),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(ServiceStartError, match="service.lock"):
            EmbeddingService(store, model="hash:64", export_env=False, start_timeout=3).start()
        waited = time.monotonic() - started
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert waited < 60  # generous: 3 s asked for, on a loaded machine
    record("silent_lock_holder", start_timeout_s=3, gave_up_after_s=round(waited, 1))
    assert make_service(registry=None, export_env=False).owned  # and once it is gone


# -- a frozen service ------------------------------------------------------------------------------------


def test_a_frozen_service_is_an_error_after_the_timeout_not_a_hang(make_service):
    """SIGSTOP: the service holds its socket and lock but answers nothing. A call that needs it
    fails after the client's request_timeout; hits keep working; it answers again once thawed."""
    from embedshare.client.connection import ServiceUnavailable

    service = make_service(registry=None, export_env=False)
    client = SharedEmbeddingManager(service.address, on_failure="error", request_timeout=2)
    cached = client.get_embedding("cached before the freeze")
    os.kill(service.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="did not answer 'embed' within 2 s"):
            client.get_embedding("asked of a frozen service")
        waited = time.monotonic() - started
        assert client.get_embedding("cached before the freeze").tobytes() == cached.tobytes()
    finally:
        os.kill(service.pid, signal.SIGCONT)
    thawed = client.get_embedding("asked after the thaw")
    assert thawed.tobytes() == EMBEDDER.embed(["asked after the thaw"])[0].tobytes()
    client.close()
    assert waited < 60  # generous: 2 s asked for
    record("frozen_service", request_timeout_s=2, failed_after_s=round(waited, 1))


def test_the_service_dying_again_during_a_restart_is_one_more_retry_not_an_error(make_service, monkeypatch):
    """Found by the 25-worker kill test under load: a worker restarted the service, it was killed
    again before the worker reconnected, and the worker's task failed with ServiceUnavailable.

    (The service the client restarts in the end is stopped by make_service: its handle stops
    whatever service runs on the store.)"""
    service = make_service(registry=None, export_env=False)
    client = SharedEmbeddingManager(service.address, on_failure="restart")
    kill_service(service)
    real_start = EmbeddingService.start
    killed: list[int] = []

    def start_then_die_once(self, **kwargs):
        real_start(self, **kwargs)
        if not killed:  # the first restart dies at once, before the client reconnects
            os.kill(self.pid, signal.SIGKILL)
            self._process.wait(30)
            killed.append(self.pid)
        return self

    monkeypatch.setattr(EmbeddingService, "start", start_then_die_once)
    try:
        text = "needs the service, restarted twice"
        assert client.get_embedding(text).tobytes() == EMBEDDER.embed([text])[0].tobytes()
        assert len(killed) == 1 and client.stats()["restarts"] == 2
    finally:
        monkeypatch.undo()
        client.close()
