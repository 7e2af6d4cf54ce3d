"""PhaseSAM: SAMed-style semantic segmentation of ``K`` phases with a (LoRA-adapted) Segment Anything model.

The mask decoder runs with its ``K`` multimask tokens (mask tokens ``1..K``); output ``k`` is the logit map of
phase ``k``. Without a prompt the decoder sees the empty sparse prompt and the dense "no mask" embedding, so
the model segments the whole field of view; an optional box prompt per image focuses it. Optional
phase-fraction guidance (:mod:`.guidance`) is added to the image embedding.

The heavy image encoder is separated (:meth:`PhaseSAM.embed`) from the light decoder
(:meth:`PhaseSAM.decode`), so embeddings can be cached per image and model (:meth:`PhaseSAM.signature` with
``scope="encoder"``).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from napari_metalseg.models.checkpoint import LoadReport, load_sam_checkpoint
from napari_metalseg.models.guidance import build_guidance
from napari_metalseg.models.lora import apply_lora, set_finetune_mode, trainable_state_dict
from napari_metalseg.models.options import check_finetune, check_guidance
from napari_metalseg.models.sam import PATCH_SIZE, build_sam, check_img_size, check_kind, check_num_phases
from napari_metalseg.models.sam_decoder import TokenDecoder
from napari_metalseg.models.spec import builder_arguments

PREPROCESS = "zscore-v1"
"""Identifier of :meth:`PhaseSAM.preprocess`; part of the encoder signature."""

_FULL_HASH_NUMEL = 1 << 20
_SAMPLES = 1 << 16


class PhaseSAM(nn.Module):
    """Semantic phase segmentation with SAM: images (B, 3, S, S) -> logits (B, K, H, W).

    Parameters
    ----------
    sam
        A ``segment_anything`` ``Sam`` built by :func:`~.sam.build_sam` with ``num_phases`` multimask outputs.
    kind
        Model kind (``tiny``, ``vit_b``, ``vit_l``, ``vit_h``).
    num_phases
        Number of phases ``K``.
    guidance
        ``none``, ``ratio`` (:class:`~.guidance.RatioEncoder`) or ``spatial``
        (:class:`~.guidance.SpatialRatioEncoder`).

    Attributes
    ----------
    kind, img_size, num_phases, guidance
        As built; ``img_size`` is the square input size ``S``.
    finetune_mode
        ``lora``, ``decoder`` or ``full`` once :func:`~.lora.set_finetune_mode` ran, else ``None``.
    lora
        LoRA settings (``rank``, ``alpha``, ``dropout``, ``mlp``) if adapters were applied by the builder.
    """

    eps = 1e-3
    """Added to the per-image standard deviation in :meth:`preprocess` (intensities in [0, 1])."""

    def __init__(self, sam: nn.Module, kind: str, num_phases: int, guidance: str = "none") -> None:
        super().__init__()
        check_kind(kind)
        check_guidance(guidance)
        if sam.mask_decoder.num_multimask_outputs != num_phases:
            raise ValueError(
                f"the SAM decoder has {sam.mask_decoder.num_multimask_outputs} multimask outputs, "
                f"expected num_phases={num_phases}"
            )
        self.sam = sam
        self.kind = kind
        self.img_size = int(sam.image_encoder.img_size)
        self.num_phases = num_phases
        self.guidance = guidance
        self.guidance_encoder = build_guidance(guidance, num_phases, self.embed_dim)
        self.finetune_mode: str | None = None
        self.lora: dict[str, Any] | None = None
        grid = self.img_size // PATCH_SIZE
        pe = sam.prompt_encoder
        if tuple(pe.image_embedding_size) != (grid, grid) or tuple(pe.input_image_size) != (self.img_size,) * 2:
            raise ValueError(
                f"prompt encoder sizes {pe.image_embedding_size}/{pe.input_image_size} do not match "
                f"the image encoder input size {self.img_size}"
            )

    @property
    def embed_dim(self) -> int:
        """Channels ``C`` of the image embedding."""
        return int(self.sam.prompt_encoder.embed_dim)

    heavy_encoder = True
    """The image encoder is worth caching, in memory and on disk (see :class:`~napari_metalseg.predict.Predictor`)."""

    @property
    def light_decoder(self) -> bool:
        """The decoder is small enough to run on one CPU thread (the ``tiny`` kind); vit decoders use every
        thread (one vit_b tile: 120 ms on one thread, 72 ms on two, measured on 2 cores)."""
        h, w = self.embedding_size
        return self.embed_dim * h * w < 2**20

    @property
    def mask_size(self) -> tuple[int, int]:
        """(h, w) of the decoder's own logit maps, 4 times the embedding grid; :meth:`decode` resizes them to
        ``out_size``."""
        h, w = self.embedding_size
        return 4 * h, 4 * w

    @property
    def embedding_size(self) -> tuple[int, int]:
        """Spatial size ``(h, w)`` of the image embedding (``img_size // 16`` on a side)."""
        return tuple(self.sam.prompt_encoder.image_embedding_size)

    def spec_fields(self) -> dict[str, Any]:
        """What this model is, in :class:`~.spec.ModelSpec` field names (without phases and checkpoint)."""
        lora = self.lora or {}
        return {
            "kind": self.kind,
            "img_size": self.img_size,
            "guidance": self.guidance,
            "finetune": self.finetune_mode,
            "lora_rank": lora.get("rank", 8),
            "lora_alpha": lora.get("alpha"),
            "lora_dropout": lora.get("dropout", 0.0),
            "lora_mlp": lora.get("mlp", False),
        }

    @property
    def config(self) -> dict[str, Any]:
        """The :func:`build_phase_sam` arguments that rebuild this architecture (without the checkpoint), from
        :meth:`spec_fields` through :func:`~.spec.builder_arguments`."""
        return builder_arguments(self.spec_fields(), self.num_phases)

    def preprocess(self, gray: torch.Tensor) -> torch.Tensor:
        """Standardise grey images per image and replicate them to 3 channels.

        Each image has its mean subtracted and is divided by its standard deviation (+ :attr:`eps`), which
        makes the input independent of the instrument's brightness and contrast (SAM's 0..255 ``pixel_mean``
        is not used).

        Parameters
        ----------
        gray
            (B, 1, H, W) or (B, H, W) floats in [0, 1].

        Returns
        -------
        torch.Tensor
            (B, 3, H, W) float (a broadcast view; the channels share memory).
        """
        if gray.ndim == 3:
            gray = gray[:, None]
        if gray.ndim != 4 or gray.shape[1] != 1:
            raise ValueError(f"preprocess expects (B, 1, H, W) or (B, H, W) grey images, got {tuple(gray.shape)}")
        if not gray.is_floating_point():
            gray = gray.float()
        mean = gray.mean(dim=(2, 3), keepdim=True)
        std = gray.std(dim=(2, 3), keepdim=True, correction=0)
        return ((gray - mean) / (std + self.eps)).expand(-1, 3, -1, -1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Run the image encoder: (B, 3, S, S) preprocessed images -> (B, C, S/16, S/16) embeddings."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"embed expects (B, 3, {self.img_size}, {self.img_size}) images, got {tuple(images.shape)}"
            )
        return self.sam.image_encoder(images)

    def decode(
        self,
        embeddings: torch.Tensor,
        ratios: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        out_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Decode image embeddings into phase logits.

        Parameters
        ----------
        embeddings
            (B, C, h, w) from :meth:`embed`.
        ratios
            (B, K) phase fractions for the guidance encoder, or ``None`` (no guidance). A row with a NaN means
            no guidance for that image. Only for models built with guidance.
        boxes
            (B, 4) box prompts ``x0, y0, x1, y1`` in input pixel coordinates (0..S), or ``None`` (no prompt).
            A row with a NaN means no prompt for that image.
        out_size
            ``(H, W)`` of the returned logits (default ``(S, S)``); the decoder's S/4 masks are resized
            bilinearly.

        Returns
        -------
        torch.Tensor
            (B, K, H, W) logits; channel ``k`` is phase ``k``.
        """
        if (
            embeddings.ndim != 4
            or embeddings.shape[1] != self.embed_dim
            or tuple(embeddings.shape[2:]) != self.embedding_size
        ):
            raise ValueError(
                f"decode expects (B, {self.embed_dim}, {self.embedding_size[0]}, "
                f"{self.embedding_size[1]}) embeddings, got {tuple(embeddings.shape)}"
            )
        if ratios is not None:
            if self.guidance_encoder is None:
                raise ValueError("this model was built without phase-fraction guidance (guidance='none')")
            embeddings = self.guidance_encoder(embeddings, ratios)
        logits = self._masks(embeddings, boxes)
        out_size = tuple(out_size) if out_size is not None else (self.img_size, self.img_size)
        if tuple(logits.shape[2:]) != out_size:
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits

    def _masks(self, embeddings: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor:
        """The decoder's own (B, K, 4h, 4w) logits of (guided) embeddings: the token-space decoder without
        gradients, segment-anything's modules (:func:`decode_paired`) with them."""
        b = embeddings.shape[0]
        inference = not torch.is_grad_enabled()
        run = (
            (lambda e, p: torch.stack(self.token_decoder.masks(e, p)))
            if inference
            else (lambda e, p: decode_paired(self.sam, e, p))
        )
        if boxes is None:
            return run(embeddings, None).float()
        if boxes.shape != (b, 4):
            raise ValueError(f"boxes must have shape ({b}, 4), got {tuple(boxes.shape)}")
        boxes = boxes.to(device=embeddings.device, dtype=torch.float32)  # bf16 would round pixels
        boxed = torch.isfinite(boxes).all(dim=1)
        if bool(boxed.all()):
            return run(embeddings, boxes).float()
        # rows without a box get the empty prompt: decode the two groups, put the rows back in order
        plain, prompted = torch.nonzero(~boxed).flatten(), torch.nonzero(boxed).flatten()
        parts = [run(embeddings[plain], None)]
        if len(prompted):
            parts.append(run(embeddings[prompted], boxes[prompted]))
        order = torch.argsort(torch.cat([plain, prompted]))
        return torch.cat(parts)[order].float()

    @property
    def token_decoder(self) -> TokenDecoder:
        """The inference decoder on this model's weights (:mod:`.sam_decoder`)."""
        if getattr(self, "_token_decoder", None) is None:
            self._token_decoder = TokenDecoder(self.sam)
        return self._token_decoder

    def decode_masks(
        self,
        embeddings: torch.Tensor,
        ratios: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        cells: list[tuple[int, int, int, int]] | None = None,
    ) -> list[torch.Tensor]:
        """Inference only: the decoder's own logits of image ``i`` on the embedding cells ``cells[i]`` =
        ``(r0, r1, c0, c1)``, each (K, 4 * (r1 - r0), 4 * (c1 - c0)); the same values as :meth:`decode` at
        ``out_size=mask_size`` cropped, computing only the cells' upscaling (a box prompt needs no more)."""
        if ratios is not None:
            embeddings = self.guidance_encoder(embeddings, ratios)
        if boxes is not None:
            boxes = boxes.to(device=embeddings.device, dtype=torch.float32)
        with torch.inference_mode():
            return [m.float() for m in self.token_decoder.masks(embeddings, boxes, cells)]

    def forward(
        self, images: torch.Tensor, ratios: torch.Tensor | None = None, boxes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Segment preprocessed images (B, 3, S, S) into (B, K, S, S) phase logits (see :meth:`decode`)."""
        return self.decode(self.embed(images), ratios=ratios, boxes=boxes, out_size=tuple(images.shape[2:]))

    @torch.no_grad()
    def signature(self, scope: Literal["model", "encoder"] = "model") -> str:
        """Return a string identifying the model's computation, for caches.

        Parameters
        ----------
        scope
            ``model``: everything that affects the logits; ``encoder``: only what affects :meth:`embed`
            (preprocessing, image encoder and LoRA), the key for cached embeddings.

        Returns
        -------
        str
            ``"<kind>-<img_size>-k<K>-<guidance>-<hash>"`` (``model``) or ``"<kind>-<img_size>-enc-<hash>"``.
            The hash covers the trainable weights in full and the frozen base through a fingerprint (shape,
            dtype and a strided sample of every tensor larger than 2**20 elements).
        """
        if scope not in ("model", "encoder"):
            raise ValueError(f"scope must be 'model' or 'encoder', got {scope!r}")
        digest = hashlib.sha256()
        digest.update(repr((PREPROCESS, self.kind, self.img_size, self.eps)).encode())
        if scope == "model":
            digest.update(repr((self.num_phases, self.guidance)).encode())
        trainable = set(trainable_state_dict(self)) if self.finetune_mode else set()
        for key, value in sorted(self.state_dict().items()):
            if scope == "encoder" and not key.startswith("sam.image_encoder."):
                continue
            digest.update(f"{key}:{tuple(value.shape)}:{value.dtype}".encode())
            data = value.detach().reshape(-1)
            if key not in trainable and data.numel() > _FULL_HASH_NUMEL:
                data = data[:: data.numel() // _SAMPLES + 1]
            digest.update(data.cpu().contiguous().view(torch.uint8).numpy().tobytes())
        if scope == "encoder":
            return f"{self.kind}-{self.img_size}-enc-{digest.hexdigest()[:16]}"
        return f"{self.kind}-{self.img_size}-k{self.num_phases}-{self.guidance}-{digest.hexdigest()[:16]}"


def decode_paired(sam: nn.Module, embeddings: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor:
    """SAM's prompt encoder and mask decoder on a batch, image ``i`` with prompt ``i``: (B, K, 4h, 4w) logits.

    ``segment_anything``'s ``MaskDecoder.forward`` pairs every prompt with every image (for many prompts on one
    image), so a batch of tiles with one box each would cost B x B decodes; this runs the same modules (its
    transformer, output upscaling and hypernetwork heads) once on the batch, one prompt per image. Without
    ``boxes`` every image gets the empty prompt. The multimask outputs ``1..K`` are returned (mask token 0 is
    SAM's single-mask output, unused).
    """
    prompt_encoder, decoder = sam.prompt_encoder, sam.mask_decoder
    b, c, h, w = embeddings.shape
    sparse, dense = prompt_encoder(points=None, boxes=boxes, masks=None)
    sparse = sparse.expand(b, -1, -1).to(embeddings.dtype)
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]).to(embeddings.dtype)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    image_pe = prompt_encoder.get_dense_pe().to(embeddings.dtype).expand(b, -1, -1, -1)
    hs, src = decoder.transformer(embeddings + dense.to(embeddings.dtype), image_pe, tokens)
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    mask_tokens = hs[:, 2 : 1 + decoder.num_mask_tokens]
    heads = decoder.output_hypernetworks_mlps[1:]
    hyper = torch.stack([head(mask_tokens[:, i]) for i, head in enumerate(heads)], dim=1)
    _, uc, uh, uw = upscaled.shape
    return (hyper @ upscaled.reshape(b, uc, uh * uw)).reshape(b, -1, uh, uw)


def build_phase_sam(
    kind: str = "tiny",
    img_size: int = 512,
    num_phases: int = 3,
    checkpoint: str | None = None,
    guidance: str = "none",
    finetune: str | None = None,
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    lora_dropout: float = 0.0,
    lora_mlp: bool = False,
    seed: int = 0,
) -> tuple[PhaseSAM, LoadReport | None]:
    """Build a :class:`PhaseSAM`, load pretrained SAM weights, add LoRA and set the fine-tuning mode.

    Parameters
    ----------
    kind
        ``tiny``, ``vit_b``, ``vit_l`` or ``vit_h``.
    img_size
        Square input size (multiple of 16, at least 64).
    num_phases
        Number of phases ``K``.
    checkpoint
        Path of a SAM checkpoint of the same kind (see :func:`~.checkpoint.load_sam_checkpoint`), or ``None``.
    guidance
        ``none``, ``ratio`` or ``spatial``.
    finetune
        ``lora``, ``decoder`` or ``full``; default ``lora`` with a checkpoint, ``full`` without. LoRA adapters
        are injected only in ``lora`` mode.
    lora_rank, lora_alpha, lora_dropout, lora_mlp
        LoRA settings (see :func:`~.lora.apply_lora`).
    seed
        Seed of the random initialisation, so that a model without checkpoint is rebuilt identically.

    Returns
    -------
    tuple
        ``(model, report)``; ``report`` is ``None`` without checkpoint. The model is in training mode on the
        CPU.
    """
    check_kind(kind)
    check_img_size(img_size)
    check_num_phases(num_phases)
    check_guidance(guidance)
    finetune = check_finetune(finetune or ("lora" if checkpoint is not None else "full"))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam(kind, img_size=img_size, num_phases=num_phases)
        report = load_sam_checkpoint(sam, checkpoint, kind) if checkpoint is not None else None
        model = PhaseSAM(sam, kind=kind, num_phases=num_phases, guidance=guidance)
        if finetune == "lora":
            apply_lora(model.sam, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout, include_mlp=lora_mlp)
            model.lora = {"rank": lora_rank, "alpha": lora_alpha, "dropout": lora_dropout, "mlp": lora_mlp}
    set_finetune_mode(model, finetune)
    return model, report
