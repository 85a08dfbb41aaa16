"""Tiny random checkpoints for every model family, written with the project's own export path.

The bundled models in models/ are still being trained, so tests of the generation library and of the
nodes build their own: the same metadata layout the training scripts write (kind, config, diffusion,
...), with configs small enough that a whole workflow runs in well under a second on one CPU thread.
Point NODEGRAPH_MODELS at the directory `build_tiny_models` fills to make the loaders use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nodegraph.models.classifier import ClassifierConfig, NoisyClassifier
from nodegraph.models.clip import build_clip
from nodegraph.models.diffusion_model import DiffusionSpec
from nodegraph.models.noised_clip import NoisedClipConfig, NoisedImageTower
from nodegraph.models.prior import PriorConfig, PriorTransformer
from nodegraph.models.stylegan import Generator, StyleGANConfig
from nodegraph.models.unet import UNet, UNetConfig
from nodegraph.train.common import export

TIMESTEPS = 50
DECODER_SIZE = 32  # the decoder's and inpainting model's resolution
LOW_RES, HIGH_RES = 16, 32  # the upsampler's input and output
UNET_SPEC = DiffusionSpec(schedule="cosine", timesteps=TIMESTEPS, prediction="eps", variance="learned_range")
PRIOR_SPEC = DiffusionSpec(schedule="cosine", timesteps=TIMESTEPS, prediction="x0", variance="fixed_small")
AUG_LEVEL = 5


def perturb(net: nn.Module, seed: int, std: float = 0.05) -> nn.Module:
    """Give zero-initialised layers (output convs, null vectors) small random weights.

    An untrained UNet's zero output layers make it predict exactly 0 whatever its condition, so any
    test comparing conditions, guidance or reconstructions would pass trivially.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return net


def tiny_unet_config(clip_dim: int, text_dim: int, in_channels: int = 3) -> UNetConfig:
    return UNetConfig(
        in_channels=in_channels, out_channels=6, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(16,), image_size=DECODER_SIZE, head_channels=16, norm_groups=8,
        clip_dim=clip_dim, text_dim=text_dim, text_embed_dim=clip_dim,
    )


def write_decoder(path: Path, seed: int, clip_dim: int = 128, text_dim: int = 128) -> Path:
    """A tiny decoder checkpoint (its weights depend on `seed`), as nodegraph.train.decoder exports one."""
    with torch.random.fork_rng():  # seeded weights without touching the tests' global RNG
        torch.manual_seed(seed)
        dec = perturb(UNet(tiny_unet_config(clip_dim, text_dim)), seed)
    export(dec, path, {"kind": "decoder", "config": dec.cfg.to_dict(), "diffusion": UNET_SPEC.__dict__,
                       "clip_model_name": "shapes-clip"})
    return path


def tiny_stylegan(seed: int = 0, cfg: StyleGANConfig | None = None) -> Generator:
    """A small StyleGAN2 generator whose zero-initialised parts (noise strengths, biases) are perturbed, as
    a trained one's are; seeded without touching the tests' global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = Generator(cfg or StyleGANConfig(size=16, style_dim=8, n_mlp=2, channels=(16, 12, 8)))
    return perturb(net, seed, std=0.1).eval()


def build_tiny_models(directory: Path) -> dict[str, Path]:
    """Write clip, prior, decoder, inpaint, upsampler, classifier, noised_clip and stylegan checkpoints under
    the default file names; returns family -> path."""
    with torch.random.fork_rng():  # seeded weights without touching the tests' global RNG
        torch.manual_seed(0)
        return _build(directory)


def _build(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def write(family: str, net: nn.Module, meta: dict) -> None:
        paths[family] = directory / f"{family}.safetensors"
        export(net, paths[family], {"kind": family, **meta})

    clip = build_clip()
    write("clip", clip.model, {"model_name": clip.model_name})
    d, width, length = clip.embed_dim, clip.text_width, clip.context_length

    pcfg = PriorConfig(clip_dim=d, text_width=width, context_length=length, width=32, layers=1, heads=2)
    prior = PriorTransformer(pcfg)
    write("prior", perturb(prior, 1), {"config": pcfg.to_dict(), "diffusion": PRIOR_SPEC.__dict__,
                                       "clip_model_name": clip.model_name})

    paths["decoder"] = write_decoder(directory / "decoder.safetensors", seed=2, clip_dim=d, text_dim=width)

    inp = perturb(UNet(tiny_unet_config(d, width, in_channels=7)), 3)
    write("inpaint", inp, {"config": inp.cfg.to_dict(), "diffusion": UNET_SPEC.__dict__,
                           "clip_model_name": clip.model_name, "mask_convention": "1 = known pixel"})

    ucfg = UNetConfig(in_channels=6, out_channels=6, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(), image_size=HIGH_RES, head_channels=16, norm_groups=8, aug_level=True)
    ups = perturb(UNet(ucfg), 4)
    write("upsampler", ups, {"config": ucfg.to_dict(), "diffusion": UNET_SPEC.__dict__, "low_res": LOW_RES,
                             "aug_level": AUG_LEVEL})

    ccfg = ClassifierConfig(model_channels=8, channel_mult=(1, 2), image_size=DECODER_SIZE, norm_groups=8)
    write("classifier", NoisyClassifier(ccfg), {"config": ccfg.to_dict(), "diffusion": UNET_SPEC.__dict__})

    ncfg = NoisedClipConfig(image_size=DECODER_SIZE, patch_size=8, width=32, layers=1, heads=2, embed_dim=d)
    write("noised_clip", NoisedImageTower(ncfg), {"config": ncfg.to_dict(), "diffusion": UNET_SPEC.__dict__,
                                                  "clip_model_name": clip.model_name})
    scfg = StyleGANConfig(size=16, style_dim=16, n_mlp=1, channels=(16, 8, 8))
    write("stylegan", tiny_stylegan(5, scfg), {"config": scfg.to_dict()})
    return paths


CAPTION = "a large red circle on the left on a blue background"
# One producer for every socket type; the planner keeps only what the node under test needs.
PRODUCERS: dict[str, dict[str, Any]] = {
    "p_clip": {"class_type": "CLIPLoader", "inputs": {}},
    "p_prior": {"class_type": "PriorLoader", "inputs": {}},
    "p_dec": {"class_type": "DecoderLoader", "inputs": {}},
    "p_inp": {"class_type": "InpaintLoader", "inputs": {}},
    "p_ups": {"class_type": "UpsamplerLoader", "inputs": {}},
    "p_cls": {"class_type": "ClassifierLoader", "inputs": {}},
    "p_nclip": {"class_type": "NoisedCLIPLoader", "inputs": {}},
    "p_image": {"class_type": "RenderScene", "inputs": {"caption": CAPTION, "resolution": DECODER_SIZE}},
    "p_mask": {"class_type": "MaskFromRect", "inputs": {"width": DECODER_SIZE, "height": DECODER_SIZE}},
    "p_text": {"class_type": "TextEncode", "inputs": {"clip": ["p_clip", 0], "text": CAPTION}},
    "p_embed": {"class_type": "CLIPImageEmbed", "inputs": {"clip": ["p_clip", 0], "images": ["p_image", 0]}},
    "p_noise": {"class_type": "Noise", "inputs": {}},
    "p_latent": {"class_type": "DDIMInvert", "inputs": {"decoder": ["p_dec", 0], "images": ["p_image", 0],
                                                         "steps": 2}},
    "p_guid": {"class_type": "GuidanceCombine", "inputs": {"text_1": ["p_text", 0]}},
    "p_cguid": {"class_type": "ClassifierGuidance", "inputs": {"classifier": ["p_cls", 0]}},
    "p_clipguid": {"class_type": "CLIPGuidance", "inputs": {"text": ["p_text", 0], "clip": ["p_clip", 0],
                                                            "mode": "x0", "cutn": 1}},
    "p_float": {"class_type": "Float", "inputs": {"value": 1.0}},
    "p_gan": {"class_type": "StyleGANLoader", "inputs": {}},
    "p_wlatent": {"class_type": "StyleGANSample", "inputs": {"generator": ["p_gan", 0], "noise": ["p_noise", 0]}},
    "p_objective": {"class_type": "CLIPObjective", "inputs": {"clip": ["p_clip", 0], "views": 1}},
    # Released checkpoints (tests/fixtures_released.py), sampled at small sizes so that every case runs quickly.
    "p_glide": {"class_type": "GLIDELoader", "inputs": {"options": "image_size=16"}},
    "p_glide_up": {"class_type": "GLIDEUpsamplerLoader", "inputs": {"options": "image_size=16"}},
    "p_glide_inp": {"class_type": "GLIDEInpaintLoader", "inputs": {"options": "image_size=16"}},
    "p_glide_inp_up": {"class_type": "GLIDEInpaintUpsamplerLoader", "inputs": {"options": "image_size=16"}},
    "p_adm": {"class_type": "ADMLoader", "inputs": {"options": "image_size=16"}},
    "p_adm_clf": {"class_type": "ADMClassifierLoader", "inputs": {"options": "image_size=16"}},
    "p_karlo_prior": {"class_type": "KarloPriorLoader", "inputs": {}},
    "p_karlo_dec": {"class_type": "KarloDecoderLoader", "inputs": {"options": "image_size=16"}},
    "p_karlo_sr": {"class_type": "KarloSuperResLoader", "inputs": {"options": "image_size=16"}},
    "p_karlo_embed": {"class_type": "KarloImageEmbed", "inputs": {"clip": ["p_clip", 0], "images": ["p_image", 0]}},
}
SOURCE = {"CLIP": "p_clip", "PRIOR": "p_prior", "DECODER": "p_dec", "INPAINT_MODEL": "p_inp", "UPSAMPLER": "p_ups",
          "CLASSIFIER": "p_cls", "NOISED_CLIP": "p_nclip", "IMAGE": "p_image", "MASK": "p_mask",
          "TEXT_EMBED": "p_text", "IMAGE_EMBED": "p_embed", "NOISE": "p_noise", "LATENT": "p_latent",
          "GUIDANCE": "p_guid", "CLASSIFIER_GUIDANCE": "p_cguid", "CLIP_GUIDANCE": "p_clipguid", "*": "p_float",
          "GLIDE_MODEL": "p_glide", "GLIDE_UPSAMPLER": "p_glide_up", "GLIDE_INPAINT_MODEL": "p_glide_inp",
          "GLIDE_INPAINT_UPSAMPLER": "p_glide_inp_up", "ADM_MODEL": "p_adm", "ADM_CLASSIFIER": "p_adm_clf",
          "KARLO_PRIOR": "p_karlo_prior", "KARLO_DECODER": "p_karlo_dec", "KARLO_SR": "p_karlo_sr",
          "KARLO_IMAGE_EMBED": "p_karlo_embed", "GENERATOR": "p_gan", "W_LATENT": "p_wlatent",
          "CLIP_OBJECTIVE": "p_objective"}
