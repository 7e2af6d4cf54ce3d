"""Option values as the engine wants them: comma-separated numbers, grid spacing, ratio vectors, input files."""

from __future__ import annotations

from pathlib import Path

from napari_metalseg.errors import MetalsegError


def floats(text: str | None, what: str) -> list[float] | None:
    """``"0.5,0.3,0.2"`` -> ``[0.5, 0.3, 0.2]`` (None stays None); ``what`` (the option) is named in the error."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MetalsegError(f"{what} {text!r}: expected comma-separated numbers, e.g. 0.5,0.3,0.2") from None


def grid_spacing(text: str) -> int | None:
    """``--grid``: a spacing in pixels, or None for ``auto``."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise MetalsegError(f"--grid {text!r}: expected a spacing in pixels (a whole number >= 1) or auto")
    return value


def ratio_vectors(text: str | None, num_phases: int):
    """``--ratios "0.1,0.7,0.2;0.4,0.5,0.1"`` -> labelled vectors (plus none and true); default: the seed's."""
    from napari_metalseg.study import default_ratio_vectors

    if text is None:
        return default_ratio_vectors(num_phases)
    import numpy as np

    vectors = [("none", None), ("true", None)]
    for part in text.split(";"):
        values = floats(part, "--ratios")
        if not values or len(values) != num_phases or min(values) < 0 or sum(values) <= 0:
            raise MetalsegError(f"--ratios {part!r}: needs {num_phases} non-negative numbers with a positive sum")
        arr = np.array(values) / sum(values)
        vectors.append(("[" + ", ".join(f"{x:.2f}" for x in arr) + "]", arr))
    return vectors


def input_files(path: Path) -> list[Path]:
    """The micrographs to predict: one file, the files of a folder, or of a dataset's ``images/``."""
    from napari_metalseg.io import MICROGRAPH_SUFFIXES

    if path.is_file():
        return [path]
    if path.is_dir():
        folder = path / "images" if (path / "images").is_dir() else path
        files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in MICROGRAPH_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise MetalsegError(f"{folder}: no micrographs ({', '.join(MICROGRAPH_SUFFIXES)})")
        return files
    raise MetalsegError(f"{path}: no such file or folder")


def width_by_height(text: str, what: str) -> tuple[int, int]:
    """``"2048x1536"`` (width x height, as image sizes are written) -> ``(1536, 2048)`` (height, width)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        width, height = (int(v) for v in parts)
    except ValueError:
        raise MetalsegError(f"{what} {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 2048x1536") from None
    if width < 1 or height < 1:
        raise MetalsegError(f"{what} {text!r}: width and height must be at least 1 pixel")
    return height, width
