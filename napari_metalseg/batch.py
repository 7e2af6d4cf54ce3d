"""Batch prediction of a folder of micrographs that survives interruption.

Each micrograph's mask is written atomically into the output dataset folder, then one line is appended (and
flushed to disk) to the folder's manifest, ``manifest.jsonl``: the micrograph's name, the sha256 of its input file,
the prediction settings and its phase fractions. The manifest line is the commit point. A rerun skips every
micrograph whose line matches its input file and settings and whose mask exists, so a kill at any moment loses at
most the micrograph in flight (its mask, if written, is written again). A micrograph that cannot be read or
predicted is reported and the batch goes on; the failures are summed up at the end.

Several processes share a folder by rank (``RANK`` / ``WORLD_SIZE`` of ``torchrun``,
:func:`napari_metalseg.distributed.environment_rank`, or ``shard=(rank, count)``):
process ``r`` takes every ``count``-th micrograph from the ``r``-th and appends to its own manifest file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from napari_metalseg.errors import MetalsegError
from napari_metalseg.progress import Job, ProgressEvent

MANIFEST = "manifest.jsonl"
"""The manifest of a single process; rank ``r`` of ``n`` writes ``manifest-r-of-n.jsonl``."""


@dataclass
class BatchResult:
    """What a batch did: micrographs ``written`` now, ``skipped`` (done before), ``failed`` (name -> reason)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    fractions: dict[str, list[float]] = field(default_factory=dict)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Manifest:
    """The append-only manifests of an output folder (one file per process): one JSON line per item done.

    Parameters
    ----------
    root : path
        The output folder.
    shard : (int, int)
        This process's rank and the number of processes: which file it appends to.
    stem : str
        The files' name: ``<stem>.jsonl`` for a single process, ``<stem>-r-of-n.jsonl`` for rank ``r`` of ``n``
        (``manifest`` for predicted masks, ``quantify`` for measured fields).
    """

    def __init__(self, root: str | Path, shard: tuple[int, int] = (0, 1), *, stem: str = "manifest") -> None:
        self.root = Path(root)
        self.stem = stem
        rank, count = shard
        self.path = self.root / (f"{stem}.jsonl" if count == 1 else f"{stem}-{rank}-of-{count}.jsonl")

    def entries(self) -> dict[str, dict]:
        """Every recorded item, by name (the last line wins), from all processes' files; a line cut by a kill (the
        last of a file) is ignored."""
        entries: dict[str, dict] = {}
        for path in sorted(self.root.glob(f"{self.stem}.jsonl")) + sorted(self.root.glob(f"{self.stem}-*-of-*.jsonl")):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    entries[entry["name"]] = entry
        return entries

    def record(self, entry: dict) -> None:
        """Append one line and force it to disk (the commit point of a micrograph)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell():  # a line cut by a kill stays on its own line, unreadable, and never spoils this one
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write((json.dumps(entry, sort_keys=True) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())


def predict_folder_job(
    predictor,
    files: Sequence[str | Path],
    out: str | Path,
    *,
    ratios: Sequence[float] | None = None,
    box: Sequence[float] | None = None,
    tta: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> Job[BatchResult]:
    """Job: predict ``files`` into the dataset folder ``out``, skipping what an earlier run did (see the module).

    Yields
    ------
    ProgressEvent
        ``"predict"`` per micrograph of this shard (done, skipped or failed), its name as the message.

    Returns
    -------
    BatchResult

    Raises
    ------
    MetalsegError
        Only for the batch as a whole (options the model refuses, an output folder with other phases, duplicate
        micrograph names); a micrograph that fails is recorded in :attr:`BatchResult.failed`.
    """
    from napari_metalseg.data.dataset import new_dataset, write_item
    from napari_metalseg.io import read_micrograph

    files = [Path(f) for f in files]
    names = [f.stem for f in files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MetalsegError(f"micrographs with the same name would overwrite each other's mask: {duplicates}")
    predictor.check_options(ratios=ratios, box=box, tta=tta)  # wrong for every micrograph: refuse the batch
    rank, count = shard
    mine = files[rank::count]
    new_dataset(out, predictor.phases)
    _remove_partial_files(Path(out), [f.stem for f in mine])
    manifest = Manifest(out, shard)
    done = manifest.entries()
    settings = {
        "model": predictor.model.signature("model"),
        "ratios": None if ratios is None else [float(r) for r in ratios],
        "box": None if box is None else [float(v) for v in box],
        "tta": bool(tta),
        "precision": "bf16" if predictor.bf16 else "fp32",
    }
    result = BatchResult()
    for i, path in enumerate(mine, start=1):
        name = path.stem
        try:
            digest = file_digest(path)
            entry = done.get(name)
            mask = Path(out) / "masks" / f"{name}.png"
            if entry and entry.get("input_sha256") == digest and entry.get("settings") == settings and mask.is_file():
                result.skipped.append(name)
                result.fractions[name] = entry.get("fractions")
            else:
                micrograph = read_micrograph(path)
                phase_map = predictor.predict(
                    micrograph.image, ratios=ratios, box=box, tta=tta, pixel_size_um=micrograph.pixel_size_um
                )
                write_item(out, name, micrograph.image, phase_map.labels)
                fractions = [round(float(f), 6) for f in phase_map.fractions()]
                manifest.record(
                    {
                        "name": name,
                        "input": str(path),
                        "input_sha256": digest,
                        "settings": settings,
                        "fractions": fractions,
                    }
                )
                result.written.append(name)
                result.fractions[name] = fractions
        except (MetalsegError, OSError, ValueError) as exc:
            result.failed[path.name] = str(exc) or type(exc).__name__
        yield ProgressEvent("predict", i, len(mine), message=path.name)
    return result


def _remove_partial_files(out: Path, names: list[str]) -> None:
    """Delete the temporary files of an atomic write that a kill cut short (``.<name>.<suffix>.<random>``), only
    for this shard's micrographs: another process may be writing its own."""
    mine = set(names)
    for folder in (out / "images", out / "masks"):
        for path in folder.glob(".*"):
            parts = path.name[1:].split(".")
            if mine & {".".join(parts[:i]) for i in range(1, len(parts))} and path.is_file():
                path.unlink(missing_ok=True)
