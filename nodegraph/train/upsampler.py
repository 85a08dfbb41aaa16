"""Train the 32 -> 64 diffusion upsampler.

The low-res image is upsampled (bilinear) and concatenated to x_t. As in DALL·E 2 / Imagen, the
low-res conditioning is corrupted during training so that the upsampler tolerates the decoder's
imperfect samples: Gaussian noise at a random level s of the upsampler's own schedule
(q_sample(low, s), s uniform in [0, max_aug)), with s given to the network like a timestep. At
sampling time a small fixed level is used, recorded in the checkpoint's metadata as `aug_level`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodegraph.models.unet import UNet, UNetConfig
from nodegraph.train.common import TrainConfig
from nodegraph.train.decoder import SPEC  # the same diffusion as the decoder (v-prediction; see there)
from nodegraph.train.recipe import Evaluation, Recipe, Setup, Trainee, run
from nodegraph.world.render import render, to_model_range
from nodegraph.world.scene import random_scenes

DEFAULTS = dict(
    steps=3000, batch_size=16, lr=3e-4, warmup=200, eval_every=500, ckpt_every=100, ema_decay=0.9995,
    extra=dict(pool=20_000, channels=32, max_aug=250, eval_n=32, eval_steps=20, eval_aug=50, min_snr=5.0),
)
EVAL_SEED = 40_000


def upsampler_config(channels: int) -> UNetConfig:
    return UNetConfig(
        in_channels=6, out_channels=6, model_channels=channels, channel_mult=(1, 2, 2), num_res_blocks=1,
        attention_resolutions=(), image_size=64, head_channels=32, aug_level=True,
    )


def low_res_condition(low: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def upsample_psnr(net: UNet, n: int, steps: int, aug: int) -> float:
    """PSNR (dB) of upsampled true 32x32 renders against the true 64x64 renders of the same scenes."""
    from nodegraph.diffusion.samplers import sample

    scenes = random_scenes(n, EVAL_SEED)
    low, high = to_model_range(render(scenes, 32)), to_model_range(render(scenes, 64))
    diffusion = SPEC.build()
    gen = torch.Generator().manual_seed(0)
    level = torch.full((n,), aug, dtype=torch.long)
    cond = low_res_condition(diffusion.q_sample(low, level, torch.randn(low.shape, generator=gen)), 64)
    x = torch.randn(high.shape, generator=gen)
    out = sample(diffusion, lambda x, t: net(x, t, extra=cond, aug_level=level), x, sampler="ddim",
                 steps=steps, generator=gen, spacing="leading", clip_denoised=True).clamp(-1, 1)
    mse = ((out - high) / 2).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-10))).item()


def build(setup: Setup) -> Trainee:
    cfg, pool, ex = setup.cfg, setup.pool, setup.cfg.extra
    net = UNet(upsampler_config(ex["channels"]))
    diffusion = SPEC.build()

    def loss(model: torch.nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = pool.sample_indices(cfg.batch_size, gen)
        low, x0 = pool.batch(idx, 32), pool.batch(idx, 64)
        b = x0.shape[0]
        level = torch.randint(ex["max_aug"], (b,), generator=gen)
        low = diffusion.q_sample(low, level, torch.randn(low.shape, generator=gen))
        t = torch.randint(diffusion.num_timesteps, (b,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = diffusion.q_sample(x0, t, noise)
        out = model(x_t, t, extra=low_res_condition(low, 64), aug_level=level)
        return diffusion.training_losses(out, x0, x_t, t, noise, ex["min_snr"]).mean(), {}

    def evaluate(model: UNet) -> Evaluation:
        psnr = upsample_psnr(model, ex["eval_n"], ex["eval_steps"], ex["eval_aug"])
        return Evaluation(psnr, {"psnr": psnr})

    meta = {"kind": "upsampler", "config": net.cfg.to_dict(), "diffusion": SPEC.__dict__,
            "low_res": 32, "aug_level": ex["eval_aug"], "metric": "PSNR vs true 64x64 render (dB)"}
    return Trainee(net, loss, evaluate, meta)


RECIPE = Recipe("upsampler", build, pool_seed=1, resolutions=(32, 64))


def main(cfg: TrainConfig) -> None:
    run(RECIPE, cfg)
