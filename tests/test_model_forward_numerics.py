"""The bundled networks' fast forward passes equal the plain formulation they were trained with, within fp32
rounding: token-major fused attention in the UNet, and the prior's text-prefix keys/values computed once per
text instead of at every step. The references below are written out (softmax(q·k/√d)·v), independent of
which attention kernel torch picks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nodegraph.models import loader
from nodegraph.models.unet import AttentionBlock, timestep_embedding

TOL = {"rtol": 1e-5, "atol": 1e-5}


def reference_attention(block: AttentionBlock, x, context_kv, context_mask):
    """Channel-major attention: the 1x1 Conv1d projections on [B, C, N], heads split channel = head * d + i.
    `context_kv` is the context's projection [B, L, 2C] as the weights give it (`reference_context`)."""
    b, c, h, w = x.shape
    q, k, v = block.qkv(block.norm(x).reshape(b, c, -1)).chunk(3, dim=1)
    visible = torch.ones(b, h * w, dtype=torch.bool)
    if context_kv is not None:
        ck, cv = context_kv.transpose(1, 2).chunk(2, dim=1)
        k, v = torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)
        visible = torch.cat([context_mask, visible], dim=1)
    d = c // block.heads
    q, k, v = (t.reshape(b, block.heads, d, -1) for t in (q, k, v))
    logits = torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(d)
    weights = logits.masked_fill(~visible[:, None, None, :], float("-inf")).softmax(-1)
    out = torch.einsum("bhnm,bhdm->bhdn", weights, v).reshape(b, c, -1)
    return x + block.proj(out).view(b, c, h, w)


def reference_context(block: AttentionBlock, context):
    """What the reference takes in place of the fast path's context heads: the projection, not yet split."""
    return block.context_kv(context)


def reference_prior(net, x, t, tokens, mask, embed, on):
    """The prior as one causal pass over [text tokens, text embedding, timestep, x_t, query]."""
    b, cfg = x.shape[0], net.cfg
    tokens = torch.where(on[:, None, None], tokens, net.null_text_tokens)
    embed = torch.where(on[:, None], embed, net.null_text_embed)
    keep = torch.where(on[:, None], mask, torch.arange(mask.shape[1]) == 0)
    seq = torch.cat([
        net.text_tokens_in(tokens),
        net.text_embed_in(F.normalize(embed, dim=-1) * math.sqrt(cfg.clip_dim))[:, None],
        net.time_in(timestep_embedding(t, cfg.width))[:, None],
        net.x_in(x)[:, None],
        net.query.expand(b, 1, -1),
    ], dim=1) + net.pos
    n, heads = seq.shape[1], cfg.heads
    allowed = (net.causal[None] & torch.cat([keep, keep.new_ones(b, 4)], dim=1)[:, None, :])[:, None]
    for block in net.blocks:
        q, k, v = block.qkv(block.ln1(seq)).view(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
        seq = seq + block.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1))
        seq = seq + block.mlp(block.ln2(seq))
    return net.out(net.ln_out(seq[:, -1]))


@pytest.fixture(scope="module")
def bundled():
    return {family: loader.load(family).net for family in ("prior", "decoder", "upsampler")}


def _decoder_inputs(gen):
    """Batch 3: all conditions on; text partly masked; every condition off (the CFG null branch)."""
    mask = torch.zeros(3, 32, dtype=torch.bool)
    mask[0, :13], mask[1, :5] = True, True
    return (torch.randn(3, 3, 32, 32, generator=gen), torch.tensor([999, 500, 3])), {
        "image_embed": F.normalize(torch.randn(3, 128, generator=gen), dim=-1),
        "image_on": torch.tensor([1.0, 1.0, 0.0]),
        "text_tokens": torch.randn(3, 32, 128, generator=gen), "text_mask": mask,
        "text_embed": torch.randn(3, 128, generator=gen),
    }


def _upsampler_inputs(gen):
    return (torch.randn(2, 3, 64, 64, generator=gen), torch.tensor([700, 20])), {
        "extra": torch.randn(2, 3, 64, 64, generator=gen), "aug_level": torch.tensor([50, 0])}


@pytest.mark.parametrize("family", ["decoder", "upsampler"])
def test_unet_attention_equals_the_channel_major_formulation(bundled, family, monkeypatch):
    net, gen = bundled[family], torch.Generator().manual_seed(0)
    args, kwargs = (_decoder_inputs if family == "decoder" else _upsampler_inputs)(gen)
    with torch.no_grad():
        fast = net(*args, **kwargs)
        with monkeypatch.context() as patch:
            patch.setattr(AttentionBlock, "forward", reference_attention)
            patch.setattr(AttentionBlock, "context_heads", reference_context)
            net._conditions_memo.clear()  # it holds the fast path's context heads
            reference = net(*args, **kwargs)
        net._conditions_memo.clear()  # and now the reference's: the other tests share this network
    torch.testing.assert_close(fast, reference, **TOL)


def test_unet_attention_takes_channels_first_inputs_too(bundled, monkeypatch):
    """Training builds the UNet without channels-last weights: the token-major views must not assume it."""
    gen = torch.Generator().manual_seed(1)
    block = next(m for m in bundled["decoder"].modules() if isinstance(m, AttentionBlock))
    x = torch.randn(2, block.norm.num_channels, 8, 8, generator=gen)
    context, mask = torch.randn(2, 36, block.context_kv.in_features, generator=gen), torch.ones(2, 36, dtype=bool)
    mask[1, 4:] = False
    with torch.no_grad():
        for layout in (torch.contiguous_format, torch.channels_last):
            xl = x.to(memory_format=layout)
            torch.testing.assert_close(block(xl, block.context_heads(context), mask),
                                       reference_attention(block, xl, block.context_kv(context), mask), **TOL)


def _prior_inputs(gen, b=4):
    mask = torch.zeros(b, 32, dtype=torch.bool)
    mask[:, :13] = True
    return (torch.randn(b, 32, 128, generator=gen), mask, torch.randn(b, 128, generator=gen),
            torch.tensor([True, True, False, False]))


def test_prior_with_cached_text_prefix_equals_the_full_causal_pass(bundled):
    net, gen = bundled["prior"], torch.Generator().manual_seed(2)
    text = _prior_inputs(gen)
    with torch.no_grad():
        for t in (999, 500, 0):  # the first call fills the prefix memo, the others reuse it
            x, ts = torch.randn(4, 128, generator=gen), torch.full((4,), t)
            torch.testing.assert_close(net(x, ts, *text), reference_prior(net, x, ts, *text), **TOL)
        other = _prior_inputs(gen)  # another text must not be served the first one's prefix
        torch.testing.assert_close(net(x, ts, *other), reference_prior(net, x, ts, *other), **TOL)
        with torch.enable_grad():  # training's path: one dense pass
            torch.testing.assert_close(net(x, ts, *other), reference_prior(net, x, ts, *other), **TOL)


def test_prior_prefix_memo_follows_weight_updates():
    """A prior sampled while it is being trained (evaluation between optimizer steps) must see new weights."""
    from nodegraph.models.prior import PriorConfig, PriorTransformer

    torch.manual_seed(0)
    net = PriorTransformer(PriorConfig(clip_dim=16, text_width=8, context_length=6, width=32, layers=2, heads=2))
    net.eval()
    gen = torch.Generator().manual_seed(3)
    text = (torch.randn(2, 6, 8, generator=gen), torch.ones(2, 6, dtype=torch.bool), torch.randn(2, 16, generator=gen),
            torch.tensor([True, False]))
    x, t = torch.randn(2, 16, generator=gen), torch.tensor([5, 5])
    with torch.no_grad():
        net(x, t, *text)
        net.blocks[0].qkv.weight.add_(0.1)  # in place, as an optimizer step or load_state_dict does
        net.text_tokens_in.weight.mul_(2.0)
        torch.testing.assert_close(net(x, t, *text), reference_prior(net, x, t, *text), **TOL)
