"""The image encoder's attention for inference through PyTorch's fused ``scaled_dot_product_attention``.

``segment_anything``'s ``Attention`` computes the scores, adds the decomposed relative-position terms in two more
passes over the (heads x 4096 x 4096 in the global blocks of vit_b at 1024 px) score matrix, then softmax and the
product with the values, each a full pass. :class:`FusedAttention` builds the relative-position bias once and
hands it to ``scaled_dot_product_attention`` as its mask, which fuses the rest. Same parameters, same function
(equal within 1e-5 in fp32, tested); with gradients enabled (training) the original code runs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn


class FusedAttention(Attention):
    """``segment_anything``'s image-encoder attention; without gradients, one fused attention call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        b, h, w, _ = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d)
        bias = None
        if self.use_rel_pos:
            grid = q.reshape(b, heads, h, w, -1)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid, get_rel_pos(h, h, self.rel_pos_h).to(q.dtype))
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid, get_rel_pos(w, w, self.rel_pos_w).to(q.dtype))
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.permute(0, 2, 1, 3).reshape(b, h, w, -1))


def use_fused_attention(encoder: nn.Module) -> None:
    """Give every attention of a SAM image encoder the fused inference path (parameters untouched)."""
    for module in encoder.modules():
        if type(module) is Attention:
            module.__class__ = FusedAttention


def stock_copy(sam: nn.Module) -> nn.Module:
    """A copy of ``sam`` with segment-anything's own attention code, for reference timings."""
    stock = copy.deepcopy(sam)
    for module in stock.modules():
        if type(module) is FusedAttention:
            module.__class__ = Attention
    return stock
