"""Reading masks from a dataset folder or a folder of mask PNGs, and :func:`quantify_masks_job` over them."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED, PhaseSet, phase_pixel_counts
from napari_metalseg.progress import Job, ProgressEvent, run_job
from napari_metalseg.quantify.fields import (
    FieldResult,
    _as_phases,
    _check_pixel_size,
    _check_spacing,
    check_mask,
    quantify_mask,
)
from napari_metalseg.quantify.report import Report, make_report
from napari_metalseg.quantify.statistics import _check_by

if TYPE_CHECKING:  # pragma: no cover
    from napari_metalseg.data.dataset import Dataset


@dataclass
class _Source:
    """A mask file to quantify, with what metadata says about it."""

    name: str
    path: Path
    magnification: float | None = None
    pixel_size_um: float | None = None
    sample: str = ""
    true_fractions: dict[str, float] | None = None


def quantify_masks(
    source: str | Path | Dataset,
    phases: PhaseSet | str | Path | None = None,
    by: str = "sample",
    grid_spacing: int | None = None,
    truth: str | Path | None = None,
    pixel_size_um: float | None = None,
    *,
    record: bool = False,
    keep_going: bool = False,
) -> Report:
    """Quantify every mask of a dataset or folder and summarise per sample.

    :func:`quantify_masks_job` run to its end; the parameters, result and errors are the job's.
    """
    return run_job(
        quantify_masks_job(
            source,
            phases=phases,
            by=by,
            grid_spacing=grid_spacing,
            truth=truth,
            pixel_size_um=pixel_size_um,
            record=record,
            keep_going=keep_going,
        )
    )


RECORD = "quantify"
"""Stem of a folder's record of measured fields (``quantify.jsonl``, see :func:`quantify_masks_job`)."""


def quantify_masks_job(
    source: str | Path | Dataset,
    phases: PhaseSet | str | Path | None = None,
    by: str = "sample",
    grid_spacing: int | None = None,
    truth: str | Path | None = None,
    pixel_size_um: float | None = None,
    *,
    record: bool = False,
    keep_going: bool = False,
) -> Job[Report]:
    """Quantify every mask of a dataset or folder and summarise per sample, as a job (:mod:`napari_metalseg.progress`).

    The masks are read one at a time: memory holds one mask and the measurements, whatever the number of fields.

    Parameters
    ----------
    source : path or Dataset
        A dataset folder (``masks/``, ``phases.json``, optional ``metadata.csv``), a plain folder of mask PNGs
        (with ``phases.json``, optional ``metadata.csv``), a folder of sub-folders of mask PNGs (one sub-folder per
        sample), a single mask PNG, or a loaded :class:`~napari_metalseg.data.dataset.Dataset`.
    phases : PhaseSet or path, optional
        Overrides the folder's ``phases.json`` (needed when the folder has none).
    by : {"sample", "magnification", "all"}
        Grouping. ``sample`` uses metadata.csv's ``sample`` column; fields without one belong to a sample named
        after their folder (the dataset folder, or the sub-folder).
    grid_spacing : int, optional
        E562 grid spacing in pixels; None: about 256 points per field.
    truth : path, optional
        Folder (or dataset) of true masks with the same names; otherwise ``true_fraction_<phase>`` metadata columns
        are used when present for every phase.
    pixel_size_um : float, optional
        Pixel size for fields whose metadata.csv has none.
    record : bool
        Keep the folder's record of measured fields, ``quantify.jsonl`` next to ``phases.json``: one line per
        field (its name, the sha256 of its mask file, the settings that change its measurements, the
        measurements), appended and flushed to disk as each field is done. A rerun takes every field whose line
        matches its mask file and settings from the record instead of measuring it again, so an interrupted
        quantification of thousands of fields goes on where it stopped. A folder that cannot be written is
        quantified without a record (a warning says so).
    keep_going : bool
        A mask that cannot be read or holds values that are not phases is reported in :attr:`Report.failed` and the
        others are quantified (default: the error ends the job).

    Yields
    ------
    ProgressEvent
        ``"quantify"`` after each field (``step`` fields of ``total``).

    Returns
    -------
    Report
        With :attr:`Report.reused`: the fields taken from the record.

    Raises
    ------
    MetalsegError
        No masks, no phases.json, a mask value that is not a phase (naming the file; without ``keep_going``), every
        mask empty or failed, a bad metadata value, a missing true mask, a bad grouping. Empty masks (all 255) are
        skipped with a warning.
    """
    by = _check_by(by)
    if grid_spacing is not None:
        _check_spacing(grid_spacing)
    sources, phase_set, label, root = _collect(source, phases, pixel_size_um)
    if truth is not None:
        _attach_truth(sources, Path(truth), phase_set)
    kept = _FieldRecord(root) if record and root is not None else None
    fields, skipped, failed, reused = [], [], {}, 0
    for i, src in enumerate(sources):
        key = kept.key(src, phase_set, grid_spacing) if kept is not None else None
        field_result, found = kept.lookup(src.name, key) if kept is not None else (None, False)
        reused += found
        if not found:
            try:
                field_result = _quantify_source(src, phase_set, grid_spacing)
            except MetalsegError as exc:
                if not keep_going:
                    raise
                failed[src.name] = str(exc)
                yield ProgressEvent("quantify", i + 1, len(sources), message=src.name)
                continue
            if kept is not None:
                kept.add(src.name, key, field_result)
        if field_result is None:
            skipped.append(f"{src.name}: no labelled pixels (all 255 = unlabeled); skipped")
        else:
            fields.append(field_result)
        yield ProgressEvent("quantify", i + 1, len(sources), message=src.name)
    if kept is not None and kept.warning:
        skipped.append(kept.warning)
    if not fields:
        reason = "every mask failed or is empty" if failed else "every mask is empty (all pixels 255 = unlabeled)"
        raise MetalsegError(f"{label}: {reason}; nothing to quantify")
    report = make_report(fields, phase_set, by=by, source=label, skipped=skipped)
    report.failed, report.reused = failed, reused
    return report


class _FieldRecord:
    """A folder's ``quantify.jsonl`` (:func:`quantify_masks_job`'s ``record``)."""

    def __init__(self, root: Path) -> None:
        from napari_metalseg.batch import Manifest

        self.manifest: Manifest | None = Manifest(root, stem=RECORD)
        self.done = self.manifest.entries()
        self.warning = ""

    @staticmethod
    def key(src: _Source, phases: PhaseSet, grid_spacing: int | None) -> dict:
        """What a field's measurements depend on (as JSON gives it back): the sha256 of its mask file and the
        settings."""
        from napari_metalseg.batch import file_digest

        settings = {
            "phases": phases.names,
            "grid_spacing": grid_spacing,
            "pixel_size_um": src.pixel_size_um,
            "magnification": src.magnification,
            "sample": src.sample,
            "true_fractions": src.true_fractions,
        }
        return {"sha256": file_digest(src.path), "settings": json.loads(json.dumps(settings))}

    def lookup(self, name: str, key: dict) -> tuple[FieldResult | None, bool]:
        """``(the recorded measurements or None for an empty mask, True)`` when the record has field ``name`` with
        this ``key``; ``(None, False)`` otherwise."""
        entry = self.done.get(name)
        if entry is None or any(entry.get(k) != v for k, v in key.items()):
            return None, False
        try:
            return (FieldResult(**entry["field"]) if entry["field"] is not None else None), True
        except (KeyError, TypeError):  # a line of another version: measure again
            return None, False

    def add(self, name: str, key: dict, field_result: FieldResult | None) -> None:
        """Record field ``name`` (appended and flushed to disk); a record that cannot be written is given up with
        :attr:`warning`."""
        if self.manifest is None:
            return
        entry = {"name": name, **key, "field": asdict(field_result) if field_result is not None else None}
        try:
            self.manifest.record(entry)
        except OSError as exc:
            self.warning = f"{self.manifest.path}: cannot be written ({exc.strerror}); no record of the fields kept"
            self.manifest = None


def _quantify_source(src: _Source, phases: PhaseSet, grid_spacing: int | None) -> FieldResult | None:
    from napari_metalseg.data.dataset import read_mask

    mask = check_mask(read_mask(src.path), len(phases), str(src.path))
    if not (mask != UNLABELED).any():
        return None
    return quantify_mask(
        mask,
        phases,
        pixel_size_um=src.pixel_size_um,
        grid_spacing=grid_spacing,
        name=src.name,
        magnification=src.magnification,
        sample=src.sample,
        true_fractions=src.true_fractions,
    )


def _collect(source: Any, phases: Any, pixel_size_um: float | None) -> tuple[list[_Source], PhaseSet, str, Path | None]:
    """The masks to quantify, their phases, the source's label and the folder that keeps the record (None: one
    file)."""
    from napari_metalseg.data.dataset import Dataset

    pixel_size_um = _check_pixel_size(pixel_size_um, "pixel size")
    if isinstance(source, Dataset):
        return (*_from_dataset(source, phases, pixel_size_um), Path(source.root))
    path = Path(source)
    if path.is_file():
        root, files = path.parent, [(path.stem, path, "")]
    elif path.is_dir():
        root = path
        files = _mask_files(path / "masks" if (path / "masks").is_dir() else path)
    else:
        raise MetalsegError(f"{path}: no such mask file or folder")
    phase_set = _resolve_phases(phases, root, files)
    meta = _read_meta(root)
    folder = root.resolve().name
    sources = [_source_from_meta(name, p, meta, phase_set, sub or folder, pixel_size_um) for name, p, sub in files]
    return sources, phase_set, str(path), root if path.is_dir() else None


def _from_dataset(ds: Dataset, phases: Any, pixel_size_um: float | None) -> tuple[list[_Source], PhaseSet, str]:
    phase_set = _as_phases(phases) if phases is not None else ds.phases
    items = ds.labelled
    if not items:
        raise MetalsegError(f"{ds.root}: the dataset has no masks")
    folder = Path(ds.root).resolve().name
    sources = []
    for item in items:
        src = _source_from_row(item.name, item.mask_path, item.extra, phase_set, folder, pixel_size_um)
        src.magnification = item.magnification
        src.pixel_size_um = item.pixel_size_um or pixel_size_um
        sources.append(src)
    return sources, phase_set, str(ds.root)


def _mask_files(folder: Path) -> list[tuple[str, Path, str]]:
    """(name, path, sub-folder) of the mask PNGs in ``folder``, or one level down when it has none itself."""

    def pngs(d: Path) -> list[Path]:
        return sorted(p for p in d.glob("*.png") if not p.name.startswith(".") and p.is_file())

    direct = pngs(folder)
    if direct:
        return [(p.stem, p, "") for p in direct]
    files = [
        (f"{sub.name}/{p.stem}", p, sub.name)
        for sub in sorted(folder.iterdir())
        if sub.is_dir() and not sub.name.startswith(".")
        for p in pngs(sub)
    ]
    if not files:
        raise MetalsegError(f"{folder}: no mask PNGs (expected DATASET/masks/<name>.png or a folder of <name>.png)")
    return files


def _resolve_phases(phases: Any, root: Path, files: list[tuple[str, Path, str]]) -> PhaseSet:
    if phases is not None:
        return _as_phases(phases)
    for candidate in (root / "phases.json", files[0][1].parent / "phases.json"):
        if candidate.is_file():
            return PhaseSet.load(candidate)
    raise MetalsegError(
        f"{root / 'phases.json'}: phases.json is missing (put it next to the masks or name a phase set)", value="phases"
    )


def _read_meta(root: Path) -> dict[str, dict[str, str]]:
    from napari_metalseg.data.dataset import read_metadata

    return read_metadata(root)


def _source_from_meta(
    name: str, path: Path, meta: dict[str, dict[str, str]], phases: PhaseSet, folder: str, pixel_size_um: float | None
) -> _Source:
    row = meta.get(name) or meta.get(path.stem) or {}
    src = _source_from_row(name, path, row, phases, folder, pixel_size_um)
    src.magnification = _meta_number(row, "magnification", name)
    src.pixel_size_um = _meta_number(row, "pixel_size_um", name) or pixel_size_um
    return src


def _source_from_row(
    name: str, path: Path | None, row: Mapping[str, str], phases: PhaseSet, folder: str, pixel_size_um: float | None
) -> _Source:
    return _Source(
        name=name,
        path=Path(str(path)),
        pixel_size_um=pixel_size_um,
        sample=(row.get("sample") or "").strip() or folder,
        true_fractions=_meta_truth(row, phases, name),
    )


def _meta_number(row: Mapping[str, str], column: str, name: str) -> float | None:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise MetalsegError(f"metadata.csv: {name}: {column} {text!r} is not a positive number")
    return value


def _meta_truth(row: Mapping[str, str], phases: PhaseSet, name: str) -> dict[str, float] | None:
    texts = {p: (row.get(f"true_fraction_{p}") or "").strip() for p in phases.names}
    if not all(texts.values()):
        return None
    out = {}
    for p, text in texts.items():
        try:
            out[p] = float(text)
        except ValueError:
            out[p] = math.nan
        if not 0.0 <= out[p] <= 1.0:
            raise MetalsegError(f"metadata.csv: {name}: true_fraction_{p} {text!r} is not a fraction in 0..1")
    return out


def _attach_truth(sources: list[_Source], truth: Path, phases: PhaseSet) -> None:
    from napari_metalseg.data.dataset import read_mask

    if not truth.is_dir():
        raise MetalsegError(f"{truth}: truth folder does not exist")
    folder = truth / "masks" if (truth / "masks").is_dir() else truth
    truth_phases = truth / "phases.json"
    if truth_phases.is_file() and PhaseSet.load(truth_phases).names != phases.names:
        raise MetalsegError(
            f"{truth_phases}: phases {PhaseSet.load(truth_phases).names} differ from the "
            f"predicted masks' {phases.names}"
        )
    for src in sources:
        path = folder / f"{src.name}.png"
        if not path.is_file():
            raise MetalsegError(
                f"{path}: no true mask for {src.name} (the truth folder needs one mask per field, same name)",
                value="truth",
            )
        mask = check_mask(read_mask(path), len(phases), str(path))
        counts = phase_pixel_counts(mask, len(phases))
        if counts.sum() == 0:
            raise MetalsegError(f"{path}: the true mask has no labelled pixels")
        src.true_fractions = {p: float(c) / float(counts.sum()) for p, c in zip(phases.names, counts)}
