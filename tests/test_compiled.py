"""A UNet's inference compiled by torch.compile (models/compiled.py): same results as the network as written,
never stale weights, and the network as written wherever the compiled code does not apply."""

from __future__ import annotations

import copy
import gc
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nodegraph.engine.api import Engine
from nodegraph.errors import InputValueError, NodeExecutionError
from nodegraph.models import compiled as compiled_module
from nodegraph.models.diffusion_model import DiffusionModel, DiffusionSpec
from nodegraph.models.unet import UNet

from conftest import REPO, small_unet

pytestmark = [
    pytest.mark.slow,  # each compilation takes seconds
    pytest.mark.skipif(not compiled_module.has_compiler(), reason="no C++ compiler"),
]

# bf16 convolutions ("auto") round the maps to 8 bits of mantissa, as the network as written does on this CPU;
# fp32 differs only by the order of fused arithmetic.
FP32 = {"rtol": 1e-4, "atol": 1e-5}
AUTO = {"rtol": 0.0, "atol": 0.05}


def inputs(gen: torch.Generator, batch: int = 2) -> dict:
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return dict(x=torch.randn(batch, 3, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last),
                t=torch.arange(batch) * 300 + 10, image_embed=F.normalize(torch.randn(batch, 8, generator=gen), dim=-1),
                image_on=(torch.arange(batch) % 2).float(), text_tokens=torch.randn(batch, 5, 8, generator=gen),
                text_mask=mask, text_embed=torch.randn(batch, 8, generator=gen))


def as_written(net: UNet, x: dict) -> torch.Tensor:
    twin = copy.deepcopy(net)  # a copy starts uncompiled
    assert not twin.compiled
    with torch.no_grad():
        return twin(**x)


@pytest.fixture(scope="module")
def compiled_net() -> UNet:
    net = small_unet()
    net.compile_for_inference()
    with torch.no_grad():
        net(**inputs(torch.Generator().manual_seed(0)))  # compiles for batch 2
    return net


def test_compiled_unet_equals_the_network_as_written_over_a_samplers_steps(compiled_net):
    gen = torch.Generator().manual_seed(1)
    x = inputs(gen)
    with torch.no_grad():
        for t in (999, 500, 3):  # one set of conditions, several steps: the memo and the compiled code together
            step = {**x, "t": torch.tensor([t, t]), "x": torch.randn(2, 3, 16, 16, generator=gen)}
            torch.testing.assert_close(compiled_net(**step), as_written(compiled_net, step), **FP32)
        other = inputs(gen)  # new conditions, new noise
        torch.testing.assert_close(compiled_net(**other), as_written(compiled_net, other), **FP32)
        bare = {"x": other["x"], "t": other["t"]}  # every condition absent: no context heads at all
        torch.testing.assert_close(compiled_net(**bare), as_written(compiled_net, bare), **FP32)
        three = inputs(gen, batch=3)  # another batch size compiles again
        torch.testing.assert_close(compiled_net(**three), as_written(compiled_net, three), **FP32)


def test_the_compiled_code_serves_inference_and_the_python_method_everything_else(compiled_net, monkeypatch):
    x = inputs(torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = compiled_net(**x)

    def refuse(*args, **kwargs):
        raise AssertionError("the network as written ran")

    monkeypatch.setattr(UNet, "denoise", refuse)
    with torch.no_grad():
        torch.testing.assert_close(compiled_net(**x), expected, rtol=0, atol=0)  # not through UNet.denoise
    with pytest.raises(AssertionError, match="as written"):
        compiled_net(**x)  # autograd on: the network as written
    compiled_net.train()
    try:
        with torch.no_grad(), pytest.raises(AssertionError, match="as written"):
            compiled_net(**x)  # training mode (dropout): as written
    finally:
        compiled_net.eval()


def test_gradients_flow_through_a_compiled_network_as_written():
    net = small_unet(seed=3).requires_grad_(True)
    net.compile_for_inference()
    x = inputs(torch.Generator().manual_seed(3))
    out = net(**x)
    out.square().mean().backward()
    assert out.requires_grad and net.inp.weight.grad is not None and net.inp.weight.grad.abs().sum() > 0


def test_weights_changed_after_compiling_are_never_served_stale():
    """The compiled code holds the weights frozen in; an optimiser step or load_state_dict must still be seen."""
    net = small_unet(seed=4)
    net.compile_for_inference()
    gen = torch.Generator().manual_seed(4)
    x = inputs(gen)
    with torch.no_grad():
        before = net(**x)
        net.out[-1].bias.add_(0.5)  # in place, as an optimiser step does
        after = net(**x)
        torch.testing.assert_close(after, as_written(net, x), **FP32)
        assert (after - before).abs().min() > 0.4
        state = {k: v + 0.01 for k, v in small_unet(seed=5).state_dict().items()}
        net.load_state_dict(state)
        torch.testing.assert_close(net(**x), as_written(net, x), **FP32)


def test_a_moved_or_cast_network_stays_compiled_for_its_new_weights(monkeypatch):
    net = small_unet(seed=6)
    net.compile_for_inference()
    x = inputs(torch.Generator().manual_seed(6))
    with torch.no_grad():
        net(**x)
        net.to(torch.float64)  # new weights: the old frozen copy is dropped; float64 is not compiled
        assert net.compiled
        wide = {k: v.double() if v.is_floating_point() else v for k, v in x.items()}
        torch.testing.assert_close(net(**wide), as_written(net, wide), rtol=0, atol=0)
        net.to(torch.float32)  # and back: compiled again for these weights on the next call
        expected = as_written(net, x)
        monkeypatch.setattr(UNet, "denoise", None)  # the compiled code must serve it
        torch.testing.assert_close(net(**x), expected, **FP32)


def test_a_compiled_network_gives_the_same_results_on_another_thread_count(compiled_net):
    x = inputs(torch.Generator().manual_seed(7))
    threads = torch.get_num_threads()
    with torch.no_grad():
        first = compiled_net(**x)
        torch.set_num_threads(1 if threads > 1 else 2)
        try:
            other = compiled_net(**x)
        finally:
            torch.set_num_threads(threads)
    torch.testing.assert_close(other, first, **FP32)


def test_a_dropped_compiled_network_frees_its_weights():
    """A server that swaps models must not keep every model it ever compiled (dynamo's guards hold the compiled
    graphs, which hold the frozen weights, through a global registry of finalizers)."""
    net = small_unet(seed=9)
    net.compile_for_inference()
    with torch.no_grad():
        net(**inputs(torch.Generator().manual_seed(9)))
    network, weight = weakref.ref(net), weakref.ref(net.inp.weight)
    del net
    gc.collect()
    gc.collect()  # the first pass runs the finalizer that breaks the cycle; the second frees what it held
    assert network() is None and weight() is None


def test_auto_precision_compiles_its_bf16_convolutions():
    net = small_unet(seed=8)
    spec = DiffusionSpec()
    model = DiffusionModel("decoder", net, spec.build(), spec).with_precision("auto", copy_weights=False)
    x = inputs(torch.Generator().manual_seed(8))
    with torch.no_grad():
        eager = model.net(**x)
        assert model.compile_for_inference() is model and model.compiled
        torch.testing.assert_close(model.net(**x), eager, **AUTO)


def test_compiling_the_prior_or_without_a_compiler_is_refused_clearly(monkeypatch):
    from nodegraph.models.prior import PriorConfig, PriorTransformer

    spec = DiffusionSpec()
    prior = DiffusionModel("prior", PriorTransformer(PriorConfig(clip_dim=16, text_width=8, context_length=6, width=32,
                                                                 layers=1, heads=2)), spec.build(), spec)
    with pytest.raises(ValueError, match="UNets"):
        prior.compile_for_inference()
    monkeypatch.setattr(compiled_module.shutil, "which", lambda name: None)
    with pytest.raises(InputValueError, match="C\\+\\+ compiler") as info:
        small_unet().compile_for_inference()
    assert info.value.input == "compile"


MAIN = REPO / "workflows" / "dalle2_text2img.json"
FAST = {"steps": 4, "prior_steps": 4, "upsample_steps": 3}


def test_the_main_workflow_with_its_unets_compiled_makes_the_same_images(tmp_path, monkeypatch):
    calls = []
    serve = compiled_module.CompiledForward.__call__
    monkeypatch.setattr(compiled_module.CompiledForward, "__call__",
                        lambda self, *args: calls.append(args[0].shape[0]) or serve(self, *args))
    engine = Engine("cpu", input_dir=tmp_path, output_dir=tmp_path, plugins=False)
    plain = engine.run(str(MAIN), params=FAST)
    assert not calls
    both = {**FAST, "compile_decoder": True, "compile_upsampler": True}
    compiled = engine.run(str(MAIN), params=both)
    assert calls == [2] * 4 + [1] * 3  # every decoder step (CFG: batch 2) and every upsampler step
    for a, b in zip(plain.files, compiled.files, strict=True):
        x = np.asarray(Image.open(a), dtype=np.float64)
        y = np.asarray(Image.open(b), dtype=np.float64)
        mse = ((x - y) ** 2).mean()
        assert mse == 0 or 10 * np.log10(255**2 / mse) > 40  # bf16 rounding in another order, nothing more


def test_a_machine_without_a_compiler_gets_an_error_naming_the_node_and_input(tmp_path, monkeypatch):
    monkeypatch.setattr(compiled_module.shutil, "which", lambda name: None)
    engine = Engine("cpu", input_dir=tmp_path, output_dir=tmp_path, plugins=False)
    with pytest.raises(NodeExecutionError) as info:
        engine.run(str(MAIN), params={**FAST, "compile_decoder": True})
    error = info.value
    assert (error.node_id, error.input, error.is_input_error) == ("decoder_model", "compile", True)
    assert "C++ compiler" in str(error) and "set compile to false" in str(error)
