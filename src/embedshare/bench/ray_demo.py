"""The user's workload on Ray: memory per node and model calls, measured in one run.

    embedshare ray-demo --nodes 3 --in-flight 25 --tasks 2000 --model local --compare
    embedshare ray-demo --address auto ...      # on a real cluster (ray start ...)

(``python -m embedshare.cli ray-demo`` is the same command; this module has no entry of its own,
because bench may not import cli, the layer above it.)

Without ``--address`` it starts a local cluster of ``--nodes`` simulated nodes (processes of
this machine, on loopback), with the ``--in-flight`` CPUs split between them. It deploys
embedshare (a service per node, the index in the object store), lets ``--in-flight`` workers
attach at once, runs the tasks of ``bench/workload.py`` with ``--in-flight`` tasks in flight
(``run_task`` unchanged: it calls ``get_embedding_manager()``), then holds that many workers
alive while every node measures the PSS of its own processes. ``--compare`` first runs the
same tasks on one machine (``embedshare demo --no-naive``) in the same run.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from .ray_demo_report import MB, RayDemoReport

log = logging.getLogger(__name__)


def _wait_holding_cpu(ref: Any) -> Any:
    """Wait for ``ref`` in a task without lending its CPU (``ray.get`` would): so that the
    ``in_flight`` tasks at a barrier are ``in_flight`` distinct workers, one per CPU."""
    return ref.future().result()


def _define_remotes(ray: Any) -> tuple[Any, ...]:
    @ray.remote(num_cpus=0)
    class Barrier:
        def __init__(self) -> None:
            import asyncio

            self.arrivals: list[dict[str, Any]] = []
            self.changed = asyncio.Condition()
            self.opened = asyncio.Event()

        async def arrive(self, info: dict[str, Any]) -> None:
            async with self.changed:
                self.arrivals.append(info)
                self.changed.notify_all()
            await self.opened.wait()

        async def wait_for(self, n: int) -> list[dict[str, Any]]:
            async with self.changed:
                await self.changed.wait_for(lambda: len(self.arrivals) >= n)
            return list(self.arrivals)

        async def open(self) -> None:
            self.opened.set()

    @ray.remote
    def attach(barrier: Any) -> dict[str, Any]:
        from embedshare import get_embedding_manager

        started = time.perf_counter()
        get_embedding_manager()
        seconds = time.perf_counter() - started
        _wait_holding_cpu(barrier.arrive.remote({"pid": os.getpid()}))
        return {"seconds": seconds, "pid": os.getpid()}

    @ray.remote
    def timed(task: dict[str, Any]) -> tuple[Any, float]:
        from embedshare.bench.workload import run_task

        started = time.perf_counter()
        result = run_task(task)  # the user's task code, unchanged
        return result, time.perf_counter() - started

    @ray.remote
    def noop(task: dict[str, Any]) -> tuple[Any, float]:
        return None, 0.0

    @ray.remote
    def hold(barrier: Any) -> dict[str, Any]:
        from embedshare import get_embedding_manager

        get_embedding_manager()
        _wait_holding_cpu(barrier.arrive.remote({"pid": os.getpid()}))
        return {"pid": os.getpid()}

    @ray.remote(num_cpus=0)
    class Bare:
        """A Ray worker that imports nothing of embedshare: the baseline of a worker's PSS."""

        def pid(self) -> int:
            return os.getpid()

    return Barrier, attach, timed, noop, hold, Bare


def _barrier_wait(ray: Any, barrier: Any, n: int, timeout: float = 900.0) -> list[dict[str, Any]]:
    try:
        return ray.get(barrier.wait_for.remote(n), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(
            f"{n} tasks could not run at once within {timeout:.0f} s: the cluster needs at least --in-flight CPUs"
        ) from None


def _windowed(
    ray: Any, fn: Any, items: list[Any], in_flight: int, bar: Any
) -> tuple[float, list[Any], list[float], int]:
    """Run ``fn`` on every item with ``in_flight`` tasks in flight: (wall, results, seconds, failed)."""
    began = time.perf_counter()
    results: list[Any] = [None] * len(items)
    seconds: list[float] = []
    failed = 0
    first_error = [""]
    pending: dict[Any, int] = {}
    next_item = 0
    while next_item < len(items) or pending:
        while next_item < len(items) and len(pending) < in_flight:
            pending[fn.remote(items[next_item])] = next_item
            next_item += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            try:
                results[i], took = ray.get(ref)
                seconds.append(took)
            except ray.exceptions.RayError as exc:
                failed += 1
                if failed == 1:
                    first_error[0] = f"{type(exc).__name__}: {exc}"
            if bar:
                bar.update(1)
    if failed:
        log.warning("%d of %d tasks failed; the first: %s", failed, len(items), first_error[0])
    return time.perf_counter() - began, results, seconds, failed


def _head_processes(memory: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """This driver and the processes of a local cluster that belong to no node (GCS, monitors)."""
    import psutil

    from ..util.pss import pss_bytes

    on_nodes = {p["pid"] for node in memory.values() for p in node["processes"]}
    me = psutil.Process()
    out = [{"pid": me.pid, "name": "driver", "pss": pss_bytes(me.pid)}]
    for p in me.children(recursive=True):
        if p.pid in on_nodes:
            continue
        try:
            if p.name() == "raylet":  # a node without a service (none in the demo)
                continue
            out.append({"pid": p.pid, "name": p.name(), "pss": pss_bytes(p.pid)})
        except psutil.Error:
            continue
    return out


def start_local_cluster(nodes: int, cpus: int, object_store_mb: int = 100) -> Any:
    """A cluster of ``nodes`` simulated nodes on this machine (loopback only)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every address on loopback
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray runs workers at nice 15 (under its own daemons). On a real node that changes nothing;
    # on a machine shared with other work it would starve them, and --compare's single-machine
    # run is at nice 0: give both designs the same priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    from ray.cluster_utils import Cluster

    per_node = [cpus // nodes + (1 if i < cpus % nodes else 0) for i in range(nodes)]
    args: dict[str, Any] = {"object_store_memory": object_store_mb * MB}
    cluster = Cluster(
        initialize_head=True, head_node_args={**args, "num_cpus": per_node[0], "include_dashboard": False}
    )
    for n in per_node[1:]:
        cluster.add_node(**args, num_cpus=n)
    cluster.wait_for_nodes()
    return cluster


def run_ray_demo(
    address: str | None = None,
    nodes: int = 3,
    in_flight: int = 25,
    tasks: int = 2000,
    model: str = "local",
    registry: str = "bundled",
    *,
    service_threads: int | None = None,
    progress: bool = True,
    compare: bool = False,
) -> RayDemoReport:
    """Run the workload on Ray and measure it (see the module doc)."""
    from .workload import distinct_texts_needed, make_tasks

    task_list = make_tasks(tasks, registry)
    single, single_results = None, None
    if compare:  # first, with nothing of Ray running: the single-machine design, same tasks
        single, single_results = _single_machine(task_list, in_flight, model, registry, progress)

    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from ..ray import api

    cluster = start_local_cluster(nodes, in_flight) if address is None else None
    ray.init(address=cluster.address if cluster else address, logging_level=logging.WARNING, log_to_driver=False)
    root = tempfile.mkdtemp(prefix="esr-demo-", dir="/tmp")
    deployment = None
    try:
        remotes = _define_remotes(ray)
        started = time.perf_counter()
        deployment = api.init(model=model, registry=registry, store_root=root, threads=service_threads)
        deploy_seconds = time.perf_counter() - started
        measured = _run_on_ray(ray, remotes, deployment, task_list, in_flight, progress)
        report = RayDemoReport(
            tasks=len(task_list),
            in_flight=in_flight,
            model=model,
            deploy_seconds=deploy_seconds,
            distinct_texts=distinct_texts_needed(task_list, registry),
            single_machine=single,
            **measured,
        )
        if single_results is not None:
            from .demo import _agreement

            report.agreement = _agreement(report.results, single_results)
        return report
    finally:
        try:
            if deployment is not None:
                deployment.shutdown()
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            shutil.rmtree(root, ignore_errors=True)


def _single_machine(
    task_list: list[dict[str, Any]], in_flight: int, model: str, registry: str, progress: bool
) -> tuple[dict[str, Any], list[Any]]:
    """The same tasks on this machine alone (``demo --no-naive``): its report and results."""
    from ..pool.shared import SharedPool
    from .workload import run_task

    store = tempfile.mkdtemp(prefix="embedshare-demo-")
    try:
        with SharedPool(in_flight, store, model=model, registry=registry, progress=progress) as pool:
            results = pool.map(run_task, task_list)
            pool_report = pool.report
            assert pool_report is not None  # map() made it
            return pool_report.as_dict(), results
    finally:
        shutil.rmtree(store, ignore_errors=True)


def _run_on_ray(
    ray: Any, remotes: tuple[Any, ...], deployment: Any, task_list: list[dict[str, Any]], in_flight: int, progress: bool
) -> dict[str, Any]:
    """Attach ``in_flight`` workers at once, run the tasks, then measure every node's processes."""
    barrier_class, attach, timed, noop, hold, bare_class = remotes
    barrier = barrier_class.remote()
    attached = [attach.remote(barrier) for _ in range(in_flight)]
    _barrier_wait(ray, barrier, in_flight)
    ray.get(barrier.open.remote())
    attach_info = ray.get(attached)

    # Ray's own cost of as many tasks, same window, same warm workers: empty tasks.
    noop_wall, _, _, _ = _windowed(ray, noop, task_list, in_flight, None)
    bar = None
    if progress:
        from ..util.progress import task_progress

        bar = task_progress(len(task_list), "tasks on Ray")
    wall, results, seconds, failed = _windowed(ray, timed, task_list, in_flight, bar)
    if bar:
        bar.close()

    stats, memory = _measure_held(ray, barrier_class, hold, bare_class, deployment, in_flight)
    return {
        "failed": failed,
        "wall_seconds": wall,
        "noop_wall_seconds": noop_wall,
        "attach_seconds": [a["seconds"] for a in attach_info],
        "task_seconds": seconds,
        "nodes": {nid: {"processes": memory[nid]["processes"], "stats": stats["nodes"][nid]} for nid in memory},
        "head": _head_processes(memory),
        "texts_embedded": deployment.texts_embedded(stats),
        "model_calls": deployment.model_calls(stats),
        "index_builds": stats["index_builds"],
        "results": results,
    }


def _measure_held(
    ray: Any, barrier_class: Any, hold: Any, bare_class: Any, deployment: Any, in_flight: int
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Hold ``in_flight`` workers (attached) while every node measures its processes, with a
    bare Ray worker on each node for the baseline: the deployment's stats, and the memory."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    holder = barrier_class.remote()
    held = [hold.remote(holder) for _ in range(in_flight)]
    arrivals = _barrier_wait(ray, holder, in_flight)
    stats = deployment.stats()
    bare = [
        bare_class.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False)).remote()
        for nid in stats["nodes"]
    ]
    roles: dict[int, str] = {stats["coordinator_pid"]: "embedshare coordinator"}
    roles.update(dict.fromkeys(ray.get([b.pid.remote() for b in bare]), "bare ray worker"))
    roles.update({a["pid"]: "workers" for a in arrivals})
    memory = deployment.node_memory(roles)
    ray.get(holder.open.remote())
    ray.get(held)
    for b in bare:
        ray.kill(b)
    return stats, memory


if __name__ == "__main__":  # its entry went with the cli/ package: say which command it is now
    sys.exit("error: run 'python -m embedshare.cli ray-demo' (or 'embedshare ray-demo'); this module is not a command")
