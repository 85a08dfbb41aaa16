"""Prepacked convolutions and weight snapshots: the reuse must never change a result or serve stale weights."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from nodegraph.models import inference_cache
from nodegraph.models.inference_cache import Conv2d, WeightsSnapshot
from nodegraph.models.unet import UNet

from conftest import small_unet

needs_onednn = pytest.mark.skipif(inference_cache._ONEDNN is None, reason="this torch build has no oneDNN fused ops")


def _plain(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _cl(*shape: int, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)


@needs_onednn
@pytest.mark.parametrize(("cin", "cout", "k", "stride", "size"), [
    (3, 48, 3, 1, 32), (48, 48, 3, 2, 32), (96, 96, 3, 1, 8), (192, 96, 1, 1, 16), (48, 6, 3, 1, 32),
])
def test_prepacked_convolution_equals_the_plain_call(cin, cout, k, stride, size):
    gen = torch.Generator().manual_seed(0)
    conv = Conv2d(cin, cout, k, stride=stride, padding=k // 2).to(memory_format=torch.channels_last).eval()
    with torch.no_grad():
        for batch in (2, 1, 5):  # every shape gets its own packed weight; a new batch size must not be wrong
            x = _cl(batch, cin, size, size, gen=gen)
            out = conv(x)
            torch.testing.assert_close(out, _plain(conv, x), rtol=1e-5, atol=1e-5)
            assert out.is_contiguous(memory_format=torch.channels_last)
    assert len(conv._packed) == 3  # the packed path ran


@needs_onednn
def test_prepacked_bf16_convolution_equals_the_plain_call():
    if not inference_cache._BF16:
        pytest.skip("this CPU has no bf16 convolutions in oneDNN")
    gen = torch.Generator().manual_seed(1)
    conv = Conv2d(64, 64, 3, padding=1).to(torch.bfloat16, memory_format=torch.channels_last).eval()
    x = _cl(2, 64, 16, 16, gen=gen, dtype=torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(conv(x).float(), _plain(conv, x).float(), rtol=1e-2, atol=1e-2)
    assert conv._packed


@needs_onednn
def test_packed_weights_follow_every_kind_of_weight_change():
    gen = torch.Generator().manual_seed(2)
    conv = Conv2d(16, 16, 3, padding=1).to(memory_format=torch.channels_last).eval()
    x = _cl(2, 16, 8, 8, gen=gen)
    with torch.no_grad():
        conv(x)
        conv.weight.add_(0.5)  # in place: an optimizer step
        torch.testing.assert_close(conv(x), _plain(conv, x))
        conv.load_state_dict({"weight": torch.randn(16, 16, 3, 3, generator=gen), "bias": torch.zeros(16)})
        torch.testing.assert_close(conv(x), _plain(conv, x))
        conv.weight.data = torch.randn(16, 16, 3, 3, generator=gen)  # swapped storage, version counter restarts
        torch.testing.assert_close(conv(x), _plain(conv, x))
        conv.bias.add_(1.0)  # the bias is passed on every call, never packed
        torch.testing.assert_close(conv(x), _plain(conv, x))


@needs_onednn
def test_training_and_autograd_take_the_plain_path():
    gen = torch.Generator().manual_seed(3)
    conv = Conv2d(8, 8, 3, padding=1).to(memory_format=torch.channels_last)
    x = _cl(2, 8, 8, 8, gen=gen).requires_grad_(True)
    conv(x).sum().backward()  # the fused op has no backward: it must not be reached here
    assert x.grad is not None and conv.weight.grad is not None
    assert not conv._packed
    with torch.no_grad():
        conv(_cl(2, 8, 8, 8, gen=gen).contiguous())  # NCHW input: plain path too
    assert not conv._packed


@needs_onednn
def test_shapes_kept_per_convolution_are_bounded():
    gen = torch.Generator().manual_seed(4)
    conv = Conv2d(4, 4, 3, padding=1).to(memory_format=torch.channels_last).eval()
    with torch.no_grad():
        for size in range(4, 14):
            x = _cl(1, 4, size, size, gen=gen)
            torch.testing.assert_close(conv(x), _plain(conv, x))
    assert len(conv._packed) == inference_cache._SHAPES_KEPT


def _unet_inputs(gen: torch.Generator) -> dict:
    return dict(x=_cl(2, 3, 16, 16, gen=gen), t=torch.tensor([10, 900]),
                image_embed=F.normalize(torch.randn(2, 8, generator=gen), dim=-1),
                text_tokens=torch.randn(2, 5, 8, generator=gen), text_mask=torch.ones(2, 5, dtype=torch.bool),
                text_embed=torch.randn(2, 8, generator=gen))


@needs_onednn
def test_unet_with_packed_convolutions_equals_the_plain_network(monkeypatch):
    net, gen = small_unet(), torch.Generator().manual_seed(5)
    inputs = _unet_inputs(gen)
    with torch.no_grad():
        packed = net(**inputs)
        monkeypatch.setattr(inference_cache, "_ONEDNN", None)
        plain = net(**inputs)
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-6)


@needs_onednn
def test_copies_of_a_network_with_packed_weights():
    """NADA and DiffusionCLIP deep-copy networks that have sampled; the server pickles nothing, but a user may."""
    net, gen = small_unet(), torch.Generator().manual_seed(6)
    inputs = _unet_inputs(gen)
    with torch.no_grad():
        before = net(**inputs)
        twin = copy.deepcopy(net)
        for p in twin.parameters():
            p.mul_(1.1)  # the copy's packed weights must be its own, not the original's
        torch.testing.assert_close(net(**inputs), before)
        assert not torch.allclose(twin(**inputs), before)
        restored = pickle.loads(pickle.dumps(net))
        torch.testing.assert_close(restored(**inputs), before)


def test_weights_snapshot():
    w = torch.nn.Parameter(torch.ones(3))
    snap = WeightsSnapshot([w])
    assert snap.matches([w])
    with torch.no_grad():
        w.add_(1)
    assert not snap.matches([w])
    snap = WeightsSnapshot([w])
    w.data = torch.ones(3)
    assert not snap.matches([w])
    snap = WeightsSnapshot([w])
    assert not snap.matches([w.to(torch.float64)])
    assert not snap.matches([w, w])


def _dense(net: UNet, inputs: dict, monkeypatch) -> torch.Tensor:
    """The forward with every step-invariant part recomputed (what training runs)."""
    import nodegraph.models.unet as unet

    with monkeypatch.context() as patch:
        patch.setattr(unet, "_recomputes", lambda module, x: True)
        return net(**inputs)


def test_unet_conditioning_memo_never_serves_stale_conditions(monkeypatch):
    net, gen = small_unet(), torch.Generator().manual_seed(7)
    first, second = _unet_inputs(gen), _unet_inputs(gen)
    with torch.no_grad():
        for t in (900, 500, 10):  # a sampler's steps: the first fills the memo, the others reuse it
            step = {**first, "t": torch.tensor([t, t])}
            torch.testing.assert_close(net(**step), _dense(net, step, monkeypatch))
        torch.testing.assert_close(net(**second), _dense(net, second, monkeypatch))  # another text and image
        edited = {**second, "text_tokens": second["text_tokens"].clone()}
        edited["text_tokens"][1, 2] += 1.0  # same objects' shapes, one value changed
        torch.testing.assert_close(net(**edited), _dense(net, edited, monkeypatch))
        off = {**second, "text_mask": torch.zeros(2, 5, dtype=torch.bool), "image_on": torch.tensor([1.0, 0.0])}
        torch.testing.assert_close(net(**off), _dense(net, off, monkeypatch))  # the CFG null branch
        bare = {"x": _cl(3, 3, 16, 16, gen=gen), "t": torch.tensor([5, 5, 5])}  # every condition absent, new batch
        torch.testing.assert_close(net(**bare), _dense(net, bare, monkeypatch))


def test_unet_conditioning_memo_follows_weight_updates(monkeypatch):
    """A decoder sampled between fine-tuning steps (DiffusionCLIP's previews) must see its new weights."""
    net, gen = small_unet(), torch.Generator().manual_seed(8)
    inputs = _unet_inputs(gen)
    with torch.no_grad():
        net(**inputs)
        net.text_proj.weight.add_(0.1)  # the context tokens
        torch.testing.assert_close(net(**inputs), _dense(net, inputs, monkeypatch))
        attention = next(m for m in net.modules() if m.__class__.__name__ == "AttentionBlock")
        attention.context_kv.bias.add_(0.3)  # one attention block's context keys and values
        torch.testing.assert_close(net(**inputs), _dense(net, inputs, monkeypatch))
        net.null_image.add_(0.5)  # a parameter, not a module
        off = {**inputs, "image_on": torch.tensor([0.0, 0.0])}
        torch.testing.assert_close(net(**off), _dense(net, off, monkeypatch))


def test_moving_or_casting_a_network_forgets_what_it_remembered(monkeypatch):
    """The memos and packed weights hold the old device's (or dtype's) tensors: offloading a model must free them."""
    from nodegraph.models.prior import PriorConfig, PriorTransformer

    net, gen = small_unet(), torch.Generator().manual_seed(9)
    inputs = _unet_inputs(gen)
    with torch.no_grad():
        net(**inputs)
        convs = [m for m in net.modules() if isinstance(m, Conv2d)]
        assert net._conditions_memo._last is not None  # the conditions and every attention block's context heads
        net.to(torch.float64)
        assert net._conditions_memo._last is None
        assert all(not c._packed and c._packed_for is None for c in convs)
        wide = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
        torch.testing.assert_close(net(**wide), _dense(net, wide, monkeypatch))
    prior = PriorTransformer(PriorConfig(clip_dim=16, text_width=8, context_length=6, width=32, layers=2,
                                         heads=2)).eval()
    text = (torch.randn(2, 6, 8, generator=gen), torch.ones(2, 6, dtype=torch.bool), torch.randn(2, 16, generator=gen))
    with torch.no_grad():
        prior(torch.randn(2, 16, generator=gen), torch.tensor([3, 3]), *text)
        assert prior._prefix_memo._last is not None
        prior.to(torch.float64)
        assert prior._prefix_memo._last is None
