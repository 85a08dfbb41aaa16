"""Train the noised CLIP image tower against the frozen bundled CLIP.

Two terms: the contrastive loss between noised images and the frozen text embeddings of their
captions (what guidance uses), and a distillation term pulling the embedding of x_t toward the
frozen CLIP's embedding of the clean image, which gives a denser signal on a small budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodegraph.models.clip import ClipModel
from nodegraph.models.noised_clip import NoisedClipConfig, NoisedImageTower
from nodegraph.train.common import TrainConfig
from nodegraph.train.decoder import SPEC
from nodegraph.train.recipe import Evaluation, Recipe, Setup, Trainee, run
from nodegraph.world.captions import caption
from nodegraph.world.render import render, to_model_range
from nodegraph.world.scene import random_scenes

DEFAULTS = dict(
    steps=2000, batch_size=128, lr=5e-4, warmup=100, eval_every=250, ckpt_every=100, ema_decay=0.999,
    weight_decay=0.05, extra=dict(pool=60_000, distill=1.0),
)
EVAL_SEED = 60_000
EVAL_TIMESTEPS = (0, 250, 500, 750, 900)


@torch.no_grad()
def retrieval_by_t(tower: NoisedImageTower, clip: ClipModel, n: int = 256) -> dict[int, float]:
    """Text -> noised image top-1 over n held-out scenes at each of EVAL_TIMESTEPS."""
    scenes = random_scenes(n, EVAL_SEED)
    caps = [caption(s) for s in scenes]
    x0 = to_model_range(render(scenes, 32))
    txt = F.normalize(clip.encode_text(caps).embed, dim=-1)
    diffusion = SPEC.build()
    gen = torch.Generator().manual_seed(0)
    out = {}
    for t in EVAL_TIMESTEPS:
        tt = torch.full((n,), t, dtype=torch.long)
        img = F.normalize(tower(diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=gen)), tt), dim=-1)
        best = (txt @ img.T).argmax(dim=1).tolist()
        out[t] = sum(caps[j] == caps[i] for i, j in enumerate(best)) / n
    return out


def build(setup: Setup) -> Trainee:
    cfg, pool, clip, ex = setup.cfg, setup.pool, setup.clip, setup.cfg.extra
    ncfg = NoisedClipConfig(image_size=clip.image_size, embed_dim=clip.embed_dim)
    tower = NoisedImageTower(ncfg)
    diffusion = SPEC.build()

    def loss(model: torch.nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = pool.sample_indices(cfg.batch_size, gen)
        x0 = pool.batch(idx, 32)
        with torch.no_grad():
            txt = F.normalize(clip.encode_text(pool.captions(idx, gen)).embed, dim=-1)
            clean = clip.embed_images(x0)
        t = torch.randint(diffusion.num_timesteps, (x0.shape[0],), generator=gen)
        img = F.normalize(model(diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=gen)), t), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        labels = torch.arange(len(idx))
        contrastive = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        distill = (1 - (img * clean).sum(-1)).mean()
        return contrastive + ex["distill"] * distill, {"distill": distill.item()}

    def evaluate(model: NoisedImageTower) -> Evaluation:
        table = retrieval_by_t(model, clip)
        top1 = sum(table.values()) / len(table)
        return Evaluation(top1, {"top1": top1}, {"retrieval_by_t": table})

    meta = {"kind": "noised_clip", "config": ncfg.to_dict(), "diffusion": SPEC.__dict__,
            "clip_model_name": clip.model_name,
            "metric": "mean text->noised-image top-1 over t in (0, 250, 500, 750, 900)"}
    return Trainee(tower, loss, evaluate, meta)


RECIPE = Recipe("noised_clip", build, uses_clip=True)


def main(cfg: TrainConfig) -> None:
    run(RECIPE, cfg)
