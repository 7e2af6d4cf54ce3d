"""The Quantify dock widget: phase fractions of the open phase Labels layers, live while you correct them.

For the chosen Labels layer (or every phase Labels layer: "all phase layers", one field each) the widget shows a
table (phase, area fraction, 95 % CI over the fields, islands, mean island area and equivalent circle diameter), a
bar chart of the fractions (with 95 % CI error bars when there are two fields or more) and exports the report as
CSV or JSON. Every number comes from the engine (:func:`napari_metalseg.quantify.quantify_mask` and
:func:`~napari_metalseg.quantify.make_report`); the widget only collects the masks and shows the result.

Live update: painting, filling, erasing or replacing a Labels layer's data re-quantifies after a short pause
(debounced, computed in a worker thread).

Physical units: island sizes are in um^2 / um when the micrograph's pixel size is known, from the image layer's
``metadata["metalseg_micrograph"]["pixel_size_um"]`` or else its ``scale`` when its ``units`` are a length (the
plugin's reader sets both); otherwise in px^2 / px. The image of a Labels layer is the one named in its
``metadata["metalseg_image"]``, else ``"<image> labels"`` / ``"<image> mask"`` / ``"<image> phases"`` by name, else
the only image of the same size.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED, PhaseSet, labels_to_mask

from .layers import (
    IMAGE_KEY,
    MICROGRAPH_KEY,
    PHASE_LAYER,
    is_micrograph_layer,
    phases_of_layer,
    report_error,
    session_of,
)
from .plots import FractionBars

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Labels

    from napari_metalseg.quantify import Report

log = logging.getLogger(__name__)

ALL_LAYERS = "all phase layers"
COLUMNS = ("phase", "area fraction", "95 % CI", "islands", "mean island area", "mean ECD")
"""Column keys of the table (for :meth:`QuantifyWidget.cell`); the titles shown carry the units (``area %``,
``mean area (µm²)`` ...): fractions and CI half-widths in percent, sizes in um^2 / um or px^2 / px."""
DEBOUNCE_MS = 300
LABEL_EVENTS = ("data", "set_data", "paint", "labels_update", "metadata")
_UNIT_TEXT = {"um": "µm", "px": "px"}


# ----------------------------------------------------------------------------------------------------
# calibration: which image a Labels layer belongs to, and its pixel size
# ----------------------------------------------------------------------------------------------------


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _scale_um(layer: Any) -> float | None:
    """The x pixel size in um from ``scale`` when the layer's units are a length (None for pixels)."""
    units = getattr(layer, "units", None)
    scale = np.asarray(getattr(layer, "scale", [1.0]), dtype=float)
    if units is None or len(units) == 0 or scale.size == 0:
        return None
    if scale.size >= 2 and not np.isclose(scale[-1], scale[-2], rtol=1e-6):
        return None  # non-square pixels: no single pixel size
    try:
        return _positive((float(scale[-1]) * units[-1]).to("micrometer").magnitude)
    except Exception:  # noqa: BLE001 - pint raises DimensionalityError for "pixel" and others
        return None


def layer_calibration(layer: Any) -> tuple[float | None, float | None]:
    """``(magnification, pixel size in um)`` of an image layer; None where unknown.

    The micrograph metadata written by the plugin's reader (``metadata["metalseg_micrograph"]``) wins; else the
    pixel size is the layer's ``scale`` when its ``units`` are a length (``um``, ``nm``, ``mm`` ...).
    """
    if layer is None:
        return None, None
    info = (getattr(layer, "metadata", None) or {}).get(MICROGRAPH_KEY) or {}
    magnification = _positive(info.get("magnification"))
    pixel_size = _positive(info.get("pixel_size_um")) or _scale_um(layer)
    return magnification, pixel_size


def image_for_labels(viewer: napari.Viewer, labels: Labels) -> Any:
    """The micrograph layer a Labels layer belongs to (see the module docstring), or None."""
    name = (labels.metadata or {}).get(IMAGE_KEY)
    if name and name in viewer.layers and is_micrograph_layer(viewer.layers[name]):
        return viewer.layers[name]
    for suffix in (" labels", " annotations", " mask", " phases"):
        if labels.name.endswith(suffix):
            base = labels.name[: -len(suffix)]
            if base in viewer.layers and is_micrograph_layer(viewer.layers[base]):
                return viewer.layers[base]
    shape = tuple(np.shape(labels.data))[-2:]
    same = [
        lay
        for lay in viewer.layers
        if is_micrograph_layer(lay)
        and (tuple(np.shape(lay.data))[:2] if lay.rgb else tuple(np.shape(lay.data))[-2:]) == shape
    ]
    return same[0] if len(same) == 1 else None


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


_TOOLTIPS = (
    "phase (label k = k-th phase)",
    "area fraction over the labelled pixels, in percent (mean over the fields)",
    "half-width of the 95 % confidence interval of the mean, in percentage points (needs >= 2 fields)",
    "8-connected islands of the phase (mean per field with several fields)",
    "mean island area (pooled over the fields)",
    "mean equivalent circle diameter of the islands",
)


# ----------------------------------------------------------------------------------------------------
# the widget
# ----------------------------------------------------------------------------------------------------


class QuantifyWidget(QWidget):
    """Phase fractions, 95 % CI and island statistics of phase Labels layers, updated live.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).

    Attributes
    ----------
    report : Report or None
        The engine's report of the current layers (None when nothing is labelled).
    table : QTableWidget
    bars : FractionBars
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_of(napari_viewer)
        self.report: Report | None = None
        self.updates = 0
        self._generation = 0
        self._workers: set = set()
        self._connected: set[int] = set()
        self._build()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.update_now)
        self._connect_viewer()
        self._refresh_layers()
        self.schedule_update()

    # -- layout ----------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.setMinimumWidth(480)
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("labels"))
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip(
            "The phase Labels layer to quantify, or every phase Labels layer (one field "
            "each; the 95 % CI needs two fields or more)."
        )
        row.addWidget(self.layer_combo, 1)
        layout.addLayout(row)
        row = QHBoxLayout()
        self.live_check = QCheckBox("live update")
        self.live_check.setChecked(True)
        self.live_check.setToolTip("Re-quantify after every correction (debounced).")
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.update_now)
        row.addWidget(self.live_check)
        row.addStretch(1)
        row.addWidget(refresh)
        layout.addLayout(row)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(_headers("px", True))
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        header.setStretchLastSection(True)
        layout.addWidget(self.table)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.note)
        self.bars = FractionBars()
        layout.addWidget(self.bars)
        row = QHBoxLayout()
        self.csv_button = QPushButton("Export CSV…")
        self.csv_button.setToolTip("One row per field: fractions, point counts, islands (Report.to_csv).")
        self.csv_button.clicked.connect(lambda: self.export_csv())
        self.json_button = QPushButton("Export JSON…")
        self.json_button.setToolTip("Fields and summary with 95 % CI and relative accuracy (Report.to_json).")
        self.json_button.clicked.connect(lambda: self.export_json())
        row.addWidget(self.csv_button)
        row.addWidget(self.json_button)
        layout.addLayout(row)
        self._set_export_enabled(False)
        self.layer_combo.currentIndexChanged.connect(lambda _: self.schedule_update())
        self.live_check.toggled.connect(lambda on: self.schedule_update() if on else None)

    def _set_export_enabled(self, enabled: bool) -> None:
        self.csv_button.setEnabled(enabled)
        self.json_button.setEnabled(enabled)

    # -- following the viewer --------------------------------------------------------------------------
    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        events.inserted.connect(self._on_inserted)
        events.removed.connect(self._on_removed)
        events.moved.connect(self._refresh_layers)
        for layer in self.viewer.layers:
            self._watch(layer)
        self.session.model_changed.connect(self.schedule_update)

    def _watch(self, layer: Any) -> None:
        from napari.layers import Labels

        layer.events.name.connect(self._refresh_layers)
        if isinstance(layer, Labels) and id(layer) not in self._connected:
            self._connected.add(id(layer))
            for name in LABEL_EVENTS:
                emitter = getattr(layer.events, name, None)
                if emitter is not None:
                    emitter.connect(self._on_labels_event)

    def _on_inserted(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            self._watch(layer)
        self._refresh_layers()
        self.schedule_update()

    def _on_removed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            self._connected.discard(id(layer))
        self._refresh_layers()
        self.schedule_update()

    def _on_labels_event(self, event: Any = None) -> None:
        if self.live_check.isChecked():
            self.schedule_update()

    def _refresh_layers(self, event: Any = None) -> None:
        from napari.layers import Labels

        try:
            current = self.layer_combo.currentText()
        except RuntimeError:  # the widget is being deleted
            return
        names = [lay.name for lay in reversed(list(self.viewer.layers)) if isinstance(lay, Labels)]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems([*names, ALL_LAYERS])
        if current in names or current == ALL_LAYERS:
            self.layer_combo.setCurrentText(current)
        elif PHASE_LAYER in names:
            self.layer_combo.setCurrentText(PHASE_LAYER)
        self.layer_combo.blockSignals(False)
        if self.layer_combo.currentText() != current:
            self.schedule_update()

    def select_layer(self, name: str) -> None:
        """Quantify the Labels layer ``name`` (or :data:`ALL_LAYERS`)."""
        self._refresh_layers()
        self.layer_combo.setCurrentText(name)
        self.schedule_update()

    def schedule_update(self, *_: Any) -> None:
        """Re-quantify after :data:`DEBOUNCE_MS` of quiet."""
        try:
            self._timer.start()
        except RuntimeError:  # the widget is being deleted
            pass

    # -- measuring -------------------------------------------------------------------------------------
    def _phases_for(self, layer: Labels, labels: np.ndarray) -> PhaseSet:
        phases = phases_of_layer(layer) or self.session.phases
        if phases is None:
            top = max(1, int(labels.max(initial=0)))
            phases = PhaseSet.from_names([f"label {k}" for k in range(1, top + 1)])
        return phases

    def _layers(self) -> list[Labels]:
        from napari.layers import Labels

        choice = self.layer_combo.currentText()
        if choice == ALL_LAYERS:
            labels = [lay for lay in self.viewer.layers if isinstance(lay, Labels) and np.ndim(lay.data) == 2]
            tagged = [lay for lay in labels if phases_of_layer(lay) is not None]
            return tagged or labels
        if choice and choice in self.viewer.layers and isinstance(self.viewer.layers[choice], Labels):
            return [self.viewer.layers[choice]]
        return []

    def collect(self) -> tuple[list[dict], PhaseSet | None, list[str]]:
        """The fields to measure (copies of the masks, with calibration), their phase set and notes (GUI thread)."""
        layers = self._layers()
        fields: list[dict] = []
        notes: list[str] = []
        phases: PhaseSet | None = None
        for layer in layers:
            labels = np.asarray(layer.data)
            if labels.ndim != 2:
                notes.append(f"{layer.name}: {labels.ndim}-D labels skipped")
                continue
            layer_phases = self._phases_for(layer, labels)
            if phases is None:
                phases = layer_phases
            elif layer_phases.names != phases.names:
                notes.append(f"{layer.name}: other phases ({', '.join(layer_phases.names)}) skipped")
                continue
            top = int(labels.max(initial=0))
            if top > len(phases):
                notes.append(f"{layer.name}: labels above {len(phases)} are not phases and are left out")
            mask = labels_to_mask(labels, len(phases))  # a copy: painting may go on while the worker measures
            if not (mask != UNLABELED).any():
                notes.append(f"{layer.name}: nothing labelled yet")
                continue
            image = image_for_labels(self.viewer, layer)
            magnification, pixel_size = layer_calibration(image) if image is not None else (None, None)
            if pixel_size is None:
                pixel_size = _scale_um(layer)
            fields.append(
                {"mask": mask, "name": layer.name, "pixel_size_um": pixel_size, "magnification": magnification}
            )
        return fields, phases, notes

    def update_now(self) -> None:
        """Measure the current layers now (in a worker thread; the table updates when it returns)."""
        from napari.qt.threading import create_worker

        try:
            fields, phases, notes = self.collect()
        except RuntimeError:  # the widget is being deleted
            return
        self._generation += 1
        generation = self._generation
        if not fields or phases is None:
            self._show(None, notes or ["no phase Labels layer"], generation)
            return
        worker = create_worker(measure, fields, phases, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda report: self._show(report, notes, generation))
        worker.errored.connect(lambda exc: self._failed(exc, generation))
        worker.finished.connect(lambda: self._workers.discard(worker))
        self._workers.add(worker)
        worker.start()

    def _failed(self, exc: BaseException, generation: int) -> None:
        if generation != self._generation:
            return
        self._show(None, [f"error: {exc}"], generation)
        if not isinstance(exc, MetalsegError):
            report_error(exc)

    def _show(self, report: Report | None, notes: list[str], generation: int) -> None:
        if generation != self._generation:
            return  # a newer measurement is on its way
        try:
            self.report = report
            self.updates += 1
            self._fill_table(report)
        except RuntimeError:  # the widget is being deleted
            return
        if report is None:
            self.bars.clear(notes[0] if notes else "nothing labelled")
        else:
            self.bars.show_report(report)
            summary = report.samples[0]
            if summary.n_fields < 2:
                notes = [
                    *notes,
                    "95 % CI needs two fields or more: choose 'all phase layers' with several phase layers open",
                ]
            notes = [*notes, *summary.warnings[:2]] if summary.n_fields >= 2 else notes
        self.note.setText("\n".join(notes))
        self._set_export_enabled(report is not None)

    def _fit_table(self) -> None:
        """Table height = its rows (the chart below gets the rest of the dock)."""
        try:
            header = self.table.horizontalHeader()
            height = max(header.height(), header.sizeHint().height()) + 2 * self.table.frameWidth()
            height += sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
            scroll = self.table.horizontalScrollBar()
            if scroll.maximum() > 0:
                height += scroll.sizeHint().height()
            self.table.setFixedHeight(max(height, 60))
        except RuntimeError:  # the widget is being deleted
            pass

    def _fill_table(self, report: Report | None) -> None:
        self.table.setRowCount(0)
        if report is None:
            self._fit_table()
            return
        summary = report.samples[0]
        one = report.fields[0] if summary.n_fields == 1 else None
        unit = summary.length_unit or report.fields[0].length_unit
        self.table.setHorizontalHeaderLabels(_headers(unit, one is not None))
        for col, tip in enumerate(_TOOLTIPS):
            self.table.horizontalHeaderItem(col).setToolTip(tip)
        self.table.setRowCount(len(report.phases))
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
                    from qtpy.QtGui import QColor

                    item.setForeground(QColor(phase.color))
                self.table.setItem(row, col, item)
        self.table.resizeColumnsToContents()
        self._fit_table()
        QTimer.singleShot(0, self._fit_table)  # again once the header has its two-line height

    def cell(self, row: int, column: int | str) -> str:
        """Text of a table cell (``column`` by index or by its :data:`COLUMNS` name)."""
        col = COLUMNS.index(column) if isinstance(column, str) else column
        item = self.table.item(row, col)
        return "" if item is None else item.text()

    # -- export ----------------------------------------------------------------------------------------
    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the per-field CSV (:meth:`Report.to_csv`) and, as ``metalseg quantify --csv`` does, the summary
        with the 95 % CI next to it as ``<stem>_samples.csv`` (:meth:`Report.summary_csv`).

        Asks for a file when ``path`` is None; returns the per-field file (None when nothing was written).
        """
        return self._export(path, "CSV (*.csv)", ".csv", "to_csv")

    def export_json(self, path: str | Path | None = None) -> Path | None:
        """Write the report as JSON (:meth:`Report.to_json`); asks for a file when ``path`` is None."""
        return self._export(path, "JSON (*.json)", ".json", "to_json")

    def _export(self, path: str | Path | None, filter_: str, suffix: str, method: str) -> Path | None:
        from napari.utils.notifications import show_error, show_info
        from qtpy.QtWidgets import QFileDialog

        if self.report is None:
            show_error("nothing to export: no labelled phase layer")
            return None
        if path is None:
            chosen, _ = QFileDialog.getSaveFileName(self, "Export phase fractions", f"phase_fractions{suffix}", filter_)
            if not chosen:
                return None
            path = chosen
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(suffix)
        try:
            getattr(self.report, method)(path)
            if method == "to_csv":
                self.report.summary_csv(path.with_name(f"{path.stem}_samples.csv"))
        except (OSError, MetalsegError) as exc:
            show_error(f"{path}: cannot write ({exc})")
            return None
        show_info(f"phase fractions written to {path}")
        return path


def measure(fields: list[dict], phases: PhaseSet) -> Report:
    """Quantify the collected fields with the engine (worker thread): one field per layer, one sample in all."""
    from napari_metalseg.quantify import make_report, quantify_mask

    results = [
        quantify_mask(
            f["mask"],
            phases,
            pixel_size_um=f["pixel_size_um"],
            name=f["name"],
            magnification=f["magnification"],
            sample="open layers",
        )
        for f in fields
    ]
    return make_report(results, phases, by="all", source="napari")
