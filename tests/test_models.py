"""The model library: checkpoint loading, CLIP, UNet and prior conditioning switches."""

from __future__ import annotations

import pytest
import torch

from nodegraph.errors import CheckpointError
from nodegraph.models.checkpoint import load_into, load_state_dict, read_metadata, save_safetensors
from nodegraph.models.clip import build_clip, load_clip
from nodegraph.models.diffusion_model import load_diffusion_model
from nodegraph.models.prior import PriorConfig, PriorTransformer
from nodegraph.models.unet import UNet, UNetConfig
from nodegraph.train.common import export


def small_unet(**kw) -> UNet:
    cfg = UNetConfig(model_channels=16, channel_mult=(1, 2), attention_resolutions=(8,), image_size=16,
                     head_channels=16, norm_groups=8, clip_dim=8, text_dim=12, text_embed_dim=8, **kw)
    torch.manual_seed(0)
    net = UNet(cfg).eval()
    # Zero-initialised output layers would make every conditioning test pass trivially.
    for p in net.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    return net


def test_safetensors_round_trip_keeps_metadata_and_halves_size(tmp_path):
    net = small_unet()
    path = tmp_path / "m.safetensors"
    save_safetensors(net.state_dict(), path, {"kind": '"decoder"'}, dtype=torch.float16)
    state = load_state_dict(path)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert read_metadata(path)["kind"] == "decoder"
    fresh = UNet(net.cfg)
    load_into(fresh, path)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v.half().float())


def test_mismatched_checkpoint_names_missing_unexpected_and_shapes(tmp_path):
    net = small_unet()
    state = net.state_dict()
    state.pop("inp.weight")
    state["bogus.weight"] = torch.zeros(3)
    state["out.2.bias"] = torch.zeros(99)
    path = tmp_path / "bad.safetensors"
    save_safetensors(state, path, {})
    with pytest.raises(CheckpointError) as err:
        load_into(small_unet(), path)
    msg = str(err.value)
    assert "missing keys: inp.weight" in msg
    assert "unexpected keys: bogus.weight" in msg
    assert "out.2.bias: checkpoint (99,)" in msg


def test_unreadable_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="not a file"):
        load_state_dict(tmp_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\xffnot a safetensors file")
    with pytest.raises(CheckpointError):
        load_state_dict(junk)
    # A pickle that holds arbitrary objects is refused (weights_only=True), never executed.
    evil = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "obj": object()}, evil)
    with pytest.raises(CheckpointError):
        load_state_dict(evil)


def test_pt_checkpoints_nested_under_state_dict_load(tmp_path):
    net = small_unet()
    path = tmp_path / "m.pt"
    torch.save({"state_dict": net.state_dict(), "step": 3}, path)
    fresh = UNet(net.cfg)
    load_into(fresh, path)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([5])
    torch.testing.assert_close(fresh(x, t), net(x, t))


def test_diffusion_model_loader_checks_kind_and_metadata(tmp_path):
    net = small_unet()
    path = tmp_path / "d.safetensors"
    export(net, path, {"kind": "decoder", "config": net.cfg.to_dict(), "diffusion": {"timesteps": 50}})
    model = load_diffusion_model(path, expect_kind="decoder")
    assert model.diffusion.num_timesteps == 50
    assert not any(p.requires_grad for p in model.net.parameters())
    with pytest.raises(CheckpointError, match="holds a 'decoder' model"):
        load_diffusion_model(path, expect_kind="upsampler")
    plain = tmp_path / "plain.safetensors"
    save_safetensors(net.state_dict(), plain, {})
    with pytest.raises(CheckpointError, match="no nodegraph metadata"):
        load_diffusion_model(plain)


def test_loaded_unet_runs_channels_last_with_the_same_outputs(tmp_path):
    net = small_unet()
    path = tmp_path / "d.safetensors"
    export(net, path, {"kind": "decoder", "config": net.cfg.to_dict()})
    model = load_diffusion_model(path)
    assert model.net.inp.weight.is_contiguous(memory_format=torch.channels_last)
    ref = small_unet().half().float()  # the file is fp16: compare against the same rounding
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 40])
    with torch.no_grad():
        torch.testing.assert_close(model.net(x, t), ref(x, t), atol=1e-5, rtol=1e-4)


def test_clip_sequence_encoder_agrees_with_open_clip_pooling():
    clip = build_clip()
    tokens = clip.tokenize(["a large red circle on the left on a blue background", "a cross"])
    enc = clip.encode_tokens(tokens)
    with torch.no_grad():
        ref = clip.model.encode_text(tokens)
    torch.testing.assert_close(enc.embed, ref, rtol=1e-4, atol=1e-5)
    assert enc.tokens.shape == (2, clip.context_length, clip.text_width)
    # The mask covers start-of-text .. end-of-text and nothing after.
    assert enc.mask[1].sum() == (tokens[1] != 0).sum()


def test_clip_checkpoint_round_trip_through_the_loader(tmp_path):
    clip = build_clip()
    path = tmp_path / "clip.safetensors"
    export(clip.model, path, {"kind": "clip", "model_name": "shapes-clip"})
    loaded = load_clip(path)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), clip.encode_image(images), rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_openai_layout_vit_checkpoint_loads_with_quick_gelu(tmp_path):
    """A checkpoint with OpenAI's ViT-B/32 key layout (as open_clip reads it), built here with random weights."""
    import open_clip

    ref = open_clip.create_model("ViT-B-32", force_quick_gelu=True).eval()
    state = ref.state_dict()
    path = tmp_path / "ViT-B-32-openai.pt"
    torch.save(state, path)
    clip = load_clip(path, model_name="ViT-B-32", quick_gelu=True)
    images = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_image(images), ref.encode_image(clip.preprocess(images)))
        text = clip.encode_text(["a photo of a cat"])
        torch.testing.assert_close(text.embed, ref.encode_text(clip.tokenize(["a photo of a cat"])),
                                   rtol=1e-4, atol=1e-5)
    # The bundled config does not fit those weights, and the error says which keys differ.
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_clip(path, model_name="shapes-clip")


def test_unet_ignores_switched_off_conditions():
    net = small_unet()
    b = 2
    x, t = torch.randn(b, 3, 16, 16), torch.tensor([10, 400])
    tokens = torch.randn(b, 5, 12)
    mask = torch.ones(b, 5, dtype=torch.bool)
    emb_a, emb_b = torch.nn.functional.normalize(torch.randn(2, b, 8), dim=-1)
    off = torch.zeros(b)
    with torch.no_grad():
        a = net(x, t, image_embed=emb_a, image_on=off, text_tokens=tokens, text_mask=mask, text_embed=emb_a)
        b_ = net(x, t, image_embed=emb_b, image_on=off, text_tokens=tokens, text_mask=mask, text_embed=emb_a)
        torch.testing.assert_close(a, b_)
        on_a = net(x, t, image_embed=emb_a, text_tokens=tokens, text_mask=mask, text_embed=emb_a)
        on_b = net(x, t, image_embed=emb_b, text_tokens=tokens, text_mask=mask, text_embed=emb_a)
        assert not torch.allclose(on_a, on_b)
        # Masked-out text: neither the tokens nor the pooled embedding matter.
        none = torch.zeros(b, 5, dtype=torch.bool)
        c = net(x, t, image_embed=emb_a, text_tokens=tokens, text_mask=none, text_embed=emb_a)
        d = net(x, t, image_embed=emb_a, text_tokens=torch.randn(b, 5, 12), text_mask=none, text_embed=emb_b)
        torch.testing.assert_close(c, d)


def test_prior_null_text_ignores_the_text_and_outputs_embedding_width():
    torch.manual_seed(0)
    prior = PriorTransformer(PriorConfig(clip_dim=8, text_width=12, context_length=5, width=32, layers=2, heads=2))
    x, t = torch.randn(2, 8), torch.tensor([3, 700])
    mask = torch.ones(2, 5, dtype=torch.bool)
    off = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        a = prior(x, t, torch.randn(2, 5, 12), mask, torch.randn(2, 8), off)
        b = prior(x, t, torch.randn(2, 5, 12), mask, torch.randn(2, 8), off)
        torch.testing.assert_close(a, b)
        assert a.shape == (2, 8)
        on = prior(x, t, torch.randn(2, 5, 12), mask, torch.randn(2, 8))
        assert not torch.allclose(a, on)
    # Whatever the prior's space holds, decoding it gives unit-norm CLIP embeddings.
    prior.embed_mean.fill_(0.3)
    prior.embed_std.fill_(0.1)
    torch.testing.assert_close(prior.denormalize(torch.randn(3, 8)).norm(dim=-1), torch.ones(3))
