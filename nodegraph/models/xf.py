"""The transformer GLIDE encodes captions with and Karlo's prior denoises with (OpenAI's CLIP-style
pre-norm blocks), with the published parameter names: `resblocks.N.attn.c_qkv`, `.attn.c_proj`, `.ln_1`,
`.mlp.c_fc`, `.mlp.c_proj`, `.ln_2`.

The fused qkv projection is laid out per head: for head h the slice [h·3d, (h+1)·3d) holds its query,
key and value, d channels each. q and k are both scaled by d^(-1/4) before their product; the MLP uses
the exact (erf) GELU; layer norms compute in float32 and return the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (its weights stay float32 in half-precision models)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class MultiheadAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} cannot be split into {heads} heads")
        self.heads = heads
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, W]; bias [B, T, T] additive logits (0 / -inf) or None for full attention."""
        b, n, w = x.shape
        d = w // self.heads
        q, k, v = self.c_qkv(x).view(b, n, self.heads, 3 * d).split(d, dim=-1)
        scale = d**-0.25
        logits = torch.einsum("bthd,bshd->bhts", q * scale, k * scale)
        if bias is not None:
            logits = logits + bias[:, None].to(logits.dtype)
        weights = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
        return self.c_proj(torch.einsum("bhts,bshd->bthd", weights, v).reshape(b, n, w))


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = MLP(width)
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), bias)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, bias)
        return x


__all__ = ["LayerNorm", "MLP", "MultiheadAttention", "ResidualAttentionBlock", "Transformer"]
