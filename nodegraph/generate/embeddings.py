"""Arithmetic on CLIP embeddings: interpolation on the sphere, DALL·E 2 text diffs and analogies."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation between unit vectors: sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    cos = (a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.acos(cos)
    sin = torch.sin(theta)
    out = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / sin
    # Nearly parallel vectors: sin θ ~ 0, where the linear path is the same path.
    return torch.where(sin.abs() < 1e-4, F.normalize((1 - t) * a + t * b, dim=-1), out)


def lerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Linear interpolation, projected back onto the unit sphere."""
    return F.normalize((1 - t) * F.normalize(a, dim=-1) + t * F.normalize(b, dim=-1), dim=-1)


def text_direction(source: Tensor, target: Tensor) -> Tensor:
    """DALL·E 2's text diff z_d = normalize(z_target − z_source) of two CLIP text embeddings."""
    return F.normalize(F.normalize(target, dim=-1) - F.normalize(source, dim=-1), dim=-1)


def analogy(base: Tensor, source: Tensor, target: Tensor, weight: float = 1.0) -> Tensor:
    """normalize(base + w·(target − source)): base moved by the difference between two embeddings.

    For a text diff, source and target are the prior's image embeddings of the two captions: unlike
    the raw text difference, that difference lies among image embeddings (CLIP keeps text and image
    embeddings apart), and w = 1 is a definite endpoint, the image with the caption's change made.
    """
    return F.normalize(F.normalize(base, dim=-1) + weight * (target - source), dim=-1)


def interpolate(a: Tensor, b: Tensor, ts: list[float], mode: str = "slerp") -> Tensor:
    """Embeddings for each t in ts, t-major: [len(ts) * B, D] for a and b of batch B (or 1)."""
    if mode not in ("slerp", "lerp"):
        raise ValueError(f"mode must be 'slerp' or 'lerp', got {mode!r}")
    fn = slerp if mode == "slerp" else lerp
    b_size = max(a.shape[0], b.shape[0])
    a, b = a.expand(b_size, -1), b.expand(b_size, -1)
    return torch.cat([fn(a, b, t) for t in ts])
