"""Commands that use a trained run: ``predict``, ``evaluate`` and ``features``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from napari_metalseg.cli.errors import user_errors
from napari_metalseg.cli.values import floats, input_files
from napari_metalseg.errors import MetalsegError

FP32_HELP = (
    "Predict in fp32, no bfloat16 autocast of the image encoder (default: bf16 autocast on CUDA and on CPUs with "
    "native bf16, AVX512-BF16 / AMX; METALSEG_FP32=1 does the same as --fp32)."
)
fp32_option = click.option("--fp32", is_flag=True, help=FP32_HELP)
"""``--fp32`` of the commands that predict: opts out of :func:`napari_metalseg.precision.prediction_bf16`."""


@click.command()
@click.option("--model", "run", required=True, type=click.Path(path_type=Path), help="Trained run directory.")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(path_type=Path),
    help="A micrograph, a folder of micrographs, or a dataset folder.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Output dataset folder (images/, masks/, phases.json), ready for correction and retraining.",
)
@click.option(
    "--ratio",
    default=None,
    help="Known phase fractions, e.g. 0.1,0.7,0.2 (one value per phase): the masks get these fractions (a model "
    "trained with ratio guidance also reads them).",
)
@click.option("--box", default=None, help="Predict only inside this box: x0,y0,x1,y1 in pixels.")
@click.option("--device", default="auto", show_default=True)
@click.option("--tta", is_flag=True, help="Test-time augmentation: average the 8 flips/rotations (8x the time).")
@fp32_option
@click.option("--bf16", is_flag=True, hidden=True, help="Deprecated, does nothing: bf16 is the default (see --fp32).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes sharing a folder on this machine (each takes every N-th micrograph; the CPU cores are divided "
    "among them). torchrun does the same across GPUs and nodes.",
)
@user_errors
def predict(
    run: Path,
    input_path: Path,
    out: Path,
    ratio: str | None,
    box: str | None,
    device: str,
    fp32: bool,
    bf16: bool,
    tta: bool,
    workers: int,
) -> None:
    """Predict phase masks for micrographs and write them in the dataset format.

    A folder is predicted micrograph by micrograph, each mask written atomically and recorded in the output's
    manifest.jsonl: a rerun after an interruption skips what is done. A micrograph that fails is reported and the
    others go on (exit status 1 when any failed). Under torchrun, each rank takes its share of the folder.
    """
    from napari_metalseg.batch import predict_folder_job
    from napari_metalseg.cli.progress import run_with_bar
    from napari_metalseg.distributed import environment_rank, rank_device
    from napari_metalseg.predict import Predictor

    if bf16:
        click.echo(
            "note: --bf16 is deprecated and does nothing: bf16 is the default where native (--fp32 opts out)", err=True
        )
    files = input_files(input_path)
    box_values = floats(box, "--box")
    ratios = floats(ratio, "--ratio")
    shard = environment_rank()
    workers = min(workers, len(files))  # no idle worker
    if workers > 1:
        if shard[1] > 1:
            raise MetalsegError("--workers under torchrun: its ranks already share the folder; use one or the other")
        options = [*(["--ratio", ratio] if ratio else []), *(["--box", box] if box else [])]
        flags = [*(["--tta"] if tta else []), *(["--fp32"] if fp32 else [])]
        args = ["predict", "--model", str(run), "--input", str(input_path), "--out", str(out), "--device", device]
        _predict_with_workers(workers, [*args, *options, *flags], files, out)
        return
    predictor = Predictor.from_run(run, device=rank_device(device), bf16=False if fp32 else None)
    job = predict_folder_job(predictor, files, out, ratios=ratios, box=box_values, tta=tta, shard=shard)
    result = run_with_bar(job, "predicting", bar_kinds=("predict",), show_message=False)
    if len(files) == 1 and result.failed:  # one micrograph asked for: its error is the command's error
        raise MetalsegError(next(iter(result.failed.values())))
    names = predictor.phases.names
    summary = {
        "out": str(out),
        "written": len(result.written),
        "skipped (done before)": len(result.skipped),
        "failed": result.failed,
        "fractions": {name: dict(zip(names, values, strict=True)) for name, values in result.fractions.items()},
    }
    click.echo(json.dumps(summary, indent=2))
    _exit_on_failures(result.failed, len(files))


def _predict_with_workers(count: int, args: list[str], files: list[Path], out: Path) -> None:
    """``predict`` of a folder by ``count`` worker processes (:func:`~napari_metalseg.cli.workers.run_workers`): one
    progress bar from the manifests, then the workers' summaries merged into one (exit status 1 when a micrograph
    failed, the worker's status when one crashed)."""
    from napari_metalseg.batch import Manifest
    from napari_metalseg.cli.workers import run_workers

    names = {f.stem for f in files}
    results = run_workers(count, args, done=lambda: len(names & Manifest(out).entries().keys()), total=len(files))
    summary: dict = {
        "out": str(out),
        "workers": count,
        "written": 0,
        "skipped (done before)": 0,
        "failed": {},
        "fractions": {},
    }
    crashed = []
    for result in results:
        try:
            part = json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])
        except ValueError:
            crashed.append(result)
            continue
        for key in ("written", "skipped (done before)"):
            summary[key] += part[key]
        summary["failed"] |= part["failed"]
        summary["fractions"] |= part["fractions"]
    click.echo(json.dumps(summary, indent=2))
    for result in crashed:
        lines = result.stderr.strip().splitlines()
        click.echo(
            f"worker {result.rank} of {count} ended with status {result.returncode}: "
            f"{lines[-1] if lines else 'no message'} (rerun the command: what is done is skipped)",
            err=True,
        )
    crash_status = (max(r.returncode for r in crashed) or 1) if crashed else 0
    _exit_on_failures(summary["failed"], len(files), status=crash_status)


def _exit_on_failures(failed: dict[str, str], total: int, status: int = 0) -> None:
    """One ``failed: <file>: <reason>`` line per micrograph that failed, then exit with ``status`` (a crashed
    worker's) or 1 when one failed; nothing when neither."""
    for name, reason in failed.items():
        click.echo(f"failed: {name}: {reason}", err=True)
    if failed:
        click.echo(f"{len(failed)} of {total} micrographs failed (the others are written)", err=True)
    if status or failed:
        sys.exit(status or 1)


@click.command()
@click.option("--model", "run", required=True, type=click.Path(path_type=Path), help="Trained run directory.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset folder with masks.")
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]), default="test", show_default=True)
@click.option("--ratio", default=None, help="Known phase fractions for every image (e.g. 0.1,0.7,0.2).")
@click.option("--true-ratio", is_flag=True, help="Give each image its true phase fractions (upper bound).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write all scores here.")
@click.option("--device", default="auto", show_default=True)
@fp32_option
@user_errors
def evaluate(
    run: Path,
    data: Path,
    split: str,
    ratio: str | None,
    true_ratio: bool,
    json_out: Path | None,
    device: str,
    fp32: bool,
) -> None:
    """Score a trained model on a dataset split: Dice per magnification, in the seed study's table format."""
    from napari_metalseg.data.dataset import load_dataset
    from napari_metalseg.data.samples import load_samples
    from napari_metalseg.io.atomic import atomic_write_text
    from napari_metalseg.metrics import Evaluation, format_seed_table
    from napari_metalseg.phases import phase_fractions
    from napari_metalseg.predict import Predictor

    dataset = load_dataset(data)
    predictor = Predictor.from_run(run, device=device, bf16=False if fp32 else None)
    if dataset.phases.names != predictor.phases.names:
        raise MetalsegError(f"{data}: phases {dataset.phases.names} differ from the model's {predictor.phases.names}")
    samples = load_samples(dataset.labelled_split(split))
    if not samples:
        raise MetalsegError(f"{data}: no labelled images in split {split!r}")
    ratios = floats(ratio, "--ratio")
    evaluation = Evaluation(dataset.phases.names, boundaries=True)
    with click.progressbar(samples, label="evaluating", file=sys.stderr) as bar:
        for s in bar:
            r = phase_fractions(s.mask, len(dataset.phases)) if true_ratio else ratios
            labels = predictor.predict(s.image, ratios=r, pixel_size_um=s.pixel_size_um).labels
            evaluation.add(s.name, labels, s.mask, s.magnification)
    click.echo(format_seed_table({run.name: evaluation.by_magnification()}))
    click.echo(evaluation.format_errors_by_boundary())
    if json_out:
        atomic_write_text(json_out, json.dumps(evaluation.to_dict(), indent=2) + "\n")


@click.command()
@click.option("--model", "run", required=True, type=click.Path(path_type=Path), help="Trained run directory.")
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path), help="A micrograph.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the PNGs.")
@click.option("--device", default="auto", show_default=True)
@user_errors
def features(run: Path, input_path: Path, out: Path, device: str) -> None:
    """Per-block encoder feature maps (PCA to RGB) of the base and adapted model, plus one grid figure."""
    from PIL import Image

    from napari_metalseg.features import encoder_feature_maps, feature_grid_figure
    from napari_metalseg.io import read_micrograph
    from napari_metalseg.models.lora import has_lora
    from napari_metalseg.predict import resolve_device
    from napari_metalseg.runs import load_run

    device = resolve_device(device)
    model, config = load_run(run, device=device)
    image = read_micrograph(input_path).image
    adapted = encoder_feature_maps(model, image, device)
    if has_lora(model):
        base = encoder_feature_maps(model, image, device, base=True)
    else:  # the same model before training: pretrained SAM, or the initial weights of a from-scratch model
        untrained, _ = config.spec.build(device)
        base = encoder_feature_maps(untrained.eval(), image, device, label="base")
    out.mkdir(parents=True, exist_ok=True)
    for fm in (base, adapted):
        for i, rgb in enumerate(fm.maps):
            Image.fromarray(rgb).save(out / f"block{i + 1:02d}_{fm.label}.png")
    feature_grid_figure(adapted, base, image, out / "features.png")
    click.echo(
        json.dumps(
            {
                "out": str(out),
                "blocks": int(adapted.maps.shape[0]),
                "map_shape": list(adapted.maps.shape[1:3]),
                "scale": list(adapted.scale),
            },
            indent=2,
        )
    )
