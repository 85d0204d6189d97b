"""Where things live inside a store folder (one store = one cache, its indexes, one service).

    <store>/cache/          the LMDB embedding cache (all models)
    <store>/indexes/<id>/   tool index folders, one per (registry content, model)
    <store>/run/            0700: the service's socket (0600), lock and state file
    <store>/store.json      what the store serves: its model and registry (store/record.py)

Every folder is 0700 and every file 0600, whatever the umask; existing folders are checked
(owner, mode, not a link) by :func:`~embedshare.store.files.private_dir` before use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .files import private_dir


@dataclass(frozen=True)
class StoreLayout:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def indexes(self) -> Path:
        return self.root / "indexes"

    @property
    def record(self) -> Path:
        return self.root / "store.json"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def socket(self) -> Path:
        return self.run / "service.sock"

    @property
    def lock(self) -> Path:
        return self.run / "service.lock"

    @property
    def state(self) -> Path:
        return self.run / "service.json"

    @property
    def log(self) -> Path:
        return self.run / "service.log"

    def make_private_root(self) -> Path:
        """Create (or check) the store folder: this user's alone, 0700 (see ``private_dir``)."""
        return private_dir(self.root)

    def make_private_run_dir(self) -> Path:
        """Create (or check) the store folder and ``run/``, both this user's alone (0700)."""
        self.make_private_root()
        return private_dir(self.run)
