"""Train the DALL·E 2 diffusion prior (text -> CLIP image embedding) on Shapes World."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from nodegraph.generate.conditions import Condition, prior_condition, prior_inputs
from nodegraph.models.clip import ClipModel
from nodegraph.models.diffusion_model import DiffusionSpec
from nodegraph.models.prior import PriorConfig, PriorTransformer
from nodegraph.train.common import TrainConfig
from nodegraph.train.recipe import Evaluation, Recipe, Setup, Trainee, run
from nodegraph.world.captions import caption
from nodegraph.world.dataset import ScenePool
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
    c = prior.cfg
    cond = prior_condition(Condition(text=clip.encode_text(caps)), n, c.context_length, c.text_width, c.clip_dim,
                           clip.device)
    gen = torch.Generator().manual_seed(0)
    z = sample(SPEC.build(), lambda x, t: prior(x, t, **cond),
               torch.randn(n, prior.cfg.clip_dim, generator=gen), sampler="ddim", steps=steps, generator=gen)
    emb = prior.denormalize(z)
    sim = emb @ truth.T
    best = sim.argmax(dim=1).tolist()
    top1 = sum(caps[j] == caps[i] for i, j in enumerate(best)) / n
    return {"top1": top1, "cos": sim.diagonal().mean().item()}


def build(setup: Setup) -> Trainee:
    cfg, pool, clip, ex = setup.cfg, setup.pool, setup.clip, setup.cfg.extra
    pcfg = PriorConfig(clip_dim=clip.embed_dim, text_width=clip.text_width, context_length=clip.context_length,
                       width=ex["width"], layers=ex["layers"], heads=4)
    prior = PriorTransformer(pcfg)
    embeds = pool_image_embeddings(clip, pool, cfg.dir() / f"embeds-{pool.spec.key()}.pt")
    # a resumed run restores its own statistics with the weights
    prior.embed_mean.copy_(embeds.mean(0))
    prior.embed_std.copy_(embeds.std(0).clamp_min(1e-4))
    diffusion = SPEC.build()

    def loss(model: torch.nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = pool.sample_indices(cfg.batch_size, gen)
        with torch.no_grad():
            text = clip.encode_text(pool.captions(idx, gen))
        x0 = model.normalize(embeds[idx])
        b = x0.shape[0]
        t = torch.randint(diffusion.num_timesteps, (b,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = diffusion.q_sample(x0, t, noise)
        text_on = torch.rand(b, generator=gen) >= ex["p_drop_text"]
        cond = prior_inputs(text, b, pcfg.context_length, pcfg.text_width, pcfg.clip_dim, x0.device, text_on)
        return diffusion.training_losses(model(x_t, t, **cond), x0, x_t, t, noise).mean(), {}

    def evaluate(model: PriorTransformer) -> Evaluation:
        stats = prior_retrieval(model, clip, ex["eval_n"])
        return Evaluation(stats["top1"], stats)

    meta = {"kind": "prior", "config": pcfg.to_dict(), "diffusion": SPEC.__dict__,
            "clip_model_name": clip.model_name, "metric": "top-1 retrieval of the true image, unguided"}
    return Trainee(prior, loss, evaluate, meta)


RECIPE = Recipe("prior", build, uses_clip=True)


def main(cfg: TrainConfig) -> None:
    run(RECIPE, cfg)
