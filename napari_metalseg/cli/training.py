"""Training commands: ``train`` (one run) and ``study`` (a grid of runs scored in the seed's table)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from napari_metalseg.cli.errors import user_errors
from napari_metalseg.cli.progress import TerminalProgress
from napari_metalseg.cli.signals import StopOnSignal
from napari_metalseg.cli.values import ratio_vectors
from napari_metalseg.distributed import environment_rank
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models import FINETUNE_MODES, TRAINING_GUIDANCE
from napari_metalseg.models.registry import DEFAULT_MODEL, EMA_DECAY, MODEL_KINDS, POOL_MARGIN, PSEUDO_WEIGHT


@click.command()
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
@click.option(
    "--pool-classical/--no-pool-classical",
    default=None,
    help="Also fit the classical pixel classifier on the same labels and pool its probabilities with the CNN's "
    "(default for unet/unet3plus/elunet; docs/quality.md).",
)
@click.option(
    "--pool-margin",
    type=float,
    default=POOL_MARGIN,
    show_default=True,
    help="Keep the pool only when the classical classifier validates within this many points of mean Dice of the "
    "CNN (leading it when it validates as well); else the run's model is the CNN alone (a large value always pools).",
)
@click.option(
    "--ema",
    type=float,
    default=EMA_DECAY,
    show_default=True,
    help="Decay of the moving average of the weights that is validated and kept (about the last 1 / (1 - ema) "
    "steps); 0: the last weights.",
)
@click.option(
    "--pseudo",
    type=float,
    default=PSEUDO_WEIGHT,
    show_default=True,
    help="Weight of the pseudo-labels the weight average gives the unlabelled pixels where it is sure (scribbles; "
    "1 is a good value when steps, not time, are the limit); 0: train on the painted pixels only.",
)
@click.option(
    "--physical-scale/--native-scale",
    default=None,
    help="Resample every micrograph to one pixel size (the geometric mean of the training images') when all state "
    "theirs (metadata.csv pixel_size_um, SEM metadata); prediction resamples each micrograph of known pixel size to "
    "it. --native-scale: each at its own pixel size. Default: on for the CNNs (measured), off for SAM and the "
    "classical classifier; with --init-from, as in the run continued.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the interrupted run in --out (from the start when it has no resume state yet). Ctrl-C or SIGTERM "
    "stops a run cleanly after the current step.",
)
@click.option(
    "--init-from",
    type=click.Path(path_type=Path),
    default=None,
    help="A trained run whose weights start this run: retrain that model on the data (new run in --out). The model "
    "options not given are the run's (model, size, guidance, width/depth, fine-tuning, checkpoint, pool).",
)
@click.option("--export-full", is_flag=True, help="Also write a merged stand-alone model_full.safetensors.")
@user_errors(model="--model")
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
    pool_classical: bool | None,
    pool_margin: float,
    ema: float,
    pseudo: float,
    physical_scale: bool | None,
    resume: bool,
    init_from: Path | None,
    export_full: bool,
) -> None:
    """Train (or LoRA-adapt) a phase-segmentation model on a dataset, or retrain a run's model (--init-from)."""
    from napari_metalseg.data.dataset import load_dataset
    from napari_metalseg.data.samples import load_samples
    from napari_metalseg.training import train as run_training

    settings = dict(
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
        pool_classical=pool_classical,
        pool_margin=pool_margin,
        ema=ema,
        pseudo=pseudo,
        physical_scale=physical_scale,
    )
    config = _train_config(settings, init_from)
    dataset = load_dataset(data)
    train_samples = load_samples(dataset.labelled_split("train"))
    if not train_samples:
        raise MetalsegError(f"{data}: no labelled training images (masks/ with split train or no split)")
    val_samples = load_samples(dataset.labelled_split("val"))
    rank, world = environment_rank()
    if rank == 0:
        ranks = f" on {world} processes (torchrun)" if world > 1 else ""
        click.echo(
            f"training on {len(train_samples)} image(s){ranks}, validating on "
            f"{len(val_samples) or 'the training'} image(s)",
            err=True,
        )
    stop = StopOnSignal("training", echo=rank == 0)
    job = run_training(
        train_samples,
        dataset.phases,
        out,
        config,
        val_samples=val_samples or None,
        stop=stop,
        resume=resume,
        export_full=export_full,
    )
    with stop:
        last = _drive(job, rank=rank, world=world, out=out)
    if stop():
        if rank == 0:
            click.echo(f"stopped: the run so far is in {out}; continue it with the same command and --resume", err=True)
        sys.exit(stop.exit_status)
    if rank != 0:  # rank 0 reports
        return
    from napari_metalseg.runs import read_run_config

    steps_done = read_run_config(out).steps_done
    click.echo(
        json.dumps({"run": str(out), "steps_done": steps_done, "metrics": last.metrics if last else {}}, indent=2)
    )


def _drive(job, *, rank: int, world: int, out: Path):
    """Run the training ``job``: rank 0 shows its progress, the other ranks of a distributed run stay silent. A rank
    that loses the others (one of them crashed or was killed) ends with one error line; returns the last event."""
    from napari_metalseg.progress import run_job

    try:
        if rank == 0:
            progress = TerminalProgress("training")
            progress.run(job)
            return progress.last
        run_job(job)
        return None
    except RuntimeError as exc:  # torch.distributed's errors when a peer is gone
        if world == 1:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        click.echo(
            f"error: rank {rank} of {world}: the distributed run ended ({first}); the last kept model and resume "
            f"state are in {out}: rerun the same command with --resume",
            err=True,
        )
        sys.exit(1)


OPTION_OF_SETTING = {"model": "kind", "bf16": "fp32"}
"""``TrainConfig`` fields whose option of ``train`` has another name."""


def _train_config(settings: dict, init_from: Path | None):
    """The ``TrainConfig`` of the options; with ``init_from``, the options left at their defaults take the run's model
    (:meth:`~napari_metalseg.training.TrainConfig.from_spec`)."""
    from napari_metalseg.training import TrainConfig

    if init_from is None:
        return TrainConfig(**settings)
    from click.core import ParameterSource

    from napari_metalseg.runs import read_run_config

    try:
        spec = read_run_config(init_from).spec
    except MetalsegError as exc:
        raise MetalsegError(f"init_from {exc}") from None
    ctx = click.get_current_context()
    given = {
        name: value
        for name, value in settings.items()
        if ctx.get_parameter_source(OPTION_OF_SETTING.get(name, name)) is not ParameterSource.DEFAULT
    }
    return TrainConfig.from_spec(spec, init_from=str(init_from), **given)


@click.command()
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
@user_errors
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

        k = len(read_run_config(ratio_run).spec.phases)
        effects = ratio_effect(ratio_run, test, out, ratio_vectors(ratios, k), device=device)
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
    job = run_study(
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
    # rows are "[i/n]" lines; only each row's training has a bar
    progress = TerminalProgress("  training", bar_kinds=("train",), show_message=False, echo=False)
    try:
        results = progress.run(job)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: the rows finished so far are in {out / 'study.md'}", err=True)
        sys.exit(130)
    click.echo((out / "study.md").read_text(encoding="utf-8"))
    guided = [r for r in results if r.status == "measured" and r.guidance in ("ratio", "spatial")]
    if guided:
        click.echo(f"ratio-effect study of {guided[0].name}", err=True)
        ratio_effect(guided[0].run, test, out, ratio_vectors(ratios, len(dataset.phases)), device=device)
        click.echo(str(out / "ratio_effect.png"))
