"""Watching the service: ``embedshare stats`` and ``embedshare top`` (clients with PID and PSS,
rates, latency), the service's ``-v``, progress bars on a terminal, and no print() in
library code."""

from __future__ import annotations

import ast
import fcntl
import json
import os
import pty
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.processes import stop_process

import embedshare
from embedshare.cli import main
from embedshare.client.connection import ServiceConnection
from embedshare.service.launcher import EmbeddingService

pytestmark = pytest.mark.timeout(120)

CLIENT = """
import sys
from embedshare.access import SharedEmbeddingManager
client = SharedEmbeddingManager(sys.argv[1])
client.get_embeddings(["first text", "second text", "third text"])
print("ready", flush=True)
sys.stdin.read()  # stay connected until the test closes our stdin
"""


@pytest.fixture
def service(make_service) -> EmbeddingService:
    return make_service(registry=None, export_env=False)


@pytest.fixture
def other_client(service):
    """Another process, connected to the service, that embedded 3 texts (3 misses)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CLIENT, service.address], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        # one hit at the service: a text it has, sent without looking in the cache first
        conn = ServiceConnection(service.address)
        conn.request("embed", timeout=30, texts=["first text"])
        conn.close()
        yield child.pid
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def run_in_pty(argv: list[str], until: re.Pattern, timeout: float = 60.0, env=None, columns: int = 150):
    """Start argv on a terminal; return (process, master fd, output so far) once ``until`` shows."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))  # a 150x40 terminal
    process = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True, env=env, start_new_session=True
    )
    os.close(slave)
    output = read_pty(master, until, timeout)
    return process, master, output


def read_pty(master: int, until: re.Pattern | None, timeout: float) -> str:
    """Read until the pattern shows (or, with None, until the other end closes)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        text = b"".join(chunks).decode(errors="replace")
        if until is not None and until.search(text):
            return text
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {until!r}; got:\n{text}")
        ready, _, _ = select.select([master], [], [], remaining)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end closed
                chunk = b""
            if not chunk:
                if until is None:
                    return text
                raise AssertionError(f"ended before {until!r}; got:\n{text}")
            chunks.append(chunk)


# -- stats -------------------------------------------------------------------------------------


def test_stats_shows_clients_with_pid_and_pss(service, other_client):
    store = str(service.layout.root)
    data = json.loads(CliRunner().invoke(main, ["stats", "--json", "--store", store]).stdout)
    clients = {c["pid"]: c for c in data["clients"]}
    assert clients[other_client]["pss"] > 1_000_000
    assert clients[other_client]["requests"] >= 2  # hello and its embed
    assert data["pss"] > 1_000_000 and data["pid"] == service.pid

    text = CliRunner().invoke(main, ["stats", "--store", store]).stdout
    line = next(row for row in text.splitlines() if f"pid {other_client:>7}" in row)
    assert re.search(r"PSS \d+\.\d MB", line), line
    assert re.search(rf"service pid {service.pid} .* PSS \d+\.\d MB", text)


# -- top ---------------------------------------------------------------------------------------


def test_top_once_prints_one_frame(service, other_client):
    result = CliRunner().invoke(main, ["top", "--once", "--store", str(service.layout.root)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    stats = service.stats()
    assert f"service pid {service.pid}" in out and "hash:64:v1" in out
    for column in ("requests/s", "texts/s", "hit rate", "mean batch", "model calls", "p50", "p99", "PID", "PSS"):
        assert column in out, column
    assert "averages since start" in out
    row = next(line for line in out.splitlines() if re.search(rf"\b{other_client}\b", line))
    assert re.search(r"\d+\.\d MB", row), row  # the client's PSS
    # 4 texts reached the service, 1 was in its cache: 25% hits; 3 embedded in 1-3 batches
    assert "25.0%" in out
    assert f"{stats['model_calls']} (+{stats['model_calls']})" in out
    assert re.search(r"\d+\.\d\d ms", out)  # latency percentiles


def test_top_once_without_a_service_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["top", "--once", "--store", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no embedshare service at") and len(result.stderr.splitlines()) == 1


# A shell script's `embedshare top &`, or a parent that ignores SIGINT, starts it with SIGINT
# ignored; exec keeps that, so this launcher is what such a parent hands the view.
EXEC_WITH_SIGINT_IGNORED = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.executable, sys.argv[1:])"
)


@pytest.mark.parametrize("sigint", ["default", "ignored by the parent"])
def test_top_refreshes_live_and_exits_cleanly_on_ctrl_c(service, other_client, sigint):
    argv = [sys.executable, "-m", "embedshare.cli", "top", "--interval", "0.2", "--store", str(service.layout.root)]
    if sigint != "default":
        argv = [sys.executable, "-c", EXEC_WITH_SIGINT_IGNORED, *argv]
    process, master, output = run_in_pty(argv, re.compile(r"rates over the last"))
    try:
        assert "rates averages since start" in output  # the first frame, then a refresh
        assert str(other_client) in output
        os.kill(process.pid, signal.SIGINT)  # what Ctrl-C sends
        rest = read_pty(master, None, timeout=30)
        assert process.wait(timeout=30) == 0
    finally:
        os.close(master)
        stop_process(process)  # reaped, whatever failed
    assert "Traceback" not in output + rest and "KeyboardInterrupt" not in output + rest


def test_top_fits_80_columns(service, other_client):
    result = CliRunner().invoke(main, ["top", "--once", "--store", str(service.layout.root)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert "…" not in result.stdout  # no heading or cell cut short
    for column in (
        "requests/s",
        "texts/s",
        "hit rate",
        "mean batch",
        "model calls",
        "p50",
        "p99",
        "max queue",
        "errors",
        "PID",
        "PSS",
    ):
        assert column in result.stdout, column


RAW_CLIENT = """
import socket, sys
peer = socket.socket(socket.AF_UNIX)
peer.connect(sys.argv[1])
print("connected", flush=True)
sys.stdin.read()  # stay connected until the test closes our stdin
"""


def test_top_fits_an_80x24_terminal_with_25_clients(service, tmp_path, wait_for):
    """In a real 80x24 terminal (tmux), 25 clients: the clients that do not fit are summarised,
    and the totals, the foot and this command's own row stay on the screen."""
    tmux = shutil.which("tmux") or pytest.skip("tmux is not installed (apt-get install tmux)")
    assert tmux is not None
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", RAW_CLIENT, service.address], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in range(25)
    ]
    server = [tmux, "-L", f"embedshare-test-{os.getpid()}", "-f", "/dev/null"]
    try:
        for client in clients:
            assert client.stdout.readline().strip() == b"connected"
        wait_for(lambda: len(service.stats()["clients"]) >= 25, 30, "25 clients attached")
        top = [sys.executable, "-m", "embedshare.cli", "top", "--interval", "0.2", "--store", str(service.layout.root)]
        subprocess.run([*server, "new-session", "-d", "-x", "80", "-y", "24", shlex.join(top)], check=True, timeout=30)

        def screen() -> str:
            captured = subprocess.run([*server, "capture-pane", "-p"], capture_output=True, text=True, timeout=30)
            return captured.stdout if "rates over the last" in captured.stdout else ""  # a refreshed frame

        shown = wait_for(screen, 60, "a refreshed frame of embedshare top in tmux")
    finally:
        subprocess.run([*server, "kill-server"], capture_output=True, timeout=30)
        for client in clients:
            client.stdin.close()
            client.wait(timeout=30)
    lines = shown.rstrip("\n").splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80, shown
    assert lines[0].startswith("embedshare top"), shown  # the head has not scrolled away
    for expected in ("requests/s", "p50", "clients 26", "this command", "more clients: PSS", "p50/p99: the last"):
        assert expected in shown, (expected, shown)
    assert "..." not in shown  # nothing cut by the live view


def test_top_restores_the_cursor_on_sigterm(service, other_client):
    argv = [sys.executable, "-m", "embedshare.cli", "top", "--interval", "0.2", "--store", str(service.layout.root)]
    process, master, output = run_in_pty(argv, re.compile(r"rates over the last"))
    try:
        assert "\x1b[?25l" in output  # the live view hides the cursor ...
        os.kill(process.pid, signal.SIGTERM)
        rest = read_pty(master, None, timeout=30)
        assert process.wait(timeout=30) == 0
    finally:
        os.close(master)
        stop_process(process)  # reaped, whatever failed
    assert "\x1b[?25h" in rest  # ... and shows it again when killed
    assert "Traceback" not in output + rest


# -- logging and progress -----------------------------------------------------------------------


def test_the_service_logs_with_v_and_is_quiet_without(tmp_path):
    quiet = tmp_path / "quiet"
    started = subprocess.run(
        [sys.executable, "-m", "embedshare.cli", "serve", "--detach", "--store", str(quiet), "--model", "hash:64"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert started.returncode == 0, started.stderr
    subprocess.run([sys.executable, "-m", "embedshare.cli", "stop", "--store", str(quiet)], timeout=60)
    assert " INFO " not in (quiet / "run" / "service.log").read_text()

    loud = tmp_path / "loud"
    started = subprocess.run(
        [sys.executable, "-m", "embedshare.cli", "-v", "serve", "--detach", "--store", str(loud), "--model", "hash:64"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert started.returncode == 0, started.stderr
    subprocess.run([sys.executable, "-m", "embedshare.cli", "stop", "--store", str(loud)], timeout=60)
    assert re.search(r"embedshare.service INFO serving hash:64:v1", (loud / "run" / "service.log").read_text())


def test_a_foreground_service_logs_to_stderr_with_v(tmp_path):
    store = tmp_path / "fg"
    process = subprocess.Popen(
        [sys.executable, "-m", "embedshare.cli", "-v", "serve", "--store", str(store), "--model", "hash:64"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = []
        for line in process.stderr:  # bounded by the test timeout
            lines.append(line)
            if re.search(r"embedshare.service INFO serving hash:64:v1", line):
                break
        else:
            raise AssertionError("".join(lines))
        conn = ServiceConnection(store / "run" / "service.sock")
        conn.request("shutdown", timeout=30)
        conn.close()
        assert process.wait(timeout=30) == 0
    finally:
        stop_process(process)  # reaped, whatever failed


def test_index_build_shows_a_progress_bar_on_a_terminal(tmp_path):
    argv = [
        sys.executable,
        "-m",
        "embedshare.cli",
        "index",
        "build",
        "bundled",
        "--store",
        str(tmp_path / "s"),
        "--model",
        "hash:64",
    ]
    process, master, output = run_in_pty(argv, re.compile(r"index of \d+ tools"))
    try:
        assert process.wait(timeout=60) == 0
    finally:
        os.close(master)
        stop_process(process)
    assert re.search(r"embedding tools: 100%.*\d+/\d+", output), output


def test_library_code_never_prints_or_configures_logging():
    """Only command lines write to the terminal or set up logging: cli/, and the ``main()``
    of a module run with ``python -m``. The library logs, quiet unless the app opts in."""
    root = Path(embedshare.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith("cli/"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        entry_points = {
            id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "main" for n in ast.walk(f)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or id(node) in entry_points:
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id == "print":
                offenders.append(f"{relative}:{node.lineno} print()")
            if isinstance(func, ast.Attribute) and func.attr == "basicConfig":
                offenders.append(f"{relative}:{node.lineno} logging.basicConfig()")
    assert not offenders, offenders
