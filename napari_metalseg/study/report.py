"""The study's files: ``study.md`` (the seed's table), ``study.csv``, ``study.json`` and ``study.png``."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from napari_metalseg.io.atomic import atomic_write_text
from napari_metalseg.study.grid import RowResult


def dice_columns(results: Sequence[RowResult]) -> list[str]:
    """The magnification columns of the Dice tables (``x2700``, ``x3000``, ..., ``unknown`` last), without ``avg``."""
    columns: list[str] = []
    for r in results:
        for c in r.dice or {}:
            if c != "avg" and c not in columns:
                columns.append(c)
    return sorted(columns, key=lambda c: (c == "unknown", float(c[1:]) if c.startswith("x") else 0.0))


def study_markdown(results: Sequence[RowResult], meta: dict) -> str:
    """The seed's table: one row per model, Dice (%) per magnification and Avg., best value per column in bold,
    guided rows with their gain over their unguided baseline; skipped and failed rows with their reason."""
    columns = dice_columns(results) + ["avg"]
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
    """The ``study.csv`` text: one line per row with its status, Dice columns, gain, costs and run folder."""
    columns = dice_columns(results)
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

    columns = dice_columns(results) + ["avg"]
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
