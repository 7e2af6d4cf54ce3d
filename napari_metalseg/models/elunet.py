"""Enhanced ELU-Net: an efficient, lightweight U-Net with deep skip connections.

After Deng et al. (2022), "ELU-Net: An efficient and lightweight U-Net for medical image segmentation". The
encoder has ``depth + 1`` levels (:class:`~.cnn.Encoder`, few channels: ``width * 2**level``). The decoder
stage at level ``i`` concatenates

- the previous (deeper) decoder stage, projected to the stage's channels and upsampled bilinearly by 2
  (:class:`~.cnn.UpProject`; the deepest input is the bottleneck);
- the same-scale encoder level ``i``;
- every shallower encoder level ``j < i``, max-pooled by ``2**(i - j)`` (the deep skip connections, which
  bring the fine detail of all larger-scale encoder maps to the coarse stages);

and fuses them with a :class:`~.cnn.DoubleConv` to ``width * 2**i`` channels. A 1x1 head on the full-resolution
stage gives the logits; with deep supervision, 1x1 side heads on the deeper decoder stages give auxiliary
logits at their own resolution.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_metalseg.models.cnn import (
    CNNBackbone,
    DoubleConv,
    PhaseCNN,
    UpProject,
    build_phase_cnn,
    pool_down,
    side_heads,
)


class DeepSkipStage(nn.Module):
    """One ELU-Net decoder stage at level ``level``: upsampled deeper stage, same-scale and pooled shallower
    encoder features, concatenated and fused.

    Parameters
    ----------
    level
        Level of the stage (0 = full resolution).
    encoder_channels
        Channels of the encoder levels ``0 .. level``.
    deeper_channels
        Channels of the deeper decoder stage (or the bottleneck).
    """

    def __init__(self, *, level: int, encoder_channels: list[int], deeper_channels: int) -> None:
        super().__init__()
        self.level = level
        out_channels = encoder_channels[level]
        self.up = UpProject(deeper_channels, out_channels)
        self.fuse = DoubleConv(out_channels + sum(encoder_channels[: level + 1]), out_channels)

    def forward(self, deeper: torch.Tensor, encoder: list[torch.Tensor]) -> torch.Tensor:
        """Fuse the deeper stage with the encoder features of levels ``0 .. level`` (level 0 first)."""
        same = encoder[self.level]
        parts = [self.up(deeper, tuple(same.shape[-2:]))]
        parts += [pool_down(x, self.level - j) for j, x in enumerate(encoder[: self.level + 1])]
        return self.fuse(torch.cat(parts, dim=1))


class ELUNet(CNNBackbone):
    """ELU-Net backbone: (B, in_channels, H, W) -> list of logits ``[main (B, K, H, W), side outputs...]``.

    Parameters
    ----------
    num_phases
        Number of phases ``K``.
    width
        Channels of the first encoder level (level ``i`` has ``width * 2**i``; decoder stages likewise).
    depth
        Number of 2x2 poolings (``depth + 1`` levels); inputs are multiples of ``2**depth``.
    deep_supervision
        Build 1x1 side heads on the decoder stages below full resolution (returned after the main output,
        shallowest first).
    in_channels
        Input channels (1 for grey micrographs).
    """

    kind = "elunet"

    def __init__(
        self, *, num_phases: int, width: int = 8, depth: int = 4, deep_supervision: bool = True, in_channels: int = 1
    ) -> None:
        super().__init__(
            num_phases=num_phases,
            width=width,
            depth=depth,
            deep_supervision=deep_supervision,
            in_channels=in_channels,
        )
        self.stages = nn.ModuleList(  # stages[i] is the decoder stage at level i (0 .. depth - 1)
            DeepSkipStage(level=i, encoder_channels=self.widths[: i + 1], deeper_channels=self.widths[i + 1])
            for i in range(depth)
        )
        decoder_channels = self.widths[:depth]
        self.heads = side_heads(decoder_channels if deep_supervision else decoder_channels[:1], num_phases, 1)

    def decode(self, features: list[torch.Tensor], aux: bool = False) -> list[torch.Tensor]:
        """Decode the encoder ``features`` (shallowest first) into ``[main, side...]`` logits."""
        stages: list[torch.Tensor | None] = [None] * self.depth
        x = features[-1]
        for level in reversed(range(self.depth)):
            x = stages[level] = self.stages[level](x, features[: level + 1])
        count = len(self.heads) if aux else 1
        return [head(x) for head, x in zip(self.heads[:count], stages[:count], strict=True)]


def build_elunet(
    *,
    num_phases: int,
    img_size: int = 256,
    width: int = 8,
    depth: int = 4,
    guidance: str = "none",
    deep_supervision: bool = True,
    seed: int = 0,
) -> PhaseCNN:
    """Build an Enhanced ELU-Net phase segmenter.

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
        Side outputs on the deeper decoder stages in training mode.
    seed
        Seed of the random initialisation.

    Returns
    -------
    PhaseCNN
        ``kind == "elunet"``, in training mode on the CPU.
    """
    return build_phase_cnn(
        lambda: ELUNet(num_phases=num_phases, width=width, depth=depth, deep_supervision=deep_supervision),
        num_phases=num_phases,
        img_size=img_size,
        width=width,
        depth=depth,
        guidance=guidance,
        seed=seed,
    )
