"""Released checkpoints of GLIDE, guided-diffusion, Karlo, ermongroup/ddim and OpenAI CLIP: loaded through
`nodegraph.models.real` and compared with outputs the reference implementations themselves produced.

The fixtures in tests/fixtures/real_models/ are data only: each `NAME.pt` / `.ckpt` is a checkpoint in its
family's published key layout, written by the reference code (openai/guided-diffusion, openai/glide-text2im,
kakaobrain/karlo, ermongroup/ddim, openai/CLIP) at a small config with seeded random weights — every
parameter drawn non-zero, the layers the references initialise to zero included, and rounded to float16 so
the files are small (the references ran in float32 on exactly those values). `NAME.io.safetensors` holds the
inputs the reference was called with, its outputs, and (metadata "reference") the constructor arguments.

Tolerance: max |ours - reference| <= 1e-5 · max(1, max |reference|). Outputs here are O(1); an architecture
difference (a head split in the wrong order, a missing norm, a swapped sin/cos, a mask off by one token)
moves them by 1e-2 or more, while float32 reassociation (einsum vs bmm, masking by -inf vs -1e10) gives
at most ~1e-6.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nodegraph.errors import CheckpointError, InputValueError
from nodegraph.models import real_diffusion as rd
from nodegraph.models.adm import ADMClassifier, ADMUNet, GlideUNet
from nodegraph.models.ddpm import DDPMUNet
from nodegraph.models.glide_clip import clip_tokens
from nodegraph.models.glide_tokenizer import GlideTokenizer
from nodegraph.models.karlo import KarloDecoder, KarloPrior, KarloSuperRes, upsample_low_res
from nodegraph.models.real import (
    PRESETS,
    describe,
    detect_family,
    infer_config,
    load_karlo_clip_stats,
    load_real,
    read_weights,
)

FIX = Path(__file__).parent / "fixtures" / "real_models"


def fixture(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    path = FIX / f"{name}.io.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["reference"])
    return load_file(str(path)), meta


def assert_matches(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> float:
    assert ours.shape == ref.shape
    err = (ours.float() - ref.float()).abs().max().item()
    bound = rel * max(1.0, ref.abs().max().item())
    assert err <= bound, f"max abs error {err:.3g} > {bound:.3g}"
    return err


# oneDNN's float16 kernels for CPUs with native float16 arithmetic (AVX512-FP16: Sapphire Rapids and later) round
# differently from the emulated ones the reference ran on: 4-5e-3 from the reference's output, as far as a float32
# run is, which would hide a wrong layer conversion. Capping oneDNN below that ISA reproduces the reference exactly
# (max error 0.0 on such a CPU). The cap is read when oneDNN starts, hence a process of its own.
_HALF_PRECISION_FORWARD = """
import json, sys, torch
from safetensors.torch import load_file, save_file
from nodegraph.models.real import load_real
fixture, io_path, kw, args, kwargs, out = sys.argv[1:]
kw = json.loads(kw)
kw["dtype"] = getattr(torch, kw["dtype"])
io = load_file(io_path)
m = load_real(fixture, **kw)
with torch.no_grad():
    y = m.net(*[io[k] for k in json.loads(args)], **{k: io[v] for k, v in json.loads(kwargs).items()})
save_file({"out": y.contiguous()}, out)
"""


def half_precision_forward(name: str, load_kwargs: dict, args: list[str], kwargs: dict[str, str],
                           tmp_path: Path) -> torch.Tensor:
    out = tmp_path / "out.safetensors"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    subprocess.run([sys.executable, "-c", _HALF_PRECISION_FORWARD, str(FIX / f"{name}.pt"),
                    str(FIX / f"{name}.io.safetensors"), json.dumps(load_kwargs), json.dumps(args), json.dumps(kwargs),
                    str(out)], env=env, check=True, timeout=300)
    return load_file(str(out))["out"]


def inputs(io: dict[str, torch.Tensor], *skip: str) -> dict[str, torch.Tensor]:
    return {k[3:]: v for k, v in io.items() if k.startswith("in.") and k[3:] not in skip}


# --------------------------------------------------------------------------------- guided-diffusion


def test_adm_unconditional_new_attention_order_scale_shift_updown():
    io, ref = fixture("adm_uncond")
    m = load_real(FIX / "adm_uncond.pt", num_head_channels=16, use_new_attention_order=True)
    assert (m.family, m.variant, m.preset) == ("adm", "uncond", None)
    cfg = m.config
    assert (cfg.model_channels, cfg.channel_mult, cfg.num_res_blocks, cfg.attention_ds) == (32, (1, 1), 1, (2,))
    assert cfg.use_scale_shift_norm and cfg.resblock_updown and cfg.out_channels == 6 and not cfg.low_res
    assert isinstance(m.net, ADMUNet) and not m.net.training
    assert m.diffusion.variance == "learned_range"  # six output channels: a learned variance
    with torch.no_grad():
        assert_matches(m.net(io["in.x"], io["in.t"]), io["out"])


def test_adm_half_precision_runs_like_the_released_use_fp16_models(tmp_path):
    """dtype=float16 converts the torso's convolutions only, as guided-diffusion's use_fp16 does. The bound
    (1e-3 of the output scale) is below the 5e-3 by which a float32 run differs from the reference's fp16 run."""
    io, _ = fixture("adm_uncond")
    kw = {"dtype": "float16", "num_head_channels": 16, "use_new_attention_order": True}
    m = load_real(FIX / "adm_uncond.pt", **{**kw, "dtype": torch.float16})
    assert m.net.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    assert m.net.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32  # norms stay float32
    out = half_precision_forward("adm_uncond", kw, ["in.x", "in.t"], {}, tmp_path)
    assert out.dtype == torch.float32
    assert_matches(out, io["out_fp16"], rel=1e-3)


def test_adm_class_conditional_legacy_attention_additive_embedding():
    io, ref = fixture("adm_classcond")
    m = load_real(FIX / "adm_classcond.pt", num_heads=2, num_heads_upsample=4)
    cfg = m.config
    assert m.variant == "class_cond" and cfg.num_classes == 10 and cfg.attention_ds == (1, 2)
    assert not cfg.use_scale_shift_norm and not cfg.resblock_updown and cfg.conv_resample
    assert not cfg.use_new_attention_order and m.diffusion.variance == "fixed_large"  # 3 outputs: no learned sigma
    with torch.no_grad():
        assert_matches(m.net(io["in.x"], io["in.t"], y=io["in.y"]), io["out"])


def test_adm_super_resolution_upsamples_the_low_res_input():
    io, ref = fixture("adm_superres")
    m = load_real(FIX / "adm_superres.pt", num_heads=4)
    assert m.variant == "super_res" and m.config.low_res and m.config.net_in_channels == 6
    with torch.no_grad():
        assert_matches(m.net(io["in.x"], io["in.t"], y=io["in.y"], low_res=io["in.low_res"]), io["out"])


def test_adm_noisy_classifier_with_attention_pool():
    io, ref = fixture("adm_classifier")
    m = load_real(FIX / "adm_classifier.pt", num_head_channels=16)
    cfg = m.config
    assert m.family == "adm_classifier" and isinstance(m.net, ADMClassifier)
    # The image size is read from the attention pool's position table (4x4 + 1 at 2x downsampling).
    assert (cfg.pool, cfg.image_size, cfg.channel_mult, cfg.num_res_blocks, cfg.out_channels) == (
        "attention", 16, (1, 2), 1, 10)
    assert cfg.resblock_updown and cfg.use_scale_shift_norm
    with torch.no_grad():
        assert_matches(m.net(io["in.x"], io["in.t"]), io["out"])


def test_adm_noisy_classifier_with_adaptive_pool():
    io, ref = fixture("adm_classifier_adaptive")
    m = load_real(FIX / "adm_classifier_adaptive.pt", num_heads=2, num_head_channels=-1)
    assert m.config.pool == "adaptive" and not m.config.use_scale_shift_norm
    with torch.no_grad():
        assert_matches(m.net(io["in.x"], io["in.t"]), io["out"])


# ----------------------------------------------------------------------------------------------- GLIDE


@pytest.mark.parametrize(
    "name, variant",
    [("glide_base", "base"), ("glide_upsample", "upsample"), ("glide_inpaint", "inpaint"),
     ("glide_upsample_inpaint", "upsample_inpaint")],
)
def test_glide_text_conditional_unets(name, variant):
    io, ref = fixture(name)
    m = load_real(FIX / f"{name}.pt", num_head_channels=16, xf_heads=2)
    cfg = m.config
    assert (m.family, m.variant) == ("glide", variant) and isinstance(m.net, GlideUNet)
    assert (cfg.text_ctx, cfg.xf_width, cfg.xf_layers, cfg.n_vocab) == (8, 32, 2, 100)
    assert (cfg.xf_padding, cfg.xf_final_ln) == (ref["xf_padding"], ref["xf_final_ln"])
    assert m.diffusion == (rd.GLIDE_UPSAMPLE if cfg.low_res else rd.GLIDE_BASE)
    with torch.no_grad():
        assert_matches(m.net(io["in.x"], io["in.t"], **inputs(io, "x", "t")), io["out"])


def test_glide_half_precision_matches_the_reference_fp16_run(tmp_path):
    io, _ = fixture("glide_base")
    kw = {"dtype": "float16", "num_head_channels": 16, "xf_heads": 2}
    m = load_real(FIX / "glide_base.pt", **{**kw, "dtype": torch.float16})
    assert m.net.transformer.resblocks[0].attn.c_qkv.weight.dtype == torch.float16
    assert m.net.positional_embedding.dtype == torch.float32  # as released: the tables stay float32
    out = half_precision_forward("glide_base", kw, ["in.x", "in.t"], {"tokens": "in.tokens", "mask": "in.mask"},
                                 tmp_path)
    assert_matches(out, io["out_fp16"], rel=1e-3)


def test_glide_noised_clip_image_encoder():
    io, ref = fixture("glide_clip_image")
    m = load_real(FIX / "glide_clip_image.pt")
    assert m.family == "glide_clip_image"
    assert (m.config.image_size, m.config.patch_size, m.config.width, m.config.n_timesteps) == (16, 4, 64, 1000)
    with torch.no_grad():
        raw = m.net((io["in.x"] + 1) * 127.5, io["in.t"])
        assert_matches(raw, io["out"])
        unit = m.net.embed(io["in.x"], io["in.t"])
    torch.testing.assert_close(unit, torch.nn.functional.normalize(io["out"], dim=-1), atol=1e-5, rtol=0)


def test_glide_noised_clip_text_encoder_and_its_tokens():
    io, ref = fixture("glide_clip_text")
    m = load_real(FIX / "glide_clip_text.pt")
    assert (m.config.n_vocab, m.config.context, m.config.width) == (100, 10, 64)
    with torch.no_grad():
        assert_matches(m.net(io["in.tokens"], io["in.lens"]), io["out"])
    cases = json.loads((FIX / "glide_clip_tokens.json").read_text())
    tokens, lengths = clip_tokens([c["prompt"] for c in cases["cases"]], cases["text_ctx"])
    assert tokens.tolist() == [c["padded"] for c in cases["cases"]]
    assert lengths.tolist() == [c["length"] for c in cases["cases"]]


def test_glide_tokenizer_matches_the_reference_bpe():
    """On a cut-down copy of GLIDE's vocabulary (its 256 byte symbols and first 400 merges)."""
    ref = json.loads((FIX / "glide_vocab" / "reference_tokens.json").read_text())
    tok = GlideTokenizer.from_folder(FIX / "glide_vocab")
    assert (tok.n_vocab, tok.end_token) == (ref["n_vocab"], ref["end_token"])
    for case in ref["cases"]:
        ids = tok.encode(case["prompt"])
        assert ids == case["tokens"], case["prompt"]
        assert tok.padded(ids, ref["text_ctx"]) == (case["padded"], case["mask"])
        assert tok.decode(ids) == case["prompt"].lower()
    tokens, mask = tok.tokens_and_mask(["", "a corgi"], ref["text_ctx"])
    assert tokens.shape == (2, 8) and not mask[0].any() and (tokens[0] == tok.end_token).all()


def test_glide_tokenizer_without_vocabulary_says_what_to_put_where(tmp_path):
    with pytest.raises(CheckpointError, match="encoder.json") as info:
        GlideTokenizer.from_folder(tmp_path)
    assert str(tmp_path) in str(info.value) and info.value.input == "vocab"
    with pytest.raises(CheckpointError, match="not found"):
        GlideTokenizer.from_folder(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------- Karlo


def test_karlo_prior_with_its_clip_statistics():
    io, ref = fixture("karlo_prior")
    m = load_real(FIX / "karlo_prior.ckpt", clip_stats=FIX / "karlo_clip_stats.th", xf_heads=2)
    assert m.family == "karlo_prior" and isinstance(m.net, KarloPrior) and m.net.has_stats
    assert (m.config.text_ctx, m.config.xf_width, m.config.clip_dim) == (8, 32, 16)
    assert m.diffusion == rd.KARLO_PRIOR
    with torch.no_grad():
        out = m.net(io["in.x"], io["in.t"], io["in.text_emb"], io["in.text_enc"], io["in.mask"])
    assert_matches(out, io["out"])
    assert_matches(m.net.denormalize(out), io["out_denormalized"])
    mean, std = load_karlo_clip_stats(FIX / "karlo_clip_stats.th")
    assert mean.shape == std.shape == (16,)


def test_karlo_decoder_reads_image_embedding_tokens_channel_major():
    io, ref = fixture("karlo_decoder")
    m = load_real(FIX / "karlo_decoder.ckpt", num_head_channels=16)
    cfg = m.config
    assert isinstance(m.net, KarloDecoder) and (cfg.clip_dim, cfg.clip_emb_mult, cfg.xf_width) == (16, 4, 32)
    assert m.net.null_image_embed(3).shape == (3, 16)
    with torch.no_grad():
        out = m.net(io["in.x"], io["in.t"], io["in.y"], io["in.txt_feat"], io["in.txt_feat_seq"], io["in.mask"])
    assert_matches(out, io["out"])


def test_karlo_super_resolution_first_steps_and_last_step():
    io, ref = fixture("karlo_sr")
    m = load_real(FIX / "karlo_sr.ckpt")
    assert isinstance(m.net, KarloSuperRes) and m.diffusion.sequence() == [999, 832, 666, 500, 333, 166, 0]
    assert not m.config.middle_attention and m.config.attention_ds == ()
    low = upsample_low_res(io["in.low_res_small"], 16)  # bicubic, antialiased, as Karlo's sampler resizes
    assert_matches(low, io["in.low_res"])
    with torch.no_grad():
        assert_matches(m.net(io["in.x"], io["in.t"], low), io["out_first"])
        assert_matches(m.net(io["in.x"], io["in.t"], low, last_step=True), io["out_last"])


# ------------------------------------------------------------------------------------- ddim / OpenAI


def test_ddpm_flat_state_dict():
    io, ref = fixture("ddpm_celebahq_layout")
    m = load_real(FIX / "ddpm_celebahq_layout.pt", resolution=16)
    cfg = m.config
    assert isinstance(m.net, DDPMUNet) and (cfg.ch, cfg.ch_mult, cfg.num_res_blocks) == (32, (1, 2), 1)
    assert cfg.attn_resolutions == (8,)  # attention found on the second level, named for a 16x16 input
    with torch.no_grad():
        assert_matches(m.net(io["in.x"], io["in.t"]), io["out"])


def test_openai_layout_clip_through_open_clip():
    io, ref = fixture("openai_clip")
    m = load_real(FIX / "openai_clip.pt")
    clip = m.net
    assert m.family == "openai_clip" and clip.context_length == 12 and clip.embed_dim == 16
    with torch.no_grad():
        assert_matches(clip.model.encode_image(io["in.images"]), io["out_image"])
        enc = clip.encode_tokens(io["in.tokens"])
    assert_matches(enc.embed, io["out_text"])
    assert_matches(enc.tokens, io["out_text_seq"])  # the sequence Karlo's prior and decoder read


HALF_CASES = {
    # fixture: (checkpoint, overrides, call(net, io) -> output, reference output key)
    "karlo_decoder": ("karlo_decoder.ckpt", {"num_head_channels": 16},
                      lambda n, io: n(io["in.x"], io["in.t"], io["in.y"], io["in.txt_feat"], io["in.txt_feat_seq"],
                                      io["in.mask"]), "out"),
    "karlo_prior": ("karlo_prior.ckpt", {"xf_heads": 2},
                    lambda n, io: n(io["in.x"], io["in.t"], io["in.text_emb"], io["in.text_enc"], io["in.mask"]),
                    "out"),
    "karlo_sr": ("karlo_sr.ckpt", {}, lambda n, io: n(io["in.x"], io["in.t"], io["in.low_res"]), "out_first"),
    "ddpm_celebahq_layout": ("ddpm_celebahq_layout.pt", {"resolution": 16}, lambda n, io: n(io["in.x"], io["in.t"]),
                             "out"),
    "glide_clip_image": ("glide_clip_image.pt", {}, lambda n, io: n((io["in.x"] + 1) * 127.5, io["in.t"]), "out"),
    "adm_classifier": ("adm_classifier.pt", {"num_head_channels": 16}, lambda n, io: n(io["in.x"], io["in.t"]), "out"),
    "openai_clip": ("openai_clip.pt", {}, lambda n, io: n.model.encode_image(io["in.images"].half()), "out_image"),
}


@pytest.mark.parametrize("name", sorted(HALF_CASES))
def test_every_family_runs_in_half_precision(name):
    """dtype=float16: UNets convert their torso (use_fp16), transformers their linear layers, norms stay float32.
    A smoke bound of 1e-2 of the output scale: half precision's own rounding, not an architecture change."""
    file, overrides, call, key = HALF_CASES[name]
    io, _ = fixture(name)
    m = load_real(FIX / file, dtype=torch.float16, **overrides)
    with torch.no_grad():
        out = call(m.net, io)
    assert_matches(out.float(), io[key], rel=1e-2)


# --------------------------------------------------------------------------------- diffusion settings


DIFFUSION_CASES = {
    "glide_base_100": (rd.GLIDE_BASE, "100"),
    "glide_upsample_fast27": (rd.GLIDE_UPSAMPLE, "fast27"),
    "adm_linear_250": (rd.ADM_LINEAR, "250"),
    "adm_cosine_ddim25": (rd.ADM_COSINE, "ddim25"),
    "karlo_prior_25": (rd.KARLO_PRIOR, "25"),
    "karlo_decoder_50": (rd.KARLO_DECODER, "50"),
    "karlo_sr_7": (rd.KARLO_SR, "7"),
}


@pytest.mark.parametrize("case", sorted(DIFFUSION_CASES))
def test_shipped_diffusion_settings_match_the_reference_samplers(case):
    """Reverse steps of each family's respaced sampler, computed by the reference diffusion code for a fixed
    model output. At the last step (to t = -1) only the mean matters: no noise is added there, and the
    references floor its log-variance with the respaced schedule's β̃ where nodegraph uses the original's."""
    settings, respacing = DIFFUSION_CASES[case]
    path = FIX / "diffusion_reference.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["reference"])[case]
    ref = load_file(str(path))
    seq = settings.sequence(respacing)
    assert sorted(seq) == meta["timesteps"]
    d = settings.build()
    x, out = ref[f"{case}.x"], ref[f"{case}.model_output"]
    for i in meta["indices"]:
        t, t_prev = meta["timesteps"][i], (meta["timesteps"][i - 1] if i else -1)
        p = d.p_mean_variance(out, x, t, t_prev, clip_denoised=settings.clip_denoised,
                              denoised_fn=settings.denoised_fn())
        assert_matches(p.mean, ref[f"{case}.{i}.mean"])
        assert_matches(p.pred_x0, ref[f"{case}.{i}.pred_xstart"])
        if t_prev >= 0:
            assert_matches(torch.as_tensor(p.log_variance).expand_as(x), ref[f"{case}.{i}.log_variance"])
        if f"{case}.{i}.ddim" in ref:
            # x̂0 is clipped, then ε̂ recomputed from it; near t = 0 that division amplifies float32 rounding.
            step = d.ddim_step(out, x, t, t_prev, clip_denoised=settings.clip_denoised)
            assert_matches(step, ref[f"{case}.{i}.ddim"], rel=1e-4)


def test_ddpm_ddim_step_matches_ermongroup_generalized_steps():
    path = FIX / "diffusion_reference.safetensors"
    with safe_open(str(path), framework="pt") as f:
        steps = json.loads(f.metadata()["reference"])["ddpm_ddim"]["steps"]
    ref = load_file(str(path))
    d = rd.DDPM_FIXED_SMALL.build()
    for t, t_next in steps:
        # The reference computes ᾱ in float32 from float32 betas; nodegraph in float64.
        assert_matches(d.ddim_step(ref["ddpm_ddim.model_output"], ref["ddpm_ddim.x"], t, t_next),
                       ref[f"ddpm_ddim.{t}.next"], rel=1e-5)


def test_glide_fast27_and_diffusionclip_sequences():
    fast = rd.respaced_timesteps(1000, "fast27")
    assert len(fast) == 27 and fast[0] == 997 and 999 not in fast and fast[-1] == 0
    assert rd.diffusionclip_sequence(500, 6) == [0, 100, 200, 300, 400, 500]


# ----------------------------------------------------------------------------- detection and presets

FAMILY_OF = {
    "adm_uncond.pt": "adm", "adm_classcond.pt": "adm", "adm_superres.pt": "adm",
    "adm_classifier.pt": "adm_classifier", "adm_classifier_adaptive.pt": "adm_classifier",
    "glide_base.pt": "glide", "glide_upsample_inpaint.pt": "glide", "glide_clip_image.pt": "glide_clip_image",
    "glide_clip_text.pt": "glide_clip_text", "karlo_prior.ckpt": "karlo_prior", "karlo_decoder.ckpt": "karlo_decoder",
    "karlo_sr.ckpt": "karlo_sr", "ddpm_celebahq_layout.pt": "ddpm", "openai_clip.pt": "openai_clip",
}


@pytest.mark.parametrize("name", sorted(FAMILY_OF))
def test_family_detected_from_keys(name):
    assert detect_family(read_weights(FIX / name)) == FAMILY_OF[name]


def _meta_state(preset: str) -> tuple[str, dict[str, torch.Tensor]]:
    """The key layout and shapes of a released model, without its memory (meta tensors)."""
    from nodegraph.models import real

    p = PRESETS[preset]
    cfg = real._apply(real._CONFIG_CLASS[p.family], dict(p.config), {}, Path(preset))
    with torch.device("meta"):
        net, _ = real._build(p.family, cfg)
    state = net.state_dict()
    if p.family in ("karlo_prior", "karlo_decoder"):
        state = {f"model.{k}": v for k, v in state.items()}
    return p.family, state


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_released_sizes_are_recognised_from_their_shapes(preset):
    """Each released configuration, rebuilt at full size on the meta device: the family is detected, the
    sizes are read back from the shapes, and the released config is matched (which supplies the heads)."""
    from nodegraph.models import real

    family, state = _meta_state(preset)
    assert detect_family(state) == family
    cfg, matched = infer_config(family, real._prepare(family, state, Path(preset)), Path(preset))
    assert matched is not None
    expected = PRESETS[matched].config
    for key, value in expected.items():
        if key in ("dropout", "use_fp16"):
            continue  # not in the weights; the matched preset supplies them
        got = getattr(cfg, key)
        assert got == value or (isinstance(value, tuple) and tuple(map(float, got)) == tuple(map(float, value))), key
    # Presets that share every shape (the LSUN and CelebA-HQ DDPMs) are one entry; no two differ only in heads.
    assert PRESETS[matched].family == family


@pytest.mark.parametrize("name", ["ViT-L-14", "ViT-B-32", "RN50"])
def test_openai_clip_sizes_map_to_their_open_clip_config(name):
    """Karlo's encoder is OpenAI's ViT-L/14: its shapes (meta tensors here) select open_clip's ViT-L-14 config."""
    import open_clip
    from open_clip.model import CLIP

    from nodegraph.models import real

    with torch.device("meta"):
        state = CLIP(**open_clip.get_model_config(name), quick_gelu=True).state_dict()
    state["input_resolution"] = torch.tensor(224)
    assert detect_family(state) == "openai_clip"
    assert real._open_clip_name(real._openai_clip_config(state, Path(name))) == name


def test_describe_reports_family_config_and_preset():
    info = describe(FIX / "glide_clip_image.pt")
    assert info["family"] == "glide_clip_image" and info["config"]["width"] == 64 and info["preset"] is None


# ------------------------------------------------------------------------------------------ errors


def _save_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    state = {k: v for k, v in torch.load(FIX / "adm_uncond.pt", weights_only=True).items()}
    kw = dict(num_head_channels=16, use_new_attention_order=True)

    dropped = dict(state)
    del dropped["middle_block.1.proj_out.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys: middle_block\.1\.proj_out\.weight") as info:
        load_real(_save_state(dropped, tmp_path / "dropped.pt"), **kw)
    assert str(tmp_path / "dropped.pt") in str(info.value)

    extra = dict(state, **{"middle_block.1.encoder_kv.weight": torch.zeros(64, 8, 1)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: middle_block\.1\.encoder_kv\.weight"):
        load_real(_save_state(extra, tmp_path / "extra.pt"), **kw)

    bent = dict(state, **{"out.2.weight": state["out.2.weight"][:3]})  # 3 outputs but the rest says 6
    bent["out.2.bias"] = state["out.2.bias"]
    with pytest.raises(CheckpointError, match=r"shape mismatches: out\.2\.bias"):
        load_real(_save_state(bent, tmp_path / "bent.pt"), **kw)


def test_a_named_config_that_does_not_fit_the_file_lists_the_differences(tmp_path):
    with pytest.raises(CheckpointError, match="shape mismatches") as info:
        load_real(FIX / "glide_base.pt", config="glide-base")
    assert "glide_base.pt" in str(info.value)
    with pytest.raises(CheckpointError, match="is a karlo_prior config"):
        load_real(FIX / "glide_base.pt", config="karlo-prior")
    with pytest.raises(CheckpointError, match="unknown config"):
        load_real(FIX / "glide_base.pt", config="glide-xl")


def test_truncated_layout_is_named(tmp_path):
    """A state dict cut short (every key from the output blocks on lost) is reported key by key."""
    state = torch.load(FIX / "karlo_decoder.ckpt", weights_only=True)["state_dict"]
    cut = {k: v for k, v in state.items() if not k.startswith(("model.output_blocks.2", "model.output_blocks.3",
                                                               "model.out."))}
    path = tmp_path / "decoder.ckpt"
    torch.save({"state_dict": cut}, path)
    with pytest.raises(CheckpointError, match="karlo_decoder") as info:
        load_real(path, num_head_channels=16)
    assert str(path) in str(info.value)


def test_truncated_files_are_refused_with_the_reason(tmp_path):
    data = (FIX / "adm_uncond.pt").read_bytes()
    short = tmp_path / "short.pt"
    short.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"short\.pt cannot be read as a PyTorch checkpoint \(truncated"):
        load_real(short)
    st = tmp_path / "short.safetensors"
    save_file({"a": torch.zeros(1000)}, str(st))
    st.write_bytes(st.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"short\.safetensors is not a readable safetensors file"):
        load_real(st)
    with pytest.raises(CheckpointError, match="not found"):
        load_real(tmp_path / "nothing.pt")


class _RunsCode:
    """Unpickling this would call os.system; a weights-only reader must refuse it without running it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    state = torch.load(FIX / "karlo_prior.ckpt", weights_only=True)
    state["hook"] = _RunsCode(marker)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        torch.save(state, path, pickle_protocol=protocol)
        with pytest.raises(CheckpointError, match=r"evil\.ckpt is a pickle that names Python objects.*run code") \
                as info:
            load_real(path)
        assert "posix.system" in str(info.value) or "nt.system" in str(info.value)  # names what it asked for
        assert not marker.exists()
        assert isinstance(info.value, InputValueError)  # a user error: the CLI exits 2


def test_a_torchscript_archive_is_refused_with_how_to_convert(tmp_path):
    path = tmp_path / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated in recent torch, and says so
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="TorchScript archive") as info:
        load_real(path)
    assert "safetensors" in str(info.value) and str(path) in str(info.value)


def test_unknown_layouts_and_ambiguous_heads(tmp_path):
    with pytest.raises(CheckpointError, match="match none of the known layouts"):
        load_real(_save_state({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pt"))
    with pytest.raises(CheckpointError, match="attention heads cannot be read"):
        load_real(FIX / "adm_uncond.pt")
    with pytest.raises(CheckpointError, match="not a readable|does not hold|holds no weights"):
        torch.save({"epoch": 3}, tmp_path / "noweights.pt")
        load_real(tmp_path / "noweights.pt")
    with pytest.raises(CheckpointError, match="unknown model family"):
        load_real(FIX / "adm_uncond.pt", family="vqgan")
    with pytest.raises(CheckpointError, match="not settings of ADMConfig"):
        load_real(FIX / "adm_uncond.pt", num_head_channels=16, heads=3)


def test_wrappers_and_prefixes_are_unwrapped(tmp_path):
    state = torch.load(FIX / "ddpm_celebahq_layout.pt", weights_only=True)
    wrapped = {f"module.{k}": v for k, v in state.items()}  # a DataParallel training checkpoint
    torch.save([wrapped, {"state": {}, "param_groups": []}, 10, 100], tmp_path / "ckpt.pth")
    assert set(read_weights(tmp_path / "ckpt.pth")) == set(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "ddpm.safetensors"))
    io, _ = fixture("ddpm_celebahq_layout")
    m = load_real(tmp_path / "ddpm.safetensors", resolution=16)
    with torch.no_grad():
        assert_matches(m.net(io["in.x"], io["in.t"]), io["out"])


def test_karlo_lightning_extras_and_bare_networks(tmp_path):
    """Lightning keeps counters beside "state_dict"; a copy of the bare network (no "model." prefix) loads too."""
    io, _ = fixture("karlo_prior")
    state = torch.load(FIX / "karlo_prior.ckpt", weights_only=True)["state_dict"]
    torch.save({"state_dict": state, "epoch": 7, "global_step": 1000, "pytorch-lightning_version": "1.6"},
               tmp_path / "prior.ckpt")
    bare = {k.removeprefix("model."): v for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in bare.items()}, str(tmp_path / "prior.safetensors"))
    for file in ("prior.ckpt", "prior.safetensors"):
        m = load_real(tmp_path / file, xf_heads=2)
        with torch.no_grad():
            out = m.net(io["in.x"], io["in.t"], io["in.text_emb"], io["in.text_enc"], io["in.mask"])
        assert_matches(out, io["out"])
    with pytest.raises(CheckpointError, match="takes a KarloPriorConfig, not a DDPMConfig"):
        from nodegraph.models.ddpm import DDPMConfig

        load_real(tmp_path / "prior.ckpt", config=DDPMConfig())
    with pytest.raises(CheckpointError, match="holds 16-d statistics"):
        load_karlo_clip_stats(FIX / "karlo_clip_stats.th", dim=768)
