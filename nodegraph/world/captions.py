"""Captions for Shapes World scenes, and parsing prompts back into the attributes they name.

Canonical forms are fixed by ../shared/SHAPES_WORLD.md; a prompt may leave out `{size}` and/or
`{where}` and then constrains only what it names. Training captions add paraphrases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from nodegraph.world.scene import COLORS, KINDS, SIZES, Scene, Shape

WHERE: dict[str, str] = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def _noun_phrase(sh: Shape, size: bool) -> str:
    return with_article(f"{sh.size} {sh.color} {sh.kind}" if size else f"{sh.color} {sh.kind}")


def caption(scene: Scene, size: bool = True, where: bool = True) -> str:
    """The canonical caption; `size=False` / `where=False` leave those words out."""
    bg = f"on {with_article(scene.background)} background"
    if len(scene.shapes) == 1:
        sh = scene.shapes[0]
        parts = [_noun_phrase(sh, size)] + ([WHERE[sh.position]] if where else []) + [bg]
        return " ".join(parts)
    first, second = scene.shapes
    if where:
        return (
            f"{_noun_phrase(first, size)} {WHERE[first.position]} and "
            f"{_noun_phrase(second, size)} {WHERE[second.position]}, {bg}"
        )
    return f"{_noun_phrase(first, size)} and {_noun_phrase(second, size)}, {bg}"


def paraphrase(scene: Scene, g: torch.Generator) -> str:
    """A non-canonical wording of the whole scene, for training variety."""
    choice = int(torch.randint(3, (1,), generator=g))
    if len(scene.shapes) == 1:
        sh = scene.shapes[0]
        if choice == 0:
            return f"{sh.color} {sh.kind}, {scene.background} background"
        if choice == 1:
            return f"{sh.size} {sh.color} {sh.kind} {WHERE[sh.position]}, {scene.background} background"
        return f"{with_article(sh.color + ' ' + sh.kind)} on {with_article(scene.background)} background"
    a, b = scene.shapes
    if choice == 0:
        return f"{a.color} {a.kind} and {b.color} {b.kind}, {scene.background} background"
    if choice == 1:
        return (
            f"{a.size} {a.color} {a.kind} {WHERE[a.position]}, {b.size} {b.color} {b.kind} "
            f"{WHERE[b.position]}, {scene.background} background"
        )
    return (
        f"{with_article(a.color + ' ' + a.kind)} and {with_article(b.color + ' ' + b.kind)} "
        f"on {with_article(scene.background)} background"
    )


def training_caption(scene: Scene, g: torch.Generator, p_canonical: float = 0.7) -> str:
    """Mostly canonical captions (sometimes without size or position), sometimes a paraphrase."""
    r = float(torch.rand((), generator=g))
    if r < p_canonical:
        drop = float(torch.rand((), generator=g))
        return caption(scene, size=drop >= 0.15, where=not (0.15 <= drop < 0.25))
    return paraphrase(scene, g)


@dataclass(frozen=True)
class ShapeSpec:
    """What a prompt says of one shape; None means the prompt does not constrain it."""

    kind: str
    color: str
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class PromptSpec:
    background: str | None
    shapes: tuple[ShapeSpec, ...]

    def n_attributes(self) -> int:
        named = sum(1 for s in self.shapes for v in (s.kind, s.color, s.size, s.position) if v is not None)
        return named + (self.background is not None)


_WHERE_TO_POS = {v: k for k, v in WHERE.items()}
_SHAPE_RE = (
    r"an? (?:(?P<size{i}>" + "|".join(SIZES) + r") )?(?P<color{i}>" + "|".join(COLORS) + r") "
    r"(?P<kind{i}>" + "|".join(KINDS) + r")(?: (?P<where{i}>" + "|".join(WHERE.values()) + r"))?"
)
_BG_RE = r"on an? (?P<bg>" + "|".join(COLORS) + r") background"
_ONE = re.compile("^" + _SHAPE_RE.format(i=0) + " " + _BG_RE + "$")
_TWO = re.compile("^" + _SHAPE_RE.format(i=0) + " and " + _SHAPE_RE.format(i=1) + ", " + _BG_RE + "$")


def parse_prompt(text: str) -> PromptSpec:
    """Parse a canonical prompt (size and position optional). Raises ValueError naming the problem."""
    t = " ".join(text.lower().strip().split())
    m = _ONE.match(t)
    n = 1
    if m is None:
        m = _TWO.match(t)
        n = 2
    if m is None:
        raise ValueError(
            f"not a canonical Shapes World prompt: {text!r}; expected e.g. "
            "'a large red circle on the left on a blue background'"
        )
    shapes = tuple(
        ShapeSpec(
            kind=m[f"kind{i}"],
            color=m[f"color{i}"],
            size=m[f"size{i}"],
            position=_WHERE_TO_POS[m[f"where{i}"]] if m[f"where{i}"] else None,
        )
        for i in range(n)
    )
    return PromptSpec(background=m["bg"], shapes=shapes)
