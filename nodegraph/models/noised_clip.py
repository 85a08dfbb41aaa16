"""Noised CLIP image tower (GLIDE): embeds a noised image x_t at timestep t into the text space of a
frozen CLIP, so CLIP guidance can take gradients on x_t directly instead of on an x̂0 estimate.

A small ViT: patch embedding, a learned position embedding, and the timestep embedding as an extra
token; the class token's output is projected to the CLIP embedding width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nodegraph.models.prior import Block
from nodegraph.models.unet import timestep_embedding


@dataclass
class NoisedClipConfig:
    image_size: int = 32
    patch_size: int = field(default=4, metadata={"min": 1})
    width: int = 128
    layers: int = field(default=4, metadata={"max": 256})
    heads: int = field(default=4, metadata={"min": 1, "max": 256})
    embed_dim: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


class NoisedImageTower(nn.Module):
    def __init__(self, cfg: NoisedClipConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.patch = nn.Conv2d(3, w, cfg.patch_size, stride=cfg.patch_size)
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.pos = nn.Parameter(torch.randn(n + 2, w) * 0.02)
        self.cls = nn.Parameter(torch.randn(w) * 0.02)
        self.time_in = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(Block(w, cfg.heads, 0.0) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(w)
        self.proj = nn.Linear(w, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), CLIP's initial temperature

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Unnormalised embedding [B, D] of x_t ([B, 3, S, S] in the diffusion's space) at timesteps t."""
        b = x.shape[0]
        if x.shape[-1] != self.cfg.image_size:
            x = F.interpolate(x, size=(self.cfg.image_size,) * 2, mode="bilinear", antialias=True)
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        time = self.time_in(timestep_embedding(t, self.cfg.width))[:, None]
        seq = torch.cat([self.cls.expand(b, 1, -1), time, tokens], dim=1) + self.pos
        for block in self.blocks:
            seq = block(seq, None)
        return self.proj(self.ln(seq[:, 0]))
