"""The original manager's call patterns, as the seed's code makes them, after the one-line change.

Run as a script (a ``Popen``'d shard: ``python compat_calls.py REGISTRY [config|env]``) it prints
one JSON report; imported, ``run_calls`` gives the same report in this process.
"""

from __future__ import annotations

import json
import os
import sys

QUERIES = [
    "read a file",
    "send an HTTP POST with a JSON body",
    "compute statistics of numbers",
    "schedule a job",
    "convert units",
    "parse csv text",
]
TOOLS = ["file_operations_reader", "network_fetcher", "computation_analyzer", "utility_logger"]


def run_calls(registry: str, how: str = "env") -> dict:
    from embedshare.compat import (
        EmbeddingConfig,
        MCPEmbeddingManager,
        SearchResult,
        get_embedding_manager,
        get_embedding_manager_info,
    )

    if how == "config":
        em = MCPEmbeddingManager(EmbeddingConfig(model="hash:64", dimension=64))
    else:
        em = get_embedding_manager()
    report: dict = {
        "pid": os.getpid(),
        "mode": em.manager.mode,
        "model": em.config.model,
        "dimension": em.config.dimension,
    }
    report["loaded_at_start"] = em.load_index()
    report["index_before_build"] = em.index is not None
    stats = em.build_index(registry, force_rebuild=True)
    report["build"] = {key: stats[key] for key in ("total_tools", "categories", "model", "dimension", "rebuilt")}
    report["tools"] = len(em.tool_embeddings)

    searches = {}
    for q in QUERIES:
        results = em.search(query=q, k=20, return_scores=True)
        assert all(isinstance(r, SearchResult) for r in results)
        searches[q] = [[result.tool_name, round(result.score, 6), result.category] for result in results]
    report["searches"] = searches
    filtered = em.search("download a file", k=5, category_filter="network", similarity_threshold=0.05)
    report["filtered"] = [[r.tool_name, r.category, bool(r.reason), r.mcp_protocol["name"]] for r in filtered]

    similar = {}
    for t in TOOLS:
        similar[t] = [[name, round(score, 6)] for name, score in em.find_similar_tools(t, k=5)]
    report["similar"] = similar
    report["same_category"] = [
        name for name, _ in em.find_similar_tools("network_fetcher", k=3, same_category_only=True)
    ]

    protocols = em.get_tool_protocols(TOOLS[:2], include_embeddings=True)
    report["protocols"] = {name: [sorted(p), len(p["embedding"])] for name, p in protocols.items()}
    embedding = em.tool_embeddings["network_fetcher"]
    report["tool_embedding"] = [
        embedding.tool_name,
        embedding.category,
        embedding.metadata["operation"],
        round(float(embedding.combined_embedding @ em._get_embedding("fetch a url")), 6),
    ]
    report["info"] = get_embedding_manager_info()
    report["cache_stats_keys"] = sorted(em.get_cache_stats())
    report["shared_address"] = em.manager.stats().get("address")
    report["heavy_modules"] = sorted(m for m in ("logging", "asyncio", "psutil", "torch") if m in sys.modules)
    return report


if __name__ == "__main__":
    print(json.dumps(run_calls(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "env")))
