"""The ``cache`` command: the size of the embedding cache on disk, and clearing it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from napari_metalseg.cli.errors import user_errors


@click.command()
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The cache folder (default: $METALSEG_CACHE_DIR, else the user cache folder).",
)
@click.option("--clear", is_flag=True, help="Delete the cached embeddings (they are computed again when needed).")
@click.option("--json", "as_json", is_flag=True, help="Print folder, entries, bytes and limit as JSON.")
@user_errors
def cache(folder: Path | None, clear: bool, as_json: bool) -> None:
    """Show the embedding cache on disk (folder, entries, size, limit); --clear empties it."""
    from napari_metalseg.io.embedding_store import EmbeddingStore, default_max_bytes, default_store, format_bytes

    store = default_store() if folder is None else EmbeddingStore(folder, max_bytes=default_max_bytes())
    freed = None
    if clear:
        entries = store.count()
        freed = store.clear()
        if not as_json:
            click.echo(f"freed {format_bytes(freed)} ({entries} embedding{'' if entries == 1 else 's'})")
    if as_json:
        report = {
            "dir": str(store.root),
            "embeddings": store.count(),
            "bytes": store.size_bytes(),
            "max_bytes": store.max_bytes,
        }
        if freed is not None:
            report["freed_bytes"] = freed
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(store.describe())
