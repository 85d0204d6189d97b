"""``embedshare bench``: every design on the same workload in one run, then the index sweep.

Cases run one after the other, each in a fresh interpreter (``bench/case.py``); for each
model, the model's own throughput is measured first, then every design at every worker
count (designs interleaved, so that they share the machine's noise). Every figure in the
output comes from this run; the targets are checked against figures of this run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..env import ENV_ADDRESS, ENV_MODEL, ENV_REGISTRY, ENV_STORE
from ..util.children import python_child
from .designs import DESIGNS
from .targets import evaluate_targets

MODEL_SPECS = {"hash": "hash:384", "local": "local", "api": "openai:text-embedding-3-small"}
API_DIM = 1536  # text-embedding-3-small's size, served by the fake API
MODEL_BATCHES = {"hash": [1, 8, 64, 256], "local": [1, 8, 32, 64, 128], "api": [1, 64, 256]}


@dataclass
class BenchConfig:
    out: Path = Path("bench/results")
    workers: list[int] = field(default_factory=lambda: [1, 8, 25])
    tasks: int = 2000
    models: list[str] = field(default_factory=lambda: ["hash", "local", "api"])
    designs: list[str] = field(default_factory=lambda: list(DESIGNS))
    api_latency_ms: float = 150.0
    sweep_sizes: list[int] = field(default_factory=lambda: [1_000, 10_000, 100_000, 1_000_000])
    sweep_queries: int = 200
    usearch_max: int = 100_000
    miss_seconds: float = 4.0
    miss_threads: int = 4  # threads sending misses in each worker (the user's workers have dozens)
    hit_calls: int = 2000
    model_seconds: float = 2.0
    registry: str = "bundled"
    quick: bool = False
    case_timeout: float = 1800.0

    def check(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if not self.workers or any(w < 1 or w > 256 for w in self.workers):
            raise ValueError(f"workers must be 1..256, got {self.workers}")
        if self.tasks < 1:
            raise ValueError(f"tasks must be at least 1, got {self.tasks}")
        unknown = [m for m in self.models if m not in MODEL_SPECS]
        if unknown or not self.models:
            raise ValueError(f"unknown model(s) {unknown or self.models}; choose from {', '.join(MODEL_SPECS)}")
        unknown = [d for d in self.designs if d not in DESIGNS]
        if unknown or not self.designs:
            raise ValueError(f"unknown design(s) {unknown or self.designs}; choose from {', '.join(DESIGNS)}")
        if any(n < 10 or n > 10_000_000 for n in self.sweep_sizes):
            raise ValueError(f"sweep sizes must be 10..10,000,000 tools, got {self.sweep_sizes}")
        if self.api_latency_ms < 0 or self.miss_seconds <= 0 or self.hit_calls < 1 or self.miss_threads < 1:
            raise ValueError("api latency must be >= 0, miss seconds > 0, hit calls and miss threads >= 1")


def quick_config(out: Path) -> BenchConfig:
    """A few minutes on 2 cores: hashing model, 1 and 4 workers, a small sweep."""
    return BenchConfig(
        out=out,
        workers=[1, 4],
        tasks=150,
        models=["hash"],
        sweep_sizes=[1_000, 10_000],
        sweep_queries=50,
        usearch_max=10_000,
        miss_seconds=1.0,
        miss_threads=2,
        hit_calls=500,
        model_seconds=0.5,
        quick=True,
    )


def machine_info() -> dict[str, Any]:
    import psutil

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for package in ("numpy", "torch", "sentence-transformers", "lmdb", "usearch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
        "versions": versions,
    }


def _run_case(spec: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    name = f"{spec['model_label']}-{spec['design']}-{spec.get('workers', 0)}"
    spec_path, out_path, log_path = (
        workdir / f"{name}.spec.json",
        workdir / f"{name}.out.json",
        workdir / f"{name}.log",
    )
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for name_ in (ENV_ADDRESS, ENV_STORE, ENV_MODEL, ENV_REGISTRY):
        env.pop(name_, None)
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.run(
                **python_child("-m", "embedshare.bench.case", str(spec_path), str(out_path), cwd=workdir, env=env),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
            code: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    elapsed = time.perf_counter() - started
    if code == 0 and out_path.exists():
        result = json.loads(out_path.read_text())
    else:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        result = {"kind": spec.get("design"), "error": f"case exited with {code}", "log_tail": tail}
    result.update({k: spec[k] for k in ("design", "model_label", "model") if k in spec})
    if "workers" in spec:
        result.setdefault("workers", spec["workers"])
    result["case_seconds"] = elapsed
    return result


def agreement(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """Share of search and find_similar_tools top-5 lists identical in both runs."""
    same = total = 0
    for x, y in zip(a, b, strict=True):
        for key in ("search", "similar"):
            for p, q in zip(x[key], y[key], strict=True):
                same += p == q
                total += 1
    return same / total if total else 1.0


def run_bench(config: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every case and the sweep; returns the results (also what ``latest.json`` holds)."""
    config.check()
    began = time.perf_counter()
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "config": {**asdict(config), "out": str(config.out)},
        "model_alone": [],
        "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="embedshare-bench-") as tmp:
        work = Path(tmp)
        for label in config.models:
            _run_model(label, config, work, results, log)
        _add_agreement(results["cases"])
        if config.sweep_sizes:
            from .sweep import run_sweep

            results["sweep"] = run_sweep(
                config.sweep_sizes,
                queries=config.sweep_queries,
                usearch_max=config.usearch_max,
                workdir=work / "sweep",
                log=log,
            )
        else:
            results["sweep"] = None
    results["targets"] = evaluate_targets(results)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["bench_seconds"] = time.perf_counter() - began
    return results


def _run_model(
    label: str, config: BenchConfig, work: Path, results: dict[str, Any], log: Callable[[str], None]
) -> None:
    """One model: the model alone, every design at every worker count, the model alone again;
    then each case that failed once more."""
    spec_base: dict[str, Any] = {"model": MODEL_SPECS[label], "model_label": label, "registry": config.registry}
    if label == "api":
        spec_base["api"] = {"dim": API_DIM, "latency": config.api_latency_ms / 1000}
    alone_spec = {
        **spec_base,
        "design": "model-alone",
        "batch_sizes": MODEL_BATCHES[label],
        "seconds": config.model_seconds,
    }

    # Measured twice: before this model's cases, and right after embedshare with the most
    # workers, so that the throughput target compares figures measured minutes apart at most.
    _model_alone(alone_spec, "before the designs", config, work, results, log)
    for workers in config.workers:
        for design in config.designs:
            spec = {
                **spec_base,
                "design": design,
                "workers": workers,
                "tasks": config.tasks,
                "workdir": str(work / f"{label}-{design}-{workers}"),
                "results_path": str(work / f"{label}-{design}-{workers}.results.json"),
                "hit_calls": config.hit_calls,
                "miss_seconds": config.miss_seconds,
                "miss_threads": config.miss_threads,
            }
            case = _run_case(spec, work, config.case_timeout)
            case["_results_path"] = spec["results_path"]
            results["cases"].append(case)
            log(_case_line(case))
    when = f"right after the designs at {max(config.workers)} workers"
    _model_alone(alone_spec, when, config, work, results, log)
    # A case that failed (a crash, a timeout) is run once more, labelled as such.
    for i, case in enumerate(results["cases"]):
        if case["model_label"] == label and "error" in case:
            spec = json.loads((work / f"{label}-{case['design']}-{case['workers']}.spec.json").read_text())
            again = _run_case(spec, work, config.case_timeout)
            again["_results_path"] = spec["results_path"]
            again["retried_after"] = case["error"]
            results["cases"][i] = again
            log("retried: " + _case_line(again))


def _model_alone(
    spec: dict[str, Any],
    when: str,
    config: BenchConfig,
    work: Path,
    results: dict[str, Any],
    log: Callable[[str], None],
) -> None:
    label = spec["model_label"]
    alone = _run_case(spec, work, config.case_timeout)
    alone["when"] = when
    results["model_alone"].append(alone)
    log(
        f"[{label}] the model alone ({when}): best {alone.get('best_texts_per_second', 0):.0f} "
        f"texts/s (batch {alone.get('best_batch')})"
        if "error" not in alone
        else f"[{label}] the model alone FAILED: {alone['error']}"
    )


def _case_line(case: dict[str, Any]) -> str:
    head = f"[{case['model_label']}] {case['design']:<11} {case.get('workers', 0):>2} workers:"
    if "error" in case:
        return f"{head} FAILED ({case['error']}): " + " | ".join(case.get("log_tail", [])[-3:])
    return (
        f"{head} PSS {case['pss_total_mb']:7.0f} MB, worker-bare {case['worker_over_bare_mb']:6.1f} MB, "
        f"start {case['startup_s']:5.1f} s, wall {case['wall_s']:5.1f} s, hit p50 {case['hit_p50_us']:7.1f} us, "
        f"texts embedded {case['texts_embedded']} (distinct needed {case['distinct_texts_needed']}), "
        f"misses {case['miss_texts_per_s']:.0f}/s"
    )


def _add_agreement(cases: list[dict[str, Any]]) -> None:
    """Compare every case's task results with embedshare's (most workers) of the same model."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        by_model.setdefault(case["model_label"], []).append(case)
    for group in by_model.values():
        ok = [c for c in group if "error" not in c]
        refs = sorted((c for c in ok if c["design"] == "embedshare"), key=lambda c: c["workers"])
        ref = refs[-1] if refs else (ok[-1] if ok else None)
        reference = json.loads(Path(ref["_results_path"]).read_text()) if ref else None
        for case in group:
            path = case.pop("_results_path")
            if "error" in case or ref is None or reference is None:
                continue
            mine = json.loads(Path(path).read_text())
            case["agreement"] = agreement(mine, reference)
            case["agreement_reference"] = f"{ref['design']} {ref['workers']} workers"
