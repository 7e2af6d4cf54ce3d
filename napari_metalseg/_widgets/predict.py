"""The Predict dock widget: whole-image (tiled) prediction of a micrograph layer into the ``phases`` Labels layer.

The image encoder runs once per image (its embedding is cached by the session's
:class:`~napari_metalseg.predict.Predictor`), so the Phase ratios widget reruns only the decoder.
"""

from __future__ import annotations

from collections.abc import Callable

from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QFormLayout, QLabel, QPushButton, QVBoxLayout

from napari_metalseg._widgets.base import DockWidget
from napari_metalseg._widgets.layers import (
    IMAGE_KEY,
    PHASE_LAYER,
    image_of_layer,
    image_transform,
    is_micrograph_layer,
    phase_legend_html,
    show_phase_map,
    show_probabilities,
)
from napari_metalseg._widgets.picker import LayerPicker
from napari_metalseg.errors import MetalsegError

RATIOS_KEY = "metalseg_ratios"
"""``metadata`` key of the phases layer: the ratio guidance it was predicted with (None = none)."""


def effective_ratios(session) -> list[float] | None:
    """The session's ratio guidance when the model can use it, else None."""
    model = session.model
    if model is None or getattr(model, "guidance", "none") == "none":
        return None
    return session.ratios


def start_prediction(
    dock: DockWidget,
    image_layer: Image,
    *,
    probabilities: bool = False,
    desc: str = "predicting phases",
    on_done: Callable | None = None,
    on_finish: Callable | None = None,
):
    """Predict a whole micrograph layer with the session's model, as a job of ``dock``, and show it in ``phases``.

    Parameters
    ----------
    dock : DockWidget
        Runs the job (:meth:`~napari_metalseg._widgets.base.JobRunner.start_job`; errors go to its ``last_error``
        and a notification).
    image_layer : napari.layers.Image
    probabilities : bool
        Also add/update one ``P(<phase>)`` layer per phase.
    desc : str
        Progress bar text.
    on_done : callable, optional
        ``on_done(phase_map, labels_layer)`` in the GUI thread after the layer was updated.
    on_finish : callable, optional
        Called in the GUI thread at the end, after success or failure.

    Returns
    -------
    GeneratorWorker

    Raises
    ------
    MetalsegError
        No model loaded, or the layer is not a single 2-D micrograph.
    """
    viewer, session = dock.viewer, dock.session
    predictor = session.predictor
    if predictor is None:
        raise MetalsegError("no model yet: open a trained run in the Model widget first")
    if image_layer is None:
        raise MetalsegError("no micrograph layer: open an image first (File > Open, or File > Open Sample)")
    image = image_of_layer(image_layer)
    ratios = effective_ratios(session)
    phases = session.phases
    transform = image_transform(image_layer)
    name = image_layer.name

    def done(phase_map) -> None:
        meta = {IMAGE_KEY: name, RATIOS_KEY: None if ratios is None else [float(r) for r in ratios]}
        layer = show_phase_map(viewer, phase_map, phases, PHASE_LAYER, **transform, metadata=meta)
        if probabilities:
            show_probabilities(viewer, phase_map, phases, **transform, image_name=name)
            viewer.layers.move(viewer.layers.index(layer), len(viewer.layers))
        if on_done is not None:
            on_done(phase_map, layer)

    return dock.start_job(predictor.predict_job(image, ratios=ratios), desc, done, on_finish=on_finish)


class PredictWidget(DockWidget):
    """Dock widget: predict the phases of a whole micrograph (tiled) into the ``phases`` layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.last_result = None

        self.image = LayerPicker(napari_viewer, Image, accept=is_micrograph_layer)
        self.probabilities = QCheckBox("also show probability layers P(phase)")
        self.guidance = QLabel()
        self.guidance.setWordWrap(True)
        self.guidance.setTextFormat(Qt.TextFormat.RichText)
        self.button = QPushButton("Predict whole image")
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setTextFormat(Qt.TextFormat.RichText)

        form = QFormLayout()
        form.addRow("Micrograph", self.image)
        form.addRow("Guidance", self.guidance)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.probabilities)
        layout.addWidget(self.button)
        layout.addWidget(self.result)
        layout.addStretch(1)

        self.button.clicked.connect(self.predict)
        self.session.model_changed.connect(self._update)
        self.session.ratios_changed.connect(self._update)
        self._update()

    def _update(self) -> None:
        session = self.session
        self.button.setEnabled(session.model is not None and not self.busy)
        if session.model is None:
            self.guidance.setText("<i>load a model first (Model widget)</i>")
        elif getattr(session.model, "guidance", "none") == "none":
            self.guidance.setText("none (the model was trained without ratio guidance)")
        elif session.ratios is None:
            self.guidance.setText("none (set phase ratios in the Phase ratios widget)")
        else:
            self.guidance.setText(f"ratios {phase_legend_html(session.phases, session.ratios)}")

    def predict(self):
        """Start the prediction of the chosen micrograph; returns the worker (None on bad input or busy)."""
        if self.busy:
            return None
        self.last_error = None
        try:
            start_prediction(
                self,
                self.image.layer(),
                probabilities=self.probabilities.isChecked(),
                on_done=self._done,
                on_finish=self._update,
            )
        except MetalsegError as exc:
            self._failed(exc)
            return None
        self._update()
        return self.worker

    def _done(self, phase_map, layer) -> None:
        self.last_result = phase_map
        fractions = phase_map.fractions()
        self.result.setText(f"<b>Area fractions</b>: {phase_legend_html(self.session.phases, fractions)}")
        self.viewer.layers.selection.active = layer
