"""Tasks run in pool workers and Popen'd interpreters by tests/manager/test_failover.py.

Each uses only ``get_embedding_manager()``, as user task code does, and returns what it got in
a form the test compares with a fault-free local manager's (``failover_expected``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

QUERIES = [f"read a csv file number {i}" for i in range(60)] + ["send an http post", "compress a folder"]


def failover_texts(index: int) -> tuple[str, str, list[str]]:
    """A text no other task asks for, a repeated one, and three (one new, two shared)."""
    return (
        f"failover task {index} new text",
        f"failover repeated text {index % 25}",
        [f"failover task {index} batch", f"failover shared {index % 7}", f"failover shared {index % 11} b"],
    )


def failover_expected(manager, index: int) -> dict:
    new, repeated, three = failover_texts(index)
    vectors = [manager.get_embedding(new), manager.get_embedding(repeated), manager.get_embeddings(three)]
    digest = hashlib.sha256(b"".join(v.tobytes() for v in vectors)).hexdigest()
    top = [r.name for r in manager.search(QUERIES[index % len(QUERIES)], k=3)]
    return {"index": index, "digest": digest, "top": top}


def failover_task(index: int) -> dict:
    from embedshare import get_embedding_manager

    manager = get_embedding_manager()
    result = failover_expected(manager, index)
    result["mode"] = manager.stats()["mode"]
    result["pid"] = os.getpid()
    return result


def main() -> None:
    """``python failover_tasks.py N``: run task N in this interpreter, print its result as JSON."""
    from embedshare import get_embedding_manager

    result = failover_task(int(sys.argv[1]))
    manager = get_embedding_manager()
    result["tools"] = manager.stats()["tools"]
    result["local_model_loaded"] = hasattr(manager, "embedder")  # only a local manager has one
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
