"""The scorer reads every correct render as its caption and catches each wrong attribute."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace
from functools import lru_cache

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph.world.captions import PromptSpec, ShapeSpec, caption, parse_prompt
from nodegraph.world.render import render, render_uint8, to_model_range
from nodegraph.world.scene import (
    COLORS,
    KINDS,
    POSITIONS,
    SIZES,
    Scene,
    Shape,
    all_one_shape_scenes,
    random_scenes,
)
from nodegraph.world.scorer import (
    ATTRIBUTES,
    is_valid,
    is_valid_scene,
    read_scene,
    read_scenes,
    score,
    score_batch,
    score_parsed,
    valid_rate,
)

RESOLUTIONS = (32, 64, 128)


def render_chunked(scenes: list[Scene], res: int) -> torch.Tensor:
    """render() at 128 holds [N, 4, 512, 512] masks at once: render in slices to bound memory."""
    return torch.cat([render(scenes[i : i + 200], res) for i in range(0, len(scenes), 200)])


def as_uint8(img: torch.Tensor) -> torch.Tensor:
    return img.round().clamp(0, 255).to(torch.uint8)


def box_gap(sc: Scene) -> float:
    """Free space between the two shapes' bounding squares, in 64x64 pixels (inf for one shape)."""
    if len(sc.shapes) == 1:
        return math.inf
    a, b = sc.shapes
    axis = 0 if a.position == "left" else 1
    return (b.centre()[axis] - b.side() / 2) - (a.centre()[axis] + a.side() / 2)


def separated(scenes: list[Scene], res: int) -> list[Scene]:
    """Scenes whose two shapes stay apart. With full jitter two large shapes can touch or overlap
    (gap 6 - 3 - 3 - 2 = -2 px); they then form one region, which no reading of the spec can split.
    At 32x32 a native pixel is 2 px, so a pixel straddling a 2 px gap can still bridge the shapes."""
    need = 4.0 if res == 32 else 2.0
    return [sc for sc in scenes if box_gap(sc) >= need]


@lru_cache(maxsize=4)
def canonical(res: int) -> tuple[list[Scene], torch.Tensor]:
    scenes = all_one_shape_scenes()
    if res == 32:
        return scenes, as_uint8(torch.nn.functional.avg_pool2d(canonical_float64(), 2))
    return scenes, as_uint8(canonical_float64() if res == 64 else render_chunked(scenes, 128))


@lru_cache(maxsize=1)
def canonical_float64() -> torch.Tensor:
    return render_chunked(all_one_shape_scenes(), 64)


def assert_all_exact(scenes: list[Scene], images: object) -> None:
    parsed = read_scenes(images)
    wrong = [(sc, p) for sc, p in zip(scenes, parsed, strict=True) if not score_parsed(p, caption(sc)).exact]
    assert not wrong, f"{len(wrong)} of {len(scenes)} misread, e.g. {wrong[:2]}"
    assert all(is_valid(p) for p in parsed)


# ------------------------------------------------------------------------------- correct renders
@pytest.mark.slow
@pytest.mark.parametrize("res", RESOLUTIONS)
def test_every_canonical_one_shape_scene_scores_perfectly(res: int) -> None:
    scenes, images = canonical(res)
    assert len(scenes) == 2240
    assert_all_exact(scenes, images)


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_every_canonical_shape_scores_perfectly_on_hard_colour_pairs(res: int) -> None:
    # The closest palette pairs (yellow on orange, blue on purple) and a mix that lands near another
    # palette colour (red edges on white are orange-ish), for all 40 kind/size/positions.
    pairs = [("orange", "yellow"), ("white", "red"), ("purple", "blue")]
    scenes = [
        Scene(bg, (Shape(kind, color, size, pos),))
        for bg, color in pairs
        for kind in KINDS
        for size in SIZES
        for pos in POSITIONS
    ]
    assert_all_exact(scenes, as_uint8(render(scenes, res)))


def extreme_jitter_scenes() -> list[Scene]:
    """Every kind, size and position at the corners of the jitter range (+-3 px, side +-2 px), on
    colour pairs that cycle from the closest to the most distant."""
    pairs = [(bg, c) for bg in COLORS for c in COLORS if c != bg]
    out = []
    for i, (kind, size, pos, dx, dy, ds) in enumerate(
        itertools.product(KINDS, SIZES, POSITIONS, (-3.0, 0.0, 3.0), (-3.0, 0.0, 3.0), (-2.0, 2.0))
    ):
        bg, color = pairs[(i * 17) % len(pairs)]
        out.append(Scene(bg, (Shape(kind, color, size, pos, dx, dy, ds),)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("res", RESOLUTIONS)
def test_extreme_jitter_is_read_right(res: int) -> None:
    # The triangle is the hard case for position: its centroid sits s/6 below its box centre, so a
    # large one at the centre jittered 3 px down has its centroid 1/3 px from the center/bottom midline.
    scenes = extreme_jitter_scenes()
    assert_all_exact(scenes, as_uint8(render_chunked(scenes, res)))


def test_low_triangles_keep_their_position() -> None:
    scenes = [
        Scene("green", (Shape("triangle", "red", "large", pos, dx, 3.0, 2.0),))
        for pos in POSITIONS
        for dx in (-3.0, 3.0)
    ]
    for sc, p in zip(scenes, read_scenes(render_uint8(scenes)), strict=True):
        pos = sc.shapes[0].position
        if pos != "bottom":  # at the bottom the canvas clips the base row, and the centroid rises
            centroid_drop = p.shapes[0].centroid[1] - POSITIONS[pos][1]
            assert centroid_drop == pytest.approx(3 + 28 / 6, abs=0.3)  # jitter + s/6: past the midline
        assert p.shapes[0].position == pos


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_random_jittered_one_and_two_shape_scenes(res: int) -> None:
    scenes = separated(random_scenes(300, seed=100 + res, p_two=0.6, jitter=True), res)
    assert_all_exact(scenes, as_uint8(render_chunked(scenes, res)))


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_gaussian_noise_still_scores_right(res: int) -> None:
    # sigma = 10 of 255, given as a float tensor in [-1, 1] like a model sample.
    scenes = separated(random_scenes(300, seed=200 + res, p_two=0.6, jitter=True), res)
    g = torch.Generator().manual_seed(res)
    clean = render_chunked(scenes, res)
    noisy = to_model_range(clean + 10 * torch.randn(clean.shape, generator=g)).clamp(-1, 1)
    report = score_batch(noisy, [caption(sc) for sc in scenes])
    # Noise flips the odd edge pixel of a 7 px shape at 32x32; at 64 and 128 nothing is lost.
    assert report.attribute_accuracy >= (0.995 if res == 32 else 1.0)
    assert report.exact_rate >= (0.98 if res == 32 else 1.0)


def test_tiny_32px_shape_without_a_pure_pixel_is_clean() -> None:
    # s = 12.4 at 32x32 is a 6 px triangle: even its most covered pixels are part purple. Its colour is
    # still white, and it is a valid world shape (its median is a background/white mix, not off-palette).
    tri = Shape("triangle", "white", "small", "left", 1.46, 1.18, -1.59)
    sc = Scene("purple", (tri, Shape("cross", "black", "small", "right", 1.18, -2.94, -1.32)))
    p = read_scene(render_uint8([sc], 32)[0])
    assert is_valid(p) and score_parsed(p, caption(sc)).exact
    assert max(sh.color_distance for sh in p.shapes) < 5


def test_touching_shapes_merge_into_one_region() -> None:
    # Allowed by the jitter ranges, unreadable as two shapes: documents why `separated` exists, and
    # bounds what it drops (only large pairs jittered towards each other come within 4 px).
    pairs = [sc for sc in random_scenes(4000, seed=8, jitter=True) if len(sc.shapes) == 2]
    gaps = torch.tensor([box_gap(sc) for sc in pairs])
    assert (gaps < 0).float().mean() < 0.005 and (gaps < 4).float().mean() < 0.08
    left, right = Shape("square", "red", "large", "left", 3, 0, 2), Shape("square", "red", "large", "right", -3, 0, 2)
    sc = Scene("white", (left, right))
    assert box_gap(sc) < 0
    p = read_scene(render_uint8([sc])[0])
    assert len(p.shapes) + p.clutter == 1 and not is_valid(p)


# ------------------------------------------------------------------------------- wrong attributes
def other(value: str, choices: tuple[str, ...] | list[str], avoid: str | None = None) -> str:
    return next(c for c in choices if c not in (value, avoid))


def one_attribute_changes(sc: Scene) -> list[tuple[str, int | None, PromptSpec]]:
    """The scene's full prompt with exactly one named attribute changed, for every attribute."""
    spec = parse_prompt(caption(sc))
    out: list[tuple[str, int | None, PromptSpec]] = [
        ("background", None, replace(spec, background=other(sc.background, COLORS)))
    ]
    for i, sh in enumerate(spec.shapes):
        changes = {
            "kind": other(sh.kind, KINDS),
            "color": other(sh.color, COLORS, avoid=sc.background),
            "size": other(sh.size or "", tuple(SIZES)),
        }
        if len(spec.shapes) == 1:  # in a two-shape prompt the position says which shape is meant
            changes["position"] = other(sh.position or "", tuple(POSITIONS))
        for attr, value in changes.items():
            shapes = list(spec.shapes)
            shapes[i] = replace(sh, **{attr: value})
            out.append((attr, i, replace(spec, shapes=tuple(shapes))))
    return out


@pytest.mark.parametrize("res", (32, 64))
def test_each_wrong_attribute_is_caught_alone(res: int) -> None:
    scenes = separated(random_scenes(60, seed=5, p_two=0.5, jitter=True), res)
    for sc, parsed in zip(scenes, read_scenes(as_uint8(render(scenes, res))), strict=True):
        for attr, i, spec in one_attribute_changes(sc):
            s = score_parsed(parsed, spec)
            wrong = [(c.attribute, c.shape) for c in s.checks if not c.correct]
            assert wrong == [(attr, i)], (sc, spec, s)
            assert s.n_correct == s.n_named - 1 == spec.n_attributes() - 1 and not s.exact


def test_swapped_shapes_are_a_binding_error_unless_positions_are_left_out() -> None:
    sc = Scene("white", (Shape("circle", "red", "small", "left"), Shape("square", "blue", "small", "right")))
    img = render_uint8([sc])[0]
    swapped = "a small blue square on the left and a small red circle on the right, on a white background"
    s = score(img, swapped)
    assert {(c.attribute, c.correct) for c in s.checks} == {
        ("kind", False), ("color", False), ("size", True), ("position", True), ("background", True)
    }
    assert s.n_correct == 5 and s.n_named == 9
    # Without positions the prompt binds nothing, so either order is the scene.
    assert score(img, "a blue square and a red circle, on a white background").exact


def test_a_missing_shape_gets_all_its_attributes_wrong() -> None:
    img = render_uint8([Scene("black", (Shape("cross", "green", "large", "left"),))])[0]
    s = score(img, "a large green cross on the left and a small white circle on the right, on a black background")
    missing = [c for c in s.checks if c.shape == 1]
    assert len(missing) == 4 and not any(c.correct for c in missing) and all(c.found is None for c in missing)
    assert s.n_correct == 5 and s.n_named == 9 and not s.exact


def test_an_extra_shape_earns_nothing_and_breaks_exact() -> None:
    sc = Scene("black", (Shape("cross", "green", "large", "top"), Shape("circle", "white", "small", "bottom")))
    s = score(render_uint8([sc])[0], "a large green cross at the top on a black background")
    assert s.all_named_right and s.n_correct == s.n_named == 5
    assert s.n_extra == 1 and not s.exact


def test_one_shape_prompt_picks_the_best_shape_without_binding_position() -> None:
    img = render_uint8([Scene("blue", (Shape("triangle", "yellow", "small", "bottom"),))])[0]
    s = score(img, "a small yellow triangle at the top on a blue background")
    assert [(c.attribute, c.found) for c in s.checks if not c.correct] == [("position", "bottom")]


# ------------------------------------------------------------------------------- not world scenes
def test_blank_image_has_no_shapes() -> None:
    blank = render_uint8([Scene("purple")])[0]
    p = read_scene(blank)
    assert p.background == "purple" and p.shapes == () and not is_valid(p)
    s = score(blank, "a small red square in the center on a purple background")
    assert [c.attribute for c in s.checks if c.correct] == ["background"]


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_noise_is_not_a_scene_and_scores_no_shape_attribute(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    if kind == "uniform":
        images = torch.randint(0, 256, (8, 3, 64, 64), generator=g, dtype=torch.uint8)
    else:  # what an untrained model emits: N(0, 1) in the [-1, 1] socket range
        images = torch.randn(8, 3, 64, 64, generator=g).clamp(-1, 1)
    assert valid_rate(images) == 0
    prompts = [caption(sc) for sc in random_scenes(8, seed=1)]
    report = score_batch(images, prompts)
    for attr in ("kind", "color", "size", "position"):
        assert report.counts[attr][0] == 0


# ------------------------------------------------------------------------------- API and inputs
def test_every_input_convention_reads_the_same() -> None:
    sc = random_scenes(1, seed=9, jitter=True)[0]
    img = render_uint8([sc])[0]
    hwc = img.permute(1, 2, 0).numpy()
    views = [
        img,
        img.unsqueeze(0),
        to_model_range(img.float()),
        hwc,
        hwc[None],
        Image.fromarray(hwc),
        Image.fromarray(hwc).convert("RGBA"),
    ]
    first = read_scene(img)
    assert first.shapes and is_valid(first)
    for v in views:
        # Floats from [-1, 1] round-trip to within 1e-5 of a level: equal readings, centroids to 1e-4.
        (p,) = read_scenes(v)
        assert replace(p, shapes=()) == replace(first, shapes=())
        for a, b in zip(p.shapes, first.shapes, strict=True):
            assert replace(a, centroid=b.centroid, iou=b.iou) == b
            assert a.centroid == pytest.approx(b.centroid, abs=1e-4) and a.iou == pytest.approx(b.iou, abs=1e-4)
    mixed = read_scenes([img, hwc, render_uint8([sc], 32)[0]])
    assert mixed[:2] == [first, first] and score_parsed(mixed[2], caption(sc)).exact


def test_bad_inputs_raise() -> None:
    img = render_uint8(random_scenes(2, seed=0))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        read_scene(img[0].float())  # a [0, 255] float image is not silently misread
    with pytest.raises(ValueError, match="32, 64 or 128"):
        read_scene(img[0, :, :48, :48])
    with pytest.raises(ValueError, match="one image"):
        read_scene(img)
    with pytest.raises(ValueError, match="uint8"):
        read_scene(img[0].permute(1, 2, 0).numpy().astype(np.float32))
    with pytest.raises(TypeError):
        read_scene("not an image")
    with pytest.raises(ValueError, match="prompts"):
        score_batch(img, ["a red circle on a blue background"])


def test_score_batch_report_counts() -> None:
    scenes = [
        Scene("white", (Shape("circle", "red", "small", "left"),)),
        Scene("black", (Shape("square", "blue", "large", "center"),)),
    ]
    prompts: list[str | PromptSpec] = [
        caption(scenes[0]),  # 5 of 5
        PromptSpec("black", (ShapeSpec("circle", "green", None, "center"),)),  # 2 of 4: kind, colour wrong
    ]
    r = score_batch(render_uint8(scenes), prompts)
    assert r.n_prompts == 2 and r.exact_rate == 0.5 and r.all_named_rate == 0.5
    assert r.attribute_accuracy == pytest.approx(7 / 9)
    assert r.counts == {"kind": (1, 2), "color": (1, 2), "size": (1, 1), "position": (2, 2), "background": (2, 2)}
    assert r.per_attribute["kind"] == 0.5 and r.per_attribute["size"] == 1.0
    assert set(r.per_attribute) == set(ATTRIBUTES)


def test_valid_rate_of_a_mixed_batch() -> None:
    scenes = random_scenes(6, seed=2, p_two=0.5)
    noise = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    images = torch.cat([render_uint8(scenes), noise, render_uint8([Scene("red")])])
    assert valid_rate(images) == pytest.approx(6 / 9)
    assert is_valid_scene(images[0]) and not is_valid_scene(images[-1])
    # Two shapes in an illegal layout (left and top) are not a world scene.
    bad = Scene("white", (Shape("circle", "red", "small", "left"), Shape("cross", "blue", "small", "top")))
    assert not is_valid_scene(render_uint8([bad])[0])


@pytest.mark.slow
def test_scoring_1000_images_takes_a_few_cpu_seconds() -> None:
    scenes = random_scenes(1000, seed=3, jitter=True)
    images = render_uint8(scenes)
    prompts = [caption(sc) for sc in scenes]
    start = time.process_time()  # CPU time: the wall clock is at the mercy of other jobs on the machine
    score_batch(images, prompts)
    assert time.process_time() - start < 10
