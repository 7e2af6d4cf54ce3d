"""The study: train a grid of models on a dataset's train split and score them on its test split, in the seed's table.

A row is a model name + input size + guidance + training budget (:class:`StudyRow`); :func:`run_study` trains each
row with :func:`napari_metalseg.training.train` (val split for model selection), scores it with
:func:`napari_metalseg.training.validate` on the test split (mean Dice per magnification and ``Avg.``), and writes
``study.md`` (the seed's layout), ``study.csv``, ``study.json``, ``study.png`` and one run folder per row. Nothing here
knows a model's internals: rows differ only in their :class:`~napari_metalseg.training.TrainConfig`.

:func:`ratio_effect` is the seed's slide "Effects of Ratio Encoding": one guided run, several ratio vectors.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_metalseg.data.samples import Sample
from napari_metalseg.errors import MetalsegError
from napari_metalseg.io.atomic import atomic_write_text
from napari_metalseg.phases import PhaseSet, phase_fractions
from napari_metalseg.progress import ProgressEvent

STATUSES = ("measured", "skipped", "failed")


@dataclass
class StudyRow:
    """One row of the study table.

    Parameters
    ----------
    name : str
        As shown in the table.
    model : str
        A model name (``unet3plus``, ``elunet``, ``classical``, ``tiny``) or ``sam`` for "the kind of the SAM
        checkpoint" (``vit_b`` for ``sam_vit_b_01ec64.pth``).
    img_size : int, optional
        Model input size (default: the model's).
    guidance : str
        Training guidance (``none``, ``ratio``, ``spatial``, ``box``, ``ratio+box``, ``spatial+box``). Guided rows
        are scored with each test image's true phase fractions, as in the seed.
    zero_shot : bool
        No training at all: the pretrained model as loaded (SAM (0 shot)).
    baseline : str, optional
        Name of the unguided row this row's gain is reported against (``↑ 2.18%``).
    group : str
        Section of the table (``Task-Specific``, ``VFM (0 Shot)``, ``Adapted VFM``, ``This product``).
    steps, budget_s, width, depth, batch_size, lr, finetune :
        Training settings (``None``: the trainer's / study's defaults).
    """

    name: str
    model: str
    img_size: int | None = None
    guidance: str = "none"
    zero_shot: bool = False
    baseline: str | None = None
    group: str = ""
    steps: int | None = None
    budget_s: float | None = None
    width: int | None = None
    depth: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    finetune: str | None = None

    @property
    def needs_checkpoint(self) -> bool:
        return self.model in ("sam", "vit_b", "vit_l", "vit_h")

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


SEED_GRID: tuple[StudyRow, ...] = (
    StudyRow("Enhanced U-Net3+", "unet3plus", group="Task-Specific"),
    StudyRow("Enhanced ELU-Net", "elunet", group="Task-Specific"),
    StudyRow("SAM (0 shot)", "sam", img_size=1024, zero_shot=True, group="VFM (0 Shot)"),
    StudyRow("LoRA-SAM (256)", "sam", img_size=256, group="Adapted VFM"),
    StudyRow("LoRA-SAM (512)", "sam", img_size=512, group="Adapted VFM"),
    StudyRow("LoRA-SAM (1024)", "sam", img_size=1024, group="Adapted VFM"),
    StudyRow("LoRA-SAM (2048)", "sam", img_size=2048, group="Adapted VFM"),
    StudyRow(
        "LoRA-SAM + Ratio + BB (512)",
        "sam",
        img_size=512,
        guidance="ratio+box",
        baseline="LoRA-SAM (512)",
        group="Adapted VFM",
    ),
    StudyRow(
        "LoRA-SAM + Ratio (512)", "sam", img_size=512, guidance="ratio", baseline="LoRA-SAM (512)", group="Adapted VFM"
    ),
    StudyRow(
        "LoRA-SAM + Ratio (Spatial-v1) (512)",
        "sam",
        img_size=512,
        guidance="spatial",
        baseline="LoRA-SAM (512)",
        group="Adapted VFM",
    ),
    StudyRow("Classical pixel classifier", "classical", group="This product"),
    StudyRow("Compact SAM (tiny)", "tiny", img_size=128, group="This product"),
    StudyRow(
        "Compact SAM (tiny) + Ratio",
        "tiny",
        img_size=128,
        guidance="ratio",
        baseline="Compact SAM (tiny)",
        group="This product",
    ),
)
"""The seed's table in its order, then the rows this product adds."""


@dataclass
class RowResult:
    """What a row produced (the entries of ``study.json``'s ``rows``)."""

    name: str
    status: str
    reason: str | None = None
    dice: dict | None = None
    train_s: float = 0.0
    infer_ms_per_image: float = 0.0
    trainable_params: int = 0
    model: str = ""
    img_size: int | None = None
    guidance: str = "none"
    group: str = ""
    baseline: str | None = None
    gain: float | None = None
    run: str | None = None


def load_grid(path: str | Path) -> list[StudyRow]:
    """Read a grid YAML: a list of rows (or ``{"rows": [...]}``), each with the fields of :class:`StudyRow`.

    Example::

        - name: U-Net3+ wide
          model: unet3plus
          width: 32
          budget_s: 300
        - {name: ELU-Net + ratio, model: elunet, guidance: ratio, baseline: ELU-Net}
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MetalsegError(f"{path}: unreadable grid file ({exc})") from None
    if isinstance(data, dict):
        data = data.get("rows")
    if not isinstance(data, list) or not data:
        raise MetalsegError(f"{path}: expected a list of rows (each with at least name and model)")
    allowed = {f for f in StudyRow.__dataclass_fields__}
    rows = []
    for i, entry in enumerate(data, 1):
        if not isinstance(entry, dict) or "name" not in entry or "model" not in entry:
            raise MetalsegError(f"{path}: row {i} needs at least 'name' and 'model'")
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise MetalsegError(
                f"{path}: row {i} ({entry['name']}): unknown field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        rows.append(StudyRow(**entry))
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise MetalsegError(f"{path}: row names must be unique")
    return rows


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
) -> Iterator[ProgressEvent]:
    """Run every row; yields progress events (``"row"`` per row, the trainer's events in between).

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
        Called with each finished :class:`RowResult`.
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
            result.status, result.reason = "skipped", "needs a SAM checkpoint (--checkpoint sam_vit_b_01ec64.pth)"
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
        _add_gains(results)
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
    evaluation = validate(model, test_samples, phases, device, ratios=guided)
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


def _add_gains(results: list[RowResult]) -> None:
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


def _columns(results: Sequence[RowResult]) -> list[str]:
    columns: list[str] = []
    for r in results:
        for c in r.dice or {}:
            if c != "avg" and c not in columns:
                columns.append(c)
    return sorted(columns, key=lambda c: (c == "unknown", float(c[1:]) if c.startswith("x") else 0.0))


def study_markdown(results: Sequence[RowResult], meta: dict) -> str:
    """The seed's table: one row per model, Dice (%) per magnification and Avg., best value per column in bold,
    guided rows with their gain over their unguided baseline; skipped and failed rows with their reason."""
    columns = _columns(results) + ["avg"]
    best = {
        c: max((r.dice[c] for r in results if r.dice and math.isfinite(r.dice.get(c, math.nan))), default=math.nan)
        for c in columns
    }
    head = [
        "Group",
        "Model",
        *(("Avg." if c == "avg" else c.replace("x", "× ")) for c in columns),
        "Gain",
        "Train (s)",
        "Inference (ms/image)",
        "Trainable params",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if r.dice:
            cells = []
            for c in columns:
                v = r.dice.get(c, math.nan)
                text = "-" if not math.isfinite(v) else f"{v:.2f}"
                cells.append(f"**{text}**" if math.isfinite(v) and math.isclose(v, best[c]) else text)
            gain = "" if r.gain is None else (f"↑ {r.gain:.2f}%" if r.gain >= 0 else f"↓ {-r.gain:.2f}%")
            tail = [gain, f"{r.train_s:.1f}", f"{r.infer_ms_per_image:.0f}", f"{r.trainable_params:,}"]
        else:
            cells = [f"{r.status}: {r.reason}"] + [""] * (len(columns) - 1)
            tail = ["", "", "", ""]
        lines.append("| " + " | ".join([r.group, r.name, *cells, *tail]) + " |")
    notes = [
        f"Data: {meta.get('data', '')} ({meta.get('train_images')} train, {meta.get('val_images')} val, "
        f"{meta.get('test_images')} test images; phases {', '.join(meta.get('phases', []))}).",
        f"Machine: {meta.get('machine', '')}; device {meta.get('device')}; budget per row "
        f"{meta.get('budget_s')} s; seed {meta.get('seed')}.",
        "Scores: mean Dice (%) over the test images of each magnification, Avg. = mean of the columns. "
        "Guided rows are scored with each test image's true phase fractions; "
        "Gain = their Avg. minus their baseline's.",
    ]
    return "# Study\n\n" + "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def study_csv(results: Sequence[RowResult]) -> str:
    columns = _columns(results)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "name",
            "group",
            "status",
            "reason",
            *columns,
            "avg",
            "gain",
            "train_s",
            "infer_ms_per_image",
            "trainable_params",
            "model",
            "img_size",
            "guidance",
            "run",
        ]
    )
    for r in results:
        d = r.dice or {}
        writer.writerow(
            [
                r.name,
                r.group,
                r.status,
                r.reason or "",
                *(_num(d.get(c)) for c in columns),
                _num(d.get("avg")),
                _num(r.gain),
                r.train_s,
                r.infer_ms_per_image,
                r.trainable_params,
                r.model,
                r.img_size or "",
                r.guidance,
                r.run or "",
            ]
        )
    return buf.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4f}"


def write_study(out: str | Path, results: Sequence[RowResult], meta: dict) -> None:
    """Write study.md, study.csv, study.json and study.png (each atomically)."""
    out = Path(out)
    atomic_write_text(out / "study.md", study_markdown(results, meta))
    atomic_write_text(out / "study.csv", study_csv(results))
    payload = {
        "rows": [_json_row(r) for r in results],
        "data": meta.get("data"),
        "machine": meta.get("machine"),
        "settings": meta,
    }
    atomic_write_text(out / "study.json", json.dumps(payload, indent=2, default=float) + "\n")
    study_figure(results, out / "study.png")


def _json_row(r: RowResult) -> dict:
    row = asdict(r)
    if row["dice"] is not None:
        row["dice"] = {k: (None if not math.isfinite(v) else round(float(v), 4)) for k, v in row["dice"].items()}
    return row


def study_figure(results: Sequence[RowResult], path: str | Path) -> None:
    """Grouped bars: mean Dice per magnification and Avg. for each measured row (skipped/failed rows named)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_metalseg.io.atomic import atomic_path

    columns = _columns(results) + ["avg"]
    measured = [r for r in results if r.dice]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * max(1, len(measured)) + 2), 4.2))
    width = 0.8 / len(columns)
    for j, c in enumerate(columns):
        values = [r.dice.get(c, np.nan) for r in measured]
        ax.bar(
            np.arange(len(measured)) + (j - (len(columns) - 1) / 2) * width,
            values,
            width,
            label="Avg." if c == "avg" else c,
        )
    ax.set_xticks(np.arange(len(measured)), [r.name for r in measured], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean Dice (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=len(columns))
    others = [f"{r.name}: {r.status}" for r in results if not r.dice]
    title = "Study: mean Dice on the test split"
    ax.set_title(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07 if others else 0, 1, 1))
    if others:
        fig.text(0.01, 0.01, "not measured: " + "; ".join(others)[:300], fontsize=6, wrap=True)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# -- ratio effect ------------------------------------------------------------------------------------------------

SEED_RATIOS = ((0.1, 0.7, 0.2), (0.1, 0.5, 0.4), (0.4, 0.5, 0.1))
"""The seed's ratio vectors (matrix/ferrite, martensite, bainite)."""


def default_ratio_vectors(num_phases: int) -> list[tuple[str, np.ndarray | None]]:
    """``none``, ``true`` and the seed's three vectors adapted to ``num_phases`` (truncated or padded with the
    remainder spread evenly, renormalised)."""
    vectors: list[tuple[str, np.ndarray | None]] = [("none", None), ("true", None)]
    for v in SEED_RATIOS:
        arr = np.array(v[:num_phases], float)
        if num_phases > len(v):
            arr = np.concatenate([arr, np.full(num_phases - len(v), 0.1)])
        arr = arr / arr.sum()
        vectors.append(("[" + ", ".join(f"{x:.2f}" for x in arr) + "]", arr))
    return vectors


@dataclass
class RatioEffect:
    label: str
    ratio: list[float] | None
    dice: float
    fractions: list[float]
    true_fractions: list[float] = field(default_factory=list)


def ratio_effect(
    run: str | Path,
    samples: list[Sample],
    out: str | Path,
    vectors: Sequence[tuple[str, np.ndarray | None]] | None = None,
    device: str = "auto",
) -> list[RatioEffect]:
    """Predict ``samples`` with one guided run under several ratio vectors; write ratio_effect.json/.md/.png.

    ``("true", None)`` stands for each image's true phase fractions, ``("none", None)`` for no guidance. The figure
    shows the first sample: the micrograph, its target and each vector's prediction with its Dice.
    """
    from napari_metalseg.metrics import Evaluation
    from napari_metalseg.predict import Predictor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_run(run, device=device)
    phases = predictor.phases
    if getattr(predictor.model, "guidance", "none") == "none":
        raise MetalsegError(
            f"{run}: trained without ratio guidance; the ratio study needs a guided run "
            "(train with --guidance ratio or spatial)"
        )
    if not samples:
        raise MetalsegError("the ratio study needs labelled test images")
    vectors = list(vectors) if vectors is not None else default_ratio_vectors(len(phases))
    effects, shown = [], []
    truth = [phase_fractions(s.mask, len(phases)) for s in samples]
    for label, vector in vectors:
        evaluation = Evaluation(phases.names)
        fractions = []
        for s, t in zip(samples, truth):
            r = t if label == "true" else vector
            phase_map = predictor.predict(s.image, ratios=r)
            evaluation.add(s.name, phase_map.labels, s.mask, s.magnification)
            fractions.append(phase_map.fractions())
            if s is samples[0]:
                shown.append((label, phase_map.labels, evaluation.images[-1].mean_dice))
        effects.append(
            RatioEffect(
                label,
                None if vector is None else [float(x) for x in vector],
                round(evaluation.average, 2),
                np.mean(fractions, 0).round(4).tolist(),
                np.mean(truth, 0).round(4).tolist(),
            )
        )
    atomic_write_text(out / "ratio_effect.json", json.dumps([asdict(e) for e in effects], indent=2) + "\n")
    lines = ["| ratio given | mean Dice (%) | predicted fractions | true fractions |", "|---|---|---|---|"]
    for e in effects:
        lines.append(
            f"| {e.label} | {e.dice:.2f} | {', '.join(f'{x:.3f}' for x in e.fractions)} | "
            f"{', '.join(f'{x:.3f}' for x in e.true_fractions)} |"
        )
    atomic_write_text(
        out / "ratio_effect.md",
        f"# Ratio effect ({Path(run).name}; phases {', '.join(phases.names)})\n\n" + "\n".join(lines) + "\n",
    )
    _ratio_figure(samples[0], shown, phases, out / "ratio_effect.png")
    return effects


def _ratio_figure(sample: Sample, shown, phases: PhaseSet, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from napari_metalseg.io.atomic import atomic_path

    cmap = ListedColormap(phases.rgb())
    n = len(shown) + 2
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 3.1))
    axes[0].imshow(sample.image, cmap="gray")
    axes[0].set_title("micrograph", fontsize=8)
    target = np.ma.masked_equal(sample.mask, 255)
    axes[1].imshow(target, cmap=cmap, vmin=-0.5, vmax=len(phases) - 0.5, interpolation="nearest")
    axes[1].set_title("target", fontsize=8)
    for ax, (label, labels, dice) in zip(axes[2:], shown):
        ax.imshow(labels, cmap=cmap, vmin=-0.5, vmax=len(phases) - 0.5, interpolation="nearest")
        ax.set_title(f"{label}\nDice {dice:.2f}", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
