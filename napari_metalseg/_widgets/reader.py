"""napari reader: micrographs, metalseg masks and whole dataset folders.

* A micrograph file (``.tif``, ``.png``, ...) -> an Image layer, SEM information band cropped, scaled by the
  pixel size in micrometres when the file states it (napari's scale bar then shows physical lengths), the
  micrograph's metadata in ``layer.metadata["metalseg_micrograph"]``.
* A mask PNG with a ``phases.json`` beside it (what :mod:`.writer` saves) or in the dataset folder above a
  ``masks/`` folder -> a coloured phase Labels layer.
* A dataset folder (``images/`` + ``phases.json``) -> one Image layer per image and its mask as that micrograph's
  annotations (a ``"<name> annotations"`` Labels layer, :mod:`.roles`: what the Training dock trains on and what you
  correct); only the first pair is visible.

:func:`get_reader` decides from names alone, as napari's own readers do, and returns a function that reads when napari
calls it: it takes every local file with a micrograph suffix and every folder (but a zarr store), so that a file it
cannot read is refused *when read*, with one :class:`~napari_metalseg.errors.MetalsegError` line naming the file and
what is wrong (a stack of images, a damaged TIFF, an empty folder, a dataset without ``images/`` ...), which napari
shows; declining in :func:`get_reader` would only let napari say that the reader "refused the file". Other paths (other
suffixes, URLs, zarr stores) give ``None`` so napari can try other readers; :func:`name_refusal` says why.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED, PhaseSet

LayerData = tuple


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """npe2 reader hook: :func:`read_paths` when the reader takes every path by its name, else ``None``.

    Only names are looked at (nothing is opened, see :func:`name_refusal`): a local file with a micrograph suffix
    (:data:`~napari_metalseg.io.MICROGRAPH_SUFFIXES`, which covers mask PNGs) or a folder (but a zarr store). Whether
    it can be read is found out by :func:`read_paths`, which raises one line saying why not.
    """
    paths = _as_paths(path)
    if not paths or any(name_refusal(p) is not None for p in paths):
        return None
    return read_paths


def read_paths(path: str | list[str]) -> list[LayerData]:
    """The reader function :func:`get_reader` returns: the layer-data tuples of every path (see :func:`read_path`).

    Every path is read before any layer is returned, so a refused path adds no layer.

    Raises
    ------
    MetalsegError
        Naming the first path that cannot be read, and why.
    """
    return [layer for p in _as_paths(path) for layer in read_path(p)]


def name_refusal(path: str | Path) -> str | None:
    """Why the reader does not take ``path`` by its name, in one line naming it; None when it takes it.

    Parameters
    ----------
    path : str or pathlib.Path
        A file or folder (nothing is opened).

    Returns
    -------
    str or None
        The reason: a URL, a missing path, a zarr store, or a file suffix metalseg does not read.
    """
    from napari_metalseg.io import MICROGRAPH_SUFFIXES

    text = str(path)
    if "://" in text:
        return f"{text}: a URL; metalseg opens local files and folders"
    path = Path(path)
    if not path.exists():
        return f"{path}: no such file or folder"
    if path.is_dir():
        if path.suffix.lower() == ".zarr" or any((path / n).exists() for n in ("zarr.json", ".zgroup", ".zarray")):
            return f"{path}: a zarr store; metalseg opens micrograph files and dataset folders"
        return None
    if path.suffix.lower() not in MICROGRAPH_SUFFIXES:
        kind = f"'{path.suffix}'" if path.suffix else "without a suffix"
        return f"{path}: unsupported file type {kind}; metalseg reads {', '.join(MICROGRAPH_SUFFIXES)}"
    return None


def is_dataset_folder(path: str | Path) -> bool:
    """Whether ``path`` is laid out as a metalseg dataset (an ``images/`` folder and ``phases.json``), by names only;
    :func:`~napari_metalseg.data.dataset.load_dataset` validates the contents."""
    path = Path(path)
    return (path / "images").is_dir() and (path / "phases.json").is_file()


def folder_refusal(path: str | Path) -> str | None:
    """Why a folder is not a metalseg dataset, in one line naming it; None when it is laid out as one.

    Parameters
    ----------
    path : str or pathlib.Path
        A folder.

    Returns
    -------
    str or None
        The reason: empty, a dataset without ``images/`` or without ``phases.json``, a folder of micrographs, or
        anything else.
    """
    from napari_metalseg.io import MICROGRAPH_SUFFIXES

    path = Path(path)
    if is_dataset_folder(path):
        return None
    want = "metalseg opens a micrograph file or a dataset folder (images/ and phases.json)"
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries:
        return f"{path}: the folder is empty; {want}"
    if (path / "phases.json").is_file():
        return f"{path}: dataset folder without images/ (phases.json is there, the micrographs go in images/)"
    if (path / "images").is_dir():
        return f"{path}: dataset folder without phases.json (the phase names and colours of its masks)"
    micrographs = [p for p in entries if p.is_file() and p.suffix.lower() in MICROGRAPH_SUFFIXES]
    if micrographs:
        return (
            f"{path}: a folder of {len(micrographs)} micrograph file(s), not a metalseg dataset "
            "(images/ and phases.json); open the files themselves"
        )
    return f"{path}: neither micrographs nor a metalseg dataset; {want}"


def _as_paths(path: str | Path | list[str]) -> list[Path]:
    return [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]


def read_path(path: str | Path) -> list[LayerData]:
    """Layer-data tuples of one path (see the module docstring).

    Raises
    ------
    MetalsegError
        When the path is none of the above or cannot be read.
    """
    path = Path(path)
    refusal = name_refusal(path)
    if refusal is None and path.is_dir():
        refusal = folder_refusal(path)
        if refusal is None:
            return read_dataset(path)
    if refusal is not None:
        raise MetalsegError(refusal)
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
    from napari_metalseg._widgets.layers import labels_layer_kwargs
    from napari_metalseg._widgets.roles import ANNOTATIONS, layer_name, role_metadata
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
                layer_name(item.name, ANNOTATIONS),
                scale=image[1].get("scale"),
                metadata={**role_metadata(item.name, ANNOTATIONS), "metalseg_dataset": str(dataset.root)},
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
