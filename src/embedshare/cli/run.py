"""``embedshare demo``, ``ray-demo`` and ``bench``: run workloads and measure them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .common import DEFAULT_MODEL, errors_as_messages, model_option, registry_option, store_option


@click.command()
@click.option("--workers", default=25, show_default=True, help="Worker processes.")
@click.option("--tasks", default=2000, show_default=True, help="Tasks (each ~2 searches, ~2 find_similar_tools).")
@model_option
@registry_option
@store_option
@click.option(
    "--naive/--no-naive",
    default=True,
    show_default=True,
    help="Also run the same tasks with per-process managers and compare.",
)
@click.option("--naive-workers", type=int, default=None, help="Workers for the per-process run (default: --workers).")
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the measurements as JSON.",
)
def demo(
    workers: int,
    tasks: int,
    model: str | None,
    registry: str,
    store: Path | None,
    naive: bool,
    naive_workers: int | None,
    json_out: Path | None,
) -> None:
    """Run a tool-search workload on N worker processes that share one service, and measure it.

    Each task makes ~2 searches and ~2 similar-tool lookups. With --naive (the default) the same
    tasks run again with one embedding manager per process, and the two runs are compared:
    memory (PSS), model calls, start-up and wall time.
    """
    from ..bench.demo import run_demo
    from ..settings import whole_number

    with errors_as_messages():
        whole_number("--workers", workers, 1)
        whole_number("--tasks", tasks, 1)
        if naive_workers is not None:
            whole_number("--naive-workers", naive_workers, 1)
        result = run_demo(
            workers=workers,
            tasks=tasks,
            model=model or DEFAULT_MODEL,
            registry=registry,
            store=store,
            naive=naive,
            naive_workers=naive_workers,
            progress=sys.stderr.isatty(),
        )
        click.echo(result.format())
        if json_out:
            json_out.write_text(json.dumps(result.as_dict(), indent=2))


@click.command("ray-demo")
@click.option("--address", default=None, help="A running Ray cluster (e.g. auto). Default: start a local one.")
@click.option(
    "--nodes", type=click.IntRange(min=1), default=3, show_default=True, help="Simulated nodes of the local cluster."
)
@click.option(
    "--in-flight",
    type=click.IntRange(min=1),
    default=25,
    show_default=True,
    help="Tasks in flight (and the CPUs of the local cluster).",
)
@click.option(
    "--tasks",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Tasks (each ~2 searches, ~2 similar-tool lookups).",
)
@model_option
@registry_option
@click.option(
    "--service-threads",
    type=click.IntRange(min=1),
    default=None,
    help="Threads of the local model in each node's service.",
)
@click.option("--compare", is_flag=True, help="First run the same tasks on this machine alone (demo --no-naive).")
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the measurements as JSON.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def ray_demo(
    address: str | None,
    nodes: int,
    in_flight: int,
    tasks: int,
    model: str,
    registry: str,
    service_threads: int | None,
    compare: bool,
    json_out: Path | None,
    no_progress: bool,
) -> None:
    """Run the tool-search workload on Ray, a service per node, and measure memory per node and model calls."""
    with errors_as_messages():
        try:
            import ray  # noqa: F401  (only to say clearly that it is missing)
        except ImportError:
            from ..util.install import pip_install

            raise ValueError(f"ray-demo needs Ray: {pip_install('ray')}") from None
        from ..bench.ray_demo import run_ray_demo

        report = run_ray_demo(
            address=address,
            nodes=nodes,
            in_flight=in_flight,
            tasks=tasks,
            model=model or DEFAULT_MODEL,
            registry=registry,
            service_threads=service_threads,
            progress=not no_progress and sys.stderr.isatty(),
            compare=compare,
        )
        click.echo(report.format())
        if json_out:
            json_out.write_text(json.dumps(report.as_dict(), indent=2, default=str))
        sys.exit(1 if report.failed else 0)


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        items = [int(x.replace("_", "")) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated whole numbers, got {value!r}") from None
    if not items or any(x < 1 for x in items):
        raise click.BadParameter(f"expected positive whole numbers, got {value!r}")
    return items


def _name_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    return None if value is None else [x.strip() for x in value.split(",") if x.strip()]


@click.command()
@click.option("--quick", is_flag=True, help="A few minutes: hashing model, 1 and 4 workers, small sweep.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench/results"),
    show_default=True,
    help="Folder for latest.json, latest.md and the PNG plots.",
)
@click.option("--workers", callback=_int_list, default=None, help="Worker counts, e.g. 1,8,25.")
@click.option("--tasks", type=click.IntRange(min=1), default=None, help="Tasks per case (default 2000).")
@click.option("--models", callback=_name_list, default=None, help="Of hash,local,api (default all three).")
@click.option(
    "--designs",
    callback=_name_list,
    default=None,
    help="Of per-process, option-c (threads), option-a (Manager dict), hybrid, embedshare (default all).",
)
@click.option(
    "--api-latency-ms",
    type=click.FloatRange(min=0),
    default=None,
    help="Added to every request of the simulated API (default 150).",
)
@click.option(
    "--sweep-sizes",
    callback=_int_list,
    default=None,
    help="Index sizes of the search sweep (default 1000,10000,100000,1000000).",
)
@click.option("--no-sweep", is_flag=True, help="Skip the index-size sweep.")
@click.option(
    "--usearch-max",
    type=click.IntRange(min=0),
    default=None,
    help="Largest sweep size for the usearch HNSW index (default 100000; its build is slow).",
)
@click.option(
    "--miss-seconds",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Length of the miss-throughput phase (default 4).",
)
@click.option(
    "--miss-threads",
    type=click.IntRange(min=1),
    default=None,
    help="Threads sending misses in each worker (default 4).",
)
@click.option(
    "--backends",
    "backends_only",
    is_flag=True,
    help="Only the local model's backends (torch, ONNX fp32 at 1 and 2 threads, int8), "
    "interleaved rounds; writes backends.{json,md}.",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="With --backends: interleaved rounds (medians are reported).",
)
@click.option("--no-install-size", is_flag=True, help="With --backends: skip the fresh-virtualenv sizes.")
@click.option(
    "--baseline-python",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="With --backends: also run every case with this interpreter (a baseline checkout's "
    "venv, e.g. /work/main/.venv/bin/python) and report after/before ratios.",
)
@click.option(
    "--variants",
    type=click.Choice(["torch", "onnx1", "onnx2", "int8"]),
    multiple=True,
    help="With --backends: only these backends (repeat the option); default all four (--quick: torch, onnx2, int8).",
)
@click.option(
    "--fair-texts",
    type=click.IntRange(min=0),
    default=None,
    help="With --backends: texts (of 8,192 characters) in each request of the fairness phase's "
    "huge client; 0 skips the phase (default 2048, --quick 256).",
)
def bench(
    quick: bool,
    out: Path,
    workers: list[int] | None,
    tasks: int | None,
    models: list[str] | None,
    designs: list[str] | None,
    api_latency_ms: float | None,
    sweep_sizes: list[int] | None,
    no_sweep: bool,
    usearch_max: int | None,
    miss_seconds: float | None,
    miss_threads: int | None,
    backends_only: bool,
    rounds: int,
    no_install_size: bool,
    baseline_python: str | None,
    variants: tuple[str, ...],
    fair_texts: int | None,
) -> None:
    """Compare ways of sharing an embedding manager between processes, on the same tasks.

    The designs: a manager per process, threads sharing one manager per process (option-c), a
    multiprocessing.Manager dict (option-a), a dict plus a request queue (hybrid), and
    embedshare; with the hashing model, the local model and a simulated API. Writes JSON,
    markdown and plots. With --backends: only the local model's backends (torch, ONNX, int8).
    """
    if backends_only:
        from ..bench.backends import format_table, run_backends, write_backends

        results = run_backends(  # --quick: minutes (no CPU hog, 64 long texts, quality, venv sizes)
            rounds=rounds,
            workers=max(workers or [25]),
            seconds=miss_seconds or (3.0 if quick else 6.0),
            with_install_size=not (no_install_size or quick),
            log=lambda line: click.echo(line, err=True),
            variants=variants or (("torch", "onnx2", "int8") if quick else ("torch", "onnx1", "onnx2", "int8")),
            baseline_python=baseline_python,
            fair_texts=(256 if quick else 2048) if fair_texts is None else fair_texts,
            with_hog=not quick,
            with_quality=not quick,
            long_per_request=(1, 16) if quick else (1, 16, 64),
        )
        click.echo(format_table(results))
        click.echo(f"wrote {write_backends(results, out)}")
        return
    from ..bench.runner import BenchConfig, quick_config, run_bench

    config = quick_config(out) if quick else BenchConfig(out=out)
    for name, value in (
        ("workers", workers),
        ("tasks", tasks),
        ("models", models),
        ("designs", designs),
        ("api_latency_ms", api_latency_ms),
        ("sweep_sizes", sweep_sizes),
        ("usearch_max", usearch_max),
        ("miss_seconds", miss_seconds),
        ("miss_threads", miss_threads),
    ):
        if value is not None:
            setattr(config, name, value)
    if no_sweep:
        config.sweep_sizes = []
    try:
        config.check()
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    from ..bench.report import write_outputs

    results = run_bench(config, log=lambda line: click.echo(line, err=True))
    for path in write_outputs(results, out):
        click.echo(f"wrote {path}")
    missed = [t for t in results["targets"] if not t["ok"]]
    failed = [c for c in results["cases"] if "error" in c]
    click.echo(
        f"{len(results['targets']) - len(missed)} of {len(results['targets'])} targets met; "
        f"{len(failed)} case(s) failed"
    )
