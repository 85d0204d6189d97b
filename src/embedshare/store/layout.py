"""Where things live inside a store folder (one store = one cache, its indexes, one service).

    <store>/cache/          the LMDB embedding cache (all models)
    <store>/indexes/<id>/   tool index folders, one per (registry content, model)
    <store>/run/            0700: the service's socket (0600), lock and state file
    <store>/store.json      what the store serves: its model and registry (store/record.py)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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

    def make_private_run_dir(self) -> Path:
        """Create ``run/`` readable by this user only (0700), fixing looser modes."""
        self.run.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run, 0o700)
        return self.run
