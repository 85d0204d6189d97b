"""What `embedshare serve` writes where a person looks: timestamps in the foreground, one
line a request at -vv (never the texts), and the no-authentication warning on the terminal
with --detach. Real interpreters, as users start them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from helpers.extras import requires

from embedshare.access import SharedEmbeddingManager
from embedshare.store.layout import StoreLayout

pytestmark = pytest.mark.timeout(120)

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "


def cli(*args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "embedshare", *args], capture_output=True, text=True, timeout=90, **options
    )


def test_foreground_serve_lines_have_timestamps_and_vv_logs_each_request(tmp_path):
    store = tmp_path / "store"
    process = subprocess.Popen(
        [sys.executable, "-m", "embedshare", "-vv", "serve", "--store", str(store), "--model", "hash:64"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = []
    try:
        deadline = time.monotonic() + 60
        while not any("serving hash:64:v1" in line for line in lines):  # the service says it is up
            assert time.monotonic() < deadline and process.poll() is None, lines
            lines.append(process.stderr.readline())
        client = SharedEmbeddingManager(StoreLayout(store).socket)
        try:
            client.get_embeddings(["secret text one", "secret text two", "secret text three"])
        finally:
            client.close()
        process.terminate()
        lines += process.stderr.read().splitlines()
    finally:
        process.kill()
        process.wait(30)
        process.stderr.close()
    logged = [line for line in lines if " embedshare" in line]
    assert logged and all(re.match(STAMP, line) for line in logged), logged
    requests = [line for line in logged if "DEBUG request " in line]
    pattern = STAMP + rf"embedshare.service DEBUG request embed texts=3 [\d.]+ ms ok from pid {os.getpid()}$"
    assert any(re.match(pattern, line.rstrip()) for line in requests), requests
    assert any(" request hello texts=0 " in line for line in requests)
    assert not any("secret text" in line for line in lines)


@requires("http")
def test_detach_with_a_non_loopback_http_warns_on_the_terminal(tmp_path):
    store = str(tmp_path / "store")
    refused = cli("serve", "--store", store, "--model", "hash:64", "--detach", "--http", "0.0.0.0:0")
    assert refused.returncode == 1 and "needs a bearer token" in refused.stderr  # a token, or say so
    started = cli("serve", "--store", store, "--model", "hash:64", "--detach", "--http", "0.0.0.0:0", "--http-no-auth")
    try:
        assert started.returncode == 0, started.stderr
        assert (
            "warning: the HTTP endpoint on 0.0.0.0:0 is reachable beyond loopback, without "
            "authentication (--http-no-auth)" in started.stderr
        )
    finally:
        cli("stop", "--store", store)
    loopback = cli("serve", "--store", store, "--model", "hash:64", "--detach", "--http", "127.0.0.1:0")
    try:
        assert loopback.returncode == 0 and "warning" not in loopback.stderr
    finally:
        cli("stop", "--store", store)
