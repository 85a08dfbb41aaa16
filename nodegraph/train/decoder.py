"""Train the text- and image-embedding-conditioned decoder (GLIDE / unCLIP) at 32x32.

One checkpoint serves three modes because conditions are dropped independently during training:
the CLIP image embedding with probability `p_drop_image`, the caption with `p_drop_text`. unCLIP
drops the image embedding 10% and text 50%; we drop the image embedding more often (35%) so that
text-only sampling (GLIDE mode) sees a fair share of training (0.35 * 0.55 ≈ 19% of samples).

The `inpaint` model is the same network with 4 extra input channels ([image * mask, mask]),
initialised from the decoder and fine-tuned on random rectangles and free-form masks.
"""

from __future__ import annotations

import torch

from nodegraph.models.clip import ClipModel, load_clip
from nodegraph.models.diffusion_model import DiffusionSpec
from nodegraph.models.unet import UNet, UNetConfig, count_params
from nodegraph.train.common import (
    REPO_ROOT,
    RunState,
    TrainConfig,
    export_if_best,
    start_or_resume,
    train_loop,
)
from nodegraph.world.captions import caption
from nodegraph.world.dataset import PoolSpec, ScenePool
from nodegraph.world.render import render, to_model_range
from nodegraph.world.scene import random_scenes

DEFAULTS = dict(
    steps=8000, batch_size=32, lr=3e-4, warmup=300, eval_every=500, ckpt_every=100, ema_decay=0.9995,
    extra=dict(pool=60_000, channels=48, p_drop_image=0.35, p_drop_text=0.45, eval_n=48, eval_steps=25, min_snr=5.0),
)
EVAL_SEED = 20_000
DEVICE_AWARE = True  # `--device cuda` trains here: batches are drawn on the CPU and moved to the weights' device
# v-prediction: with ε-prediction, x̂0 = (x_t - √(1-ᾱ)ε̂)/√ᾱ amplifies the ε error by ~2·10^4 at t = 999
# (ᾱ ≈ 2e-9), so the first sampling steps put clipped garbage into the image that later steps keep as
# grain; v gives x̂0 ≈ -v̂ there. (ε-trained weights fine-tune to v in a few hundred steps.)
SPEC = DiffusionSpec(schedule="cosine", timesteps=1000, prediction="v", variance="learned_range")


def decoder_config(channels: int, clip: ClipModel, in_channels: int = 3) -> UNetConfig:
    return UNetConfig(
        in_channels=in_channels, out_channels=6, model_channels=channels, channel_mult=(1, 2, 2),
        num_res_blocks=1, attention_resolutions=(16, 8), image_size=32, head_channels=32,
        clip_dim=clip.embed_dim, text_dim=clip.text_width, text_embed_dim=clip.embed_dim,
    )


@torch.no_grad()
def conditions(clip: ClipModel, images: torch.Tensor | None, captions: list[str] | None) -> dict[str, torch.Tensor]:
    """The decoder's keyword inputs from CLIP: unit-norm image embedding, text tokens, mask, pooled text."""
    cond: dict[str, torch.Tensor] = {}
    if images is not None:
        cond["image_embed"] = torch.nn.functional.normalize(clip.encode_image(images), dim=-1)
    if captions is not None:
        enc = clip.encode_text(captions)
        cond.update(text_tokens=enc.tokens, text_mask=enc.mask, text_embed=enc.embed)
    return cond


def drop_conditions(cond: dict[str, torch.Tensor], p_image: float, p_text: float, gen: torch.Generator) -> dict:
    """Switch the image embedding and the text off per sample (classifier-free guidance training)."""
    b, device = cond["image_embed"].shape[0], cond["image_embed"].device
    image_on = (torch.rand(b, generator=gen) >= p_image).float().to(device)
    text_on = (torch.rand(b, generator=gen) >= p_text).to(device)
    return {**cond, "image_on": image_on, "text_mask": cond["text_mask"] & text_on[:, None]}


@torch.no_grad()
def _sample(net: UNet, cond: dict[str, torch.Tensor], n: int, steps: int) -> torch.Tensor:
    from nodegraph.diffusion.samplers import sample

    device = next(net.parameters()).device
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=gen, device=device)
    out = sample(SPEC.build(), lambda x, t: net(x, t, **cond), x, sampler="ddim", steps=steps, generator=gen,
                 spacing="leading", clip_denoised=True)
    return out.clamp(-1, 1)


def sample_score(net: UNet, clip: ClipModel, n: int, steps: int, mode: str = "both") -> float:
    """Attribute accuracy of samples for held-out scenes, conditioned on their true CLIP embeddings.

    No guidance: this tracks training progress; guided quality is measured by bench/quality.py.
    """
    from nodegraph.world.scorer import score_batch

    scenes = random_scenes(n, EVAL_SEED)
    caps = [caption(s) for s in scenes]
    images = to_model_range(render(scenes, 32)).to(clip.device)
    cond = conditions(clip, images if mode != "text" else None, caps if mode != "image" else None)
    return score_batch(_sample(net, cond, n, steps), caps).attribute_accuracy


def unconditional_valid(net: UNet, n: int, steps: int) -> float:
    """Fraction of unconditional samples (no text, no image embedding) that parse as valid scenes."""
    from nodegraph.world.scorer import valid_rate

    return valid_rate(_sample(net, {}, n, steps))


def main(cfg: TrainConfig) -> None:
    torch.manual_seed(cfg.seed)  # weight initialisation is part of the seeded run
    clip = load_clip(cfg.extra.get("clip", REPO_ROOT / "models" / "clip.safetensors"))
    clip.model.requires_grad_(False)
    ex = cfg.extra
    clip.to(cfg.device)
    net = UNet(decoder_config(ex["channels"], clip))
    print(f"[decoder] {count_params(net) / 1e6:.2f}M parameters")
    pool = ScenePool(PoolSpec(size=ex["pool"], seed=cfg.seed, resolutions=(32,)),
                     cache_dir=cfg.dir().parent / "pools", workers=ex.get("render_workers", 1))
    diffusion = SPEC.build()
    state = start_or_resume(net, cfg)

    def step(model: torch.nn.Module, _: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = pool.sample_indices(cfg.batch_size, state.gen)
        x0 = pool.batch(idx, 32).to(cfg.device)
        cond = drop_conditions(conditions(clip, x0, pool.captions(idx, state.gen)),
                               ex["p_drop_image"], ex["p_drop_text"], state.gen)
        t = torch.randint(diffusion.num_timesteps, (x0.shape[0],), generator=state.gen).to(cfg.device)
        noise = torch.randn(x0.shape, generator=state.gen).to(cfg.device)
        x_t = diffusion.q_sample(x0, t, noise)
        loss = diffusion.training_losses(model(x_t, t, **cond), x0, x_t, t, noise, ex["min_snr"]).mean()
        return loss, {}

    def evaluate(st: RunState) -> dict[str, float]:
        # One checkpoint serves conditional and unconditional sampling, so the export score weighs both:
        # conditional accuracy alone let unconditional validity drift (0.80 valid at 0.876 accuracy).
        weights = {"raw": st.model, "ema": st.ema.model}
        acc = {k: sample_score(m, clip, ex["eval_n"], ex["eval_steps"]) for k, m in weights.items()}
        valid = {k: unconditional_valid(m, ex["eval_n"], ex["eval_steps"]) for k, m in weights.items()}
        scores = {k: (acc[k] + valid[k]) / 2 for k in acc}
        meta = {"kind": "decoder", "config": net.cfg.to_dict(), "diffusion": SPEC.__dict__,
                "clip_model_name": clip.model_name,
                "metric": "mean of attribute accuracy (unguided, true embeddings) and unconditional valid rate"}
        return {**{f"acc_{k}": v for k, v in acc.items()}, **{f"valid_{k}": v for k, v in valid.items()},
                **export_if_best(st, cfg, scores, cfg.out("decoder.safetensors"), meta)}

    train_loop(cfg, state, step, evaluate)
