"""Encoder feature maps (the seed study's "Visualization - Image Encoder").

Each ViT block's output (H/16 x W/16 x C) is captured with a forward hook and reduced to 3 channels by PCA, giving
one RGB image per block. Computed for the adapted model and for its base (LoRA switched off), so the user sees how
adaptation separates the phases layer by layer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_metalseg.errors import MetalsegError


@dataclass
class FeatureMaps:
    """Per-block PCA maps.

    Attributes
    ----------
    maps : ndarray of uint8, shape (n_blocks, h, w, 3)
        RGB image per encoder block, covering the whole micrograph.
    scale : (float, float)
        Micrograph pixels per map pixel along (y, x): place a map over the image with this scale.
    label : str
        ``"adapted"`` or ``"base"``.
    """

    maps: np.ndarray
    scale: tuple[float, float]
    label: str = "adapted"


def pca_rgb(features: np.ndarray) -> np.ndarray:
    """Reduce (h, w, C) features to (h, w, 3) uint8 by PCA, each component stretched over its 1-99 percentiles.

    Component signs are fixed (largest absolute loading positive) so maps of neighbouring blocks are comparable.
    """
    h, w, c = features.shape
    x = features.reshape(-1, c).astype(np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:3]
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])
    proj = x @ (comps * signs[:, None]).T
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return (rgb.reshape(h, w, 3) * 255 + 0.5).astype(np.uint8)


MAX_TILES = 16
"""At most this many encoder tiles per image; larger micrographs are shrunk first (bounded time)."""


def block_outputs(model, image: np.ndarray, device: str = "cpu") -> tuple[list[np.ndarray], tuple[float, float]]:
    """Outputs of every encoder block for ``image``, at the model's native resolution.

    The micrograph is cut into tiles of the model input size (as in prediction), each tile's block outputs are
    captured with forward hooks and stitched, so a map pixel covers 16 x 16 image pixels. Micrographs needing more
    than :data:`MAX_TILES` tiles are shrunk first.

    Returns
    -------
    maps : list of ndarray (h, w, C)
        One per encoder block, covering the whole micrograph.
    scale : (float, float)
        Micrograph pixels per map pixel along (y, x).
    """
    import torch

    if not hasattr(model, "sam"):
        raise MetalsegError(
            f"encoder feature maps show the blocks of SAM's image encoder; this "
            f"{getattr(model, 'kind', 'model')} model has none"
        )
    size = int(model.img_size)
    h, w = image.shape
    image = image.astype(np.float32)
    zoom = min(1.0, float(np.sqrt(MAX_TILES / (np.ceil(h / size) * np.ceil(w / size)))))
    if zoom < 1:
        image = ndimage.zoom(image, zoom, order=1)
    rh, rw = image.shape
    ny, nx = int(np.ceil(rh / size)), int(np.ceil(rw / size))
    padded = np.full((ny * size, nx * size), float(image.mean()), np.float32)
    padded[:rh, :rw] = image
    grid = size // 16
    stitched: list[np.ndarray] | None = None
    captured: list[np.ndarray] = []
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: captured.append(out[0].float().cpu().numpy()))
        for block in model.sam.image_encoder.blocks
    ]
    try:
        for ty in range(ny):
            for tx in range(nx):
                captured.clear()
                tile = padded[ty * size : (ty + 1) * size, tx * size : (tx + 1) * size]
                with torch.inference_mode():
                    model.embed(model.preprocess(torch.from_numpy(np.ascontiguousarray(tile))[None].to(device)))
                if stitched is None:
                    stitched = [np.zeros((ny * grid, nx * grid, c.shape[-1]), np.float32) for c in captured]
                for out, block_map in zip(stitched, captured):
                    out[ty * grid : (ty + 1) * grid, tx * grid : (tx + 1) * grid] = block_map
    finally:
        for hook in hooks:
            hook.remove()
    vh, vw = max(1, round(rh / 16)), max(1, round(rw / 16))
    return [m[:vh, :vw] for m in stitched], (h / vh, w / vw)


def encoder_feature_maps(
    model, image: np.ndarray, device: str = "cpu", base: bool = False, label: str | None = None
) -> FeatureMaps:
    """PCA-RGB map of every encoder block for ``image``; ``base=True`` gives the maps with LoRA switched off.

    For a model without LoRA, pass the untrained model of the same spec (``ModelSpec.build()``: the pretrained base,
    or the initial weights of a model trained from scratch) with ``label="base"`` instead.
    """
    from napari_metalseg.models.lora import lora_disabled

    context = lora_disabled(model) if base else contextlib.nullcontext()
    with context:
        outputs, scale = block_outputs(model, image, device)
    return FeatureMaps(np.stack([pca_rgb(o) for o in outputs]), scale, label or ("base" if base else "adapted"))


def feature_grid_figure(adapted: FeatureMaps, base: FeatureMaps | None, image: np.ndarray, path) -> None:
    """Save one figure: the micrograph, then a row of block maps for the base and one for the adapted model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [m for m in (base, adapted) if m is not None]
    n = adapted.maps.shape[0]
    fig, axes = plt.subplots(len(rows), n + 1, figsize=(1.6 * (n + 1), 1.8 * len(rows)), squeeze=False)
    for r, fm in enumerate(rows):
        axes[r, 0].imshow(image, cmap="gray")
        axes[r, 0].set_title("input" if r == 0 else "", fontsize=8)
        axes[r, 0].set_ylabel(fm.label, fontsize=9)
        for i in range(n):
            axes[r, i + 1].imshow(fm.maps[i], interpolation="nearest")
            axes[r, i + 1].set_title(f"block {i + 1}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
