"""The ``embedshare`` command line.

Every command takes ``--store`` (default ``$EMBEDSHARE_STORE`` or ``~/.cache/embedshare``) and
``--model`` (default ``$EMBEDSHARE_MODEL`` or ``local``). Commands that read use the store's
service when one runs, else a local manager. Errors are one line on stderr and exit code 1.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import click

# Only click and the standard library at import time (and the settings `serve`'s options are
# generated from, standard library only): pool workers spawned from this command re-import it
# as their __main__, and whatever it imports costs memory in every worker.
from .env import ENV_MODEL, ENV_STORE
from .service.config import CommandOption, ServiceConfig, command_options

DEFAULT_MODEL = "local"
F = TypeVar("F", bound=Callable[..., Any])


def _layout(store: Path | None) -> Any:
    from .env import default_store
    from .store.layout import StoreLayout

    return StoreLayout(store or default_store())


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user can get wrong: shown as one line, never as a traceback."""
    from .embedders import EmbedderError, InvalidTextError, UnknownModelError
    from .manager import NoIndexError
    from .registry import RegistryError
    from .client.connection import ServiceUnavailable
    from .service.launcher import ServiceStartError
    from .client.protocol import RemoteError
    from .store import CacheError, ToolIndexError, UnknownToolError

    # OSError covers what the machine refuses: a port in use, a read-only or full disk, a
    # permission (PermissionError), a missing file (FileNotFoundError).
    return (EmbedderError, InvalidTextError, UnknownModelError, NoIndexError, RegistryError,
            RemoteError, ServiceStartError, ServiceUnavailable, CacheError, ToolIndexError,
            UnknownToolError, OSError, ValueError)


@contextmanager
def _errors_as_messages() -> Iterator[None]:
    """A user's mistake is one ``error:`` line and exit code 1; ``-v`` adds the traceback."""
    try:
        yield
    except _user_errors() as exc:
        context = click.get_current_context(silent=True)
        if context is not None and context.find_root().params.get("verbose"):
            import traceback

            traceback.print_exc()
            if getattr(exc, "log_tail", ""):
                click.echo(f"the end of the service's log:\n{exc.log_tail}", err=True)
        message = " ".join(str(exc).split()) or type(exc).__name__
        click.echo(f"error: {message}", err=True)
        sys.exit(1)


store_option = click.option(
    "--store", type=click.Path(file_okay=False, path_type=Path), default=None,
    help=f"Store folder (cache, indexes, service socket). Default: ${ENV_STORE} or ~/.cache/embedshare.",
)
model_option = click.option(
    "--model", default=lambda: os.environ.get(ENV_MODEL),
    help=f"Embedder spec: local, hash:<dim>, openai:<model>. Default: ${ENV_MODEL}, else the "
         "running service's, else the one the store records, else local.",
)
registry_option = click.option(
    "--registry", default="bundled", show_default=True,
    help="Tool registry JSON file, or 'bundled' for the example registry shipped with embedshare.",
)
store_registry_option = click.option(
    "--registry", default=None,
    help="Tool registry JSON file, or 'bundled'. Default: the one the store's service serves, else "
         "the one the store records. Another one than the service's is an error.",
)


def _model(model: str | None, store: Path | None) -> str:
    """--model, else the model the store records (store/record.py), else local."""
    from .store.record import recorded_model

    return model or recorded_model(_layout(store)) or DEFAULT_MODEL


def _progress(description: str):
    """A tqdm callback for long builds (to stderr, hidden when not a terminal)."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=description, unit="text", file=sys.stderr, disable=not sys.stderr.isatty())

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _manager(store: Path | None, model: str | None, registry: str | None) -> Any:
    """The store's service if one answers (with the same model), else a local manager.

    With no registry, the service's (or the one the store records); another registry than the
    service's is an error, never silently the service's.
    """
    from .manager import EmbeddingManager
    from .service.client import SharedEmbeddingManager
    from .client.connection import ServiceUnavailable

    layout = _layout(store)
    if layout.socket.exists():
        try:
            return SharedEmbeddingManager(layout.socket, model=model, on_failure="error", registry=registry)
        except ServiceUnavailable:
            pass
    manager = EmbeddingManager(layout.root, model=_model(model, store))
    if registry:
        manager.load_registry(registry, progress=_progress("embedding tools"))
    return manager


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="embedshare")
def main(verbose: int) -> None:
    """Share one embedding model, cache and tool index between all the processes of a machine."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _click_option(option: CommandOption) -> Callable[[F], F]:
    """A field of ``ServiceConfig`` as a click option: its flag, type, default and help."""
    if option.kind is bool:
        return click.option(option.flag, option.name, is_flag=True, help=option.help)
    kind: Any = click.Path(dir_okay=False, path_type=Path) if option.path else option.kind
    return click.option(option.flag, option.name, type=kind, default=option.default, metavar=option.metavar,
                        show_default=option.default is not None, help=option.help)


def config_options(command: F) -> F:
    """``serve``'s options for the service's settings, in the order of ``ServiceConfig``'s fields."""
    for option in reversed([o for o in command_options() if o.serve]):
        command = _click_option(option)(command)
    return command


@main.command()
@store_option
@model_option
@click.option("--registry", default=None,
              help="Tool registry to index and serve ('bundled' for the example). Default: the one "
                   "the store records (embedshare index build), if any.")
@click.option("--detach", is_flag=True, help="Start in the background and return once it answers.")
@config_options
def serve(store: Path | None, model: str | None, registry: str | None, detach: bool, **settings: Any) -> None:
    """Run the store's embedding service (one per store; a second one reports the first)."""
    with _errors_as_messages():
        model = _model(model, store)
        if registry and registry != "bundled":
            from .registry import load_registry

            load_registry(registry)  # a missing or invalid file: one line now, not a failed start
        config = ServiceConfig(store=str(_layout(store).root), model=model, registry=registry, **settings)
        if detach:
            from .service.launcher import EmbeddingService

            verbose = click.get_current_context().find_root().params.get("verbose", 0)
            service = EmbeddingService(config=config, detach=True, export_env=False, verbose=verbose).start()
            if config.http and not _is_loopback_http(config.http) and config.http_no_auth:
                # the service says it in its log only
                click.echo(f"warning: the HTTP endpoint on {settings['http']} is reachable beyond loopback, "
                           "without authentication (--http-no-auth)", err=True)
            verb = "started" if service.owned else "already running"
            click.echo(f"embedshare service {verb}: pid {service.pid}, socket {service.address}"
                       + (f", http {service.http_url}/v1" if service.http_url else ""))
            return
        from .service.server import LOG_FORMAT, run_service

        for handler in logging.getLogger().handlers:  # timestamps, as in service.log
            handler.setFormatter(logging.Formatter(LOG_FORMAT))

        def announce(line: str) -> None:  # only once it answers: a failed start says only why
            status, _, detail = line.partition(" ")
            if status == "ready":
                click.echo(f"embedshare service for {config.store} (model {model}, pid {detail}); "
                           "Ctrl-C to stop", err=True)
            elif status == "already":
                click.echo(f"a service already runs on this store (pid {detail}); not starting another", err=True)

        sys.exit(run_service(config, ready=announce))


def _is_loopback_http(address: str) -> bool:
    from .service.http.address import is_loopback, parse_http_address

    return is_loopback(parse_http_address(address)[0])


@main.command()
@store_option
def stop(store: Path | None) -> None:
    """Stop the store's service, on purpose: restart-policy clients (pool workers) do not restart it."""
    from .client.connection import ServiceConnection

    layout = _layout(store)
    with _errors_as_messages():
        conn = ServiceConnection(layout.socket)
        try:
            reply = conn.request("shutdown", timeout=30, by="embedshare stop", pid=os.getpid())
        finally:
            conn.close()
        clients = reply.get("clients") or []
        attached = (f"{len(clients)} client process(es) were attached (pids {', '.join(map(str, clients[:10]))}"
                    f"{', ...' if len(clients) > 10 else ''}); their calls now fail with ServiceUnavailable, "
                    "they do not restart it" if clients else "no client was attached")
        click.echo(f"stopped the embedshare service of {layout.root} (pid {reply.get('pid')}); {attached}. "
                   f"Start it again with `embedshare serve --store {layout.root} --detach`.")


@main.group()
def cache() -> None:
    """Look after the store's embedding cache."""


@cache.command("reset")
@store_option
def cache_reset(store: Path | None) -> None:
    """Move the cache aside (to cache.broken-<time>) so the store starts with an empty one.

    For a damaged cache file. Nothing is deleted. Refused while a service runs on the store;
    stop it first (embedshare stop). Vectors are recomputed as texts are asked for again.
    """
    from .client.state import AlreadyRunning, acquire_service_lock
    from .store.cache_format import move_aside

    layout = _layout(store)
    with _errors_as_messages():
        if not layout.cache.exists():
            click.echo(f"no cache at {layout.cache}; nothing to do")
            return
        try:
            lock_fd = acquire_service_lock(layout)  # held while we move it: no service starts
        except AlreadyRunning as exc:
            raise ValueError(f"{exc}; stop it first: embedshare stop --store {layout.root}") from None
        try:
            moved = move_aside(layout.cache)
        finally:
            os.close(lock_fd)
        click.echo(f"moved the cache to {moved}; the store starts with an empty cache")


@main.group()
def index() -> None:
    """Build tool indexes, list the store's, and show what one holds."""


@index.command("build")
@click.argument("registry")
@store_option
@model_option
def index_build(registry: str, store: Path | None, model: str | None) -> None:
    """Embed every tool of REGISTRY (a JSON file, or 'bundled'), write its index, and record it
    as the store's registry (what search, serve and workers use when given none)."""
    from .manager import EmbeddingManager
    from .client.state import read_state, service_lock_held

    with _errors_as_messages():
        layout = _layout(store)
        manager = EmbeddingManager(layout.root, model=_model(model, store))
        idx = manager.load_registry(registry, progress=_progress("embedding tools"))
        click.echo(f"index of {len(idx)} tools ({idx.model_id}, {idx.dim} dims) at {idx.path}")
        click.echo(f"the store {layout.root} now serves it: search, serve and workers use it when "
                   "given no registry", err=True)
        served = read_state(layout).get("index")
        if service_lock_held(layout) and served != str(idx.path):
            click.echo(f"note: the running service serves another index ({served}); restart it "
                       f"(`embedshare stop --store {layout.root}`, then `embedshare serve --store "
                       f"{layout.root} --detach`) to serve this one", err=True)


@index.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_option
def index_list(as_json: bool, store: Path | None) -> None:
    """List the store's index folders: model, tools, and the registry each was built from."""
    from .store.catalog import list_indexes

    with _errors_as_messages():
        indexes = list_indexes(_layout(store).indexes)
        if as_json:
            click.echo(json.dumps(indexes, indent=2))
            return
        for s in indexes:
            if "damaged" in s:
                click.echo(f"{s['name']}  damaged: {s['damaged']}")
            else:
                click.echo(f"{s['name']}  {s['model_id']} ({s['dim']} dims)  {s['tools']} tools  "
                           f"registry {s['registry_hash'][:12]} {s['registry_source'] or ''}".rstrip())
        if not indexes:
            click.echo(f"no index in {_layout(store).indexes}")


@index.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_option
def index_show(name: str, as_json: bool, store: Path | None) -> None:
    """Show one index: NAME is its folder (as `index list` prints it, or a unique prefix) or a path."""
    from .store.catalog import describe, find_index

    with _errors_as_messages():
        info = describe(find_index(_layout(store).indexes, name))
        if as_json:
            click.echo(json.dumps(info, indent=2))
            return
        click.echo(f"index {info['path']}")
        click.echo(f"model {info['model_id']} ({info['dim']} dims)" + (f", {info['ann']} search" if info["ann"] else ""))
        click.echo(f"registry {info['registry_hash']} from {info['registry_source']}")
        click.echo(f"{info['tools']} tools in {len(info['categories'])} categories:")
        for category, names in info["categories"].items():
            click.echo(f"  {category} ({len(names)}): {', '.join(names)}")


@main.command()
@click.argument("query")
@click.option("-k", default=5, show_default=True, help="How many tools.")
@click.option("--category", default=None, help="Only tools of this category.")
@click.option("--threshold", default=0.0, show_default=True, help="Lowest score to return.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_option
@model_option
@store_registry_option
def search(query: str, k: int, category: str | None, threshold: float, as_json: bool,
           store: Path | None, model: str | None, registry: str | None) -> None:
    """Find the tools that best match QUERY."""
    from .settings import whole_number

    with _errors_as_messages():
        whole_number("-k", k, 1)  # before a model is loaded or an index built
        manager = _manager(store, model, registry)
        results = manager.search(query, k=k, category=category, threshold=threshold)
        if as_json:
            click.echo(json.dumps([r.to_dict() for r in results], indent=2))
            return
        for rank, r in enumerate(results, 1):
            click.echo(f"{rank}. {r.name:<28} {r.score:.3f}  [{r.category}]  {r.reason}")
        if not results:
            click.echo("no tool matches")


@main.command()
@click.argument("texts", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the vectors as JSON.")
@store_option
@model_option
def embed(texts: tuple[str, ...], as_json: bool, store: Path | None, model: str | None) -> None:
    """Embed TEXTS (through the cache) and print their vectors."""
    with _errors_as_messages():
        manager = _manager(store, model, None)
        vectors = manager.get_embeddings(list(texts))
        if as_json:
            click.echo(json.dumps({"model_id": manager.model_id, "vectors": vectors.tolist()}))
            return
        import numpy as np

        with np.printoptions(precision=4, threshold=8, edgeitems=3, suppress=True):
            for text, vector in zip(texts, vectors):
                click.echo(f"{text[:40]!r}: {vector}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_option
def stats(as_json: bool, store: Path | None) -> None:
    """Counters of the store's service: requests, hits, batches, latency, clients."""
    from .client.connection import ServiceConnection

    layout = _layout(store)
    with _errors_as_messages():
        conn = ServiceConnection(layout.socket)
        try:
            data = conn.request("stats", timeout=30)["stats"]
        finally:
            conn.close()
        from .service.observe import with_memory

        data = with_memory(data)  # PSS of the service and of each client, read here
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        click.echo(_format_stats(data))


def _pss_mb(value: int | None) -> str:
    return f"{value / 2**20:.1f} MB" if value is not None else "-"


def _format_stats(s: dict[str, Any]) -> str:
    lat = s["request_latency"]
    batch = s["batch_size"]
    ms = lambda v: f"{v * 1000:.2f} ms" if v is not None else "-"  # noqa: E731
    lines = [
        f"service pid {s['pid']}  model {s['model_id']} ({s['dim']} dims)  up {s['uptime_s']:.0f} s"
        + (f"  PSS {s['pss'] / 2**20:.1f} MB" if s.get("pss") is not None else ""),
        f"store {s['store']}  tools {s['tools']}",
        f"requests {s['requests']}  errors {s['errors']}  corrupt vectors replaced "
        f"{s.get('corrupt_vectors', 0)}  texts {s['texts']}  "
        f"hits {s['hits']}  misses {s['misses']}  joined in-flight {s['joined_inflight']}",
        f"model calls {s['model_calls']}  texts embedded {s['texts_embedded']}  "
        f"mean batch {batch['mean'] or 0:.1f}  queue {s['queue_depth']} (max {s['max_queue_depth']})",
        f"latency p50 {ms(lat['p50'])}  p99 {ms(lat['p99'])}",
        f"clients {len(s['clients'])}:",
        *(f"  pid {c['pid']:>7}  PSS {_pss_mb(c.get('pss'))}  requests {c['requests']}"
          + ("  (this command)" if c["pid"] == os.getpid() else "") for c in s["clients"]),
    ]
    if s.get("http"):
        lines.insert(2, f"http {s['http']}/v1  (metrics {s['http']}/metrics)")
    return "\n".join(lines)


@main.command()
@click.option("--workers", default=25, show_default=True, help="Worker processes.")
@click.option("--tasks", default=2000, show_default=True, help="Tasks (each ~2 searches, ~2 find_similar_tools).")
@model_option
@registry_option
@store_option
@click.option("--naive/--no-naive", default=True, show_default=True,
              help="Also run the same tasks with per-process managers and compare.")
@click.option("--naive-workers", type=int, default=None, help="Workers for the per-process run (default: --workers).")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the measurements as JSON.")
def demo(workers: int, tasks: int, model: str | None, registry: str, store: Path | None, naive: bool,
         naive_workers: int | None, json_out: Path | None) -> None:
    """Run a tool-search workload on N worker processes that share one service, and measure it.

    Each task makes ~2 searches and ~2 similar-tool lookups. With --naive (the default) the same
    tasks run again with one embedding manager per process, and the two runs are compared:
    memory (PSS), model calls, start-up and wall time.
    """
    from .bench.demo import run_demo
    from .settings import whole_number

    with _errors_as_messages():
        whole_number("--workers", workers, 1)
        whole_number("--tasks", tasks, 1)
        if naive_workers is not None:
            whole_number("--naive-workers", naive_workers, 1)
        result = run_demo(workers=workers, tasks=tasks, model=model or DEFAULT_MODEL, registry=registry, store=store,
                          naive=naive, naive_workers=naive_workers, progress=sys.stderr.isatty())
        click.echo(result.format())
        if json_out:
            json_out.write_text(json.dumps(result.as_dict(), indent=2))


@main.command("ray-demo")
@click.option("--address", default=None, help="A running Ray cluster (e.g. auto). Default: start a local one.")
@click.option("--nodes", type=click.IntRange(min=1), default=3, show_default=True,
              help="Simulated nodes of the local cluster.")
@click.option("--in-flight", type=click.IntRange(min=1), default=25, show_default=True,
              help="Tasks in flight (and the CPUs of the local cluster).")
@click.option("--tasks", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Tasks (each ~2 searches, ~2 similar-tool lookups).")
@model_option
@registry_option
@click.option("--service-threads", type=click.IntRange(min=1), default=None,
              help="Torch threads of each node's service.")
@click.option("--compare", is_flag=True, help="First run the same tasks on this machine alone (demo --no-naive).")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the measurements as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def ray_demo(address: str | None, nodes: int, in_flight: int, tasks: int, model: str, registry: str,
             service_threads: int | None, compare: bool, json_out: Path | None, no_progress: bool) -> None:
    """Run the tool-search workload on Ray, a service per node, and measure memory per node and model calls."""
    with _errors_as_messages():
        try:
            import ray  # noqa: F401  (only to say clearly that it is missing)
        except ImportError:
            raise ValueError("ray-demo needs Ray: pip install 'embedshare[ray]'") from None
        from .bench.ray_demo import run_ray_demo

        report = run_ray_demo(address=address, nodes=nodes, in_flight=in_flight, tasks=tasks,
                              model=model or DEFAULT_MODEL, registry=registry, service_threads=service_threads,
                              progress=not no_progress and sys.stderr.isatty(), compare=compare)
        click.echo(report.format())
        if json_out:
            json_out.write_text(json.dumps(report.as_dict(), indent=2, default=str))
        sys.exit(1 if report.failed else 0)


@main.command()
@click.option("--once", is_flag=True, help="Print one frame (averages since the service started) and exit.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@store_option
def top(once: bool, interval: float, store: Path | None) -> None:
    """Live view of the store's service: clients (PID, PSS), requests/s, hits, batches, latency."""
    from .monitor import run_top
    from .settings import seconds

    with _errors_as_messages():
        seconds("--interval", interval)
        sys.exit(run_top(_layout(store).socket, once=once, interval=interval))


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


@main.command()
@click.option("--quick", is_flag=True, help="A few minutes: hashing model, 1 and 4 workers, small sweep.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench/results"),
              show_default=True, help="Folder for latest.json, latest.md and the PNG plots.")
@click.option("--workers", callback=_int_list, default=None, help="Worker counts, e.g. 1,8,25.")
@click.option("--tasks", type=click.IntRange(min=1), default=None, help="Tasks per case (default 2000).")
@click.option("--models", callback=_name_list, default=None, help="Of hash,local,api (default all three).")
@click.option("--designs", callback=_name_list, default=None,
              help="Of per-process, option-c (threads), option-a (Manager dict), hybrid, embedshare "
                   "(default all).")
@click.option("--api-latency-ms", type=click.FloatRange(min=0), default=None,
              help="Added to every request of the simulated API (default 150).")
@click.option("--sweep-sizes", callback=_int_list, default=None,
              help="Index sizes of the search sweep (default 1000,10000,100000,1000000).")
@click.option("--no-sweep", is_flag=True, help="Skip the index-size sweep.")
@click.option("--usearch-max", type=click.IntRange(min=0), default=None,
              help="Largest sweep size for the usearch HNSW index (default 100000; its build is slow).")
@click.option("--miss-seconds", type=click.FloatRange(min=0.1), default=None,
              help="Length of the miss-throughput phase (default 4).")
@click.option("--miss-threads", type=click.IntRange(min=1), default=None,
              help="Threads sending misses in each worker (default 4).")
@click.option("--backends", "backends_only", is_flag=True,
              help="Only the local model's backends (torch, ONNX fp32 at 1 and 2 threads, int8), "
                   "interleaved rounds; writes backends.{json,md}.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="With --backends: interleaved rounds (medians are reported).")
@click.option("--no-install-size", is_flag=True, help="With --backends: skip the fresh-virtualenv sizes.")
def bench(quick: bool, out: Path, workers: list[int] | None, tasks: int | None, models: list[str] | None,
          designs: list[str] | None, api_latency_ms: float | None, sweep_sizes: list[int] | None,
          no_sweep: bool, usearch_max: int | None, miss_seconds: float | None, miss_threads: int | None,
          backends_only: bool, rounds: int, no_install_size: bool) -> None:
    """Compare ways of sharing an embedding manager between processes, on the same tasks.

    The designs: a manager per process, threads sharing one manager per process (option-c), a
    multiprocessing.Manager dict (option-a), a dict plus a request queue (hybrid), and
    embedshare; with the hashing model, the local model and a simulated API. Writes JSON,
    markdown and plots. With --backends: only the local model's backends (torch, ONNX, int8).
    """
    if backends_only:
        from .bench.backends import format_table, run_backends, write_backends

        results = run_backends(rounds=rounds, workers=max(workers or [25]), seconds=miss_seconds or 6.0,
                               with_install_size=not no_install_size,
                               log=lambda line: click.echo(line, err=True))
        click.echo(format_table(results))
        click.echo(f"wrote {write_backends(results, out)}")
        return
    from .bench.runner import BenchConfig, quick_config, run_bench

    config = quick_config(out) if quick else BenchConfig(out=out)
    for name, value in (("workers", workers), ("tasks", tasks), ("models", models), ("designs", designs),
                        ("api_latency_ms", api_latency_ms), ("sweep_sizes", sweep_sizes),
                        ("usearch_max", usearch_max), ("miss_seconds", miss_seconds),
                        ("miss_threads", miss_threads)):
        if value is not None:
            setattr(config, name, value)
    if no_sweep:
        config.sweep_sizes = []
    try:
        config.check()
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    from .bench.report import write_outputs

    results = run_bench(config, log=lambda line: click.echo(line, err=True))
    for path in write_outputs(results, out):
        click.echo(f"wrote {path}")
    missed = [t for t in results["targets"] if not t["ok"]]
    failed = [c for c in results["cases"] if "error" in c]
    click.echo(f"{len(results['targets']) - len(missed)} of {len(results['targets'])} targets met; "
               f"{len(failed)} case(s) failed")


if __name__ == "__main__":
    main()
