"""A store belongs to its user alone (issue 11, findings 1 and 2).

- Every folder of a store is 0700 and every file 0600, whatever the umask (0 and 022 tried, in
  a fresh interpreter that runs a service, builds an index, caches vectors and logs).
- A store, run/ or cache/ folder that another user owns or may write, a cache file of another
  user and a symbolic link are refused with an error naming the path, what was found and the fix.
- A client refuses a socket served by another uid (SO_PEERCRED), whatever the socket's path.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest
from helpers.figures import record
from helpers.users import NEEDS_ROOT, NOBODY, as_other_user

from embedshare.access import SharedEmbeddingManager
from embedshare.client.connection import ForeignServiceError, ServiceConnection
from embedshare.embedders import create_embedder
from embedshare.manager import EmbeddingManager
from embedshare.service.launcher import EmbeddingService, ServiceStartError
from embedshare.store import EmbeddingCache

EMBEDDER = create_embedder("hash:64")

_RUN_A_STORE = """
import os, sys
os.umask(int(sys.argv[2], 8))
from embedshare.service.launcher import EmbeddingService, ServiceStartError
from embedshare.access import SharedEmbeddingManager
with EmbeddingService(sys.argv[1], model="hash:64", registry="bundled", preload=["warm"], export_env=False) as svc:
    client = SharedEmbeddingManager(svc.address, on_failure="error")
    client.get_embeddings(["one", "two", "three"])
    client.search("read a csv file")
    modes = {}
    for folder, dirs, files in os.walk(sys.argv[1]):
        for name in dirs + files:
            path = os.path.join(folder, name)
            modes[os.path.relpath(path, sys.argv[1])] = oct(os.lstat(path).st_mode)
    modes["."] = oct(os.lstat(sys.argv[1]).st_mode)
    client.close()
print(repr(modes))
"""


@pytest.mark.parametrize("umask", ["000", "022"])
def test_every_folder_is_0700_and_every_file_0600_whatever_the_umask(tmp_path, umask):
    store = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-c", _RUN_A_STORE, str(store), umask],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    modes = {path: int(mode, 8) for path, mode in eval(done.stdout.strip().splitlines()[-1]).items()}
    assert {
        "cache/data.mdb",
        "cache/lock.mdb",
        "run/service.sock",
        "run/service.log",
        "run/service.json",
        "run/service.lock",
    } <= set(modes)
    assert any(p.startswith("indexes/") and p.endswith("vectors.npy") for p in modes)
    loose = {}
    for path, mode in modes.items():
        expected = 0o700 if stat.S_ISDIR(mode) else 0o600
        if stat.S_IMODE(mode) != expected:
            loose[path] = oct(stat.S_IMODE(mode))
    assert not loose, f"under umask {umask}: {loose}"
    record("store_modes", umask=umask, entries=len(modes), loose=len(loose))


def test_a_fresh_store_is_created_0700_even_under_an_open_parent(tmp_path):
    parent = tmp_path / "shared-tmp"
    parent.mkdir()
    os.chmod(parent, 0o1777)  # like /tmp: the README's --store /tmp/store must keep working
    manager = EmbeddingManager(parent / "store", model="hash:64")
    assert manager.get_embedding("hello").shape == (64,)
    assert stat.S_IMODE(os.lstat(parent / "store").st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(parent / "store" / "cache").st_mode) == 0o700


def test_an_older_store_readable_by_others_is_closed_not_refused(tmp_path):
    store = tmp_path / "store"
    with EmbeddingCache(store / "cache", EMBEDDER.model_id, EMBEDDER.dim) as cache:
        cache.put_many(["kept"], EMBEDDER.embed(["kept"]))
    for path, mode in ((store, 0o755), (store / "cache", 0o755), (store / "cache" / "data.mdb", 0o644)):
        os.chmod(path, mode)  # what an older version left under umask 022
    manager = EmbeddingManager(store, model="hash:64")
    assert manager.get_embedding("kept").tobytes() == EMBEDDER.embed(["kept"])[0].tobytes()
    assert stat.S_IMODE(os.lstat(store).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(store / "cache" / "data.mdb").st_mode) == 0o600


@pytest.mark.parametrize("where", [".", "cache", "run"])
def test_a_folder_writable_by_others_is_refused_with_the_fix(tmp_path, where):
    store = tmp_path / "store"
    (store / where).mkdir(parents=True, exist_ok=True)
    os.chmod(store / where, 0o777)  # pre-created open, e.g. by another user at /tmp/store
    target = str((store / where).resolve())
    with (
        pytest.raises((PermissionError, ServiceStartError)) as info,  # cache/: found by the service
        EmbeddingService(store, model="hash:64", export_env=False, start_timeout=60),
    ):
        pass
    message = str(info.value)
    assert target in message and "mode 0777" in message and f"chmod 700 {target}" in message


def test_serve_refuses_a_store_left_open_in_one_line(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    os.chmod(store, 0o777)
    done = subprocess.run(
        [sys.executable, "-m", "embedshare.cli", "serve", "--store", str(store), "--model", "hash:64", "--detach"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "writable by its group and other users" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (store / "run" / "service.sock").exists()


def test_a_symlinked_cache_folder_is_refused(tmp_path):
    store = tmp_path / "store"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    store.mkdir(mode=0o700)
    (store / "cache").symlink_to(elsewhere)
    with pytest.raises(PermissionError, match="is a symbolic link"):
        EmbeddingManager(store, model="hash:64")


@pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)
@pytest.mark.parametrize("owned", [".", "run", "cache", "cache/data.mdb"])
def test_a_store_part_owned_by_another_user_is_refused(tmp_path, owned):
    store = tmp_path / "store"
    with EmbeddingCache(store / "cache", EMBEDDER.model_id, EMBEDDER.dim) as cache:
        cache.put_many(["x"], EMBEDDER.embed(["x"]))
    (store / "run").mkdir(mode=0o700)
    os.chown(store / owned, NOBODY, NOBODY)  # as if that user had made it (or swapped the file in)
    with (
        pytest.raises((PermissionError, ServiceStartError)) as info,
        EmbeddingService(store, model="hash:64", export_env=False, start_timeout=60),
    ):
        pass
    assert f"belongs to uid {NOBODY}" in str(info.value) and str((store / owned).resolve()) in str(info.value)


@pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)
def test_another_user_cannot_read_the_cache(hash_service, tmp_path):
    """Finding 1: as uid 65534, open data.mdb (the store is reachable: its parents are opened)."""
    client = SharedEmbeddingManager(hash_service.address, on_failure="error")
    client.get_embeddings(["a secret text"])
    data = hash_service.layout.cache / "data.mdb"

    def read_it(report):
        try:
            with open("data.mdb", "rb") as f:
                report(f"read {len(f.read())} bytes")
        except OSError as exc:
            report(f"refused: {exc.strerror}")

    os.chmod(hash_service.layout.cache, 0o711)  # even with the folder opened, the file is 0600
    try:
        lines = as_other_user(read_it, cwd=data.parent)
    finally:
        os.chmod(hash_service.layout.cache, 0o700)
    assert lines == ["refused: Permission denied"]
    client.close()


def _fake_service(report):
    """As another user: bind a socket, take two clients, report what each of them sent."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("service.sock")
    server.listen(2)
    server.settimeout(30)
    report("listening")
    for _ in range(2):
        conn, _ = server.accept()
        conn.settimeout(10)
        try:
            received = conn.recv(65536)
        except OSError:
            received = b""
        report(f"received {len(received)} bytes")


@pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)
def test_a_client_refuses_a_socket_served_by_another_user(tmp_path):
    """Finding 2: another user's fake service socket is never believed, wherever it is."""
    rogue = tmp_path / "rogue"
    rogue.mkdir()
    os.chown(rogue, NOBODY, NOBODY)
    os.chmod(tmp_path, 0o711)
    errors = []

    def connect(_line):
        for attempt in (
            lambda: SharedEmbeddingManager(str(rogue / "service.sock"), on_failure="local"),
            lambda: ServiceConnection(str(rogue / "service.sock")),
        ):
            try:
                attempt()
            except ForeignServiceError as exc:
                errors.append(str(exc))

    lines = as_other_user(_fake_service, cwd=rogue, ready=connect)
    assert lines[0] == "listening"
    assert len(errors) == 2
    assert f"is served by uid {NOBODY}" in errors[0] and "not by you (uid 0)" in errors[0]
    assert lines[1:] == ["received 0 bytes"] * 2  # neither client sent anything (no hello)
    record("foreign_socket_refused", errors=len(errors), message=errors[0])


@pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)
def test_a_client_refuses_a_cache_file_swapped_in_by_another_user(hash_service):
    """Finding 2: a data.mdb of another uid (as if swapped in) is not read by a new client."""
    data = hash_service.layout.cache / "data.mdb"
    os.chown(data, NOBODY, NOBODY)
    try:
        with pytest.raises(PermissionError, match=f"data.mdb belongs to uid {NOBODY}"):
            SharedEmbeddingManager(hash_service.address, on_failure="error")
    finally:
        os.chown(data, 0, 0)
    assert SharedEmbeddingManager(hash_service.address, on_failure="error").get_embedding("x").shape == (64,)
