"""``python -m embedshare.bench.model_compare``: the model alone, before against after, ONNX against torch.

Each variant is a fresh interpreter (an interpreter of another checkout can be given, so that
``main``'s code is measured in the same run: ``--before /work/main/.venv/bin/python``, run from
that checkout's folder). It loads the model, then embeds distinct texts in batches of 1, 16 and
64 for ``seconds`` each, short texts (~10 tokens) then long ones (~250 tokens), and reports
texts/s, the minor page faults and system CPU time of that work (getrusage), the peak PSS seen
after a batch and the PSS once the model has been idle for 2 s. Variants take turns in each of
``rounds`` rounds (so they share the machine's noise); figures are medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Only create_embedder and embed: the same script measures older checkouts of the project.
WORKER = """
import json, resource, sys, time
import psutil
from embedshare.embedders import create_embedder
spec, seconds, options = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
embedder = create_embedder(spec, **options)
getattr(embedder, "load", lambda: None)()
words = "parse the json file from the socket and write each record to the table with its schema".split()
make = {
    "short": lambda i: f"distinct probe text {i} about parsing files",
    "long": lambda i: " ".join(f"{words[(i + k) % len(words)]}{(i * 7 + k) % 97}" for k in range(100)),
}
me, out, serial, peak = psutil.Process(), {}, 0, 0
before = resource.getrusage(resource.RUSAGE_SELF)
for kind in ("short", "long"):
    for batch in (1, 16, 64):
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds or done == 0:
            embedder.embed([make[kind](serial + i) for i in range(batch)])
            serial, done = serial + batch, done + batch
        out[f"{kind}, batch {batch}"] = done / (time.perf_counter() - began)
        peak = max(peak, me.memory_full_info().pss)
after = resource.getrusage(resource.RUSAGE_SELF)
time.sleep(2.0)  # idle: what the service holds between bursts
per_k = 1000 / (serial or 1)  # per 1,000 texts: variants that ran faster did more texts
out.update({"minor page faults per 1,000 texts": (after.ru_minflt - before.ru_minflt) * per_k,
            "system CPU s per 1,000 texts": (after.ru_stime - before.ru_stime) * per_k,
            "user CPU s per 1,000 texts": (after.ru_utime - before.ru_utime) * per_k,
            "peak PSS after a batch, MB": peak / 2**20, "PSS idle 2 s after, MB": me.memory_full_info().pss / 2**20})
print(json.dumps(out))
"""


# A service on a fresh store; 4 client threads send bursts of 64 long (~250-token) distinct texts
# a request for `seconds`; the service's PSS is sampled every 0.1 s (peak: during the burst), and
# read again once it has been idle for 3 s. Only the launcher and manager API: older checkouts too.
SERVICE_WORKER = """
import json, sys, tempfile, threading, time
import psutil
from embedshare.manager import EmbeddingManager
from embedshare.service.launcher import EmbeddingService
seconds = float(sys.argv[2])
words = "parse the json file from the socket and write each record to the table with its schema".split()
store = tempfile.TemporaryDirectory()
with EmbeddingService(store.name + "/store", model=sys.argv[1], start_timeout=600) as service:
    service_process, peak, stop = psutil.Process(service.pid), 0, time.monotonic() + seconds
    ready_mb = service_process.memory_full_info().pss / 2**20
    def client(n):
        manager, i = EmbeddingManager(), 0
        while time.monotonic() < stop:
            text = lambda j: " ".join(f"{words[(i + j + k) % 16]}{n}x{i}y{j}z{k}" for k in range(100))
            manager.get_embeddings([text(j) for j in range(64)])
            i += 1
    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads: t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, service_process.memory_full_info().pss)
        time.sleep(0.1)
    time.sleep(3.0)  # idle
    print(json.dumps({"service PSS ready, MB": ready_mb, "service PSS peak during the burst, MB": peak / 2**20,
                      "service PSS idle 3 s after the burst, MB": service_process.memory_full_info().pss / 2**20}))
store.cleanup()
"""


# Where the seconds go at each batch size: the process's CPU time (getrusage, user + system) and
# the wall time per text, min of 3 interleaved repetitions; CPU time does not wait for a core.
CPU_WORKER = """
import json, resource, sys, time
from embedshare.embedders import create_embedder
embedder = create_embedder(sys.argv[1], **json.loads(sys.argv[3]))
getattr(embedder, "load", lambda: None)()
words = "parse the json file from the socket and write each record to the table with its schema".split()
make = {"short": lambda i: f"distinct probe text {i} about parsing files",
        "long": lambda i: " ".join(f"{words[(i + k) % 16]}{(i * 7 + k) % 97}" for k in range(100))}
figures, serial = {}, 0
for repetition in range(3):
    for kind, count in (("short", 256), ("long", 32)):
        for batch in (1, 16, 64):
            before, began, done = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
            while done < count:
                embedder.embed([make[kind](serial + i) for i in range(batch)])
                serial, done = serial + batch, done + batch
            after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - began
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            for what, seconds in (("CPU", cpu), ("wall", wall)):
                key = f"{kind}, batch {batch}: {what} ms per text"
                figures[key] = min(figures.get(key, 1e9), seconds / done * 1000)
print(json.dumps(figures))
"""


def measure(
    python: str, cwd: str | None, spec: str, options: dict[str, Any], seconds: float, script: str = WORKER
) -> dict[str, float]:
    """One variant in a fresh interpreter; its figures."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # each interpreter runs its own checkout's code
    proc = subprocess.run(
        [python, "-c", script, spec, str(seconds), json.dumps(options)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{python} {spec}: {proc.stderr.strip().splitlines()[-1:]}")
    figures: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


def run(
    variants: list[tuple[str, str, str | None, str, dict[str, Any]]],
    rounds: int,
    seconds: float,
    script: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """``variants``: (label, python, cwd, spec, options); the medians by label. ``log`` gets a
    line a measurement."""
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, *_ in variants}
    for round_no in range(rounds):
        for label, python, cwd, spec, options in variants:
            runs[label].append(measure(python, cwd, spec, options, seconds, script))
            log(f"[model-compare] round {round_no + 1} {label}: {json.dumps(runs[label][-1])}")
    return {label: {k: statistics.median(r[k] for r in results) for k in results[0]} for label, results in runs.items()}


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def format_table(medians: dict[str, dict[str, float]]) -> str:
    labels = list(medians)
    rows = list(next(iter(medians.values())))
    lines = ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for row in rows:
        cells = [_figure(medians[label][row]) for label in labels]
        unit = ", texts/s" if row.startswith(("short", "long")) and ":" not in row else ""
        lines.append(f"| {row}{unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="python of the checkout to compare with (run in --before-cwd)")
    parser.add_argument("--before-cwd", help="that checkout's folder (default: the python's ../..)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--int8", action="store_true", help="also local@int8 (this checkout)")
    parser.add_argument("--budgets", default="", help="comma-separated max_batch_tokens to compare (fp32)")
    parser.add_argument("--service", action="store_true", help="the service's PSS around a burst, not the model alone")
    parser.add_argument("--cpu", action="store_true", help="CPU and wall time per text at each batch size")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    me = sys.executable
    variants: list[tuple[str, str, str | None, str, dict[str, Any]]] = []
    if args.before:
        cwd = args.before_cwd or str(Path(args.before).resolve().parents[2])
        variants.append(("before (fp32)", args.before, cwd, "local", {}))
    variants.append(("after (fp32)", me, None, "local", {}))
    variants += [(f"budget {b}", me, None, "local", {"max_batch_tokens": int(b)}) for b in args.budgets.split(",") if b]
    if args.int8:
        variants.append(("after (int8)", me, None, "local@int8", {}))
    if not args.no_torch:
        variants.append(("torch", me, None, "local@torch", {}))
    script = SERVICE_WORKER if args.service else CPU_WORKER if args.cpu else WORKER
    table = format_table(run(variants, args.rounds, args.seconds, script, lambda line: print(line, file=sys.stderr)))
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
