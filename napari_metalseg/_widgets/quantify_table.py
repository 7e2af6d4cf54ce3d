"""The table of the Quantify dock: one row per phase (area fraction, 95 % CI, islands, mean island area and ECD)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

if TYPE_CHECKING:  # pragma: no cover
    from napari_metalseg.quantify import Report

COLUMNS = ("phase", "area fraction", "95 % CI", "islands", "mean island area", "mean ECD")
"""Column keys of the table (for :meth:`FractionTable.cell`); the titles shown carry the units (``area %``,
``mean area (µm²)`` ...): fractions and CI half-widths in percent, sizes in um^2 / um or px^2 / px."""
_UNIT_TEXT = {"um": "µm", "px": "px"}
_TOOLTIPS = (
    "phase (label k = k-th phase)",
    "area fraction over the labelled pixels, in percent (mean over the fields)",
    "half-width of the 95 % confidence interval of the mean, in percentage points (needs >= 2 fields)",
    "8-connected islands of the phase (mean per field with several fields)",
    "mean island area (pooled over the fields)",
    "mean equivalent circle diameter of the islands",
)


def _fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.2f}"


def _fmt_size(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _headers(unit: str, one_field: bool) -> list[str]:
    """Column titles; units live in the titles so the cells stay narrow."""
    length = _UNIT_TEXT.get(unit, unit)
    return [
        "phase",
        "area\n%",
        "95 % CI\n± %",
        "islands" if one_field else "islands\n/ field",
        f"mean area\n{length}²",
        f"mean ECD\n{length}",
    ]


class FractionTable(QTableWidget):
    """The phase table of a quantification report, as tall as its rows (the chart below gets the rest)."""

    def __init__(self, parent=None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(_headers("px", True))
        self.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setStretchLastSection(True)

    def fit(self) -> None:
        """Table height = its rows."""
        try:
            header = self.horizontalHeader()
            height = max(header.height(), header.sizeHint().height()) + 2 * self.frameWidth()
            height += sum(self.rowHeight(r) for r in range(self.rowCount()))
            scroll = self.horizontalScrollBar()
            if scroll.maximum() > 0:
                height += scroll.sizeHint().height()
            self.setFixedHeight(max(height, 60))
        except RuntimeError:  # the widget is being deleted
            pass

    def show_report(self, report: Report | None) -> None:
        """Fill the table with the first sample of ``report`` (empty for None)."""
        from qtpy.QtGui import QColor

        self.setRowCount(0)
        if report is None:
            self.fit()
            return
        summary = report.samples[0]
        one = report.fields[0] if summary.n_fields == 1 else None
        unit = summary.length_unit or report.fields[0].length_unit
        self.setHorizontalHeaderLabels(_headers(unit, one is not None))
        for col, tip in enumerate(_TOOLTIPS):
            self.horizontalHeaderItem(col).setToolTip(tip)
        self.setRowCount(len(report.phases))
        for row, phase in enumerate(report.phases.phases):
            p = phase.name
            islands = one.islands[p] if one is not None else summary.islands_per_field.get(p)
            cells = [
                p,
                _fmt_pct(summary.mean[p]),
                "—" if summary.ci95[p] is None else f"± {100 * summary.ci95[p]:.2f}",
                "—" if islands is None else (f"{islands}" if one is not None else f"{islands:.1f}"),
                _fmt_size(summary.mean_island_area.get(p)),
                _fmt_size(summary.mean_diameter.get(p)),
            ]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col > 0:
                    item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
                else:
                    item.setForeground(QColor(phase.color))
                self.setItem(row, col, item)
        self.resizeColumnsToContents()
        self.fit()
        QTimer.singleShot(0, self.fit)  # again once the header has its two-line height

    def cell(self, row: int, column: int | str) -> str:
        """Text of a cell (``column`` by index or by its :data:`COLUMNS` name)."""
        col = COLUMNS.index(column) if isinstance(column, str) else column
        item = self.item(row, col)
        return "" if item is None else item.text()
