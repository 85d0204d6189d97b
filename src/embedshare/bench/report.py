"""Write a benchmark's results: ``latest.json``, ``latest.md`` and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .designs import DESIGNS

DESIGN_NAMES = {
    "per-process": "per-process managers",
    "option-c": "Option C (singleton, threads)",
    "option-a": "Option A (Manager dict)",
    "hybrid": "hybrid (dict + queue to main)",
    "embedshare": "embedshare",
}
MODEL_NAMES = {
    "hash": "hashing embedder (hash:384)",
    "local": "local model (all-MiniLM-L6-v2)",
    "api": "simulated API (openai:text-embedding-3-small)",
}
COLORS = {
    "per-process": "#d62728",
    "option-c": "#ff7f0e",
    "option-a": "#9467bd",
    "hybrid": "#8c564b",
    "embedshare": "#1f77b4",
}


def _f(value: Any, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "latest.json", out / "latest.md"]
    written[0].write_text(json.dumps(results, indent=1))
    written += write_plots(results, out)
    written[1].write_text(markdown(results, [p.name for p in written[2:]]))
    return written


def markdown(results: dict[str, Any], plots: list[str] | None = None) -> str:
    m, c = results["machine"], results["config"]
    lines = [
        "# embedshare benchmark" + (" (quick mode)" if c["quick"] else ""),
        "",
        f"Run {results['started']} on {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB; load average "
        f"{m['load_average_at_start'][0]:.1f} at the start, {m.get('load_average_at_end', [float('nan')])[0]:.1f} at "
        f"the end (the machine is shared). The whole run took {results.get('bench_seconds', 0) / 60:.1f} min. "
        f"Every figure below was measured in this run; `latest.json` has them all.",
        "",
        f"Workload: {c['tasks']} tasks of the user's shape (each ~1.9 `search`, ~2.3 `find_similar_tools`; "
        f"the bundled registry), on {', '.join(map(str, c['workers']))} workers. Then cache hits "
        f"({c['hit_calls']} `get_embedding` calls a worker) and misses (distinct new texts, one call at a time, "
        f"for {c['miss_seconds']} s). The simulated API adds {c['api_latency_ms']:.0f} ms to every request.",
        "",
    ]
    lines += ["## Targets (design.md)", "", "| target | model | measured | met |", "|---|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['model']} | {t['measured']} | {'yes' if t['ok'] else '**no**'} |")
    lines.append("")
    for label in c["models"]:
        lines += _model_section(results, label)
    lines += [COLUMNS_NOTE, ""]
    lines += _sweep_section(results.get("sweep"))
    for plot in plots or []:
        lines += [f"![{plot}]({plot})", ""]
    return "\n".join(lines)


def _model_section(results: dict[str, Any], label: str) -> list[str]:
    """A model's heading, the model alone, and the table of every case that ran it."""
    lines = [f"## {MODEL_NAMES.get(label, label)}", ""]
    for alone in (a for a in results["model_alone"] if a.get("model_label") == label and "error" not in a):
        by = ", ".join(f"batch {b}: {v:.0f}" for b, v in alone["texts_per_second_by_batch"].items())
        lines += [f"The model alone, one process, distinct texts ({alone.get('when', '')}): {by} texts/s.", ""]
    lines += [
        "| design | workers | PSS all processes MB | embedding part MB | a worker over bare MB | "
        "start-up s | first result s | attach p50 ms | hit p50 / p99 us | search p50 / p99 ms | "
        "misses/s | model calls | texts embedded (distinct / needed) | tasks wall s | same top-5 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_case_row(case) for case in results["cases"] if case["model_label"] == label]
    return [*lines, ""]


def _case_row(case: dict[str, Any]) -> str:
    name = DESIGN_NAMES.get(case["design"], case["design"])
    if case["design"] == "option-c" and "processes" in case:
        name += f" ({case['processes']}x{case['threads_per_process']})"
    if "error" in case:
        return f"| {name} | {case.get('workers')} | failed: {case['error']} |" + " |" * 12
    if case.get("tasks_label"):
        name += f" ({case['tasks_label']})"
    if case.get("retried_after"):
        name += " (measured again: the first attempt failed)"
    return (
        f"| {name} | {case['workers']} | {case['pss_total_mb']:.0f} | {case['embedding_pss_mb']:.0f} | "
        f"{_f(case['worker_over_bare_mb'])} | {case['startup_s']:.1f} | {_f(case['first_result_s'])} | "
        f"{_f(case['attach_p50_ms'])} | {_f(case['hit_p50_us'])} / {_f(case['hit_p99_us'], '.0f')} | "
        f"{_f(case['search_p50_ms'], '.2f')} / {_f(case['search_p99_ms'], '.0f')} | "
        f"{case['miss_texts_per_s']:.0f} | {case['model_calls']} | {case['texts_embedded']} "
        f"({case['distinct_texts_embedded']} / {case['distinct_texts_needed']}) | {case['wall_s']:.1f} | "
        f"{_f(case.get('agreement') and case['agreement'] * 100, '.1f')}% |"
    )


COLUMNS_NOTE = (
    "Columns: *PSS all processes*: summed over every process of the design (workers, main, service or "
    "Manager server; not the simulated API). *Embedding part*: that total minus one bare spawned "
    "interpreter with numpy per process. *Attach*: building or connecting the worker's manager. "
    "*Hit*: `get_embedding` of a cached text, in a worker. *Search*: `search()` in the task phase. "
    "*Misses/s*: distinct new texts answered per second with every worker sending. *Model calls*: "
    "forward passes or API requests during the task phase (index builds included); *texts embedded*: "
    "the texts they carried; *distinct*: how many different texts those were; *needed*: distinct texts "
    "the task phase needs (index fields, preloaded texts, queries). *Same top-5*: share of result lists "
    "identical to embedshare's with the most workers."
)


def _sweep_section(sweep: dict[str, Any] | None) -> list[str]:
    if not sweep:
        return []
    lines = [
        "## Search latency against index size",
        "",
        f"Data: {sweep['data']}. One BLAS thread; k = {sweep['k']}; up to {sweep['queries']} queries a size.",
        "",
        "| tools | exact p50 / p99 ms | IVF (store/ann.py) p50 / p99 ms | IVF recall@5 | IVF build s "
        "| usearch HNSW (view=True) p50 / p99 ms | usearch recall@5 | usearch build s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sweep["rows"]:
        e, i, u = row["exact"], row["ivf"], row["usearch"]
        us = (
            f"{u['p50_ms']:.3f} / {u['p99_ms']:.2f} | {u['recall_at_5']:.3f} | {u['build_s']:.1f}"
            if "p50_ms" in u
            else f"{u.get('skipped', '-')} | - | -"
        )
        lines.append(
            f"| {row['tools']:,} | {e['p50_ms']:.3f} / {e['p99_ms']:.2f} | {i['p50_ms']:.3f} / "
            f"{i['p99_ms']:.2f} | {i['recall_at_5']:.3f} (nprobe {i['nprobe']}/{i['nlist']}) | "
            f"{i['build_s']:.1f} | {us} |"
        )
    return [*lines, ""]


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["config"]["models"]
    cases = [c for c in results["cases"] if "error" not in c]
    top = max(results["config"]["workers"])
    written = [_memory_plot(plt, models, cases, out), _latency_plot(plt, models, cases, top, out)]
    sweep = results.get("sweep")
    if sweep and sweep["rows"]:
        written.append(_sweep_plot(plt, sweep["rows"], out))
    return written


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _memory_plot(plt: Any, models: list[str], cases: list[dict[str, Any]], out: Path) -> Path:
    from matplotlib.ticker import FuncFormatter, LogLocator

    plain = FuncFormatter(lambda v, _: f"{v:,.0f}")
    fig, axes = plt.subplots(1, len(models), figsize=(max(6.5, 4.2 * len(models)), 3.8), squeeze=False)
    for ax, label in zip(axes[0], models, strict=True):
        for design in DESIGNS:
            points = sorted(
                (c["workers"], c["pss_total_mb"]) for c in cases if c["model_label"] == label and c["design"] == design
            )
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", color=COLORS[design], label=DESIGN_NAMES[design])
        ax.set_title(MODEL_NAMES.get(label, label), fontsize=9)
        ax.set_xlabel("workers")
        ax.set_ylabel("PSS of every process (MB)")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xticks(sorted({c["workers"] for c in cases}))
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Memory against workers (PSS summed over every process, log scale)", fontsize=10)
    return _save(plt, fig, out / "memory.png")


def _latency_plot(plt: Any, models: list[str], cases: list[dict[str, Any]], top: int, out: Path) -> Path:
    fig, axes = plt.subplots(2, len(models), figsize=(max(5.0, 4.2 * len(models)), 6.4), squeeze=False)
    for col, label in enumerate(models):
        for row, (key, unit, title) in enumerate(
            (("hit_quantiles_us", "us", "cache hit, get_embedding"), ("search_quantiles_ms", "ms", "search()"))
        ):
            ax = axes[row][col]
            for design in DESIGNS:
                case = next(
                    (c for c in cases if c["model_label"] == label and c["design"] == design and c["workers"] == top),
                    None,
                )
                if case and case.get(key):
                    q = case[key]
                    ax.plot(
                        q, [i / (len(q) - 1) for i in range(len(q))], color=COLORS[design], label=DESIGN_NAMES[design]
                    )
            ax.set_xscale("log")
            ax.set_xlabel(f"latency ({unit}, log scale)")
            ax.set_ylabel("share of calls")
            ax.set_title(f"{title}, {top} workers\n{MODEL_NAMES.get(label, label)}", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(plt, fig, out / "latency.png")


def _sweep_plot(plt: Any, rows: list[dict[str, Any]], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    sizes = [r["tools"] for r in rows]
    ax.plot(sizes, [r["exact"]["p50_ms"] for r in rows], marker="o", label="exact (matrix-vector product)")
    ax.plot(sizes, [r["ivf"]["p50_ms"] for r in rows], marker="s", label="IVF, store/ann.py (mmap)")
    for r in rows:
        ax.annotate(
            f"{r['ivf']['recall_at_5']:.2f}",
            (r["tools"], r["ivf"]["p50_ms"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(4, -10),
        )
    hnsw = [(r["tools"], r["usearch"]["p50_ms"]) for r in rows if "p50_ms" in r["usearch"]]
    if hnsw:
        ax.plot(*zip(*hnsw, strict=True), marker="^", label="usearch HNSW (view=True)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tools in the index")
    ax.set_ylabel("search p50 (ms)")
    ax.set_title("Search latency against index size (labels: IVF recall@5)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, out / "sweep.png")


def main(argv: list[str]) -> int:
    """``python -m embedshare.bench.report DIR``: render DIR/latest.json again (markdown, plots,
    targets), e.g. after a failed case was measured again and merged into it."""
    from .targets import evaluate_targets

    out = Path(argv[0])
    results = json.loads((out / "latest.json").read_text())
    results["targets"] = evaluate_targets(results)
    for path in write_outputs(results, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
