"""The GAN nodes on tiny models, their interrupt latency, and the two GAN workflows on the bundled models."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from nodegraph.engine.api import Engine
from nodegraph.errors import Interrupted, NodeExecutionError, WorkflowError
from nodegraph.models.stylegan import GanModel, StyleLatent

from conftest import run_bundled_workflow
from fixtures_models import PRODUCERS, build_tiny_models


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    models = build_tiny_models(tmp_path_factory.mktemp("models"))
    root = tmp_path_factory.mktemp("gan")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NODEGRAPH_MODELS", str(models["clip"].parent))
        yield Engine("cpu", input_dir=root, output_dir=root / "out", plugins=False)
    torch.set_num_threads(threads)


def _run(engine: Engine, nodes: dict[str, Any], on_event=None):
    return engine.run({**PRODUCERS, **nodes}, on_event=on_event)


def test_invert_edit_adapt_and_render_chain(engine):
    nodes = {
        "invert": {"class_type": "GANInvert", "inputs": {"generator": ["p_gan", 0], "images": ["p_image", 0],
                                                          "classifier": ["p_cls", 0], "steps": 4}},
        "tune": {"class_type": "GANPivotalTuning", "inputs": {"generator": ["p_gan", 0], "latent": ["invert", 0],
                                                               "images": ["p_image", 0], "classifier": ["p_cls", 0],
                                                               "steps": 5}},
        "edit": {"class_type": "StyleCLIP", "inputs": {"generator": ["tune", 0], "latent": ["invert", 0],
                                                        "objective": ["p_objective", 0], "text": ["p_text", 0],
                                                        "steps": 3}},
        "nada": {"class_type": "StyleGANNADA", "inputs": {"generator": ["p_gan", 0], "objective": ["p_objective", 0],
                                                           "source": ["p_text", 0], "target": ["p_text", 0],
                                                           "steps": 2, "batch": 2, "layers": 1}},
        "render": {"class_type": "StyleGANRender", "inputs": {"generator": ["nada", 0], "latent": ["edit", 0]}},
        "o_invert": {"class_type": "Preview", "inputs": {"value": ["invert", 1]}},
        "o_latent": {"class_type": "Preview", "inputs": {"value": ["edit", 0]}},
        "o_gen": {"class_type": "Preview", "inputs": {"value": ["nada", 0]}},
        "o_render": {"class_type": "Preview", "inputs": {"value": ["render", 0]}},
    }
    progress: dict[str, int] = {}
    executed: dict[str, Any] = {}

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "progress":
            progress[data["node"]] = progress.get(data["node"], 0) + 1
        if kind == "executed":
            executed[data["node"]] = data["output"]

    result = _run(engine, nodes, on_event)
    assert progress == {"invert": 4, "tune": 5, "edit": 3, "nada": 2}
    recon = result.outputs["o_invert"]["value"]
    assert recon.shape == (1, 3, 16, 16) and recon.abs().max() <= 1
    assert isinstance(result.outputs["o_latent"]["value"], StyleLatent)
    assert isinstance(result.outputs["o_gen"]["value"], GanModel)
    assert result.outputs["o_render"]["value"].shape == (1, 3, 16, 16)
    assert len(executed["invert"]["psnr"]) == 1  # the reconstruction's PSNR, in the node's executed event
    assert len(executed["tune"]["psnr"]) == 1
    # the adapted and tuned generators are cached like models: a second run trains nothing again
    again = _run(engine, nodes)
    assert "nada" not in again.executed and "tune" not in again.executed


def test_pivotal_tuning_with_no_steps_passes_the_generator_through(engine):
    nodes = {
        "invert": {"class_type": "GANInvert", "inputs": {"generator": ["p_gan", 0], "images": ["p_image", 0],
                                                          "steps": 3}},
        "tune": {"class_type": "GANPivotalTuning", "inputs": {"generator": ["p_gan", 0], "latent": ["invert", 0],
                                                               "images": ["p_image", 0], "steps": 0}},
        "o_gen": {"class_type": "Preview", "inputs": {"value": ["tune", 0]}},
        "o_gan": {"class_type": "Preview", "inputs": {"value": ["p_gan", 0]}},
        "o_recon": {"class_type": "Preview", "inputs": {"value": ["tune", 1]}},
        "o_invert": {"class_type": "Preview", "inputs": {"value": ["invert", 1]}},
    }
    out = _run(engine, nodes).outputs
    assert out["o_gen"]["value"].net is out["o_gan"]["value"].net
    torch.testing.assert_close(out["o_recon"]["value"], out["o_invert"]["value"])


def test_sampled_latents_are_seeded_and_render_the_images_sampled(engine):
    nodes = {"sample": {"class_type": "StyleGANSample", "inputs": {"generator": ["p_gan", 0], "noise": ["noise", 0]}},
             "noise": {"class_type": "Noise", "inputs": {"seed": 4, "batch_size": 3}},
             "render": {"class_type": "StyleGANRender", "inputs": {"generator": ["p_gan", 0], "latent": ["sample", 0]}},
             "o1": {"class_type": "Preview", "inputs": {"value": ["sample", 1]}},
             "o2": {"class_type": "Preview", "inputs": {"value": ["render", 0]}}}
    out = _run(engine, nodes).outputs
    assert out["o1"]["value"].shape == (3, 3, 16, 16)
    torch.testing.assert_close(out["o1"]["value"], out["o2"]["value"])


def test_a_latent_from_another_architecture_and_a_missing_file_are_input_errors(engine):
    _export_small_generator()
    graph = {"other": {"class_type": "StyleGANLoader", "inputs": {"checkpoint": "small.safetensors"}},
             "render": {"class_type": "StyleGANRender",
                        "inputs": {"generator": ["other", 0], "latent": ["p_wlatent", 0]}},
             "o": {"class_type": "Preview", "inputs": {"value": ["render", 0]}}}
    with pytest.raises(NodeExecutionError) as err:
        _run(engine, graph)
    assert err.value.is_input_error and err.value.input == "latent" and err.value.node_id == "render"
    with pytest.raises(WorkflowError, match="missing.pt"):
        _run(engine, {**graph, "other": {"class_type": "StyleGANLoader", "inputs": {"checkpoint": "missing.pt"}}})


def test_a_blended_render_keeps_the_reference_outside_the_edit_region_and_names_bad_inputs(engine):
    nodes = {"noise": {"class_type": "Noise", "inputs": {"seed": 9, "batch_size": 2}},
             "edited": {"class_type": "StyleGANSample", "inputs": {"generator": ["p_gan", 0], "noise": ["noise", 0]}},
             "mask": {"class_type": "MaskFromRect", "inputs": {"width": 16, "height": 16, "x": 2, "y": 3, "w": 8,
                                                                "h": 9}},
             "blend": {"class_type": "StyleGANBlendRender",
                       "inputs": {"generator": ["p_gan", 0], "latent": ["edited", 0],
                                  "reference_latent": ["p_wlatent", 0], "edit_region": ["mask", 0],
                                  "blend_from": 16}},
             "o_blend": {"class_type": "Preview", "inputs": {"value": ["blend", 0]}},
             "o_mask": {"class_type": "Preview", "inputs": {"value": ["mask", 0]}},
             "o_ref": {"class_type": "Preview", "inputs": {"value": ["p_wlatent", 1]}},
             "o_edit": {"class_type": "Preview", "inputs": {"value": ["edited", 1]}}}
    out = {k: v["value"] for k, v in _run(engine, nodes).outputs.items()}
    region = out["o_mask"]
    torch.testing.assert_close(out["o_blend"] * (1 - region), out["o_ref"].expand(2, -1, -1, -1) * (1 - region))
    torch.testing.assert_close(out["o_blend"] * region, out["o_edit"] * region)
    _export_small_generator()
    other = {"other": {"class_type": "StyleGANLoader", "inputs": {"checkpoint": "small.safetensors"}}}
    blend = nodes["blend"]
    for inputs, name in (({"reference_generator": ["other", 0]}, "reference_generator"),
                         ({"edit_region": ["p_mask", 0], "latent": ["p_wlatent", 0]}, None)):
        graph = {**nodes, **other, "blend": {**blend, "inputs": {**blend["inputs"], **inputs}}}
        if name is None:  # a mask of another size is resized to each resolution: allowed
            _run(engine, graph)
            continue
        with pytest.raises(NodeExecutionError) as err:
            _run(engine, graph)
        assert err.value.is_input_error and err.value.node_id == "blend" and err.value.input == name


LAYER_INPUTS = {
    "StyleCLIP": ({"generator": ["p_gan", 0], "latent": ["p_wlatent", 0], "objective": ["p_objective", 0],
                   "text": ["p_text", 0], "steps": 2}, "layers"),
    "StyleGANNADA": ({"generator": ["p_gan", 0], "objective": ["p_objective", 0], "source": ["p_text", 0],
                      "target": ["p_text", 0], "steps": 2, "batch": 1}, "trainable_layers"),
}


@pytest.mark.parametrize("class_type", list(LAYER_INPUTS))
@pytest.mark.parametrize("layers", ["9-3", "five", "0-99"])
def test_a_layer_list_the_generator_cannot_use_names_the_node_and_its_input(engine, class_type, layers):
    inputs, name = LAYER_INPUTS[class_type]
    graph = {"edit": {"class_type": class_type, "inputs": {**inputs, name: layers}},
             "o": {"class_type": "Preview", "inputs": {"value": ["edit", 0]}}}
    with pytest.raises(NodeExecutionError) as err:
        _run(engine, graph)
    assert err.value.is_input_error and err.value.node_id == "edit" and err.value.input == name


def test_nada_trains_on_the_latent_it_is_given_and_refuses_one_of_another_layout(engine):
    nada_inputs = {"generator": ["p_gan", 0], "objective": ["p_objective", 0], "source": ["p_text", 0],
                   "target": ["p_text", 0], "steps": 1, "batch": 2, "trainable_layers": "1-2"}
    nodes = {"invert": {"class_type": "GANInvert", "inputs": {"generator": ["p_gan", 0], "images": ["p_image", 0],
                                                               "steps": 2}},
             "nada": {"class_type": "StyleGANNADA", "inputs": {**nada_inputs, "latent": ["invert", 0]}},
             "o": {"class_type": "Preview", "inputs": {"value": ["nada", 0]}}}
    assert isinstance(_run(engine, nodes).outputs["o"]["value"], GanModel)
    nodes["other"] = {"class_type": "StyleGANSample", "inputs": {"generator": ["small", 0], "noise": ["noise", 0]}}
    nodes["small"] = {"class_type": "StyleGANLoader", "inputs": {"checkpoint": "small.safetensors"}}
    nodes["noise"] = {"class_type": "Noise", "inputs": {"seed": 0, "batch_size": 1}}
    nodes["nada"]["inputs"]["latent"] = ["other", 0]
    _export_small_generator()
    with pytest.raises(NodeExecutionError) as err:
        _run(engine, nodes)
    assert err.value.is_input_error and err.value.node_id == "nada" and err.value.input == "latent"


def _export_small_generator() -> None:
    from nodegraph import weights
    from nodegraph.models.stylegan import Generator, StyleGANConfig
    from nodegraph.train.common import export

    small = Generator(StyleGANConfig(size=8, style_dim=16, n_mlp=1, channels=(8, 8)))
    export(small, weights.models_dir() / "small.safetensors", {"kind": "stylegan", "config": small.cfg.to_dict()})


LONG_NODES: dict[str, dict[str, Any]] = {
    "GANInvert": {"generator": ["p_gan", 0], "images": ["p_image", 0], "steps": 12},
    "GANPivotalTuning": {"generator": ["p_gan", 0], "latent": ["p_wlatent", 0], "images": ["p_image", 0],
                         "steps": 12},
    "StyleCLIP": {"generator": ["p_gan", 0], "latent": ["p_wlatent", 0], "objective": ["p_objective", 0],
                  "text": ["p_text", 0], "steps": 12},
    "StyleGANNADA": {"generator": ["p_gan", 0], "objective": ["p_objective", 0], "source": ["p_text", 0],
                     "target": ["p_text", 0], "steps": 12, "batch": 1},
}


@pytest.mark.parametrize("class_type", list(LONG_NODES))
def test_interrupt_stops_a_long_gan_node_within_one_step(engine, class_type):
    graph = {"node": {"class_type": class_type, "inputs": LONG_NODES[class_type]},
             "out": {"class_type": "Preview", "inputs": {"value": ["node", 0]}}}
    progress: list[float] = []

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "progress" and data["node"] == "node":
            progress.append(time.perf_counter())
            if len(progress) == 3:
                engine.interrupt()

    with pytest.raises(Interrupted):
        _run(engine, graph, on_event)
    assert len(progress) == 3, f"{class_type}: {len(progress) - 3} more step(s) ran after the interrupt"


WORKFLOW_FAST = {
    "styleclip_edit": {"steps": 3, "invert_steps": 4, "tune_steps": 3, "views": 2, "layers": "5-7",
                       "edit_space": "s"},
    "stylegan_nada": {"steps": 2, "invert_steps": 4, "tune_steps": 3, "views": 2, "batch_size": 2},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WORKFLOW_FAST))
def test_gan_workflow_runs_on_the_bundled_models(tmp_path, name, monkeypatch):
    result = run_bundled_workflow(name, WORKFLOW_FAST[name], tmp_path, monkeypatch)
    assert result.files and 0.0 <= result.outputs["score"]["attribute_accuracy"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WORKFLOW_FAST))
def test_a_local_background_edit_keeps_the_reconstructed_shape_pixel_for_pixel(tmp_path, name, monkeypatch):
    from nodegraph.engine.imageio import read_image
    from nodegraph.generate.masks import object_mask

    params = {**WORKFLOW_FAST[name], "edit_region": "background",
              "target": "a large red circle on the left on a yellow background"}
    run_bundled_workflow(name, params, tmp_path, monkeypatch)
    prefix = "nada" if name == "stylegan_nada" else "styleclip"
    [recon_file], [edit_file] = (list(tmp_path.glob(f"{prefix}_{what}_*.png")) for what in ("inverted", "edit"))
    recon, edit = read_image(recon_file)[0], read_image(edit_file)[0]
    # clearly shape: past the node's threshold (0.125) by more than the PNG's rounding could move a pixel
    shape = object_mask(recon, threshold=0.15).bool().expand_as(edit)
    assert shape.any() and not shape.all()
    torch.testing.assert_close(edit[shape], recon[shape], atol=1e-6, rtol=0)  # the same 8-bit values
    assert (edit[~shape] - recon[~shape]).abs().mean() > 0  # and the rest is the edit's
