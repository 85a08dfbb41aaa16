"""Render Shapes World scenes exactly as ../shared/SHAPES_WORLD.md fixes them.

All scenes of a batch are rendered at once: every shape's coverage is computed on a supersampled
grid of sample points (pixel centres at x + 0.5) and area-averaged, which anti-aliases the edges.
32x32 images are the 64x64 render downsampled by 2x2 area averaging; 128x128 scales coordinates by 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodegraph.world.scene import BASE_RES, KINDS, PALETTE, Scene

_KIND_INDEX = {k: i for i, k in enumerate(KINDS)}


def shape_masks(
    px: torch.Tensor, py: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inside tests of the four kinds (KINDS order) at sample points (px, py); arguments broadcast.

    The one definition of the world's geometry: the renderer and the scorer's templates both use it."""
    dx, dy, h = (px - cx).abs(), py - cy, s / 2
    ady = dy.abs()
    square = (dx <= h) & (ady <= h)
    circle = (px - cx) ** 2 + dy**2 <= h**2
    # Apex at the top (cy - s/2), base at cy + s/2: the half-width grows by 1/2 per unit of depth.
    top = cy - h
    triangle = (py >= top) & (py <= cy + h) & (dx <= (py - top) / 2)
    bar = s / 6
    cross = ((dx <= h) & (ady <= bar)) | ((dx <= bar) & (ady <= h))
    return square, circle, triangle, cross


def _coverage(
    kind: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, s: torch.Tensor, res: int, ss: int
) -> torch.Tensor:
    """Fraction of each pixel covered by each shape: [N, res, res] floats in [0, 1].

    Coordinates (cx, cy, s) are in 64x64 canvas units; the sample grid is scaled to that canvas.
    """
    n_side = res * ss
    scale = BASE_RES / res
    pts = (torch.arange(n_side, dtype=torch.float32) + 0.5) / ss * scale
    px = pts.view(1, 1, n_side)
    py = pts.view(1, n_side, 1)
    cx, cy, s = cx.view(-1, 1, 1), cy.view(-1, 1, 1), s.view(-1, 1, 1)
    masks = torch.stack(shape_masks(px, py, cx, cy, s), dim=1)  # [N, 4, S, S]
    inside = masks.gather(1, kind.view(-1, 1, 1, 1).expand(-1, 1, n_side, n_side)).squeeze(1)
    return F.avg_pool2d(inside.float().unsqueeze(1), ss).squeeze(1)


def render(scenes: list[Scene], res: int = 64, antialias: bool = True) -> torch.Tensor:
    """Render scenes to float RGB in [0, 255], shape [B, 3, res, res] (res in 32, 64, 128)."""
    if res == 32:
        return F.avg_pool2d(render(scenes, 64, antialias), 2)
    if res not in (64, 128):
        raise ValueError(f"Shapes World renders at 32, 64 or 128 pixels, not {res}")
    ss = 4 if antialias else 1
    b = len(scenes)
    bg = torch.tensor([PALETTE[sc.background] for sc in scenes], dtype=torch.float32)
    img = bg.view(b, 3, 1, 1).expand(b, 3, res, res).clone()
    owners, kinds, cxs, cys, sides, colors = [], [], [], [], [], []
    for i, sc in enumerate(scenes):
        for sh in sc.shapes:
            cx, cy = sh.centre()
            owners.append(i)
            kinds.append(_KIND_INDEX[sh.kind])
            cxs.append(cx)
            cys.append(cy)
            sides.append(sh.side())
            colors.append(PALETTE[sh.color])
    if not owners:
        return img
    cov = _coverage(
        torch.tensor(kinds), torch.tensor(cxs), torch.tensor(cys), torch.tensor(sides), res, ss
    ).unsqueeze(1)  # [N, 1, res, res]
    col = torch.tensor(colors, dtype=torch.float32).view(-1, 3, 1, 1)
    owner = torch.tensor(owners)
    # Shapes of one scene never overlap, so compositing each over the background is order-free.
    for i in range(len(owners)):
        b_i = owner[i]
        img[b_i] = img[b_i] * (1 - cov[i]) + col[i] * cov[i]
    return img


def render_uint8(scenes: list[Scene], res: int = 64, antialias: bool = True) -> torch.Tensor:
    return render(scenes, res, antialias).round().clamp(0, 255).to(torch.uint8)


def to_model_range(img255: torch.Tensor) -> torch.Tensor:
    """[0, 255] -> [-1, 1], the range images have on graph sockets."""
    return img255 / 127.5 - 1.0
