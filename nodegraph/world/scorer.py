"""Score an image against its prompt, as ../shared/SHAPES_WORLD.md "Scoring an image" reads it.

Reading, on the 64x64 canvas (32x32 images upscaled by repeating pixels, 128x128 ones 2x2-averaged):
- background: the palette colour nearest the per-channel median of the 2-pixel border;
- foreground: pixels farther than FG_THRESHOLD from it whose coverage (how far they lie along the line
  from the background to the palette colour that best explains them) exceeds FG_COVERAGE;
- shapes: its 4-connected regions of at least MIN_AREA pixels (smaller ones are specks); a region
  spanning more than MAX_EXTENT is clutter, not a shape;
- colour: the palette colour nearest the median pixel of the region's more saturated half;
- size: small or large by the side of the box around the region's coverage, nearest 14 or 26;
- kind: the best of the four templates drawn with render.py's own geometry in the bounding square
  that gives each kind the region's area and centroid (soft IoU on the image's own pixel grid);
- position: the nearest position centre to the centroid, allowing for the triangle's centroid
  sitting s/6 below its box centre.
Why each choice: see the constants and `_foreground`, `_fit_kinds`, `_position`, `score`.

Image conventions: torch uint8 is [0, 255]; torch float is [-1, 1] (the graph-socket convention, as
`render.to_model_range` makes it); numpy must be uint8 HWC (or BHWC); PIL images are converted to RGB.
A float tensor far outside [-1, 1] raises instead of being guessed at: a [0, 255] float image read as
[-1, 1] would silently score as garbage.

Everything is batched in torch (scipy is not a dependency): connected components by hooking and
pointer jumping over the foreground pixels, per-region medians by one sort, templates per region.
About 2 CPU-seconds per 1000 images on one thread.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nodegraph.world.captions import PromptSpec, ShapeSpec, parse_prompt
from nodegraph.world.render import _KIND_INDEX, shape_masks
from nodegraph.world.scene import COLORS, KINDS, PAIRS, PALETTE, POSITIONS, SIZES

_PALETTE = torch.tensor([PALETTE[c] for c in COLORS], dtype=torch.float32)  # [8, 3]
# Closest palette pair is yellow/orange at ~85.6. Half of it is the widest margin both ways: a pixel
# nearer than this to the background colour cannot be a full-coverage pixel of any other palette
# colour, and sigma=10 noise on a background pixel exceeds it with probability ~1e-3 (isolated specks).
MIN_PALETTE_DISTANCE = min(float(torch.dist(a, b)) for a, b in itertools.combinations(_PALETTE, 2))
FG_THRESHOLD = MIN_PALETTE_DISTANCE / 2
# A far pixel is foreground when its estimated coverage exceeds this. Not 1/2: every canonical 32x32
# shape has its edges on half pixels (coverage exactly 1/2, 1/4 at corners), where 1/2 would be a coin
# toss decided by uint8 rounding; 0.6 stays clear of those and of noise on full pixels.
FG_COVERAGE = 0.6
# The size cue is the box around coverage > 1/4, fringe included: at 32x32 a large triangle's thin
# corners fall short of FG_COVERAGE and its foreground box can shrink from 26 to 20, the midpoint.
SIZE_COVERAGE = 0.25
# A colour within this distance of a palette colour is unambiguously that colour (used for validity).
COLOR_TOLERANCE = MIN_PALETTE_DISTANCE / 2
# The smallest world shape is a small triangle with s = 14 - 2: area 72 px. A third of that keeps every
# real shape (also blocky 32x32 ones) and drops noise specks and stray anti-aliasing fringes.
MIN_AREA = 24
# The largest world shape spans 28 px (+1 for fringe). A region spanning far more is not a shape (e.g.
# the one region that saturated noise makes); it is clutter, which fails exactness and validity.
MAX_EXTENT = 40
# A shape is one flat colour, so the saturated half of its pixels sits within sigma-sized noise of its
# median colour (clean renders: 0; sigma = 10 noise: ~16). Pure-noise regions spread over ~100.
MAX_SPREAD = COLOR_TOLERANCE
# For `is_valid_scene`: a shape must look like a world shape. Correct renders at extreme jitter have
# best IoU >= 0.73 (32x32) / 0.8 (64, sigma = 10 noise) and extents 10..18 (small) and 22..30 (large)
# at 32x32, 12..18 and 24..29 at 64; the bounds leave room for slightly sloppy samples, and reject
# the ambiguous middle (20) and anything far from either size.
VALID_MIN_IOU = 0.6
VALID_EXTENTS = ((8, 19), (21, 33))

_SIZE_NAMES = tuple(SIZES)
_SIZE_VALUES = torch.tensor([SIZES[s] for s in _SIZE_NAMES])
_POS_NAMES = tuple(POSITIONS)
_POS_CENTRES = torch.tensor([POSITIONS[p] for p in _POS_NAMES])  # [5, 2] (x, y)
ATTRIBUTES = ("kind", "color", "size", "position", "background")


# ----------------------------------------------------------------------------------------- inputs
def _to_batch(images: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Any accepted image or batch -> (float32 [B, 3, 64, 64] in [0, 255], was-32x32 flags [B])."""
    if isinstance(images, list | tuple):
        if not images:
            return torch.zeros(0, 3, 64, 64), torch.zeros(0, dtype=torch.bool)
        parts = [_to_batch(im) for im in images]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if isinstance(images, torch.Tensor):
        x = images.detach().cpu()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a torch image [3,H,W] or [B,3,H,W], got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float()
        elif x.is_floating_point():
            # Samplers overshoot [-1, 1] a little (clamped below); [0, 255] floats are caught here, while
            # [0, 1] floats cannot be told apart, which is why the convention is fixed and documented.
            if x.numel() and float(x.abs().max()) > 1.5:
                raise ValueError(
                    "float tensors must be in [-1, 1] (the socket convention); this one reaches "
                    f"{float(x.abs().max()):.1f}. Pass uint8 for [0, 255] images."
                )
            # NaN (a diverged sampler) becomes mid-grey: that image fails, the batch is still scored.
            x = (torch.nan_to_num(x.float()).clamp(-1, 1) + 1) * 127.5
        else:
            raise ValueError(f"unsupported tensor dtype {x.dtype}; use uint8 or float")
    elif isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[-1] != 3:
            raise ValueError(f"numpy images must be uint8 HWC or BHWC, got {images.dtype} {images.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images)).float()
        x = (x.unsqueeze(0) if x.dim() == 3 else x).permute(0, 3, 1, 2)
    elif hasattr(images, "convert") and hasattr(images, "size"):  # PIL.Image, without importing PIL
        x = torch.from_numpy(np.asarray(images.convert("RGB"), dtype=np.uint8).copy()).float()
        x = x.permute(2, 0, 1).unsqueeze(0)
    else:
        raise TypeError(f"cannot read an image from {type(images).__name__}")
    h, w = x.shape[-2:]
    if h != w or h not in (32, 64, 128):
        raise ValueError(f"Shapes World images are 32, 64 or 128 px square, got {h}x{w}")
    if h == 32:
        # Nearest keeps every pixel's colour (so medians match the 64 render) and doubles extents
        # exactly; bilinear would add a fringe of mixed colours around blocky small shapes.
        x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    elif h == 128:
        x = F.avg_pool2d(x, 2)  # the 128 render is the 64 one at twice the scale
    return x, torch.full((x.shape[0],), h == 32)


def _nearest_palette(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., 3] colours -> (palette index, distance to it)."""
    d = torch.cdist(rgb.reshape(-1, 3).float(), _PALETTE)
    dist, idx = d.min(dim=1)
    return idx.view(rgb.shape[:-1]), dist.view(rgb.shape[:-1])


# ---------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class DetectedShape:
    """One foreground region read as a shape. Geometry is in 64x64 pixels; bbox is (x0, y0, x1, y1),
    inclusive pixel indices."""

    kind: str
    color: str
    size: str
    position: str
    area: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    extent: int  # side of the box around its coverage > SIZE_COVERAGE (fringe included): the size cue
    iou: float  # soft IoU with the chosen kind's template; low means "not much like any world shape"
    color_distance: float  # from its median pixel to the nearest mix of background and chosen colour


@dataclass(frozen=True)
class ParsedScene:
    background: str
    background_distance: float  # border median to the chosen palette colour
    shapes: tuple[DetectedShape, ...]
    clutter: int  # regions too large to be a world shape (not in `shapes`, but not ignored either)


@dataclass(frozen=True)
class AttributeCheck:
    shape: int | None  # index into the prompt's shapes; None for the background
    attribute: str  # one of ATTRIBUTES
    expected: str
    found: str | None  # None: the prompt's shape has no matching shape in the image
    correct: bool


@dataclass(frozen=True)
class PromptScore:
    checks: tuple[AttributeCheck, ...]
    n_correct: int
    n_named: int
    n_extra: int  # detected shapes (and clutter regions) that no prompt shape accounts for
    all_named_right: bool  # the spec's literal "every named attribute right"
    exact: bool  # all_named_right and n_extra == 0 (see `score`)


@dataclass(frozen=True)
class Report:
    n_prompts: int
    attribute_accuracy: float
    exact_rate: float
    all_named_rate: float
    per_attribute: dict[str, float]  # accuracy per attribute; nan where no prompt names it
    counts: dict[str, tuple[int, int]]  # attribute -> (correct, named)


# ---------------------------------------------------------------------------------------- reading
def _foreground(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images [B, 3, 64, 64] -> (background palette index [B], its distance, foreground [B, 64, 64]).

    An anti-aliased edge pixel is bg + a * (colour - bg) with a its coverage. A fixed distance cut
    would keep a > 0.2 for high-contrast pairs and fatten thin cross bars by a pixel a side, so a pixel
    is foreground when it is far from the background (> FG_THRESHOLD) *and* its coverage a along the
    line from the background to the palette colour that best explains it exceeds FG_COVERAGE: the
    region is then the shape itself, whatever the contrast."""
    b = x.shape[0]
    border = torch.ones(64, 64, dtype=torch.bool)
    border[2:-2, 2:-2] = False
    med = x[:, :, border].median(dim=2).values  # [B, 3]; shapes may touch the border, never half of it
    bg, bg_dist = _nearest_palette(med)
    planes = (x - _PALETTE[bg].view(b, 3, 1, 1)).flatten(2)  # [B, 3, HW]: channel planes, contiguous
    fg = (planes[:, 0] ** 2 + planes[:, 1] ** 2 + planes[:, 2] ** 2).flatten() > FG_THRESHOLD**2
    far = fg.nonzero().squeeze(1)  # only far pixels need the (costlier) line test
    v = torch.stack([planes[:, c].flatten()[far] for c in range(3)], dim=1)  # [Q, 3]
    alpha = torch.zeros(far.numel())
    bg_of = bg[far // 4096]
    for k in bg_of.unique().tolist():
        sel = bg_of == k
        u = _PALETTE - _PALETTE[k]  # [8, 3]: the lines from this background to each palette colour
        norm = u.norm(dim=1).clamp(min=1)  # the background's own line is 0: it never wins
        proj = v[sel] @ (u / norm.unsqueeze(1)).T  # [Q_k, 8]: how far v reaches along each line
        # The best-explaining line is the one v projects farthest along (least residual).
        best, line = proj.max(dim=1)
        alpha[sel] = best / norm[line]
    fg[far] = alpha > FG_COVERAGE
    return bg, bg_dist, fg.view(b, 64, 64)


def _label(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """4-connected components of a mask [B, H, W] -> (flat indices of its pixels [P], component of
    each [P] as the smallest flat index in it). Works on the foreground pixels and their right/down
    edges only, by hooking and pointer jumping (Shiloach-Vishkin style): a handful of vectorised
    passes, where propagating labels one neighbour per pass would take as many as a region is long."""
    b, hh, ww = mask.shape
    flat = mask.flatten()
    pix = flat.nonzero().squeeze(1)
    where = torch.full((flat.numel(),), -1, dtype=torch.long)
    where[pix] = torch.arange(pix.numel())
    col = pix % ww
    row = (pix // ww) % hh
    right = pix[col < ww - 1] + 1
    down = pix[row < hh - 1] + ww
    src = torch.cat([pix[col < ww - 1], pix[row < hh - 1]])
    dst = torch.cat([right, down])
    ok = flat[dst]
    a, c = where[src[ok]], where[dst[ok]]
    lab = torch.arange(pix.numel())
    while True:
        la, lc = lab[a], lab[c]
        if torch.equal(la, lc):
            return pix, pix[lab]
        # Hook the larger root of every edge under the smaller one, then compress paths fully. Labels
        # only ever point to smaller indices in the same component, so each ends at its minimum.
        lab = lab.scatter_reduce(0, torch.maximum(la, lc), torch.minimum(la, lc), "amin")
        while True:
            nxt = lab[lab]
            if torch.equal(nxt, lab):
                break
            lab = nxt


def _region_median(values: torch.Tensor, rid: torch.Tensor, counts: torch.Tensor, top: int) -> torch.Tensor:
    """Per-region lower median of integers in [0, top): values [P], region ids rid [P] with counts [R]
    (each >= 1) -> [R]. One sort of region-major keys does every region at once."""
    order = torch.sort(rid * top + values).values
    starts = torch.cumsum(counts, 0) - counts
    return order[starts + (counts - 1) // 2] - torch.arange(counts.numel()) * top


# Area / s^2 and centroid depth below the box centre / s, per kind (KINDS order), from the geometry.
_KIND_AREA = torch.tensor([1.0, math.pi / 4, 0.5, 5 / 9])
_KIND_DROP = torch.tensor([0.0, 0.0, 1 / 6, 0.0])
_FIT_SS = 4  # template sub-samples per 64x64 pixel side, as the renderer anti-aliases


def _fit_kinds(
    x: torch.Tensor, bg_rgb: torch.Tensor, owner: torch.Tensor, img: torch.Tensor, x0: torch.Tensor,
    y0: torch.Tensor, ext: torch.Tensor, rgb: torch.Tensor, coarse: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Overlap of each region with the four templates -> (soft IoU [R, 4], coverage centroid x, y [R],
    each kind's side s [R, 4], the side of the box around coverage > SIZE_COVERAGE [R]).

    A region's pixel bbox is only good to +-1 px, and at 32x32 a small shape is 6-8 px across, where
    one pixel decides between a square and a circle. So each region's coverage map a (its pixels and
    their one-pixel fringe, as fractions along the line from the background to its median colour) fixes
    the box instead: for each kind, the bounding square whose template has the region's area and
    centroid. Templates are drawn with render.py's geometry and anti-aliased on the image's own grid
    (32x32 ones averaged 2x2, as that render is), and compared by soft IoU = sum min / sum max, whose
    union is 2A - intersection because every template has area A by construction. A right template
    reproduces a clean render almost exactly; noise and the sub-sampling cost a few per cent."""
    r = img.numel()
    iou, cx, cy, side = torch.zeros(r, 4), torch.zeros(r), torch.zeros(r), torch.zeros(r, 4)
    span = torch.zeros(r, dtype=torch.long)
    win = (ext + 4 + 7) // 8 * 8  # the region, its fringe and a pixel to spare, in buckets of 8
    for e in win.unique().tolist():
        g = (win == e).nonzero().squeeze(1)
        ox, oy = x0[g] - 2, y0[g] - 2  # even for 32x32 images, whose pixels are 2x2 blocks at even x
        ar = torch.arange(e)
        gx, gy = ox.view(-1, 1, 1) + ar.view(1, 1, -1), oy.view(-1, 1, 1) + ar.view(1, -1, 1)
        canvas = (gx >= 0) & (gx < 64) & (gy >= 0) & (gy < 64)
        flat = img[g].view(-1, 1, 1) * 4096 + gy.clamp(0, 63) * 64 + gx.clamp(0, 63)  # [G, e, e]
        who = owner[flat]
        mine = who == g.view(-1, 1, 1)
        fringe = F.max_pool2d(mine.float().unsqueeze(1), 3, 1, 1).squeeze(1) > 0
        support = fringe & canvas & ((who < 0) | mine)
        p = torch.stack([x[:, c].flatten()[flat] for c in range(3)], dim=-1) - bg_rgb[g].view(-1, 1, 1, 3)
        u = rgb[g] - bg_rgb[g]
        a = ((p * u.view(-1, 1, 1, 3)).sum(-1) / u.pow(2).sum(-1).clamp(min=1).view(-1, 1, 1)).clamp(0, 1)
        a = a * support
        seen = a > SIZE_COVERAGE
        xs_, ys_ = torch.where(seen, gx, 999), torch.where(seen, gy, 999)
        xe_, ye_ = torch.where(seen, gx, -999), torch.where(seen, gy, -999)
        span[g] = torch.maximum(xe_.amax((1, 2)) - xs_.amin((1, 2)), ye_.amax((1, 2)) - ys_.amin((1, 2))) + 1
        area = a.sum((1, 2)).clamp(min=1)
        cx[g] = (a * (gx + 0.5)).sum((1, 2)) / area
        cy[g] = (a * (gy + 0.5)).sum((1, 2)) / area
        s = (area.view(-1, 1) / _KIND_AREA).sqrt()  # [G, 4]
        side[g] = s
        pts = (torch.arange(e * _FIT_SS) + 0.5) / _FIT_SS
        px = (ox.view(-1, 1) + pts).view(-1, 1, 1, e * _FIT_SS)
        py = (oy.view(-1, 1) + pts).view(-1, 1, e * _FIT_SS, 1)
        kx = cx[g].view(-1, 1, 1, 1)
        ky = (cy[g].view(-1, 1) - _KIND_DROP * s).view(-1, 4, 1, 1)
        masks = shape_masks(px, py, kx, ky, s.view(-1, 4, 1, 1))  # per mask kind: [G, 4 hyps, S, S]
        inside = torch.stack([masks[k][:, k] for k in range(4)], dim=1).float()  # kind k as kind k
        t = F.avg_pool2d(inside, _FIT_SS)  # [G, 4, e, e] coverage on the 64x64 grid
        c = coarse[g]
        if c.any():
            t[c] = F.avg_pool2d(t[c], 2).repeat_interleave(2, 2).repeat_interleave(2, 3)
        inter = torch.minimum(t, a.unsqueeze(1)).sum((2, 3))
        iou[g] = inter / (2 * area.view(-1, 1) - inter)
    return iou, cx, cy, side, span


def _position(cx: torch.Tensor, cy: torch.Tensor, kind: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Nearest position, judged by the centroid against where that kind's centroid sits when drawn at
    each position centre. For square, circle and cross that is the centre itself; a triangle's centroid
    is s/6 below its box centre, which with +-3 px jitter would leave a large triangle only 1/3 px from
    the center/bottom midline. Comparing like with like keeps the full 8 - 3 = 5 px margin for all."""
    tri = (kind == _KIND_INDEX["triangle"]).float() * side / 6
    pts = torch.stack([cx, cy - tri], dim=1)
    return torch.cdist(pts, _POS_CENTRES).argmin(dim=1)


def read_scenes(images: object) -> list[ParsedScene]:
    """Read a batch (a [B,3,H,W] tensor, BHWC uint8 array, or a list of single images)."""
    x, coarse = _to_batch(images)
    b = x.shape[0]
    bg, bg_dist, fg = _foreground(x)
    pix, comp = _label(fg)
    labels, rid, counts = torch.unique(comp, return_inverse=True, return_counts=True)
    img_of = labels // (64 * 64)
    ys, xs = (pix // 64) % 64, pix % 64
    r = labels.numel()
    x0 = torch.zeros(r, dtype=torch.long).scatter_reduce(0, rid, xs, "amin", include_self=False)
    x1 = torch.zeros(r, dtype=torch.long).scatter_reduce(0, rid, xs, "amax", include_self=False)
    y0 = torch.zeros(r, dtype=torch.long).scatter_reduce(0, rid, ys, "amin", include_self=False)
    y1 = torch.zeros(r, dtype=torch.long).scatter_reduce(0, rid, ys, "amax", include_self=False)
    extent = torch.maximum(x1 - x0, y1 - y0) + 1

    # The median pixel of each region's more saturated half (distance from the background at least the
    # region's median): a small 32x32 cross is mostly anti-aliased edge, whose median is a mix of shape
    # and background, which can land nearer another palette colour (70% red on white is nearly orange).
    rgb = torch.stack([x[:, c].flatten()[pix] for c in range(3)], dim=1)  # [P, 3], in rid's order
    dist = (rgb - _PALETTE[bg[pix // 4096]]).norm(dim=1).round().long()  # < 1024
    core = dist >= _region_median(dist, rid, counts, 1024)[rid]
    core_counts = torch.bincount(rid[core], minlength=r)
    med = torch.stack(
        [_region_median(rgb[core, c].round().long(), rid[core], core_counts, 256) for c in range(3)], 1
    )
    color, _ = _nearest_palette(med.float())
    # For validity: how far the median pixel is from every mix of background and chosen colour, so a
    # clean but tiny 32x32 shape, whose best pixels are still part background, counts as clean.
    bg_px = _PALETTE[bg[img_of]]
    line = _PALETTE[color] - bg_px
    t = ((med - bg_px) * line).sum(1) / line.pow(2).sum(1).clamp(min=1)
    color_dist = (med - bg_px - t.clamp(0, 1).unsqueeze(1) * line).norm(dim=1)
    spread_px = (rgb[core] - med[rid[core]]).norm(dim=1).round().long().clamp(max=1023)
    spread = _region_median(spread_px, rid[core], core_counts, 1024)

    big = counts >= MIN_AREA
    keep = big & (extent <= MAX_EXTENT) & (spread <= MAX_SPREAD)
    clutter = torch.zeros(b, dtype=torch.long).index_add(0, img_of, (big & ~keep).long())

    kept = keep.nonzero().squeeze(1)
    owner = torch.full((b * 4096,), -1, dtype=torch.long)  # pixel -> index in kept, or -1
    remap = torch.full((r,), -1, dtype=torch.long)
    remap[kept] = torch.arange(kept.numel())
    owner[pix] = remap[rid]
    iou, ccx, ccy, sides, span = _fit_kinds(
        x, _PALETTE[bg[img_of[kept]]], owner, img_of[kept], x0[kept], y0[kept], extent[kept], med[kept].float(),
        coarse[img_of[kept]],
    )
    best_iou, kind = iou.max(dim=1) if kept.numel() else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
    pos = _position(ccx, ccy, kind, sides.gather(1, kind.view(-1, 1)).squeeze(1))
    size = (span.float().unsqueeze(1) - _SIZE_VALUES).abs().argmin(dim=1)

    shapes: list[list[DetectedShape]] = [[] for _ in range(b)]
    for j, ri in enumerate(kept.tolist()):
        shapes[int(img_of[ri])].append(
            DetectedShape(
                kind=KINDS[int(kind[j])],
                color=COLORS[int(color[ri])],
                size=_SIZE_NAMES[int(size[j])],
                position=_POS_NAMES[int(pos[j])],
                area=int(counts[ri]),
                bbox=(int(x0[ri]), int(y0[ri]), int(x1[ri]), int(y1[ri])),
                centroid=(float(ccx[j]), float(ccy[j])),
                extent=int(span[j]),
                iou=float(best_iou[j]),
                color_distance=float(color_dist[ri]),
            )
        )
    return [
        ParsedScene(COLORS[int(bg[i])], float(bg_dist[i]), tuple(shapes[i]), int(clutter[i])) for i in range(b)
    ]


def read_scene(image: object) -> ParsedScene:
    """Read one image ([3,H,W] tensor, HWC uint8 array or PIL image)."""
    parsed = read_scenes(image)
    if len(parsed) != 1:
        raise ValueError(f"read_scene takes one image, got a batch of {len(parsed)}; use read_scenes")
    return parsed[0]


# ---------------------------------------------------------------------------------------- validity
def is_valid(parsed: ParsedScene) -> bool:
    """A world scene: palette background, 1 or 2 world-like shapes and nothing else, legal layout."""
    if parsed.background_distance > COLOR_TOLERANCE or parsed.clutter or len(parsed.shapes) not in (1, 2):
        return False
    for sh in parsed.shapes:
        if sh.color == parsed.background or sh.color_distance > COLOR_TOLERANCE or sh.iou < VALID_MIN_IOU:
            return False
        if not any(lo <= sh.extent <= hi for lo, hi in VALID_EXTENTS):
            return False
    if len(parsed.shapes) == 2:
        return {s.position for s in parsed.shapes} in [set(p) for p in PAIRS]
    return True


def is_valid_scene(image: object) -> bool:
    return is_valid(read_scene(image))


def valid_rate(images: object) -> float:
    """Fraction of (e.g. unconditional) samples that parse as valid world scenes."""
    parsed = read_scenes(images)
    return sum(map(is_valid, parsed)) / len(parsed) if parsed else math.nan


# ---------------------------------------------------------------------------------------- scoring
def _checks(i: int, want: ShapeSpec, got: DetectedShape | None) -> list[AttributeCheck]:
    out = []
    for attr in ("kind", "color", "size", "position"):
        expected = getattr(want, attr)
        if expected is not None:
            found = None if got is None else getattr(got, attr)
            out.append(AttributeCheck(i, attr, expected, found, found == expected))
    return out


def _none_last(assign: tuple[int | None, ...]) -> tuple[int, ...]:
    """A deterministic order for assignments, so ties go to the lowest detected shapes."""
    return tuple(len(assign) + 99 if a is None else a for a in assign)


def score_parsed(parsed: ParsedScene, prompt: str | PromptSpec) -> PromptScore:
    """Score an already-read scene; see `score`."""
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    found = parsed.shapes
    best: list[AttributeCheck] | None = None
    best_used = 0
    # Every injective assignment of prompt shapes to detected shapes (or to nothing), best first. In a
    # two-shape prompt, a shape that names a position may only take a shape read at that position:
    # "a red circle on the left and ..." is judged by what is on the left, so swapped shapes fail on
    # kind and colour (a binding error) instead of each being paired with its look-alike on the wrong
    # side. A one-shape prompt binds nothing, so there a wrong position is just the position wrong.
    by_position = len(spec.shapes) == 2
    options = list(range(len(found))) + [None] * len(spec.shapes)
    for assign in sorted(set(itertools.permutations(options, len(spec.shapes))), key=_none_last):
        if by_position and any(
            a is not None and w.position is not None and found[a].position != w.position
            for w, a in zip(spec.shapes, assign, strict=True)
        ):
            continue
        checks = [c for i, (w, a) in enumerate(zip(spec.shapes, assign, strict=True))
                  for c in _checks(i, w, None if a is None else found[a])]
        if best is None or sum(c.correct for c in checks) > sum(c.correct for c in best):
            best, best_used = checks, sum(a is not None for a in assign)
    assert best is not None  # the all-None assignment is always allowed
    if spec.background is not None:
        best.append(
            AttributeCheck(None, "background", spec.background, parsed.background,
                           parsed.background == spec.background)
        )
    n_correct = sum(c.correct for c in best)
    all_right = n_correct == len(best)
    n_extra = len(found) - best_used + parsed.clutter
    return PromptScore(tuple(best), n_correct, len(best), n_extra, all_right, all_right and n_extra == 0)


def score(image: object, prompt: str | PromptSpec) -> PromptScore:
    """Score one image against one prompt.

    Every attribute the prompt names counts once. A prompt shape with no matching detected shape gets
    every named attribute wrong. Extra shapes earn nothing, and they do break `exact`: a canonical
    prompt names how many shapes the scene has ("a ... on a ... background" is a one-shape scene), so an
    image with a third shape, or a blob of clutter, is not what was asked for, and counting it keeps a
    model from buying exactness by painting several candidates. `all_named_right` is the spec's literal
    reading, kept alongside so either can be reported.
    """
    return score_parsed(read_scene(image), prompt)


def score_batch(images: object, prompts: Sequence[str | PromptSpec]) -> Report:
    """Score a batch of images against their prompts (one prompt per image)."""
    parsed = read_scenes(images)
    if len(parsed) != len(prompts):
        raise ValueError(f"{len(parsed)} images but {len(prompts)} prompts")
    scores = [score_parsed(p, q) for p, q in zip(parsed, prompts, strict=True)]
    counts = {a: [0, 0] for a in ATTRIBUTES}
    for s in scores:
        for c in s.checks:
            counts[c.attribute][0] += c.correct
            counts[c.attribute][1] += 1
    n = len(scores)
    right = sum(s.n_correct for s in scores)
    named = sum(s.n_named for s in scores)
    return Report(
        n_prompts=n,
        attribute_accuracy=right / named if named else math.nan,
        exact_rate=sum(s.exact for s in scores) / n if n else math.nan,
        all_named_rate=sum(s.all_named_right for s in scores) / n if n else math.nan,
        per_attribute={a: (c / t if t else math.nan) for a, (c, t) in counts.items()},
        counts={a: (c, t) for a, (c, t) in counts.items()},
    )
