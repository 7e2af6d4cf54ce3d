"""The live preview of the Training dock: while the user paints, the classical pixel classifier refits on the strokes
so far (debounced, in a worker thread) and shows ``<image> preview`` and ``<image> uncertainty``.

The engine is :class:`napari_metalseg.preview.LivePreview`; this module only watches the annotation layer's paint
events, runs the refit off the GUI thread as a job (:meth:`~napari_metalseg._widgets.base.JobRunner.start_job`, one at
a time; strokes made meanwhile trigger one more refit) and shows the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, QTimer

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import phase_pixel_counts

from .base import JobRunner
from .layers import PREVIEW_KEY, image_of_layer, image_transform, mask_of_layer, show_phase_map
from .roles import PREVIEW, UNCERTAINTY, layer_name, role_metadata, show_image_layer

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Image, Labels

    from napari_metalseg.preview import Preview

DEBOUNCE_MS = 400
"""Quiet time after the last stroke before the preview refits."""


class LivePreviewController(QObject, JobRunner):
    """Watch one (image, annotations) pair and keep its preview layers up to date.

    Parameters
    ----------
    viewer : napari.Viewer
    phases : callable
        Returns the current :class:`~napari_metalseg.phases.PhaseSet` (the Training dock's phases).
    status : callable
        Shows a one-line message (the Training dock's status line).
    """

    def __init__(self, viewer: Any, phases: Any, status: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self._phases = phases
        self._status = status
        self.enabled = True
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DEBOUNCE_MS)
        self.timer.timeout.connect(self.refresh)
        self.worker = None
        self.last_error = None
        self.pending = False
        self.engine = None
        self.image: Image | None = None
        self.labels: Labels | None = None
        self.last: Preview | None = None
        self.updates = 0

    # -- what is watched -------------------------------------------------------------------------------
    def watch(self, image: Image | None, labels: Labels | None) -> None:
        """Follow the paint events of ``labels`` (the annotations of ``image``); None stops watching."""
        if self.labels is not None and self.labels is not labels:
            try:
                self.labels.events.paint.disconnect(self.schedule)
            except (TypeError, RuntimeError, ValueError):
                pass
        if labels is not None and labels is not self.labels:
            labels.events.paint.connect(self.schedule)
        self.image, self.labels = image, labels

    def set_enabled(self, on: bool) -> None:
        self.enabled = bool(on)
        if not on:
            self.timer.stop()

    def schedule(self, *_: Any) -> None:
        """A stroke was painted: refit once the user pauses."""
        if self.enabled:
            self.timer.start()

    # -- refit -----------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Refit now (in a worker); if one is running, once more when it ends."""
        if self.image is None or self.labels is None or self.image not in self.viewer.layers:
            return
        if self.worker is not None:
            self.pending = True
            return
        try:
            phases = self._phases()
            mask = mask_of_layer(self.labels, len(phases))
        except MetalsegError as exc:
            self._failed(exc)
            return
        present = phase_pixel_counts(mask, len(phases)) > 0
        if present.sum() < 2:
            missing = [n for k, n in enumerate(phases.names) if not present[k]]
            self._status(f"live preview: paint at least two phases (no strokes yet for {', '.join(missing)})")
            return
        from napari_metalseg.preview import LivePreview

        if self.engine is None or self.engine.num_phases != len(phases):
            self.engine = LivePreview(len(phases))
        image = np.array(image_of_layer(self.image), dtype=np.float32)
        self.pending = False
        layer = self.image
        self.start_job(
            self.engine.update_job(image, mask),
            "live preview",
            lambda preview: self._show(preview, layer, phases),
            on_error=self._failed,
            on_finish=self._finished,
            progress=False,
        )

    def _show(self, preview: Preview, image: Image, phases) -> None:
        self.last = preview
        self.updates += 1
        if image not in self.viewer.layers:
            return
        show_phase_map(
            self.viewer,
            preview.labels,
            phases,
            layer_name(image.name, PREVIEW),
            **image_transform(image),
            metadata={**role_metadata(image.name, PREVIEW), PREVIEW_KEY: True},
        )
        name = layer_name(image.name, UNCERTAINTY)
        show_image_layer(self.viewer, image, UNCERTAINTY, preview.uncertainty, colormap="magma", blending="additive")
        if self.labels is not None and self.labels in self.viewer.layers:
            self.viewer.layers.selection.active = self.labels  # keep painting where the user paints
        seconds = sum(preview.seconds.values())
        score = "" if preview.score is None else f", {preview.score:.1f} % Dice on held-out strokes"
        unsure = float((preview.uncertainty > 0.5).mean() * 100)
        self._status(
            f"live preview: {preview.labelled:,} labelled pixels{score}; unsure on {unsure:.0f} % of the "
            f"image ({name}); {seconds:.1f} s"
        )

    def _failed(self, exc: BaseException) -> None:
        self.last_error = exc
        self._status(
            f"live preview: {exc}"
            if isinstance(exc, MetalsegError)
            else f"live preview failed: {type(exc).__name__}: {exc}"
        )

    def _finished(self) -> None:
        if self.pending and self.enabled:
            self.refresh()
