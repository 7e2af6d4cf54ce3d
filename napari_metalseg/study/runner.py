"""Running a study: train each row, score it on the test split, rewrite the study files after every row."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from napari_metalseg.data.samples import Sample
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet
from napari_metalseg.progress import Job, ProgressEvent
from napari_metalseg.study.grid import SEED_GRID, RowResult, StudyRow
from napari_metalseg.study.report import write_study


def _train_config(
    row: StudyRow, checkpoint: str | None, kind: str, budget_s: float | None, device: str, seed: int, steps: int | None
):
    from napari_metalseg.training import TrainConfig

    extra = {
        k: getattr(row, k)
        for k in ("img_size", "width", "depth", "batch_size", "lr", "finetune")
        if getattr(row, k) is not None
    }
    return TrainConfig(
        model=kind,
        checkpoint=checkpoint if row.needs_checkpoint else None,
        guidance=row.guidance,
        steps=row.steps if row.steps is not None else steps,
        budget_s=row.budget_s if row.budget_s is not None else budget_s,
        device=device,
        seed=seed,
        pool_classical=False,  # the study compares the networks themselves, as the paper does
        **extra,
    )


def run_study(
    train_samples: list[Sample],
    val_samples: list[Sample],
    test_samples: list[Sample],
    phases: PhaseSet,
    out: str | Path,
    rows: Sequence[StudyRow] = SEED_GRID,
    checkpoint: str | None = None,
    budget_s: float | None = 120.0,
    steps: int | None = None,
    device: str = "auto",
    seed: int = 0,
    data_label: str = "",
    on_result: Callable[[RowResult], None] | None = None,
) -> Job[list[RowResult]]:
    """Run every row, as a job: yields progress events (``"row"`` per row, the trainer's events in between).

    The output files are rewritten after every row, so an interrupted study keeps the rows already finished.

    Parameters
    ----------
    train_samples, val_samples, test_samples : list of Sample
        Training images, model-selection images (may be empty) and the scored images.
    phases : PhaseSet
    out : path
        Output folder: study.md, study.csv, study.json, study.png, runs/<row>/.
    rows : sequence of StudyRow
    checkpoint : str, optional
        SAM checkpoint for the SAM rows; without it they are reported as skipped.
    budget_s : float, optional
        Wall-clock training budget of each row (seconds), unless a row sets its own.
    steps : int, optional
        Step count of each row, unless a row sets its own.
    on_result : callable, optional
        Called with each finished :class:`RowResult` (after its files are written).

    Returns
    -------
    list of RowResult
        One per row, in order.
    """
    from napari_metalseg.predict import resolve_device
    from napari_metalseg.training import checkpoint_kind

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not test_samples:
        raise MetalsegError("the study needs labelled test images (split 'test' in metadata.csv)")
    if not train_samples:
        raise MetalsegError("the study needs labelled training images (split 'train' or unassigned)")
    device = resolve_device(device)
    kind = checkpoint_kind(checkpoint) if checkpoint is not None else None
    results: list[RowResult] = []
    meta = {
        "data": data_label,
        "train_images": len(train_samples),
        "val_images": len(val_samples),
        "test_images": len(test_samples),
        "phases": phases.names,
        "checkpoint": checkpoint,
        "budget_s": budget_s,
        "steps": steps,
        "device": device,
        "seed": seed,
        "machine": machine_description(),
    }
    for i, row in enumerate(rows):
        yield ProgressEvent("row", i, len(rows), message=f"{row.name}")
        result = RowResult(
            row.name,
            "measured",
            model=row.model,
            img_size=row.img_size,
            guidance=row.guidance,
            group=row.group,
            baseline=row.baseline,
        )
        if row.needs_checkpoint and checkpoint is None:
            result.status, result.reason = "skipped", "needs a SAM checkpoint (e.g. sam_vit_b_01ec64.pth)"
        else:
            try:
                yield from _run_row(
                    row,
                    result,
                    train_samples,
                    val_samples,
                    test_samples,
                    phases,
                    out,
                    checkpoint,
                    kind or "",
                    budget_s,
                    steps,
                    device,
                    seed,
                )
            except MetalsegError as exc:
                result.status, result.reason = "failed", str(exc)
            except Exception as exc:  # noqa: BLE001 - one broken row must not end the study
                result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
        results.append(result)
        add_gains(results)
        write_study(out, results, meta)
        if on_result is not None:
            on_result(result)
        yield ProgressEvent(
            "row",
            i + 1,
            len(rows),
            metrics=asdict(result),
            message=f"{row.name}: {result.status}"
            + (f" ({result.dice['avg']:.2f})" if result.dice else f" ({result.reason})"),
        )
    yield ProgressEvent("done", len(rows), len(rows), message=str(out))
    return results


def _run_row(
    row: StudyRow,
    result: RowResult,
    train_samples,
    val_samples,
    test_samples,
    phases,
    out: Path,
    checkpoint,
    kind: str,
    budget_s,
    steps,
    device: str,
    seed: int,
) -> Iterator[ProgressEvent]:
    from napari_metalseg.training import train, validate

    model_kind = kind if row.model == "sam" else row.model
    config = _train_config(row, checkpoint, model_kind, budget_s, device, seed, steps)
    run = out / "runs" / row.slug
    result.img_size = config.img_size
    result.run = str(run)
    t0 = time.perf_counter()
    if row.zero_shot:
        result.trainable_params = 0
        _write_untrained_run(config, phases, run)
    else:
        for event in train(train_samples, phases, run, config, val_samples=val_samples or None):
            if event.kind == "info" and "trainable" in event.metrics:
                result.trainable_params = int(event.metrics["trainable"])
            if event.kind == "train" and "parameters" in event.metrics:
                result.trainable_params = int(event.metrics["parameters"])
            yield event
    result.train_s = round(time.perf_counter() - t0, 2)
    from napari_metalseg.runs import load_run

    model, _ = load_run(run, device=device)
    guided = config.encoder_guidance != "none"
    t1 = time.perf_counter()
    # the study's guided rows: the true fractions through the guidance encoder only, as in the research
    evaluation = validate(model, test_samples, phases, device, ratios=guided, match_fractions=False)
    result.infer_ms_per_image = round((time.perf_counter() - t1) * 1000 / len(test_samples), 1)
    result.dice = dict(evaluation.by_magnification()) | {"avg": evaluation.average}


def _write_untrained_run(config, phases: PhaseSet, run: Path) -> None:
    """SAM (0 shot): the pretrained model as loaded, its K multimask outputs read as the K phases; no training."""
    from napari_metalseg.models.lora import trainable_state_dict
    from napari_metalseg.runs import save_run
    from napari_metalseg.training import model_spec

    spec = model_spec(config, phases)
    model, _ = spec.build("cpu")
    save_run(run, spec, trainable_state_dict(model), training={"zero_shot": True})


def add_gains(results: list[RowResult]) -> None:
    """Set each row's ``gain``: its Avg. minus its baseline row's, when both were measured."""
    by_name = {r.name: r for r in results}
    for r in results:
        base = by_name.get(r.baseline or "")
        if r.dice and base is not None and base.dice:
            r.gain = round(r.dice["avg"] - base.dice["avg"], 2)


def machine_description() -> str:
    """A one-line description of this machine: CPU, cores, GPU, torch."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, {gpu}, torch {torch.__version__}"
