"""The ``metalseg`` command: one CLI with subcommands, all driving the same engine functions as the napari widgets."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from napari_metalseg.errors import MetalsegError


def _user_errors(func):
    """Turn a :class:`MetalsegError` into one ``error:`` line and exit status 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MetalsegError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MetalsegError(f"{what} {text!r}: expected comma-separated numbers, e.g. 0.5,0.3,0.2") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="napari-metalseg")
def main() -> None:
    """napari-metalseg: segment steel micrographs into phases and report phase fractions."""


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--no-crop", is_flag=True, help="Keep the instrument information band.")
@_user_errors
def info(file: Path, no_crop: bool) -> None:
    """Print a micrograph's shape, bit depth and SEM metadata as JSON."""
    from napari_metalseg.io import read_micrograph

    micrograph = read_micrograph(file, crop_info_band=not no_crop)
    click.echo(json.dumps(micrograph.info(), indent=2))


@main.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder to write.")
@click.option("--n", "n", default=12, show_default=True, help="Number of images.")
@click.option("--size", default=512, show_default=True, help="Image size in pixels (square).")
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed, same dataset).")
@click.option("--fractions", default=None, help="Target phase fractions, e.g. 0.5,0.3,0.2 (default: varied).")
@click.option("--magnifications", default="2700,3000,5000", show_default=True,
              help="Magnifications to cycle through.")
@_user_errors
def synth(out: Path, n: int, size: int, seed: int, fractions: str | None, magnifications: str) -> None:
    """Write a synthetic steel-micrograph dataset with exact ground truth."""
    from napari_metalseg.data.dataset import load_dataset
    from napari_metalseg.data.synth import write_synthetic_dataset

    mags = _floats(magnifications, "--magnifications")
    with click.progressbar(length=n, label="synthesising", file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.pos)

        write_synthetic_dataset(out, n=n, size=size, seed=seed, fractions=_floats(fractions, "--fractions"),
                                magnifications=mags, progress=progress)
    click.echo(json.dumps(load_dataset(out).summary(), indent=2))


@main.command()
@click.option("--out", default=Path("demo_out"), show_default=True, type=click.Path(path_type=Path),
              help="Folder for the demo's dataset and results.")
@click.option("--seed", default=0, show_default=True)
@_user_errors
def demo(out: Path, seed: int) -> None:
    """Headless end-to-end demo: synthesise a small dataset and summarise it."""
    from napari_metalseg.data.dataset import load_dataset
    from napari_metalseg.data.synth import write_synthetic_dataset

    data = out / "dataset"
    click.echo(f"[1/1] synthesising 9 steel micrographs (256 px) into {data}", err=True)
    write_synthetic_dataset(data, n=9, size=256, seed=seed)
    summary = load_dataset(data).summary()
    click.echo(json.dumps(summary, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
