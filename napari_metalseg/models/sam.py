"""Segment Anything configurations and the builder, on the real ``segment_anything.modeling`` classes.

Kinds ``vit_b``, ``vit_l`` and ``vit_h`` use the official hyper-parameters of
``segment_anything/build_sam.py``; ``tiny`` is the same architecture scaled down for tests, demos and CPU-only
smoke runs (no pretrained weights).

The input size is free (a multiple of 16, at least 64; typical values 256, 512, 1024 and 2048): the image
embedding is ``img_size // 16`` on a side. Pretrained 1024-px weights are adapted to other sizes by
:func:`napari_metalseg.models.checkpoint.load_sam_checkpoint`.

Importing this module is cheap (no torch); torch and segment_anything are imported by :func:`build_sam`.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING

from napari_metalseg.errors import MetalsegError

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

PATCH_SIZE = 16
"""ViT patch size; the image embedding is ``img_size // PATCH_SIZE`` on a side."""

PRETRAINED_IMG_SIZE = 1024
"""Input size of the official SAM checkpoints."""

MIN_IMG_SIZE = 64
TYPICAL_IMG_SIZES = (256, 512, 1024, 2048)


@dataclass(frozen=True)
class SamConfig:
    """Hyper-parameters of one SAM kind (names follow ``segment_anything/build_sam.py``)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    mlp_ratio: float = 4.0

    @property
    def head_dim(self) -> int:
        """Channels per attention head of the image encoder."""
        return self.encoder_embed_dim // self.encoder_num_heads


SAM_CONFIGS: dict[str, SamConfig] = {
    "tiny": SamConfig(
        encoder_embed_dim=96,
        encoder_depth=4,
        encoder_num_heads=3,
        encoder_global_attn_indexes=(1, 3),
        window_size=8,
        prompt_embed_dim=64,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    ),
    "vit_b": SamConfig(
        encoder_embed_dim=768,
        encoder_depth=12,
        encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
    ),
    "vit_l": SamConfig(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_h": SamConfig(
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
}
"""All model kinds, smallest first."""

SAM_KINDS: tuple[str, ...] = tuple(SAM_CONFIGS)


def check_kind(kind: str) -> SamConfig:
    """Return the configuration of ``kind``.

    Raises
    ------
    MetalsegError
        If ``kind`` is not one of :data:`SAM_KINDS`.
    """
    try:
        return SAM_CONFIGS[kind]
    except (KeyError, TypeError):
        raise MetalsegError(f"model {kind!r} is unknown; choose one of {', '.join(SAM_KINDS)}") from None


def check_img_size(img_size: int) -> int:
    """Validate a model input size: a multiple of 16, at least 64.

    Raises
    ------
    MetalsegError
        If the size is not allowed.
    """
    if (
        isinstance(img_size, bool)
        or not isinstance(img_size, Integral)
        or img_size < MIN_IMG_SIZE
        or img_size % PATCH_SIZE
    ):
        typical = ", ".join(str(s) for s in TYPICAL_IMG_SIZES)
        raise MetalsegError(
            f"img_size {img_size!r}: must be a multiple of {PATCH_SIZE} and at least {MIN_IMG_SIZE} "
            f"(typical: {typical})"
        )
    return int(img_size)


def check_num_phases(num_phases: int) -> int:
    """Validate the number of phases ``K`` (at least 1).

    Raises
    ------
    MetalsegError
        If ``num_phases`` is not a positive integer.
    """
    if isinstance(num_phases, bool) or not isinstance(num_phases, int) or num_phases < 1:
        raise MetalsegError(f"number of phases {num_phases!r}: must be a positive integer")
    return num_phases


def build_sam(kind: str, img_size: int = 512, num_phases: int = 3) -> Sam:
    """Build an untrained SAM of the given kind for ``img_size`` inputs and ``num_phases`` mask outputs.

    Parameters
    ----------
    kind
        One of :data:`SAM_KINDS`.
    img_size
        Square input size in pixels (multiple of 16, at least 64).
    num_phases
        Number of phases ``K``; the mask decoder gets ``K`` multimask outputs (``K + 1`` mask tokens).

    Returns
    -------
    segment_anything.modeling.Sam
        The model in training mode, randomly initialised (load weights with ``load_sam_checkpoint``); its
        image-encoder attention runs fused in inference (:mod:`.sam_attention`).
    """
    cfg = check_kind(kind)
    check_img_size(img_size)
    check_num_phases(num_phases)

    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from napari_metalseg.models.sam_attention import use_fused_attention

    grid = img_size // PATCH_SIZE
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.encoder_depth,
            embed_dim=cfg.encoder_embed_dim,
            img_size=img_size,
            mlp_ratio=cfg.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg.encoder_num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=cfg.encoder_global_attn_indexes,
            window_size=cfg.window_size,
            out_chans=cfg.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=num_phases,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_embed_dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=cfg.prompt_embed_dim,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
    )
    use_fused_attention(sam.image_encoder)
    return sam
