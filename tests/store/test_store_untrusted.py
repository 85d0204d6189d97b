"""Files a store trusts only when they are its user's own (issue 21, "Files").

- An index folder owned by another user is refused however it is reached: named in
  store.json, through a symbolic link inside indexes/, by the service, by compat load_index.
- A FIFO (or any file that is not a regular file) as store.json is refused at once, not read
  for ever.
- A builder killed during `index build` leaves its .tmp-<pid>-* folder; the next build removes
  it (never a live builder's).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from helpers.processes import PYTHON
from helpers.users import NEEDS_ROOT, NOBODY

from embedshare.manager import EmbeddingManager
from embedshare.service.launcher import EmbeddingService, ServiceStartError
from embedshare.store import StoreLayout

pytestmark = pytest.mark.timeout(180)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)


def _give_away(folder: Path, uid: int = NOBODY) -> None:
    """As if another user had made ``folder`` and everything in it."""
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, uid, uid, follow_symlinks=False)


def _index_of_another_user(tmp_path: Path) -> Path:
    """An index of the bundled registry and hash:64 (what the tests' stores serve), built in a
    store of its own and then handed to uid 65534, in a folder that user owns."""
    theirs = tmp_path / "theirs"
    EmbeddingManager(theirs, model="hash:64", registry="bundled").close()
    [built] = (theirs / "indexes").iterdir()
    folder = theirs / "index"
    shutil.move(built, folder)
    _give_away(theirs)
    return folder


def _point_the_record_at(store: Path, folder: Path) -> None:
    """The store's record names ``folder`` as the index of the registry it serves."""
    EmbeddingManager(store, model="hash:64", registry="bundled").close()  # the same registry and model
    record = json.loads((store / "store.json").read_text())
    own = Path(record["registry"]["index"])
    shutil.rmtree(own)
    record["registry"]["index"] = str(folder)
    (store / "store.json").write_text(json.dumps(record))


def _link_inside_indexes(store: Path, folder: Path) -> None:
    """indexes/<the index's name> is a symbolic link to ``folder`` (store.json unchanged)."""
    EmbeddingManager(store, model="hash:64", registry="bundled").close()
    own = Path(json.loads((store / "store.json").read_text())["registry"]["index"])
    shutil.rmtree(own)
    own.symlink_to(folder)


REACHED = {"store.json": _point_the_record_at, "a link in indexes/": _link_inside_indexes}


@needs_root
@pytest.mark.parametrize("reached", REACHED)
def test_a_manager_refuses_an_index_folder_of_another_user(tmp_path, store, reached):
    folder = _index_of_another_user(tmp_path)
    REACHED[reached](store, folder)
    manager = EmbeddingManager(store, model="hash:64")
    try:
        with pytest.raises(PermissionError) as info:
            manager.search("read a csv file")
    finally:
        manager.close()
    message = str(info.value)
    assert f"uid {NOBODY}" in message or "symbolic link" in message, message
    assert "\n" not in message


@needs_root
@pytest.mark.parametrize("reached", REACHED)
def test_the_service_refuses_an_index_folder_of_another_user(tmp_path, store, reached):
    folder = _index_of_another_user(tmp_path)
    REACHED[reached](store, folder)
    with (
        pytest.raises(ServiceStartError) as info,
        EmbeddingService(store, model="hash:64", export_env=False, start_timeout=120),
    ):
        pass
    assert f"uid {NOBODY}" in str(info.value) or "symbolic link" in str(info.value), str(info.value)


@needs_root
def test_compat_load_index_refuses_an_index_folder_of_another_user(tmp_path, make_service, monkeypatch):
    from embedshare.compat import get_embedding_manager

    make_service(registry="bundled")
    monkeypatch.setenv("EMBEDSHARE_MODEL", "hash:64")
    folder = _index_of_another_user(tmp_path)
    compat = get_embedding_manager()
    with pytest.raises(PermissionError, match=f"belongs to uid {NOBODY}"):
        compat.load_index(folder)


@needs_root
def test_a_file_of_another_user_inside_an_index_folder_of_ours_is_refused(tmp_path, store):
    manager = EmbeddingManager(store, model="hash:64", registry="bundled")
    folder = Path(manager.index_path)
    manager.close()
    os.chown(folder / "tools.jsonl", NOBODY, NOBODY)
    with pytest.raises(PermissionError, match=f"tools.jsonl belongs to uid {NOBODY}"):
        EmbeddingManager(store, model="hash:64").search("read a csv file")


def test_a_fifo_as_store_json_is_one_line_not_a_hang(store):
    StoreLayout(store).make_private_root()
    os.mkfifo(store / "store.json", 0o600)
    try:
        result = subprocess.run(
            [PYTHON, "-m", "embedshare", "search", "read a csv", "--store", str(store), "--model", "hash:64"],
            capture_output=True,
            text=True,
            timeout=60,  # it used to wait for a writer for ever
        )
    except subprocess.TimeoutExpired:
        pytest.fail("`embedshare search` hung reading a FIFO as store.json")
    assert result.returncode == 1, result
    assert result.stderr.strip().splitlines() == [
        f"error: {(store / 'store.json').resolve()} is not a file; remove it and let embedshare create it"
    ], result.stderr


_KILLED_MID_BUILD = """
import sys
from embedshare.manager import EmbeddingManager
from embedshare.store import index_build

def hold(folder, names):  # the arrays are written in .tmp-*: say so, and wait to be killed
    print("building", flush=True)
    sys.stdin.read()

index_build._manifest_files = hold
EmbeddingManager(sys.argv[1], model="hash:64", registry="bundled")
"""


def _temp_folders(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "indexes").iterdir() if p.name.startswith(".tmp-"))


def test_a_builder_killed_mid_build_leaves_no_temp_folder_for_ever(store):
    builder = subprocess.Popen(
        [PYTHON, "-c", _KILLED_MID_BUILD, str(store)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert builder.stdout.readline() == "building\n"
        [left] = _temp_folders(store)
    finally:
        builder.send_signal(signal.SIGKILL)
        builder.wait()
    live = store / "indexes" / f".tmp-{os.getpid()}-being-built"  # a live builder's: never removed
    live.mkdir()
    EmbeddingManager(store, model="hash:64", registry="bundled").close()  # the next build
    assert _temp_folders(store) == [live.name], f"{left} was left behind"
