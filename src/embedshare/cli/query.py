"""``embedshare index``, ``search`` and ``embed``: build and read the store's tool indexes."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import (
    errors_as_messages,
    model_option,
    open_manager,
    progress_callback,
    resolve_model,
    store_layout,
    store_option,
    store_registry_option,
)


@click.group()
def index() -> None:
    """Build tool indexes, list the store's, and show what one holds."""


@index.command("build")
@click.argument("registry")
@store_option
@model_option
def index_build(registry: str, store: Path | None, model: str | None) -> None:
    """Embed every tool of REGISTRY (a JSON file, or 'bundled'), write its index, and record it
    as the store's registry (what search, serve and workers use when given none)."""
    from ..client.state import read_state, service_lock_held
    from ..manager import EmbeddingManager

    with errors_as_messages():
        layout = store_layout(store)
        manager = EmbeddingManager(layout.root, model=resolve_model(model, store))
        idx = manager.load_registry(registry, progress=progress_callback("embedding tools"))
        click.echo(f"index of {len(idx)} tools ({idx.model_id}, {idx.dim} dims) at {idx.path}")
        click.echo(
            f"the store {layout.root} now serves it: search, serve and workers use it when given no registry", err=True
        )
        served = read_state(layout).get("index")
        if service_lock_held(layout) and served != str(idx.path):
            click.echo(
                f"note: the running service serves another index ({served}); restart it "
                f"(`embedshare stop --store {layout.root}`, then `embedshare serve --store "
                f"{layout.root} --detach`) to serve this one",
                err=True,
            )


@index.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_option
def index_list(as_json: bool, store: Path | None) -> None:
    """List the store's index folders: model, tools, and the registry each was built from."""
    from ..store.catalog import list_indexes

    with errors_as_messages():
        indexes = list_indexes(store_layout(store).indexes)
        if as_json:
            click.echo(json.dumps(indexes, indent=2))
            return
        for s in indexes:
            if "damaged" in s:
                click.echo(f"{s['name']}  damaged: {s['damaged']}")
            else:
                click.echo(
                    f"{s['name']}  {s['model_id']} ({s['dim']} dims)  {s['tools']} tools  "
                    f"registry {s['registry_hash'][:12]} {s['registry_source'] or ''}".rstrip()
                )
        if not indexes:
            click.echo(f"no index in {store_layout(store).indexes}")


@index.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_option
def index_show(name: str, as_json: bool, store: Path | None) -> None:
    """Show one index: NAME is its folder (as `index list` prints it, or a unique prefix) or a path."""
    from ..store.catalog import describe, find_index

    with errors_as_messages():
        info = describe(find_index(store_layout(store).indexes, name))
        if as_json:
            click.echo(json.dumps(info, indent=2))
            return
        click.echo(f"index {info['path']}")
        click.echo(
            f"model {info['model_id']} ({info['dim']} dims)" + (f", {info['ann']} search" if info["ann"] else "")
        )
        click.echo(f"registry {info['registry_hash']} from {info['registry_source']}")
        click.echo(f"{info['tools']} tools in {len(info['categories'])} categories:")
        for category, names in info["categories"].items():
            click.echo(f"  {category} ({len(names)}): {', '.join(names)}")


@click.command()
@click.argument("query")
@click.option("-k", default=5, show_default=True, help="How many tools.")
@click.option("--category", default=None, help="Only tools of this category.")
@click.option("--threshold", default=0.0, show_default=True, help="Lowest score to return.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@store_option
@model_option
@store_registry_option
def search(
    query: str,
    k: int,
    category: str | None,
    threshold: float,
    as_json: bool,
    store: Path | None,
    model: str | None,
    registry: str | None,
) -> None:
    """Find the tools that best match QUERY."""
    from ..settings import whole_number

    with errors_as_messages():
        whole_number("-k", k, 1)  # before a model is loaded or an index built
        manager = open_manager(store, model, registry)
        results = manager.search(query, k=k, category=category, threshold=threshold)
        if as_json:
            click.echo(json.dumps([r.to_dict() for r in results], indent=2))
            return
        for rank, r in enumerate(results, 1):
            click.echo(f"{rank}. {r.name:<28} {r.score:.3f}  [{r.category}]  {r.reason}")
        if not results:
            click.echo("no tool matches")


@click.command()
@click.argument("texts", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the vectors as JSON.")
@store_option
@model_option
def embed(texts: tuple[str, ...], as_json: bool, store: Path | None, model: str | None) -> None:
    """Embed TEXTS (through the cache) and print their vectors."""
    with errors_as_messages():
        manager = open_manager(store, model, None)
        vectors = manager.get_embeddings(list(texts))
        if as_json:
            click.echo(json.dumps({"model_id": manager.model_id, "vectors": vectors.tolist()}))
            return
        import numpy as np

        with np.printoptions(precision=4, threshold=8, edgeitems=3, suppress=True):
            for text, vector in zip(texts, vectors, strict=True):
                click.echo(f"{text[:40]!r}: {vector}")
