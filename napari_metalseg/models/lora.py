"""LoRA adapters (HF peft) for the SAM image encoder, fine-tuning modes and the trainable state.

Parameter groups, decided from the parameter name (so they work on a :class:`~.phase_sam.PhaseSAM` and on a
bare ``Sam``):

* ``lora``: the LoRA matrices (``...lora_A...``, ``...lora_B...``) injected into the image encoder;
* ``decoder``: the mask decoder (``mask_decoder.*``);
* ``guidance``: the phase-fraction guidance encoder (``guidance_encoder.*``);
* ``base``: everything else (image encoder, prompt encoder).

Fine-tuning modes (:data:`napari_metalseg.models.options.FINETUNE_MODES`):

* ``lora``: train LoRA + decoder + guidance; the base encoder is frozen (needs :func:`apply_lora` first);
* ``decoder``: train decoder + guidance; the encoder (and any LoRA) is frozen;
* ``full``: train everything.

The *trainable state* of a model is the state of the groups its mode trains; with a pretrained base checkpoint
it is all that has to be saved (a few MB instead of hundreds).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.options import check_finetune, check_positive_int

ADAPTER_NAME = "default"
ATTENTION_TARGETS = ("qkv", "proj")
MLP_TARGETS = ("lin1", "lin2")

_MODE_GROUPS = {
    "lora": frozenset({"lora", "decoder", "guidance"}),
    "decoder": frozenset({"decoder", "guidance"}),
    "full": frozenset({"lora", "decoder", "guidance", "base"}),
}


def parameter_group(name: str) -> str:
    """Return the group (``lora``, ``decoder``, ``guidance`` or ``base``) of a parameter or state key."""
    parts = name.split(".")
    if any(p.startswith("lora_") for p in parts):
        return "lora"
    if "mask_decoder" in parts:
        return "decoder"
    if parts[0] == "guidance_encoder":
        return "guidance"
    return "base"


def _image_encoder(model: nn.Module) -> nn.Module:
    if hasattr(model, "image_encoder"):
        return model.image_encoder
    if hasattr(model, "sam") and hasattr(model.sam, "image_encoder"):
        return model.sam.image_encoder
    raise TypeError(f"{type(model).__name__} has no SAM image encoder")


def has_lora(model: nn.Module) -> bool:
    """Return whether LoRA adapters were injected into ``model``."""
    return any(parameter_group(n) == "lora" for n, _ in model.named_parameters())


def lora_target_pattern(targets: Iterable[str] = ("qkv",), include_mlp: bool = False) -> str:
    """Return the peft ``target_modules`` regex (full match on module names inside the image encoder)."""
    targets = tuple(targets)
    unknown = [t for t in targets if t not in ATTENTION_TARGETS]
    if unknown or not targets:
        raise MetalsegError(f"LoRA targets {list(targets)!r}: choose from {', '.join(ATTENTION_TARGETS)}")
    alternatives = [f"attn\\.{t}" for t in targets]
    if include_mlp:
        alternatives += [f"mlp\\.{t}" for t in MLP_TARGETS]
    return rf"blocks\.\d+\.(?:{'|'.join(alternatives)})"


def apply_lora(
    sam: nn.Module,
    rank: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: Iterable[str] = ("qkv",),
    include_mlp: bool = False,
) -> nn.Module:
    """Inject LoRA adapters into the attention layers of the SAM image encoder, in place.

    Parameters
    ----------
    sam
        A ``Sam`` or a :class:`~.phase_sam.PhaseSAM`.
    rank
        LoRA rank ``r``.
    alpha
        LoRA scaling numerator (``scale = alpha / rank``); default ``rank`` (scale 1).
    dropout
        Dropout on the LoRA input during training.
    targets
        Attention linears to adapt in every block: ``qkv`` and/or ``proj``.
    include_mlp
        Also adapt the MLP linears ``lin1`` and ``lin2`` of every block.

    Returns
    -------
    torch.nn.Module
        ``sam`` itself. ``B`` matrices start at zero, so the adapted model computes the same as before.
        Call :func:`set_finetune_mode` afterwards to choose what is trained.
    """
    rank = check_positive_int("lora_rank", rank)
    if alpha is not None and not alpha > 0:
        raise MetalsegError(f"lora_alpha {alpha!r}: must be positive")
    if not 0.0 <= dropout < 1.0:
        raise MetalsegError(f"lora_dropout {dropout!r}: must be in [0, 1)")
    if has_lora(sam):
        raise ValueError("LoRA adapters are already applied to this model")
    encoder = _image_encoder(sam)
    pattern = lora_target_pattern(targets, include_mlp)

    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank,
        lora_alpha=float(alpha if alpha is not None else rank),
        lora_dropout=float(dropout),
        target_modules=pattern,
        bias="none",
    )
    inject_adapter_in_model(config, encoder, adapter_name=ADAPTER_NAME)
    return sam


def set_finetune_mode(model: nn.Module, mode: str) -> nn.Module:
    """Set ``requires_grad`` for a fine-tuning mode and remember the mode on the model.

    Parameters
    ----------
    model
        A :class:`~.phase_sam.PhaseSAM` (or a bare ``Sam``).
    mode
        ``lora`` (LoRA + decoder + guidance), ``decoder`` (decoder + guidance) or ``full`` (everything).

    Returns
    -------
    torch.nn.Module
        ``model``, with ``model.finetune_mode`` set.
    """
    check_finetune(mode)
    if mode == "lora" and not has_lora(model):
        raise ValueError("finetune mode 'lora' needs LoRA adapters: call apply_lora first")
    groups = _MODE_GROUPS[mode]
    for name, param in model.named_parameters():
        param.requires_grad_(parameter_group(name) in groups)
    model.finetune_mode = mode
    return model


def _trainable_keys(model: nn.Module) -> list[str]:
    own = getattr(model, "trainable_state_keys", None)
    if own is not None:  # families that define their own trained state (the CNNs: every weight and BN statistic)
        return list(own())
    mode = getattr(model, "finetune_mode", None)
    if mode is None:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        return [k for k in model.state_dict() if k in trainable]
    groups = _MODE_GROUPS[mode]
    return [k for k in model.state_dict() if parameter_group(k) in groups]


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the state trained in the model's fine-tuning mode (LoRA, decoder, guidance; never a frozen
    base).

    The selection follows ``model.finetune_mode`` (set by :func:`set_finetune_mode`), so it does not change
    when the model is frozen for inference; without a recorded mode the parameters with ``requires_grad`` are
    taken. The tensors share memory with the model (clone them to keep a snapshot).
    """
    state = model.state_dict()
    return {k: state[k] for k in _trainable_keys(model)}


def load_trainable_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | None = None
) -> nn.Module:
    """Load a trainable state saved by :func:`trainable_state_dict`, strictly.

    Parameters
    ----------
    model
        A model built with the same kind, phases, guidance and fine-tuning settings as the saved one.
    state_dict
        The saved tensors.
    source
        File name for error messages.

    Raises
    ------
    MetalsegError
        If a trainable tensor is missing, an unknown tensor is present, or a shape differs.
    """
    where = f"{source}: " if source else ""
    expected = _trainable_keys(model)
    current = model.state_dict()
    hint = "was it trained with another model, guidance, finetune mode or LoRA settings, or another number of phases?"
    for key in expected:
        if key in state_dict and tuple(state_dict[key].shape) != tuple(current[key].shape):
            if key.endswith("mask_decoder.mask_tokens.weight"):
                raise MetalsegError(
                    f"{where}trained weights are for {state_dict[key].shape[0] - 1} phases, the "
                    f"model has {current[key].shape[0] - 1}"
                )
            raise MetalsegError(
                f"{where}tensor {key} has shape {tuple(state_dict[key].shape)} but the model "
                f"needs {tuple(current[key].shape)}; {hint}"
            )
    missing = [k for k in expected if k not in state_dict]
    expected_set = set(expected)
    unexpected = [k for k in state_dict if k not in expected_set]
    if missing:
        raise MetalsegError(
            f"{where}trained weights lack {len(missing)} tensor(s) the model needs (e.g. {missing[0]}); {hint}"
        )
    if unexpected:
        raise MetalsegError(
            f"{where}trained weights hold {len(unexpected)} tensor(s) the model does not have "
            f"(e.g. {unexpected[0]}); {hint}"
        )
    result = model.load_state_dict(dict(state_dict), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return model


def _lora_layers(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "get_delta_weight"):
            yield name, module


@torch.no_grad()
def merge_lora(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return a plain state dict with the LoRA updates merged into the base weights (for ``--export-full``).

    The model itself is not changed. The result has the keys of the same model built without LoRA, so it loads
    strictly into e.g. ``build_phase_sam(..., finetune="full")`` and, through the ``sam.`` prefix, into
    :func:`~.checkpoint.load_sam_checkpoint`. A model without LoRA gives a copy of its state.
    """
    merged: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if parameter_group(key) == "lora":
            continue
        merged[key.replace(".base_layer.", ".")] = value.detach().clone()
    for name, layer in _lora_layers(model):
        if getattr(layer, "merged", False):
            continue  # base weight already holds the update
        weight = merged[f"{name}.weight"]
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                weight += layer.get_delta_weight(adapter).to(weight.dtype)
    return merged


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(total, trainable)`` parameter counts."""
    total = trainable = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return total, trainable


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[None]:
    """Temporarily switch LoRA off, so the model computes what its frozen base computes (no-op without LoRA)."""
    layers = [layer for _, layer in _lora_layers(model)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
