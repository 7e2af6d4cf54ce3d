"""Task-specific CNNs: the shared model wrapper :class:`PhaseCNN` and the building blocks of the backbones.

The CNN families (:mod:`.unet3plus`, :mod:`.elunet`) are small, fully convolutional encoder-decoders trained
from scratch on grey micrographs. :class:`PhaseCNN` gives a backbone the model contract of
:class:`~.phase_sam.PhaseSAM`, so the trainer, the tiled predictor, the study and the napari docks treat every
family alike:

- :meth:`PhaseCNN.preprocess` standardises each grey image (one channel);
- :meth:`PhaseCNN.embed` is the identity: the whole network runs in :meth:`PhaseCNN.decode`, so the
  predictor's embedding cache holds preprocessed tiles (its key, ``signature("encoder")``, depends only on the
  preprocessing and the tile size, never on the weights);
- optional phase-fraction guidance (:mod:`.guidance`) is added to the deepest encoder features (the
  bottleneck);
- in training mode with deep supervision, :meth:`PhaseCNN.forward` returns the main logits followed by the
  auxiliary (side) logits, some at lower resolution.

A backbone derives from :class:`CNNBackbone`: a plain encoder of ``depth + 1`` levels (``depth`` 2x2
max-poolings, channels ``width * 2**level``) and a family-specific decoder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from napari_metalseg.errors import MetalsegError
from napari_metalseg.models.guidance import build_guidance
from napari_metalseg.models.options import check_guidance, check_positive_int
from napari_metalseg.models.sam import check_num_phases
from napari_metalseg.models.spec import builder_arguments

PREPROCESS = "contrast-image-v1"
"""Identifier of :meth:`PhaseCNN.preprocess`; the whole encoder signature with the kind and tile size."""

MAX_DEPTH = 6
"""Most 2x2 poolings of a CNN encoder."""

MIN_PREDICT_SIZE = 512
"""Smallest tile of the tiled predictor for a fully convolutional model."""

MEMORY_FORMAT = torch.channels_last
"""Layout of the convolution weights and activations (set by the builder): NHWC convolutions run 1.3-1.6x faster
on the CPU and suit CUDA mixed precision. The logits are returned contiguous (NCHW); a state dict holds the same
values in either layout and loads into either (the weights are channels-last strided: save them ``.contiguous()``
for safetensors)."""


# ------------------------------------------------------------------------------------------- building blocks


class ConvBNReLU(nn.Sequential):
    """Convolution (no bias), BatchNorm and ReLU; ``padding`` keeps the size.

    Parameters
    ----------
    in_channels, out_channels
        Channels in and out.
    kernel_size
        Odd kernel size (default 3).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two :class:`ConvBNReLU` 3x3 blocks, the U-Net stage: ``in_channels -> out_channels -> out_channels``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels))


class UpProject(ConvBNReLU):
    """Project deeper features to ``out_channels`` with a 3x3 :class:`ConvBNReLU`, then upsample bilinearly.

    The convolution runs at the deeper (coarser) scale, before the upsampling: the same receptive field as
    convolving the upsampled map, at ``4**level_difference`` times less cost.
    """

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        """Project ``x`` (B, C, h, w) and upsample it to ``size`` ``(H, W)``."""
        return resize(super().forward(x), size)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (B, C, h, w) -> (B, C, H, W) with ``align_corners=False``; identity at the same size."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def pool_down(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Max-pool ``x`` by ``2**levels`` (kernel = stride = ``2**levels``); identity for ``levels == 0``."""
    if levels == 0:
        return x
    return F.max_pool2d(x, kernel_size=2**levels)


class Encoder(nn.Module):
    """Plain U-Net encoder: ``depth + 1`` :class:`DoubleConv` stages, a 2x2 max-pooling before each but the first.

    Parameters
    ----------
    in_channels
        Input channels.
    widths
        Output channels of each stage, shallowest first (``depth + 1`` values).
    """

    def __init__(self, in_channels: int, widths: list[int]) -> None:
        super().__init__()
        ins = [in_channels, *widths[:-1]]
        self.stages = nn.ModuleList(DoubleConv(c_in, c_out) for c_in, c_out in zip(ins, widths, strict=True))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the features of every level, shallowest (full resolution) first."""
        features = []
        for level, stage in enumerate(self.stages):
            x = stage(x if level == 0 else F.max_pool2d(x, kernel_size=2))
            features.append(x)
        return features


def side_heads(channels: list[int], num_phases: int, kernel_size: int = 1) -> nn.ModuleList:
    """Return one logit head (a convolution to ``num_phases`` channels, with bias) per entry of ``channels``."""
    return nn.ModuleList(nn.Conv2d(c, num_phases, kernel_size, padding=kernel_size // 2) for c in channels)


class CNNBackbone(nn.Module):
    """Base of the CNN backbones: the :class:`Encoder` and the bookkeeping the wrapper needs.

    Subclasses build their decoder and implement :meth:`decode`.

    Parameters
    ----------
    num_phases
        Number of phases ``K`` (output channels).
    width
        Channels of the first encoder level; level ``i`` has ``width * 2**i``.
    depth
        Number of 2x2 max-poolings (the encoder has ``depth + 1`` levels); inputs must be multiples of
        ``2**depth`` on a side.
    deep_supervision
        Whether side heads are built and :meth:`decode` can return auxiliary logits.
    in_channels
        Input channels (1 for grey micrographs).
    """

    kind = "cnn"

    def __init__(
        self, *, num_phases: int, width: int, depth: int, deep_supervision: bool, in_channels: int = 1
    ) -> None:
        super().__init__()
        self.num_phases = num_phases
        self.width = width
        self.depth = depth
        self.deep_supervision = deep_supervision
        self.in_channels = in_channels
        self.widths = [width * 2**level for level in range(depth + 1)]
        self.encoder = Encoder(in_channels, self.widths)

    @property
    def bottleneck_channels(self) -> int:
        """Channels of the deepest encoder features (where guidance acts)."""
        return self.widths[-1]

    @property
    def config(self) -> dict[str, Any]:
        """Family-specific build arguments (besides kind, sizes, phases, width, depth and guidance)."""
        return {"deep_supervision": self.deep_supervision}

    def decode(self, features: list[torch.Tensor], aux: bool = False) -> list[torch.Tensor]:
        """Decode encoder features into ``[main, aux1, ...]`` logits (only ``[main]`` unless ``aux``)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, aux: bool = False) -> list[torch.Tensor]:
        """Run encoder and decoder on (B, C, H, W); see :meth:`decode`."""
        return self.decode(self.encoder(x), aux=aux)


# ------------------------------------------------------------------------------------------------ the wrapper


class PhaseCNN(nn.Module):
    """Semantic phase segmentation with a CNN backbone: grey images (B, 1, H, W) -> logits (B, K, H, W).

    Parameters
    ----------
    backbone
        A :class:`CNNBackbone` (``UNet3Plus`` or ``ELUNet``) with ``num_phases`` outputs.
    img_size
        Square training crop size ``S`` (a multiple of ``2**depth``).
    guidance
        ``none``, ``ratio`` (:class:`~.guidance.RatioEncoder`) or ``spatial``
        (:class:`~.guidance.SpatialRatioEncoder`), applied to the bottleneck features.

    Attributes
    ----------
    kind, img_size, num_phases, guidance
        As built.
    predict_size
        Tile size of the tiled predictor: ``max(img_size, 512)`` rounded up to a multiple of ``2**depth``.
    supports_boxes, light_decoder, finetune_mode
        ``False``, ``False`` (the decoder is the whole network) and ``"full"`` (every weight trains).
    """

    eps = 1e-3
    """Added to the per-image standard deviation in :meth:`preprocess` (intensities in [0, 1])."""

    supports_boxes = False
    light_decoder = False
    finetune_mode = "full"

    def __init__(self, *, backbone: CNNBackbone, img_size: int, guidance: str = "none") -> None:
        super().__init__()
        check_guidance(guidance)
        check_img_size_for_depth(img_size, backbone.depth)
        self.backbone = backbone
        self.kind = backbone.kind
        self.img_size = int(img_size)
        self.num_phases = backbone.num_phases
        self.guidance = guidance
        self.guidance_encoder = build_guidance(guidance, self.num_phases, backbone.bottleneck_channels)
        multiple = 2**backbone.depth
        self.predict_size = -(-max(self.img_size, MIN_PREDICT_SIZE) // multiple) * multiple

    @property
    def depth(self) -> int:
        """Number of 2x2 poolings; inputs are multiples of ``2**depth`` on a side."""
        return self.backbone.depth

    @property
    def deep_supervision(self) -> bool:
        """Whether :meth:`forward` returns auxiliary logits in training mode."""
        return self.backbone.deep_supervision

    def spec_fields(self) -> dict[str, Any]:
        """What this model is, in :class:`~.spec.ModelSpec` field names (without phases): kind, sizes, guidance and
        the backbone's family-specific settings as ``options``."""
        return {
            "kind": self.kind,
            "img_size": self.img_size,
            "guidance": self.guidance,
            "width": self.backbone.width,
            "depth": self.backbone.depth,
            "options": self.backbone.config,
        }

    @property
    def config(self) -> dict[str, Any]:
        """The build arguments of the family's builder (with ``kind``), e.g. for display or a rebuild: from
        :meth:`spec_fields` through :func:`~.spec.builder_arguments`."""
        return {"kind": self.kind, **builder_arguments(self.spec_fields(), self.num_phases)}

    contrast = "image"
    """The predictor and the trainer stretch each whole micrograph's contrast
    (:func:`~napari_metalseg.data.samples.normalize_contrast`: 0.5 / 99.5 percentiles to 0 / 1) before tiling or
    cropping, so every tile of a micrograph sees the same intensity mapping."""

    def preprocess(self, gray: torch.Tensor) -> torch.Tensor:
        """Centre contrast-stretched grey images: ``(gray - 0.5) / 0.25`` (the same for every tile and crop).

        Parameters
        ----------
        gray
            (B, 1, H, W) or (B, H, W) floats in [0, 1], contrast-stretched per micrograph (:attr:`contrast`).

        Returns
        -------
        torch.Tensor
            (B, 1, H, W) float.
        """
        if gray.ndim == 3:
            gray = gray[:, None]
        if gray.ndim != 4 or gray.shape[1] != 1:
            raise ValueError(f"preprocess expects (B, 1, H, W) or (B, H, W) grey images, got {tuple(gray.shape)}")
        if not gray.is_floating_point():
            gray = gray.float()
        return (gray - 0.5) / 0.25

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Return the preprocessed images unchanged: the whole network runs in :meth:`decode`."""
        return images

    def _check_input(self, images: torch.Tensor) -> None:
        multiple = 2**self.depth
        if (
            images.ndim != 4
            or images.shape[1] != self.backbone.in_channels
            or images.shape[2] % multiple
            or images.shape[3] % multiple
            or images.shape[2] == 0
            or images.shape[3] == 0
        ):
            raise ValueError(
                f"{self.kind} expects (B, {self.backbone.in_channels}, H, W) images with H and W positive "
                f"multiples of 2**depth = {multiple}, got {tuple(images.shape)}"
            )

    def _run(
        self, images: torch.Tensor, ratios: torch.Tensor | None, boxes: torch.Tensor | None, aux: bool
    ) -> list[torch.Tensor]:
        if boxes is not None:
            raise MetalsegError(f"box prompts need a SAM model; {self.kind} has no prompt encoder")
        self._check_input(images)
        if ratios is not None and self.guidance_encoder is None:
            raise ValueError("this model was built without phase-fraction guidance (guidance='none')")
        features = self.backbone.encoder(images.contiguous(memory_format=MEMORY_FORMAT))
        if ratios is not None:
            features[-1] = self.guidance_encoder(features[-1], ratios)
        return [logits.contiguous() for logits in self.backbone.decode(features, aux=aux)]

    def decode(
        self,
        embeddings: torch.Tensor,
        ratios: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        out_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Run the network on preprocessed images (the "embeddings" of :meth:`embed`) and return phase logits.

        Parameters
        ----------
        embeddings
            (B, 1, H, W) preprocessed images, ``H`` and ``W`` multiples of ``2**depth``.
        ratios
            (B, K) phase fractions for the guidance encoder, or ``None`` (no guidance). A row with a NaN means
            no guidance for that image. Only for models built with guidance.
        boxes
            Must be ``None``: a CNN has no prompt encoder.
        out_size
            ``(H, W)`` of the returned logits (default the input size); resized bilinearly.

        Returns
        -------
        torch.Tensor
            (B, K, H, W) logits; channel ``k`` is phase ``k``. Only the main output, also in training mode.
        """
        logits = self._run(embeddings, ratios, boxes, aux=False)[0]
        if out_size is not None:
            logits = resize(logits, tuple(out_size))
        return logits

    def forward(
        self, images: torch.Tensor, ratios: torch.Tensor | None = None, boxes: torch.Tensor | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Segment preprocessed images (B, 1, H, W).

        Returns
        -------
        torch.Tensor or list of torch.Tensor
            (B, K, H, W) logits; in training mode with deep supervision the list ``[main, aux1, ...]``, where
            ``main`` is at the input size and the auxiliary logits (B, K, h, w) may be coarser (upsample them
            to the target size for the loss).
        """
        outputs = self._run(images, ratios, boxes, aux=self.training and self.deep_supervision)
        return outputs if len(outputs) > 1 else outputs[0]

    def trainable_state_keys(self) -> list[str]:
        """Every key of :meth:`state_dict`: all weights and the BatchNorm statistics train (or update)."""
        return list(self.state_dict())

    @torch.no_grad()
    def signature(self, scope: Literal["model", "encoder"] = "model") -> str:
        """Return a string identifying the model's computation, for caches.

        Parameters
        ----------
        scope
            ``model``: everything that affects the logits (architecture, sizes and every tensor of the state
            dict); ``encoder``: what affects :meth:`embed`, i.e. only the preprocessing and the tile size (the
            embeddings are the preprocessed tiles).

        Returns
        -------
        str
            ``"<kind>-<img_size>-k<K>-<guidance>-<hash>"`` (``model``) or
            ``"<kind>-<predict_size>-enc-<preprocess>"`` (``encoder``).
        """
        if scope not in ("model", "encoder"):
            raise ValueError(f"scope must be 'model' or 'encoder', got {scope!r}")
        if scope == "encoder":
            return f"{self.kind}-{self.predict_size}-enc-{PREPROCESS}"
        digest = hashlib.sha256()
        digest.update(repr((PREPROCESS, self.eps, sorted(self.config.items()))).encode())
        for key, value in sorted(self.state_dict().items()):
            digest.update(f"{key}:{tuple(value.shape)}:{value.dtype}".encode())
            digest.update(value.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return f"{self.kind}-{self.img_size}-k{self.num_phases}-{self.guidance}-{digest.hexdigest()[:16]}"


# ----------------------------------------------------------------------------------------------- the builder


def check_img_size_for_depth(img_size: int, depth: int) -> int:
    """Validate a CNN training crop size: a positive multiple of ``2**depth``.

    Raises
    ------
    MetalsegError
        If the size is not allowed.
    """
    multiple = 2**depth
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < multiple or img_size % multiple:
        raise MetalsegError(
            f"img_size {img_size!r}: a CNN of depth {depth} needs a positive multiple of 2**{depth} = {multiple}"
        )
    return img_size


def build_phase_cnn(
    backbone: Callable[[], CNNBackbone],
    *,
    num_phases: int,
    img_size: int,
    width: int,
    depth: int,
    guidance: str,
    seed: int,
) -> PhaseCNN:
    """Validate the common build arguments, then build ``backbone()`` and its :class:`PhaseCNN` under ``seed``.

    Used by the family builders (``build_unet3plus``, ``build_elunet``); ``backbone`` builds the network with
    the validated arguments. The random state of the caller is left untouched.

    Returns
    -------
    PhaseCNN
        In training mode on the CPU.

    Raises
    ------
    MetalsegError
        For a bad phase count, width, depth, crop size or guidance.
    """
    check_num_phases(num_phases)
    check_positive_int("width", width)
    check_positive_int("depth", depth, MAX_DEPTH)
    check_img_size_for_depth(img_size, depth)
    check_guidance(guidance)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PhaseCNN(backbone=backbone(), img_size=img_size, guidance=guidance)
    return model.to(memory_format=MEMORY_FORMAT).train()
