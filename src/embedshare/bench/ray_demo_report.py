"""What ``embedshare ray-demo`` measured, and how it is shown (``format``) and saved (``as_dict``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MB = 2**20


@dataclass
class RayDemoReport:
    """What the run on Ray cost, measured; ``format()`` renders it."""

    tasks: int
    failed: int
    in_flight: int
    model: str
    wall_seconds: float
    noop_wall_seconds: float  # as many empty Ray tasks, same window: Ray's own share of the wall time
    deploy_seconds: float
    attach_seconds: list[float]
    task_seconds: list[float]
    nodes: dict[str, dict[str, Any]]  # node id -> processes, workers, stats
    head: list[dict[str, Any]]  # head-only processes of a local cluster (gcs, monitors), the driver
    texts_embedded: int
    model_calls: int
    distinct_texts: int
    index_builds: int
    results: list[Any] = field(default_factory=list, repr=False)
    single_machine: dict[str, Any] | None = None
    agreement: float | None = None

    def _node_dict(self, nid: str, node: dict[str, Any]) -> dict[str, Any]:
        roles: dict[str, float] = {}
        for p in node["processes"]:
            if p["role"] != "bare ray worker":  # the demo's baseline probe, not part of the run
                roles[p["role"]] = roles.get(p["role"], 0.0) + (p["pss"] or 0) / MB
        workers = [p["pss"] / MB for p in node["processes"] if p["role"] == "workers" and p["pss"]]
        bare = [p["pss"] / MB for p in node["processes"] if p["role"] == "bare ray worker" and p["pss"]]
        service = node["stats"].get("service") or {}
        return {
            "pss_total_mb": sum(roles.values()),
            "pss_by_role_mb": roles,
            "workers": len(workers),
            "pss_per_worker_mb": sum(workers) / len(workers) if workers else None,
            "bare_ray_worker_mb": bare[0] if bare else None,
            "texts_embedded": int(service.get("texts_embedded", 0)),
            "model_calls": int(service.get("model_calls", 0)),
            "fetched_from_owners": int(node["stats"]["actor"]["fetch_texts"]),
        }

    def as_dict(self) -> dict[str, Any]:
        from ..util.latency import percentiles

        nodes = {nid: self._node_dict(nid, node) for nid, node in self.nodes.items()}
        head = sum((p["pss"] or 0) for p in self.head) / MB
        return {
            "label": "embedshare on Ray",
            "tasks": self.tasks,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "model": self.model,
            "wall_seconds": self.wall_seconds,
            "noop_wall_seconds": self.noop_wall_seconds,
            "deploy_seconds": self.deploy_seconds,
            "attach_seconds": percentiles(self.attach_seconds),
            "task_seconds": percentiles(self.task_seconds),
            "nodes": nodes,
            "head_pss_mb": head,
            "head_processes": [{k: p[k] for k in ("name", "pss")} for p in self.head],
            "pss_total_mb": sum(n["pss_total_mb"] for n in nodes.values()) + head,
            "texts_embedded": self.texts_embedded,
            "model_calls": self.model_calls,
            "distinct_texts": self.distinct_texts,
            "index_builds": self.index_builds,
            "single_machine": self.single_machine,
            "agreement": self.agreement,
        }

    def format(self) -> str:
        d = self.as_dict()

        def ms(v: float | None) -> str:
            return f"{v * 1e3:.1f} ms" if v is not None else "-"

        lines = [
            (
                f"== embedshare on Ray: {len(d['nodes'])} nodes, {d['in_flight']} tasks in flight, "
                f"{d['tasks']} tasks ({d['failed']} failed), model {d['model']}"
            ),
            (
                f"   deploy (a service per node, index into the object store) {d['deploy_seconds']:.1f} s; "
                f"workers attach p50 {ms(d['attach_seconds']['p50'])} p99 {ms(d['attach_seconds']['p99'])}; "
                f"wall time of the tasks {d['wall_seconds']:.1f} s (as many empty Ray tasks: "
                f"{d['noop_wall_seconds']:.1f} s)"
            ),
            (
                f"   texts embedded across the cluster: {d['texts_embedded']} (distinct texts: {d['distinct_texts']}) "
                f"in {d['model_calls']} model calls; index built {d['index_builds']} time(s)"
            ),
        ]
        for i, (nid, n) in enumerate(sorted(d["nodes"].items())):
            roles = "  ".join(f"{role} {mb:.0f}" for role, mb in sorted(n["pss_by_role_mb"].items()))
            per = f"{n['pss_per_worker_mb']:.1f} MB" if n["pss_per_worker_mb"] else "-"
            bare = f"{n['bare_ray_worker_mb']:.1f} MB" if n["bare_ray_worker_mb"] else "-"
            lines.append(
                f"   node {i} ({nid[:8]}): PSS {n['pss_total_mb']:.0f} MB [{roles}]; {n['workers']} workers, "
                f"{per} each (a bare Ray worker: {bare}); embedded {n['texts_embedded']} texts, "
                f"fetched {n['fetched_from_owners']} from their owners"
            )
        lines.append(
            f"   head-only processes and the driver: {d['head_pss_mb']:.0f} MB; "
            f"all nodes and head: {d['pss_total_mb']:.0f} MB"
        )
        if self.single_machine:
            s = self.single_machine
            lines += [
                f"== one machine (embedshare demo --no-naive), same tasks, {s['workers']} workers, same run:",
                f"   PSS {s['pss_total_mb']:.0f} MB ("
                + ", ".join(f"{r} {mb:.0f}" for r, mb in s["pss_by_role_mb"].items())
                + f"), per worker {s['pss_per_worker_mb']:.1f} MB; texts embedded {s['texts_embedded']} "
                f"in {s['model_calls']} model calls; wall {s['wall_seconds']:.1f} s",
                f"   identical top-5 results on Ray and on one machine: {self.agreement:.1%}",
            ]
        return "\n".join(lines)
