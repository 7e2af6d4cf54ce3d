"""napari writer: a phase Labels layer -> a metalseg mask PNG and its ``phases.json``.

The mask is ``uint8`` (phase index ``0..K-1``, 255 unlabeled; :func:`~napari_metalseg.phases.labels_to_mask`).
The phases come from the layer's ``metadata["metalseg_phases"]``; a layer without them (painted by hand in a new
Labels layer) gets the default steel phases, or ``phase 1 .. phase N`` when it uses more labels than those.
``phases.json`` is written beside the mask, except inside a dataset's ``masks/`` folder, where the dataset's own
``phases.json`` is used and must name the same phases. Both files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import PhaseSet, labels_to_mask


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer hook for Labels layers.

    Parameters
    ----------
    path : str
        Target ``.png`` file (the suffix is added when missing).
    data : array-like
        The 2-D labels (``k + 1`` = phase ``k``, 0 = unlabeled).
    meta : dict
        The layer attributes (``metadata`` holds the phase set).

    Returns
    -------
    list of str
        The written mask path.
    """
    from napari_metalseg.data.dataset import write_mask

    target = Path(path)
    if target.suffix.lower() != ".png":
        target = target.with_name(target.name + ".png") if not target.suffix else target.with_suffix(".png")
    labels = np.asarray(data)
    if labels.ndim != 2:
        raise MetalsegError(f"{target}: a metalseg mask is 2-D; the labels layer has shape {labels.shape}")
    phases = _phases_of(meta, labels)
    top = int(labels.max(initial=0))
    if top > len(phases):
        raise MetalsegError(
            f"{target}: the layer holds label {top} but only {len(phases)} phases "
            f"({', '.join(phases.names)}); labels 1..{len(phases)} are phases, 0 is unlabeled"
        )
    phases_file = _phases_file(target, phases)
    mask = labels_to_mask(labels, len(phases))
    if phases_file is not None:
        phases.save(phases_file)
    write_mask(target, mask)
    return [str(target)]


def _phases_of(meta: dict, labels: np.ndarray) -> PhaseSet:
    from napari_metalseg._widgets.layers import PHASES_KEY
    from napari_metalseg.data.synth import DEFAULT_PHASES

    stored = (meta.get("metadata") or {}).get(PHASES_KEY)
    if stored:
        return PhaseSet.from_json(stored, source=f"layer {meta.get('name', '')!r} phases")
    top = int(labels.max(initial=0))
    if top <= len(DEFAULT_PHASES):
        return DEFAULT_PHASES
    return PhaseSet.from_names([f"phase {k + 1}" for k in range(top)])


def _phases_file(target: Path, phases: PhaseSet) -> Path | None:
    """Where ``phases.json`` goes (None: the dataset's existing one already matches)."""
    dataset_file = target.parent.parent / "phases.json"
    if target.parent.name == "masks" and dataset_file.is_file():
        existing = PhaseSet.load(dataset_file)
        if existing.names != phases.names:
            raise MetalsegError(
                f"{dataset_file}: the dataset's phases {existing.names} differ from the layer's "
                f"{phases.names}; save the mask elsewhere or rename the phases"
            )
        return None
    beside = target.parent / "phases.json"
    if beside.is_file():
        existing = PhaseSet.load(beside)
        if existing.names != phases.names:
            raise MetalsegError(
                f"{beside}: holds phases {existing.names}, the layer has {phases.names}; "
                "save the mask into another folder"
            )
    return beside
