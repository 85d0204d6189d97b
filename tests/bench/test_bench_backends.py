"""``bench --backends``' service part, end to end on the hashing model: a service, spawned
workers (run by path, as a baseline checkout's interpreter runs them), every kind of phase,
and the before/after table built from what they measured."""

from __future__ import annotations

import sys

import pytest

from embedshare.bench.backends import format_table, measure_load, phase_title, run_variant

pytestmark = pytest.mark.timeout(300)


def test_a_variant_runs_every_phase_and_the_table_gives_after_before_ratios():
    phases = [["misses", 1, "short", False], ["misses", 4, "long", False], ["fairness", 16, 8192]]
    plan = {"workers": 2, "seconds": 0.5, "phases": phases, "tag": "t"}
    one = run_variant(sys.executable, "hash:64", None, plan)

    fair = one["phases"]['["fairness", 16, 8192]']
    assert fair["small_requests"] > 0 and fair["forwards"] > 0
    assert fair["small_p99_s"] >= fair["small_p50_s"] > 0
    long = one["phases"]['["misses", 4, "long", false]']
    assert long["texts_per_s"] > 0 and long["mean_batch"] >= 1
    assert long["workers_cpu_cores"] >= 0  # os.times() counts in 10 ms ticks: a short phase may show 0

    titled = {phase_title(p): one["phases"][key] for p, key in zip(phases, one["phases"], strict=True)}
    summary = {
        "pss_idle_mb": one["pss_idle_mb"],
        "pss_load_mb": one["pss_load_mb"],
        **{f"{title}: {k}": v for title, figures in titled.items() for k, v in figures.items()},
    }
    half = {k: v / 2 if isinstance(v, float) else v for k, v in summary.items()}
    results = {
        "summary": {"hash": {"after": summary, "before": half}},
        "labels": {"hash": "hashing"},
        "sides": {"after": sys.executable, "before": "/baseline/python"},
        "phases": phases,
        "rounds": 1,
        "workers": 2,
        "seconds_per_phase": 0.5,
        "started_load_average": [[0.0, 0.0, 0.0]],
    }
    table = format_table(results)
    row = next(line for line in table.splitlines() if line.startswith("| misses, 1 short text/request, texts/s"))
    assert row.endswith("| 2.00x |")
    assert "one-text p99, in forwards" in table


def test_the_model_alone_runs_on_the_workers_texts():
    one = measure_load(sys.executable, "hash:64", None)
    assert set(one["alone"]) == {"1", "16", "64", "16 long"}
    assert all(rate > 0 for rate in one["alone"].values())
    assert one["load_s"] > 0 and one["torch_imported"] is False
