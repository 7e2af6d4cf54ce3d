"""The Encoder features dock widget: what each image-encoder block "sees", before and after adaptation.

Each block's output is reduced to RGB by PCA (:func:`napari_metalseg.features.encoder_feature_maps`) and shown as
one image stack ``(n_blocks, h, w, 3)``; napari's dims slider (axis ``block``) steps through the blocks. The
stack is scaled and aligned over the micrograph: a map pixel covers ``FeatureMaps.scale`` image pixels, so its
scale is ``image scale * FeatureMaps.scale`` and it is shifted by half a map pixel minus half an image pixel, which
puts each map pixel's centre on the centre of the image region it covers. The base model (LoRA switched off) is
shown to the right of the micrograph (shifted by the image width), so adapted and base maps sit side by side.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import QCheckBox, QFormLayout, QLabel, QPushButton, QVBoxLayout

from napari_metalseg._widgets.base import DockWidget
from napari_metalseg._widgets.layers import (
    DERIVED_KEY,
    IMAGE_KEY,
    image_of_layer,
    image_transform,
    is_micrograph_layer,
)
from napari_metalseg._widgets.picker import LayerPicker
from napari_metalseg.errors import MetalsegError
from napari_metalseg.progress import Job, ProgressEvent

ADAPTED_LAYER = "features (adapted)"
BASE_LAYER = "features (base, LoRA off)"


def feature_layer_transform(
    image_layer: Image, map_scale: tuple[float, float], image_shape: tuple[int, int], right_of_image: bool = False
) -> dict[str, tuple]:
    """``scale``/``translate``/``units`` of a ``(n_blocks, h, w, 3)`` feature stack over ``image_layer``.

    Parameters
    ----------
    image_layer : napari.layers.Image
    map_scale : (float, float)
        Image pixels per map pixel (``FeatureMaps.scale``).
    image_shape : (int, int)
        Height and width of the micrograph in pixels.
    right_of_image : bool
        Shift by the image width, to sit beside the micrograph instead of over it.
    """
    t = image_transform(image_layer)
    (sy, sx), (ty, tx) = t["scale"], t["translate"]
    my, mx = map_scale
    translate_y = ty + (my / 2 - 0.5) * sy
    translate_x = tx + (mx / 2 - 0.5) * sx + (image_shape[1] * sx if right_of_image else 0.0)
    return {
        "scale": (1.0, sy * my, sx * mx),
        "translate": (0.0, translate_y, translate_x),
        "units": ("pixel", *t["units"]),
    }


def feature_maps_job(model, image: np.ndarray, device: str, lock, with_base: bool) -> Job:
    """Job: the encoder feature maps of ``image``, adapted and (``with_base``) base, holding the model's ``lock``.

    Returns
    -------
    tuple of FeatureMaps and (FeatureMaps or None)
    """
    from napari_metalseg.features import encoder_feature_maps

    total = 2 if with_base else 1
    with lock:
        yield ProgressEvent("embed", 0, total, message="adapted model")
        adapted = encoder_feature_maps(model, image, device)
        base = None
        if with_base:
            yield ProgressEvent("embed", 1, total, message="base model (LoRA off)")
            base = encoder_feature_maps(model, image, device, base=True)
    return adapted, base


class FeaturesWidget(DockWidget):
    """Dock widget: per-block PCA maps of the image encoder, adapted vs base, aligned over the micrograph.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)

        self.image = LayerPicker(napari_viewer, Image, accept=is_micrograph_layer)
        self.base = QCheckBox("also the base model (LoRA off), beside the image")
        self.base.setChecked(True)
        self.button = QPushButton("Compute feature maps")
        self.status = QLabel(
            "One RGB map per encoder block (PCA of its features); the 'block' slider below the "
            "canvas steps through the blocks."
        )
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Micrograph", self.image)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.base)
        layout.addWidget(self.button)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.button.clicked.connect(self.compute)
        self.session.model_changed.connect(self._update)
        self._update()

    def _update(self) -> None:
        model = self.session.model
        self.button.setEnabled(model is not None and not self.busy)
        lora = bool(getattr(model, "lora", None))
        self.base.setEnabled(lora)
        self.base.setToolTip("" if lora else "this model has no LoRA adapters: base and adapted maps are the same")

    def compute(self):
        """Compute the maps of the chosen micrograph in a worker; returns the worker (None on bad input)."""
        if self.busy:
            return None
        self.last_error = None
        try:
            session = self.session
            if session.model is None:
                raise MetalsegError("no model yet: open a trained run in the Model widget first")
            image_layer = self.image.layer()
            if image_layer is None:
                raise MetalsegError("no micrograph layer: open an image first")
            image = image_of_layer(image_layer)
        except MetalsegError as exc:
            self._failed(exc)
            return None
        model, device, lock = session.model, session.device, session.predictor.lock
        with_base = self.base.isChecked() and bool(getattr(model, "lora", None))

        def done(result) -> None:
            adapted, base = result
            self.show_maps(image_layer, image.shape, adapted, base)

        self.button.setEnabled(False)
        self.start_job(
            feature_maps_job(model, image, device, lock, with_base),
            "encoder feature maps",
            done,
            on_finish=self._update,
        )
        return self.worker

    def show_maps(self, image_layer: Image, image_shape: tuple[int, int], adapted, base=None) -> list[Image]:
        """Add or replace the feature layers and put the block slider on the last block."""
        layers = []
        for fm, name, beside in ((adapted, ADAPTED_LAYER, False), (base, BASE_LAYER, True)):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            if fm is None:
                continue
            transform = feature_layer_transform(image_layer, fm.scale, image_shape, right_of_image=beside)
            meta = {DERIVED_KEY: "features", IMAGE_KEY: image_layer.name, "metalseg_map_scale": list(fm.scale)}
            layers.append(self.viewer.add_image(fm.maps, name=name, rgb=True, metadata=meta, opacity=0.8, **transform))
        n = int(adapted.maps.shape[0])
        self.viewer.dims.axis_labels = ("block", *self.viewer.dims.axis_labels[1:])
        self.viewer.dims.set_current_step(0, n - 1)
        self.viewer.reset_view()
        self.status.setText(
            f"{n} blocks, maps of {adapted.maps.shape[1]} x {adapted.maps.shape[2]} "
            f"(1 map pixel = {adapted.scale[0]:.1f} x {adapted.scale[1]:.1f} image pixels). "
            "Use the 'block' slider below the canvas."
        )
        return layers
