"""The renderer draws exactly the geometry SHAPES_WORLD.md fixes, at 32, 64 and 128 pixels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nodegraph.world.render import render, render_uint8, to_model_range
from nodegraph.world.scene import (
    COLORS,
    KINDS,
    PAIRS,
    PALETTE,
    POSITIONS,
    SIZES,
    Scene,
    Shape,
    all_one_shape_scenes,
    random_scenes,
)


def coverage(shape: Shape, res: int = 64) -> torch.Tensor:
    """Fraction of each pixel the shape covers: white on black, read back from the red channel."""
    img = render([Scene("black", (Shape(shape.kind, "white", shape.size, shape.position,
                                        shape.dx, shape.dy, shape.ds),))], res)[0, 0]
    return (img - PALETTE["black"][0]) / (PALETTE["white"][0] - PALETTE["black"][0])


def test_triangle_apex_on_top_and_base_at_the_bottom() -> None:
    # Large triangle at the centre: apex (32, 19), base from (19, 45) to (45, 45). A row y..y+1 is cut
    # at depths y-19 .. y-18 below the apex, where the width equals the depth, so it covers y - 18.5.
    cov = coverage(Shape("triangle", "white", "large", "center"))
    rows = cov.sum(1)
    assert rows[:19].sum() == 0 and rows[45:].sum() == 0
    for y in range(19, 45):
        assert rows[y] == pytest.approx(y - 18.5, abs=0.1)
    # Symmetric about x = 32 in every row: the apex is centred, not leaning.
    assert torch.allclose(cov, cov.flip(1))
    assert rows[44] > 25 and rows[19] < 1


def test_cross_bars_are_a_third_of_the_side() -> None:
    s = SIZES["large"]
    cov = coverage(Shape("cross", "white", "large", "center"))
    # A column through an arm (x = 20) crosses only the horizontal bar; a row at y = 20 only the
    # vertical one. Bar edges fall at thirds of a pixel, which 4x4 anti-aliasing resolves to quarters.
    assert cov[:, 20].sum() == pytest.approx(s / 3, abs=0.25)
    assert cov[20, :].sum() == pytest.approx(s / 3, abs=0.25)
    assert cov[32, :].sum() == pytest.approx(s, abs=0.05)  # the full width through the middle
    assert cov.sum() == pytest.approx(s * s * 5 / 9, rel=0.03)  # two bars less their shared centre


@pytest.mark.parametrize("size", list(SIZES))
def test_circle_area_is_pi_r_squared(size: str) -> None:
    r = SIZES[size] / 2
    assert coverage(Shape("circle", "white", size, "left")).sum() == pytest.approx(math.pi * r * r, rel=0.01)


def test_square_fills_its_box_and_jitter_moves_it() -> None:
    cov = coverage(Shape("square", "white", "small", "top"))  # centre (32, 16), side 14
    assert cov[9:23, 25:39].min() == 1 and cov.sum() == 14 * 14
    moved = coverage(Shape("square", "white", "small", "top", dx=2.0, dy=-3.0, ds=2.0))
    assert moved[5:21, 26:42].min() == 1 and moved.sum() == 16 * 16


def test_32_is_the_2x2_area_average_of_64() -> None:
    scenes = random_scenes(12, seed=3, jitter=True)
    r64 = render(scenes, 64)
    blocks = r64.view(len(scenes), 3, 32, 2, 32, 2).mean((3, 5))
    assert torch.allclose(render(scenes, 32), blocks, atol=1e-4)


def test_128_is_the_same_scene_at_twice_the_scale() -> None:
    cov = coverage(Shape("square", "white", "small", "center"), 128)
    assert cov[50:78, 50:78].min() == 1 and cov.sum() == 28 * 28  # every coordinate doubled
    circle = coverage(Shape("circle", "white", "large", "right"), 128)
    assert circle.sum() == pytest.approx(math.pi * 26 * 26, rel=0.01)
    # Averaged back to 64 it matches the 64 render up to anti-aliasing of the edges.
    scenes = random_scenes(6, seed=4, jitter=True)
    diff = (F.avg_pool2d(render(scenes, 128), 2) - render(scenes, 64)).abs()
    assert diff.mean() < 0.5 and diff.max() < 40


def test_uint8_and_model_range() -> None:
    img = render_uint8(random_scenes(4, seed=0), 32)
    assert img.dtype == torch.uint8 and img.shape == (4, 3, 32, 32)
    m = to_model_range(img.float())
    assert m.min() >= -1 and m.max() <= 1
    with pytest.raises(ValueError):
        render(random_scenes(1, seed=0), 48)


def test_random_scenes_follow_the_world_rules() -> None:
    scenes = random_scenes(200, seed=11, jitter=True)
    assert scenes == random_scenes(200, seed=11, jitter=True)  # seeded: the same world every time
    n_two = 0
    for sc in scenes:
        assert sc.background in COLORS and 1 <= len(sc.shapes) <= 2
        for sh in sc.shapes:
            assert sh.color != sc.background and sh.kind in KINDS and sh.size in SIZES
            assert abs(sh.dx) <= 3 and abs(sh.dy) <= 3 and abs(sh.ds) <= 2
        if len(sc.shapes) == 2:
            n_two += 1
            assert tuple(sh.position for sh in sc.shapes) in PAIRS
        else:
            assert sc.shapes[0].position in POSITIONS
    assert 60 < n_two < 140
    canonical = all_one_shape_scenes()
    assert len(canonical) == len(set(canonical)) == 2240
