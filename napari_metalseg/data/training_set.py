"""Growing a training set from annotations: images and (partial) masks written into a dataset folder, and autosaves.

GUI-free: the napari Training dock turns its (image, labels) layer pairs into :class:`TrainingItem` s and calls
:func:`add_to_training_set`; before a training run it writes the annotations with :func:`autosave_labels`, so
nothing drawn is lost. The dataset format is :mod:`napari_metalseg.data.dataset`'s (``images/``, ``masks/``,
``phases.json``, ``metadata.csv``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_metalseg.errors import MetalsegError
from napari_metalseg.io import MICROGRAPH_SUFFIXES
from napari_metalseg.phases import UNLABELED, PhaseSet, labels_to_mask

AUTOSAVE = "autosave"
"""Folder (inside a run folder) where the annotations used for training are saved."""


def safe_name(name: str) -> str:
    """A layer or image name turned into a plain file name (no folders, no leading dot)."""
    cleaned = re.sub(r"[^\w.\- ()+=,]+", "_", name).strip().lstrip(".")
    return cleaned or "layer"


def training_mask(labels: np.ndarray, phases: PhaseSet, name: str) -> np.ndarray:
    """The dataset mask (phase index, 255 unlabeled) of napari labels (``k + 1`` = phase ``k``, 0 unlabeled).

    Parameters
    ----------
    labels : numpy.ndarray
        The labels (copied: the user may paint on while the mask is used).
    phases : PhaseSet
    name : str
        Name of the labels layer, for the messages.

    Raises
    ------
    MetalsegError
        Labels that are not 2-D, or a label value beyond the named phases.
    """
    labels = np.array(labels)
    if labels.ndim != 2:
        raise MetalsegError(f"labels layer {name!r} is {labels.ndim}-D; training needs 2-D labels")
    top = int(labels.max(initial=0))
    if top > len(phases):
        raise MetalsegError(
            f"labels layer {name!r} uses label {top}, but only {len(phases)} phases are named "
            f"({', '.join(phases.names)}; label k is phase k): name more phases or erase those labels"
        )
    return labels_to_mask(labels, len(phases))


def autosave_labels(
    labels: Iterable[tuple[str, np.ndarray]], folder: str | Path, phases: PhaseSet | None = None
) -> list[Path]:
    """Write napari labels to ``folder/autosave/<name>.png`` (dataset mask format), each atomically.

    Every label value the user drew is kept (label ``v`` is written as ``v - 1``, 0 as 255), even values beyond the
    named phases; labels that are not 2-D are skipped. ``phases.json`` is written beside the masks when ``phases`` is
    given.

    Parameters
    ----------
    labels : iterable of (str, numpy.ndarray)
        Layer name and labels of each annotation layer.
    folder : path
        The run folder.
    phases : PhaseSet, optional

    Returns
    -------
    list of Path
        The mask files written.
    """
    from napari_metalseg.data.dataset import write_mask

    target = Path(folder) / AUTOSAVE
    written = []
    for name, data in labels:
        data = np.asarray(data)
        if data.ndim != 2:
            continue
        path = target / f"{safe_name(name)}.png"
        write_mask(path, labels_to_mask(data))
        written.append(path)
    if phases is not None and written:
        phases.save(target / "phases.json")
    return written


def stored_image(data: np.ndarray, source: str) -> tuple[np.ndarray, str]:
    """The pixels to store for an image and the file suffix: 8/16-bit grayscale data as they are (``.png`` /
    ``.tif``), anything else as the plugin's 0..1 float image (:func:`~napari_metalseg.io.micrograph_from_array`)."""
    from napari_metalseg.io import micrograph_from_array

    data = np.asarray(data)
    if data.ndim == 2 and data.dtype == np.uint8:
        return data, ".png"
    if data.ndim == 2 and data.dtype == np.uint16:
        return data, ".tif"
    return np.asarray(micrograph_from_array(data, source=source).image, dtype=np.float32), ".png"


def existing_image(root: str | Path, name: str) -> Path | None:
    """The image file ``images/<name>.<suffix>`` of a dataset folder, if there is one."""
    folder = Path(root) / "images"
    if not folder.is_dir():
        return None
    for path in folder.iterdir():
        if path.stem == name and path.suffix.lower() in MICROGRAPH_SUFFIXES:
            return path
    return None


@dataclass(kw_only=True)
class TrainingItem:
    """One annotated image to add to a training set.

    Attributes
    ----------
    name : str
        Name of the image (made a plain file name with :func:`safe_name`).
    image : numpy.ndarray
        Its pixels as shown (see :func:`stored_image`).
    mask : numpy.ndarray
        Its dataset mask (phase index, 255 unlabeled; :func:`training_mask`).
    magnification, pixel_size_um : float or None
        Its calibration, written into ``metadata.csv``.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    magnification: float | None = None
    pixel_size_um: float | None = None


@dataclass(kw_only=True)
class TrainingSetUpdate:
    """What :func:`add_to_training_set` did: the names written, the items left out because nothing is labelled."""

    written: list[str] = field(default_factory=list)
    unlabelled: list[TrainingItem] = field(default_factory=list)


def add_to_training_set(root: str | Path, phases: PhaseSet, items: Sequence[TrainingItem]) -> TrainingSetUpdate:
    """Save images and their (partial) masks into the dataset folder ``root`` (created when missing).

    An image already in the dataset under the same name keeps its file and gets the new mask, and keeps its split;
    a new one goes to the split ``train``. Other images of the dataset are untouched.

    Parameters
    ----------
    root : path
    phases : PhaseSet
        The phases of the masks; must be those of an existing dataset.
    items : sequence of TrainingItem

    Returns
    -------
    TrainingSetUpdate

    Raises
    ------
    MetalsegError
        Other phases than the dataset's, or an image of another size stored under the same name.
    """
    from napari_metalseg.data.dataset import new_dataset, read_metadata, update_metadata, write_item
    from napari_metalseg.io import read_micrograph

    root = Path(root)
    new_dataset(root, phases)
    meta = read_metadata(root)
    update = TrainingSetUpdate()
    for item in items:
        name = safe_name(item.name)
        mask = np.asarray(item.mask)
        if not (mask != UNLABELED).any():
            update.unlabelled.append(item)
            continue
        existing = existing_image(root, name)
        if existing is not None:
            shape = read_micrograph(existing).shape
            if shape != mask.shape:
                raise MetalsegError(
                    f"{existing}: the dataset already has a different image named {name!r} "
                    f"({shape[1]}x{shape[0]}); rename the image layer"
                )
            write_item(root, name, None, mask)
        else:
            data, suffix = stored_image(item.image, item.name)
            write_item(root, name, data, mask, image_suffix=suffix)
        split = meta.get(name, {}).get("split") or "train"
        update_metadata(root, name, magnification=item.magnification, pixel_size_um=item.pixel_size_um, split=split)
        update.written.append(name)
    return update
