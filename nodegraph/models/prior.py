"""The DALL·E 2 diffusion prior: text -> CLIP image embedding.

A causal transformer reads [text tokens..., text embedding, timestep, noised image embedding, query]
and the output at the final (query) position is the prediction of the clean image embedding x0
(Ramesh et al. 2022, sec. 2.2). Embeddings live in a normalised space: the unit-norm CLIP image
embedding minus a per-dimension mean, divided by a per-dimension std, both measured on the
training data and stored with the weights as buffers. Classifier-free guidance works through
learned null vectors that replace the text tokens and the text embedding when text is off.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nodegraph.models.unet import timestep_embedding


@dataclass
class PriorConfig:
    clip_dim: int = 128
    text_width: int = 128
    context_length: int = 32
    width: int = 256
    layers: int = field(default=4, metadata={"max": 256})
    heads: int = field(default=4, metadata={"min": 1, "max": 256})
    dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, n, w)
        x = x + self.drop(self.proj(a))
        return x + self.drop(self.mlp(self.ln2(x)))


class PriorTransformer(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.text_tokens_in = nn.Linear(cfg.text_width, w)
        self.text_embed_in = nn.Linear(cfg.clip_dim, w)
        self.time_in = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.x_in = nn.Linear(cfg.clip_dim, w)
        self.query = nn.Parameter(torch.randn(w) * 0.02)
        n = cfg.context_length + 4
        self.pos = nn.Parameter(torch.randn(n, w) * 0.02)
        self.null_text_tokens = nn.Parameter(torch.zeros(cfg.text_width))
        self.null_text_embed = nn.Parameter(torch.zeros(cfg.clip_dim))
        self.blocks = nn.ModuleList(Block(w, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln_out = nn.LayerNorm(w)
        self.out = nn.Linear(w, cfg.clip_dim)
        self.register_buffer("causal", torch.ones(n, n, dtype=torch.bool).tril(), persistent=False)
        # Statistics of the unit-norm image embeddings of the training data.
        self.register_buffer("embed_mean", torch.zeros(cfg.clip_dim))
        self.register_buffer("embed_std", torch.ones(cfg.clip_dim))

    def normalize(self, image_embed: torch.Tensor) -> torch.Tensor:
        """Unit-norm CLIP image embedding -> the prior's diffusion space."""
        return (F.normalize(image_embed, dim=-1) - self.embed_mean) / self.embed_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The prior's diffusion space -> unit-norm CLIP image embedding."""
        return F.normalize(z * self.embed_std + self.embed_mean, dim=-1)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        text_embed: torch.Tensor,
        text_on: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: noised normalised image embedding [B, D]; returns the predicted clean one [B, D].

        `text_on` [B] (default all on) swaps in the learned null text for classifier-free guidance.
        """
        b, cfg = x.shape[0], self.cfg
        on = text_on.bool() if text_on is not None else torch.ones(b, dtype=torch.bool, device=x.device)
        tokens = torch.where(on[:, None, None], text_tokens, self.null_text_tokens)
        embed = torch.where(on[:, None], text_embed, self.null_text_embed)
        # Without text only the null token at position 0 is visible, so every row attends somewhere.
        keep = torch.where(on[:, None], text_mask.bool(), torch.arange(text_mask.shape[1], device=x.device) == 0)
        seq = torch.cat(
            [
                self.text_tokens_in(tokens),
                self.text_embed_in(F.normalize(embed, dim=-1) * math.sqrt(cfg.clip_dim))[:, None],
                self.time_in(timestep_embedding(t, cfg.width))[:, None],
                self.x_in(x)[:, None],
                self.query.expand(b, 1, -1),
            ],
            dim=1,
        ) + self.pos
        visible = torch.cat([keep, keep.new_ones(b, 4)], dim=1)  # [B, N] keys that may be attended to
        mask = (self.causal[None] & visible[:, None, :])[:, None]  # [B, 1, N, N]
        for block in self.blocks:
            seq = block(seq, mask)
        return self.out(self.ln_out(seq[:, -1]))
