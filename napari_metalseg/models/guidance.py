"""Phase-fraction guidance: condition the image embedding on the expected phase fractions.

A guidance encoder maps the phase-fraction vector ``ratios`` (B, K) (fractions of the field of view, summing
to about 1) to a residual that is added to the image embedding (B, C, h, w) before the mask decoder. The last
layer is zero-initialised, so a fresh encoder is exactly the identity and training starts from plain SAM
behaviour.

``ratios=None`` means no guidance (the identity), so a guided model also runs without fractions at inference.
Rows that contain a NaN are "no guidance" for that image only, which allows ratio dropout during training.
"""

from __future__ import annotations

import torch
from torch import nn

from napari_metalseg.models.options import check_guidance


def _check_ratios(ratios: torch.Tensor, embeddings: torch.Tensor, num_phases: int) -> None:
    if ratios.ndim != 2 or ratios.shape[0] != embeddings.shape[0] or ratios.shape[1] != num_phases:
        raise ValueError(
            f"ratios must have shape (B, K) = ({embeddings.shape[0]}, {num_phases}), got {tuple(ratios.shape)}"
        )


def _split_valid(ratios: torch.Tensor, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ratios with NaN rows zeroed and a (B, 1, 1, 1) mask of rows that carry guidance."""
    ratios = ratios.to(device=embeddings.device, dtype=embeddings.dtype)
    valid = torch.isfinite(ratios).all(dim=1)
    ratios = torch.where(valid[:, None], ratios, torch.zeros_like(ratios))
    return ratios, valid.to(embeddings.dtype)[:, None, None, None]


class RatioEncoder(nn.Module):
    """Global guidance: an MLP on the phase fractions, broadcast-added to every embedding position.

    Parameters
    ----------
    num_phases
        Number of phases ``K`` (length of the ratio vector).
    embed_dim
        Channels ``C`` of the image embedding.
    hidden_dim
        Hidden width of the MLP (default ``embed_dim``).
    """

    def __init__(self, num_phases: int, embed_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or embed_dim
        self.num_phases = num_phases
        self.embed_dim = embed_dim
        self.mlp = nn.Sequential(
            nn.Linear(num_phases, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, embed_dim),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, embeddings: torch.Tensor, ratios: torch.Tensor | None = None) -> torch.Tensor:
        """Add the guidance residual to ``embeddings`` (B, C, h, w); identity when ``ratios`` is ``None``."""
        if ratios is None:
            return embeddings
        _check_ratios(ratios, embeddings, self.num_phases)
        ratios, valid = _split_valid(ratios, embeddings)
        delta = self.mlp(ratios)[:, :, None, None]
        return embeddings + delta * valid


class SpatialRatioEncoder(nn.Module):
    """Spatial guidance (Spatial-v1, CoordConv): a small conv stack on embedding, coordinates and fractions.

    The input of the stack is the concatenation of the embedding (C channels), normalised ``x`` and ``y``
    coordinates in ``[-1, 1]`` (2 channels) and the ratio vector broadcast over the grid (K channels); its
    output (C channels, last conv zero-initialised) is added to the embedding.

    Parameters
    ----------
    num_phases
        Number of phases ``K``.
    embed_dim
        Channels ``C`` of the image embedding.
    hidden_dim
        Channels of the hidden convolutions (default ``embed_dim // 2``).
    """

    def __init__(self, num_phases: int, embed_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or max(embed_dim // 2, 1)
        self.num_phases = num_phases
        self.embed_dim = embed_dim
        self.net = nn.Sequential(
            nn.Conv2d(embed_dim + 2 + num_phases, hidden_dim, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden_dim, embed_dim, kernel_size=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    @staticmethod
    def coordinates(embeddings: torch.Tensor) -> torch.Tensor:
        """Return (B, 2, h, w) channels holding the ``x`` and ``y`` position of each cell in ``[-1, 1]``."""
        b, _, h, w = embeddings.shape
        kw = {"device": embeddings.device, "dtype": embeddings.dtype}
        ys = torch.linspace(-1.0, 1.0, h, **kw) if h > 1 else torch.zeros(1, **kw)
        xs = torch.linspace(-1.0, 1.0, w, **kw) if w > 1 else torch.zeros(1, **kw)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([xx, yy])[None].expand(b, -1, -1, -1)

    def forward(self, embeddings: torch.Tensor, ratios: torch.Tensor | None = None) -> torch.Tensor:
        """Add the guidance residual to ``embeddings`` (B, C, h, w); identity when ``ratios`` is ``None``."""
        if ratios is None:
            return embeddings
        _check_ratios(ratios, embeddings, self.num_phases)
        ratios, valid = _split_valid(ratios, embeddings)
        b, _, h, w = embeddings.shape
        ratio_map = ratios[:, :, None, None].expand(b, -1, h, w)
        x = torch.cat([embeddings, self.coordinates(embeddings), ratio_map], dim=1)
        return embeddings + self.net(x) * valid


def build_guidance(guidance: str, num_phases: int, embed_dim: int) -> nn.Module | None:
    """Return the guidance encoder for a mode of ``GUIDANCE_MODES`` (``None`` for ``"none"``)."""
    encoders = {"none": None, "ratio": RatioEncoder, "spatial": SpatialRatioEncoder}
    encoder = encoders[check_guidance(guidance)]
    return None if encoder is None else encoder(num_phases, embed_dim)
