"""Writing a synthetic dataset folder (images, masks, ``phases.json``, ``metadata.csv``) and its splits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_metalseg.data.synth.checks import (
    MAX_PHASES,
    MIN_PHASES,
    check_count,
    check_feature_count,
    check_fractions,
    check_magnifications,
    check_seed_int,
    check_size,
    check_splits,
)
from napari_metalseg.data.synth.micrograph import pixel_size_for, synthesize_micrograph
from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet
from napari_metalseg.progress import Job, ProgressEvent, run_job

DEFAULT_PHASES = PhaseSet.from_names(["ferrite", "martensite", "bainite"])
DEFAULT_MAGNIFICATIONS = (2700, 3000, 5000)

_DIRICHLET_CONCENTRATION = 30.0
_FRACTION_MEANS = {
    2: (0.65, 0.35),
    3: (0.55, 0.30, 0.15),
    4: (0.50, 0.25, 0.15, 0.10),
    5: (0.45, 0.20, 0.15, 0.10, 0.10),
}
_SPLITS = ("train", "val", "test")


def default_fraction_means(k: int) -> tuple[float, ...]:
    """Mean phase fractions that random datasets are drawn around, for ``k`` phases (2..5)."""
    if k not in _FRACTION_MEANS:
        raise MetalsegError(f"synthetic data supports {MIN_PHASES}..{MAX_PHASES} phases, got {k}")
    return _FRACTION_MEANS[k]


def write_synthetic_dataset_job(
    out: str | Path,
    n: int,
    size: int,
    seed: int = 0,
    fractions: Sequence[float] | None = None,
    magnifications: Sequence[float] = DEFAULT_MAGNIFICATIONS,
    phases: PhaseSet = DEFAULT_PHASES,
    splits: Sequence[float] = (0.6, 0.2, 0.2),
    overwrite: bool = False,
) -> Job[Path]:
    """Write a synthetic dataset folder in the standard format, as a job (see :mod:`napari_metalseg.progress`).

    Writes ``images/synth_NNNN.png`` (8-bit), ``masks/synth_NNNN.png``, ``phases.json`` and ``metadata.csv``
    with the columns ``name, magnification, pixel_size_um, split, sample, true_fraction_<phase>...`` where the
    true fractions are measured on the written masks.

    Parameters
    ----------
    out : path
        Dataset folder to create; it must not already contain a dataset unless ``overwrite`` is set.
    n : int
        Number of images (>= 1).
    size : int
        Width and height of every image in pixels (>= 64).
    seed : int
        Master seed; image ``i`` depends only on ``seed`` and ``i`` (not on ``n``).
    fractions : sequence of float, optional
        Fixed target fractions for every image. When None, each image draws its own from a Dirichlet
        distribution around :func:`default_fraction_means`.
    magnifications : sequence of float
        Magnifications cycled over the images.
    phases : PhaseSet
        Phase names and colours (2..5 phases; order = phase index, see :func:`synthesize_micrograph`).
    splits : (float, float, float)
        Train/val/test proportions. Assignment is deterministic for ``(n, seed)``; with ``n >= 3`` every split
        with a non-zero proportion gets at least one image.
    overwrite : bool
        Replace a synthetic dataset already in ``out`` (its ``synth_*`` images and masks, ``phases.json`` and
        ``metadata.csv``). A folder holding any other image or mask is never overwritten.

    Yields
    ------
    ProgressEvent
        ``"synth"`` after each image written (``step`` images of ``total``).

    Returns
    -------
    pathlib.Path
        The dataset folder.
    """
    from napari_metalseg.data.dataset import write_item, write_metadata

    out = Path(out)
    n = check_count(n)
    shape = check_size(size)
    seed = check_seed_int(seed)
    if not isinstance(phases, PhaseSet):
        raise MetalsegError(f"phases must be a PhaseSet, got {type(phases).__name__}")
    k = len(phases)
    if not MIN_PHASES <= k <= MAX_PHASES:
        raise MetalsegError(
            f"synthetic data supports {MIN_PHASES}..{MAX_PHASES} phases, got {k} ({', '.join(phases.names)})"
        )
    fixed = None
    if fractions is not None:
        fixed = check_fractions(fractions)
        if len(fixed) != k:
            raise MetalsegError(f"{len(fixed)} fractions given for {k} phases ({', '.join(phases.names)})")
    mags = check_magnifications(magnifications)
    split_of = assign_splits(n, splits, seed)
    for mag in mags:
        check_feature_count(shape, pixel_size_for(mag, shape[1]), mag)
    _check_target(out, overwrite)

    out.mkdir(parents=True, exist_ok=True)
    phases.save(out / "phases.json")
    children = np.random.SeedSequence(seed).spawn(n)
    rows = []
    for i, child in enumerate(children):
        rng = np.random.default_rng(child)
        target = fixed if fixed is not None else _draw_fractions(rng, k)
        mag = mags[i % len(mags)]
        image, mask = synthesize_micrograph(shape, target, mag, rng)
        name = f"synth_{i:04d}"
        write_item(out, name, image, mask)
        measured = np.bincount(mask.ravel(), minlength=k)[:k] / mask.size
        row = {
            "name": name,
            "magnification": _plain_number(mag),
            "pixel_size_um": round(pixel_size_for(mag, shape[1]), 6),
            "split": split_of[i],
            "sample": f"synth-s{seed}-{i:04d}",
        }
        row.update({f"true_fraction_{p}": round(float(f), 6) for p, f in zip(phases.names, measured)})
        rows.append(row)
        yield ProgressEvent("synth", i + 1, n, message=f"{name}: {mag:g}x")
    write_metadata(out, rows)
    return out


def write_synthetic_dataset(
    out: str | Path,
    n: int,
    size: int,
    seed: int = 0,
    fractions: Sequence[float] | None = None,
    magnifications: Sequence[float] = DEFAULT_MAGNIFICATIONS,
    phases: PhaseSet = DEFAULT_PHASES,
    splits: Sequence[float] = (0.6, 0.2, 0.2),
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset folder: :func:`write_synthetic_dataset_job` run to its end (same parameters).

    Returns
    -------
    pathlib.Path
        The dataset folder.
    """
    return run_job(
        write_synthetic_dataset_job(
            out,
            n,
            size,
            seed=seed,
            fractions=fractions,
            magnifications=magnifications,
            phases=phases,
            splits=splits,
            overwrite=overwrite,
        )
    )


def assign_splits(n: int, splits: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> list[str]:
    """Deterministic train/val/test labels for ``n`` items.

    Counts follow ``splits`` by largest remainder; when ``n`` allows it, every split with a non-zero
    proportion gets at least one item. The order is a seeded shuffle so splits mix magnifications.
    """
    n = check_count(n)
    props = check_splits(splits)
    raw = props * n
    counts = np.floor(raw).astype(int)
    for j in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[j] += 1
    wanted = np.flatnonzero(props > 0)
    if n >= len(wanted):
        for j in wanted:
            if counts[j] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[j] += 1
    labels = np.repeat(np.array(_SPLITS), counts)
    order = np.random.default_rng([seed, 7]).permutation(n)
    return [str(labels[j]) for j in order]


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse to write into an existing dataset; with ``overwrite``, clear a previous synthetic one."""
    if out.exists() and not out.is_dir():
        raise MetalsegError(f"{out}: exists and is not a folder")
    taken = [p for p in ("images", "masks", "metadata.csv", "phases.json") if (out / p).exists()]
    if not taken:
        return
    if not overwrite:
        raise MetalsegError(
            f"{out}: already contains a dataset ({', '.join(taken)}); choose a new or empty folder or overwrite it"
        )
    old = [f for d in ("images", "masks") if (out / d).is_dir() for f in sorted((out / d).iterdir())]
    foreign = [
        f"{f.parent.name}/{f.name}" for f in old if not (f.name.lstrip(".").startswith("synth_") and f.suffix == ".png")
    ]
    if foreign:
        raise MetalsegError(f"{out}: not overwriting: {len(foreign)} file(s) are not synthetic, e.g. {foreign[0]}")
    for f in old:
        f.unlink()


def _plain_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _draw_fractions(rng: np.random.Generator, k: int) -> np.ndarray:
    means = np.asarray(default_fraction_means(k))
    return rng.dirichlet(means * _DIRICHLET_CONCENTRATION)
