"""Small matplotlib canvases embedded in the dock widgets: the live training curve and the phase-fraction bars.

Both use the object-oriented matplotlib API on a ``FigureCanvasQTAgg`` (no pyplot, so no global backend is
touched). The live plot redraws at most ``max_fps`` times a second however fast points arrive: adding a point
only marks the plot dirty, a Qt timer redraws.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy

if TYPE_CHECKING:  # pragma: no cover
    from napari_metalseg.quantify import Report

BACKGROUND = "#262930"
"""napari's dark-theme panel colour, so the canvases blend into the dock."""
FOREGROUND = "#d6d0ce"
LOSS_COLOR = "#66ccee"
DICE_COLOR = "#ee8866"


def _style_axes(ax, grid: bool = True) -> None:
    ax.set_facecolor(BACKGROUND)
    for spine in ax.spines.values():
        spine.set_color(FOREGROUND)
    ax.tick_params(colors=FOREGROUND, labelsize=8)
    ax.xaxis.label.set_color(FOREGROUND)
    ax.yaxis.label.set_color(FOREGROUND)
    ax.title.set_color(FOREGROUND)
    if grid:
        ax.grid(True, color="#555555", linewidth=0.5, alpha=0.6)


class _Canvas(FigureCanvasQTAgg):
    def __init__(self, width: float, height: float) -> None:
        figure = Figure(figsize=(width, height), dpi=100, facecolor=BACKGROUND, layout="constrained")
        super().__init__(figure)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setMinimumHeight(int(height * 75))
        self.draw_count = 0

    def draw(self) -> None:  # noqa: D102  (counts redraws so tests can check the throttle)
        self.draw_count += 1
        super().draw()


class LivePlot(_Canvas):
    """Training loss (left axis) and validation mean Dice (right axis, %) against the step.

    Parameters
    ----------
    max_fps : float
        Upper bound on redraws per second.

    Attributes
    ----------
    steps, losses : list
        Every training point received.
    val_steps, dice : list
        Every validation point received (mean Dice in %).
    """

    def __init__(self, max_fps: float = 5.0) -> None:
        super().__init__(4.0, 2.8)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.dice: list[float] = []
        self._total = 0
        self._dirty = False
        self.ax = self.figure.add_subplot(111)
        self.ax_dice = self.ax.twinx()
        (self._loss_line,) = self.ax.plot([], [], color=LOSS_COLOR, linewidth=1.2, label="training loss")
        (self._dice_line,) = self.ax_dice.plot(
            [], [], color=DICE_COLOR, marker="o", markersize=4, linewidth=1.2, label="mean Dice (%)"
        )
        self.ax.set_xlabel("step", fontsize=8)
        self.ax.set_ylabel("loss", fontsize=8, color=LOSS_COLOR)
        self.ax_dice.set_ylabel("mean Dice %", fontsize=8, color=DICE_COLOR)
        self.ax_dice.set_ylim(0, 100)
        _style_axes(self.ax)
        _style_axes(self.ax_dice, grid=False)
        self.ax.set_title("waiting for training", fontsize=9)
        self._timer = QTimer(self)
        self._timer.setInterval(max(1, int(1000 / max_fps)))
        self._timer.timeout.connect(self._redraw_if_dirty)
        self._timer.start()
        self.draw()

    def reset(self, total: int = 0, title: str = "training") -> None:
        """Forget every point (a new run of ``total`` steps)."""
        self.steps.clear()
        self.losses.clear()
        self.val_steps.clear()
        self.dice.clear()
        self._total = int(total)
        self.ax.set_title(title, fontsize=9)
        self._dirty = True

    def add_loss(self, step: int, loss: float) -> None:
        """Add a training-loss point (drawn at the next timer tick), in step order whatever order it arrives in."""
        _insert_in_order(self.steps, self.losses, int(step), float(loss))
        self._dirty = True

    def add_dice(self, step: int, dice: float) -> None:
        """Add a validation point, mean Dice in % (drawn at the next timer tick), in step order."""
        _insert_in_order(self.val_steps, self.dice, int(step), float(dice))
        self._dirty = True

    def set_title(self, title: str) -> None:
        self.ax.set_title(title, fontsize=9)
        self._dirty = True

    def flush(self) -> None:
        """Redraw now if anything changed (end of a run)."""
        self._redraw_if_dirty()

    def _redraw_if_dirty(self) -> None:
        if not self._dirty or not self.isVisible() and self.draw_count > 1:
            return
        self._dirty = False
        self._loss_line.set_data(self.steps, self.losses)
        self._dice_line.set_data(self.val_steps, self.dice)
        right = max(self._total, self.steps[-1] if self.steps else 1, 1)
        self.ax.set_xlim(0, right * 1.03)
        finite = [v for v in self.losses if np.isfinite(v)]
        if finite:
            self.ax.set_ylim(0, max(finite) * 1.08 or 1.0)
        self.draw_idle()


class FractionBars(_Canvas):
    """Bar chart of the area fraction of each phase (%), with 95 % CI error bars when the report has them."""

    def __init__(self) -> None:
        super().__init__(4.0, 2.2)
        self.ax = self.figure.add_subplot(111)
        _style_axes(self.ax)
        self.values: list[float] = []
        self.errors: list[float | None] = []
        self.clear()

    def clear(self, message: str = "no phase labels") -> None:
        """Empty chart with a message."""
        self.values, self.errors = [], []
        self.ax.clear()
        _style_axes(self.ax)
        self.ax.text(
            0.5, 0.5, message, ha="center", va="center", color=FOREGROUND, fontsize=9, transform=self.ax.transAxes
        )
        self.ax.set_xticks([])
        self.ax.set_yticks([])
        self.draw_idle()

    def show_report(self, report: Report) -> None:
        """Draw the first sample summary of ``report`` (the widget reports all its fields as one sample)."""
        summary = report.samples[0]
        names = report.phases.names
        values = [100.0 * summary.mean[p] for p in names]
        errors = [None if summary.ci95[p] is None else 100.0 * summary.ci95[p] for p in names]
        self._bars(names, values, errors, report.phases.colors, summary.n_fields)

    def _bars(
        self,
        names: Sequence[str],
        values: Sequence[float],
        errors: Sequence[float | None],
        colors: Sequence[str],
        n_fields: int,
    ) -> None:
        self.values, self.errors = list(values), list(errors)
        ax = self.ax
        ax.clear()
        _style_axes(ax)
        pos = list(range(len(names)))
        ax.bar(pos, values, 0.7, color=list(colors), edgecolor=FOREGROUND, linewidth=0.6, zorder=2)
        have_ci = [i for i, e in enumerate(errors) if e is not None]
        if have_ci:
            ax.errorbar(
                [pos[i] for i in have_ci],
                [values[i] for i in have_ci],
                yerr=[errors[i] for i in have_ci],
                fmt="none",
                ecolor=FOREGROUND,
                elinewidth=1.2,
                capsize=4,
                zorder=3,
            )
        for i, v in enumerate(values):
            top = v + (errors[i] or 0.0)
            ax.text(pos[i], top + 1.5, f"{v:.1f} %", ha="center", va="bottom", color=FOREGROUND, fontsize=8)
        ax.set_xticks(pos, list(names), fontsize=8)
        ax.set_ylim(0, max(100.0, max((v + (e or 0) for v, e in zip(values, errors)), default=0) + 10))
        ax.set_ylabel("area fraction %", fontsize=8)
        ax.set_title(
            f"{n_fields} field{'s' if n_fields != 1 else ''}" + (" (mean ± 95 % CI)" if have_ci else ""), fontsize=9
        )
        self.draw_idle()


def _insert_in_order(steps: list[int], values: list[float], step: int, value: float) -> None:
    """Insert a point keeping ``steps`` sorted (Qt may deliver a worker's events late when a slot runs the event
    loop, e.g. napari's progress bar; a curve must not zigzag back)."""
    import bisect

    index = bisect.bisect_right(steps, step)
    steps.insert(index, step)
    values.insert(index, value)
