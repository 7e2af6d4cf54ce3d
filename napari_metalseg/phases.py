"""Phase sets: names, colours, the phases.json file, and the one phase-index <-> napari-label conversion.

Conventions (used everywhere in the project):

* A *mask* is a ``uint8`` array with values ``0..K-1`` (phase index) or :data:`UNLABELED` (255).
* In napari a phase ``k`` is shown as label ``k + 1``; label ``0`` means unlabeled.
  :func:`mask_to_labels` and :func:`labels_to_mask` are the only places that convert between the two.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_metalseg.errors import MetalsegError

UNLABELED = 255
"""Mask value of pixels that carry no annotation (ignored by training and metrics)."""

MAX_PHASES = 254

DEFAULT_COLORS = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb", "#ee8866")
KNOWN_COLORS = {
    "ferrite": "#4477aa",
    "matrix": "#4477aa",
    "martensite": "#ee6677",
    "bainite": "#ccbb44",
    "pearlite": "#228833",
    "austenite": "#66ccee",
    "cementite": "#aa3377",
    "pore": "#bbbbbb",
    "pores": "#bbbbbb",
    "inclusion": "#ee8866",
}
"""The colour of a phase named without one (case-insensitive): one colour per phase name wherever a phase set is
made from names (the Model dock, the Training dock, the CLI, the synthetic data), so bainite is the same yellow
everywhere. A ``phases.json`` file's own colours always win."""


@dataclass(frozen=True)
class Phase:
    """One phase: its name and display colour (``#rrggbb``)."""

    name: str
    color: str


@dataclass(frozen=True)
class PhaseSet:
    """An ordered set of phases; the order defines the phase index ``0..K-1``."""

    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.phases) <= MAX_PHASES:
            raise MetalsegError(f"a phase set needs 1..{MAX_PHASES} phases, got {len(self.phases)}")
        names = [p.name for p in self.phases]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise MetalsegError(f"duplicate phase names: {', '.join(dupes)}")

    @classmethod
    def from_names(cls, names: Sequence[str], colors: Sequence[str | None] | None = None) -> PhaseSet:
        """Build a phase set from names; a phase without a given colour gets the colour of its name
        (:data:`KNOWN_COLORS`), else the first default colour no other phase of the set uses."""
        colors = list(colors or [])
        chosen = [
            colors[i] if i < len(colors) and colors[i] else KNOWN_COLORS.get(str(n).strip().lower())
            for i, n in enumerate(names)
        ]
        spare = [c for c in DEFAULT_COLORS if c not in chosen]
        phases = []
        for i, name in enumerate(names):
            color = chosen[i]
            if color is None:
                color = spare.pop(0) if spare else DEFAULT_COLORS[i % len(DEFAULT_COLORS)]
            phases.append(Phase(str(name), _check_color(color, f"phase {name!r}")))
        return cls(tuple(phases))

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.phases]

    @property
    def colors(self) -> list[str]:
        return [p.color for p in self.phases]

    def __len__(self) -> int:
        return len(self.phases)

    def index(self, name: str) -> int:
        """Phase index of ``name``."""
        try:
            return self.names.index(name)
        except ValueError:
            raise MetalsegError(f"unknown phase {name!r}; phases are {', '.join(self.names)}") from None

    def to_json(self) -> list[dict[str, str]]:
        return [{"name": p.name, "color": p.color} for p in self.phases]

    def save(self, path: str | Path) -> None:
        """Write ``phases.json`` atomically."""
        from napari_metalseg.io.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PhaseSet:
        """Read a ``phases.json`` file: a list of ``{"name": ..., "color": ...}`` objects."""
        path = Path(path)
        if not path.is_file():
            raise MetalsegError(f"{path}: phases.json is missing")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MetalsegError(f"{path}: not a readable JSON file ({exc})") from None
        return cls.from_json(data, source=str(path))

    @classmethod
    def from_json(cls, data: object, source: str = "phases") -> PhaseSet:
        if not isinstance(data, list) or not data:
            raise MetalsegError(f"{source}: expected a non-empty list of {{'name', 'color'}} objects")
        names, colors = [], []
        for i, entry in enumerate(data):
            if isinstance(entry, str):
                entry = {"name": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise MetalsegError(f"{source}: entry {i} needs a non-empty 'name'")
            names.append(entry["name"])
            color = entry.get("color")
            colors.append(None if color is None else _check_color(color, f"{source}: entry {i}"))
        return cls.from_names(names, colors)

    def rgb(self) -> np.ndarray:
        """Colours as a float array of shape (K, 3) in 0..1."""
        return np.array([[int(c[i : i + 2], 16) / 255 for i in (1, 3, 5)] for c in self.colors], dtype=float)

    def napari_colormap(self) -> dict[int | None, str]:
        """Colour dict for napari's ``DirectLabelColormap`` (label k+1 = phase k, 0 transparent)."""
        cmap: dict[int | None, str] = {None: "transparent", 0: "transparent"}
        for k, color in enumerate(self.colors):
            cmap[k + 1] = color
        return cmap


def _check_color(color: object, where: str) -> str:
    if isinstance(color, str) and len(color) == 7 and color.startswith("#"):
        try:
            int(color[1:], 16)
            return color.lower()
        except ValueError:
            pass
    raise MetalsegError(f"{where}: colour {color!r} is not of the form '#rrggbb'")


def mask_to_labels(mask: np.ndarray) -> np.ndarray:
    """Dataset mask (phase k, 255 unlabeled) -> napari labels (k + 1, 0 unlabeled)."""
    mask = np.asarray(mask)
    labels = mask.astype(np.uint16) + 1
    labels[mask == UNLABELED] = 0
    return labels.astype(np.uint8) if labels.max(initial=0) <= 255 else labels


def labels_to_mask(labels: np.ndarray, num_phases: int | None = None) -> np.ndarray:
    """napari labels (k + 1, 0 unlabeled) -> dataset mask (phase k, 255 unlabeled).

    Labels above ``num_phases`` (when given) are treated as unlabeled: they do not belong to any phase.
    """
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise MetalsegError("labels must be >= 0")
    mask = np.full(labels.shape, UNLABELED, dtype=np.uint8)
    valid = labels > 0
    if num_phases is not None:
        valid &= labels <= num_phases
    else:
        valid &= labels <= MAX_PHASES
    mask[valid] = (labels[valid] - 1).astype(np.uint8)
    return mask


COUNT_CHUNK = 1 << 24
"""Pixels counted at a time by :func:`phase_pixel_counts`."""


def phase_pixel_counts(mask: np.ndarray, num_phases: int) -> np.ndarray:
    """Pixels of each phase ``0..num_phases-1`` in a mask (int64, length ``num_phases``); other values are ignored.

    The one place where phase areas are counted: :func:`phase_fractions`, predictions, datasets and the
    quantification all use it.
    """
    values = np.asarray(mask).ravel()
    counts = np.zeros(num_phases, np.int64)
    for start in range(0, values.size, COUNT_CHUNK):  # in chunks: no int64 copy of a huge mosaic's labels
        chunk = values[start : start + COUNT_CHUNK]
        chunk = chunk[(chunk >= 0) & (chunk < num_phases)]
        counts += np.bincount(chunk.astype(np.intp), minlength=num_phases)[:num_phases]
    return counts


def phase_fractions(mask: np.ndarray, num_phases: int) -> np.ndarray | None:
    """Area fraction of each phase over the labelled pixels of ``mask`` (float64, sums to 1).

    Returns
    -------
    numpy.ndarray or None
        ``None`` when no pixel belongs to a phase (nothing labelled or predicted).
    """
    counts = phase_pixel_counts(mask, num_phases)
    total = counts.sum()
    return counts / total if total else None
