"""``embedshare stats`` and ``top``: what the store's service is doing, once or live."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import errors_as_messages, store_layout, store_option

if TYPE_CHECKING:  # the CLI imports its commands' modules when they run
    from ..client.protocol import StatsWithMemory


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_option
def stats(as_json: bool, store: Path | None) -> None:
    """Counters of the store's service: requests, hits, batches, latency, clients."""
    from ..client.connection import ServiceConnection

    layout = store_layout(store)
    with errors_as_messages():
        conn = ServiceConnection(layout.socket)
        try:
            reply = conn.stats(timeout=30)
        finally:
            conn.close()
        from ..service.observe import with_memory

        data = with_memory(reply)  # PSS of the service and of each client, read here
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        click.echo(_format_stats(data))


def _format_stats(s: StatsWithMemory) -> str:
    from ..monitor import format_mb, format_ms

    lat = s["request_latency"]
    batch = s["batch_size"]
    lines = [
        f"service pid {s['pid']}  model {s['model_id']} ({s['dim']} dims)  up {s['uptime_s']:.0f} s"
        + (f"  PSS {format_mb(s['pss'])}" if s["pss"] is not None else ""),
        f"store {s['store']}  tools {s['tools']}",
        f"requests {s['requests']}  errors {s['errors']}  corrupt vectors replaced "
        f"{s.get('corrupt_vectors', 0)}  texts {s['texts']}  "
        f"hits {s['hits']}  misses {s['misses']}  joined in-flight {s['joined_inflight']}",
        f"model calls {s['model_calls']}  texts embedded {s['texts_embedded']}  "
        f"mean batch {batch['mean'] or 0:.1f}  queue {s['queue_depth']} (max {s['max_queue_depth']})",
        f"latency p50 {format_ms(lat['p50'])}  p99 {format_ms(lat['p99'])}",
        f"clients {len(s['clients'])}:",
        *(
            f"  pid {c['pid'] if c['pid'] is not None else 'tcp':>7}  PSS {format_mb(c['pss'])}"
            f"  requests {c['requests']}" + ("  (this command)" if c["pid"] == os.getpid() else "")
            for c in s["clients"]
        ),
    ]
    if s.get("http"):
        lines.insert(2, f"http {s['http']}/v1  (metrics {s['http']}/metrics)")
    return "\n".join(lines)


@click.command()
@click.option("--once", is_flag=True, help="Print one frame (averages since the service started) and exit.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@store_option
def top(once: bool, interval: float, store: Path | None) -> None:
    """Live view of the store's service: clients (PID, PSS), requests/s, hits, batches, latency."""
    from ..monitor import run_top
    from ..settings import seconds

    with errors_as_messages():
        seconds("--interval", interval)
        sys.exit(run_top(store_layout(store).socket, once=once, interval=interval))
