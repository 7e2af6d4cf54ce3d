"""Which Labels layer holds the annotations (or the phases) of which micrograph: the one pairing rule of the plugin.

The Training dock uses it to find the training data of an image (live-preview layers are never training data), the
Quantify dock to find the micrograph (and so the pixel size) of a phase layer. The rule (:func:`pair_rank`): a 2-D
Labels layer of the image's height and width belongs to the image when it is named ``"<image> labels"``, else
``"<image> annotations"``, else ``"<image> mask"`` (a dataset opened with the plugin's reader), else
``"<image> phases"``, else when its ``metadata["metalseg_image"]`` names the image (a phase map the plugin made for
it, e.g. a corrected prediction). When nothing pairs by that rule and the answer is unambiguous, the fallbacks of
:func:`find_labels_layer` and :func:`image_for_labels` apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .layers import IMAGE_KEY, PREVIEW_KEY, is_micrograph_layer

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Image, Labels

LABEL_SUFFIXES = (" labels", " annotations", " mask", " phases")
"""Name suffixes that pair a Labels layer with the image named before it, strongest first."""
GENERIC_LABEL_NAMES = ("labels", "annotations", "phases")
"""Names of the annotation layer when only one image is open."""
LINKED = len(LABEL_SUFFIXES)
"""Rank of a Labels layer paired through ``metadata["metalseg_image"]`` (weaker than every name suffix)."""


def image_hw(layer: Any) -> tuple[int, int]:
    """Height and width of an image layer (RGB images: the first two axes; multiscale: the full resolution)."""
    shape = tuple(layer.level_shapes[0]) if getattr(layer, "multiscale", False) else tuple(np.shape(layer.data))
    if getattr(layer, "rgb", False):
        return int(shape[0]), int(shape[1])
    return int(shape[-2]), int(shape[-1])


def is_2d_image(layer: Any) -> bool:
    """A 2-D micrograph layer at one resolution (not an image the plugin computed, such as probabilities)."""
    if layer is None or not is_micrograph_layer(layer) or getattr(layer, "multiscale", False):
        return False
    return np.ndim(layer.data) - (1 if layer.rgb else 0) == 2


def is_preview_layer(layer: Any) -> bool:
    """A live-preview layer (never training data)."""
    return bool((getattr(layer, "metadata", None) or {}).get(PREVIEW_KEY))


def _is_labels_2d(layer: Any) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels) and np.ndim(layer.data) == 2


def _is_annotation(layer: Any) -> bool:
    """A 2-D Labels layer that can hold training data (not a live preview)."""
    return _is_labels_2d(layer) and not is_preview_layer(layer)


def pair_rank(image: Image, labels: Labels) -> int | None:
    """How strongly ``labels`` belongs to ``image`` by the rule of this module: ``0 .. 3`` by name suffix
    (:data:`LABEL_SUFFIXES`), :data:`LINKED` through the metadata, None when they do not pair."""
    if not _is_labels_2d(labels) or tuple(np.shape(labels.data)) != image_hw(image):
        return None
    for rank, suffix in enumerate(LABEL_SUFFIXES):
        if labels.name == image.name + suffix:
            return rank
    if (labels.metadata or {}).get(IMAGE_KEY) == image.name:
        return LINKED
    return None


def find_labels_layer(viewer: napari.Viewer, image: Image) -> Labels | None:
    """The Labels layer holding the annotations of ``image`` (None: none).

    The best :func:`pair_rank` wins (the last layer among several linked through the metadata). Failing that, when
    ``image`` is the only 2-D image open: a Labels layer of its size named ``"labels"``, ``"annotations"`` or
    ``"phases"``, else the only Labels layer of its size.
    """
    candidates = [lay for lay in viewer.layers if _is_annotation(lay)]
    ranked = [(rank, lay) for lay in candidates if (rank := pair_rank(image, lay)) is not None]
    if ranked:
        best = min(rank for rank, _ in ranked)
        return [lay for rank, lay in ranked if rank == best][-1]
    hw = image_hw(image)
    same_size = [lay for lay in candidates if tuple(np.shape(lay.data)) == hw]
    if len([lay for lay in viewer.layers if is_2d_image(lay)]) == 1:
        by_name = {lay.name: lay for lay in same_size}
        for name in GENERIC_LABEL_NAMES:
            if name in by_name:
                return by_name[name]
        if len(same_size) == 1:
            return same_size[0]
    return None


def image_for_labels(viewer: napari.Viewer, labels: Labels) -> Image | None:
    """The micrograph layer a Labels layer belongs to (None: none).

    The micrograph of the best :func:`pair_rank`; failing that, the only micrograph of the same size.
    """
    shape = tuple(np.shape(labels.data))[-2:]
    images = [lay for lay in viewer.layers if is_micrograph_layer(lay)]
    ranked = [(rank, lay) for lay in images if (rank := pair_rank(lay, labels)) is not None]
    if ranked:
        return min(ranked, key=lambda pair: pair[0])[1]
    same = [lay for lay in images if image_hw(lay) == shape]
    return same[0] if len(same) == 1 else None


def training_pairs(viewer: napari.Viewer) -> list[tuple[Image, Labels]]:
    """Every (2-D image, annotation layer) pair of the viewer, by :func:`find_labels_layer`."""
    pairs = []
    for layer in viewer.layers:
        if is_2d_image(layer):
            labels = find_labels_layer(viewer, layer)
            if labels is not None:
                pairs.append((layer, labels))
    return pairs
