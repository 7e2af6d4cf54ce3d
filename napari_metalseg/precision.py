"""Numeric precision: where bfloat16 autocast is used by default (the one place that decides it).

bf16 is used where the hardware runs it natively: on CUDA, and on CPUs with native bf16 instructions
(AVX512-BF16 / AMX), where the vit_b image encoder runs about twice as fast as in fp32 (the compact ``tiny``
encoder neither gains nor loses measurably). Elsewhere bf16 would be emulated and slower, so fp32 is used.

Prediction (:class:`napari_metalseg.predict.Predictor`) runs the image encoder under bf16 autocast by default where
:func:`native_bf16` says so (:func:`prediction_bf16`); trained SAM models give the same phase for at least 99 % of the
pixels in fp32 and bf16 (``tests/test_precision.py``). Only the encoder (``model.embed``) runs under autocast: the
CNN families, whose ``embed`` is the identity, and the classical classifier predict in fp32 whatever this says.
Training decides with :func:`napari_metalseg.training.use_bf16`, which asks :func:`native_bf16` too.

Opting out: ``--fp32`` on ``metalseg predict`` / ``evaluate`` / ``demo``, ``Predictor(..., bf16=False)`` in Python,
or the environment variable ``METALSEG_FP32=1``, which makes every prediction whose precision is not given
explicitly run in fp32 (the CLI, the napari docks, validation in training).

Importing this module imports no torch.
"""

from __future__ import annotations

import os

FP32_ENV = "METALSEG_FP32"
"""Environment variable: set to ``1`` (any value but empty or ``0``), predictions default to fp32."""


def native_bf16(device: str) -> bool:
    """Whether ``device`` runs bfloat16 natively: CUDA always; a CPU with AVX512-BF16 / AMX (oneDNN's check).

    Parameters
    ----------
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; any other device gives False.

    Returns
    -------
    bool
        False where the check cannot be made (the CPU check is a private torch function: absent or failing
        means no).
    """
    if device.startswith("cuda"):
        return True
    if device != "cpu":
        return False
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError, ImportError):
        return False


def fp32_forced() -> bool:
    """Whether the environment variable ``METALSEG_FP32`` asks for fp32 predictions."""
    return os.environ.get(FP32_ENV, "").strip() not in ("", "0")


def prediction_bf16(device: str, *, fp32: bool = False) -> bool:
    """Whether prediction on ``device`` runs the image encoder under bf16 autocast by default.

    Parameters
    ----------
    device : str
        ``"cpu"`` or ``"cuda"`` (as resolved by :func:`napari_metalseg.predict.resolve_device`).
    fp32 : bool
        The user's opt-out (``--fp32``).

    Returns
    -------
    bool
        True on CUDA and on CPUs with native bf16, unless ``fp32`` or ``METALSEG_FP32=1``.
    """
    return not fp32 and not fp32_forced() and native_bf16(device)


def precision_label(kind: str, bf16: bool) -> str:
    """How a predictor with ``bf16`` runs a model ``kind``, for display: ``"bf16 autocast"`` or ``"fp32"``.

    The networks (SAM's encoder and decoder, the CNNs) run under autocast; the classical classifier alone is numpy
    and runs in fp32 whatever ``bf16`` says.
    """
    return "bf16 autocast" if bf16 and kind != "classical" else "fp32"
