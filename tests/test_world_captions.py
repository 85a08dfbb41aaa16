"""Canonical captions read as SHAPES_WORLD.md writes them, and parse back to what they name."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodegraph.world.captions import PromptSpec, ShapeSpec, caption, parse_prompt
from nodegraph.world.scene import Scene, Shape, random_scenes

ORANGE = Scene("orange", (Shape("circle", "blue", "small", "left"),))
TWO = Scene("black", (Shape("cross", "orange", "large", "top"), Shape("triangle", "white", "small", "bottom")))


def test_article_agrees_with_the_next_word() -> None:
    assert caption(ORANGE) == "a small blue circle on the left on an orange background"
    sc = Scene("yellow", (Shape("square", "orange", "large", "center"),))
    assert caption(sc) == "a large orange square in the center on a yellow background"
    assert caption(sc, size=False) == "an orange square in the center on a yellow background"


def test_two_shape_and_optional_words() -> None:
    assert caption(TWO) == (
        "a large orange cross at the top and a small white triangle at the bottom, on a black background"
    )
    assert caption(TWO, size=False, where=False) == "an orange cross and a white triangle, on a black background"
    assert caption(ORANGE, where=False) == "a small blue circle on an orange background"
    assert caption(ORANGE, size=False, where=False) == "a blue circle on an orange background"


@pytest.mark.parametrize(("size", "where"), [(True, True), (False, True), (True, False), (False, False)])
def test_parse_round_trips_canonical_captions(size: bool, where: bool) -> None:
    for sc in random_scenes(150, seed=7):
        spec = parse_prompt(caption(sc, size=size, where=where))
        assert spec == PromptSpec(
            background=sc.background,
            shapes=tuple(
                ShapeSpec(sh.kind, sh.color, sh.size if size else None, sh.position if where else None)
                for sh in sc.shapes
            ),
        )
        assert spec.n_attributes() == 1 + len(sc.shapes) * (2 + size + where)


def test_parse_tolerates_case_and_spacing() -> None:
    assert parse_prompt("  A Small BLUE circle   on the left on an Orange background ") == parse_prompt(
        caption(ORANGE)
    )


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "hello",
        "a red circle",  # no background
        "a red circle on a red",
        "a huge red circle on a blue background",  # not a size
        "a red hexagon on a blue background",  # not a kind
        "a pink circle on a blue background",  # not a colour
        "a red circle in the middle on a blue background",  # not a position
        "two red circles on a blue background",
        "a red circle and a blue square and a green cross, on a white background",
        "a red circle on a blue background and more",
    ],
)
def test_parse_rejects_junk(junk: str) -> None:
    with pytest.raises(ValueError, match="not a canonical"):
        parse_prompt(junk)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_parse_either_parses_or_raises_value_error(text: str) -> None:
    try:
        spec = parse_prompt(text)
    except ValueError:
        return
    assert spec.shapes and all(s.kind and s.color for s in spec.shapes)
