"""Plain U-Net: the classic encoder-decoder with same-scale skip connections.

After Ronneberger et al. (2015), "U-Net: Convolutional networks for biomedical image segmentation", with batch
normalisation and bilinear upsampling. The encoder has ``depth + 1`` levels (:class:`~.cnn.Encoder`, channels
``width * 2**level``). The decoder stage at level ``i`` upsamples the deeper stage (projected to the stage's
channels by a 3x3 convolution at the coarse scale, :class:`~.cnn.UpProject`), concatenates the same-scale encoder
level and fuses both with a :class:`~.cnn.DoubleConv`. A 1x1 head on the full-resolution stage gives the logits;
with deep supervision, 1x1 side heads on the deeper decoder stages give auxiliary logits at their own resolution.

Compared with :mod:`.elunet` (which also feeds every shallower encoder level to each decoder stage) the U-Net is
cheaper per channel, so at a fixed CPU time budget it can afford more channels.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_metalseg.models.cnn import CNNBackbone, DoubleConv, PhaseCNN, UpProject, build_phase_cnn, side_heads


class SkipStage(nn.Module):
    """One U-Net decoder stage: the upsampled deeper stage and the same-scale encoder features, fused.

    Parameters
    ----------
    channels
        Channels of the same-scale encoder level and of the stage's output.
    deeper_channels
        Channels of the deeper decoder stage (or the bottleneck).
    """

    def __init__(self, *, channels: int, deeper_channels: int) -> None:
        super().__init__()
        self.up = UpProject(deeper_channels, channels)
        self.fuse = DoubleConv(2 * channels, channels)

    def forward(self, deeper: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        """Fuse the deeper stage with the same-scale encoder features ``same``."""
        return self.fuse(torch.cat([self.up(deeper, tuple(same.shape[-2:])), same], dim=1))


class UNet(CNNBackbone):
    """U-Net backbone: (B, in_channels, H, W) -> list of logits ``[main (B, K, H, W), side outputs...]``.

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

    kind = "unet"

    def __init__(
        self, *, num_phases: int, width: int = 16, depth: int = 4, deep_supervision: bool = True, in_channels: int = 1
    ) -> None:
        super().__init__(
            num_phases=num_phases,
            width=width,
            depth=depth,
            deep_supervision=deep_supervision,
            in_channels=in_channels,
        )
        self.stages = nn.ModuleList(  # stages[i] is the decoder stage at level i (0 .. depth - 1)
            SkipStage(channels=self.widths[i], deeper_channels=self.widths[i + 1]) for i in range(depth)
        )
        decoder_channels = self.widths[:depth]
        self.heads = side_heads(decoder_channels if deep_supervision else decoder_channels[:1], num_phases, 1)

    def decode(self, features: list[torch.Tensor], aux: bool = False) -> list[torch.Tensor]:
        """Decode the encoder ``features`` (shallowest first) into ``[main, side...]`` logits."""
        stages: list[torch.Tensor | None] = [None] * self.depth
        x = features[-1]
        for level in reversed(range(self.depth)):
            x = stages[level] = self.stages[level](x, features[level])
        count = len(self.heads) if aux else 1
        return [head(x) for head, x in zip(self.heads[:count], stages[:count], strict=True)]


def build_unet(
    *,
    num_phases: int,
    img_size: int = 128,
    width: int = 16,
    depth: int = 4,
    guidance: str = "none",
    deep_supervision: bool = True,
    seed: int = 0,
) -> PhaseCNN:
    """Build a plain U-Net phase segmenter.

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
        ``kind == "unet"``, in training mode on the CPU.
    """
    return build_phase_cnn(
        lambda: UNet(num_phases=num_phases, width=width, depth=depth, deep_supervision=deep_supervision),
        num_phases=num_phases,
        img_size=img_size,
        width=width,
        depth=depth,
        guidance=guidance,
        seed=seed,
    )
