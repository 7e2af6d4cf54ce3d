"""napari reader: micrographs, metalseg masks and whole dataset folders.

* A micrograph file (``.tif``, ``.png``, ...) -> an Image layer, SEM information band cropped, scaled by the
  pixel size in micrometres when the file states it (napari's scale bar then shows physical lengths), the
  micrograph's metadata in ``layer.metadata["metalseg_micrograph"]``.
* A mask PNG with a ``phases.json`` beside it (what :mod:`.writer` saves) or in the dataset folder above a
  ``masks/`` folder -> a coloured phase Labels layer.
* A dataset folder (``images/`` + ``phases.json``) -> one Image layer per image and a ``"<name> mask"`` Labels
  layer per mask; only the first pair is visible.

:func:`get_reader` decides from names alone (the file suffix; ``images/`` + ``phases.json`` for a folder), as napari's
own readers do, and returns a function that reads when napari calls it; anything else gives ``None`` so napari can try
other readers. A file that has a micrograph suffix but cannot be read raises
:class:`~napari_metalseg.errors.MetalsegError` naming the file when napari reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED, PhaseSet

LayerData = tuple
MASK_SUFFIX = " mask"
"""A dataset mask layer is named ``<image name> mask``."""


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """npe2 reader hook: :func:`read_paths` when every path looks readable, else ``None``.

    Only names are looked at (nothing is opened): a file with a micrograph suffix
    (:data:`~napari_metalseg.io.MICROGRAPH_SUFFIXES`, which covers mask PNGs) or a dataset folder
    (:func:`is_dataset_folder`).
    """
    paths = _as_paths(path)
    if not paths or not all(_looks_readable(p) for p in paths):
        return None
    return read_paths


def read_paths(path: str | list[str]) -> list[LayerData]:
    """The reader function :func:`get_reader` returns: the layer-data tuples of every path (see :func:`read_path`).

    Raises
    ------
    MetalsegError
        Naming the first path that cannot be read, and why.
    """
    return [layer for p in _as_paths(path) for layer in read_path(p)]


def is_dataset_folder(path: str | Path) -> bool:
    """Whether ``path`` is laid out as a metalseg dataset (an ``images/`` folder and ``phases.json``), by names only;
    :func:`~napari_metalseg.data.dataset.load_dataset` validates the contents."""
    path = Path(path)
    return (path / "images").is_dir() and (path / "phases.json").is_file()


def _as_paths(path: str | Path | list[str]) -> list[Path]:
    return [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]


def _looks_readable(path: Path) -> bool:
    from napari_metalseg.io import MICROGRAPH_SUFFIXES

    if path.is_dir():
        return is_dataset_folder(path)
    return path.suffix.lower() in MICROGRAPH_SUFFIXES and path.is_file()


def read_path(path: str | Path) -> list[LayerData]:
    """Layer-data tuples of one path (see the module docstring).

    Raises
    ------
    MetalsegError
        When the path is none of the above or cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        if is_dataset_folder(path):
            return read_dataset(path)
        raise MetalsegError(f"{path}: not a metalseg dataset (needs images/ and phases.json)")
    phases_file = mask_phases_file(path)
    if phases_file is not None:
        mask_layer = _read_mask_file(path, phases_file)
        if mask_layer is not None:
            return [mask_layer]
    return [read_micrograph_layer(path)]


def read_micrograph_layer(
    path: str | Path, name: str | None = None, pixel_size_um: float | None = None, visible: bool = True
) -> LayerData:
    """An Image layer-data tuple of a micrograph file (information band cropped, physical scale)."""
    from napari_metalseg._widgets.layers import micrograph_layer_kwargs
    from napari_metalseg.io import read_micrograph

    micrograph = read_micrograph(path)
    if pixel_size_um:
        micrograph.pixel_size_um = pixel_size_um
    kwargs = micrograph_layer_kwargs(micrograph, name or Path(path).stem)
    kwargs["visible"] = visible
    return micrograph.image, kwargs, "image"


def mask_phases_file(path: Path) -> Path | None:
    """The ``phases.json`` that makes a PNG a metalseg mask: beside it, or above its ``masks/`` folder."""
    if path.suffix.lower() != ".png":
        return None
    beside = path.parent / "phases.json"
    if beside.is_file():
        return beside
    above = path.parent.parent / "phases.json"
    if path.parent.name == "masks" and above.is_file():
        return above
    return None


def _read_mask_file(path: Path, phases_file: Path) -> LayerData | None:
    """A Labels layer-data tuple, or None when the PNG does not hold a valid mask (then it is a micrograph)."""
    from napari_metalseg._widgets.layers import labels_layer_kwargs
    from napari_metalseg.data.dataset import read_mask
    from napari_metalseg.phases import mask_to_labels

    phases = PhaseSet.load(phases_file)
    try:
        mask = read_mask(path)
    except MetalsegError:
        return None
    if ((mask >= len(phases)) & (mask != UNLABELED)).any():
        return None
    return mask_to_labels(mask), labels_layer_kwargs(phases, path.stem), "labels"


def read_dataset(root: str | Path) -> list[LayerData]:
    """Image and mask layers of every item of a dataset folder (validated by
    :func:`~napari_metalseg.data.dataset.load_dataset`)."""
    from napari_metalseg._widgets.layers import IMAGE_KEY, labels_layer_kwargs
    from napari_metalseg.data.dataset import load_dataset
    from napari_metalseg.phases import mask_to_labels

    dataset = load_dataset(root)
    layers: list[LayerData] = []
    for i, item in enumerate(dataset.items):
        micrograph = item.read_image()
        image = _micrograph_tuple(micrograph, item.name, visible=i == 0, split=item.split)
        layers.append(image)
        mask = item.read_mask()
        if mask is not None:
            kwargs = labels_layer_kwargs(
                dataset.phases,
                f"{item.name}{MASK_SUFFIX}",
                scale=image[1].get("scale"),
                metadata={IMAGE_KEY: item.name, "metalseg_dataset": str(dataset.root)},
            )
            kwargs["visible"] = i == 0
            layers.append((mask_to_labels(mask), kwargs, "labels"))
    return layers


def _micrograph_tuple(micrograph, name: str, visible: bool = True, split: str | None = None) -> LayerData:
    from napari_metalseg._widgets.layers import micrograph_layer_kwargs

    kwargs = micrograph_layer_kwargs(micrograph, name)
    kwargs["visible"] = visible
    if split:
        kwargs["metadata"]["metalseg_split"] = split
    return np.asarray(micrograph.image), kwargs, "image"
