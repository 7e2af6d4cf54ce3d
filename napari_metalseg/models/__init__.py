"""The model layer: SAM builders, checkpoint loading, LoRA, phase-fraction guidance and :class:`PhaseSAM`.

Importing this package is cheap: torch, segment_anything and peft are imported when a name below that needs
them is first used (module ``__getattr__``), so the CLI and the napari plugin can list kinds and modes without
torch.

Modules: :mod:`.options` (guidance and fine-tuning modes and the checks of every model option), :mod:`.registry`
(model names, families, what each can do), :mod:`.spec` (:class:`~.spec.ModelSpec`, the one architecture
description), :mod:`.sam` (configs, builder), :mod:`.checkpoint` (pretrained weights), :mod:`.lora` (adapters,
fine-tuning modes, trainable state), :mod:`.guidance` (phase-fraction guidance), :mod:`.phase_sam` (the
model), :mod:`.cnn` (the CNN wrapper), :mod:`.triton_guard` (keeps ``import triton`` from crashing napari).

The lazy loader below is one of the two entry points of the triton guard (the other is importing
:mod:`napari_metalseg._widgets`): it applies :func:`.triton_guard.guard_triton` before it imports a torch module, so
``from napari_metalseg.models import build_phase_sam`` is safe in a process that already shows a napari viewer.
Importing the package itself leaves ``sys.modules`` alone.
"""

from __future__ import annotations

import importlib
from typing import Any

from napari_metalseg.models.options import FINETUNE_MODES, GUIDANCE_MODES, TRAINING_GUIDANCE
from napari_metalseg.models.sam import SAM_CONFIGS, SAM_KINDS, TYPICAL_IMG_SIZES, SamConfig, check_img_size
from napari_metalseg.models.triton_guard import guard_triton

_LAZY = {
    "build_sam": "sam",
    "LoadReport": "checkpoint",
    "detect_kind": "checkpoint",
    "load_sam_checkpoint": "checkpoint",
    "read_sam_state_dict": "checkpoint",
    "apply_lora": "lora",
    "set_finetune_mode": "lora",
    "trainable_state_dict": "lora",
    "load_trainable_state_dict": "lora",
    "merge_lora": "lora",
    "count_parameters": "lora",
    "RatioEncoder": "guidance",
    "SpatialRatioEncoder": "guidance",
    "PhaseSAM": "phase_sam",
    "build_phase_sam": "phase_sam",
}

__all__ = [
    "FINETUNE_MODES",
    "GUIDANCE_MODES",
    "SAM_CONFIGS",
    "SAM_KINDS",
    "TRAINING_GUIDANCE",
    "TYPICAL_IMG_SIZES",
    "SamConfig",
    "check_img_size",
    "guard_triton",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        guard_triton()  # before the torch module is imported (see triton_guard)
        module = importlib.import_module(f"napari_metalseg.models.{_LAZY[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
