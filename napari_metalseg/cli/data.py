"""Commands on data: ``info`` (a micrograph's metadata) and ``synth`` (a synthetic dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from napari_metalseg.cli.errors import user_errors
from napari_metalseg.cli.progress import run_with_bar
from napari_metalseg.cli.values import floats


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--no-crop", is_flag=True, help="Keep the instrument information band.")
@user_errors
def info(file: Path, no_crop: bool) -> None:
    """Print a micrograph's shape, bit depth and SEM metadata as JSON."""
    from napari_metalseg.io import read_micrograph

    micrograph = read_micrograph(file, crop_info_band=not no_crop)
    click.echo(json.dumps(micrograph.info(), indent=2))


@click.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder to write.")
@click.option("--n", "n", default=12, show_default=True, help="Number of images.")
@click.option("--size", default=512, show_default=True, help="Image size in pixels (square).")
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed, same dataset).")
@click.option("--fractions", default=None, help="Target phase fractions, e.g. 0.5,0.3,0.2 (default: varied).")
@click.option("--magnifications", default="2700,3000,5000", show_default=True, help="Magnifications to cycle through.")
@click.option("--overwrite", is_flag=True, help="Replace a synthetic dataset already in --out.")
@user_errors
def synth(out: Path, n: int, size: int, seed: int, fractions: str | None, magnifications: str, overwrite: bool) -> None:
    """Write a synthetic steel-micrograph dataset with exact ground truth."""
    from napari_metalseg.data.dataset import load_dataset
    from napari_metalseg.data.synth import write_synthetic_dataset_job

    mags = floats(magnifications, "--magnifications")
    target = floats(fractions, "--fractions")
    job = write_synthetic_dataset_job(
        out, n=n, size=size, seed=seed, fractions=target, magnifications=mags, overwrite=overwrite
    )
    run_with_bar(job, "synthesising", show_pos=False, show_message=False, length=n)
    click.echo(json.dumps(load_dataset(out).summary(), indent=2))
