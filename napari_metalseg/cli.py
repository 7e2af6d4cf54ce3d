"""The ``metalseg`` command: one CLI with subcommands, all driving the same engine functions as the napari widgets."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path

import click

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models import FINETUNE_MODES, SAM_KINDS, TRAINING_GUIDANCE
from napari_metalseg.models.registry import DEFAULT_MODEL, MODEL_KINDS


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


@contextlib.contextmanager
def _naming_options(**options: str):
    """Name the CLI option in an engine error about one of the engine's arguments (``engine name="--flag"``).

    The engine's messages name values, not flags: an error whose ``value`` is one of ``options`` is prefixed with
    the option, and one that starts with the argument's engine name gets the option's name instead.
    """
    try:
        yield
    except MetalsegError as exc:
        message = str(exc)
        if exc.value in options:
            raise MetalsegError(f"{options[exc.value]}: {message}", value=exc.value) from exc
        for name, flag in options.items():
            if message.startswith(f"{name} "):
                raise MetalsegError(flag + message[len(name) :], value=name) from exc
        raise


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
@click.option("--magnifications", default="2700,3000,5000", show_default=True, help="Magnifications to cycle through.")
@click.option("--overwrite", is_flag=True, help="Replace a synthetic dataset already in --out.")
@_user_errors
def synth(out: Path, n: int, size: int, seed: int, fractions: str | None, magnifications: str, overwrite: bool) -> None:
    """Write a synthetic steel-micrograph dataset with exact ground truth."""
    from napari_metalseg.data.dataset import load_dataset
    from napari_metalseg.data.synth import write_synthetic_dataset_job
    from napari_metalseg.progress import run_job

    mags = _floats(magnifications, "--magnifications")
    target = _floats(fractions, "--fractions")
    with click.progressbar(length=n, label="synthesising", file=sys.stderr) as bar:
        job = write_synthetic_dataset_job(
            out, n=n, size=size, seed=seed, fractions=target, magnifications=mags, overwrite=overwrite
        )
        run_job(job, lambda event: bar.update(event.step - bar.pos))
    click.echo(json.dumps(load_dataset(out).summary(), indent=2))


def _run_events(events, label: str):
    """Drive a generator of ProgressEvents with a terminal progress bar; return the last event."""
    last = None
    bar = None
    try:
        for event in events:
            last = event
            if event.kind == "info":
                click.echo(event.message, err=True)
                continue
            if event.total and bar is None:
                bar = click.progressbar(
                    length=event.total,
                    label=label,
                    file=sys.stderr,
                    show_pos=True,
                    item_show_func=lambda e: e.message if e else "",
                )
                bar.__enter__()
            if bar is not None and event.kind in ("train", "predict", "embed"):
                bar.length = max(event.total, event.step)  # a time budget's total is an estimate that settles
                bar.update(event.step - bar.pos, event)
            if event.kind == "validate":
                click.echo(f"\n  step {event.step}: {event.message}", err=True)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    return last


@main.command()
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Dataset folder (images/, masks/, "
    "phases.json); the 'train' split (or unassigned images) trains, the 'val' split validates.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to write.")
@click.option(
    "--model",
    "kind",
    type=click.Choice(MODEL_KINDS),
    default=None,
    help=f"Default: {DEFAULT_MODEL} (the measured CPU winner, docs/quality.md), or LoRA on the SAM kind of "
    "--checkpoint. tiny/vit_b/vit_l/vit_h: SAM (tiny: compact, from scratch); unet3plus/elunet: the "
    "study's task-specific CNNs; classical: multiscale features + boosted trees (ilastik style, seconds).",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="Pretrained SAM weights, e.g. sam_vit_b_01ec64.pth (official or micro-sam export).",
)
@click.option(
    "--img-size",
    type=int,
    default=None,
    help="Model input (training crop) size (default 256 for tiny "
    "and the CNNs, 512 for vit_*, 1024 tiles for classical).",
)
@click.option("--width", type=int, default=None, help="unet3plus/elunet: base channels (default 8).")
@click.option(
    "--depth", type=int, default=None, help="unet3plus/elunet: down-sampling steps (default 4: five resolution levels)."
)
@click.option(
    "--budget-s",
    type=float,
    default=None,
    help="Train for this many seconds of wall clock (the schedule follows the clock), e.g. 180.",
)
@click.option(
    "--finetune",
    type=click.Choice(FINETUNE_MODES),
    default=None,
    help="What is trained (default: lora with a checkpoint, full without).",
)
@click.option("--lora-rank", type=int, default=8, show_default=True)
@click.option("--lora-alpha", type=float, default=None, help="LoRA alpha (default = rank).")
@click.option("--lora-dropout", type=float, default=0.0, show_default=True)
@click.option("--lora-mlp", is_flag=True, help="Also adapt the MLP layers (lin1/lin2) of the encoder.")
@click.option("--guidance", type=click.Choice(TRAINING_GUIDANCE), default="none", show_default=True)
@click.option("--steps", type=int, default=None, help="Optimizer steps (default: 10 epochs).")
@click.option("--epochs", type=int, default=None, help="Epochs (passes over the training pixels).")
@click.option("--batch-size", type=int, default=None, help="Crops per step (default: 2 for SAM, 4 for the CNNs).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: 1e-3 for SAM, 2e-3 for the CNNs).")
@click.option("--val-every", type=int, default=None, help="Validate every N steps (default: 5 times per run).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--fp32",
    is_flag=True,
    help="No bfloat16 autocast (default: bf16 on CUDA, and for the CNNs on CPUs with native bf16).",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--export-full", is_flag=True, help="Also write a merged stand-alone model_full.safetensors.")
@_user_errors
def train(
    data: Path,
    out: Path,
    kind: str | None,
    checkpoint: Path | None,
    img_size: int | None,
    width: int | None,
    depth: int | None,
    budget_s: float | None,
    finetune: str | None,
    lora_rank: int,
    lora_alpha: float | None,
    lora_dropout: float,
    lora_mlp: bool,
    guidance: str,
    steps: int | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    val_every: int | None,
    device: str,
    seed: int,
    fp32: bool,
    resume: bool,
    export_full: bool,
) -> None:
    """Train (or LoRA-adapt) a phase-segmentation model on a dataset."""
    from napari_metalseg.data.dataset import load_dataset
    from napari_metalseg.data.samples import load_samples
    from napari_metalseg.training import TrainConfig
    from napari_metalseg.training import train as run_training

    config = TrainConfig(
        model=kind,
        checkpoint=str(checkpoint) if checkpoint else None,
        img_size=img_size,
        width=width,
        depth=depth,
        budget_s=budget_s,
        finetune=finetune,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_mlp=lora_mlp,
        guidance=guidance,
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        val_every=val_every,
        device=device,
        seed=seed,
        bf16=False if fp32 else None,
    )
    dataset = load_dataset(data)
    train_samples = load_samples(dataset.labelled_split("train"))
    if not train_samples:
        raise MetalsegError(f"{data}: no labelled training images (masks/ with split train or no split)")
    val_samples = load_samples(dataset.labelled_split("val"))
    click.echo(
        f"training on {len(train_samples)} image(s), validating on {len(val_samples) or 'the training'} image(s)",
        err=True,
    )
    last = _run_events(
        run_training(
            train_samples,
            dataset.phases,
            out,
            config,
            val_samples=val_samples or None,
            resume=resume,
            export_full=export_full,
        ),
        "training",
    )
    click.echo(json.dumps({"run": str(out), "metrics": last.metrics if last else {}}, indent=2))


def _input_files(path: Path) -> list[Path]:
    from napari_metalseg.io import MICROGRAPH_SUFFIXES

    if path.is_file():
        return [path]
    if path.is_dir():
        folder = path / "images" if (path / "images").is_dir() else path
        files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in MICROGRAPH_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise MetalsegError(f"{folder}: no micrographs ({', '.join(MICROGRAPH_SUFFIXES)})")
        return files
    raise MetalsegError(f"{path}: no such file or folder")


@main.command()
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
@click.option("--ratio", default=None, help="Phase-ratio guidance, e.g. 0.1,0.7,0.2 (one value per phase).")
@click.option("--box", default=None, help="Predict only inside this box: x0,y0,x1,y1 in pixels.")
@click.option("--device", default="auto", show_default=True)
@click.option("--tta", is_flag=True, help="Test-time augmentation: average the 8 flips/rotations (8x the time).")
@click.option(
    "--bf16",
    is_flag=True,
    help="bfloat16 encoder on the CPU: about 2x faster on CPUs with AVX512-BF16 (always on with CUDA).",
)
@_user_errors
def predict(
    run: Path, input_path: Path, out: Path, ratio: str | None, box: str | None, device: str, bf16: bool, tta: bool
) -> None:
    """Predict phase masks for micrographs and write them in the dataset format."""
    from napari_metalseg.data.dataset import new_dataset, write_item
    from napari_metalseg.io import read_micrograph
    from napari_metalseg.predict import Predictor

    files = _input_files(input_path)
    box_values = _floats(box, "--box")
    predictor = Predictor.from_run(run, device=device, bf16=True if bf16 else None)
    ratios = _floats(ratio, "--ratio")
    new_dataset(out, predictor.phases)
    results = {}
    with click.progressbar(files, label="predicting", file=sys.stderr) as bar:
        for path in bar:
            micrograph = read_micrograph(path)
            phase_map = predictor.predict(micrograph.image, ratios=ratios, box=box_values, tta=tta)
            write_item(out, path.stem, micrograph.image, phase_map.labels)
            results[path.stem] = dict(zip(predictor.phases.names, phase_map.fractions().round(4).tolist()))
    click.echo(json.dumps({"out": str(out), "fractions": results}, indent=2))


@main.command()
@click.option("--model", "run", required=True, type=click.Path(path_type=Path), help="Trained run directory.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset folder with masks.")
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]), default="test", show_default=True)
@click.option("--ratio", default=None, help="Ratio guidance for every image (e.g. 0.1,0.7,0.2).")
@click.option("--true-ratio", is_flag=True, help="Guide each image with its true phase fractions (upper bound).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write all scores here.")
@click.option("--device", default="auto", show_default=True)
@_user_errors
def evaluate(
    run: Path, data: Path, split: str, ratio: str | None, true_ratio: bool, json_out: Path | None, device: str
) -> None:
    """Score a trained model on a dataset split: Dice per magnification, in the seed study's table format."""
    from napari_metalseg.data.dataset import load_dataset
    from napari_metalseg.data.samples import load_samples
    from napari_metalseg.io.atomic import atomic_write_text
    from napari_metalseg.metrics import Evaluation, format_seed_table
    from napari_metalseg.phases import phase_fractions
    from napari_metalseg.predict import Predictor

    dataset = load_dataset(data)
    predictor = Predictor.from_run(run, device=device)
    if dataset.phases.names != predictor.phases.names:
        raise MetalsegError(f"{data}: phases {dataset.phases.names} differ from the model's {predictor.phases.names}")
    samples = load_samples(dataset.labelled_split(split))
    if not samples:
        raise MetalsegError(f"{data}: no labelled images in split {split!r}")
    ratios = _floats(ratio, "--ratio")
    evaluation = Evaluation(dataset.phases.names)
    with click.progressbar(samples, label="evaluating", file=sys.stderr) as bar:
        for s in bar:
            r = phase_fractions(s.mask, len(dataset.phases)) if true_ratio else ratios
            evaluation.add(s.name, predictor.predict(s.image, ratios=r).labels, s.mask, s.magnification)
    click.echo(format_seed_table({run.name: evaluation.by_magnification()}))
    if json_out:
        atomic_write_text(json_out, json.dumps(evaluation.to_dict(), indent=2) + "\n")


@main.command()
@click.option("--model", "run", required=True, type=click.Path(path_type=Path), help="Trained run directory.")
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path), help="A micrograph.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the PNGs.")
@click.option("--device", default="auto", show_default=True)
@_user_errors
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
        untrained, _ = config["model"].build(device)
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


def _grid_spacing(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise MetalsegError(f"--grid {text!r}: expected a spacing in pixels (a whole number >= 1) or auto")
    return value


@main.command()
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
@_user_errors
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
    """Phase fractions per field and per sample: area fraction, ASTM E562 point count, 95 % CI, %RA, islands."""
    from napari_metalseg.progress import ProgressEvent, run_job
    from napari_metalseg.quantify import quantify_masks_job

    spacing = _grid_spacing(grid)
    with click.progressbar(length=0, label="quantifying", file=sys.stderr, show_pos=True) as bar:

        def progress(event: ProgressEvent) -> None:
            bar.length = event.total
            bar.update(event.step - bar.pos)

        job = quantify_masks_job(
            masks, phases=phases, by=by, grid_spacing=spacing, truth=truth, pixel_size_um=pixel_size
        )
        with _naming_options(phases="--phases", truth="--truth"):
            report = run_job(job, progress)
    click.echo(report.table())
    if csv_out:
        report.to_csv(csv_out)
        report.summary_csv(csv_out.with_name(f"{csv_out.stem}_samples.csv"))
    if json_out:
        report.to_json(json_out)
    if plot_out:
        report.plot(plot_out)


@main.command()
@click.option("--model", "kind", type=click.Choice(SAM_KINDS), default="vit_b", show_default=True)
@click.option("--img-size", type=int, default=1024, show_default=True, help="Model input size.")
@click.option("--image-size", type=int, default=1024, show_default=True, help="Side of the test micrograph.")
@click.option("--device", default="auto", show_default=True)
@click.option("--repeat", type=int, default=3, show_default=True, help="Best of N runs.")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast for the encoder (CPU with AVX512-BF16, or CUDA).")
@click.option("--no-reference", is_flag=True, help="Skip segment-anything's SamPredictor reference.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
@_user_errors
def benchmark(
    kind: str,
    img_size: int,
    image_size: int,
    device: str,
    repeat: int,
    bf16: bool,
    no_reference: bool,
    json_out: Path | None,
) -> None:
    """Time prediction (encoder, cached decoder) against segment-anything's SamPredictor (random weights)."""
    from napari_metalseg.benchmark import run_benchmark
    from napari_metalseg.io.atomic import atomic_write_text
    from napari_metalseg.predict import resolve_device

    results = run_benchmark(kind, img_size, image_size, resolve_device(device), repeat, not no_reference, bf16)
    click.echo(json.dumps(results, indent=2))
    if json_out:
        atomic_write_text(json_out, json.dumps(results, indent=2) + "\n")


def _ratio_vectors(text: str | None, num_phases: int):
    """``--ratios "0.1,0.7,0.2;0.4,0.5,0.1"`` -> labelled vectors (plus none and true); default: the seed's."""
    from napari_metalseg.study import default_ratio_vectors

    if text is None:
        return default_ratio_vectors(num_phases)
    import numpy as np

    vectors = [("none", None), ("true", None)]
    for part in text.split(";"):
        values = _floats(part, "--ratios")
        if not values or len(values) != num_phases or min(values) < 0 or sum(values) <= 0:
            raise MetalsegError(f"--ratios {part!r}: needs {num_phases} non-negative numbers with a positive sum")
        arr = np.array(values) / sum(values)
        vectors.append(("[" + ", ".join(f"{x:.2f}" for x in arr) + "]", arr))
    return vectors


@main.command()
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Dataset folder with train/val/test splits in metadata.csv (see `metalseg synth`).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for study.md/.csv/.json/.png and one run folder per row.",
)
@click.option(
    "--grid",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML list of rows (name, model, img_size, guidance, width, depth, steps, budget_s, ...); "
    "default: the seed study's table plus this product's rows.",
)
@click.option(
    "--only",
    default=None,
    help="Run only the rows whose name contains one of these comma-separated "
    "words (case-insensitive), e.g. 'U-Net3+,classical'.",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="SAM checkpoint for the SAM rows (0 shot, LoRA-SAM); without it they are reported as skipped.",
)
@click.option(
    "--budget-s",
    type=float,
    default=120.0,
    show_default=True,
    help="Wall-clock training budget of each row, in seconds.",
)
@click.option("--steps", type=int, default=None, help="Training steps of each row instead of the budget.")
@click.option(
    "--ratio-study",
    "ratio_run",
    type=click.Path(path_type=Path),
    default=None,
    help="Only the ratio-effect study of this guided run (no grid).",
)
@click.option(
    "--ratios",
    default=None,
    help="Ratio vectors for the ratio-effect study, ';'-separated, e.g. "
    "'0.1,0.7,0.2;0.4,0.5,0.1' (default: the seed's, adapted to the number of phases).",
)
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_user_errors
def study(
    data: Path,
    out: Path,
    grid: Path | None,
    only: str | None,
    checkpoint: Path | None,
    budget_s: float,
    steps: int | None,
    ratio_run: Path | None,
    ratios: str | None,
    device: str,
    seed: int,
) -> None:
    """Rerun the seed study's comparison table on your own micrographs (Dice per magnification, cost per row)."""
    from napari_metalseg.data.dataset import load_dataset
    from napari_metalseg.data.samples import load_samples
    from napari_metalseg.study import SEED_GRID, load_grid, ratio_effect, run_study

    dataset = load_dataset(data)
    test = load_samples(dataset.labelled_split("test"))
    if ratio_run is not None:
        from napari_metalseg.runs import read_run_config

        k = len(read_run_config(ratio_run)["model"].phases)
        effects = ratio_effect(ratio_run, test, out, _ratio_vectors(ratios, k), device=device)
        for e in effects:
            click.echo(f"{e.label:>22}: Dice {e.dice:6.2f}  fractions {e.fractions}")
        click.echo(str(out / "ratio_effect.png"))
        return
    rows = list(load_grid(grid) if grid else SEED_GRID)
    if only:
        words = [w.strip().lower() for w in only.split(",") if w.strip()]
        rows = [r for r in rows if any(w in r.name.lower() for w in words)]
        if not rows:
            raise MetalsegError(f"--only {only!r}: matches no row")
    train_samples = load_samples(dataset.labelled_split("train"))
    val_samples = load_samples(dataset.labelled_split("val"))
    events = run_study(
        train_samples,
        val_samples,
        test,
        dataset.phases,
        out,
        rows,
        checkpoint=str(checkpoint) if checkpoint else None,
        budget_s=None if steps else budget_s,
        steps=steps,
        device=device,
        seed=seed,
        data_label=str(data),
    )
    bar = None
    try:
        for event in events:
            if event.kind == "row":
                if bar is not None:
                    bar.__exit__(None, None, None)
                    bar = None
                if event.metrics:  # a row finished
                    click.echo(f"[{event.step}/{event.total}] {event.message}", err=True)
                else:
                    click.echo(f"[{event.step + 1}/{event.total}] {event.message} ...", err=True)
            elif event.kind == "train" and event.total:
                if bar is None:
                    bar = click.progressbar(length=event.total, label="  training", file=sys.stderr, show_pos=True)
                    bar.__enter__()
                bar.length = max(event.total, event.step)
                bar.update(event.step - bar.pos)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: the rows finished so far are in {out / 'study.md'}", err=True)
        sys.exit(130)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    click.echo((out / "study.md").read_text(encoding="utf-8"))
    results = json.loads((out / "study.json").read_text(encoding="utf-8"))["rows"]
    guided = [r for r in results if r["status"] == "measured" and r["guidance"] in ("ratio", "spatial")]
    if guided:
        click.echo(f"ratio-effect study of {guided[0]['name']}", err=True)
        ratio_effect(guided[0]["run"], test, out, _ratio_vectors(ratios, len(dataset.phases)), device=device)
        click.echo(str(out / "ratio_effect.png"))


GUI_DOCKS = (
    ("Model", False),
    ("Predict", True),
    ("Phase ratios", True),
    ("Box prompts", True),
    ("Encoder features", True),
    ("Training", True),
    ("Quantify", True),
)
"""The plugin's dock widgets in the order ``metalseg gui`` opens them, and whether each joins the tab group of the
one before (one tab group keeps the window within a 1000 px high screen)."""


@main.command()
@click.option(
    "--image",
    type=click.Path(path_type=Path),
    default=None,
    help="Micrograph or dataset folder to open (default: the synthetic sample micrograph).",
)
@click.option(
    "--run",
    type=click.Path(path_type=Path),
    default=None,
    help="Trained run directory to load; the opened micrograph is then predicted.",
)
@click.option(
    "--screenshot",
    type=click.Path(path_type=Path),
    default=None,
    help="Save a PNG of the whole window once loading and prediction are done, then exit.",
)
@_user_errors
def gui(image: Path | None, run: Path | None, screenshot: Path | None) -> None:
    """Open napari with the metalseg widgets docked (needs a display; see `make run`)."""
    import os
    import time

    import napari_metalseg._widgets  # noqa: F401  (blocks triton before napari creates a GL context)

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise MetalsegError(
            "no display: run `metalseg gui` on a desktop, or under xvfb-run; `metalseg demo` runs without one"
        )
    if image is not None and not image.exists():
        raise MetalsegError(f"{image}: no such file or folder")
    if run is not None and not (run / "config.json").is_file():
        raise MetalsegError(f"{run}: not a trained run (config.json is missing)")
    import napari

    if screenshot is not None:  # keep napari's one-time PyQt5 deprecation toast out of documentation screenshots
        import napari._qt.qt_main_window as qt_main_window

        qt_main_window.SHOW_QT_WARNING = False
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-metalseg")
    viewer.window.set_geometry(0, 0, 1600, 1000)
    widgets, docks = {}, {}
    for name, tabify in GUI_DOCKS:
        try:
            docks[name], widgets[name] = viewer.window.add_plugin_dock_widget("napari-metalseg", name, tabify=tabify)
        except Exception as exc:  # noqa: BLE001 - one broken widget must not keep the others from opening
            click.echo(f"warning: the {name!r} widget could not be opened ({type(exc).__name__}: {exc})", err=True)
    if "Predict" in docks:
        QTimer.singleShot(0, docks["Predict"].raise_)
    if image is not None:
        viewer.open(str(image), plugin="napari-metalseg")
    else:
        viewer.open_sample("napari-metalseg", "synthetic_steel")
    viewer.scale_bar.visible = True
    if run is not None and "Model" in widgets:
        if "Predict" in widgets:
            widgets["Model"].session.model_changed.connect(widgets["Predict"].predict)
        widgets["Model"].load_run(run)
    if screenshot is not None:
        started = time.monotonic()

        def ready() -> bool:
            done = run is None or any(
                getattr(widgets.get(name), attr, None) is not None
                for name, attr in (("Predict", "last_result"), ("Predict", "last_error"), ("Model", "last_error"))
            )
            idle = not any(getattr(w, "busy", False) for w in widgets.values())
            return done and idle and time.monotonic() - started > 2.0

        def shoot() -> None:
            if not ready() and time.monotonic() - started < 600:
                QTimer.singleShot(250, shoot)
                return
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            viewer.screenshot(str(screenshot), canvas_only=False)
            click.echo(str(screenshot))
            viewer.close()

        QTimer.singleShot(500, shoot)
    napari.run()


@main.command()
@click.option(
    "--out",
    default=Path("demo_out"),
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for the demo's dataset, model and results.",
)
@click.option(
    "--budget-s", default=120.0, show_default=True, help="Training time of the default model in seconds (more: better)."
)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@_user_errors
def demo(out: Path, budget_s: float, seed: int, device: str) -> None:
    """Headless end-to-end demo: synthesise steel micrographs, train, evaluate, predict and quantify."""
    from napari_metalseg.data.dataset import load_dataset, new_dataset, write_item
    from napari_metalseg.data.samples import load_samples
    from napari_metalseg.data.synth import write_synthetic_dataset
    from napari_metalseg.metrics import format_seed_table
    from napari_metalseg.predict import Predictor
    from napari_metalseg.quantify import quantify_masks
    from napari_metalseg.training import TrainConfig, validate
    from napari_metalseg.training import train as run_training

    data, run, predicted = out / "dataset", out / "run", out / "predicted"
    click.echo(f"[1/4] synthesising 15 steel micrographs (384 px, x2700/x3000/x5000) into {data}", err=True)
    write_synthetic_dataset(data, n=15, size=384, seed=seed, overwrite=True)
    dataset = load_dataset(data, require_masks=True)
    click.echo(json.dumps(dataset.summary()["splits"]), err=True)
    train_samples = load_samples(dataset.labelled_split("train"))
    val_samples = load_samples(dataset.labelled_split("val"))
    test_samples = load_samples(dataset.labelled_split("test"))
    config = TrainConfig(guidance="ratio", budget_s=budget_s, device=device, seed=seed)
    click.echo(
        f"[2/4] training the default model ({config.model}, ratio guidance) for {budget_s:g} s into {run}, "
        "and the classical pixel classifier for comparison",
        err=True,
    )
    _run_events(run_training(train_samples, dataset.phases, run, config, val_samples=val_samples), "training")
    classical = out / "classical"
    _run_events(
        run_training(
            train_samples, dataset.phases, classical, TrainConfig(model="classical", seed=seed), val_samples=val_samples
        ),
        "classical",
    )

    click.echo("[3/4] evaluating on the held-out test images", err=True)
    predictor = Predictor.from_run(run, device=device)
    rows = {
        "classical pixel classifier": validate(
            Predictor.from_run(classical).model, test_samples, dataset.phases, "cpu"
        ).by_magnification(),
        f"{config.model} (no guidance)": validate(
            predictor.model, test_samples, dataset.phases, predictor.device
        ).by_magnification(),
        f"{config.model} + true ratio": validate(
            predictor.model, test_samples, dataset.phases, predictor.device, ratios=True
        ).by_magnification(),
    }
    click.echo(format_seed_table(rows))

    click.echo(f"[4/4] predicting the test images into {predicted} and quantifying phase fractions", err=True)
    new_dataset(predicted, dataset.phases)
    for s in test_samples:
        write_item(predicted, s.name, s.image, predictor.predict(s.image).labels)
    report = quantify_masks(predicted, by="all", truth=data / "masks")
    click.echo(report.table())
    report.to_csv(out / "fractions.csv")
    report.plot(out / "fractions.png")
    click.echo(
        f"results: {run} (model), {predicted} (masks), {out / 'fractions.csv'}, {out / 'fractions.png'}", err=True
    )


if __name__ == "__main__":  # pragma: no cover
    main()
