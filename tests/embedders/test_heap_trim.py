"""The heap goes back to the OS once the model is idle, never during or after each forward.

Returning every large buffer at once (glibc's mmap threshold at 1 MB, before) cost a page fault
per touched page on every forward; ``util/heap.py`` trims once per busy period instead.
"""

from __future__ import annotations

import threading
import time

import pytest
from helpers.extras import requires
from helpers.waiting import wait_for

from embedshare.util.heap import IdleTrim, return_free_heap_to_the_os


def test_trim_runs_once_after_the_last_forward_of_a_burst():
    trim = IdleTrim(threading.Lock(), idle_seconds=0.2)
    for _ in range(20):  # a burst: forwards closer together than the idle time
        trim.busy()
        time.sleep(0.01)
    assert trim.trims == 0  # not during the burst
    wait_for(lambda: trim.trims == 1, timeout=10, what="the trim after the burst")
    trim.busy()  # a second burst: one more trim, once it is over
    wait_for(lambda: trim.trims == 2, timeout=10, what="the trim after the second burst")


def test_trim_never_runs_while_a_forward_holds_the_lock():
    lock = threading.Lock()
    trim = IdleTrim(lock, idle_seconds=0.05)
    with lock:  # a forward longer than the idle time
        trim.busy()
        time.sleep(0.5)
        assert trim.trims == 0
    trim.busy()  # the forward ended
    wait_for(lambda: trim.trims == 1, timeout=10, what="the trim once the forward ended")


def test_malloc_trim_is_callable_here():
    assert return_free_heap_to_the_os() in (True, False)


@pytest.mark.model
@requires("local", "onnxruntime", "tokenizers")
def test_the_local_model_no_longer_sets_glibcs_mmap_threshold_and_trims_when_idle(monkeypatch):
    import ctypes

    from embedshare.embedders import create_embedder
    from embedshare.util import heap

    monkeypatch.setattr(heap, "IDLE_SECONDS", 0.1)
    real_cdll = ctypes.CDLL
    calls: list[str] = []

    class Watching:
        def __init__(self, lib):
            self._lib = lib

        def __getattr__(self, name):
            calls.append(name)
            return getattr(self._lib, name)

    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: Watching(real_cdll(*a, **k)))
    heap._libc_malloc_trim.cache_clear()
    embedder = create_embedder("local")
    embedder._idle_trim.idle_seconds = 0.1
    embedder.embed(["a text", "another text"] * 8)
    wait_for(lambda: embedder._idle_trim.trims >= 1, timeout=20, what="the idle trim")
    assert "mallopt" not in calls  # a page fault on every forward: never again
    assert "malloc_trim" in calls


def test_the_service_returns_its_load_burst_before_it_answers(tmp_path, monkeypatch):
    """The model load and the index build are a burst of their own, followed at once by clients'
    small forwards (so the idle trim would wait for the first idle second, and `make demo`
    measured 17 MB more service PSS): the engine trims once, after the index is built."""
    from embedshare.service import engine as engine_module
    from embedshare.service.config import ServiceConfig
    from embedshare.service.metrics import ServiceMetrics

    events = []
    monkeypatch.setattr(engine_module, "return_free_heap_to_the_os", lambda: events.append("trim") or True)
    engine = engine_module.Engine(
        ServiceConfig(store=tmp_path / "store", model="hash:32", registry="bundled"), ServiceMetrics()
    )
    compute = engine_module.Engine._embed_own
    monkeypatch.setattr(
        engine_module.Engine, "_embed_own", lambda self, texts: events.append("embed") or compute(self, texts)
    )
    engine.load()
    assert "embed" in events  # the index was built
    assert events[-1] == "trim" and events.count("trim") == 1
