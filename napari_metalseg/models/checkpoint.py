"""Load pretrained SAM weights (official ``sam_vit_*.pth``, micro-sam exports) into a model of any input size.

Files are read with ``torch.load(..., weights_only=True)`` only (``.safetensors`` with safetensors): a file
holding pickled Python objects is refused, never executed. Accepted layouts:

* the official state dicts (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``);
* dicts wrapping one under ``model_state``, ``model`` or ``state_dict`` (micro-sam, training checkpoints),
  with keys possibly prefixed by ``sam.``, ``module.`` or ``model.``.

Adaptation to the model:

* input size: ``image_encoder.pos_embed`` (1, 64, 64, C) is resized bicubically to (1, S/16, S/16, C), and the
  ``rel_pos_h``/``rel_pos_w`` tables of the global-attention blocks (2*64-1, head_dim) are resized linearly
  along the first axis to (2*S/16-1, head_dim), as SAMed does; windowed blocks keep theirs (same window size);
* number of phases ``K``: the decoder has ``K + 1`` mask tokens, hypernetwork MLPs and IoU outputs, the
  official one 4. What fits is copied, the rest keeps its fresh initialisation and is reported (nothing for
  ``K = 3``).
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.sam import SAM_CONFIGS

WRAPPER_KEYS = ("model_state", "model", "state_dict")
KEY_PREFIXES = ("sam.", "module.", "model.")
SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")

_BLOCK_RE = re.compile(r"^image_encoder\.blocks\.(\d+)\.")
_REL_POS_RE = re.compile(r"^image_encoder\.blocks\.(\d+)\.attn\.rel_pos_[hw]$")
_HYPER_RE = re.compile(r"^mask_decoder\.output_hypernetworks_mlps\.(\d+)\.")
_PER_TOKEN_ROWS = ("mask_decoder.mask_tokens.weight",)


@dataclass
class LoadReport:
    """What :func:`load_sam_checkpoint` did with each tensor.

    Attributes
    ----------
    path
        The checkpoint file.
    kind
        The detected model kind.
    loaded
        Number of model tensors copied unchanged.
    interpolated
        ``(key, description)`` of tensors resized to the model's input size.
    reinitialised
        ``(key, reason)`` of model tensors (or parts) that kept their fresh initialisation.
    ignored
        Checkpoint keys the model has no use for.
    """

    path: str
    kind: str
    loaded: int = 0
    interpolated: list[tuple[str, str]] = field(default_factory=list)
    reinitialised: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Return a short human-readable multi-line summary."""
        lines = [
            f"{self.path}: {self.kind} checkpoint, {self.loaded} tensors loaded, "
            f"{len(self.interpolated)} interpolated, {len(self.reinitialised)} re-initialised, "
            f"{len(self.ignored)} ignored"
        ]
        lines += [f"  interpolated {k}: {d}" for k, d in self.interpolated]
        lines += [f"  re-initialised {k}: {r}" for k, r in self.reinitialised]
        if self.ignored:
            shown = ", ".join(self.ignored[:5]) + (", ..." if len(self.ignored) > 5 else "")
            lines.append(f"  ignored: {shown}")
        return "\n".join(lines)


def _describe(kind: str, dim: int, depth: int) -> str:
    return f"{kind} ({dim}-dim, {depth} blocks)"


def encoder_shape(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """Return ``(embed_dim, depth)`` of the SAM image encoder in a (prefix-free) state dict."""
    weight = state_dict.get("image_encoder.patch_embed.proj.weight")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        if any(k.startswith("image_encoder.") for k in state_dict):
            raise MetalsegError(
                "the image encoder is not a SAM ViT (no image_encoder.patch_embed.proj.weight; "
                "MobileSAM / vit_t and other encoders are not supported)"
            )
        raise MetalsegError("not a Segment Anything checkpoint (no image_encoder weights)")
    blocks = {int(m.group(1)) for k in state_dict if (m := _BLOCK_RE.match(k))}
    return int(weight.shape[0]), len(blocks)


def detect_kind(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Return the model kind of a (prefix-free) SAM state dict from its tensor shapes.

    The kind is identified by the patch-embedding width and the number of encoder blocks.

    Raises
    ------
    MetalsegError
        If the state dict is not a SAM ViT or matches no known kind.
    """
    dim, depth = encoder_shape(state_dict)
    for kind, cfg in SAM_CONFIGS.items():
        if (cfg.encoder_embed_dim, cfg.encoder_depth) == (dim, depth):
            return kind
    known = "; ".join(_describe(k, c.encoder_embed_dim, c.encoder_depth) for k, c in SAM_CONFIGS.items())
    raise MetalsegError(f"unrecognised SAM image encoder ({dim}-dim, {depth} blocks); known: {known}")


def _read(path: Path) -> object:
    if not path.is_file():
        raise MetalsegError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        with warnings.catch_warnings():
            # torch warns about plain (non-torch) pickles before refusing them below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise MetalsegError(f"{path}: cannot read checkpoint: permission denied") from None
    except pickle.UnpicklingError as exc:
        # weights_only refuses everything but tensors and plain containers; it names the refused class.
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise MetalsegError(
                f"{path}: refused: the file contains a pickled Python object ({refused.group(1)}), "
                "not only weights, and loading it could run code"
            ) from None
        raise MetalsegError(
            f"{path}: cannot read checkpoint: not a PyTorch weights file, or corrupt "
            "(the safe weights-only loader rejected it)"
        ) from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
        AttributeError,
        TypeError,
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MetalsegError(f"{path}: cannot read checkpoint: file is truncated or corrupt ({first})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except PermissionError:
        raise MetalsegError(f"{path}: cannot read checkpoint: permission denied") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MetalsegError(f"{path}: cannot read checkpoint: file is truncated or corrupt ({exc})") from None


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"model_state": {...}} or {"state_dict": {"model": {...}}}
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(k, str) and k.startswith(SAM_PARTS) for k in obj):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise MetalsegError(f"{path}: not a model state dict (found {type(obj).__name__})")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise MetalsegError(f"{path}: not a model state dict (key {key!r} is not a name)")
        if isinstance(value, torch.Tensor):
            tensors[_strip_prefixes(key)] = value
    if not tensors:
        raise MetalsegError(f"{path}: not a model state dict (no tensors; keys like {list(obj)[:3]})")
    return tensors


def _strip_prefixes(key: str) -> str:
    while not key.startswith(SAM_PARTS):
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        else:
            return key
    return key


def read_sam_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a SAM checkpoint file safely and return its prefix-free state dict.

    Raises
    ------
    MetalsegError
        Naming the file, if it is missing, truncated or corrupt, holds pickled objects, is not a state dict or
        is not a SAM checkpoint.
    """
    path = Path(path)
    state = _unwrap(_read(path), path)
    if not any(k.startswith("image_encoder.") for k in state):
        examples = ", ".join(list(state)[:3])
        raise MetalsegError(
            f"{path}: not a Segment Anything checkpoint (no image_encoder weights; keys like {examples})"
        )
    return state


def _sam(model: nn.Module) -> nn.Module:
    if hasattr(model, "image_encoder"):
        return model
    if hasattr(model, "sam") and hasattr(model.sam, "image_encoder"):
        return model.sam
    raise TypeError(f"{type(model).__name__} is not a SAM model")


def _resize_pos_embed(t: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    x = t.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=grid, mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).to(t.dtype)


def _resize_rel_pos(t: torch.Tensor, length: int) -> torch.Tensor:
    x = t.float().T[None]  # (1, head_dim, L)
    x = F.interpolate(x, size=length, mode="linear", align_corners=False)
    return x[0].T.contiguous().to(t.dtype)


def load_sam_checkpoint(model: nn.Module, path: str | Path, kind: str) -> LoadReport:
    """Load pretrained SAM weights into ``model``, adapting input size and number of phases.

    Parameters
    ----------
    model
        A ``Sam`` built by :func:`~.sam.build_sam` (or a :class:`~.phase_sam.PhaseSAM`) of kind ``kind``,
        before LoRA is applied (an adapted model also works: its ``base_layer`` weights are filled, LoRA is
        left alone).
    path
        The checkpoint file.
    kind
        The kind requested by the user; the checkpoint must be of this kind.

    Returns
    -------
    LoadReport
        What was loaded, interpolated, re-initialised and ignored.

    Raises
    ------
    MetalsegError
        Naming the file, if it cannot be read safely, is not a SAM checkpoint, or is of another kind.
    """
    path = Path(path)
    ckpt = read_sam_state_dict(path)
    try:
        dim, depth = encoder_shape(ckpt)
        found = detect_kind(ckpt)
    except MetalsegError as exc:
        raise MetalsegError(f"{path}: {exc}") from None
    if found != kind:
        raise MetalsegError(f"{path}: checkpoint is {_describe(found, dim, depth)} but model {kind} was requested")

    sam = _sam(model)
    cfg = SAM_CONFIGS[kind]
    if (
        sam.image_encoder.patch_embed.proj.out_channels != cfg.encoder_embed_dim
        or len(sam.image_encoder.blocks) != cfg.encoder_depth
    ):
        raise ValueError(f"the model passed to load_sam_checkpoint is not a {kind} model")

    report = LoadReport(path=str(path), kind=found)
    current = sam.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    n_tokens = sam.mask_decoder.num_mask_tokens
    for key, target in current.items():
        src_key = key.replace(".base_layer.", ".")
        if ".lora_" in key:
            continue  # adapters are not part of a SAM checkpoint
        if src_key not in ckpt:
            hyper = _HYPER_RE.match(key)
            if hyper:
                reason = f"no pretrained hypernetwork MLP for mask token {hyper.group(1)} (checkpoint has fewer phases)"
            elif key.startswith("image_encoder."):
                raise MetalsegError(f"{path}: checkpoint is incomplete: image encoder tensor {src_key} is missing")
            else:
                reason = "missing from the checkpoint"
            report.reinitialised.append((key, reason))
            continue
        used.add(src_key)
        source = ckpt[src_key]
        if source.shape == target.shape:
            new_state[key] = source.to(target.dtype)
            report.loaded += 1
        elif key == "image_encoder.pos_embed":
            new_state[key] = _resize_pos_embed(source, tuple(target.shape[1:3])).to(target.dtype)
            report.interpolated.append((key, f"{tuple(source.shape)} -> {tuple(target.shape)} (bicubic)"))
        elif (
            (m := _REL_POS_RE.match(key))
            and sam.image_encoder.blocks[int(m.group(1))].window_size == 0
            and source.ndim == 2
            and source.shape[1] == target.shape[1]
        ):
            new_state[key] = _resize_rel_pos(source, target.shape[0]).to(target.dtype)
            report.interpolated.append((key, f"{tuple(source.shape)} -> {tuple(target.shape)} (linear)"))
        elif key.startswith("mask_decoder.") and _rows_fit(key, source, target, n_tokens):
            rows = min(source.shape[0], target.shape[0])
            merged = target.clone()
            merged[:rows] = source[:rows].to(target.dtype)
            new_state[key] = merged
            report.loaded += 1
            if target.shape[0] > rows:
                report.reinitialised.append(
                    (
                        key,
                        f"rows {rows}..{target.shape[0] - 1} have no pretrained values (the checkpoint has "
                        f"{source.shape[0]} mask tokens, the model {target.shape[0]}); "
                        f"rows 0..{rows - 1} loaded",
                    )
                )
        elif key.startswith("image_encoder."):
            raise MetalsegError(
                f"{path}: image encoder tensor {src_key} has shape {tuple(source.shape)}, the "
                f"{kind} model needs {tuple(target.shape)}"
            )
        else:
            report.reinitialised.append(
                (key, f"shape {tuple(source.shape)} in the checkpoint, {tuple(target.shape)} in the model")
            )
    report.ignored = [k for k in ckpt if k not in used]
    sam.load_state_dict(new_state, strict=False)
    return report


def _rows_fit(key: str, source: torch.Tensor, target: torch.Tensor, n_tokens: int) -> bool:
    """Whether ``source`` differs from ``target`` only in the per-mask-token first axis."""
    per_token = key in _PER_TOKEN_ROWS or key.startswith("mask_decoder.iou_prediction_head.layers.")
    return (
        per_token
        and target.shape[0] == n_tokens
        and source.ndim == target.ndim
        and source.shape[1:] == target.shape[1:]
    )
