"""The DDPM UNet of ermongroup/ddim (Ho et al.'s architecture in PyTorch): the network behind the
CelebA-HQ 256x256 checkpoint that SDEdit and DiffusionCLIP use, and the ddim repository's CIFAR-10,
LSUN and CelebA models. Its checkpoints are flat state dicts (`conv_in.weight`,
`down.0.block.1.conv2.weight`, `mid.attn_1.q.weight`, `up.2.upsample.conv.weight`, ...).

Differences from the ADM family that change the numbers:

- timestep embedding [sin, cos] (sine first) with frequencies 10000^(-i/(half-1)), i < half;
- GroupNorm(32) with eps 1e-6; swish written as x·sigmoid(x);
- the time embedding is always added after the first conv (no scale-shift), through a swish;
- down-sampling pads right/bottom by one and uses a stride-2 3x3 conv without padding;
- attention is single-head with separate 1x1 q, k, v convolutions, scaled by C^(-1/2) after the product;
- the up path has num_res_blocks + 1 blocks per level; the last one of each level takes the skip from
  before that level's first block.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DDPMConfig:
    """The `model:` section of the ddim repository's YAML configs (plus the data resolution, which
    decides where attention goes)."""

    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    resamp_with_conv: bool = True

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DDPMConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10_000) / (half - 1))).to(t.device)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class _GroupNorm(nn.GroupNorm):
    """GroupNorm(32, eps 1e-6) computed in float32, so half-precision runs keep float32 norm weights."""

    def __init__(self, channels: int):
        super().__init__(32, channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _norm(channels: int) -> nn.GroupNorm:
    return _GroupNorm(channels)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, cout)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = h + self.temb_proj(_swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, -1).transpose(1, 2)  # [B, N, C]
        k = self.k(h).reshape(b, c, -1)  # [B, C, N]
        v = self.v(h).reshape(b, c, -1)
        weights = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)  # [B, query, key]
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, hgt, wid)
        return x + self.proj_out(out)


class _Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as the TF original
        return F.avg_pool2d(x, 2, 2)


class _Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class _Level(nn.Module):
    """One resolution: `block` (ResnetBlocks), `attn` (one per block where the resolution has attention),
    and a `downsample` / `upsample` unless it is the last level of its path."""

    def __init__(self, blocks: list[ResnetBlock], attn: list[AttnBlock], resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        if resample is not None:
            setattr(self, name, resample)


class DDPMUNet(nn.Module):
    def __init__(self, cfg: DDPMConfig):
        super().__init__()
        self.cfg = cfg
        ch, mults, temb_ch = cfg.ch, cfg.ch_mult, 4 * cfg.ch
        levels = len(mults)
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        in_mult = (1, *mults)
        res = cfg.resolution
        self.down = nn.ModuleList()
        block_in = ch
        for i in range(levels):
            block_in, block_out = ch * in_mult[i], ch * mults[i]
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, temb_ch, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            down = _Downsample(block_in, cfg.resamp_with_conv) if i < levels - 1 else None
            if down is not None:
                res //= 2
            self.down.append(_Level(blocks, attn, down, "downsample"))
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, temb_ch, cfg.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, temb_ch, cfg.dropout)
        up_levels: list[_Level] = []
        for i in reversed(range(levels)):
            block_out = ch * mults[i]
            blocks, attn = [], []
            for j in range(cfg.num_res_blocks + 1):
                skip = ch * (in_mult[i] if j == cfg.num_res_blocks else mults[i])
                blocks.append(ResnetBlock(block_in + skip, block_out, temb_ch, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            up = _Upsample(block_in, cfg.resamp_with_conv) if i > 0 else None
            if up is not None:
                res *= 2
            up_levels.insert(0, _Level(blocks, attn, up, "upsample"))  # up[i] is level i, as in the checkpoints
        self.up = nn.ModuleList(up_levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂ [B, out_ch, H, W] for x [B, in_channels, H, W] at timesteps t [B] (ints or floats)."""
        cfg, out_dtype = self.cfg, x.dtype
        dense0, dense1 = self.temb.dense
        dtype = self.conv_in.weight.dtype  # float32, or half precision after load_real(dtype=...)
        temb = dense1(_swish(dense0(sinusoidal_embedding(t, cfg.ch).to(dtype))))
        hs = [self.conv_in(x.to(dtype))]
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if len(level.attn):
                    h = level.attn[j](h)
                hs.append(h)
            if hasattr(level, "downsample"):
                hs.append(level.downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h))).to(out_dtype)


__all__ = ["DDPMConfig", "DDPMUNet", "sinusoidal_embedding"]
