"""``embedshare top``: a live view of the store's service, refreshed every second.

One frame shows the service (pid, model, uptime, PSS), its rates (requests/s, texts/s, the
hit rate of the texts that reached it, the mean batch, model calls), the latency p50/p99 of
its recent requests, its queue, and every connected client with its PID and PSS.

Rates are differences between two snapshots of the service's counters, over the service's
own clock (``uptime_s``); the first frame (and ``--once``) shows averages since the service
started. Workers answer their cache hits themselves, from the memory map, so those never
reach the service: its hit rate is that of the texts workers sent it (mostly 0% in a
steady run; high when workers race each other to the same new texts).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .client.connection import ServiceConnection
from .client.protocol import ClientMemory, StatsWithMemory
from .errors import RemoteError, ServiceUnavailable
from .service.observe import with_memory

MB = 1024 * 1024


def fetch_stats(conn: ServiceConnection) -> StatsWithMemory:
    """The service's stats, with PSS of the service and of each client (read here)."""
    return with_memory(conn.stats(timeout=10))


@dataclass
class Rates:
    """What changed between two snapshots, per second of the service's clock."""

    seconds: float
    since_start: bool
    requests_per_s: float
    texts_per_s: float
    hit_rate: float | None
    mean_batch: float | None
    model_calls: int  # in the interval

    @classmethod
    def between(cls, before: Mapping[str, Any] | None, now: Mapping[str, Any]) -> Rates:
        """Read by name: a snapshot, or its few counters (``before`` None: the service's start)."""
        zero: dict[str, Any] = {
            "requests": 0,
            "texts": 0,
            "hits": 0,
            "misses": 0,
            "model_calls": 0,
            "uptime_s": 0.0,
            "batch_size": {"count": 0, "sum": 0.0},
        }
        since_start = before is None
        before = zero if before is None else before
        seconds = max(float(now["uptime_s"]) - float(before["uptime_s"]), 1e-9)
        delta = {
            k: int(now.get(k, 0)) - int(before.get(k, 0))
            for k in ("requests", "texts", "hits", "misses", "model_calls")
        }
        looked_up = delta["hits"] + delta["misses"]
        batches = now["batch_size"]["count"] - before["batch_size"]["count"]
        batched = _batch_sum(now) - _batch_sum(before)
        return cls(
            seconds=seconds,
            since_start=since_start,
            requests_per_s=delta["requests"] / seconds,
            texts_per_s=delta["texts"] / seconds,
            hit_rate=delta["hits"] / looked_up if looked_up else None,
            mean_batch=batched / batches if batches else None,
            model_calls=delta["model_calls"],
        )


def _batch_sum(stats: Mapping[str, Any]) -> float:
    summary = stats["batch_size"]
    if summary.get("sum") is not None:
        return float(summary["sum"])
    return float(summary.get("mean") or 0.0) * summary["count"]


def format_mb(value: int | None) -> str:
    """Bytes as megabytes (one decimal), or "-" when not measured; also ``embedshare stats``'s."""
    return f"{value / MB:.1f} MB" if value is not None else "-"


def format_ms(value: float | None) -> str:
    """Seconds as milliseconds (two decimals), or "-" when there are none; also ``embedshare stats``'s."""
    return f"{value * 1000:.2f} ms" if value is not None else "-"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


FOOT = "p50/p99: the last 10,000 requests. hit rate: of texts sent to the service."
# Lines of a frame besides its client rows: the head (3, 4 with http), two tables of 4 lines
# (title, header, rule, row), the clients' title, header and rule, and the foot.
FIXED_LINES = 3 + 4 + 4 + 3 + 1


def render(stats: StatsWithMemory, rates: Rates, height: int | None = None) -> Any:
    """One frame (a rich renderable) for a stats snapshot (with PSS) and its rates.

    ``height``: the terminal's rows. The frame then fits them: clients that do not fit are
    summarised on one line, while the totals, the foot and this command's own row stay.
    """
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text(no_wrap=True, overflow="ellipsis")  # short lines: the frame fits an 80-column terminal
    head.append("embedshare top", style="bold")
    head.append(f"  service pid {stats['pid']}  up {_duration(stats['uptime_s'])}  PSS {format_mb(stats.get('pss'))}\n")
    head.append(f"model {stats['model_id']} ({stats['dim']} dims)  tools {stats.get('tools', 0)}\n")
    head.append(f"store {stats['store']}")
    if stats.get("http"):
        head.append(f"\nhttp {stats['http']}")

    def table(title: str, columns: tuple[tuple[str, Literal["left", "right"]], ...]) -> Table:
        compact = Table(title=title, title_justify="left", expand=False, box=box.SIMPLE_HEAD, show_edge=False)
        for column, justify in columns:
            compact.add_column(column, justify=justify)
        return compact

    basis = "averages since start" if rates.since_start else f"over the last {rates.seconds:.1f} s"
    right: Literal["right"] = "right"
    summary = table(
        f"rates {basis}", tuple((c, right) for c in ("requests/s", "texts/s", "hit rate", "mean batch", "model calls"))
    )
    summary.add_row(
        f"{rates.requests_per_s:.1f}",
        f"{rates.texts_per_s:.1f}",
        f"{rates.hit_rate:.1%}" if rates.hit_rate is not None else "-",
        f"{rates.mean_batch:.1f}" if rates.mean_batch is not None else "-",
        f"{stats['model_calls']} (+{rates.model_calls})",
    )
    latency = stats["request_latency"]
    waits = table("latency and queue", tuple((c, right) for c in ("p50", "p99", "queue", "max queue", "errors")))
    waits.add_row(
        format_ms(latency.get("p50")),
        format_ms(latency.get("p99")),
        str(stats["queue_depth"]),
        str(stats["max_queue_depth"]),
        str(stats["errors"]),
    )

    clients = table(
        f"clients {len(stats['clients'])} (this view is one: a request a refresh)",
        (("PID", "right"), ("PSS", "right"), ("requests", "right"), ("connected", "right"), ("", "left")),
    )
    now = time.time()
    # TCP clients have no pid here: listed last, as "tcp"
    everyone = sorted(stats["clients"], key=lambda c: (c["pid"] is None, c["pid"] or 0))
    shown, hidden = _fit(everyone, None if height is None else height - FIXED_LINES - bool(stats.get("http")))
    for client in shown:
        clients.add_row(
            str(client["pid"]) if client["pid"] is not None else "tcp",
            format_mb(client.get("pss")),
            str(client["requests"]),
            _duration(max(0.0, now - client["connected"])),
            "this command" if client["pid"] == os.getpid() else "",
        )
    parts: list[Any] = [head, summary, waits, clients]
    if hidden:
        parts.append(Text(_more_clients(hidden), no_wrap=True, overflow="ellipsis"))
    parts.append(Text(FOOT, style="dim", no_wrap=True, overflow="ellipsis"))
    return Group(*parts)


def _fit(clients: list[ClientMemory], rows: int | None) -> tuple[list[ClientMemory], list[ClientMemory]]:
    """The clients to list in ``rows`` lines (one is kept for the "+N more" line) and the rest.

    This command's own row is always listed: it is how a reader tells the view from workers.
    """
    if rows is None or len(clients) <= rows:
        return clients, []
    room = max(rows - 1, 1)
    own = [c for c in clients if c["pid"] == os.getpid()][:1]
    others = [c for c in clients if c not in own]
    shown = others[: room - len(own)] + own
    return shown, [c for c in clients if c not in shown]


def _more_clients(hidden: list[ClientMemory]) -> str:
    pss = sum(c.get("pss") or 0 for c in hidden)
    requests = sum(int(c["requests"]) for c in hidden)
    pids = " ".join(str(c["pid"]) if c["pid"] is not None else "tcp" for c in hidden)
    return f"+{len(hidden)} more clients: PSS {format_mb(pss)}, {requests} requests; pids {pids}"


def render_error(address: str, exc: Exception) -> Any:
    from rich.text import Text

    return Text(
        f"embedshare top: no service at {address}: {exc}\nretrying every second; Ctrl-C to quit", style="bold red"
    )


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_top(address: str | Path, *, once: bool = False, interval: float = 1.0, console: Any = None) -> int:
    """Show the live view until Ctrl-C (exit code 0), or one frame with ``once``.

    ``once`` with no service raises :class:`ServiceUnavailable`; the live view instead says
    so and keeps trying, so it survives a restart of the service.
    """
    from rich.console import Console
    from rich.live import Live

    address = str(address)
    if console is None:
        width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 140
        console = Console(highlight=False, width=width)  # a pipe gets whole lines, not 80 columns
    conn: ServiceConnection | None = None
    if once:
        conn = ServiceConnection(address, connect_timeout=5.0)
        try:
            stats = fetch_stats(conn)
        finally:
            conn.close()
        console.print(render(stats, Rates.between(None, stats)))
        return 0

    previous: StatsWithMemory | None = None
    # SIGTERM (kill, a closing terminal multiplexer) must leave through Live's exit, which
    # shows the cursor again; by default it would end the process with the cursor hidden.
    # SIGINT gets the same handler explicitly: a view started from a script or a job that
    # ignores SIGINT (which children inherit) must still quit on Ctrl-C.
    old_handlers = {signum: signal.signal(signum, _raise_interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                try:
                    if conn is None or not conn.alive:
                        conn = ServiceConnection(address, connect_timeout=2.0)
                    stats = fetch_stats(conn)
                    if previous is not None and previous["pid"] != stats["pid"]:
                        previous = None  # a new service: its counters start again
                    # one row short of the screen: a frame as tall as the screen scrolls it by a line
                    frame = render(stats, Rates.between(previous, stats), height=console.size.height - 1)
                    previous = stats
                except (ServiceUnavailable, RemoteError, OSError) as exc:
                    if conn is not None:
                        conn.close()
                    conn, previous = None, None
                    frame = render_error(address, exc)
                live.update(frame, refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
        if conn is not None:
            conn.close()
    return 0
