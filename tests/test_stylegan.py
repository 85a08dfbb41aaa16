"""The StyleGAN2 generator and discriminator, loading rosinality-layout checkpoints, and training."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

from nodegraph.errors import CheckpointError
from nodegraph.models import loader
from nodegraph.models.stylegan import Generator, ModulatedConv2d, StyleGANConfig, StyleLatent
from nodegraph.models.stylegan_checkpoint import infer_config, load_generator
from nodegraph.models.stylegan_disc import Discriminator, DiscriminatorConfig
from nodegraph.train.common import export

from fixtures_models import tiny_stylegan

TINY = StyleGANConfig(size=16, style_dim=8, n_mlp=2, channels=(16, 12, 8))


def tiny_generator(seed: int = 0, cfg: StyleGANConfig = TINY) -> Generator:
    return tiny_stylegan(seed, cfg)


def test_generator_layout_follows_the_reference():
    net = Generator(StyleGANConfig())  # 32 px: 4, 8, 16, 32
    assert net.n_latent == 8 and net.cfg.num_layers == 7 and net.noise_sizes() == [4, 8, 8, 16, 16, 32, 32]
    keys = set(net.state_dict())
    for key in ("style.1.weight", "style.4.bias", "input.input", "conv1.conv.weight", "conv1.conv.modulation.weight",
                "conv1.noise.weight", "conv1.activate.bias", "to_rgb1.conv.weight", "to_rgb1.bias",
                "convs.0.conv.blur.kernel", "convs.5.conv.weight", "to_rgbs.2.upsample.kernel", "noises.noise_6"):
        assert key in keys, key
    assert tuple(net.state_dict()["convs.0.conv.weight"].shape) == (1, 128, 128, 3, 3)
    z = torch.randn(3, 128)
    assert net(z).shape == (3, 3, 32, 32)
    # fixed noise: deterministic; a W code broadcast to W+ renders the same as W+ itself
    w = net.mapping(z)
    a = net.synthesis(w, net.fixed_noise())
    b = net.synthesis(w.unsqueeze(1).repeat(1, 8, 1), net.fixed_noise())
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("upsample", [False, True])
def test_modulated_conv_equals_the_per_sample_weight_form(upsample):
    """Scaling activations (what this module does) equals building each sample's modulated, demodulated
    weight and convolving with it (the reference's grouped form)."""
    torch.manual_seed(0)
    m = ModulatedConv2d(8, 6, 3, 16, upsample=upsample)
    x, w = torch.randn(3, 8, 5, 5), torch.randn(3, 16)
    style = m.modulation(w).view(3, 1, 8, 1, 1)
    weight = m.scale * m.weight * style
    weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(3, 6, 1, 1, 1)
    if upsample:
        ref = F.conv_transpose2d(x.reshape(1, 24, 5, 5), weight.transpose(1, 2).reshape(24, 6, 3, 3), stride=2,
                                 groups=3).view(3, 6, 11, 11)
        ref = m.blur(ref)
    else:
        ref = F.conv2d(x.reshape(1, 24, 5, 5), weight.view(18, 8, 3, 3), padding=1, groups=3).view(3, 6, 5, 5)
    torch.testing.assert_close(m(x, w), ref, atol=1e-5, rtol=1e-5)


def test_discriminator_scores_each_image():
    d = Discriminator(DiscriminatorConfig(size=16, channels=(8, 16, 16)))
    assert d(torch.randn(8, 3, 16, 16)).shape == (8, 1)
    assert d(torch.randn(3, 3, 16, 16)).shape == (3, 1)  # a batch the stddev group does not divide
    assert {"convs.0.0.weight", "convs.1.conv2.0.kernel", "convs.1.skip.1.weight", "final_conv.1.bias",
            "final_linear.1.weight"} <= set(d.state_dict())


def _train_checkpoint(net: Generator, path, **extra) -> None:
    widths = tuple(reversed(net.cfg.channels))
    widths = widths + (widths[-1],) * (int(math.log2(net.cfg.size)) - 1 - len(widths))  # down to 4 px
    d = Discriminator(DiscriminatorConfig(size=net.cfg.size, channels=widths))
    opt = torch.optim.Adam(net.parameters())
    torch.save({"g": net.state_dict(), "d": d.state_dict(), "g_ema": net.state_dict(), "g_optim": opt.state_dict(),
                "d_optim": torch.optim.Adam(d.parameters()).state_dict(),
                "args": argparse.Namespace(size=net.cfg.size, r1=10.0, path="lmdb"), "ada_aug_p": 0.0, **extra}, path)


def test_a_rosinality_training_checkpoint_loads_with_widths_read_from_the_weights(tmp_path):
    net = tiny_generator(1, StyleGANConfig(size=32, style_dim=12, n_mlp=3, channels=(24, 20, 16), start_size=8))
    path = tmp_path / "train.pt"
    _train_checkpoint(net, path)
    gan = load_generator(path)
    cfg = gan.net.cfg
    assert (cfg.size, cfg.style_dim, cfg.n_mlp, cfg.channels, cfg.start_size, cfg.blur_kernel) == \
        (32, 12, 3, (24, 20, 16), 8, (1, 3, 3, 1))
    w = torch.randn(2, net.n_latent, 12)
    torch.testing.assert_close(gan.net.synthesis(w, net.fixed_noise()), net.synthesis(w, net.fixed_noise()))
    # no latent_avg in a training checkpoint: the centre of W is estimated from the mapping network
    assert gan.w_avg.shape == (12,) and torch.isfinite(gan.w_avg).all()


def test_a_converted_checkpoint_brings_its_latent_avg_and_nada_outputs_load_too(tmp_path):
    net = tiny_generator(2)
    avg = torch.randn(1, 8)
    torch.save({"g_ema": net.state_dict(), "latent_avg": avg}, tmp_path / "converted.pt")
    torch.testing.assert_close(load_generator(tmp_path / "converted.pt").w_avg, avg.view(-1))
    torch.save({"g_ema": net.state_dict()}, tmp_path / "nada.pt")
    assert load_generator(tmp_path / "nada.pt").net.cfg.channels == TINY.channels
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    assert load_generator(tmp_path / "bare.pt").n_latent == net.n_latent


def test_rosinality_checkpoint_failures_name_the_file(tmp_path):
    net = tiny_generator(3)
    state = net.state_dict()

    def fails(obj, match: str, name: str = "bad.pt") -> None:
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(CheckpointError, match=match) as err:
            load_generator(path)
        assert str(path) in str(err.value)

    fails({"g_ema": {k: v for k, v in state.items() if k != "noises.noise_2"}}, "missing keys: noises.noise_2")
    fails({"g_ema": {**state, "extra.weight": torch.zeros(1)}}, "unexpected keys: extra.weight")
    bent = dict(state)
    bent["convs.1.conv.weight"] = torch.zeros(1, 12, 11, 3, 3)
    fails({"g_ema": bent}, "convs.1.conv.weight")
    fails({"g_ema": state, "latent_avg": torch.zeros(5)}, "latent_avg has 5 values")
    fails({"g": state, "d": {}}, "no 'g_ema'")
    fails({"model": {"a": torch.zeros(1)}}, "not a StyleGAN2 generator")
    fails({"g_ema": {k: v for k, v in state.items() if not k.startswith("style.1.")}}, "style.1.weight")
    fails({"g_ema": state, "evil": torch.nn.Linear(1, 1)}, "beyond tensors|refused")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_generator(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "missing.pt")


def test_infer_config_reads_every_resolution():
    cfg = infer_config(tiny_generator(4).state_dict(), "x")
    assert cfg == TINY


def test_bundled_layout_round_trips_through_the_family_loader(tmp_path):
    net = tiny_generator(5)
    path = tmp_path / "stylegan.safetensors"
    export(net, path, {"kind": "stylegan", "config": net.cfg.to_dict()})
    gan = loader.load_file("stylegan", path)
    assert gan.net.cfg == TINY and not any(p.requires_grad for p in gan.net.parameters())
    latent = StyleLatent(torch.randn(2, net.n_latent, 8))
    torch.testing.assert_close(gan.render(latent), net.synthesis(latent.w, net.fixed_noise()).clamp(-1, 1),
                               atol=5e-3, rtol=0)  # fp16 on disk
    export(net, tmp_path / "wrong.safetensors", {"kind": "decoder", "config": {}})
    with pytest.raises(CheckpointError, match="not a StyleGAN generator"):
        loader.load_file("stylegan", tmp_path / "wrong.safetensors")
    export(net, tmp_path / "bad.safetensors", {"kind": "stylegan", "config": {"channels": [16, 12]}})
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        loader.load_file("stylegan", tmp_path / "bad.safetensors")


def _train_args(tmp_path, run: str, steps: int) -> list[str]:
    return ["stylegan", "--steps", str(steps), "--threads", "1", "--batch-size", "4", "--ckpt-every", "2",
            "--eval-every", "1000", "--run-dir", str(tmp_path / run), "--out-dir", str(tmp_path / f"{run}-out"),
            "--set", "pool=32", "--set", "g_channels=16,16,8,8", "--set", "d_channels=8,8,16,16",
            "--set", "style_dim=16", "--set", "n_mlp=2", "--set", "eval_n=8", "--set", "r1_every=2"]


def test_stylegan_run_resumed_midway_equals_an_uninterrupted_run(tmp_path):
    """The discriminator and its optimiser are part of the resumable state (the skeleton's Adversary)."""
    from nodegraph.train.__main__ import main as train_main

    train_main(_train_args(tmp_path, "straight", 4))
    train_main(_train_args(tmp_path, "resumed", 2))
    train_main(_train_args(tmp_path, "resumed", 4))
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for part in ("model", "ema"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0)
    for key in a["companions"]["adversary"]:
        torch.testing.assert_close(a["companions"]["adversary"][key], b["companions"]["adversary"][key], rtol=0, atol=0)
    # the weight pair carries the discriminator too, so `--set init=` continues both networks
    pair = tmp_path / "straight" / "weights.safetensors"
    from nodegraph.models.checkpoint import load_state_dict, read_metadata

    assert any(k.startswith("adversary.") for k in load_state_dict(pair))
    out = tmp_path / "straight-out" / "stylegan.safetensors"
    meta = read_metadata(out)
    assert meta["kind"] == "stylegan" and meta["config"]["channels"] == [16, 16, 8, 8]
    assert {"valid", "coverage"} <= set(meta["quality"])
    assert load_generator(out).net.cfg.style_dim == 16
    rows = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert any("d_loss" in r for r in rows) and any("r1" in r for r in rows) or rows


def test_quality_reads_validity_and_coverage_of_renders():
    from nodegraph.train.stylegan import quality
    from nodegraph.world.render import render, to_model_range
    from nodegraph.world.scene import random_scenes

    world = quality(to_model_range(render(random_scenes(200, 5), 32)))
    assert world["valid"] > 0.95 and world["coverage"] > 0.85
    one = random_scenes(1, 5)
    collapsed = quality(to_model_range(render(one * 50, 32)))
    assert collapsed["coverage"] < 0.6
    assert math.isclose(quality(torch.zeros(4, 3, 32, 32))["valid"], 0.0)
