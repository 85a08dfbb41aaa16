"""Precisions of the diffusion networks (the loaders' `dtype` input): "bf16" computes the network in bf16, "auto"
(the default) only the UNets' convolutions and only where the CPU has native bf16; the sampler keeps x_t and its
arithmetic in fp32, and the model a copy came from is untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nodegraph.engine.api import Engine
from nodegraph.errors import WorkflowError
from nodegraph.generate.conditions import Condition, Guidance
from nodegraph.generate.sampling import SamplerSettings, invert, run_denoiser, sample_prior, upsample
from nodegraph.models.clip import load_clip
from nodegraph.models.diffusion_model import load_diffusion_model

from fixtures_models import DECODER_SIZE, LOW_RES, build_tiny_models

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a large red circle on the left on a blue background"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    paths = build_tiny_models(tmp_path_factory.mktemp("models"))
    models = {"clip": load_clip(paths["clip"])}
    for family in ("prior", "decoder", "upsampler"):
        models[family] = load_diffusion_model(paths[family], expect_kind=family)
    return paths, models


def test_a_bf16_copy_leaves_the_fp32_model_alone(tiny):
    _, m = tiny
    prior = m["prior"]
    half = prior.with_precision("bf16")
    assert half is not prior and half.net is not prior.net
    assert {p.dtype for p in half.net.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in prior.net.parameters()} == {torch.float32}
    assert half.net.embed_mean.dtype == half.net.embed_std.dtype == torch.float32  # statistics keep fp32
    assert prior.with_precision("fp32") is prior
    with pytest.raises(ValueError, match="fp8"):
        prior.with_precision("fp8")


@torch.no_grad()
def test_bf16_sampling_returns_fp32_close_to_the_fp32_result(tiny):
    _, m = tiny
    text = m["clip"].encode_text([PROMPT])
    x = torch.randn(2, 3, DECODER_SIZE, DECODER_SIZE, generator=torch.Generator().manual_seed(0))
    guidance = Guidance.cfg(Condition(text=text), 3.0)
    settings = SamplerSettings(steps=8)
    full = run_denoiser(m["decoder"], x, guidance, settings)
    half = run_denoiser(m["decoder"].with_precision("bf16"), x, guidance, settings)
    assert half.dtype == torch.float32
    assert (half - full).abs().mean() < 0.05  # bf16 keeps 8 bits of mantissa: about 1% per forward

    emb = sample_prior(m["prior"], Condition(text=text), 2.0, settings, 2, generator=torch.Generator().manual_seed(1))
    emb_half = sample_prior(m["prior"].with_precision("bf16"), Condition(text=text), 2.0, settings, 2,
                            generator=torch.Generator().manual_seed(1))
    assert emb_half.dtype == torch.float32
    torch.testing.assert_close(emb_half.norm(dim=-1), torch.ones(2))
    assert F.cosine_similarity(emb, emb_half).min() > 0.95


@torch.no_grad()
def test_bf16_upsampling_and_inversion_run(tiny):
    _, m = tiny
    low = torch.rand(1, 3, LOW_RES, LOW_RES) * 2 - 1
    out = upsample(m["upsampler"].with_precision("bf16"), low, SamplerSettings(steps=3))
    assert out.dtype == torch.float32 and out.abs().max() <= 1
    text = m["clip"].encode_text([PROMPT])
    image = torch.rand(1, 3, DECODER_SIZE, DECODER_SIZE) * 2 - 1
    x_t, steps = invert(m["decoder"].with_precision("bf16"), image, Condition(text=text), SamplerSettings(steps=4))
    assert x_t.dtype == torch.float32 and torch.isfinite(x_t).all() and len(steps) == 4


def test_loader_nodes_offer_the_precisions_and_default_to_auto(tiny, tmp_path, monkeypatch):
    paths, _ = tiny
    monkeypatch.setenv("NODEGRAPH_MODELS", str(paths["clip"].parent))
    workflow = json.loads((REPO / "workflows" / "dalle2_text2img.json").read_text())
    nodes = workflow["nodes"]
    engine = Engine("cpu", output_dir=tmp_path / "out")
    params = {"prior_steps": 2, "steps": 3, "upsample_steps": 2}
    for loader in ("prior_model", "decoder_model", "upsampler_model"):
        assert "dtype" not in nodes[loader]["inputs"]  # the shipped workflow takes the loaders' default
    engine.run(workflow, params=params)
    for loader in ("prior_model", "decoder_model", "upsampler_model"):
        nodes[loader]["inputs"]["dtype"] = "bf16"
    result = engine.run(workflow, params=params)
    assert len(result.files) == 1
    nodes["decoder_model"]["inputs"]["dtype"] = "fp16"
    with pytest.raises(WorkflowError, match="fp16"):
        engine.run(workflow)


def test_the_loader_default_is_auto():
    from nodes.loaders import DecoderLoader, PriorLoader, UpsamplerLoader

    for node in (PriorLoader, DecoderLoader, UpsamplerLoader):
        assert node.inputs["dtype"].default == "auto"
        assert set(node.inputs["dtype"].choices) == {"auto", "fp32", "bf16"}


def test_auto_convolves_in_bf16_only_where_the_cpu_has_it_and_never_under_autograd(monkeypatch):
    import nodegraph.models.inference_cache as ic

    torch.manual_seed(0)
    conv = ic.Conv2d(32, 48, 3, padding=1)
    x = torch.randn(2, 32, 8, 8).to(memory_format=torch.channels_last)
    with torch.no_grad():
        full = conv(x)
        conv.compute_dtype = torch.bfloat16
        monkeypatch.setattr(ic, "_BF16", False)  # a CPU without native bf16: the fp32 convolution, bit for bit
        assert torch.equal(conv(x), full)
        monkeypatch.setattr(ic, "_BF16", True)
        if not ic._onednn_bf16() or ic._ONEDNN is None:
            pytest.skip("this CPU has no native bf16 convolutions")
        mixed = conv(x)
        # What it computes: bf16-rounded map and weight, fp32 accumulation and bias, the sum rounded to bf16.
        rounded = F.conv2d(x.bfloat16().float(), conv.weight.bfloat16().float(), conv.bias, padding=1)
    assert mixed.dtype == torch.float32 and mixed.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(mixed, full)
    torch.testing.assert_close(mixed, rounded, atol=0, rtol=2**-8)  # bf16's last bit of the output
    with torch.enable_grad():
        x.requires_grad_(True)
        assert torch.equal(conv(x), full)  # training and fine-tuning (DiffusionCLIP) stay fp32


@torch.no_grad()
def test_auto_is_a_copy_and_samples_close_to_fp32(tiny):
    _, m = tiny
    decoder = m["decoder"]
    auto = decoder.with_precision("auto")
    assert auto is not decoder and auto.precision == "auto" and decoder.precision == "fp32"
    assert {p.dtype for p in auto.net.parameters()} == {torch.float32}
    back = auto.with_precision("fp32")
    assert back.precision == "fp32" and back is not auto
    assert auto.with_precision("auto") is auto
    own = load_diffusion_model(tiny[0]["decoder"], expect_kind="decoder")
    weight = next(own.net.parameters())
    assert own.with_precision("auto", copy_weights=False) is own and own.precision == "auto"
    assert next(own.net.parameters()) is weight  # converted in place: no second copy of the weights
    text = m["clip"].encode_text([PROMPT])
    x = torch.randn(2, 3, DECODER_SIZE, DECODER_SIZE, generator=torch.Generator().manual_seed(0))
    guidance = Guidance.cfg(Condition(text=text), 3.0)
    settings = SamplerSettings(steps=8)
    full = run_denoiser(decoder, x, guidance, settings)
    mixed = run_denoiser(auto, x, guidance, settings)
    half = run_denoiser(decoder.with_precision("bf16"), x, guidance, settings)
    assert mixed.dtype == torch.float32
    assert (mixed - full).abs().mean() <= (half - full).abs().mean() + 1e-6  # closer than all-bf16, or equal
    assert (mixed - full).abs().mean() < 0.02
    assert torch.equal(run_denoiser(back, x, guidance, settings), full)  # back to fp32: bit for bit


def test_unet_norms_and_attention_compute_bf16_activations_in_fp32():
    """torch's bf16 GroupNorm is up to 4x slower on channels-last maps and its fused attention slower than fp32's:
    the UNet computes both in fp32 and hands bf16 on; fp32 goes through nn.GroupNorm bit for bit."""
    from nodegraph.models.unet import GroupNorm, attention

    norm = GroupNorm(4, 16)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 16, 8, 8).to(memory_format=torch.channels_last)
    assert torch.equal(norm(x), torch.nn.functional.group_norm(x, 4, norm.weight, norm.bias, norm.eps))
    full = norm(x)
    half = norm.to(torch.bfloat16)(x.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=0.05, rtol=0.02)
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), None)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), attention(q, k, v, None), atol=0.05, rtol=0.02)


@torch.no_grad()
def test_auto_keeps_the_rows_of_a_batch_together_on_the_bundled_decoder():
    """bf16 convolutions may reduce an odd batch's rows in different orders and round them apart; on the bundled
    decoder that stays within about one 8-bit level (fp32: equal up to float rounding), never a visible change."""
    from nodegraph.models import loader

    clip, decoder = loader.load("clip"), loader.load("decoder")
    text = clip.encode_text([PROMPT] * 3)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).repeat(3, 1, 1, 1)
    guidance = Guidance.cfg(Condition(text=text), 3.0)
    out = run_denoiser(decoder.with_precision("auto"), x, guidance, SamplerSettings(steps=20))
    apart = (out - out[:1]).abs()
    assert apart.max() < 4 / 255 and apart.mean() < 1 / 255
    full = run_denoiser(decoder, x, guidance, SamplerSettings(steps=20))
    assert (out - full).abs().mean() < 2 / 255  # and close to the fp32 images
