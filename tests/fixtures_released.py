"""Tiny random-weight checkpoints of the released families, in their published layouts and under their released
file names, laid out in a models folder as a user would install them (checkpoints/, upscale_models/, clip/,
classifiers/, tokenizers/glide/).

Built with nodegraph's own modules, whose parameter names are the published ones (tests/test_real_models.py
checks them against the references), at configs small enough that every released workflow runs in seconds on
one CPU thread, and chosen so that `load_real` infers them without options: attention widths of 64 channels
(GLIDE's and Karlo's one head per 64 channels), ADM UNets without attention (heads cannot be read from
shapes, and no released config matches). Every parameter is drawn non-zero, so no output is blind to its input.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from nodegraph.models.adm import ADMClassifier, ADMClassifierConfig, ADMConfig, ADMUNet, GlideConfig, GlideUNet
from nodegraph.models.glide_tokenizer import GlideTokenizer
from nodegraph.models.karlo import (
    KarloDecoder,
    KarloDecoderConfig,
    KarloPrior,
    KarloPriorConfig,
    KarloSuperRes,
    karlo_sr_config,
)

FIX = Path(__file__).parent / "fixtures" / "real_models"
NUM_CLASSES = 10
CLIP_DIM = 64  # Karlo reads CLIP text token states as wide as the embedding (768 for ViT-L/14)

# released kind -> the file the workflows name (relative to the models directory)
FILES = {
    "glide_base": "checkpoints/base.pt",
    "glide_inpaint": "checkpoints/base_inpaint.pt",
    "glide_upsample": "upscale_models/upsample.pt",
    "glide_upsample_inpaint": "upscale_models/upsample_inpaint.pt",
    "adm": "checkpoints/256x256_diffusion.pt",
    "adm_uncond": "checkpoints/256x256_diffusion_uncond.pt",
    "adm_classifier": "classifiers/256x256_classifier.pt",
    "karlo_prior": "checkpoints/prior-ckpt-step=01000000-of-01000000.ckpt",
    "karlo_decoder": "checkpoints/decoder-ckpt-step=01000000-of-01000000.ckpt",
    "karlo_sr": "upscale_models/improved-sr-ckpt-step=1.2M.ckpt",
    "karlo_clip_stats": "clip/ViT-L-14_stats.th",
    "clip_l14": "clip/ViT-L-14.safetensors",
    "clip_b16": "clip/ViT-B-16.safetensors",
}


def randomize(net: nn.Module, seed: int, std: float = 0.05) -> nn.Module:
    """Redraw every parameter initialised to a constant (zero output layers and tables, unit norm weights)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if bool((p == p.flatten()[0]).all()):
                p.copy_(p + torch.randn(p.shape, generator=gen) * std)
    return net.eval()


def glide_config(n_vocab: int, **kw) -> GlideConfig:
    # Attention at 16x16 only: at 64x64 its 4096-token maps would make the tiny model slow.
    return GlideConfig(model_channels=64, channel_mult=(1, 1, 1), num_res_blocks=1, attention_ds=(4,),
                       num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True, out_channels=6,
                       text_ctx=16, xf_width=64, xf_layers=1, xf_heads=1, n_vocab=n_vocab, **kw)


def adm_config(**kw) -> ADMConfig:
    return ADMConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(), middle_attention=False,
                     out_channels=6, use_scale_shift_norm=True, resblock_updown=True, **kw)


def tiny_openai_clip() -> nn.Module:
    """An OpenAI-layout CLIP with text width = embedding width (as ViT-L/14's 768), full BPE vocabulary."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    return CLIP(CLIP_DIM, vision_cfg=CLIPVisionCfg(layers=1, width=64, patch_size=8, image_size=32),
                text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=CLIP_DIM, heads=1, layers=1),
                quick_gelu=True).eval()


def build_released_models(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write every file of FILES (and GLIDE's vocabulary) under `root`; returns kind -> path."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _build(root)


def _save(path: Path, state: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _build(root: Path) -> dict[str, Path]:
    paths = {kind: root / rel for kind, rel in FILES.items()}
    vocab = root / "tokenizers" / "glide"
    vocab.mkdir(parents=True, exist_ok=True)
    for name in ("encoder.json.gz", "vocab.bpe.gz"):
        shutil.copy(FIX / "glide_vocab" / name, vocab / name)
    n_vocab = GlideTokenizer.from_folder(vocab).n_vocab
    paths["glide_vocab"] = vocab

    # GLIDE: flat state dicts, as glide-text2im's checkpoints are.
    for i, (kind, extra) in enumerate({"glide_base": {}, "glide_inpaint": {"inpaint": True},
                                       "glide_upsample": {"low_res": True},
                                       "glide_upsample_inpaint": {"low_res": True, "inpaint": True}}.items()):
        _save(paths[kind], randomize(GlideUNet(glide_config(n_vocab, **extra)), 10 + i).state_dict())

    # guided-diffusion: flat state dicts.
    _save(paths["adm"], randomize(ADMUNet(adm_config(num_classes=NUM_CLASSES)), 20).state_dict())
    _save(paths["adm_uncond"], randomize(ADMUNet(adm_config()), 21).state_dict())
    clf = ADMClassifierConfig(image_size=64, model_channels=64, out_channels=NUM_CLASSES, num_res_blocks=1,
                              attention_ds=(), channel_mult=(1, 2), num_head_channels=64, pool="attention")
    _save(paths["adm_classifier"], randomize(ADMClassifier(clf), 22).state_dict())

    # OpenAI CLIP: a flat state dict (exported to safetensors, as TorchScript archives must be) with the
    # three integer entries OpenAI's files carry.
    clip = randomize(tiny_openai_clip(), 30)
    state = {k: v.detach().contiguous() for k, v in clip.state_dict().items()}
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    for kind in ("clip_l14", "clip_b16"):
        paths[kind].parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(paths[kind]))

    # Karlo: Lightning-style {"state_dict": ...} with the wrappers' prefixes.
    prior = randomize(KarloPrior(KarloPriorConfig(text_ctx=77, xf_width=64, xf_layers=1, xf_heads=1,
                                                  clip_dim=CLIP_DIM)), 40)
    _save(paths["karlo_prior"], {"state_dict": {f"model.{k}": v for k, v in prior.state_dict().items()},
                                 "epoch": 0, "global_step": 1})
    _save(paths["karlo_clip_stats"], (torch.randn(CLIP_DIM) * 0.1, torch.rand(CLIP_DIM) + 0.5))
    dec = randomize(KarloDecoder(KarloDecoderConfig(
        model_channels=64, channel_mult=(1, 1, 1), num_res_blocks=1, attention_ds=(4,), num_head_channels=64,
        use_scale_shift_norm=True, resblock_updown=True, out_channels=6, clip_dim=CLIP_DIM, clip_emb_mult=4,
        text_ctx=77, xf_width=64)), 41)
    _save(paths["karlo_decoder"], {"state_dict": {f"model.{k}": v for k, v in dec.state_dict().items()}})
    sr = randomize(KarloSuperRes(karlo_sr_config(channels=32, depth=1, channel_mult=(1, 2))), 42)
    _save(paths["karlo_sr"], {"state_dict": dict(sr.state_dict())})
    return paths
