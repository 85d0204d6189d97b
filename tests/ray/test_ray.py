"""embedshare on Ray: a local cluster of 3 simulated nodes (ray.cluster_utils.Cluster).

- tasks on every node get the results of a local EmbeddingManager, bit for bit, through
  their node's service, with the index read from Ray's object store;
- the model embeds each distinct text once in the whole cluster;
- killing a node's service actor mid-run loses no task;
- the demo hook (python -m embedshare.cli ray-demo) measures what it says.

Every wait is on a fact (a gate actor, an actor's death, a process's exit), never a timer.
One cluster for the module (about 15 s to start); each test runs as its own Ray job with a
fresh deployment (its own node stores), so its counters start at zero.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile

import numpy as np
import pytest
from helpers.extras import skip_module_unless

# Before Ray is imported: every address on loopback (simulated nodes of one machine), no
# usage-stats reporting.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

skip_module_unless("ray")

import ray
from helpers.processes import alive
from helpers.waiting import wait_for
from ray.cluster_utils import Cluster
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import embedshare.ray as embedshare_ray
from embedshare import EmbeddingManager
from embedshare.bench.workload import make_tasks
from embedshare.manager import normalise_query
from embedshare.ray.config import node_key, node_store, owner_of, service_name
from embedshare.registry import field_texts, load_registry
from embedshare.registry.loader import bundled_registry_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# Functions of this module run in Ray workers, which cannot import it: ship them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

MODEL = "hash:64"
NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        for _ in range(2):
            c.add_node(**NODE)
        c.wait_for_nodes()
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


@pytest.fixture
def job(cluster):
    """A Ray job of its own (fresh worker processes) on the module's cluster."""
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    finally:
        ray.shutdown()


@pytest.fixture
def deployment(job):
    root = tempfile.mkdtemp(prefix="esr-", dir="/tmp")  # short: socket paths have 107 bytes
    deployment = embedshare_ray.init(model=MODEL, registry="bundled", store_root=root)
    try:
        yield deployment
    finally:
        deployment.shutdown()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def local():
    """The reference: an in-process manager with the same model and registry."""
    root = tempfile.mkdtemp(prefix="esr-local-")
    manager = EmbeddingManager(root, model=MODEL, registry="bundled")
    yield manager
    manager.close()
    shutil.rmtree(root, ignore_errors=True)


def on_node(node_id: str) -> dict:
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}


# -- what runs in the workers -----------------------------------------------------------------


def _in_plasma(array: np.ndarray) -> bool:
    """Whether the array's memory is a shared mapping of Ray's object store."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return "s" in fields[1] and "plasma" in line
    return False


@ray.remote
def probe(texts: list[str], queries: list[str], tools: list[str]) -> dict:
    return probe_here(texts, queries, tools)


@ray.remote(num_cpus=0)
class UserActor:
    """A user's own actor: get_embedding_manager() works there as in a task."""

    def probe(self, texts: list[str], queries: list[str], tools: list[str]) -> dict:
        return probe_here(texts, queries, tools)


def probe_here(texts: list[str], queries: list[str], tools: list[str]) -> dict:
    from embedshare import get_embedding_manager

    manager = get_embedding_manager()
    index = manager.index
    return {
        "type": type(manager).__name__,
        "node_id": ray.get_runtime_context().get_node_id(),
        "address": manager.address,
        "vectors": manager.get_embeddings(texts).tobytes(),
        "one": manager.get_embedding(texts[0]).tobytes(),
        "search": [
            [(r.name, r.score, r.category, r.reason, r.field_scores) for r in manager.search(q, k=5)] for q in queries
        ],
        "similar": [[(r.name, r.score) for r in manager.find_similar_tools(t, k=4)] for t in tools],
        "protocols": manager.get_tool_protocols(tools),
        "index_type": type(index).__name__,
        "index_in_plasma": _in_plasma(index.vectors) and _in_plasma(index.fields),
        "index_writeable": bool(index.vectors.flags.writeable),
        "same_instance": get_embedding_manager() is manager,
        "remote_texts": manager.stats()["remote_texts"],
    }


@ray.remote
def workload_task(task: dict) -> dict:
    from embedshare.bench.workload import run_task

    return run_task(task)


@ray.remote(num_cpus=0)
class Gate:
    """Tasks arrive and wait; the driver waits until n arrived, then opens the gate."""

    def __init__(self) -> None:
        self.arrived = 0
        self.changed = asyncio.Condition()
        self.opened = asyncio.Event()

    async def arrive(self) -> None:
        async with self.changed:
            self.arrived += 1
            self.changed.notify_all()
        await self.opened.wait()

    async def wait_for(self, n: int) -> int:
        async with self.changed:
            await self.changed.wait_for(lambda: self.arrived >= n)
        return self.arrived

    async def open(self) -> None:
        self.opened.set()


@ray.remote
def two_phase(gate, before: list[str], after: list[str], tasks: list[dict]) -> dict:
    """Embed, wait at the gate (the driver kills a service meanwhile), embed and search again."""
    from embedshare import get_embedding_manager
    from embedshare.bench.workload import run_task

    manager = get_embedding_manager()
    first = manager.get_embeddings(before).tobytes()
    ray.get(gate.arrive.remote())
    second = manager.get_embeddings(after).tobytes()
    results = [run_task(t) for t in tasks]
    stats = manager.stats()
    return {
        "node_id": manager.node_id,
        "first": first,
        "second": second,
        "results": results,
        "restarts": stats["restarts"],
        "incarnation": stats["incarnation"],
    }


@ray.remote
def policies_after_gate(gate, texts: list[str]) -> dict:
    """Managers with the other two policies, used after the node's service actor was killed."""
    from embedshare.client.connection import ServiceUnavailable
    from embedshare.ray import RayEmbeddingManager

    error = RayEmbeddingManager(on_failure="error")
    local = RayEmbeddingManager(on_failure="local")
    error.get_embedding("attached")
    ray.get(gate.arrive.remote())
    try:
        error.get_embeddings(texts)
        raised = None
    except ServiceUnavailable as exc:
        raised = type(exc).__name__
    vectors = local.get_embeddings(texts).tobytes()
    return {"raised": raised, "vectors": vectors, "fallback": local.stats()["fallback"]}


@ray.remote
def attach_asking_for(registry: str, via_env: bool) -> dict:
    """A manager that asks for ``registry`` (EMBEDSHARE_REGISTRY or registry=): its search, or its error."""
    from embedshare import get_embedding_manager, reset_embedding_manager
    from embedshare.ray import RayEmbeddingManager

    os.environ.pop("EMBEDSHARE_REGISTRY", None)
    if via_env:
        os.environ["EMBEDSHARE_REGISTRY"] = registry
    try:
        manager = get_embedding_manager() if via_env else RayEmbeddingManager(registry=registry)
        return {"type": type(manager).__name__, "search": [r.name for r in manager.search("parse csv", k=3)]}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    finally:
        os.environ.pop("EMBEDSHARE_REGISTRY", None)
        reset_embedding_manager()


# -- helpers ----------------------------------------------------------------------------------


def _wait_until_dead(handle, deadline_s: float = 60.0) -> None:
    """``ray.kill`` is asynchronous: a call sent right after it may still be answered by the
    actor. Wait for the fact (a call fails with RayActorError), failing after a deadline."""

    def dead() -> bool:
        try:
            ray.get(handle.info.remote(), timeout=10)
        except RayActorError:
            return True
        return False

    wait_for(dead, deadline_s, "the killed service actor to stop answering")


def expected_task(manager: EmbeddingManager, task: dict) -> dict:
    """What workload.run_task returns, computed with ``manager``."""
    return {
        "id": task["id"],
        "search": [[r.name for r in manager.search(q, k=5)] for q in task["searches"]],
        "similar": [[r.name for r in manager.find_similar_tools(n, k=5)] for n in task["similar"]],
    }


def distinct_texts(tasks: list[dict], extra: list[str] = ()) -> set[str]:
    """Every text the model must embed: the registry's field texts, the normalised queries."""
    texts = {text for tool in load_registry("bundled").tools for text in field_texts(tool).values()}
    texts |= {normalise_query(q) for task in tasks for q in task["searches"]}
    return texts | set(extra)


# -- tests ------------------------------------------------------------------------------------


def test_get_embedding_manager_in_the_driver_is_not_bound_to_ray(deployment):
    from embedshare.ray import in_ray_worker

    assert ray.is_initialized() and not in_ray_worker()  # a driver is not a task or an actor


def test_tasks_on_every_node_match_a_local_manager_bit_for_bit(deployment, local, job):
    texts = ["read a CSV file", "send an HTTP POST with a JSON body", "read a CSV file", "résumé parsing ✓", "x" * 9000]
    queries = ["parse csv", "  Send   an HTTP request ", "compress a folder"]
    tools = ["csv_parser", "http_post"]
    results = ray.get([probe.options(**on_node(nid)).remote(texts, queries, tools) for nid in job])
    actor = UserActor.options(**on_node(job[-1])).remote()
    results.append(ray.get(actor.probe.remote(texts, queries, tools)))
    ray.kill(actor)

    want_vectors = local.get_embeddings(texts).tobytes()
    want_search = [
        [(r.name, r.score, r.category, r.reason, r.field_scores) for r in local.search(q, k=5)] for q in queries
    ]
    want_similar = [[(r.name, r.score) for r in local.find_similar_tools(t, k=4)] for t in tools]
    settings = deployment.settings()
    hosts = {n["NodeID"]: n["NodeManagerHostname"] for n in ray.nodes() if n["Alive"]}
    for nid, got in zip([*job, job[-1]], results, strict=True):
        assert got["type"] == "RayEmbeddingManager" and got["same_instance"]
        assert got["node_id"] == nid
        assert got["address"] == str(
            node_store(settings["store_root"], node_key(nid, hosts)).resolve() / "run" / "service.sock"
        )
        assert got["vectors"] == want_vectors  # bit for bit
        assert got["one"] == local.get_embedding(texts[0]).tobytes()
        assert got["search"] == want_search
        assert got["similar"] == want_similar
        assert got["protocols"] == local.get_tool_protocols(tools)
        # the index: one object in the object store, read in place, read-only
        assert got["index_type"] == "ObjectStoreToolIndex"
        assert got["index_in_plasma"] and not got["index_writeable"]
    assert sum(r["remote_texts"] for r in results) > 0  # some texts came from their owner node

    stats = deployment.stats()
    assert stats["index_builds"] == 1
    assert sorted(stats["nodes"]) == job  # one service per node, each on its node
    for nid, node in stats["nodes"].items():
        assert node["node_id"] == nid and node["service"]["pid"] == node["service_pid"]


def test_each_distinct_text_is_embedded_once_in_the_cluster(deployment, local, job):
    tasks = make_tasks(150, seed=11)
    # every node runs tasks: a third of them pinned to each node, all in flight at once
    refs = [workload_task.options(**on_node(job[i % len(job)])).remote(t) for i, t in enumerate(tasks)]
    results = ray.get(refs)
    assert results == [expected_task(local, t) for t in tasks]

    stats = deployment.stats()
    per_node = {nid: n["service"]["texts_embedded"] for nid, n in stats["nodes"].items()}
    want = distinct_texts(tasks)
    assert sum(per_node.values()) == len(want)  # the model's texts across the cluster
    assert all(count > 0 for count in per_node.values())  # the work is spread over the nodes
    # each node computed exactly the texts it owns
    model_id = local.model_id
    from embedshare.store.cache import cache_key

    owned = dict.fromkeys(job, 0)
    for text in want:
        owned[owner_of(cache_key(model_id, text), stats["ring"])] += 1
    assert per_node == owned
    fetched = sum(n["actor"]["fetch_texts"] for n in stats["nodes"].values())
    assert fetched > 0  # workers got texts of other nodes through their node's actor

    # the same tasks again: every text is cached on its node, the model does nothing
    again = ray.get([workload_task.options(**on_node(job[(i + 1) % len(job)])).remote(t) for i, t in enumerate(tasks)])
    assert again == results
    assert deployment.texts_embedded() == len(want)


def test_killing_a_node_service_actor_mid_run_loses_no_task(deployment, local, job):
    tasks = make_tasks(90, seed=5)
    gate = Gate.remote()
    before = {nid: [f"before {nid[:6]} {i}" for i in range(20)] for nid in job}
    after = {nid: [f"after {nid[:6]} {i}" for i in range(60)] for nid in job}  # owned by every node
    slices = {nid: tasks[i :: len(job)][:10] for i, nid in enumerate(job)}
    phased = [two_phase.options(**on_node(nid)).remote(gate, before[nid], after[nid], slices[nid]) for nid in job]
    assert ray.get(gate.wait_for.remote(len(job))) == len(job)  # every node's worker attached

    victim = job[1]
    handle = ray.get_actor(service_name(victim), namespace=deployment.namespace)
    old = ray.get(handle.info.remote())
    others = [workload_task.remote(t) for t in tasks]  # in flight while the actor dies
    ray.kill(handle)
    _wait_until_dead(handle)
    import psutil

    try:  # its service follows it (the lifeline closed): wait for that process to exit
        psutil.Process(old["service_pid"]).wait(timeout=60)
    except psutil.NoSuchProcess:
        pass
    ray.get(gate.open.remote())

    outcomes = ray.get(phased)
    assert ray.get(others) == [expected_task(local, t) for t in tasks]  # no task lost
    for nid, got in zip(job, outcomes, strict=True):
        assert got["first"] == local.get_embeddings(before[nid]).tobytes()
        assert got["second"] == local.get_embeddings(after[nid]).tobytes()
        assert got["results"] == [expected_task(local, t) for t in slices[nid]]
    victim_outcome = outcomes[1]
    assert victim_outcome["restarts"] >= 1  # its service was gone: the worker restarted the actor
    new = ray.get(ray.get_actor(service_name(victim), namespace=deployment.namespace).info.remote())
    assert new["incarnation"] != old["incarnation"] and new["service_pid"] != old["service_pid"]
    assert new["node_id"] == victim and victim_outcome["incarnation"] == new["incarnation"]
    assert deployment.stats()["node_starts"][victim] == 2


@ray.remote
def search_task(query: str, texts: list[str]) -> dict:
    from embedshare import get_embedding_manager

    manager = get_embedding_manager()
    return {
        "top": [(r.name, r.score) for r in manager.search(query, k=5)],
        "vectors": manager.get_embeddings(texts).tobytes(),
        "stats": manager.stats(),
    }


def test_a_later_session_s_task_needs_no_registry_and_survives_its_node_s_service_being_killed(cluster, local):
    """Found on main: a Ray task's search raised NoIndexError unless EMBEDSHARE_REGISTRY was
    set, and the advice was for another context. Here a first session deploys with a registry;
    a second session's tasks name none (its coordinator is created on demand), the node's
    service process is SIGKILLed between two tasks, and the node stores are the same folders."""
    root = tempfile.mkdtemp(prefix="esr-", dir="/tmp")
    query, texts = "read a csv file", [f"session text {i}" for i in range(20)]
    want = {
        "top": [(r.name, r.score) for r in local.search(query, k=5)],
        "vectors": local.get_embeddings(texts).tobytes(),
    }
    try:
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        try:
            embedshare_ray.init(model=MODEL, registry="bundled", store_root=root)
            nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
            ray.get([search_task.options(**on_node(n)).remote(query, texts) for n in nodes])
            first_folders = sorted(os.listdir(root))
            embedshare_ray.shutdown()
        finally:
            ray.shutdown()
        env = {"EMBEDSHARE_RAY_STORE": root, "EMBEDSHARE_MODEL": MODEL}  # no EMBEDSHARE_REGISTRY
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False, runtime_env={"env_vars": env})
        try:
            node = nodes[1]
            got = ray.get(search_task.options(**on_node(node)).remote(query, texts))
            assert {k: got[k] for k in want} == want
            from embedshare.ray.api import current_namespace

            namespace = current_namespace()
            handle = ray.get_actor(service_name(node), namespace=namespace)
            service_pid = ray.get(handle.info.remote())["service_pid"]
            os.kill(service_pid, signal.SIGKILL)
            wait_for(lambda: not alive(service_pid), 60, f"the killed service {service_pid} to be gone")
            again = ray.get(search_task.options(**on_node(node)).remote(query, [t + " again" for t in texts]))
            assert again["top"] == want["top"]
            assert again["vectors"] == local.get_embeddings([t + " again" for t in texts]).tobytes()
            assert ray.get(handle.info.remote())["service_pid"] != service_pid  # restarted, same actor
            assert sorted(os.listdir(root)) == first_folders  # the same node stores, no new folders
        finally:
            embedshare_ray.shutdown()
            ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_task_asking_for_a_registry_gets_the_deployment_s_or_a_clear_error(deployment, local, job, tmp_path):
    # On Ray the node services serve no registry: the check is against the deployment's index.
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(list(json.loads(bundled_registry_path().read_text()).items())[:3])))
    asks = [
        ("bundled", True),
        (str(bundled_registry_path()), False),
        (str(other), False),
        (str(other), True),
        (str(tmp_path / "missing.json"), False),
    ]
    same_env, same_file, other_arg, other_env, missing = ray.get(
        [attach_asking_for.options(**on_node(job[i % len(job)])).remote(*ask) for i, ask in enumerate(asks)]
    )

    want = [r.name for r in local.search("parse csv", k=3)]
    assert same_env == {"type": "RayEmbeddingManager", "search": want}
    assert same_file == {"type": "RayEmbeddingManager", "search": want}  # the same content: the same
    served_hash = load_registry("bundled").content_hash[:12]
    for got in (other_arg, other_env):
        assert got["error"] == "RegistryMismatchError", got
        assert str(other) in got["message"] and load_registry(str(other)).content_hash[:12] in got["message"]
        assert served_hash in got["message"] and "embedshare.ray.init(" in got["message"]
    assert missing["error"] == "RegistryError" and "missing.json" in missing["message"]


@ray.remote(num_cpus=0)
class LongLivedActor:
    """An actor whose managers outlive the deployment they attached to."""

    def __init__(self) -> None:
        from embedshare.ray import RayEmbeddingManager

        self.managers = {"asked bundled": RayEmbeddingManager(registry="bundled"), "asked none": RayEmbeddingManager()}

    def use(self, texts: list[str]) -> dict:
        out = {}
        for name, manager in self.managers.items():
            try:
                manager.get_embeddings(texts)
                out[name] = {
                    "store": str(manager.layout.root),
                    "cache": str(manager.cache.path),
                    "tools": sorted(r.name for r in manager.search("read a csv file", k=50)),
                }
            except Exception as exc:
                out[name] = {"error": type(exc).__name__, "message": str(exc)}
        return out


def test_a_worker_that_outlives_its_deployment_takes_the_next_one_whole_or_refuses_it(job, tmp_path):
    """A long-lived actor's managers, after the deployment is shut down and another one (another
    store root, another registry) started: they move to its store, cache and index together, and
    one that asked for the old registry says the new one is not it (never its answers)."""
    first, second = (tempfile.mkdtemp(prefix="esr-", dir="/tmp") for _ in range(2))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(list(json.loads(bundled_registry_path().read_text()).items())[:3])))
    other_tools = sorted(tool.name for tool in load_registry(str(other)).tools)
    try:
        embedshare_ray.init(model=MODEL, registry="bundled", store_root=first)
        actor = LongLivedActor.options(**on_node(job[0])).remote()
        before = ray.get(actor.use.remote([f"first deployment {i}" for i in range(10)]))
        assert all(got["store"].startswith(first) for got in before.values()), before
        embedshare_ray.shutdown()
        embedshare_ray.init(model=MODEL, registry=str(other), store_root=second)
        after = ray.get(actor.use.remote([f"second deployment {i}" for i in range(10)]))
    finally:
        embedshare_ray.shutdown()
        for root in (first, second):
            shutil.rmtree(root, ignore_errors=True)
    moved = after["asked none"]
    assert "error" not in moved, moved
    assert moved["store"].startswith(second) and moved["cache"].startswith(moved["store"]), moved
    assert moved["tools"] == other_tools
    assert after["asked bundled"]["error"] == "RegistryMismatchError", after["asked bundled"]


def test_error_and_local_policies_when_the_node_service_is_gone(deployment, local, job):
    gate = Gate.remote()
    texts = [f"policy text {i}" for i in range(30)]  # owned by every node
    node = job[0]
    ref = policies_after_gate.options(**on_node(node)).remote(gate, texts)
    ray.get(gate.wait_for.remote(1))
    handle = ray.get_actor(service_name(node), namespace=deployment.namespace)
    service_pid = ray.get(handle.info.remote())["service_pid"]
    ray.kill(handle)
    _wait_until_dead(handle)
    import psutil

    try:
        psutil.Process(service_pid).wait(timeout=60)
    except psutil.NoSuchProcess:
        pass
    ray.get(gate.open.remote())
    got = ray.get(ref)
    assert got["raised"] == "ServiceUnavailable"  # error: raise, never a wrong answer
    assert got["fallback"] and got["vectors"] == local.get_embeddings(texts).tobytes()  # local


def test_the_ray_demo_measures_memory_per_node_and_model_calls(cluster):
    from embedshare.bench.ray_demo import run_ray_demo

    report = run_ray_demo(
        address=cluster.address, tasks=60, in_flight=3, model=MODEL, registry="bundled", progress=False
    )
    d = report.as_dict()
    assert d["failed"] == 0 and d["tasks"] == 60
    assert len(d["nodes"]) == 3
    for node in d["nodes"].values():
        roles = node["pss_by_role_mb"]
        assert roles["embedshare service"] > 0 and roles["embedshare node actor"] > 0 and roles["raylet"] > 0
    assert sum(n["workers"] for n in d["nodes"].values()) == 3
    assert d["texts_embedded"] == d["distinct_texts"] == len(distinct_texts(make_tasks(60)))
    assert d["index_builds"] == 1
    assert "embedshare on Ray" in report.format()
