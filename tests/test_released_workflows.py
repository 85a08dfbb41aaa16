"""The workflows for the released checkpoints: they validate without the files, refuse to run without them
with a "put FILE in DIR" message, and run end to end on tiny random-weight files written in the published
layouts and installed in a temporary models folder (tests/fixtures_released.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph import cli
from nodegraph.engine.api import Engine
from nodegraph.errors import NodeExecutionError, WorkflowError
from nodegraph.generate import glide, karlo
from nodegraph.generate.conditions import NoiseSpec
from nodegraph.generate.released import Steps
from nodegraph.models.installed import load_installed, parse_options

from conftest import REPO, run_cli
from fixtures_released import FILES, build_released_models

WORKFLOWS = ["glide_real_text2img", "glide_real_inpaint", "adm_classifier_guided", "adm_clip_guided",
             "karlo_text2img", "karlo_variations"]
# Few steps: the tests show each pipeline runs end to end; bench/real_models.py measures the released sizes.
FAST = {
    "glide_real_text2img": {"steps": 3, "upsample_respacing": "2", "prompt": "a corgi"},
    "glide_real_inpaint": {"steps": 3, "upsample_respacing": "2"},
    "adm_classifier_guided": {"steps": 3, "class_label": 3, "batch_size": 2},
    "adm_clip_guided": {"steps": 3, "cutn": 2},
    "karlo_text2img": {"prior_steps": 3, "steps": 3, "sr_steps": 2},
    "karlo_variations": {"steps": 2, "sr_steps": 2, "count": 1},
}
SIZE = {"glide_real_text2img": 64, "glide_real_inpaint": 64, "adm_classifier_guided": 64, "adm_clip_guided": 64,
        "karlo_text2img": 256, "karlo_variations": 256}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)  # the tests' machine is shared; one thread is the reliable speed
    root = tmp_path_factory.mktemp("models")
    build_released_models(root)
    return root


@pytest.fixture
def models(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NODEGRAPH_MODELS", str(installed))
    monkeypatch.delenv("NODEGRAPH_MODEL_PATHS", raising=False)
    return installed


@pytest.fixture
def empty_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NODEGRAPH_MODELS", str(tmp_path / "none"))
    monkeypatch.delenv("NODEGRAPH_MODEL_PATHS", raising=False)
    return tmp_path / "none"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("out")
    return Engine("cpu", input_dir=out, output_dir=out, plugins=False)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_validates_without_the_files_and_lists_what_is_missing(name: str, tmp_path: Path) -> None:
    env = {"NODEGRAPH_MODELS": str(tmp_path / "none"), "NODEGRAPH_MODEL_PATHS": ""}
    path = str(REPO / "workflows" / f"{name}.json")
    proc = run_cli("validate", path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["errors"] == [] and report["missing_models"]
    for issue in report["missing_models"]:
        assert issue["type"] == "model_not_found" and "put " in issue["message"]
        assert str(tmp_path / "none") in issue["message"]
    strict = run_cli("validate", "--require-models", path, env=env)
    assert strict.returncode == 2 and json.loads(strict.stdout)["errors"] == report["missing_models"]


def test_run_without_the_files_says_which_file_to_put_where(tmp_path: Path) -> None:
    env = {"NODEGRAPH_MODELS": str(tmp_path / "none"), "NODEGRAPH_MODEL_PATHS": ""}
    proc = run_cli("run", str(REPO / "workflows" / "karlo_text2img.json"), "--out", str(tmp_path / "out"),
                   "--device", "cpu", env=env)
    assert proc.returncode == 2, proc.stderr
    for rel in ("checkpoints/prior-ckpt-step=01000000-of-01000000.ckpt", "clip/ViT-L-14_stats.th",
                "clip/ViT-L-14.safetensors", "upscale_models/improved-sr-ckpt-step=1.2M.ckpt"):
        folder, name = rel.split("/")
        assert f"put {name} in {tmp_path / 'none' / folder}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()  # refused before any node ran


@pytest.mark.parametrize("name", WORKFLOWS)
def test_engine_refuses_to_start_without_the_files(engine: Engine, empty_models: Path, name: str) -> None:
    with pytest.raises(WorkflowError) as info:
        engine.run(str(REPO / "workflows" / f"{name}.json"))
    assert {issue.type for issue in info.value.errors} == {"model_not_found"}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_runs_end_to_end_on_files_in_the_published_layouts(engine: Engine, models: Path, name: str) -> None:
    result = engine.run(str(REPO / "workflows" / f"{name}.json"), params=FAST[name])
    assert result.files
    batch = FAST[name].get("batch_size", FAST[name].get("count", 1))
    assert len(result.files) == batch
    for file in result.files:
        with Image.open(file) as png:
            assert png.size == (SIZE[name], SIZE[name])
            pixels = np.asarray(png.convert("RGB"))
        assert pixels.std() > 0  # an image, not a constant


def test_glide_inpainting_keeps_the_source_outside_the_mask(models: Path) -> None:
    torch.manual_seed(0)
    model = load_installed("glide_inpaint", "base_inpaint.pt", vocab="glide")
    up = load_installed("glide_upsample_inpaint", "upsample_inpaint.pt", vocab="glide")
    source = torch.rand(1, 3, 64, 64) * 2 - 1
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :, 32:] = 1
    steps = Steps("ddpm", 3)
    low = glide.inpaint(model, source, mask, "a cat", NoiseSpec(1), steps=steps)
    assert torch.equal(low[..., :32], source[..., :32]) and not torch.equal(low[..., 32:], source[..., 32:])
    high = glide.inpaint(up, source, mask, "a cat", NoiseSpec(1), low_res=low, steps=steps)
    assert torch.equal(high[..., :32], source[..., :32])  # the tiny upsampler works at 64x64 too


def test_karlo_super_resolution_runs_its_last_step_with_the_second_network(models: Path) -> None:
    sr = load_installed("karlo_sr", "improved-sr-ckpt-step=1.2M.ckpt")
    calls: list[bool] = []
    forward = type(sr.net).forward

    def spy(net, x, t, low_res, last_step=False):
        calls.append(last_step)
        return forward(net, x, t, low_res, last_step)

    sr.net.forward = spy.__get__(sr.net)
    out = karlo.super_resolve(sr, torch.zeros(1, 3, 64, 64), NoiseSpec(0), steps=Steps("ddpm", 3))
    assert calls == [False, False, True] and out.shape == (1, 3, 256, 256)


def test_glide_guidance_batches_caption_and_negative_in_one_forward(models: Path) -> None:
    model = load_installed("glide_base", "base.pt", vocab="glide")
    batches: list[int] = []
    forward = type(model.net).forward

    def spy(net, x, t, **kw):
        batches.append(x.shape[0])
        return forward(net, x, t, **kw)

    model.net.forward = spy.__get__(model.net)
    out = glide.text2img(model, "a corgi", NoiseSpec(0, batch=2), steps=Steps("ddpm", 2))
    assert batches == [4, 4] and out.shape == (2, 3, 64, 64)
    batches.clear()
    glide.text2img(model, "a corgi", NoiseSpec(0), guidance_scale=1.0, steps=Steps("ddpm", 2))
    assert batches == [1, 1]  # scale 1 is the conditional model: no unconditional forward


def test_wrong_model_for_a_loader_and_options_are_input_errors(models: Path, engine: Engine) -> None:
    graph = {"l": {"class_type": "GLIDELoader", "inputs": {"checkpoint": "upsample.pt"}},
             "p": {"class_type": "Preview", "inputs": {"value": ["l", 0]}}}
    # upsample.pt lives in upscale_models/, not checkpoints/: the fingerprint says where it looked.
    with pytest.raises(WorkflowError, match="put upsample.pt in"):
        engine.run(graph)
    (models / "checkpoints" / "up_copy.pt").write_bytes((models / FILES["glide_upsample"]).read_bytes())
    try:
        graph["l"]["inputs"]["checkpoint"] = "up_copy.pt"
        with pytest.raises(NodeExecutionError, match="GLIDE's upsampler .* load it with GLIDEUpsamplerLoader") as info:
            engine.run(graph)
        assert info.value.is_input_error and info.value.input == "checkpoint"
        graph["l"]["inputs"].update(checkpoint="base.pt", options="not a setting")
        with pytest.raises(NodeExecutionError) as info:
            engine.run(graph)
        assert info.value.input == "options"
        graph["l"]["inputs"].update(options="heads=3")
        with pytest.raises(NodeExecutionError, match="heads are not settings of GlideConfig") as info:
            engine.run(graph)
        assert info.value.input == "options"
    finally:
        (models / "checkpoints" / "up_copy.pt").unlink()


def test_options_parse_json_values_and_tuples() -> None:
    assert parse_options("num_head_channels=64, use_new_attention_order=true, channel_mult=(1,2, 3), name=x") == {
        "num_head_channels": 64, "use_new_attention_order": True, "channel_mult": (1, 2, 3), "name": "x"}
    assert parse_options("  ") == {}


def test_a_fixture_file_that_needs_options_loads_with_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference-made ADM fixture matches no released config: its heads come from the options string."""
    (tmp_path / "checkpoints").mkdir()
    src = REPO / "tests" / "fixtures" / "real_models" / "adm_classcond.pt"
    (tmp_path / "checkpoints" / "mine.pt").write_bytes(src.read_bytes())
    monkeypatch.setenv("NODEGRAPH_MODELS", str(tmp_path))
    with pytest.raises(Exception, match="attention heads cannot be read"):
        load_installed("adm", "mine.pt")
    m = load_installed("adm", "mine.pt", options="num_heads=2, num_heads_upsample=4")
    assert m.config.num_classes == 10 and m.kind == "adm"


def test_cli_reports_bad_files_with_exit_2_naming_file_and_problem(models: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong layout, a truncated file and a pickle that would run code, each installed under a released
    name: `nodegraph run` exits 2 and says which file and what is wrong, without running anything from it."""
    import os
    import pickle

    own = tmp_path / "models"
    for rel in FILES.values():
        (own / rel).parent.mkdir(parents=True, exist_ok=True)
        (own / rel).write_bytes((models / rel).read_bytes())
    (own / "tokenizers").symlink_to(models / "tokenizers")
    monkeypatch.setenv("NODEGRAPH_MODELS", str(own))
    target = own / FILES["adm_classifier"]
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = torch.load(models / FILES["adm_classifier"], weights_only=True)
    cases = {
        "wrong layout": (lambda: torch.save({"encoder.weight": torch.zeros(2, 2)}, target), "match none of the known"),
        "another family": (lambda: target.write_bytes((models / FILES["karlo_prior"]).read_bytes()),
                           "holds Karlo's prior"),
        "missing keys": (lambda: torch.save({k: v for k, v in state.items() if not k.startswith("out.")}, target),
                         "cannot read the adm_classifier architecture|missing keys"),
        "truncated": (lambda: target.write_bytes((models / FILES["adm_classifier"]).read_bytes()[:5000]),
                      "cannot be read as a PyTorch checkpoint \\(truncated"),
        "pickle": (lambda: torch.save({**state, "hook": RunsCode()}, target, pickle_protocol=pickle.HIGHEST_PROTOCOL),
                   "is a pickle that names Python objects .*system.* run code"),
    }
    workflow = str(REPO / "workflows" / "adm_classifier_guided.json")
    for label, (write, problem) in cases.items():
        write()
        code = cli.main(["run", workflow, "--param", "steps=2", "--out", str(tmp_path / "out"), "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2, (label, err)
        assert str(target) in err or target.name in err, (label, err)
        assert __import__("re").search(problem, err), (label, err)
        assert "Traceback" not in err and not marker.exists()
