"""The dataset format: the contract every command uses.

::

    DATASET/images/<name>.<tif|tiff|png|jpg|jpeg|bmp>   (io.micrograph.MICROGRAPH_SUFFIXES)
    DATASET/masks/<name>.png      uint8, same height/width as the (cropped) image:
                                  0..K-1 = phase index, 255 = unlabeled (partial annotations are normal)
    DATASET/phases.json           [{"name": "ferrite", "color": "#4477aa"}, ...]  (K entries, order = index)
    DATASET/metadata.csv          optional: name,magnification,pixel_size_um,split[,sample,...]

Images without a mask are allowed (prediction only). :func:`load_dataset` validates everything and reports every
offending file in one error, not only the first.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from napari_metalseg.errors import MetalsegError
from napari_metalseg.io.atomic import atomic_path, atomic_write_text
from napari_metalseg.io.micrograph import MICROGRAPH_SUFFIXES, TIFF_SUFFIXES
from napari_metalseg.phases import UNLABELED, PhaseSet, phase_pixel_counts
from napari_metalseg.tiles import row_bands

SPLITS = ("train", "val", "test")
METADATA_COLUMNS = ("name", "magnification", "pixel_size_um", "split")


@dataclass
class DatasetItem:
    """One image of a dataset with its (optional) mask and metadata."""

    name: str
    image_path: Path
    mask_path: Path | None
    magnification: float | None = None
    pixel_size_um: float | None = None
    split: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def read_image(self):
        """The :class:`~napari_metalseg.io.Micrograph` (info band cropped; metadata.csv overrides the file's)."""
        from napari_metalseg.io import read_micrograph

        micrograph = read_micrograph(self.image_path)
        if self.magnification is not None:
            micrograph.magnification = self.magnification
        if self.pixel_size_um is not None:
            micrograph.pixel_size_um = self.pixel_size_um
        return micrograph

    def read_mask(self) -> np.ndarray | None:
        """The mask as uint8 (phase index, 255 unlabeled), or None when the image has none."""
        return None if self.mask_path is None else read_mask(self.mask_path)


@dataclass
class Dataset:
    """A validated dataset folder."""

    root: Path
    phases: PhaseSet
    items: list[DatasetItem]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def split(self, name: str | None) -> list[DatasetItem]:
        """Items of a split; ``None`` or ``"all"`` gives every item."""
        if name in (None, "all"):
            return list(self.items)
        if name not in SPLITS:
            raise MetalsegError(f"unknown split {name!r}; use one of {', '.join(SPLITS)} or all")
        return [item for item in self.items if item.split == name]

    def labelled_split(self, name: str) -> list[DatasetItem]:
        """Items with a mask in a split; ``"train"`` also takes images without a split, ``"all"`` every one."""
        if name == "train":
            return [item for item in self.labelled if item.split in (None, "train")]
        return [item for item in self.split(name) if item.mask_path is not None]

    @property
    def labelled(self) -> list[DatasetItem]:
        return [item for item in self.items if item.mask_path is not None]

    def item(self, name: str) -> DatasetItem:
        for item in self.items:
            if item.name == name:
                return item
        raise MetalsegError(f"{self.root}: no image named {name!r}")

    def summary(self) -> dict:
        """A JSON-ready summary: counts per split and magnification, labelled pixels per phase."""
        counts = np.zeros(len(self.phases), dtype=np.int64)
        unlabeled = 0
        for item in self.labelled:
            mask = item.read_mask()
            counts += phase_pixel_counts(mask, len(self.phases))
            unlabeled += int((mask == UNLABELED).sum())
        total = int(counts.sum())
        by_split: dict[str, int] = {}
        by_mag: dict[str, int] = {}
        for item in self.items:
            by_split[item.split or "unassigned"] = by_split.get(item.split or "unassigned", 0) + 1
            mag = f"x{item.magnification:g}" if item.magnification else "unknown"
            by_mag[mag] = by_mag.get(mag, 0) + 1
        return {
            "root": str(self.root),
            "images": len(self.items),
            "masks": len(self.labelled),
            "phases": self.phases.names,
            "splits": by_split,
            "magnifications": by_mag,
            "labelled_fraction": {n: (float(c) / total if total else 0.0) for n, c in zip(self.phases.names, counts)},
            "unlabeled_pixels": unlabeled,
        }


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask PNG as a 2-D uint8 array."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise MetalsegError(f"{path}: mask must be a single-channel 8-bit PNG, got mode {im.mode}")
            arr = np.asarray(im)
    except MetalsegError:
        raise
    except Exception as exc:  # Pillow raises many types for broken files
        raise MetalsegError(f"{path}: cannot read mask ({exc})") from None
    if arr.ndim != 2:
        raise MetalsegError(f"{path}: mask must be 2-D, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise MetalsegError(f"{path}: mask values must be 0..255")
        arr = arr.astype(np.uint8)
    return arr


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a mask (uint8, phase index or 255) as PNG, atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise MetalsegError(f"{path}: mask must be 2-D, got shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise MetalsegError(f"{path}: mask values must be 0..255")
        mask = mask.astype(np.uint8)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(mask, mode="L").save(tmp, format="PNG")


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write a grayscale image atomically: float in [0, 1] or uint8 -> 8-bit, uint16 -> 16-bit (PNG or TIFF)."""
    path = Path(path)
    image = np.asarray(image)
    if image.dtype.kind == "f":  # in bands of rows: a huge mosaic gets its 8-bit copy, no float temporaries
        out = np.empty(image.shape, np.uint8)
        for band in row_bands(image.shape[0], image[:1].size):
            out[band] = (np.clip(image[band], 0, 1) * 255 + 0.5).astype(np.uint8)
        image = out
    with atomic_path(path) as tmp:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            tifffile.imwrite(tmp, image)
        else:
            Image.fromarray(image).save(tmp, format=_pil_format(path))


def _pil_format(path: Path) -> str:
    return {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}.get(path.suffix.lower(), "PNG")


def write_item(
    root: str | Path, name: str, image: np.ndarray | None, mask: np.ndarray | None, image_suffix: str = ".png"
) -> None:
    """Write ``images/<name><suffix>`` and ``masks/<name>.png`` into a dataset folder (each atomically).

    ``image=None`` writes only the mask (the image is already there); ``mask=None`` writes only the image.
    """
    root = Path(root)
    _check_name(name)
    if image is not None and mask is not None and np.asarray(image).shape[:2] != np.asarray(mask).shape:
        raise MetalsegError(f"{name}: image shape {np.asarray(image).shape[:2]} != mask shape {np.asarray(mask).shape}")
    if image is not None:
        write_image(root / "images" / f"{name}{image_suffix}", image)
    if mask is not None:
        write_mask(root / "masks" / f"{name}.png", mask)


def _check_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise MetalsegError(f"invalid image name {name!r}: use a plain file name without folders")


def write_metadata(root: str | Path, rows: Iterable[dict]) -> None:
    """Write ``metadata.csv`` atomically; columns = the standard ones, then every extra key in first-seen order."""
    rows = list(rows)
    columns = list(METADATA_COLUMNS)
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else _fmt(row.get(k))) for k in columns})
    atomic_write_text(Path(root) / "metadata.csv", buf.getvalue())


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_metadata(root: str | Path) -> dict[str, dict[str, str]]:
    """Rows of ``metadata.csv`` keyed by name ({} when the file does not exist)."""
    path = Path(root) / "metadata.csv"
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise MetalsegError(f"{path}: cannot read ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "name" not in reader.fieldnames:
        raise MetalsegError(f"{path}: needs a header line with a 'name' column")
    rows = {}
    for row in reader:
        name = (row.get("name") or "").strip()
        if name:
            rows[Path(name).stem if Path(name).suffix.lower() in MICROGRAPH_SUFFIXES else name] = {
                k: (v or "").strip() for k, v in row.items() if k is not None
            }
    return rows


def update_metadata(root: str | Path, name: str, **fields: object) -> None:
    """Add or update one row of ``metadata.csv`` (other rows are kept)."""
    rows = read_metadata(root)
    row = rows.get(name, {"name": name})
    row.update({k: v for k, v in fields.items() if v is not None})
    rows[name] = row
    write_metadata(root, rows.values())


def load_dataset(root: str | Path, require_masks: bool = False) -> Dataset:
    """Load and validate a dataset folder.

    Parameters
    ----------
    root : path
        The dataset folder (with ``images/``, optional ``masks/``, ``phases.json``, optional ``metadata.csv``).
    require_masks : bool
        When True, an image without a mask is an error (training, evaluation).

    Raises
    ------
    MetalsegError
        Listing every problem found: missing phases.json, masks without images, size mismatches, label values
        >= K that are not 255, bad metadata values.
    """
    root = Path(root)
    if not root.is_dir():
        raise MetalsegError(f"{root}: dataset folder does not exist")
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise MetalsegError(f"{root}: no images/ folder (expected DATASET/images/<name>.png and DATASET/masks/)")
    phases = PhaseSet.load(root / "phases.json")
    k = len(phases)
    meta = read_metadata(root)

    problems: list[str] = []
    images: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in MICROGRAPH_SUFFIXES:
            continue
        if path.stem in images:
            problems.append(f"{path.name}: two images named {path.stem!r} ({images[path.stem].name})")
            continue
        images[path.stem] = path
    if not images:
        raise MetalsegError(f"{images_dir}: no images (supported: {', '.join(MICROGRAPH_SUFFIXES)})")

    masks_dir = root / "masks"
    masks = {}
    if masks_dir.is_dir():
        masks = {p.stem: p for p in sorted(masks_dir.glob("*.png")) if not p.name.startswith(".")}
    for stem in sorted(set(masks) - set(images)):
        problems.append(f"masks/{masks[stem].name}: no image with that name in images/")

    items = []
    for name, image_path in images.items():
        mask_path = masks.get(name)
        if mask_path is None and require_masks:
            problems.append(f"images/{image_path.name}: has no mask masks/{name}.png")
        if mask_path is not None:
            problems.extend(_check_mask(mask_path, image_path, k))
        row = meta.get(name, {})
        item = DatasetItem(
            name=name,
            image_path=image_path,
            mask_path=mask_path,
            extra={key: value for key, value in row.items() if key not in METADATA_COLUMNS},
        )
        for column in ("magnification", "pixel_size_um"):
            value = row.get(column, "")
            if value:
                try:
                    number = float(value)
                    if not np.isfinite(number) or number <= 0:
                        raise ValueError
                    setattr(item, column, number)
                except ValueError:
                    problems.append(f"metadata.csv: {name}: {column} {value!r} is not a positive number")
        split = row.get("split", "")
        if split:
            if split not in SPLITS:
                problems.append(f"metadata.csv: {name}: split {split!r} is not one of {', '.join(SPLITS)}")
            else:
                item.split = split
        items.append(item)
    for name in sorted(set(meta) - set(images)):
        problems.append(f"metadata.csv: row {name!r} has no image in images/")
    if problems:
        listing = "; ".join(problems)
        raise MetalsegError(f"{root}: {len(problems)} problem(s) in the dataset: {listing}")
    return Dataset(root=root, phases=phases, items=items)


def _check_mask(mask_path: Path, image_path: Path, k: int) -> list[str]:
    try:
        mask = read_mask(mask_path)
    except MetalsegError as exc:
        return [f"masks/{mask_path.name}: {str(exc).split(': ', 1)[-1]}"]
    problems = []
    shape = _image_shape(image_path)
    if isinstance(shape, str):
        problems.append(f"images/{image_path.name}: {shape}")
    elif shape != mask.shape:
        problems.append(
            f"masks/{mask_path.name}: size {mask.shape[1]}x{mask.shape[0]} does not match "
            f"image {shape[1]}x{shape[0]} (after info-band crop)"
        )
    bad = np.unique(mask[(mask >= k) & (mask != UNLABELED)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8]) + (" ..." if bad.size > 8 else "")
        problems.append(f"masks/{mask_path.name}: label values {shown} are not phases 0..{k - 1} or 255 (unlabeled)")
    return problems


def _image_shape(image_path: Path) -> tuple[int, int] | str:
    from napari_metalseg.io import read_micrograph

    try:
        return read_micrograph(image_path).shape
    except MetalsegError as exc:
        return str(exc).split(": ", 1)[-1]


def new_dataset(root: str | Path, phases: PhaseSet | Sequence[str]) -> Path:
    """Create an empty dataset folder with ``phases.json`` (or check an existing one has the same phases)."""
    root = Path(root)
    phases = phases if isinstance(phases, PhaseSet) else PhaseSet.from_names(phases)
    existing = root / "phases.json"
    if existing.is_file():
        current = PhaseSet.load(existing)
        if current.names != phases.names:
            raise MetalsegError(f"{existing}: phases {current.names} differ from {phases.names}")
    else:
        phases.save(existing)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    return root
