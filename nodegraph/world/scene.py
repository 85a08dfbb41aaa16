"""Shapes World scenes: the vocabulary of ../shared/SHAPES_WORLD.md and seeded random scenes.

Everything here is plain data; rendering is in `render.py`, captions in `captions.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 50),
    "purple": (140, 60, 190),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
KINDS: tuple[str, ...] = ("square", "circle", "triangle", "cross")
SIZES: dict[str, float] = {"small": 14.0, "large": 26.0}
# Centres on the 64x64 canvas.
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (32.0, 32.0),
    "left": (16.0, 32.0),
    "right": (48.0, 32.0),
    "top": (32.0, 16.0),
    "bottom": (32.0, 48.0),
}
PAIRS: tuple[tuple[str, str], ...] = (("left", "right"), ("top", "bottom"))
BASE_RES = 64  # coordinates above are in this canvas; other resolutions scale them


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    size: str
    position: str
    # Training-time jitter, in 64x64 pixels: centre offset and side offset.
    dx: float = 0.0
    dy: float = 0.0
    ds: float = 0.0

    def centre(self) -> tuple[float, float]:
        cx, cy = POSITIONS[self.position]
        return cx + self.dx, cy + self.dy

    def side(self) -> float:
        return SIZES[self.size] + self.ds


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...] = field(default_factory=tuple)


def _pick(seq: tuple[str, ...] | list[str], g: torch.Generator) -> str:
    return seq[int(torch.randint(len(seq), (1,), generator=g))]


def random_scene(
    g: torch.Generator, p_two: float = 0.5, jitter: bool = False
) -> Scene:
    """One scene drawn from the world's distribution with the given generator.

    Shape colours differ from the background (the world's rule); two shapes may share a colour.
    """
    bg = _pick(COLORS, g)
    two = float(torch.rand((), generator=g)) < p_two
    positions = list(PAIRS[int(torch.randint(2, (1,), generator=g))]) if two else [_pick(tuple(POSITIONS), g)]
    shapes = []
    for pos in positions:
        if jitter:
            dx, dy = (torch.rand(2, generator=g) * 6 - 3).tolist()
            ds = float(torch.rand((), generator=g) * 4 - 2)
        else:
            dx = dy = ds = 0.0
        shapes.append(
            Shape(
                kind=_pick(KINDS, g),
                color=_pick([c for c in COLORS if c != bg], g),
                size=_pick(tuple(SIZES), g),
                position=pos,
                dx=dx,
                dy=dy,
                ds=ds,
            )
        )
    return Scene(background=bg, shapes=tuple(shapes))


def random_scenes(n: int, seed: int, p_two: float = 0.5, jitter: bool = False) -> list[Scene]:
    g = torch.Generator().manual_seed(seed)
    return [random_scene(g, p_two=p_two, jitter=jitter) for _ in range(n)]


def all_one_shape_scenes() -> list[Scene]:
    """Every canonical one-shape scene (8 bg x 7 colours x 4 kinds x 2 sizes x 5 positions = 2240)."""
    return [
        Scene(bg, (Shape(kind, color, size, pos),))
        for bg in COLORS
        for color in COLORS
        if color != bg
        for kind in KINDS
        for size in SIZES
        for pos in POSITIONS
    ]
