"""Every bundled workflow runs on the bundled models (fast settings) and its outputs are scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph.engine.api import Engine
from nodegraph.engine.imageio import from_pil, to_uint8
from nodegraph.models.resize import fit_square
from nodegraph.world.examples import EXAMPLES_DIR

from conftest import REPO, run_cli

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
# Few steps: CI checks that each system runs end to end and produces scorable images; the quality at
# full settings is measured by bench/quality.py.
FAST = {"steps": 6, "prior_steps": 6, "upsample_steps": 4, "count": 2, "batch_size": 1}
OUTPUT_SIZE = {
    "glide_text2img": 64, "dalle2_text2img": 64, "dalle2_variations": 64, "dalle2_text_diff": 64, "upsample": 64,
    "composable_guidance": 64, "glide_inpaint": 32, "glide_clip_guided": 32, "clip_guided_unconditional": 32,
    "classifier_guided": 32, "ddim_invert_reconstruct": 32, "ddim_invert_edit": 32, "clip_guided_edit": 32,
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("out")
    return Engine("cpu", input_dir=out, output_dir=out, plugins=False)


def fast_params(path: Path) -> dict:
    declared = json.loads(path.read_text()).get("params", {})
    return {k: v for k, v in FAST.items() if k in declared}


def test_every_system_has_a_workflow_with_a_description_and_params():
    names = {p.stem for p in WORKFLOWS}
    assert set(OUTPUT_SIZE) <= names
    for path in WORKFLOWS:
        data = json.loads(path.read_text())
        assert data["meta"]["description"]
        if path.stem != "utility_add":
            assert data["params"], path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in WORKFLOWS if p.stem in OUTPUT_SIZE], ids=lambda p: p.stem)
def test_workflow_runs_on_bundled_models_and_is_scored(engine, path):
    result = engine.run(str(path), params=fast_params(path))
    assert result.files, "every image workflow saves its images"
    size = OUTPUT_SIZE[path.stem]
    for file in result.files:
        with Image.open(file) as png:
            assert png.size == (size, size)
            assert json.loads(png.text["prompt"])  # the workflow travels with the image
    for node_id, out in result.outputs.items():
        if "attribute_accuracy" in out:
            assert 0.0 <= out["attribute_accuracy"] <= 1.0, node_id
    if path.stem == "ddim_invert_reconstruct":
        # Inversion then DDIM sampling along the same steps reproduces the scene.
        assert result.outputs["score"]["attribute_accuracy"] == 1.0


@pytest.mark.slow
def test_inpaint_keeps_every_pixel_outside_the_mask(engine):
    path = REPO / "workflows" / "glide_inpaint.json"
    result = engine.run(str(path), params={"steps": 6})
    data = json.loads(path.read_text())["nodes"]
    # the example file, brought to the model's 32 px by the one resize rule, then quantised as a PNG is
    example = EXAMPLES_DIR / data["image"]["inputs"]["image"].removeprefix("example:")
    source = to_uint8(fit_square(from_pil(Image.open(example)), 32))[0]
    out = np.asarray(Image.open(result.files[0]).convert("RGB"))
    m = data["mask"]["inputs"]
    keep = np.ones((32, 32), dtype=bool)
    keep[m["y"] : m["y"] + m["h"], m["x"] : m["x"] + m["w"]] = False
    assert (out[keep] == source[keep]).all()
    assert (out[~keep] != source[~keep]).any()


@pytest.mark.slow
def test_changing_the_seed_reruns_only_what_depends_on_it(engine):
    path = str(REPO / "workflows" / "dalle2_text2img.json")
    params = {"steps": 4, "prior_steps": 4, "upsample_steps": 2}
    engine.run(path, params={**params, "seed": 1})
    again = engine.run(path, params={**params, "seed": 1})
    assert again.executed == []
    changed = engine.run(path, params={**params, "seed": 2})
    assert set(changed.executed) == {"noise", "prior", "decode", "upsample", "save"}
    assert {"clip", "prior_model", "decoder_model", "upsampler_model", "text"} <= set(changed.cached)


@pytest.mark.slow
def test_readme_main_command_writes_a_64px_png(tmp_path):
    proc = run_cli("run", "workflows/dalle2_text2img.json", "--param",
                   "prompt=a large red circle on the left on a blue background", "--param", "steps=8",
                   "--out", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    files = [Path(f) for run in json.loads(proc.stdout)["runs"] for f in run["files"]]
    assert files and all(f.exists() for f in files)
    with Image.open(files[0]) as png:
        assert png.size == (64, 64)


@pytest.mark.slow
def test_text_diff_starts_at_the_image_and_ends_at_the_target_caption(engine):
    """Default settings (50 steps, CFG 3): the first frame keeps the render's scene, the last one has the
    kind the target caption names in the render's colour (bench/quality.py measures 16 scenes)."""
    from nodegraph.world.scorer import score_batch

    path = REPO / "workflows" / "dalle2_text_diff.json"
    nodes = json.loads(path.read_text())["nodes"]
    result = engine.run(str(path), params={"count": 3})
    frames = [np.asarray(Image.open(f).convert("RGB")) for f in result.files]
    assert len(frames) == 3
    source, target = nodes["source"]["inputs"]["text"], nodes["target"]["inputs"]["text"]
    report = score_batch(np.stack([frames[0], frames[-1]]), [source, target])
    assert report.exact_rate == 1.0, report
