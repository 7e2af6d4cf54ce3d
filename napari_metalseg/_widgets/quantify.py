"""The Quantify dock widget: phase fractions of the open micrographs, live while you correct them.

For the chosen micrograph (its ``<image> phases`` layer, :mod:`.roles`), a Labels layer that belongs to no
micrograph, or every micrograph ("all micrographs": one field per micrograph, its phases layer) the widget shows a
table (phase, area fraction, 95 % CI over the fields, islands, mean island area and equivalent circle diameter), a
bar chart of the fractions (with 95 % CI error bars when there are two fields or more) and exports the report as
CSV or JSON. Every number comes from the engine (:func:`napari_metalseg.quantify.quantify_mask` and
:func:`~napari_metalseg.quantify.make_report`); the widget only collects the masks and shows the result.

Live update: painting, filling, erasing or replacing a Labels layer's data re-quantifies after a short pause
(debounced, measured by a job in a worker thread, one at a time: changes made meanwhile are measured when it ends).

Physical units: island sizes are in um^2 / um when the micrograph's pixel size is known
(:func:`.calibration.layer_calibration`: from the image layer's ``metadata["metalseg_micrograph"]["pixel_size_um"]``
or else its ``scale`` when its ``units`` are a length; the plugin's reader sets both); otherwise in px^2 / px. The
micrograph of a phases layer is the one it names (:func:`.roles.image_of`). The table is
:mod:`.quantify_table`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED, PhaseSet, labels_to_mask
from napari_metalseg.progress import Job, ProgressEvent

from .base import DockWidget, report_error
from .calibration import layer_calibration, scale_um
from .layers import phases_of_layer
from .plots import FractionBars
from .quantify_table import COLUMNS, FractionTable
from .roles import PHASES, find_layer, image_of, micrographs, role_of

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Labels

    from napari_metalseg.quantify import Report

__all__ = ["ALL_LAYERS", "COLUMNS", "QuantifyWidget", "measure_job"]

log = logging.getLogger(__name__)

ALL_LAYERS = "all micrographs"
DEBOUNCE_MS = 300
LABEL_EVENTS = ("data", "set_data", "paint", "labels_update", "metadata")


# ----------------------------------------------------------------------------------------------------
# the widget
# ----------------------------------------------------------------------------------------------------


class QuantifyWidget(DockWidget):
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
        super().__init__(napari_viewer)
        self.report: Report | None = None
        self.updates = 0
        self._generation = 0
        self._pending = False
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

        self.table = FractionTable()
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

    def _choices(self) -> list[tuple[str, str]]:
        """``(text, layer name)`` of the combo: each micrograph with a phases layer, then other Labels layers that
        belong to no micrograph (e.g. a mask the user opened)."""
        from napari.layers import Labels

        items = []
        for image in micrographs(self.viewer):
            layer = find_layer(self.viewer, image, PHASES)
            if layer is not None:
                items.append((image.name, layer.name))
        for layer in reversed(list(self.viewer.layers)):
            if isinstance(layer, Labels) and role_of(layer) is None and np.ndim(layer.data) == 2:
                items.append((f"{layer.name} (labels layer)", layer.name))
        return items

    def _refresh_layers(self, event: Any = None) -> None:
        try:
            current = self.layer_combo.currentText()
        except RuntimeError:  # the widget is being deleted
            return
        items = self._choices()
        texts = [text for text, _ in items]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        for text, name in items:
            self.layer_combo.addItem(text, name)
        self.layer_combo.addItem(ALL_LAYERS, ALL_LAYERS)
        if current in texts or current == ALL_LAYERS:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)
        if self.layer_combo.currentText() != current:
            self.schedule_update()

    def select_layer(self, name: str) -> None:
        """Quantify a micrograph (its phases layer), a Labels layer by name, or :data:`ALL_LAYERS`."""
        self._refresh_layers()
        index = self.layer_combo.findText(name)
        if index < 0:
            index = self.layer_combo.findData(name)
        self.layer_combo.setCurrentIndex(index)
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
        """The phase layers to measure: one per micrograph for :data:`ALL_LAYERS` (its ``<image> phases``)."""
        from napari.layers import Labels

        choice = self.layer_combo.currentData()
        if choice == ALL_LAYERS:
            found = [find_layer(self.viewer, image, PHASES) for image in micrographs(self.viewer)]
            return [layer for layer in found if layer is not None]
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
            image = image_of(self.viewer, layer)
            magnification, pixel_size = layer_calibration(image) if image is not None else (None, None)
            if pixel_size is None:
                pixel_size = scale_um(layer)
            name = image.name if image is not None else layer.name
            fields.append({"mask": mask, "name": name, "pixel_size_um": pixel_size, "magnification": magnification})
        return fields, phases, notes

    def update_now(self) -> None:
        """Measure the current layers now (a job in a worker thread; the table updates when it returns)."""
        try:
            fields, phases, notes = self.collect()
        except RuntimeError:  # the widget is being deleted
            return
        self._generation += 1
        generation = self._generation
        if not fields or phases is None:
            self._show(None, notes or ["no phase Labels layer"], generation)
            return
        if self.busy:  # measured again when the running job ends
            self._pending = True
            return
        self._pending = False
        self.start_job(
            measure_job(fields, phases),
            "quantifying",
            lambda report: self._show(report, notes, generation),
            on_error=lambda exc: self._measure_failed(exc, generation),
            on_finish=self._measured,
            progress=False,
        )

    def _measured(self) -> None:
        if self._pending:
            self.update_now()

    def _measure_failed(self, exc: BaseException, generation: int) -> None:
        if generation != self._generation:
            return
        self.last_error = exc
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
                    "95 % CI needs two fields or more: choose 'all micrographs' with several micrographs predicted",
                ]
            notes = [*notes, *summary.warnings[:2]] if summary.n_fields >= 2 else notes
        self.note.setText("\n".join(notes))
        self._set_export_enabled(report is not None)

    def _fill_table(self, report: Report | None) -> None:
        self.table.show_report(report)

    def cell(self, row: int, column: int | str) -> str:
        """Text of a table cell (``column`` by index or by its :data:`COLUMNS` name)."""
        return self.table.cell(row, column)

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


def measure_job(fields: list[dict], phases: PhaseSet) -> Job[Report]:
    """Job: quantify the collected fields with the engine (worker thread), one field per layer, one sample in all.

    Yields
    ------
    ProgressEvent
        ``"quantify"`` per field measured.

    Returns
    -------
    Report
    """
    from napari_metalseg.quantify import make_report, quantify_mask

    results = []
    for i, f in enumerate(fields):
        results.append(
            quantify_mask(
                f["mask"],
                phases,
                pixel_size_um=f["pixel_size_um"],
                name=f["name"],
                magnification=f["magnification"],
                sample="open layers",
            )
        )
        yield ProgressEvent("quantify", i + 1, len(fields), message=f["name"])
    return make_report(results, phases, by="all", source="napari")
