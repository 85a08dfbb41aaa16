"""Train the DALL·E 2 diffusion prior (text -> CLIP image embedding) on Shapes World."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from nodegraph.models.clip import ClipModel, load_clip
from nodegraph.models.diffusion_model import DiffusionSpec
from nodegraph.models.prior import PriorConfig, PriorTransformer
from nodegraph.models.unet import count_params
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
    steps=3000, batch_size=128, lr=3e-4, warmup=200, eval_every=500, ckpt_every=200, ema_decay=0.999,
    weight_decay=0.01, extra=dict(pool=60_000, p_drop_text=0.1, width=256, layers=4, eval_n=256),
)
EVAL_SEED = 30_000
SPEC = DiffusionSpec(schedule="cosine", timesteps=1000, prediction="x0", variance="fixed_small")


@torch.no_grad()
def pool_image_embeddings(clip: ClipModel, pool: ScenePool, cache: Path, chunk: int = 500) -> torch.Tensor:
    """Unit-norm CLIP image embeddings of every pool image (cached: the CLIP is frozen)."""
    if cache.exists():
        return torch.load(cache, weights_only=True)
    out = torch.cat([
        F.normalize(clip.encode_image(pool.batch(torch.arange(i, min(i + chunk, len(pool))), 32)), dim=-1)
        for i in range(0, len(pool), chunk)
    ])
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


@torch.no_grad()
def prior_retrieval(prior: PriorTransformer, clip: ClipModel, n: int, steps: int = 25) -> dict[str, float]:
    """Sample an embedding per held-out caption (no guidance); report the mean cosine to the true
    image embedding and top-1 retrieval of the right image among the n held-out images."""
    from nodegraph.diffusion.samplers import sample

    scenes = random_scenes(n, EVAL_SEED)
    caps = [caption(s) for s in scenes]
    truth = F.normalize(clip.encode_image(to_model_range(render(scenes, 32))), dim=-1)
    enc = clip.encode_text(caps)
    gen = torch.Generator().manual_seed(0)
    z = sample(SPEC.build(), lambda x, t: prior(x, t, enc.tokens, enc.mask, enc.embed),
               torch.randn(n, prior.cfg.clip_dim, generator=gen), sampler="ddim", steps=steps, generator=gen)
    emb = prior.denormalize(z)
    sim = emb @ truth.T
    best = sim.argmax(dim=1).tolist()
    top1 = sum(caps[j] == caps[i] for i, j in enumerate(best)) / n
    return {"cos": sim.diagonal().mean().item(), "top1": top1}


def main(cfg: TrainConfig) -> None:
    torch.manual_seed(cfg.seed)  # weight initialisation is part of the seeded run
    clip = load_clip(cfg.extra.get("clip", REPO_ROOT / "models" / "clip.safetensors"))
    clip.model.requires_grad_(False)
    ex = cfg.extra
    pcfg = PriorConfig(clip_dim=clip.embed_dim, text_width=clip.text_width, context_length=clip.context_length,
                       width=ex["width"], layers=ex["layers"], heads=4)
    prior = PriorTransformer(pcfg)
    print(f"[prior] {count_params(prior) / 1e6:.2f}M parameters")
    pool = ScenePool(PoolSpec(size=ex["pool"], seed=cfg.seed, resolutions=(32,)),
                     cache_dir=cfg.dir().parent / "pools")
    embeds = pool_image_embeddings(clip, pool, cfg.dir() / f"embeds-{pool.spec.key()}.pt")
    prior.embed_mean.copy_(embeds.mean(0))
    prior.embed_std.copy_(embeds.std(0).clamp_min(1e-4))
    diffusion = SPEC.build()
    state = start_or_resume(prior, cfg)  # a resumed run restores its own statistics with the weights

    def step(model: torch.nn.Module, _: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = pool.sample_indices(cfg.batch_size, state.gen)
        with torch.no_grad():
            enc = clip.encode_text(pool.captions(idx, state.gen))
        x0 = model.normalize(embeds[idx])
        t = torch.randint(diffusion.num_timesteps, (x0.shape[0],), generator=state.gen)
        noise = torch.randn(x0.shape, generator=state.gen)
        x_t = diffusion.q_sample(x0, t, noise)
        text_on = torch.rand(x0.shape[0], generator=state.gen) >= ex["p_drop_text"]
        out = model(x_t, t, enc.tokens, enc.mask, enc.embed, text_on)
        return diffusion.training_losses(out, x0, x_t, t, noise).mean(), {}

    def evaluate(st: RunState) -> dict[str, float]:
        raw, ema = prior_retrieval(st.model, clip, ex["eval_n"]), prior_retrieval(st.ema.model, clip, ex["eval_n"])
        meta = {"kind": "prior", "config": pcfg.to_dict(), "diffusion": SPEC.__dict__,
                "clip_model_name": clip.model_name, "metric": "top-1 retrieval of the true image, unguided"}
        best = export_if_best(st, cfg, {"raw": raw["top1"], "ema": ema["top1"]}, cfg.out("prior.safetensors"), meta)
        return {"top1_raw": raw["top1"], "top1_ema": ema["top1"], "cos_raw": raw["cos"], "cos_ema": ema["cos"], **best}

    train_loop(cfg, state, step, evaluate)
