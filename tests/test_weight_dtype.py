"""bf16 weights for the diffusion networks (the loaders' `dtype` input): the network computes in bf16, the
sampler keeps x_t and its arithmetic in fp32; fp32 stays the default and is untouched by a bf16 copy."""

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
    half = prior.with_weight_dtype("bf16")
    assert half is not prior and half.net is not prior.net
    assert {p.dtype for p in half.net.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in prior.net.parameters()} == {torch.float32}
    assert half.net.embed_mean.dtype == half.net.embed_std.dtype == torch.float32  # statistics keep fp32
    assert prior.with_weight_dtype("fp32") is prior
    with pytest.raises(KeyError):
        prior.with_weight_dtype("fp8")


@torch.no_grad()
def test_bf16_sampling_returns_fp32_close_to_the_fp32_result(tiny):
    _, m = tiny
    text = m["clip"].encode_text([PROMPT])
    x = torch.randn(2, 3, DECODER_SIZE, DECODER_SIZE, generator=torch.Generator().manual_seed(0))
    guidance = Guidance.cfg(Condition(text=text), 3.0)
    settings = SamplerSettings(steps=8)
    full = run_denoiser(m["decoder"], x, guidance, settings)
    half = run_denoiser(m["decoder"].with_weight_dtype("bf16"), x, guidance, settings)
    assert half.dtype == torch.float32
    assert (half - full).abs().mean() < 0.05  # bf16 keeps 8 bits of mantissa: about 1% per forward

    emb = sample_prior(m["prior"], Condition(text=text), 2.0, settings, 2, generator=torch.Generator().manual_seed(1))
    emb_half = sample_prior(m["prior"].with_weight_dtype("bf16"), Condition(text=text), 2.0, settings, 2,
                            generator=torch.Generator().manual_seed(1))
    assert emb_half.dtype == torch.float32
    torch.testing.assert_close(emb_half.norm(dim=-1), torch.ones(2))
    assert F.cosine_similarity(emb, emb_half).min() > 0.95


@torch.no_grad()
def test_bf16_upsampling_and_inversion_run(tiny):
    _, m = tiny
    low = torch.rand(1, 3, LOW_RES, LOW_RES) * 2 - 1
    out = upsample(m["upsampler"].with_weight_dtype("bf16"), low, SamplerSettings(steps=3))
    assert out.dtype == torch.float32 and out.abs().max() <= 1
    text = m["clip"].encode_text([PROMPT])
    image = torch.rand(1, 3, DECODER_SIZE, DECODER_SIZE) * 2 - 1
    x_t, steps = invert(m["decoder"].with_weight_dtype("bf16"), image, Condition(text=text), SamplerSettings(steps=4))
    assert x_t.dtype == torch.float32 and torch.isfinite(x_t).all() and len(steps) == 4


def test_loader_nodes_offer_bf16_and_default_to_fp32(tiny, tmp_path, monkeypatch):
    paths, _ = tiny
    monkeypatch.setenv("NODEGRAPH_MODELS", str(paths["clip"].parent))
    workflow = json.loads((REPO / "workflows" / "dalle2_text2img.json").read_text())
    nodes = workflow["nodes"]
    for loader in ("prior_model", "decoder_model", "upsampler_model"):
        assert "dtype" not in nodes[loader]["inputs"]  # the shipped workflow runs fp32
        nodes[loader]["inputs"]["dtype"] = "bf16"
    engine = Engine("cpu", output_dir=tmp_path / "out")
    result = engine.run(workflow, params={"prior_steps": 2, "steps": 3, "upsample_steps": 2})
    assert len(result.files) == 1
    nodes["decoder_model"]["inputs"]["dtype"] = "fp16"
    with pytest.raises(WorkflowError, match="fp16"):
        engine.run(workflow)


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
