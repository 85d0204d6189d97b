"""design.md's targets, each decided by a figure of the same benchmark run.

``evaluate_targets`` reads the results ``runner.run_bench`` gathered (or a ``latest.json``
read again by ``report``) and says, per model, which targets embedshare met and by what.
"""

from __future__ import annotations

from typing import Any


def _find(results: dict[str, Any], label: str, design: str, workers: int) -> dict[str, Any] | None:
    for case in results["cases"]:
        if (case["model_label"], case["design"], case.get("workers")) == (
            label,
            design,
            workers,
        ) and "error" not in case:
            return case
    return None


def _num(value: Any, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _target(target: str, label: str, measured: str, ok: bool | None) -> dict[str, Any]:
    return {"target": target, "model": label, "measured": measured, "ok": ok}


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """design.md's targets, each with the figure of this run that decides it."""
    top = max(results["config"]["workers"])
    out: list[dict[str, Any]] = []
    for label in results["config"]["models"]:
        es = _find(results, label, "embedshare", top)
        if es is None:
            out.append(_target("embedshare ran", label, "no successful embedshare case", False))
            continue
        out += _memory_targets(es, label, top)
        out += _hit_targets(results, es, label, top)
        out += _growth_targets(es, label)
        out.append(_model_calls_target(results, label))
        out += _throughput_targets(results, es, label, top)
    return out


def _memory_targets(es: dict[str, Any], label: str, top: int) -> list[dict[str, Any]]:
    forkserver = es["pss_mb"].get("forkserver", 0)  # the workers' forkserver is theirs to pay
    extra = es["worker_over_bare_mb"] + forkserver / top
    return [
        _target(
            f"memory: {top} workers + service <= service + {top} bare interpreters + 3 MB a worker",
            label,
            f"{es['pss_mb'].get('worker', 0) + forkserver + es['pss_mb'].get('service', 0):.0f} MB vs "
            f"{es['pss_mb'].get('service', 0) + top * (es['bare_mb'] + 3):.0f} MB "
            f"({extra:+.1f} MB a worker over a bare one of {es['bare_mb']:.1f} MB)",
            extra <= 3.0,
        ),
        _target(
            "a worker attaches in < 50 ms",
            label,
            f"p50 {es['attach_p50_ms']:.1f} ms, p99 {es['attach_p99_ms']:.1f} ms ({top} attaching at once)",
            es["attach_p50_ms"] < 50,
        ),
    ]


def _hit_targets(results: dict[str, Any], es: dict[str, Any], label: str, top: int) -> list[dict[str, Any]]:
    out = [
        _target(
            "cache hit p50 <= 3 us",
            label,
            f"p50 {es['hit_p50_us']:.2f} us, p99 {es['hit_p99_us']:.1f} us (same workers: get_one "
            f"{_num(es.get('hit_get_one_p50_us'))} us, an LMDB get in a long-lived transaction "
            f"{_num(es.get('hit_lmdb_floor_p50_us'))} us)",
            es["hit_p50_us"] <= 3.0,
        )
    ]
    a = _find(results, label, "option-a", top)
    if a is not None:
        ratio = a["hit_p50_us"] / es["hit_p50_us"]
        out.append(
            _target(
                ">= 20x faster than a Manager dict proxy (Option A, same run)",
                label,
                f"{ratio:.0f}x ({a['hit_p50_us']:.0f} us vs {es['hit_p50_us']:.1f} us)",
                ratio >= 20,
            )
        )
    return out


def _growth_targets(es: dict[str, Any], label: str) -> list[dict[str, Any]]:
    growth = es.get("worker_growth_per_1k_texts_kb")
    # decidable only when enough texts were added to rise above the noise of PSS readings
    if growth is None or es.get("growth_texts", 0) < 1000:
        return []
    # A per-process copy of the vectors (a dict, a private cache) would grow by at least
    # their own size: 1,000 x dim x 4 bytes.
    own = es["vector_kb"] * 1000
    return [
        _target(
            "no per-process structure growing with the data",
            label,
            f"a worker's PSS {growth:+.0f} KB per 1,000 new cached texts ({es['growth_texts']} added); "
            f"a private copy of those vectors alone: {own:.0f} KB",
            growth <= 0.1 * own,
        )
    ]


def _model_calls_target(results: dict[str, Any], label: str) -> dict[str, Any]:
    cases = [
        c for c in results["cases"] if c["model_label"] == label and c["design"] == "embedshare" and "error" not in c
    ]
    return _target(
        "model calls == distinct texts, whatever the workers",
        label,
        ", ".join(
            f"{c['workers']}w: {c['texts_embedded']} texts for {c['distinct_texts_needed']} distinct" for c in cases
        ),
        all(c["texts_embedded"] == c["distinct_texts_needed"] == c["distinct_texts_embedded"] for c in cases),
    )


def _throughput_targets(results: dict[str, Any], es: dict[str, Any], label: str, top: int) -> list[dict[str, Any]]:
    measured = [m for m in results["model_alone"] if m.get("model_label") == label and "error" not in m]
    if not measured:
        return []
    alone = measured[-1]  # the one closest in time to embedshare's
    share = es["miss_texts_per_s"] / alone["best_texts_per_second"]
    ms = es.get("miss_service") or {}
    return [
        _target(
            f"service throughput, {top} workers sending distinct texts >= 80% of the model's best",
            label,
            f"{es['miss_texts_per_s']:.0f} texts/s = {share:.0%} of {alone['best_texts_per_second']:.0f} "
            f"(batch {alone['best_batch']}, one process); in the service the model was busy "
            f"{_num(ms.get('model_busy_share'), '.0%')} of the time, at "
            f"{_num(ms.get('model_texts_per_s_while_busy'), '.0f')} texts/s while busy, mean batch "
            f"{_num(ms.get('mean_batch'), '.1f')}; the service used {_num(ms.get('service_cpu_share'), '.0%')} "
            f"of a core, and the machine's cores were {_num(ms.get('machine_idle_share'), '.0%')} idle",
            share >= 0.8,
        )
    ]
