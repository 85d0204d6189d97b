"""One backend's service under load, for ``bench --backends``: run by path, by any interpreter.

``python -P backend_variant.py '<json>'`` starts a service of one backend on a fresh store,
attaches ``workers`` workers (``backend_worker.py``, by path, with the same interpreter) and
runs every phase the JSON names, then prints one JSON line. ``bench/backends.py`` runs it with
this checkout's interpreter and with a baseline checkout's (``--baseline-python``), so both
sides meet the same load from the same worker code, each through its own client and service.
It imports only what every version of embedshare offers (the launcher, ``util.pss``).

Phases: ``["misses", PER_REQUEST, KIND, HOG]`` (every worker sends never-seen texts; HOG: a
busy loop takes one core meanwhile) and ``["fairness", TEXTS, CHARS]`` (one more client sends
requests of TEXTS never-seen texts of CHARS characters while the workers send one-text misses:
their latency, against the service's mean forward time in the same phase).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MB = 1 << 20
HERE = Path(__file__).resolve().parent
HOG_SCRIPT = "import time, sys\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"
POLL = 0.02  # seconds between looks at the service's counters while a phase starts
# Idle seconds watched after the run: a service gives its heap back once its model has been
# idle for a second (util/heap.py); the lowest PSS over these is what it holds when idle.
IDLE_WATCH = 3.0


class Workers:
    """Worker processes on pipes: each says ``ready``, then answers one JSON line a command."""

    def __init__(self, count: int, env: dict[str, str]) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-P", str(HERE / "backend_worker.py")],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        for proc in self.procs:
            line = proc.stdout.readline().strip()  # type: ignore[union-attr]
            if line != "ready":
                raise RuntimeError(f"a worker did not attach (said {line!r})")

    def send(self, command: str, procs: list[subprocess.Popen[str]] | None = None) -> None:
        for proc in procs or self.procs:
            proc.stdin.write(command + "\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]

    def replies(self, procs: list[subprocess.Popen[str]] | None = None) -> list[dict[str, Any]]:
        return [json.loads(proc.stdout.readline()) for proc in procs or self.procs]  # type: ignore[union-attr]

    def close(self) -> None:
        for proc in self.procs:
            try:
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
        for proc in self.procs:
            proc.wait(timeout=120)


class PeakPss(threading.Thread):
    """Samples a process's PSS every 0.25 s until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopped = pid, 0, threading.Event()

    def run(self) -> None:
        from embedshare.util.pss import pss_bytes

        while not self.stopped.is_set():
            self.peak = max(self.peak, pss_bytes(self.pid) or 0)
            self.stopped.wait(0.25)


def model_counters(stats: dict[str, Any]) -> tuple[int, float, int]:
    """Model calls, seconds in the model and texts embedded, from the service's stats."""
    seconds = stats.get("model_call_seconds") or {}
    return int(stats["model_calls"]), float(seconds.get("sum") or 0.0), int(stats["texts_embedded"])


def observe(service: Any, pid: int, started: float, before: tuple[Any, Any]) -> dict[str, Any]:
    """What the service did since ``before`` (its CPU times and stats): the profile of a phase."""
    import psutil

    wall = time.time() - started
    cpu_before, stats_before = before
    cpu_after, stats_after = psutil.Process(pid).cpu_times(), service.stats()
    calls0, model0, texts0 = model_counters(stats_before)
    calls1, model1, texts1 = model_counters(stats_after)
    calls, model_s = calls1 - calls0, model1 - model0
    return {
        "wall_s": wall,
        "service_cpu_cores": (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / wall,
        "service_system_cores": (cpu_after.system - cpu_before.system) / wall,
        "model_busy_share": model_s / wall,
        "forwards": calls,
        "mean_batch": (texts1 - texts0) / calls if calls else None,
        "mean_forward_s": model_s / calls if calls else None,
    }


def misses_phase(
    service: Any, pid: int, workers: Workers, phase: list[Any], seconds: float, tag: str
) -> dict[str, Any]:
    import psutil

    _, per_request, kind, hog = phase
    hog_proc = subprocess.Popen([sys.executable, "-P", "-c", HOG_SCRIPT, str(seconds * 3 + 30)]) if hog else None
    try:
        before = (psutil.Process(pid).cpu_times(), service.stats())
        minor_before = _minor_faults(pid)
        started = time.time()
        workers.send(f"run {seconds} {per_request} {tag} {kind}")
        replies = workers.replies()
    finally:
        if hog_proc is not None:
            hog_proc.kill()
            hog_proc.wait()
    result = observe(service, pid, started, before)
    wall = max(r["ended"] for r in replies) - started
    latencies = sorted(x for r in replies for x in r["latencies"])
    result.update(
        texts_per_s=sum(r["texts"] for r in replies) / wall,
        request_p50_s=statistics.median(latencies),
        service_minor_faults_per_s=(_minor_faults(pid) - minor_before) / wall,
        workers_cpu_cores=sum(r.get("cpu_s", 0.0) for r in replies) / wall,
    )
    return result


def fairness_phase(
    service: Any, pid: int, workers: Workers, big: Workers, phase: list[Any], seconds: float, tag: str
) -> dict[str, Any]:
    import psutil

    _, texts, chars = phase
    before = (psutil.Process(pid).cpu_times(), service.stats())
    started = time.time()
    big.send(f"big {seconds} {texts} {chars} {tag}-big")
    deadline = time.time() + 120
    calls = service.stats()["model_calls"]
    while time.time() < deadline:  # until the huge request is in: queued, or at the model
        now = service.stats()
        if now["queue_depth"] or now["model_calls"] > calls:
            break
        time.sleep(POLL)
    workers.send(f"run {seconds} 1 {tag} short")
    small = workers.replies()
    huge = big.replies()[0]
    result = observe(service, pid, started, before)
    latencies = sorted(x for r in small for x in r["latencies"])
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    forward = result["mean_forward_s"] or float("nan")
    result.update(
        small_requests=len(latencies),
        small_p50_s=statistics.median(latencies),
        small_p99_s=p99,
        small_p99_forwards=p99 / forward,
        big_request_s=statistics.median(huge["request_seconds"]),
    )
    return result


def lowest_pss(pid: int, seconds: float) -> int:
    """The lowest PSS of ``pid`` over ``seconds`` (sampled every 0.25 s)."""
    from embedshare.util.pss import pss_bytes

    lowest = pss_bytes(pid) or 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.25)
        lowest = min(lowest, pss_bytes(pid) or lowest)
    return lowest


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])  # minflt, field 10


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Every phase of ``spec`` on one fresh service; results keyed by each phase's JSON."""
    from embedshare.service.launcher import EmbeddingService
    from embedshare.util.pss import pss_bytes

    result: dict[str, Any] = {"phases": {}}
    with tempfile.TemporaryDirectory(prefix="embedshare-backends-") as tmp:
        started = time.perf_counter()
        with EmbeddingService(
            Path(tmp) / "store", model=spec["model"], threads=spec["threads"], export_env=False, start_timeout=600
        ) as service:
            result["service_start_s"] = time.perf_counter() - started
            stats = service.stats()
            pid = stats["pid"]
            result["torch_imported"] = stats.get("torch_imported")
            result["pss_idle_mb"] = (pss_bytes(pid) or 0) / MB
            env = {**os.environ, "EMBEDSHARE_ADDRESS": service.address, "EMBEDSHARE_MODEL": spec["model"]}
            workers = Workers(spec["workers"], env)
            big = Workers(1, env) if any(p[0] == "fairness" for p in spec["phases"]) else None
            sampler = PeakPss(pid)
            sampler.start()
            try:
                for phase in spec["phases"]:
                    name, tag = json.dumps(phase), f"{spec['tag']}-{len(result['phases'])}"
                    if phase[0] == "fairness":
                        assert big is not None
                        one = fairness_phase(service, pid, workers, big, phase, spec["seconds"], tag)
                    else:
                        one = misses_phase(service, pid, workers, phase, spec["seconds"], tag)
                    result["phases"][name] = one
            finally:
                sampler.stopped.set()
                sampler.join()
                workers.close()
                if big is not None:
                    big.close()
            result["pss_load_mb"] = sampler.peak / MB
            result["pss_after_mb"] = (pss_bytes(pid) or 0) / MB
            result["pss_idle_after_mb"] = lowest_pss(pid, IDLE_WATCH) / MB
    return result


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the with-blocks: the service and workers stop


def main() -> None:
    """Run by its file path (bench/backends.py): one JSON line, the variant's figures."""
    signal.signal(signal.SIGTERM, _stop)
    print(json.dumps(run(json.loads(sys.argv[1]))), flush=True)


if __name__ == "__main__":
    main()
