"""The report: per-field and per-sample tables, CSV/JSON export, the terminal table and the bar chart."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_metalseg.errors import MetalsegError
from napari_metalseg.io.atomic import atomic_write_text
from napari_metalseg.phases import PhaseSet

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


from napari_metalseg.quantify.fields import _NO_CI, FieldResult, _as_phases
from napari_metalseg.quantify.statistics import SampleSummary, _check_by, summarize


@dataclass
class Report:
    """Fields, per-sample summaries (area fractions and E562 point counts) and everything to write them.

    Build one with :func:`quantify_masks` (folders) or :func:`make_report` (fields measured in memory).
    """

    phases: PhaseSet
    fields: list[FieldResult]
    samples: list[SampleSummary]
    point_samples: list[SampleSummary]
    by: str = "sample"
    source: str = ""
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    reused: int = 0

    @property
    def has_truth(self) -> bool:
        return any(f.true_fractions is not None for f in self.fields)

    @property
    def warnings(self) -> list[str]:
        """Fields that failed, skipped fields, then the area-fraction warnings (samples with %RA > 10 % or one
        field)."""
        failed = [f"{name}: {reason}; not quantified" for name, reason in self.failed.items()]
        return [*failed, *self.skipped, *(w for s in self.samples for w in s.warnings)]

    # -- tables -------------------------------------------------------------------------------------

    def field_rows(self) -> list[dict[str, Any]]:
        """One dict per field with the CSV columns (see :meth:`to_csv`)."""
        return [_field_row(f, self.phases.names, self.has_truth) for f in self.fields]

    def sample_rows(self) -> list[dict[str, Any]]:
        """One dict per sample with the summary CSV columns (see :meth:`summary_csv`)."""
        points = {s.sample: s for s in self.point_samples}
        return [_sample_row(s, points.get(s.sample), self.phases.names, self.by) for s in self.samples]

    def to_csv(self, path: str | Path) -> None:
        """Write one row per field, atomically.

        Columns: ``image, magnification, pixel_size_um, sample``, then per phase ``<phase>_fraction`` (0..1),
        ``<phase>_point_fraction``, ``<phase>_pixels``, ``<phase>_islands``, ``<phase>_mean_island_area``,
        ``<phase>_median_island_area``, ``<phase>_mean_diameter``, ``<phase>_median_diameter`` (and
        ``<phase>_true_fraction``, ``<phase>_abs_error`` when a ground truth exists), then ``length_unit`` (``um`` or
        ``px``; areas are in its square), ``labelled_pixels``, ``points``, ``grid_spacing_px``. Undefined values are
        empty cells.
        """
        atomic_write_text(path, _csv_text(self.field_rows()))

    def summary_csv(self, path: str | Path) -> None:
        """Write one row per sample, atomically.

        Columns: ``sample, grouped_by, n_fields``, then per phase ``<phase>_mean, <phase>_std, <phase>_ci95,
        <phase>_rel_accuracy_pct, <phase>_fields_needed`` (area fractions), the same with ``_point_`` for the E562
        point count (``<phase>_point_mean`` ...), ``<phase>_true_mean`` with a ground truth,
        ``<phase>_islands_per_field, <phase>_mean_island_area, <phase>_mean_diameter``, then ``length_unit``.
        Undefined values (CI of a one-field sample) are empty cells.
        """
        atomic_write_text(path, _csv_text(self.sample_rows()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: phases, grouping, fields, samples (area, point count, morphology), warnings."""
        points = {s.sample: s for s in self.point_samples}
        return _clean(
            {
                "source": self.source,
                "grouped_by": self.by,
                "phases": self.phases.to_json(),
                "fields": [f.to_dict() for f in self.fields],
                "samples": [_sample_dict(s, points.get(s.sample)) for s in self.samples],
                "skipped": self.skipped,
                "failed": self.failed,
                "warnings": self.warnings,
            }
        )

    def to_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON, atomically (undefined values are null, never NaN)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def table(self) -> str:
        """The terminal report: fractions per sample with 95 % CI and %RA, morphology, truth, warnings."""
        return _format_report(self)

    # -- chart --------------------------------------------------------------------------------------

    def figure(self) -> Figure:
        """Bar chart of mean area fraction per phase per sample with 95 % CI error bars (matplotlib Figure).

        Uses the object-oriented matplotlib API only (no pyplot), so it neither needs nor changes a GUI backend.
        """
        return _bar_chart(self)

    def plot(self, path: str | Path, dpi: int = 150) -> None:
        """Save :meth:`figure` as an image (format from the suffix, e.g. ``.png``), atomically."""
        from napari_metalseg.io.atomic import atomic_path

        fig = self.figure()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".").lower() or "png")


def make_report(
    fields: Sequence[FieldResult],
    phases: PhaseSet | Sequence[str],
    by: str = "sample",
    source: str = "",
    skipped: Sequence[str] = (),
) -> Report:
    """Summarise measured fields into a :class:`Report` (area fractions and E562 point counts).

    >>> import numpy as np
    >>> from napari_metalseg.quantify import quantify_mask
    >>> m = np.zeros((8, 8), dtype=np.uint8); m[:, 4:] = 1
    >>> report = make_report([quantify_mask(m, ["a", "b"], name="f1", sample="S")], ["a", "b"])
    >>> "CI needs >= 2 fields" in report.table()
    True
    """
    phases = _as_phases(phases)
    by = _check_by(by)
    if not fields:
        raise MetalsegError("no fields to report")
    for f in fields:
        if f.phase_names != phases.names:
            raise MetalsegError(f"{f.image}: phases {f.phase_names} differ from {phases.names}")
    return Report(
        phases=phases,
        fields=list(fields),
        samples=summarize(fields, by, "area"),
        point_samples=summarize(fields, by, "points"),
        by=by,
        source=source,
        skipped=list(skipped),
    )


def _num(value: Any) -> Any:
    """Plain Python number or None (NaN/inf become None)."""
    if value is None:
        return None
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def _field_row(f: FieldResult, names: list[str], truth: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "image": f.image,
        "magnification": f.magnification,
        "pixel_size_um": f.pixel_size_um,
        "sample": f.sample,
    }
    errors = f.abs_errors
    for p in names:
        row.update(
            {
                f"{p}_fraction": f.fractions[p],
                f"{p}_point_fraction": f.point_fractions[p],
                f"{p}_pixels": f.pixels[p],
                f"{p}_islands": f.islands[p],
                f"{p}_mean_island_area": f.mean_island_area[p],
                f"{p}_median_island_area": f.median_island_area[p],
                f"{p}_mean_diameter": f.mean_diameter[p],
                f"{p}_median_diameter": f.median_diameter[p],
            }
        )
        if truth:
            row[f"{p}_true_fraction"] = f.true_fractions[p] if f.true_fractions else None
            row[f"{p}_abs_error"] = errors[p] if errors else None
    row.update(
        {
            "length_unit": f.length_unit,
            "labelled_pixels": f.labelled_pixels,
            "points": f.points,
            "grid_spacing_px": f.grid_spacing,
        }
    )
    return row


def _sample_row(s: SampleSummary, pts: SampleSummary | None, names: list[str], by: str) -> dict[str, Any]:
    row: dict[str, Any] = {"sample": s.sample, "grouped_by": by, "n_fields": s.n_fields}
    for p in names:
        for prefix, st in (("", s), ("point_", pts)):
            row.update(
                {
                    f"{p}_{prefix}mean": st.mean[p] if st else None,
                    f"{p}_{prefix}std": st.std[p] if st else None,
                    f"{p}_{prefix}ci95": st.ci95[p] if st else None,
                    f"{p}_{prefix}rel_accuracy_pct": st.relative_accuracy[p] if st else None,
                    f"{p}_{prefix}fields_needed": st.fields_needed[p] if st else None,
                }
            )
        if s.true_mean is not None:
            row[f"{p}_true_mean"] = s.true_mean[p]
        row.update(
            {
                f"{p}_islands_per_field": s.islands_per_field[p],
                f"{p}_mean_island_area": s.mean_island_area[p],
                f"{p}_mean_diameter": s.mean_diameter[p],
            }
        )
    row["length_unit"] = s.length_unit
    return row


def _sample_dict(s: SampleSummary, pts: SampleSummary | None) -> dict[str, Any]:
    return {
        "sample": s.sample,
        "n_fields": s.n_fields,
        "fields": s.fields,
        "area_fraction": s.stats_dict(),
        "point_fraction": pts.stats_dict() if pts else None,
        "true_mean": s.true_mean,
        "morphology": {
            "length_unit": s.length_unit,
            "islands_per_field": s.islands_per_field,
            "mean_island_area": s.mean_island_area,
            "mean_diameter": s.mean_diameter,
        },
        "warnings": s.warnings + (pts.warnings if pts and s.n_fields >= 2 else []),
    }


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _num(obj)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return buf.getvalue()


def _cell(value: Any) -> str:
    value = _num(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


# ----------------------------------------------------------------------------------------------------
# terminal table
# ----------------------------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100.0 * value:.{digits}f}"


def _mean_ci(s: SampleSummary | None, p: str) -> str:
    if s is None:
        return "-"
    if s.ci95[p] is None:
        return f"{_pct(s.mean[p])} ({_NO_CI})"
    return f"{_pct(s.mean[p])} ± {_pct(s.ci95[p])}"


def _ra(s: SampleSummary | None, p: str) -> str:
    if s is None or s.relative_accuracy[p] is None:
        return "-"
    return f"{s.relative_accuracy[p]:.1f}"


def _render_table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _fractions_block(report: Report) -> list[str]:
    points = {s.sample: s for s in report.point_samples}
    rows = []
    for s in report.samples:
        for i, p in enumerate(report.phases.names):
            pts = points.get(s.sample)
            rows.append(
                [
                    s.sample if i == 0 else "",
                    str(s.n_fields) if i == 0 else "",
                    p,
                    _mean_ci(s, p),
                    _ra(s, p),
                    _mean_ci(pts, p),
                    _ra(pts, p),
                ]
            )
    header = ["sample", "fields", "phase", "area %  (mean ± 95% CI)", "%RA", "E562 P_P %  (mean ± 95% CI)", "%RA"]
    return _render_table(header, rows, {1, 4, 6})


def _size(value: float | None, unit: str | None) -> str:
    return "-" if value is None or unit is None else f"{value:.4g} {unit}"


def _morphology_block(report: Report) -> list[str]:
    rows = []
    for s in report.samples:
        unit = s.length_unit
        for i, p in enumerate(report.phases.names):
            rows.append(
                [
                    s.sample if i == 0 else "",
                    p,
                    f"{s.islands_per_field[p]:.1f}",
                    _size(s.mean_island_area[p], f"{unit}^2" if unit else None),
                    _size(s.mean_diameter[p], unit),
                ]
            )
    return _render_table(["sample", "phase", "islands/field", "mean island area", "mean ECD"], rows, {2, 3, 4})


def _truth_block(report: Report) -> list[str]:
    with_truth = [f for f in report.fields if f.true_fractions is not None]
    rows = []
    for p in report.phases.names:
        errors = [f.abs_errors[p] for f in with_truth]  # type: ignore[index]
        rows.append(
            [
                p,
                _pct(float(np.mean([f.fractions[p] for f in with_truth]))),
                _pct(float(np.mean([f.true_fractions[p] for f in with_truth]))),  # type: ignore[index]
                _pct(float(np.mean(errors))),
                _pct(float(np.max(errors))),
            ]
        )
    header = ["phase", "predicted %", "true %", "mean |error| (pp)", "max |error| (pp)"]
    return [
        f"Predicted vs true area fraction ({len(with_truth)} of {len(report.fields)} fields have ground truth)",
        *_render_table(header, rows, {1, 2, 3, 4}),
    ]


def _grid_note(report: Report) -> str:
    spacings = sorted({f.grid_spacing for f in report.fields})
    points = [f.points for f in report.fields]
    grid = f"{spacings[0]} px" if len(spacings) == 1 else f"{spacings[0]}..{spacings[-1]} px"
    counts = f"{min(points)}" if min(points) == max(points) else f"{min(points)}..{max(points)}"
    return f"E562 P_P = point count on a grid of {grid} spacing, {counts} points per field"


def _format_report(report: Report) -> str:
    n_samples = len(report.samples)
    lines = [
        f"Phase fractions: {len(report.fields)} field(s), {n_samples} sample(s) grouped by {report.by}"
        + (f", from {report.source}" if report.source else ""),
        "area % = share of labelled pixels; " + _grid_note(report),
        "95% CI = t(0.975, n-1) * s / sqrt(n); %RA = 95% CI / mean * 100",
        "",
    ]
    lines += _fractions_block(report)
    lines += ["", "Morphology (8-connected islands, pooled over the fields of each sample)"]
    lines += _morphology_block(report)
    if report.has_truth:
        lines += ["", *_truth_block(report)]
    warnings = report.warnings
    if warnings:
        lines += ["", f"Warnings ({len(warnings)})", *(f"  - {w}" for w in warnings)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# chart
# ----------------------------------------------------------------------------------------------------


def _bar_chart(report: Report) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names, samples = report.phases.names, report.samples
    n_s, n_p = len(samples), len(names)
    fig = Figure(figsize=(max(5.5, 2.2 + 0.45 * n_s * n_p + 0.4 * n_s), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / n_p
    handles = []
    for j, (p, color) in enumerate(zip(names, report.phases.colors)):
        pos = np.arange(n_s) - 0.4 + width * (j + 0.5)
        handles.append(_phase_bars(ax, report, p, color, pos, width))
        truth = _truth_marks(ax, samples, p, pos, width)
    if report.has_truth:
        handles.append(truth)
    ax.set_xticks(np.arange(n_s), [f"{s.sample}\nn = {s.n_fields}" for s in samples], fontsize=9)
    ax.set_ylabel("area fraction (%)")
    top = max(100 * max(f.fractions.values()) for f in report.fields)
    ax.set_ylim(0, min(105.0, top * 1.15 + 2))
    ax.grid(axis="y", color="0.88", zorder=0)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    title = "Phase fractions: mean ± 95 % CI (dots: single fields)"
    if any(s.n_fields < 2 for s in samples):
        title += "\nno error bar: CI needs >= 2 fields"
    ax.set_title(title, fontsize=10)
    ax.legend(handles=handles, frameon=False, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _phase_bars(ax: Any, report: Report, phase: str, color: str, pos: np.ndarray, width: float) -> Any:
    samples = report.samples
    means = np.array([100 * s.mean[phase] for s in samples])
    has_ci = np.array([s.ci95[phase] is not None for s in samples])
    bars = ax.bar(pos, means, width * 0.92, color=color, edgecolor="black", linewidth=0.6, label=phase, zorder=2)
    if has_ci.any():
        ci = np.array([100 * (s.ci95[phase] or 0.0) for s in samples])
        ax.errorbar(
            pos[has_ci], means[has_ci], yerr=ci[has_ci], fmt="none", ecolor="black", elinewidth=1.1, capsize=3, zorder=4
        )
    rng = np.random.default_rng(0)
    by_name = {f.image: f for f in report.fields}
    for i, s in enumerate(samples):
        values = [100 * by_name[name].fractions[phase] for name in s.fields]
        jitter = rng.uniform(-0.2, 0.2, len(values)) * width
        ax.scatter(pos[i] + jitter, values, s=10, color="white", edgecolor="black", linewidth=0.5, zorder=3)
    return bars


def _truth_marks(ax: Any, samples: list[SampleSummary], phase: str, pos: np.ndarray, width: float) -> Any:
    idx = [i for i, s in enumerate(samples) if s.true_mean is not None]
    if not idx:
        return None
    values = [100 * samples[i].true_mean[phase] for i in idx]  # type: ignore[index]
    return ax.hlines(
        values,
        pos[idx] - 0.46 * width,
        pos[idx] + 0.46 * width,
        colors="black",
        linestyles="--",
        linewidth=1.6,
        zorder=5,
        label="true (mean)",
    )


# ----------------------------------------------------------------------------------------------------
# folders
# ----------------------------------------------------------------------------------------------------
