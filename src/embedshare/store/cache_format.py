"""How the cache stores a vector and checks what it reads back, and how a cache file that is
shorter than its own metadata is caught before anything reads it.

- A value is the vector's float32 bytes followed by an 8-byte xxh3-64 digest of them. A value
  whose digest does not match (a flipped bit, a torn page) is a miss: it is recomputed and
  rewritten, never returned. A value of exactly ``dim * 4`` bytes is the format before
  checksums; it cannot be verified, so it is a miss too, rewritten the same way.
  Why xxh3 (the xxhash package) and not zlib.crc32 or blake2b: the digest of a 384-dim vector
  takes ~0.1 us, crc32 ~0.4 us, blake2b ~2 us, and a hit costs ~1.6 us in all; with xxh3 a hit
  got 0.27 us slower (bench/cache_hit_timeit.py, figures in docs/reliability.md).
- LMDB maps the data file; a read of a page past the end of a truncated file is a SIGBUS that
  kills the reader with no message. Its newest meta page says how many pages are in use
  (``last_pgno``), so a file shorter than ``(last_pgno + 1) * psize`` is refused at open.
- ``move_aside`` is what ``embedshare cache reset`` does: the damaged folder is renamed, not
  deleted, so nothing is lost that a person may want to look at.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import lmdb
import xxhash

CHECK_BYTES = 8  # the xxh3-64 digest after the float32 bytes
digest = xxhash.xxh3_64_digest  # bytes -> 8 bytes; EmbeddingCache._verified checks it

# LMDB errors that mean the file's content is wrong (not a full disk, not a busy map).
DAMAGE_ERRORS: tuple[type[lmdb.Error], ...] = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.InvalidError,
    lmdb.PanicError,
    lmdb.VersionMismatchError,
    lmdb.BadTxnError,
)

RESET_COMMAND = "embedshare cache reset --store {store}"


def seal(data: bytes) -> bytes:
    """The stored value of a vector's float32 bytes: the bytes and their digest."""
    return data + digest(data)


def sealed_size(dim: int) -> int:
    return dim * 4 + CHECK_BYTES


def truncation(env: lmdb.Environment, data_file: Path) -> str | None:
    """Why ``data_file`` is shorter than ``env``'s newest meta page says, or None if it is not.

    Safe on a truncated file: ``info`` and ``stat`` read the two meta pages at the start of
    the file, which LMDB has already read at open. Read the meta first, the size second: a
    writer extends the file before it writes the meta page that counts the new pages.
    """
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    try:
        size = data_file.stat().st_size
    except OSError:
        return None
    if size >= needed:
        return None
    return f"{data_file} has {size} bytes, but its own metadata says {needed} (the file was cut short)"


def damaged_message(path: Path, problem: str) -> str:
    store = path.parent
    return (
        f"the embedding cache at {path} is damaged: {problem}. Move it aside and start with an "
        f"empty cache: {RESET_COMMAND.format(store=store)}"
    )


def move_aside(cache_dir: Path) -> Path:
    """Rename ``cache_dir`` to ``<name>.broken-<UTC time>`` (the caller holds the store's service
    lock, so no service has it open); returns the new path. A new, empty cache is created by
    whatever opens the store next."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = cache_dir.with_name(f"{cache_dir.name}.broken-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = cache_dir.with_name(f"{cache_dir.name}.broken-{stamp}-{n}")
    os.rename(cache_dir, target)
    return target
