"""Layer conventions of the plugin: phase, micrograph and derived layers, and the helpers that read and write them.

Layer conventions (the only place they are written down in code):

* A phase map is a napari ``Labels`` layer: label ``k + 1`` is phase ``k``, label 0 is unlabeled
  (:func:`~napari_metalseg.phases.mask_to_labels`). It carries a ``DirectLabelColormap`` with the phase colours,
  a ``features`` table with an ``index`` and a ``phase`` column (so the status bar names the phase under the
  cursor) and ``metadata["metalseg_phases"]`` (the phase set as in ``phases.json``).
* A micrograph is an ``Image`` layer whose ``scale`` is the pixel size in micrometres (``units`` ``um``) when the
  file states it, so napari's scale bar is right; ``metadata["metalseg_micrograph"]`` holds
  :meth:`~napari_metalseg.io.Micrograph.info`.
* Layers derived from an image (phases, probabilities, box prompts, features) share its scale and translate,
  name it in ``metadata["metalseg_image"]`` and say their role (:mod:`.roles`).

Which layer is which of a micrograph (annotations, phases, ...) is in :mod:`.roles`, the layer combo box in
:mod:`.picker`, running jobs and reporting errors in :mod:`.base`.

Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer
from napari.utils.colormaps import DirectLabelColormap

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet, labels_to_mask, mask_to_labels, phase_fractions

PHASES_KEY = "metalseg_phases"
"""``Labels.metadata`` key: the layer's phase set as a ``phases.json`` list."""
IMAGE_KEY = "metalseg_image"
"""``Layer.metadata`` key: name of the micrograph layer a derived layer belongs to."""
MICROGRAPH_KEY = "metalseg_micrograph"
"""``Image.metadata`` key: the micrograph's :meth:`~napari_metalseg.io.Micrograph.info` dict."""
PREVIEW_KEY = "metalseg_preview"
"""Layer metadata key marking the live-preview layers (never training data)."""
DERIVED_KEY = "metalseg_derived"
"""``Image.metadata`` key set on images the plugin computes (probabilities, feature maps): not micrographs."""
UNITS = ("um", "um")
LABELS_OPACITY = 0.6


# -- phase layers ----------------------------------------------------------------------------------------------


def phase_colormap(phases: PhaseSet) -> DirectLabelColormap:
    """The napari colormap of a phase set (label ``k + 1`` in the colour of phase ``k``, 0 transparent)."""
    return DirectLabelColormap(color_dict=phases.napari_colormap())


def phase_features(phases: PhaseSet) -> dict[str, np.ndarray]:
    """The ``features`` table of a phase Labels layer: row ``i`` describes label ``i`` (0 = unlabeled)."""
    return {"index": np.arange(len(phases) + 1), "phase": np.array(["unlabeled", *phases.names], dtype=object)}


def labels_layer_kwargs(
    phases: PhaseSet,
    name: str,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    metadata: dict | None = None,
    units: Sequence | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``viewer.add_labels`` (or a reader's layer-data tuple) for a phase layer.

    ``units`` defaults to micrometres when a non-unit ``scale`` is given (the plugin's physical scale).
    """
    kwargs: dict[str, Any] = {
        "name": name,
        "colormap": phase_colormap(phases),
        "features": phase_features(phases),
        "metadata": {**(metadata or {}), PHASES_KEY: phases.to_json()},
        "opacity": LABELS_OPACITY,
    }
    if scale is not None:
        kwargs["scale"] = tuple(float(s) for s in scale)
    if translate is not None:
        kwargs["translate"] = tuple(float(t) for t in translate)
    if units is not None:
        kwargs["units"] = tuple(units)
    elif scale is not None and any(float(s) != 1.0 for s in scale):
        kwargs["units"] = UNITS
    return kwargs


def micrograph_layer_kwargs(micrograph, name: str) -> dict[str, Any]:
    """Keyword arguments of ``viewer.add_image`` for a :class:`~napari_metalseg.io.Micrograph`.

    The scale is the pixel size in micrometres when known (napari's scale bar then shows physical lengths).
    """
    kwargs: dict[str, Any] = {
        "name": name,
        "colormap": "gray",
        "contrast_limits": (0.0, 1.0),
        "metadata": {MICROGRAPH_KEY: micrograph.info()},
    }
    if micrograph.pixel_size_um:
        px = float(micrograph.pixel_size_um)
        kwargs["scale"] = (px, px)
        kwargs["units"] = UNITS
    return kwargs


def show_phase_map(
    viewer,
    data,
    phases: PhaseSet,
    name: str,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    *,
    units: Sequence | None = None,
    labels: bool = False,
    metadata: dict | None = None,
) -> Labels:
    """Add or update the Labels layer ``name`` showing a phase map; pixels the user edited in it are kept.

    Parameters
    ----------
    viewer : napari.Viewer
    data : PhaseMap or numpy.ndarray
        A :class:`~napari_metalseg.predict.PhaseMap`, a mask (phase index ``0..K-1``, 255 unlabeled) or, with
        ``labels=True``, napari labels (``k + 1``, 0 unlabeled).
    phases : PhaseSet
    name : str
        Layer name (a micrograph's layers: :func:`~.roles.layer_name`); an existing Labels layer of the same shape
        is updated in place, keeping the user's corrections (:func:`~.edits.write_phases`).
    scale, translate, units : optional
        Those of the micrograph the map belongs to (see :func:`image_transform`).
    labels : bool
        ``data`` already holds napari labels.
    metadata : dict, optional
        Extra layer metadata (e.g. :func:`~.roles.role_metadata`).

    Returns
    -------
    napari.layers.Labels
    """
    from napari_metalseg.predict import PhaseMap

    from .edits import mark_written, write_phases

    if isinstance(data, PhaseMap):  # its labels only: the probabilities are not computed for this
        array = mask_to_labels(data.labels)
    else:
        array = np.asarray(data) if labels else mask_to_labels(data)
    if array.ndim != 2:
        raise MetalsegError(f"a phase map must be 2-D, got shape {array.shape}")
    kwargs = labels_layer_kwargs(phases, name, scale, translate, metadata, units)
    layer = viewer.layers[name] if name in viewer.layers else None
    if isinstance(layer, Labels) and layer.data.shape == array.shape:
        write_phases(layer, array)
        layer.colormap = kwargs["colormap"]
        layer.features = kwargs["features"]
        layer.metadata = {**layer.metadata, **kwargs["metadata"]}
        if scale is not None:
            layer.scale = kwargs["scale"]
        if translate is not None:
            layer.translate = kwargs["translate"]
        if "units" in kwargs:
            layer.units = kwargs["units"]
        return layer
    if isinstance(layer, Labels):
        raise MetalsegError(
            f"layer {name!r} has shape {tuple(layer.data.shape)}, the new phase map {array.shape}: "
            "rename or remove that layer first (it is kept as it is)"
        )
    layer = viewer.add_labels(array, **kwargs)
    mark_written(layer)
    return layer


def session_of(viewer):
    """The :class:`~.session.Session` shared by every dock of ``viewer`` (see :func:`.session.get_session`)."""
    from napari_metalseg._widgets.session import get_session

    return get_session(viewer)


def phases_of_layer(layer: Layer | None) -> PhaseSet | None:
    """The phase set stored on a Labels layer by this plugin, or None."""
    if layer is None:
        return None
    data = layer.metadata.get(PHASES_KEY)
    if not data:
        return None
    try:
        return PhaseSet.from_json(data, source=f"layer {layer.name!r}")
    except MetalsegError:
        return None


PYRAMID_SIDE = 2048
"""The coarsest level of a multiscale phases layer has its longer side at most this (:func:`label_pyramid`)."""


def label_pyramid(labels: np.ndarray, coarsest: int | None = None) -> list[np.ndarray]:
    """The levels of a multiscale Labels layer: ``labels``, then every second pixel of the level above, until the
    longer side is at most ``coarsest`` (default :data:`PYRAMID_SIDE`; at least two levels, as napari needs). Every
    level but the first is a strided view: no copy."""
    coarsest = PYRAMID_SIDE if coarsest is None else coarsest
    levels = [labels]
    while len(levels) < 2 or max(levels[-1].shape) > coarsest:
        levels.append(levels[-1][::2, ::2])
    return levels


def show_phase_pyramid(
    viewer,
    mask: np.ndarray,
    phases: PhaseSet,
    name: str,
    scale: tuple | None = None,
    translate: tuple | None = None,
    metadata: dict | None = None,
    units: tuple | None = None,
) -> Labels:
    """Show the phase map of a huge micrograph lazily, in layer ``name``: a multiscale Labels layer, of which napari
    reads only the level and the region on screen. napari paints on single-scale layers only, so it is read-only.

    Raises
    ------
    MetalsegError
        When ``name`` is a single-scale layer (it may hold the user's work: it is kept as it is).
    """
    layer = viewer.layers[name] if name in viewer.layers else None
    if layer is not None and not getattr(layer, "multiscale", False):
        raise MetalsegError(
            f"layer {name!r} is a single-scale layer and the new phase map of {mask.shape[1]} x {mask.shape[0]} "
            "pixels is shown as a multiscale one: rename or remove that layer first (it is kept as it is)"
        )
    if layer is not None:
        viewer.layers.remove(layer)
    kwargs = labels_layer_kwargs(phases, name, scale, translate, metadata, units)
    layer = viewer.add_labels(label_pyramid(mask_to_labels(mask)), multiscale=True, **kwargs)
    layer.editable = False
    return layer


def mask_of_layer(layer: Labels, num_phases: int | None = None) -> np.ndarray:
    """The mask (phase index, 255 unlabeled) of a 2-D phase Labels layer (multiscale: its full resolution)."""
    data = np.asarray(layer.data[0] if getattr(layer, "multiscale", False) else layer.data)
    if data.ndim != 2:
        raise MetalsegError(f"labels layer {layer.name!r} has shape {data.shape}; a 2-D phase map is needed")
    return labels_to_mask(data, num_phases)


def phase_fractions_of_layer(layer: Labels, num_phases: int) -> np.ndarray | None:
    """Area fraction of each phase over the labelled pixels of a phase Labels layer (None if nothing labelled)."""
    return phase_fractions(mask_of_layer(layer, num_phases), num_phases)


def image_of_layer(layer: Image) -> np.ndarray:
    """The micrograph of an Image layer as a float32 2-D array in [0, 1].

    RGB(A) becomes luminance, integers are divided by their dtype maximum, other floats are min/max scaled
    (the rules of :func:`~napari_metalseg.io.micrograph_from_array`); multiscale data gives the full resolution.
    """
    from napari_metalseg.io import micrograph_from_array

    if not isinstance(layer, Image):
        raise MetalsegError(f"layer {getattr(layer, 'name', layer)!r} is not an image layer")
    data = layer.data[0] if layer.multiscale else layer.data
    data = np.asarray(data)
    if data.ndim != (3 if layer.rgb else 2):
        raise MetalsegError(
            f"image layer {layer.name!r} has shape {data.shape}; metalseg needs a single 2-D "
            "micrograph (split stacks into single images)"
        )
    return micrograph_from_array(data, source=layer.name).image


def image_transform(layer: Layer) -> dict[str, tuple]:
    """``{"scale", "translate", "units"}`` of the last two (y, x) dimensions of a layer, to place derived layers
    (phases, probabilities, boxes) exactly over it: ``show_phase_map(viewer, pm, phases, **image_transform(im))``.
    """
    return {
        "scale": tuple(float(s) for s in layer.scale[-2:]),
        "translate": tuple(float(t) for t in layer.translate[-2:]),
        "units": tuple(str(u) for u in layer.units[-2:]),
    }


def is_micrograph_layer(layer: Layer) -> bool:
    """An Image layer the user can segment (not one the plugin computed, such as feature maps)."""
    return isinstance(layer, Image) and not layer.metadata.get(DERIVED_KEY)


def phase_legend_html(phases: PhaseSet, values: Sequence[float] | None = None) -> str:
    """Rich text listing the phases with colour swatches (and a percentage each when ``values`` is given)."""
    parts = []
    for k, phase in enumerate(phases.phases):
        text = f"<span style='color:{phase.color}'>&#9632;</span>&nbsp;{phase.name}"
        if values is not None:
            text += f" {100 * float(values[k]):.1f}%"
        parts.append(text)
    return "&nbsp;&nbsp; ".join(parts)
