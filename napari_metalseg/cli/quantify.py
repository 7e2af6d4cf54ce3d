"""The ``quantify`` command: phase fractions per field and per sample (ASTM E562), from masks."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from napari_metalseg.cli.errors import user_errors
from napari_metalseg.cli.progress import run_with_bar
from napari_metalseg.cli.values import grid_spacing


@click.command()
@click.option(
    "--masks",
    "masks",
    required=True,
    type=click.Path(path_type=Path),
    help="Dataset folder (masks/, phases.json, metadata.csv), folder of mask PNGs, or one mask PNG.",
)
@click.option(
    "--phases",
    type=click.Path(path_type=Path),
    default=None,
    help="phases.json to use (default: the one in the --masks folder).",
)
@click.option(
    "--by",
    default="sample",
    show_default=True,
    help="Group fields into samples by: sample (metadata.csv column; else the folder), magnification, all.",
)
@click.option(
    "--grid",
    default="auto",
    show_default=True,
    help="E562 point-count grid spacing in pixels, or auto (about 16 x 16 points per field).",
)
@click.option(
    "--pixel-size",
    type=float,
    default=None,
    help="Pixel size in um for masks without pixel_size_um in metadata.csv (island sizes in um).",
)
@click.option(
    "--truth",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder or dataset of true masks with the same names (default: true_fraction_<phase> columns of "
    "metadata.csv when present).",
)
@click.option(
    "--csv",
    "csv_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Per-field CSV; the per-sample summary goes to <stem>_samples.csv next to it.",
)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Everything as JSON.")
@click.option(
    "--plot",
    "plot_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Bar chart (PNG) of mean fractions per sample with 95 % CI error bars.",
)
@user_errors
def quantify(
    masks: Path,
    phases: Path | None,
    by: str,
    grid: str,
    pixel_size: float | None,
    truth: Path | None,
    csv_out: Path | None,
    json_out: Path | None,
    plot_out: Path | None,
) -> None:
    """Phase fractions per field and per sample: area fraction, ASTM E562 point count, 95 % CI, %RA, islands.

    A folder is quantified mask by mask, each field recorded in the folder's quantify.jsonl: a rerun after an
    interruption takes the fields done from it. A mask that fails is reported and the others go on (exit status 1
    when any failed).
    """
    from napari_metalseg.quantify import quantify_masks_job

    spacing = grid_spacing(grid)
    folder = masks.is_dir()  # a folder of thousands: keep going past a bad mask, keep a record for a rerun
    job = quantify_masks_job(
        masks,
        phases=phases,
        by=by,
        grid_spacing=spacing,
        truth=truth,
        pixel_size_um=pixel_size,
        record=folder,
        keep_going=folder,
    )
    report = run_with_bar(job, "quantifying", show_message=False, length=0)
    click.echo(report.table())
    if csv_out:
        report.to_csv(csv_out)
        report.summary_csv(csv_out.with_name(f"{csv_out.stem}_samples.csv"))
    if json_out:
        report.to_json(json_out)
    if plot_out:
        report.plot(plot_out)
    if report.reused:
        click.echo(f"{report.reused} field(s) taken from the record of an earlier run (quantify.jsonl)", err=True)
    if report.failed:
        for name, reason in report.failed.items():
            click.echo(f"failed: {name}: {reason}", err=True)
        click.echo(f"{len(report.failed)} mask(s) failed (the others are quantified)", err=True)
        sys.exit(1)
