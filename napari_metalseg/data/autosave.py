"""Crash-safe annotation: the strokes painted on a micrograph, saved in an autosave folder and found again by the
micrograph's content.

GUI-free. The napari autosaver (:mod:`napari_metalseg._widgets.autosave`) saves a micrograph's annotations here a
few seconds after each stroke and restores them when the same micrograph is opened again, whatever its path or layer
name: the folder of a micrograph is named by :func:`micrograph_key`, a hash of its pixels. ::

    <autosave_root()>/<key>/annotations.png   the annotations in the dataset's mask format
                                              (data.dataset: phase index, 255 unlabeled)
    <autosave_root()>/<key>/phases.json       their phase set (PhaseSet.save)
    <autosave_root()>/<key>/info.json         image name, source file, shape, labelled pixels, time
    <autosave_root()>/<key>/earlier/<time>/   an autosave kept aside (AnnotationStore.archive)

Each file is written atomically (:mod:`napari_metalseg.io.atomic`): a crash mid-write leaves the previous complete
file. ``annotations.png`` is written last, so a first save cut short leaves no autosave rather than a damaged one.
The annotations a training run used are kept elsewhere (inside the run folder:
:func:`~napari_metalseg.data.training_set.autosave_labels`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED, PhaseSet, labels_to_mask, mask_to_labels
from napari_metalseg.progress import Job

ENV_DIR = "METALSEG_AUTOSAVE_DIR"
"""Environment variable: the autosave folder (default: the platform's user data folder, see :func:`autosave_root`)."""
ANNOTATIONS_FILE = "annotations.png"
PHASES_FILE = "phases.json"
INFO_FILE = "info.json"
EARLIER = "earlier"
"""Sub-folder of a micrograph's autosave where :meth:`AnnotationStore.archive` moves an autosave it must keep."""
FORMAT = 1
"""Version of ``info.json``."""
KEY_CHARS = 32
"""Hex characters of a micrograph key (128 bits of the SHA-256)."""
_CHUNK_BYTES = 16 << 20
_KEY_PATTERN = re.compile(r"^[0-9a-f]{8,64}$")


def user_data_dir() -> Path:
    """The platform's folder for per-user application data: ``%LOCALAPPDATA%`` on Windows, ``~/Library/Application
    Support`` on macOS, ``$XDG_DATA_HOME`` or ``~/.local/share`` elsewhere."""
    home = Path.home()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return Path(local) if local else home / "AppData" / "Local"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support"
    xdg = os.environ.get("XDG_DATA_HOME", "")
    return Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".local" / "share"


def autosave_root() -> Path:
    """The autosave folder: ``$METALSEG_AUTOSAVE_DIR`` when set, else ``<user data dir>/napari-metalseg/autosave``
    (:func:`user_data_dir`)."""
    env = os.environ.get(ENV_DIR, "").strip()
    if env:
        return Path(env).expanduser()
    return user_data_dir() / "napari-metalseg" / "autosave"


def micrograph_key(data: Any) -> str:
    """A key of a micrograph's content: the SHA-256 of its shape, dtype and pixels (its first :data:`KEY_CHARS` hex
    characters).

    The same pixels give the same key whatever the file's path or the layer's name; any other image (one pixel, the
    shape or the dtype differing) another key. The pixels are hashed in blocks of rows, so a large array is not
    copied (an array that is not C-contiguous is copied one block at a time).

    Parameters
    ----------
    data : array-like
        The micrograph's pixels as shown (e.g. an Image layer's data).

    Returns
    -------
    str
    """
    arr = data if isinstance(data, np.ndarray) else np.asarray(data)
    digest = hashlib.sha256()
    digest.update(f"metalseg-micrograph {arr.shape} {arr.dtype.str}\n".encode())
    if arr.ndim == 0:
        digest.update(np.ascontiguousarray(arr).tobytes())
    elif arr.size:
        row_bytes = max(1, arr.nbytes // arr.shape[0])
        rows = max(1, _CHUNK_BYTES // row_bytes)
        for start in range(0, arr.shape[0], rows):
            block = np.ascontiguousarray(arr[start : start + rows])
            digest.update(memoryview(block).cast("B"))
    return digest.hexdigest()[:KEY_CHARS]


@dataclass(frozen=True, kw_only=True)
class SavedAnnotations:
    """An autosave read back by :meth:`AnnotationStore.load`.

    Attributes
    ----------
    labels : numpy.ndarray
        napari labels (uint8; 0 unlabeled, ``k + 1`` = phase ``k``).
    phases : PhaseSet
    info : dict
        ``image_name``, ``source`` (or None), ``shape``, ``labelled_pixels``, ``saved_at`` (ISO time), ``format``.
    folder : Path
        Where they are saved.
    """

    labels: np.ndarray
    phases: PhaseSet
    info: dict[str, Any]
    folder: Path


class AnnotationStore:
    """The autosave folder: one sub-folder per micrograph, named by its :func:`micrograph_key`.

    Parameters
    ----------
    root : path, optional
        The folder (default :func:`autosave_root`); created on the first save.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else autosave_root()

    def folder(self, key: str) -> Path:
        """The folder of a micrograph's autosave.

        Raises
        ------
        MetalsegError
            ``key`` is not a key of :func:`micrograph_key`.
        """
        if not isinstance(key, str) or not _KEY_PATTERN.match(key):
            raise MetalsegError(f"autosave key {key!r} is not a micrograph key (hex digits)", value="key")
        return self.root / key

    def save(
        self,
        key: str,
        labels: np.ndarray,
        phases: PhaseSet,
        *,
        image_name: str,
        source: str | Path | None = None,
    ) -> Path:
        """Save a micrograph's annotations (each file atomically: a crash mid-save leaves the previous autosave).

        Parameters
        ----------
        key : str
            The micrograph's :func:`micrograph_key`.
        labels : numpy.ndarray
            2-D napari labels (0 unlabeled, ``k + 1`` = phase ``k``); every value 1..254 is kept, even beyond
            ``phases`` (nothing the user drew is dropped); the array is not modified.
        phases : PhaseSet
        image_name : str
            The micrograph's layer name, for the user.
        source : path, optional
            The micrograph's file, for the user.

        Returns
        -------
        Path
            The micrograph's autosave folder.

        Raises
        ------
        MetalsegError
            Labels that are not 2-D, a bad key, or a file that cannot be written (naming it).
        """
        from napari_metalseg.data.dataset import write_mask
        from napari_metalseg.io.atomic import atomic_write_text

        folder = self.folder(key)
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise MetalsegError(f"annotations of {image_name!r} have shape {labels.shape}; 2-D labels are autosaved")
        mask = labels_to_mask(labels)
        info = {
            "format": FORMAT,
            "image_name": str(image_name),
            "source": None if source in (None, "") else str(source),
            "shape": [int(n) for n in labels.shape],
            "labelled_pixels": int(np.count_nonzero(mask != UNLABELED)),
            "saved_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        path = folder / PHASES_FILE
        try:  # the annotations last: load() finds an autosave only once it is complete
            phases.save(path)
            path = folder / INFO_FILE
            atomic_write_text(path, json.dumps(info, indent=2) + "\n")
            path = folder / ANNOTATIONS_FILE
            write_mask(path, mask)
        except OSError as exc:
            raise MetalsegError(
                f"{path}: cannot autosave the annotations of {image_name!r} ({exc}); set {ENV_DIR} to a writable folder"
            ) from exc
        return folder

    def load(self, key: str) -> SavedAnnotations | None:
        """The annotations saved for a micrograph, or None when there are none.

        Raises
        ------
        MetalsegError
            A damaged autosave, naming the file.
        """
        from napari_metalseg.data.dataset import read_mask

        folder = self.folder(key)
        png = folder / ANNOTATIONS_FILE
        if not png.is_file():
            return None
        hint = f"move the folder {folder} away to start afresh"
        try:
            mask = read_mask(png)
        except MetalsegError as exc:
            raise MetalsegError(f"damaged autosave: {exc}; {hint}") from None
        try:
            phases = PhaseSet.load(folder / PHASES_FILE)
        except MetalsegError as exc:
            raise MetalsegError(f"damaged autosave: {exc}; {hint}") from None
        info = _read_info(folder / INFO_FILE, hint)
        if list(info.get("shape") or []) != list(mask.shape):
            raise MetalsegError(
                f"damaged autosave: {png}: the annotations are {mask.shape[1]}x{mask.shape[0]} but {INFO_FILE} "
                f"says {info.get('shape')}; {hint}"
            )
        labels = mask_to_labels(mask)
        return SavedAnnotations(labels=labels, phases=phases, info=info, folder=folder)

    def load_job(self, key: str | None = None, *, image: Any = None) -> Job[tuple[str, SavedAnnotations | None]]:
        """:meth:`load` as a job (for a background worker): ``key`` None is computed from ``image`` first.

        Returns ``(key, saved or None)``; yields no events.
        """
        if key is None:
            key = micrograph_key(image)
        return key, self.load(key)
        yield  # a generator: a job that reports nothing

    def archive(self, key: str) -> Path | None:
        """Move a micrograph's autosave into ``<folder>/earlier/<time>/`` (None: there is none), so that the next
        save does not overwrite it; :meth:`load` no longer returns it."""
        folder = self.folder(key)
        if not (folder / ANNOTATIONS_FILE).is_file():
            return None
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        target = folder / EARLIER / stamp
        n = 1
        while target.exists():
            n += 1
            target = folder / EARLIER / f"{stamp}-{n}"
        target.mkdir(parents=True)
        for name in (ANNOTATIONS_FILE, PHASES_FILE, INFO_FILE):  # the PNG first: once it moved, load() finds none
            if (folder / name).is_file():
                os.replace(folder / name, target / name)
        return target

    def clear(self, key: str) -> None:
        """Delete a micrograph's autosave (nothing happens when there is none)."""
        folder = self.folder(key)
        if folder.is_dir():
            shutil.rmtree(folder)


def _read_info(path: Path, hint: str) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MetalsegError(f"damaged autosave: {path}: the file is missing; {hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetalsegError(f"damaged autosave: {path}: not a readable JSON file ({exc}); {hint}") from None
    if not isinstance(info, dict):
        raise MetalsegError(f"damaged autosave: {path}: expected a JSON object; {hint}")
    return info
