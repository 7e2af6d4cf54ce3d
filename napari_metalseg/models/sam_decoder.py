"""SAM's mask decoder for inference, computed in token space: the same function, about half the work.

``segment_anything``'s ``TwoWayTransformer`` projects the whole image embedding (64 x 64 tokens for vit_b at 1024 px)
to queries, keys and values in every attention, although only a handful of prompt tokens (the IoU token, the mask
tokens and the box corners) face it. Attention being linear in those projections, the weights can be moved to the
few prompt tokens instead: the scores of token-to-image attention are ``(q W_k) x^T`` rather than ``q (x W_k)^T``, its
output ``(a x) W_v`` rather than ``a (x W_v)``, and the same for image-to-token attention, so the image tokens are
multiplied by small (C x heads*tokens) matrices only. The image positional encoding's share of each projection is a
constant of the model, computed once. The output upscaling (two 2x2 stride-2 transposed convolutions with a
per-pixel LayerNorm) is a per-token linear map followed by a pixel shuffle, so it runs on tokens too, and on only the
tokens of a region when a box needs no more (:meth:`TokenDecoder.masks`).

The result equals ``MaskDecoder.forward(..., multimask_output=True)`` up to floating-point rounding (tested against
segment-anything's own modules); training keeps using those modules (:func:`~.phase_sam.decode_paired`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TokenDecoder:
    """Inference-only mask decoder of a ``segment_anything`` ``Sam`` (its weights, not copies).

    Parameters
    ----------
    sam
        The model whose ``prompt_encoder`` and ``mask_decoder`` are run. Weight changes are noticed (tensor
        versions) and the precomputed positional terms rebuilt.
    """

    def __init__(self, sam: nn.Module) -> None:
        self.sam = sam
        self._pe_terms: dict[str, torch.Tensor] | None = None
        self._pe_key: tuple | None = None

    # -- the constant positional terms ---------------------------------------------------------------------
    def _pe(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        transformer = self.sam.mask_decoder.transformer
        attentions = [layer.cross_attn_token_to_image for layer in transformer.layers]
        attentions.append(transformer.final_attn_token_to_image)
        reverse = [layer.cross_attn_image_to_token for layer in transformer.layers]
        params = [self.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix]
        params += [p for a in attentions for p in (a.k_proj.weight, a.k_proj.bias)]
        params += [p for a in reverse for p in (a.q_proj.weight, a.q_proj.bias)]
        key = (dtype, *((id(p), p._version) for p in params))
        if self._pe_key != key:
            pe = self.sam.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)[0]  # (N, C)
            terms = {}
            for i, a in enumerate(attentions):
                terms[f"k{i}"] = F.linear(pe, a.k_proj.weight, a.k_proj.bias).to(dtype)
            for i, a in enumerate(reverse):
                terms[f"q{i}"] = F.linear(pe, a.q_proj.weight, a.q_proj.bias).to(dtype)
            self._pe_terms, self._pe_key = terms, key
        return self._pe_terms

    # -- attention in token space --------------------------------------------------------------------------
    @staticmethod
    def _token_to_image(att: nn.Module, q_in: torch.Tensor, x: torch.Tensor, pe_k: torch.Tensor) -> torch.Tensor:
        """``att(q=q_in, k=x + pe, v=x)`` with the image tokens ``x`` (B, N, C) never projected."""
        b, t, _ = q_in.shape
        heads, d = att.num_heads, att.internal_dim // att.num_heads
        c = x.shape[-1]
        q = att.q_proj(q_in).reshape(b, t, heads, d) / math.sqrt(d)
        wk = att.k_proj.weight.reshape(heads, d, c).to(q.dtype)
        a = torch.einsum("bthd,hdc->bhtc", q, wk).reshape(b, heads * t, c)
        pe_scores = torch.einsum("bthd,nhd->bhtn", q, pe_k.reshape(-1, heads, d)).reshape(b, heads * t, -1)
        scores = torch.baddbmm(pe_scores.to(x.dtype), a.to(x.dtype), x.transpose(1, 2))
        weighted = torch.softmax(scores, dim=-1).to(x.dtype) @ x  # (B, H*T, C)
        wv = att.v_proj.weight.reshape(heads, d, c).to(weighted.dtype)
        out = torch.einsum("bhtc,hdc->bthd", weighted.reshape(b, heads, t, c), wv).reshape(b, t, heads * d)
        return att.out_proj(out + att.v_proj.bias.to(out.dtype))

    @staticmethod
    def _image_to_token(
        att: nn.Module, x: torch.Tensor, pe_q: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor
    ) -> torch.Tensor:
        """``x + att(q=x + pe, k=k_in, v=v_in)`` (the residual included) with the image tokens ``x`` (B, N, C)
        never projected."""
        b, t, _ = k_in.shape
        heads, d = att.num_heads, att.internal_dim // att.num_heads
        c = x.shape[-1]
        k = att.k_proj(k_in).reshape(b, t, heads, d) / math.sqrt(d)
        v = att.v_proj(v_in).reshape(b, t, heads, d)
        wq = att.q_proj.weight.reshape(heads, d, c).to(k.dtype)
        m = torch.einsum("hdc,bthd->bcht", wq, k).reshape(b, c, heads * t)
        pe_scores = torch.einsum("nhd,bthd->bnht", pe_q.reshape(-1, heads, d), k).reshape(b, -1, heads * t)
        scores = torch.baddbmm(pe_scores.to(x.dtype), x, m.to(x.dtype))
        attn = torch.softmax(scores.reshape(b, -1, heads, t), dim=-1).reshape(b, -1, heads * t)
        wo = att.out_proj.weight.reshape(c, heads, d).to(v.dtype)
        vw = torch.einsum("bthd,chd->bhtc", v, wo).reshape(b, heads * t, c)
        # each head's weights sum to 1, so the output bias spread over the heads' rows adds exactly the bias
        vw = (vw + att.out_proj.bias.to(vw.dtype) / heads).to(x.dtype)
        return torch.baddbmm(x, attn.to(x.dtype), vw)

    # -- the decoder -------------------------------------------------------------------------------------
    def transformer(self, embeddings: torch.Tensor, boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer: (mask-token outputs (B, K, C), image tokens (B, N, C))."""
        prompt_encoder, decoder = self.sam.prompt_encoder, self.sam.mask_decoder
        transformer = decoder.transformer
        b, c, h, w = embeddings.shape
        device_type = embeddings.device.type
        # under autocast the image tokens are cast once, not at every product
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else embeddings.dtype
        pe = self._pe(dtype)
        sparse, dense = prompt_encoder(points=None, boxes=boxes, masks=None)
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]).to(dtype)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse.expand(b, -1, -1).to(dtype)], 1)
        # (B, N, C) image tokens: the dense prompt added, the layout changed and the type cast in one pass
        x = torch.empty((b, h * w, c), dtype=dtype, device=embeddings.device)
        torch.add(embeddings.flatten(2).transpose(1, 2), dense[0, :, 0, 0].to(embeddings.dtype), out=x)
        queries = tokens
        for i, layer in enumerate(transformer.layers):
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + tokens
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)
            queries = layer.norm2(
                queries + self._token_to_image(layer.cross_attn_token_to_image, queries + tokens, x, pe[f"k{i}"])
            )
            queries = layer.norm3(queries + layer.mlp(queries))
            x = layer.norm4(
                self._image_to_token(layer.cross_attn_image_to_token, x, pe[f"q{i}"], queries + tokens, queries)
            )
        final = transformer.final_attn_token_to_image
        k = len(transformer.layers)
        queries = transformer.norm_final_attn(queries + self._token_to_image(final, queries + tokens, x, pe[f"k{k}"]))
        return queries[:, 2 : 1 + decoder.num_mask_tokens], x

    def upscale(
        self, mask_tokens: torch.Tensor, x: torch.Tensor, grid: tuple[int, int], cells: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Mask logits (K, 4 rows, 4 cols) of one image from its transformer outputs, on the embedding cells
        ``cells = (r0, r1, c0, c1)`` only (default all)."""
        decoder = self.sam.mask_decoder
        up1, norm, act1, up2, act2 = decoder.output_upscaling
        h, w = grid
        r0, r1, c0, c1 = cells if cells is not None else (0, h, 0, w)
        x = x.reshape(h, w, -1)[r0:r1, c0:c1]  # (rows, cols, C)
        rows, cols, c = x.shape
        w1 = up1.weight.permute(0, 2, 3, 1).reshape(c, -1).to(x.dtype)  # (C, 2*2*C/4): the 2x2 sub-pixels
        y = torch.addmm(up1.bias.to(x.dtype).repeat(4), x.reshape(-1, c), w1).reshape(rows * cols, 4, -1)
        y = act1(F.layer_norm(y, (y.shape[-1],), norm.weight.to(y.dtype), norm.bias.to(y.dtype), norm.eps))
        c2 = y.shape[-1]
        w2 = up2.weight.permute(0, 2, 3, 1).reshape(c2, -1).to(y.dtype)
        z = act2(torch.addmm(up2.bias.to(y.dtype).repeat(4), y.reshape(-1, c2), w2).reshape(rows * cols, 4, 4, -1))
        heads = decoder.output_hypernetworks_mlps[1:]
        hyper = torch.stack([head(mask_tokens[i]) for i, head in enumerate(heads)], dim=1)  # (C/8, K)
        masks = (z @ hyper.to(z.dtype)).float()  # (cells, s1, s2, K)
        masks = masks.reshape(rows, cols, 2, 2, 2, 2, -1).permute(6, 0, 2, 4, 1, 3, 5)
        return masks.reshape(-1, 4 * rows, 4 * cols)

    def masks(
        self,
        embeddings: torch.Tensor,
        boxes: torch.Tensor | None = None,
        cells: Sequence[Sequence[int] | None] | None = None,
    ) -> list[torch.Tensor]:
        """Mask logits of each image (image ``i`` with box ``i``), each (K, 4 * rows, 4 * cols) over its cells."""
        mask_tokens, x = self.transformer(embeddings, boxes)
        grid = tuple(embeddings.shape[2:])
        cells = cells if cells is not None else [None] * embeddings.shape[0]
        return [self.upscale(mask_tokens[i], x[i], grid, cells[i]) for i in range(embeddings.shape[0])]
