"""The benchmark: the baseline designs are correct, and ``embedshare bench --quick`` writes
sane, internally consistent outputs. (Tests never judge speed: they check the figures agree
with each other and with what the designs must do.)"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.extras import requires
from helpers.processes import alive
from helpers.waiting import wait_for

from embedshare.bench import designs, dict_sources, probes
from embedshare.bench.counting import counting_embedder
from embedshare.bench.designs import option_c_shape
from embedshare.bench.report import DESIGN_NAMES
from embedshare.bench.runner import BenchConfig, agreement
from embedshare.cli import main
from embedshare.manager import EmbeddingManager
from embedshare.store.cache import cache_key


@pytest.fixture(scope="module")
def mp_manager():
    manager = multiprocessing.get_context("spawn").Manager()
    yield manager
    manager.shutdown()


@pytest.fixture
def reference(tmp_path) -> EmbeddingManager:
    """A local manager with the bundled registry: what every design must agree with."""
    return EmbeddingManager(tmp_path / "ref", model="hash:64", registry="bundled")


def test_counting_embedder_counts_calls_texts_and_distinct_texts():
    embedder = counting_embedder("hash:32")
    embedder.embed(["a b", "c"])
    embedder.embed(["a b"])
    counts = embedder.counts()
    assert (counts["calls"], counts["texts"], len(counts["tags"])) == (2, 3, 2)


def test_option_a_computes_misses_in_the_worker_and_shares_them_through_the_dict(mp_manager, reference):
    proxy = mp_manager.dict()
    embedder = counting_embedder("hash:64")
    a = EmbeddingManager(source=dict_sources.OptionASource(proxy, reference.index_path, embedder))
    vector = a.get_embedding("read a csv file")
    np.testing.assert_array_equal(vector, reference.get_embedding("read a csv file"))
    assert cache_key(a.model_id, "read a csv file") in proxy  # put in the shared dict
    # another worker (a second manager on the same dict) hits it without computing
    other_embedder = counting_embedder("hash:64")
    other = EmbeddingManager(source=dict_sources.OptionASource(proxy, reference.index_path, other_embedder))
    np.testing.assert_array_equal(other.get_embedding("read a csv file"), vector)
    assert other_embedder.counts()["calls"] == 0
    assert [r.name for r in other.search("parse json", k=5)] == [r.name for r in reference.search("parse json", k=5)]


def test_hybrid_asks_the_main_process_for_misses_and_never_returns_none(mp_manager, reference):
    proxy = mp_manager.dict()
    main_embedder = counting_embedder("hash:64")
    common = ["csv parser", "http post"]
    vectors = main_embedder.embed(common)
    proxy.update({cache_key(main_embedder.model_id, t): v.tobytes() for t, v in zip(common, vectors, strict=True)})
    requests = mp_manager.Queue()
    responses = [mp_manager.Queue(), mp_manager.Queue()]
    server = threading.Thread(
        target=dict_sources.serve_hybrid_misses, args=(requests, responses, proxy, main_embedder), daemon=True
    )
    server.start()
    try:
        workers = [
            EmbeddingManager(
                source=dict_sources.HybridSource(
                    proxy, requests, responses[i], i, reference.index_path, main_embedder.model_id, main_embedder.dim
                )
            )
            for i in range(2)
        ]
        for w in workers:  # pre-filled: hits, no question to the main process
            np.testing.assert_array_equal(w.get_embedding("csv parser"), reference.get_embedding("csv parser"))
        assert main_embedder.counts()["calls"] == 1
        for w in workers:  # a miss, asked twice: computed once by the main process
            np.testing.assert_array_equal(
                w.get_embedding("merge two tables"), reference.get_embedding("merge two tables")
            )
        assert main_embedder.counts()["texts"] == len(common) + 1
        assert [r.name for r in workers[1].search("send a request", k=3)] == [
            r.name for r in reference.search("send a request", k=3)
        ]
    finally:
        requests.put(None)
        server.join(timeout=30)
    assert not server.is_alive()


@pytest.mark.parametrize(
    "spec",
    [
        "hash:384",
        "hash:64",
        "local",
        pytest.param("openai:text-embedding-3-small", marks=requires("openai")),
        pytest.param(" openai:text-embedding-3-large ", marks=requires("openai")),
    ],
)
def test_model_id_of_matches_the_embedder_without_building_an_api_client(spec):
    from embedshare.embedders import create_embedder, model_id_of

    assert model_id_of(spec) == create_embedder(spec).model_id


@pytest.mark.parametrize("name", designs.DESIGNS)
def test_a_design_stops_every_process_it_started(name, tmp_path):
    """What a case measures is what it must end: workers, Manager server, service, forkserver."""
    design = designs.design_class(name)("hash:16", "bundled", 2, tmp_path, ["csv parser", "http post"])
    try:
        pool = design.start()
        started = {role: pids for role, pids in design.processes_to_measure().items() if role != "main"}
        assert len(started["worker"]) == design.processes
        reports = pool.collect(probes.worker_report)  # every worker has its manager installed
        assert sorted(r["pid"] for r in reports) == sorted(started["worker"])
        assert {r["dim"] for r in reports} == {16}
    finally:
        design.stop()
    pids = [pid for group in started.values() for pid in group]
    wait_for(lambda: not [pid for pid in pids if alive(pid)], 30, f"{name}'s processes {started} to end")


def test_an_unknown_design_is_named_in_the_error(tmp_path):
    with pytest.raises(ValueError, match="unknown design 'option-b'"):
        designs.design_class("option-b")


def test_option_c_shape_runs_every_worker_as_a_thread():
    for workers in (1, 2, 8, 25, 100):
        processes, threads = option_c_shape(workers)
        assert processes * threads >= workers
        assert processes * (threads - 1) < workers  # no idle thread
    assert option_c_shape(1) == (1, 1)


def test_agreement_counts_identical_top5_lists():
    a = [{"search": [["x", "y"]], "similar": [["z"], ["w"]]}]
    b = [{"search": [["x", "y"]], "similar": [["z"], ["q"]]}]
    assert agreement(a, a) == 1.0
    assert agreement(a, b) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "0"], "positive"),
        (["--workers", "two"], "comma-separated whole numbers"),
        (["--models", "bert"], "unknown model"),
        (["--designs", "option-b"], "unknown design"),
        (["--sweep-sizes", "5"], "sweep sizes"),
        (["--tasks", "0"], "0"),
    ],
)
def test_bench_cli_rejects_bad_input_with_a_clear_error(args, message, tmp_path):
    result = CliRunner().invoke(main, ["bench", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "latest.json").exists()


def test_bench_config_defaults_are_the_issue_s():
    config = BenchConfig()
    config.check()
    assert config.workers == [1, 8, 25] and config.models == ["hash", "local", "api"]
    assert config.sweep_sizes == [1_000, 10_000, 100_000, 1_000_000]


@pytest.mark.slow
@requires("bench")
def test_quick_bench_writes_consistent_outputs(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "embedshare.cli", "bench", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("latest.json", "latest.md", "memory.png", "latency.png", "sweep.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("memory.png", "latency.png", "sweep.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "latest.json").read_text())
    cases = results["cases"]
    assert not [c for c in cases if "error" in c], [c.get("log_tail") for c in cases if "error" in c]
    config = results["config"]
    assert {(c["design"], c["workers"]) for c in cases} == {(d, w) for d in designs.DESIGNS for w in config["workers"]}

    for c in cases:
        # every design computed the same top-5 lists (the hashing model is deterministic)
        assert c["agreement"] == 1.0, (c["design"], c["workers"])
        assert c["pss_total_mb"] == pytest.approx(sum(c["pss_mb"].values()))
        assert c["embedding_pss_mb"] == pytest.approx(c["pss_total_mb"] - c["bare_mb"] * c["processes_measured"])
        assert c["pss_mb"]["worker"] > 0 and c["bare_mb"] > 0
        assert c["startup_s"] <= c["first_result_s"] and c["wall_s"] > 0
        assert 0 < c["hit_p50_us"] <= c["hit_p99_us"] and 0 < c["search_p50_ms"] <= c["search_p99_ms"]
        assert c["miss_texts"] > 0 and c["miss_texts_per_s"] > 0
        # every needed text was computed at least once; no design computes fewer
        assert c["distinct_texts_embedded"] == c["distinct_texts_needed"], c["design"]
        assert c["texts_embedded"] >= c["distinct_texts_needed"]
        assert c["cache_hits"] + c["cache_misses"] > 0
        if c["design"] in ("embedshare", "hybrid"):  # each distinct text computed once
            assert c["texts_embedded"] == c["distinct_texts_needed"], c["design"]
        if c["design"] == "per-process" and c["workers"] > 1:  # every worker built its own index
            assert c["texts_embedded"] > c["distinct_texts_needed"]
    by = {(c["design"], c["workers"]): c for c in cases}
    top = max(config["workers"])
    assert by[("per-process", top)]["model_calls"] > by[("embedshare", top)]["model_calls"]
    assert set(by[("embedshare", top)]["pss_mb"]) == {"main", "service", "forkserver", "worker"}
    assert set(by[("option-a", top)]["pss_mb"]) == {"main", "manager-server", "worker"}

    targets = results["targets"]
    assert targets and all(isinstance(t["ok"], bool) and t["measured"] for t in targets)
    assert next(t for t in targets if t["target"].startswith("model calls"))["ok"] is True

    sweep = results["sweep"]["rows"]
    assert [r["tools"] for r in sweep] == config["sweep_sizes"]
    for row in sweep:
        assert 0.9 <= row["ivf"]["recall_at_5"] <= 1.0
        assert 0.0 <= row["usearch"]["recall_at_5"] <= 1.0
        assert row["exact"]["p50_ms"] > 0 and row["ivf"]["p50_ms"] > 0

    md = (out / "latest.md").read_text()
    for design in designs.DESIGNS:
        assert md.count("| " + DESIGN_NAMES[design]) == len(config["workers"])
    assert "## Targets" in md and "![memory.png](memory.png)" in md
