"""Enhanced U-Net3+: full-scale skip connections, deep supervision and an optional classification-guided module.

After Huang et al. (2020), "UNet 3+: A full-scale connected UNet for medical image segmentation". The encoder
has ``depth + 1`` levels (:class:`~.cnn.Encoder`); the deepest encoder level is also the deepest decoder
stage. Every other decoder stage ``i`` aggregates all scales:

- the shallower encoder levels ``j < i``, max-pooled by ``2**(i - j)``;
- the same-scale encoder level ``i``;
- every deeper decoder stage ``j > i`` (the deepest is the bottleneck), upsampled bilinearly by ``2**(j - i)``;

each through a 3x3 conv-BN-ReLU to ``cat_channels``; the ``depth + 1`` maps are concatenated
(``(depth + 1) * cat_channels`` channels) and fused by a 3x3 conv-BN-ReLU. Deeper inputs are projected at their
own scale and then upsampled (:class:`~.cnn.UpProject`), a cheaper order than the paper's.

Deep supervision: a 3x3 logit head on every decoder stage (and the bottleneck); the main output is the
full-resolution stage, the side outputs stay at their own resolution (the trainer upsamples them).

Classification-guided module (CGM, optional): dropout, a 1x1 convolution and global max-pooling on the
bottleneck predict whether each phase is present (``p_k`` = sigmoid). The phase probabilities of every output
are multiplied by ``p_k`` (renormalised by the softmax): ``logit_k + log(p_k)``. The module starts near "every
phase present" and learns end-to-end from the segmentation loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from napari_metalseg.models.cnn import (
    CNNBackbone,
    ConvBNReLU,
    PhaseCNN,
    UpProject,
    build_phase_cnn,
    pool_down,
    side_heads,
)
from napari_metalseg.models.options import check_positive_int

CGM_PRESENT_BIAS = 3.0
"""Initial bias of the CGM presence logits: sigmoid(3) = 0.95, so a fresh CGM barely changes the outputs."""

CGM_MIN_PRESENCE = 1e-4
"""Floor of the presence probability before the logarithm (a phase is never suppressed to -inf)."""


class FullScaleStage(nn.Module):
    """One U-Net3+ decoder stage at level ``level``: every scale to ``cat_channels``, concatenated and fused.

    Parameters
    ----------
    level
        Level of the stage (0 = full resolution).
    source_channels
        Channels of the ``depth + 1`` inputs, level 0 first: encoder levels ``<= level``, decoder stages
        (and the bottleneck last) ``> level``.
    cat_channels
        Channels of each projected input.
    """

    def __init__(self, *, level: int, source_channels: list[int], cat_channels: int) -> None:
        super().__init__()
        self.level = level
        self.project = nn.ModuleList(
            ConvBNReLU(c, cat_channels) if j <= level else UpProject(c, cat_channels)
            for j, c in enumerate(source_channels)
        )
        fused = cat_channels * len(source_channels)
        self.fuse = ConvBNReLU(fused, fused)

    def forward(self, sources: list[torch.Tensor]) -> torch.Tensor:
        """Fuse ``sources`` (one map per level, level 0 first) at this stage's scale."""
        size = tuple(sources[self.level].shape[-2:])
        parts = [
            proj(pool_down(x, self.level - j)) if j <= self.level else proj(x, size)
            for j, (proj, x) in enumerate(zip(self.project, sources, strict=True))
        ]
        return self.fuse(torch.cat(parts, dim=1))


class ClassificationGuide(nn.Module):
    """CGM: per-phase presence probabilities (B, K) from the bottleneck features (B, C, h, w).

    Parameters
    ----------
    in_channels
        Bottleneck channels ``C``.
    num_phases
        Number of phases ``K``.
    dropout
        Dropout rate before the 1x1 convolution.
    """

    def __init__(self, in_channels: int, num_phases: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classify = nn.Conv2d(in_channels, num_phases, kernel_size=1)
        nn.init.constant_(self.classify.bias, CGM_PRESENT_BIAS)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the presence probabilities (B, K) in (0, 1)."""
        logits = self.classify(self.dropout(features)).amax(dim=(2, 3))
        return torch.sigmoid(logits)

    @staticmethod
    def gate(logits: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        """Multiply the softmax probabilities of ``logits`` (B, K, h, w) by ``presence`` (B, K), in logit space."""
        return logits + torch.log(presence.clamp_min(CGM_MIN_PRESENCE))[:, :, None, None]


class UNet3Plus(CNNBackbone):
    """U-Net3+ backbone: (B, in_channels, H, W) -> list of logits ``[main (B, K, H, W), side outputs...]``.

    Parameters
    ----------
    num_phases
        Number of phases ``K``.
    width
        Channels of the first encoder level (level ``i`` has ``width * 2**i``).
    depth
        Number of 2x2 poolings (``depth + 1`` levels); inputs are multiples of ``2**depth``.
    cat_channels
        Channels of each projected scale in a decoder stage (default ``width // 2``, at least 1); a decoder
        stage has ``(depth + 1) * cat_channels`` channels.
    deep_supervision
        Build side heads on the deeper decoder stages and the bottleneck (returned after the main output,
        from the next-shallowest stage to the bottleneck).
    cgm
        Add the classification-guided module.
    in_channels
        Input channels (1 for grey micrographs).
    """

    kind = "unet3plus"

    def __init__(
        self,
        *,
        num_phases: int,
        width: int = 8,
        depth: int = 4,
        cat_channels: int | None = None,
        deep_supervision: bool = True,
        cgm: bool = False,
        in_channels: int = 1,
    ) -> None:
        super().__init__(
            num_phases=num_phases,
            width=width,
            depth=depth,
            deep_supervision=deep_supervision,
            in_channels=in_channels,
        )
        self.cat_channels = cat_channels or max(width // 2, 1)
        self.cgm = cgm
        decoder_channels = self.cat_channels * (depth + 1)
        self.stages = nn.ModuleList()  # stages[i] is the decoder stage at level i (0 .. depth - 1)
        for level in range(depth):
            sources = self.widths[: level + 1] + [decoder_channels] * (depth - 1 - level) + [self.widths[-1]]
            self.stages.append(FullScaleStage(level=level, source_channels=sources, cat_channels=self.cat_channels))
        head_channels = [decoder_channels] * depth + [self.widths[-1]]
        self.heads = side_heads(head_channels if deep_supervision else head_channels[:1], num_phases, 3)
        self.guide = ClassificationGuide(self.widths[-1], num_phases) if cgm else None

    @property
    def config(self) -> dict[str, Any]:
        """Family-specific build arguments."""
        return {"deep_supervision": self.deep_supervision, "cgm": self.cgm, "cat_channels": self.cat_channels}

    def decode(self, features: list[torch.Tensor], aux: bool = False) -> list[torch.Tensor]:
        """Full-scale decoding of the encoder ``features`` (shallowest first) into ``[main, side...]`` logits."""
        stages: list[torch.Tensor | None] = [None] * self.depth + [features[-1]]
        for level in reversed(range(self.depth)):
            sources = features[: level + 1] + stages[level + 1 :]
            stages[level] = self.stages[level](sources)
        count = len(self.heads) if aux else 1
        outputs = [head(x) for head, x in zip(self.heads[:count], stages[:count], strict=True)]
        if self.guide is not None:
            presence = self.guide(features[-1])
            outputs = [self.guide.gate(logits, presence) for logits in outputs]
        return outputs


def build_unet3plus(
    *,
    num_phases: int,
    img_size: int = 256,
    width: int = 8,
    depth: int = 4,
    guidance: str = "none",
    deep_supervision: bool = True,
    cgm: bool = False,
    cat_channels: int | None = None,
    seed: int = 0,
) -> PhaseCNN:
    """Build an Enhanced U-Net3+ phase segmenter.

    Parameters
    ----------
    num_phases
        Number of phases ``K``.
    img_size
        Square training crop size (a multiple of ``2**depth``).
    width
        Channels of the first encoder level (level ``i`` has ``width * 2**i``).
    depth
        Number of 2x2 poolings (the encoder has ``depth + 1`` levels, 1..6).
    guidance
        ``none``, ``ratio`` or ``spatial`` (phase-fraction guidance at the bottleneck).
    deep_supervision
        Side outputs on every decoder stage in training mode.
    cgm
        Add the classification-guided module (phase presence gating of every output).
    cat_channels
        Channels of each projected scale in a decoder stage (default ``width // 2``, at least 1). The paper's
        64 (= its ``width``) makes the full-resolution fusion the dominant cost; half the width keeps a
        default training step on two CPU cores near 0.4 s.
    seed
        Seed of the random initialisation.

    Returns
    -------
    PhaseCNN
        ``kind == "unet3plus"``, in training mode on the CPU.
    """
    if cat_channels is not None:
        cat_channels = check_positive_int("cat_channels", cat_channels)
    return build_phase_cnn(
        lambda: UNet3Plus(
            num_phases=num_phases,
            width=width,
            depth=depth,
            cat_channels=cat_channels,
            deep_supervision=deep_supervision,
            cgm=cgm,
        ),
        num_phases=num_phases,
        img_size=img_size,
        width=width,
        depth=depth,
        guidance=guidance,
        seed=seed,
    )
