"""The layers of a micrograph: what each one is for (its *role*), its name, and how the docks find and create them.

Every layer the plugin makes for a micrograph names the micrograph in ``metadata["metalseg_image"]`` and its role in
``metadata["metalseg_role"]``; the docks find a micrograph's layers by those two keys, never by a naming rule or a
layer's size. The names are for the user:

========================  ==================  ===========================================================
role                      layer name          what it holds
========================  ==================  ===========================================================
:data:`ANNOTATIONS`       ``<image> annotations``  the strokes the user paints: the training data (Labels)
:data:`PHASES`            ``<image> phases``       the predicted phase map with the user's corrections (Labels)
:data:`EDITS`             ``<image> edits``        outline of the pixels the user corrected in ``phases``
:data:`PROBABILITY`       ``<image> P(<phase>)``   the probability of one phase (Image)
:data:`UNCERTAINTY`       ``<image> uncertainty``  where the model is unsure (Image, 0..1)
:data:`BOXES`             ``<image> boxes``        box prompts (Shapes)
:data:`PREVIEW`           ``<image> preview``      the live preview of the classical classifier (Labels)
:data:`REFERENCE`         any                      a reference segmentation (e.g. a sample's ground truth)
========================  ==================  ===========================================================

Each has the micrograph's scale, translation and units and, for phase layers, the phase colours of the phase set
(``phases.json`` is the source) and the phase names on hover (:func:`~.layers.labels_layer_kwargs`). A Labels layer
the user made (napari's "new labels layer" button) is adopted as a micrograph's annotations in one click
(:func:`adopt_annotations`). Renaming a micrograph renames its layers (:func:`follow_renames`).

Nothing here imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet

from .layers import (
    DERIVED_KEY,
    IMAGE_KEY,
    PHASES_KEY,
    image_transform,
    is_micrograph_layer,
    labels_layer_kwargs,
    phase_colormap,
    phase_features,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Image, Labels, Layer

ROLE_KEY = "metalseg_role"
"""``Layer.metadata`` key: the role of a layer derived from a micrograph (one of :data:`ROLES`)."""
PHASE_KEY = "metalseg_phase"
"""``Layer.metadata`` key of a probability layer: the phase it shows."""

ANNOTATIONS = "annotations"
PHASES = "phases"
EDITS = "edits"
PROBABILITY = "probability"
UNCERTAINTY = "uncertainty"
BOXES = "boxes"
PREVIEW = "preview"
REFERENCE = "reference"
ROLES = (ANNOTATIONS, PHASES, EDITS, PROBABILITY, UNCERTAINTY, BOXES, PREVIEW, REFERENCE)


def layer_name(image_name: str, role: str, phase: str | None = None) -> str:
    """The name of a micrograph's layer of ``role``: ``"<image> annotations"``, ``"<image> P(ferrite)"``, ..."""
    if role not in ROLES:
        raise MetalsegError(f"layer role {role!r} is unknown; choose one of {', '.join(ROLES)}")
    if role == PROBABILITY:
        if not phase:
            raise MetalsegError("a probability layer needs its phase")
        return f"{image_name} P({phase})"
    return f"{image_name} {role}"


def role_metadata(image_name: str, role: str, phase: str | None = None) -> dict[str, Any]:
    """The metadata that ties a layer to its micrograph and says its role."""
    meta: dict[str, Any] = {IMAGE_KEY: image_name, ROLE_KEY: role}
    if phase is not None:
        meta[PHASE_KEY] = phase
    return meta


def role_of(layer: Any) -> str | None:
    """The role of a layer (None: not a layer the plugin derived from a micrograph)."""
    return (getattr(layer, "metadata", None) or {}).get(ROLE_KEY)


def image_name_of(layer: Any) -> str | None:
    """The name of the micrograph a derived layer belongs to (None: none)."""
    return (getattr(layer, "metadata", None) or {}).get(IMAGE_KEY)


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


def micrographs(viewer: napari.Viewer) -> list[Image]:
    """The 2-D micrograph layers of the viewer, in layer-list order."""
    return [layer for layer in viewer.layers if is_2d_image(layer)]


def find_layer(viewer: napari.Viewer, image: Image | str, role: str, phase: str | None = None) -> Layer | None:
    """The layer of ``role`` (and ``phase``) of a micrograph, by metadata (the last one when there are several)."""
    name = image if isinstance(image, str) else image.name
    found = [
        layer
        for layer in viewer.layers
        if image_name_of(layer) == name
        and role_of(layer) == role
        and (phase is None or layer.metadata.get(PHASE_KEY) == phase)
    ]
    return found[-1] if found else None


def layers_of(viewer: napari.Viewer, image: Image | str) -> list[Layer]:
    """Every layer derived from a micrograph."""
    name = image if isinstance(image, str) else image.name
    return [layer for layer in viewer.layers if image_name_of(layer) == name and role_of(layer) is not None]


def image_of(viewer: napari.Viewer, layer: Layer) -> Image | None:
    """The micrograph layer a derived layer belongs to (None: none, or it was closed)."""
    name = image_name_of(layer)
    if name is None or name not in viewer.layers:
        return None
    image = viewer.layers[name]
    return image if is_micrograph_layer(image) else None


def _check_labels_fit(image: Image, labels: Labels) -> None:
    from napari.layers import Labels

    if not isinstance(labels, Labels):
        raise MetalsegError(f"layer {labels.name!r} is not a Labels layer")
    if np.ndim(labels.data) != 2 or tuple(np.shape(labels.data)) != image_hw(image):
        raise MetalsegError(
            f"labels layer {labels.name!r} has shape {tuple(np.shape(labels.data))} but the micrograph "
            f"{image.name!r} has {image_hw(image)}; a micrograph's annotations have its height and width"
        )


def annotations_layer(
    viewer: napari.Viewer, image: Image, phases: PhaseSet | None = None, *, create: bool = False
) -> Labels | None:
    """The annotations of a micrograph; with ``create``, an empty ``<image> annotations`` layer is made when there
    is none (``phases`` needed then: its colours and names).

    Raises
    ------
    MetalsegError
        ``create`` without ``phases``.
    """
    layer = find_layer(viewer, image, ANNOTATIONS)
    if layer is not None or not create:
        return layer
    if phases is None:
        raise MetalsegError(
            f"name the phases before annotating {image.name!r} (Model dock, or the Training dock's phases field)"
        )
    data = np.zeros(image_hw(image), np.uint8)
    kwargs = labels_layer_kwargs(
        phases,
        layer_name(image.name, ANNOTATIONS),
        **image_transform(image),
        metadata=role_metadata(image.name, ANNOTATIONS),
    )
    kwargs["opacity"] = 0.8
    return viewer.add_labels(data, **kwargs)


def show_image_layer(
    viewer: napari.Viewer, image: Image, role: str, data: np.ndarray, phase: str | None = None, **kwargs: Any
) -> Image:
    """Add or update a float image layer of ``role`` derived from ``image`` (probability, uncertainty), in [0, 1],
    hidden when it is new; ``kwargs`` go to ``viewer.add_image``."""
    from napari.layers import Image

    layer = find_layer(viewer, image, role, phase)
    if isinstance(layer, Image) and layer.data.shape == data.shape:
        layer.data = data
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    return viewer.add_image(
        data,
        name=layer_name(image.name, role, phase),
        contrast_limits=(0.0, 1.0),
        visible=False,
        metadata={**role_metadata(image.name, role, phase), DERIVED_KEY: role},
        **image_transform(image),
        **kwargs,
    )


def adopt_annotations(viewer: napari.Viewer, image: Image, labels: Labels, phases: PhaseSet) -> Labels:
    """Make a Labels layer the user made the annotations of ``image``: renamed ``<image> annotations``, placed
    over the micrograph, with the phase colours and names. A previous annotations layer of the image is kept but
    no longer used (its role becomes ``None``; its name gets `` (old)``).

    Raises
    ------
    MetalsegError
        ``labels`` is not a 2-D Labels layer of the micrograph's height and width, or holds labels beyond the
        phases.
    """
    _check_labels_fit(image, labels)
    top = int(np.max(labels.data)) if np.size(labels.data) else 0
    if top > len(phases):
        raise MetalsegError(
            f"labels layer {labels.name!r} holds label {top} but there are {len(phases)} phases "
            f"({', '.join(phases.names)}: labels 1..{len(phases)}, 0 = unlabeled)"
        )
    previous = find_layer(viewer, image, ANNOTATIONS)
    if previous is not None and previous is not labels:
        previous.metadata = {k: v for k, v in previous.metadata.items() if k != ROLE_KEY}
        previous.name = f"{previous.name} (old)"
    transform = image_transform(image)
    labels.name = layer_name(image.name, ANNOTATIONS)
    labels.metadata = {**labels.metadata, **role_metadata(image.name, ANNOTATIONS), PHASES_KEY: phases.to_json()}
    labels.colormap = phase_colormap(phases)
    labels.features = phase_features(phases)
    labels.scale = transform["scale"]
    labels.translate = transform["translate"]
    labels.units = transform["units"]
    return labels


def unlinked_labels(viewer: napari.Viewer, image: Image) -> list[Labels]:
    """Labels layers of the micrograph's size that belong to no micrograph (candidates for adoption)."""
    from napari.layers import Labels

    hw = image_hw(image)
    return [
        layer
        for layer in viewer.layers
        if isinstance(layer, Labels)
        and role_of(layer) is None
        and np.ndim(layer.data) == 2
        and tuple(np.shape(layer.data)) == hw
    ]


def training_pairs(viewer: napari.Viewer) -> list[tuple[Image, Labels]]:
    """Every (micrograph, annotations layer) pair of the viewer."""
    pairs = []
    for image in micrographs(viewer):
        labels = find_layer(viewer, image, ANNOTATIONS)
        if labels is not None:
            pairs.append((image, labels))
    return pairs


def track_micrographs(viewer: napari.Viewer) -> None:
    """Make every micrograph of the viewer, open now or later, rename its layers with it (:func:`follow_renames`)."""
    for layer in viewer.layers:
        if is_micrograph_layer(layer):
            follow_renames(viewer, layer)

    def inserted(event: Any) -> None:
        if is_micrograph_layer(event.value):
            follow_renames(viewer, event.value)

    viewer.layers.events.inserted.connect(inserted)


def follow_renames(viewer: napari.Viewer, image: Image) -> None:
    """Rename a micrograph's layers (and their link) when the micrograph is renamed."""
    state = {"name": image.name}

    def renamed(event: Any = None) -> None:
        old, new = state["name"], image.name
        state["name"] = new
        if old == new:
            return
        for layer in list(viewer.layers):
            if image_name_of(layer) != old or role_of(layer) is None:
                continue
            layer.metadata = {**layer.metadata, IMAGE_KEY: new}
            if layer.name.startswith(old + " "):
                layer.name = new + layer.name[len(old) :]

    image.events.name.connect(renamed)
