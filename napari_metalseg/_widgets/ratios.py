"""The Phase ratios dock widget: the phase fractions the user knows (point count, lever rule), one slider per phase,
applied live. A model trained with ratio guidance reads them; with every model the labels of the whole micrograph are
given these fractions (:mod:`napari_metalseg.priors`).

The sliders always sum to 1: moving one rescales the others proportionally (:func:`rebalance`). Every change
sets :meth:`Session.set_ratios <napari_metalseg._widgets.session.Session.set_ratios>` and, after a 150 ms pause
(debounce), re-predicts the chosen micrograph into its ``<image> phases`` layer (when it has been predicted), keeping
the user's corrections there (:mod:`.edits`). The image embedding is cached, so only the light decoder reruns.
"No guidance" predicts without ratios; "estimate from labels" reads the phase fractions of a Labels layer
(e.g. a corrected or a reference annotation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
)

from napari_metalseg._widgets.base import DockWidget
from napari_metalseg._widgets.layers import phase_fractions_of_layer, phase_legend_html
from napari_metalseg._widgets.picker import LayerPicker
from napari_metalseg._widgets.predict import start_prediction
from napari_metalseg._widgets.roles import PHASES, find_layer, is_2d_image
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.options import reads_ratios

SLIDER_STEPS = 1000
DEBOUNCE_MS = 150


def rebalance(ratios: Sequence[float], index: int, value: float) -> np.ndarray:
    """Set ``ratios[index] = value`` and rescale the other ratios proportionally so the sum stays 1.

    When the others are all zero, the remainder is shared equally among them.
    """
    r = np.clip(np.asarray(ratios, np.float64), 0, None)
    r = r / r.sum() if r.sum() > 0 else np.full(r.size, 1.0 / r.size)
    if r.size == 1:
        return np.ones(1)
    value = float(np.clip(value, 0.0, 1.0))
    others = np.arange(r.size) != index
    rest = r[others].sum()
    if rest > 1e-12:
        r[others] *= (1.0 - value) / rest
    else:
        r[others] = (1.0 - value) / (r.size - 1)
    r[index] = value
    return r / r.sum()


class RatioWidget(DockWidget):
    """Dock widget: phase-ratio guidance sliders (normalised), live decoder-only re-prediction.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.ratios: np.ndarray | None = None
        self.sliders: list[QSlider] = []
        self._values: list[QLabel] = []
        self._pending = False

        self.none = QCheckBox("fractions unknown (no guidance)")
        self.live = QCheckBox("update the micrograph's phases live")
        self.live.setChecked(True)
        self.image = LayerPicker(napari_viewer, Image, accept=is_2d_image)
        self.image.setToolTip("The micrograph whose '<image> phases' layer follows the sliders (once predicted).")
        self.labels = LayerPicker(napari_viewer, Labels)
        self.estimate_button = QPushButton("Estimate from labels")
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setTextFormat(Qt.TextFormat.RichText)
        self._grid = QGridLayout()
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DEBOUNCE_MS)

        layout = QVBoxLayout(self)
        layout.addWidget(self.note)
        row = QHBoxLayout()
        row.addWidget(QLabel("Micrograph"))
        row.addWidget(self.image, 1)
        layout.addLayout(row)
        layout.addLayout(self._grid)
        layout.addWidget(self.none)
        layout.addWidget(self.live)
        row = QHBoxLayout()
        row.addWidget(self.estimate_button)
        row.addWidget(self.labels, 1)
        layout.addLayout(row)
        layout.addWidget(self.result)
        layout.addStretch(1)

        self.none.toggled.connect(self._on_none)
        self.estimate_button.clicked.connect(self.estimate_from_labels)
        self.timer.timeout.connect(self.rerun)
        self.session.model_changed.connect(self._rebuild)
        self.session.ratios_changed.connect(self._sync_from_session)
        self._rebuild()

    # -- sliders -----------------------------------------------------------------------------------------------
    def _rebuild(self) -> None:
        """One slider per phase of the session's model."""
        while self._grid.count():
            item = self._grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.sliders, self._values = [], []
        self.result.setText("")
        phases = self.session.phases
        model = self.session.model
        if phases is None:
            self.note.setText("Load a model first (Model widget).")
            self.ratios = None
            self._set_enabled(False)
            return
        k = len(phases)
        for i, phase in enumerate(phases.phases):
            name = QLabel(f"<span style='color:{phase.color}'>&#9632;</span> {phase.name}")
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setRange(0, SLIDER_STEPS)
            slider.valueChanged.connect(lambda v, i=i: self.set_ratio(i, v / SLIDER_STEPS))
            value = QLabel()
            value.setMinimumWidth(48)
            self._grid.addWidget(name, i, 0)
            self._grid.addWidget(slider, i, 1)
            self._grid.addWidget(value, i, 2)
            self.sliders.append(slider)
            self._values.append(value)
        self.note.setText(
            "Known area fraction of each phase (point count, lever rule); the sliders always sum to 100 %. "
            + (
                "The model reads them, and the micrograph's phases get these fractions."
                if reads_ratios(model)
                else "The micrograph's phases get these fractions (the model was trained without ratio guidance: "
                "box prompts ignore them)."
            )
            + " The fractions shown are then yours, not a measurement."
        )
        ratios = self.session.ratios
        self.ratios = np.asarray(ratios, np.float64) if ratios is not None else np.full(k, 1.0 / k)
        self._show()
        self.none.blockSignals(True)
        self.none.setChecked(ratios is None)
        self.none.blockSignals(False)
        self._set_enabled(True)

    def _set_enabled(self, enabled: bool) -> None:
        for widget in (*self.sliders, self.none, self.estimate_button, self.labels, self.live):
            widget.setEnabled(enabled)

    def _show(self) -> None:
        for slider, label, value in zip(self.sliders, self._values, self.ratios):
            slider.blockSignals(True)
            slider.setValue(int(round(value * SLIDER_STEPS)))
            slider.blockSignals(False)
            label.setText(f"{100 * value:.1f}%")

    def set_ratio(self, index: int, value: float) -> None:
        """Set phase ``index`` to ``value`` (0..1), rescale the others, apply (guidance on)."""
        if self.ratios is None:
            return
        self.set_ratios(rebalance(self.ratios, index, value))

    def set_ratios(self, ratios: Sequence[float] | None) -> None:
        """Apply a ratio vector (normalised here) or None (no guidance) and schedule the re-prediction."""
        if ratios is None:
            self.none.setChecked(True)
            return
        r = np.clip(np.asarray(ratios, np.float64), 0, None)
        if self.ratios is None or r.shape != self.ratios.shape or r.sum() <= 0:
            raise MetalsegError(
                f"ratios {list(ratios)}: need {0 if self.ratios is None else self.ratios.size} "
                "non-negative values with a positive sum"
            )
        self.ratios = r / r.sum()
        self._show()
        self.none.blockSignals(True)
        self.none.setChecked(False)
        self.none.blockSignals(False)
        self.session.set_ratios(self.ratios.tolist())
        self.schedule()

    def _on_none(self, checked: bool) -> None:
        self.session.set_ratios(None if checked else self.ratios.tolist())
        self.schedule()

    def _sync_from_session(self) -> None:
        """Follow ratio changes made elsewhere (e.g. the Quantify or Training widgets)."""
        ratios = self.session.ratios
        self.none.blockSignals(True)
        self.none.setChecked(ratios is None)
        self.none.blockSignals(False)
        if ratios is not None and self.ratios is not None and len(ratios) == self.ratios.size:
            self.ratios = np.asarray(ratios, np.float64)
            self._show()

    def estimate_from_labels(self) -> None:
        """Set the ratios to the phase fractions of the chosen Labels layer."""
        try:
            layer = self.labels.layer()
            if layer is None or self.ratios is None:
                raise MetalsegError("choose a labels layer with phases (and load a model first)")
            fractions = phase_fractions_of_layer(layer, self.ratios.size)
            if fractions is None:
                raise MetalsegError(f"labels layer {layer.name!r} has no labelled pixels of the model's phases")
            self.set_ratios(fractions)
        except MetalsegError as exc:
            self._failed(exc)

    # -- live re-prediction ------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.worker is not None or self.timer.isActive()

    def schedule(self) -> None:
        """Re-predict after the debounce pause (restarted by every change)."""
        if self.live.isChecked():
            self.timer.start()

    def rerun(self):
        """Re-predict the chosen micrograph with the current ratios (decoder only), when it has been predicted."""
        if self.worker is not None:
            self._pending = True
            return None
        self._pending = False
        image = self.image.layer()
        if image is None or self.session.predictor is None:
            return None
        if find_layer(self.viewer, image, PHASES) is None:
            self.result.setText(f"{image.name}: not predicted yet (Predict dock); the sliders apply from then on")
            return None
        try:
            start_prediction(self, image, desc="phase ratios", on_done=self._shown, on_finish=self._finished)
        except MetalsegError as exc:
            self._failed(exc)
        return self.worker

    def _shown(self, phase_map, layer) -> None:
        guide = "fractions unknown" if self.session.ratios is None else "fractions given"
        self.result.setText(
            f"<b>{self.image.currentText()}</b> ({guide}): "
            f"{phase_legend_html(self.session.phases, phase_map.fractions())}"
        )

    def _finished(self) -> None:
        if self._pending:
            self.rerun()
