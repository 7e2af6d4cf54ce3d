"""The Predict dock widget: whole-image (tiled) prediction of a micrograph into its ``<image> phases`` layer.

Each micrograph has its own layers (:mod:`.roles`): ``<image> phases`` (the prediction, with the user's corrections,
which a new prediction keeps: :mod:`.edits`), optionally ``<image> P(<phase>)`` and ``<image> uncertainty``.
Predicting a second micrograph never touches the first one's layers. The image encoder runs once per image (its
embedding is cached by the session's :class:`~napari_metalseg.predict.Predictor`), so the Phase ratios widget reruns
only the decoder.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from napari_metalseg._widgets.base import DockWidget
from napari_metalseg._widgets.calibration import layer_calibration
from napari_metalseg._widgets.edits import edited_pixels, forget_edits, show_edits, watch_edits
from napari_metalseg._widgets.layers import (
    image_of_layer,
    image_transform,
    is_micrograph_layer,
    phase_legend_html,
    show_phase_map,
    show_phase_pyramid,
)
from napari_metalseg._widgets.picker import LayerPicker
from napari_metalseg._widgets.roles import (
    PHASES,
    PROBABILITY,
    UNCERTAINTY,
    find_layer,
    layer_name,
    role_metadata,
    show_image_layer,
)
from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.options import reads_ratios
from napari_metalseg.phases import PhaseSet

RATIOS_KEY = "metalseg_ratios"
"""``metadata`` key of a phases layer: the ratio guidance it was predicted with (None = none)."""


def effective_ratios(session, *, box: bool = False) -> list[float] | None:
    """The session's phase ratios when the model can use them, else None: every model gives a whole micrograph's
    labels these fractions (:mod:`napari_metalseg.priors`); inside a box only a model trained with ratio guidance
    reads them."""
    model = session.model
    if model is None or (box and not reads_ratios(model)):
        return None
    return session.ratios


def show_prediction(
    viewer,
    image: Image,
    phase_map,
    phases: PhaseSet,
    *,
    probabilities: bool = False,
    uncertainty: bool = False,
    metadata: dict | None = None,
) -> Labels:
    """Show a prediction of a micrograph in its ``<image> phases`` layer (the user's corrections kept and outlined)
    and, when asked, its ``<image> P(<phase>)`` and ``<image> uncertainty`` layers.

    A huge micrograph predicted as a stream (:data:`~napari_metalseg.predict.STREAM_PIXELS`) has labels only: they
    are shown as a read-only multiscale layer (:func:`~napari_metalseg._widgets.layers.show_phase_pyramid`), without
    probability or uncertainty layers.

    Returns
    -------
    napari.layers.Labels
        The phases layer.
    """
    from napari.utils.colormaps import Colormap

    if not phase_map.has_probs:  # a huge micrograph predicted as a stream: labels only, shown lazily
        return show_phase_pyramid(
            viewer,
            phase_map.labels,
            phases,
            layer_name(image.name, PHASES),
            **image_transform(image),
            metadata={**role_metadata(image.name, PHASES), **(metadata or {})},
        )
    layer = show_phase_map(
        viewer,
        phase_map,
        phases,
        layer_name(image.name, PHASES),
        **image_transform(image),
        metadata={**role_metadata(image.name, PHASES), **(metadata or {})},
    )
    watch_edits(viewer, layer)
    show_edits(viewer, layer)
    if probabilities:
        for k, phase in enumerate(phases.phases):
            rgb = [int(phase.color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
            cmap = Colormap([[0, 0, 0, 1], [*rgb, 1]], name=f"metalseg_{phase.name}")
            prob = np.asarray(phase_map.probs[k], np.float32)
            show_image_layer(viewer, image, PROBABILITY, prob, phase.name, colormap=cmap, blending="additive")
    if uncertainty and len(phases) >= 2:
        from napari_metalseg.preview import uncertainty_map

        unsure = uncertainty_map(np.asarray(phase_map.probs, np.float32))
        show_image_layer(viewer, image, UNCERTAINTY, unsure, colormap="magma", blending="additive", opacity=0.6)
    return layer


def start_prediction(
    dock: DockWidget,
    image_layer: Image,
    *,
    probabilities: bool = False,
    uncertainty: bool = False,
    desc: str = "predicting phases",
    on_done: Callable | None = None,
    on_finish: Callable | None = None,
):
    """Predict a whole micrograph layer with the session's model, as a job of ``dock``, into ``<image> phases``.

    Parameters
    ----------
    dock : DockWidget
        Runs the job (:meth:`~napari_metalseg._widgets.base.JobRunner.start_job`; errors go to its ``last_error``
        and a notification).
    image_layer : napari.layers.Image
    probabilities, uncertainty : bool
        Also add/update the ``<image> P(<phase>)`` layers / the ``<image> uncertainty`` layer.
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
        raise MetalsegError("no model yet: build one or open a trained run in the Model dock first")
    if image_layer is None:
        raise MetalsegError("no micrograph: open an image first (File > Open, or File > Open Sample)")
    image = image_of_layer(image_layer)
    ratios = effective_ratios(session)
    phases = session.phases
    pixel_size = layer_calibration(image_layer)[1]
    zoom = predictor.zoom_for(pixel_size)
    if zoom != 1.0:  # the GUI says at which scale the model sees the micrograph
        desc += f" (resampled x{zoom:.2f} to the model's {predictor.working_pixel_size * 1000:.3g} nm per pixel)"

    def done(phase_map) -> None:
        if image_layer not in viewer.layers:
            return
        meta = {RATIOS_KEY: None if ratios is None else [float(r) for r in ratios]}
        layer = show_prediction(
            viewer,
            image_layer,
            phase_map,
            phases,
            probabilities=probabilities,
            uncertainty=uncertainty,
            metadata=meta,
        )
        if on_done is not None:
            on_done(phase_map, layer)

    job = predictor.predict_job(image, ratios=ratios, pixel_size_um=pixel_size)
    if probabilities or uncertainty:
        job = _with_probabilities(job)
    return dock.start_job(job, desc, done, on_finish=on_finish)


def _with_probabilities(job):
    """The job, with its phase map's probabilities computed in the worker (they are computed on first use, which
    would otherwise be the GUI thread showing the probability or uncertainty layers)."""
    phase_map = yield from job
    if phase_map.has_probs:  # a micrograph predicted as a stream has none (show_prediction says so)
        phase_map.probs  # noqa: B018  (the property computes and keeps them)
    return phase_map


class PredictWidget(DockWidget):
    """Dock widget: predict the phases of a whole micrograph (tiled) into its ``<image> phases`` layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.last_result = None

        self.image = LayerPicker(napari_viewer, Image, accept=is_micrograph_layer)
        self.probabilities = QCheckBox("probability layers P(phase)")
        self.uncertainty = QCheckBox("uncertainty layer (where to correct)")
        self.guidance = QLabel()
        self.guidance.setWordWrap(True)
        self.guidance.setTextFormat(Qt.TextFormat.RichText)
        self.button = QPushButton("Predict whole image")
        self.forget_button = QPushButton("Forget my corrections")
        self.forget_button.setToolTip(
            "Your corrections in '<image> phases' are kept through every new prediction (outlined in "
            "'<image> edits'); this hands them back to the model."
        )
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setTextFormat(Qt.TextFormat.RichText)
        self.cache_label = QLabel()
        self.cache_label.setWordWrap(True)
        self.clear_cache_button = QPushButton("Clear cache")
        self.clear_cache_button.setToolTip(
            "Delete the image embeddings kept on disk (they are computed again when needed); "
            "the terminal's 'metalseg cache --clear' does the same."
        )

        form = QFormLayout()
        form.addRow("Micrograph", self.image)
        form.addRow("Guidance", self.guidance)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.probabilities)
        layout.addWidget(self.uncertainty)
        layout.addWidget(self.button)
        layout.addWidget(self.forget_button)
        layout.addWidget(self.result)
        cache_row = QHBoxLayout()
        cache_row.addWidget(self.cache_label, 1)
        cache_row.addWidget(self.clear_cache_button)
        layout.addLayout(cache_row)
        layout.addStretch(1)

        self.button.clicked.connect(self.predict)
        self.forget_button.clicked.connect(self.forget_corrections)
        self.clear_cache_button.clicked.connect(self.clear_cache)
        self.image.currentIndexChanged.connect(lambda *_: self._show_fractions())
        self.session.model_changed.connect(self._update)
        self.session.ratios_changed.connect(self._update)
        self._update()
        self.show_cache()

    def _update(self) -> None:
        session = self.session
        self.button.setEnabled(session.model is not None and not self.busy)
        if session.model is None:
            self.guidance.setText("<i>build or open a model first (Model dock)</i>")
        elif session.ratios is None:
            self.guidance.setText("none (give known phase fractions in the Phase ratios dock)")
        elif not reads_ratios(session.model):
            self.guidance.setText(f"labels given the fractions {phase_legend_html(session.phases, session.ratios)}")
        else:
            self.guidance.setText(f"ratios {phase_legend_html(session.phases, session.ratios)}")

    def phases_layer(self) -> Labels | None:
        """The ``<image> phases`` layer of the chosen micrograph (None: not predicted yet)."""
        image = self.image.layer()
        return None if image is None else find_layer(self.viewer, image, PHASES)

    def _show_fractions(self) -> None:
        """Show the area fractions of the chosen micrograph's phases layer (nothing when it has none)."""
        from napari_metalseg._widgets.layers import phase_fractions_of_layer, phases_of_layer

        image, layer = self.image.layer(), self.phases_layer()
        phases = phases_of_layer(layer)
        fractions = None if layer is None or phases is None else phase_fractions_of_layer(layer, len(phases))
        if fractions is None:
            self.result.setText("")
            return
        edited = 0 if layer.multiscale else int(edited_pixels(layer).sum())
        note = f"; {edited:,} px corrected by you (kept)" if edited else ""
        self.result.setText(f"<b>{image.name}</b>: {phase_legend_html(phases, fractions)}{note}")

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
                uncertainty=self.uncertainty.isChecked(),
                on_done=self._done,
                on_finish=self._update,
            )
        except MetalsegError as exc:
            self.result.setText("")
            self._failed(exc)
            return None
        self._update()
        return self.worker

    def _failed(self, exc: BaseException) -> None:
        self.result.setText("")
        super()._failed(exc)

    def forget_corrections(self) -> int:
        """Let the next prediction overwrite the corrections of the chosen micrograph; returns their pixel count."""
        layer = self.phases_layer()
        if layer is None or layer.multiscale:  # a read-only multiscale layer holds no corrections
            return 0
        count = forget_edits(layer)
        show_edits(self.viewer, layer)
        self._show_fractions()
        return count

    def show_cache(self) -> str:
        """Show the size of the embedding cache on disk in the cache line; returns the line."""
        from napari_metalseg.io.embedding_store import default_store

        try:
            store = default_store()
            text = f"Embedding cache: {store.describe(short=True)}"
            self.cache_label.setToolTip(str(store.root))
        except MetalsegError as exc:
            text = f"Embedding cache: {exc}"
        self.cache_label.setText(text)
        return text

    def clear_cache(self) -> int:
        """Delete the embeddings cached on disk and update the cache line; returns the bytes freed."""
        from napari_metalseg.io.embedding_store import default_store

        try:
            freed = default_store().clear()
        except MetalsegError as exc:
            self._failed(exc)
            return 0
        self.show_cache()
        return freed

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.show_cache()  # other docks and processes fill the cache too

    def _done(self, phase_map, layer) -> None:
        self.last_result = phase_map
        self.show_cache()
        self.image.set_layer(layer.metadata.get("metalseg_image", self.image.currentText()))
        self._show_fractions()
        if layer.multiscale:
            h, w = phase_map.labels.shape
            extra = (
                "; no probability or uncertainty layers"
                if self.probabilities.isChecked() or self.uncertainty.isChecked()
                else ""
            )
            self.result.setText(
                f"{self.result.text()}<br><i>{w} x {h} px: predicted as a stream of tiles and shown as a read-only "
                f"multiscale layer{extra} (napari paints on single-scale layers only: crop a region to correct "
                "it); nothing is cached, so a ratio change predicts it again</i>"
            )
        self.viewer.layers.selection.active = layer
