"""The user's corrections of a predicted phase map: which pixels the user edited, kept through every new prediction.

A micrograph's ``<image> phases`` layer holds the model's prediction *and* the user's corrections (brush strokes,
fills, box prompts). The plugin remembers what it wrote last (:class:`EditTracker`); every pixel that differs from
it was changed by the user. A new prediction (Predict again, a ratio slider, a retrained model) writes only the
pixels the user did not edit (:func:`write_phases`), so corrections are never overwritten and stay visible and
editable in the same layer. The edited pixels are outlined in the ``<image> edits`` layer (:func:`show_edits`);
"Forget corrections" (:func:`forget_edits`) hands them back to the model.

No hidden copies, no second layer to paint in. Nothing here imports torch.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from .layers import LABELS_OPACITY
from .roles import EDITS, find_layer, image_name_of, layer_name, role_metadata

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Labels

EDIT_COLOR = "#ffffff"
"""Colour of the outline of the corrected pixels."""

_TRACKERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WATCHED: weakref.WeakSet = weakref.WeakSet()


def _unwrap(layer: Any) -> Any:
    return getattr(layer, "__wrapped__", layer)  # plugin widgets see proxies of the layers


class EditTracker:
    """What the plugin last wrote into a phases layer and which pixels the user has edited since the layer exists.

    Attributes
    ----------
    written : numpy.ndarray or None
        The labels the plugin last wrote (None: nothing written yet; every labelled pixel is then the user's).
    edited : numpy.ndarray
        Pixels the user edited before the last write (kept by it).
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.written: np.ndarray | None = None
        self.edited = np.zeros(shape, bool)

    def edited_now(self, data: np.ndarray) -> np.ndarray:
        """Every pixel the user has edited, up to now."""
        data = np.asarray(data)
        if self.edited.shape != data.shape:
            self.edited = np.zeros(data.shape, bool)
            self.written = None
        if self.written is None:
            return self.edited | (data != 0)
        return self.edited | (data != self.written)


def tracker(layer: Labels) -> EditTracker:
    """The edit tracker of a phases layer (created on first use)."""
    key = _unwrap(layer)
    found = _TRACKERS.get(key)
    if found is None or found.edited.shape != np.shape(layer.data):
        found = EditTracker(tuple(np.shape(layer.data)))
        _TRACKERS[key] = found
    return found


def edited_pixels(layer: Labels) -> np.ndarray:
    """Boolean map of the pixels of a phases layer the user has edited (painted, filled, erased, box prompts)."""
    return tracker(layer).edited_now(layer.data)


def write_phases(layer: Labels, labels: np.ndarray) -> np.ndarray:
    """Write a new prediction (napari labels) into a phases layer, keeping every pixel the user edited.

    Returns
    -------
    numpy.ndarray
        The edited pixels (kept).
    """
    track = tracker(layer)
    current = np.asarray(layer.data)
    edited = track.edited_now(current)
    merged = np.asarray(labels).astype(current.dtype, copy=True)
    merged[edited] = current[edited]
    track.edited = edited
    track.written = merged.copy()
    layer.data = merged
    return edited


def mark_written(layer: Labels) -> None:
    """Record the layer's present data as written by the plugin (a freshly created phases layer)."""
    track = tracker(layer)
    track.written = np.array(layer.data, copy=True)


def forget_edits(layer: Labels) -> int:
    """Hand the user's corrections back to the model: the next prediction overwrites them. Returns their number."""
    track = tracker(layer)
    count = int(track.edited_now(layer.data).sum())
    track.edited[:] = False
    track.written = np.array(layer.data, copy=True)
    return count


def show_edits(viewer: napari.Viewer, layer: Labels) -> Labels | None:
    """Outline the corrected pixels of a phases layer in its micrograph's ``<image> edits`` layer (created when the
    user has edited something; emptied, not removed, when nothing is edited). Returns the edits layer or None."""
    image_name = image_name_of(layer)
    if image_name is None:
        return None
    edited = edited_pixels(layer).astype(np.uint8)
    outline = find_layer(viewer, image_name, EDITS)
    if outline is not None:
        if outline.data.shape == edited.shape:
            outline.data = edited
            return outline
        viewer.layers.remove(outline)
    if not edited.any():
        return None
    from napari.utils.colormaps import DirectLabelColormap

    outline = viewer.add_labels(
        edited,
        name=layer_name(image_name, EDITS),
        scale=layer.scale,
        translate=layer.translate,
        units=layer.units,
        colormap=DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: EDIT_COLOR}),
        opacity=min(1.0, LABELS_OPACITY + 0.4),
        metadata=role_metadata(image_name, EDITS),
        features={"index": np.array([0, 1]), "phase": np.array(["", "your correction"], dtype=object)},
    )
    outline.contour = 1
    outline.editable = False
    viewer.layers.selection.active = layer  # keep painting into the phases layer
    return outline


def watch_edits(viewer: napari.Viewer, layer: Labels) -> None:
    """Update the edits outline after every stroke on a phases layer (napari's ``paint`` event)."""
    key = _unwrap(layer)
    if key in _WATCHED:
        return
    _WATCHED.add(key)
    layer.events.paint.connect(lambda event=None: show_edits(viewer, layer))
