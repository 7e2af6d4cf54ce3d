"""Model options and their checks, in one place: guidance and fine-tuning modes, positive integer settings.

Every check raises one :class:`~napari_metalseg.errors.MetalsegError` naming the parameter and the value, in words
a GUI user reads as well as a CLI user (never a command-line flag: the CLI may add its own). The checks of what a
model *family* can honour (boxes, guidance per family, checkpoints) are
:func:`~napari_metalseg.models.registry.check_model_options`.

Importing this module is cheap (no torch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

from napari_metalseg.errors import MetalsegError

GUIDANCE_MODES: tuple[str, ...] = ("none", "ratio", "spatial")
"""Phase-fraction guidance: none, MLP (:class:`RatioEncoder`), CoordConv (:class:`SpatialRatioEncoder`)."""

TRAINING_GUIDANCE: tuple[str, ...] = ("none", "ratio", "spatial", "box", "ratio+box", "spatial+box")
"""Guidance in training: a guidance encoder (ratio / spatial), box prompts derived from the ground truth, or both."""

FINETUNE_MODES: tuple[str, ...] = ("lora", "decoder", "full")
"""What is trained: LoRA + decoder + guidance, decoder + guidance, or everything."""


def reads_ratios(model) -> bool:
    """Whether ``model`` was trained with ratio or spatial guidance, so its guidance encoder reads phase fractions."""
    return getattr(model, "guidance", "none") != "none"


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``.

    Parameters
    ----------
    name : str
        The parameter, as the message names it (e.g. ``guidance``).
    value : object
        The given value.
    choices : sequence of str
        The allowed values.

    Raises
    ------
    MetalsegError
        ``"<name> <value!r> is unknown; choose one of <choices>"``.
    """
    if not isinstance(value, str) or value not in choices:
        raise MetalsegError(f"{name} {value!r} is unknown; choose one of {', '.join(choices)}")
    return value


def check_guidance(guidance: object) -> str:
    """Return ``guidance`` if it is a guidance module of :data:`GUIDANCE_MODES` (``none``, ``ratio``, ``spatial``)."""
    return check_choice("guidance", guidance, GUIDANCE_MODES)


def check_training_guidance(guidance: object) -> str:
    """Return ``guidance`` if it is a training guidance of :data:`TRAINING_GUIDANCE` (a module and/or boxes)."""
    return check_choice("guidance", guidance, TRAINING_GUIDANCE)


def check_finetune(finetune: object) -> str:
    """Return ``finetune`` if it is a fine-tuning mode of :data:`FINETUNE_MODES` (``lora``, ``decoder``, ``full``)."""
    return check_choice("finetune", finetune, FINETUNE_MODES)


def check_positive_int(name: str, value: object, maximum: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer from 1 (to ``maximum``).

    Raises
    ------
    MetalsegError
        ``"<name> <value!r>: must be an integer at least 1"`` (or ``1..maximum``).
    """
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1 or (maximum and value > maximum):
        bound = f"1..{maximum}" if maximum else "at least 1"
        raise MetalsegError(f"{name} {value!r}: must be an integer {bound}")
    return int(value)


def check_finite_number(name: str, value: object, unit: str = "") -> float:
    """Return ``value`` as a float if it is a finite number (of either sign).

    Raises
    ------
    MetalsegError
        ``"<name> <value>: must be a finite number[ of <unit>]"``.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise MetalsegError(f"{name} {value}: must be a finite number" + (f" of {unit}" if unit else ""))
    return float(value)


def check_positive_number(name: str, value: object, unit: str = "") -> float:
    """Return ``value`` as a float if it is a finite number above 0.

    Raises
    ------
    MetalsegError
        ``"<name> <value>: must be a positive number[ of <unit>]"``.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < float(value) < float("inf"):
        raise MetalsegError(f"{name} {value}: must be a positive number" + (f" of {unit}" if unit else ""))
    return float(value)
