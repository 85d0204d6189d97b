"""The local EmbeddingManager, the API every user sees: embeddings and their cache, input
validation, thread safety and single-flight, search and its result cache, similar tools,
protocols, model isolation, preload and stats. Hashing embedder only: fast, no model."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter

import numpy as np
import pytest

from embedshare.embedders import EmbedderError, InvalidTextError
from embedshare.embedders.hashing import HashingEmbedder
from embedshare.manager import EmbeddingManager, NoIndexError
from embedshare.registry import FIELDS, load_registry
from embedshare.store import UnknownToolError
from embedshare.store.index import SearchResult

pytestmark = pytest.mark.timeout(120)

DIM = 64
BUNDLED = load_registry("bundled")
TOOLS = {tool.name: tool for tool in BUNDLED.tools}
CATEGORIES = sorted({tool.category for tool in BUNDLED.tools})


@pytest.fixture
def manager(tmp_path):
    m = EmbeddingManager(store=tmp_path / "store", model=f"hash:{DIM}", registry="bundled")
    yield m
    m.close()


@pytest.fixture
def counting(tmp_path, recording_embedder):
    """A manager without a registry whose embedder counts texts: (manager, embedder)."""
    embedder = recording_embedder(DIM)
    m = EmbeddingManager(store=tmp_path / "store", model=embedder)
    yield m, embedder
    m.close()


# -- embeddings ------------------------------------------------------------------------------


def test_get_embedding_is_a_unit_float32_vector_equal_to_the_batch_row(manager):
    text = "read a csv file"
    vector = manager.get_embedding(text)
    assert isinstance(vector, np.ndarray)
    assert vector.shape == (DIM,)
    assert vector.dtype == np.float32
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    batch = manager.get_embeddings([text])
    assert batch.shape == (1, DIM) and batch.dtype == np.float32
    assert batch[0].tobytes() == vector.tobytes()
    # and it is what the model itself gives for the text
    assert vector.tobytes() == HashingEmbedder(DIM).embed([text])[0].tobytes()


def test_get_embeddings_embeds_each_distinct_text_once_and_keeps_order(counting):
    manager, embedder = counting
    texts = ["alpha text", "beta text", "alpha text", "gamma text", "beta text"]
    vectors = manager.get_embeddings(texts)
    assert vectors.shape == (5, DIM)
    assert embedder.embedded == Counter({"alpha text": 1, "beta text": 1, "gamma text": 1})
    expected = HashingEmbedder(DIM).embed(texts)
    for row, text in enumerate(texts):
        assert vectors[row].tobytes() == expected[row].tobytes(), text
    s = manager.stats()
    assert (s["hits"], s["misses"]) == (0, 5)
    assert s["model_calls"] == 1 and s["texts_embedded"] == 3


def test_second_call_is_all_cache_hits(counting):
    manager, embedder = counting
    texts = ["one", "two", "three"]
    first = manager.get_embeddings(texts)
    embedder.reset()
    second = manager.get_embeddings(texts)
    assert embedder.calls == []
    assert second.tobytes() == first.tobytes()
    s = manager.stats()
    assert (s["hits"], s["misses"]) == (3, 3)
    assert s["embed_calls"] == 2 and s["texts"] == 6
    assert s["model_calls"] == 1 and s["texts_embedded"] == 3


def test_a_new_manager_on_the_same_store_reads_the_cache(tmp_path, recording_embedder):
    texts = ["persisted one", "persisted two"]
    first = EmbeddingManager(store=tmp_path / "store", model=recording_embedder(DIM))
    vectors = first.get_embeddings(texts)
    first.close()

    embedder = recording_embedder(DIM)
    second = EmbeddingManager(store=tmp_path / "store", model=embedder)
    try:
        again = second.get_embeddings(texts)
        assert embedder.calls == []
        assert again.tobytes() == vectors.tobytes()
        assert second.stats()["hits"] == 2
    finally:
        second.close()


# -- bad input -------------------------------------------------------------------------------

BAD_TEXTS = [
    (None, "NoneType"),
    (b"bytes", "bytes"),
    (3, "int"),
    ("", "empty"),
    ("bad \ud800 surrogate", "surrogate"),
]


@pytest.mark.parametrize("text, problem", BAD_TEXTS, ids=[repr(t) for t, _ in BAD_TEXTS])
def test_get_embedding_rejects_bad_text_naming_the_problem(counting, text, problem):
    manager, embedder = counting
    with pytest.raises(InvalidTextError, match=problem):
        manager.get_embedding(text)
    assert embedder.calls == []


@pytest.mark.parametrize("text, problem", BAD_TEXTS, ids=[repr(t) for t, _ in BAD_TEXTS])
def test_get_embeddings_names_the_bad_item(counting, text, problem):
    manager, embedder = counting
    with pytest.raises(InvalidTextError) as info:
        manager.get_embeddings(["fine text", text])
    assert "texts[1]" in str(info.value)
    assert problem in str(info.value)
    assert embedder.calls == []  # nothing of the batch was embedded


def test_get_embeddings_of_a_string_is_an_error(counting):
    manager, embedder = counting
    with pytest.raises(InvalidTextError, match="list"):
        manager.get_embeddings("a string")
    with pytest.raises(InvalidTextError, match="list"):
        manager.get_embeddings(b"some bytes")
    assert embedder.calls == []


def test_invalid_text_is_a_value_error(counting):
    manager, _ = counting
    with pytest.raises(ValueError):
        manager.get_embedding(None)


# -- threads ---------------------------------------------------------------------------------

TEXT_POOL = [
    "read a csv file",
    "Read a CSV file",
    "send an email",
    "http get request",
    "parse json",
    "compute the mean",
    "list files in a folder",
    "upload to s3",
    "generate a uuid",
    "hash a file with sha256",
    "schedule a meeting",
    "translate text",
    "ping a host",
    "sort records",
    "join two tables",
    "base64 encode",
    "write a log line",
    "query a database",
    "publish to a queue",
    "fit a regression",
    "zip a folder",
    "check an ssl certificate",
]
QUERIES = [*TEXT_POOL[:12], "  READ a   csv FILE ", "Send An Email"]


def _random_calls(seed: int, n: int) -> list[tuple]:
    rng = random.Random(seed)
    names = sorted(TOOLS)
    calls = []
    for _ in range(n):
        op = rng.choice(["embedding", "embeddings", "search", "similar", "protocols"])
        if op == "embedding":
            calls.append((op, rng.choice(TEXT_POOL)))
        elif op == "embeddings":
            calls.append((op, tuple(rng.choice(TEXT_POOL) for _ in range(rng.randint(1, 6)))))
        elif op == "search":
            calls.append(
                (op, rng.choice(QUERIES), rng.choice([1, 3, 5]), rng.choice([None, None, rng.choice(CATEGORIES)]))
            )
        elif op == "similar":
            calls.append((op, rng.choice(names), rng.choice([1, 5]), rng.random() < 0.5))
        else:
            calls.append((op, tuple(rng.sample(names, rng.randint(1, 4)))))
    return calls


def _run_call(manager: EmbeddingManager, call: tuple):
    """Do one call and return a comparable, exact form of its result."""
    op = call[0]
    if op == "embedding":
        v = manager.get_embedding(call[1])
        return (v.shape, str(v.dtype), v.tobytes())
    if op == "embeddings":
        v = manager.get_embeddings(list(call[1]))
        return (v.shape, str(v.dtype), v.tobytes())
    if op == "search":
        results = manager.search(call[1], k=call[2], category=call[3])
        return [(r.name, r.score, r.category, r.reason) for r in results]
    if op == "similar":
        results = manager.find_similar_tools(call[1], k=call[2], same_category_only=call[3])
        return [(r.name, r.score, r.category, r.reason) for r in results]
    protocols = manager.get_tool_protocols(list(call[1]))
    return json.dumps(protocols, sort_keys=True)


def test_64_threads_get_exactly_the_serial_results(tmp_path, run_threads):
    n_threads, per_thread = 64, 25
    plans = [_random_calls(seed, per_thread) for seed in range(n_threads)]
    shared = EmbeddingManager(store=tmp_path / "threaded", model=f"hash:{DIM}", registry="bundled")
    results = run_threads(n_threads, lambda i: [_run_call(shared, call) for call in plans[i]], timeout=90)
    shared.close()

    serial = EmbeddingManager(store=tmp_path / "serial", model=f"hash:{DIM}", registry="bundled")
    try:
        for i, plan in enumerate(plans):
            for j, call in enumerate(plan):
                assert results[i][j] == _run_call(serial, call), f"thread {i}, call {j}: {call}"
    finally:
        serial.close()


def test_single_flight_32_threads_one_new_text_embedded_once(counting, run_threads):
    manager, embedder = counting
    n = 32
    text = "a brand new text nobody has embedded"
    key = manager.cache.key(text)
    looked_up: set[int] = set()
    everyone_missed = threading.Event()
    lookup_lock = threading.Lock()
    real_lookup = manager.cache.get_many_into

    def recording_lookup(keys, out):
        found = real_lookup(keys, out)
        if key in keys:
            with lookup_lock:
                looked_up.add(threading.get_ident())
                if len(looked_up) == n:
                    everyone_missed.set()
        return found

    def hold_until_every_thread_missed(n: int, texts: list[str]) -> None:
        # Hold the model until all 32 threads have looked the text up (and missed it): without
        # single-flight each of them would now call the model.
        if text in texts:
            assert everyone_missed.wait(timeout=30), "not every thread reached the cache lookup"

    manager.cache.get_many_into = recording_lookup
    embedder.before_embed = hold_until_every_thread_missed

    vectors = run_threads(n, lambda i: manager.get_embedding(text).tobytes(), timeout=60)
    assert embedder.embedded[text] == 1
    assert len(set(vectors)) == 1
    assert vectors[0] == HashingEmbedder(DIM).embed([text])[0].tobytes()


def test_a_model_failure_reaches_the_caller_and_nothing_stays_in_flight(tmp_path, recording_embedder):
    """The model fails for one text while another process stored the other one between our
    lookup and our claim: the caller gets the model's error, and the next call works."""
    embedder = recording_embedder(DIM, failure=EmbedderError("model is down"))
    manager = EmbeddingManager(store=tmp_path / "store", model=embedder)
    real_lookup = manager.cache.get_many_into
    lookups = []

    def lookup_then_another_process_writes(keys, out):
        found = real_lookup(keys, out)
        lookups.append(len(keys))
        if len(lookups) == 1:
            manager.cache.put_many(["stored meanwhile"], HashingEmbedder(DIM).embed(["stored meanwhile"]))
        return found

    manager.cache.get_many_into = lookup_then_another_process_writes
    try:
        with pytest.raises(EmbedderError, match="model is down"):
            manager.get_embeddings(["stored meanwhile", "needs the model"])
        assert len(manager.source._flights) == 0  # nothing stays in flight
        embedder.reset()  # from here on, what the working model is asked
        embedder.failure = None
        vectors = manager.get_embeddings(["stored meanwhile", "needs the model"])
        assert vectors.tobytes() == HashingEmbedder(DIM).embed(["stored meanwhile", "needs the model"]).tobytes()
        assert embedder.embedded == Counter({"needs the model": 1})
    finally:
        manager.close()


# -- search ----------------------------------------------------------------------------------


def test_search_returns_ranked_results_with_protocol_and_reason(manager):
    results = manager.search("read a csv file", k=5)
    assert len(results) == 5
    assert len({r.name for r in results}) == 5
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    for r in results:
        assert isinstance(r, SearchResult)
        assert r.name in TOOLS
        assert r.category == TOOLS[r.name].category
        assert isinstance(r.score, float) and -1.0 <= r.score <= 1.0 + 1e-6
        assert r.protocol["name"] == r.name
        assert r.protocol["inputSchema"]["type"] == "object"
        assert set(r.protocol["inputSchema"]["properties"]) == {p["name"] for p in TOOLS[r.name].parameters}
        assert r.reason.strip()
        assert any(field in r.reason for field in FIELDS), r.reason


def test_search_top_k_is_the_start_of_the_full_ranking(manager):
    results = manager.search("compute the mean of a column", k=30)
    everything = manager.search("compute the mean of a column", k=len(TOOLS), threshold=-1.0)
    assert len(everything) == len(TOOLS)
    # the default threshold 0.0 drops only the tools with a negative score
    default = manager.search("compute the mean of a column", k=len(TOOLS))
    assert [r.name for r in default] == [r.name for r in everything if r.score >= 0.0]
    assert [r.name for r in results] == [r.name for r in everything[:30]]


@pytest.mark.parametrize("k", [1, 3, 7])
def test_search_respects_k(manager, k):
    assert len(manager.search("send a message", k=k)) == k


def test_search_category_filter(manager):
    for category in CATEGORIES:
        results = manager.search("read a csv file", k=5, category=category)
        assert results, category
        assert {r.category for r in results} == {category}
        in_category = sum(1 for t in BUNDLED.tools if t.category == category)
        assert len(results) == min(5, in_category)


def test_search_threshold_filters(manager):
    everything = manager.search("upload a file to s3", k=len(TOOLS), threshold=-1.0)
    threshold = everything[len(everything) // 3].score
    results = manager.search("upload a file to s3", k=len(TOOLS), threshold=threshold)
    assert results
    assert all(r.score >= threshold for r in results)
    assert [r.name for r in results] == [r.name for r in everything if r.score >= threshold]
    assert len(results) < len(everything)
    assert manager.search("upload a file to s3", k=5, threshold=1.01) == []


def test_search_unknown_category_returns_nothing(manager):
    assert manager.search("read a csv file", k=5, category="no_such_category") == []


@pytest.mark.parametrize("k", [0, -1, "3", 2.0, None])
def test_search_bad_k_is_a_value_error(manager, k):
    with pytest.raises(ValueError, match="k"):
        manager.search("read a csv file", k=k)


def test_search_bad_query_is_invalid_text(manager):
    for query in (None, "", "  "):
        with pytest.raises(InvalidTextError):
            manager.search(query)


def test_search_cache_ignores_case_and_spacing(manager):
    first = manager.search("Read a CSV file", k=3)
    before = manager.stats()
    second = manager.search("  read   a csv   FILE ", k=3)
    after = manager.stats()
    assert after["search_cache_hits"] == before["search_cache_hits"] + 1
    assert after["searches"] == before["searches"] + 1
    assert [r.to_dict() for r in second] == [r.to_dict() for r in first]
    # a different k or category is a different search, not a stale hit
    assert len(manager.search("read a csv file", k=5)) == 5
    assert manager.stats()["search_cache_hits"] == after["search_cache_hits"]


def test_search_cache_is_bounded_and_keeps_the_recent(tmp_path):
    manager = EmbeddingManager(store=tmp_path / "store", model=f"hash:{DIM}", registry="bundled", search_cache_size=4)
    try:
        queries = [f"query number {i} about files" for i in range(10)]
        for q in queries:
            manager.search(q, k=3)
        assert len(manager._search_cache) <= 4
        hits = manager.stats()["search_cache_hits"]
        manager.search(queries[-1], k=3)  # recent: still cached
        assert manager.stats()["search_cache_hits"] == hits + 1
        manager.search(queries[0], k=3)  # oldest: evicted
        assert manager.stats()["search_cache_hits"] == hits + 1
        assert len(manager._search_cache) <= 4
    finally:
        manager.close()


# -- similar tools and protocols --------------------------------------------------------------


def test_find_similar_tools_excludes_the_tool_itself(manager):
    results = manager.find_similar_tools("csv_parser", k=5)
    assert len(results) == 5
    names = [r.name for r in results]
    assert "csv_parser" not in names
    assert len(set(names)) == 5
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    # every other tool can be returned, never the tool itself
    everything = manager.find_similar_tools("csv_parser", k=len(TOOLS))
    assert {r.name for r in everything} == set(TOOLS) - {"csv_parser"}


def test_find_similar_tools_same_category_only(manager):
    category = TOOLS["http_get"].category
    results = manager.find_similar_tools("http_get", k=5, same_category_only=True)
    assert results
    assert {r.category for r in results} == {category}
    assert "http_get" not in {r.name for r in results}
    everything = manager.find_similar_tools("http_get", k=len(TOOLS), same_category_only=True)
    assert {r.name for r in everything} == {n for n, t in TOOLS.items() if t.category == category} - {"http_get"}


def test_find_similar_tools_unknown_tool(manager):
    with pytest.raises(UnknownToolError, match="no_such_tool"):
        manager.find_similar_tools("no_such_tool")


def test_get_tool_protocols(manager):
    protocols = manager.get_tool_protocols(["csv_parser", "http_get"])
    assert set(protocols) == {"csv_parser", "http_get"}
    for name, protocol in protocols.items():
        assert protocol["name"] == name
        assert protocol["description"] == TOOLS[name].description
        schema = protocol["inputSchema"]
        assert set(schema["properties"]) == {p["name"] for p in TOOLS[name].parameters}
        assert set(schema["required"]) == {p["name"] for p in TOOLS[name].parameters if p.get("required")}


def test_get_tool_protocols_accepts_a_single_name(manager):
    protocols = manager.get_tool_protocols("json_parser")
    assert list(protocols) == ["json_parser"]
    assert protocols["json_parser"]["name"] == "json_parser"


def test_get_tool_protocols_unknown_names_are_all_listed(manager):
    with pytest.raises(UnknownToolError) as info:
        manager.get_tool_protocols(["csv_parser", "nope_one", "nope_two"])
    message = str(info.value)
    assert "nope_one" in message and "nope_two" in message
    assert "csv_parser" not in message


# -- no registry -----------------------------------------------------------------------------


def test_without_a_registry_search_says_how_to_load_one(counting):
    manager, _ = counting
    with pytest.raises(NoIndexError) as info:
        manager.search("read a csv file")
    message = str(info.value)
    assert "registry" in message and "load_registry" in message
    with pytest.raises(NoIndexError):
        manager.find_similar_tools("csv_parser")
    with pytest.raises(NoIndexError):
        manager.get_tool_protocols(["csv_parser"])
    # embeddings still work
    assert manager.get_embedding("still works").shape == (DIM,)


# -- models never mix ------------------------------------------------------------------------


def test_two_models_of_the_same_dim_on_one_store_never_share_vectors(tmp_path, recording_embedder):
    a_embedder = recording_embedder(DIM, model_id="test-model-a", salt="A: ")
    b_embedder = recording_embedder(DIM, model_id="test-model-b", salt="B: ")
    a = EmbeddingManager(store=tmp_path / "store", model=a_embedder)
    b = EmbeddingManager(store=tmp_path / "store", model=b_embedder)
    try:
        texts = ["shared text one", "shared text two"]
        va = a.get_embeddings(texts)
        vb = b.get_embeddings(texts)
        assert b_embedder.embedded == Counter(texts)  # b did not take a's cached vectors
        for row in range(2):
            assert va[row].tobytes() != vb[row].tobytes()
        assert vb.tobytes() == b_embedder.model.embed(["B: " + t for t in texts]).tobytes()
        # and each keeps reading its own vectors from the shared cache afterwards
        a_embedder.reset()
        b_embedder.reset()
        assert a.get_embeddings(texts).tobytes() == va.tobytes()
        assert b.get_embeddings(texts).tobytes() == vb.tobytes()
        assert a_embedder.calls == [] and b_embedder.calls == []
        assert b.get_embedding("only b knows this").tobytes() != a.get_embedding("only b knows this").tobytes()
    finally:
        a.close()
        b.close()


# -- preload and stats -----------------------------------------------------------------------


def test_preload_returns_how_many_texts_were_new(counting):
    manager, embedder = counting
    assert manager.preload(["p one", "p two"]) == 2
    assert manager.preload(["p one", "p two", "p three"]) == 1
    assert manager.preload(["p three"]) == 0
    assert embedder.embedded == Counter({"p one": 1, "p two": 1, "p three": 1})
    embedder.reset()
    manager.get_embeddings(["p one", "p two", "p three"])
    assert embedder.calls == []


def test_stats_has_the_documented_keys(manager):
    manager.get_embeddings(["stats one", "stats two"])
    manager.get_embedding("stats one")
    manager.search("read a csv file", k=3)
    manager.search("READ a csv file", k=3)
    s = manager.stats()
    for key in (
        "embed_calls",
        "texts",
        "hits",
        "misses",
        "model_calls",
        "texts_embedded",
        "searches",
        "search_cache_hits",
        "latency",
        "mode",
        "model_id",
        "dim",
        "tools",
    ):
        assert key in s, key
    assert s["mode"] == "local"
    assert s["model_id"] == HashingEmbedder(DIM).model_id
    assert s["dim"] == DIM
    assert s["tools"] == len(BUNDLED)
    assert s["searches"] == 2 and s["search_cache_hits"] == 1
    assert s["texts"] == s["hits"] + s["misses"]
    assert s["hits"] >= 1  # "stats one" the second time
    assert isinstance(s["latency"], dict) and "search" in s["latency"]
    json.dumps(s)  # stats are plain data
