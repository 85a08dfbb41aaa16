"""Train the bundled CLIP on Shapes World with open_clip's contrastive loss."""

from __future__ import annotations

import torch
from open_clip import ClipLoss

from nodegraph.models.clip import BUNDLED_CLIP, ClipModel, build_clip
from nodegraph.train.common import TrainConfig, export_if_best, start_or_resume, train_loop
from nodegraph.world.captions import caption
from nodegraph.world.dataset import PoolSpec, ScenePool
from nodegraph.world.render import render, to_model_range
from nodegraph.world.scene import random_scenes

DEFAULTS = dict(steps=3000, batch_size=128, lr=5e-4, warmup=200, weight_decay=0.1, eval_every=250)
EVAL_SEED = 10_000  # held-out scenes: a seed no training pool uses


@torch.no_grad()
def retrieval_top1(clip: ClipModel, n: int = 256, seed: int = EVAL_SEED) -> float:
    """Text -> image top-1 over n held-out scenes; a hit is any image whose caption equals the query's."""
    scenes = random_scenes(n, seed)
    caps = [caption(s) for s in scenes]
    img = clip.encode_image(to_model_range(render(scenes, 32)))
    txt = clip.encode_text(caps).embed
    sim = torch.nn.functional.normalize(txt, dim=-1) @ torch.nn.functional.normalize(img, dim=-1).T
    best = sim.argmax(dim=1).tolist()
    return sum(caps[j] == caps[i] for i, j in enumerate(best)) / n


def main(cfg: TrainConfig) -> None:
    torch.manual_seed(cfg.seed)  # weight initialisation is part of the seeded run
    clip = build_clip(BUNDLED_CLIP)
    pool = ScenePool(PoolSpec(size=cfg.extra.get("pool", 60_000), seed=cfg.seed, resolutions=(32,)),
                     cache_dir=cfg.dir().parent / "pools")
    state = start_or_resume(clip.model, cfg)
    loss_fn = ClipLoss()

    def step(model: torch.nn.Module, _: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = pool.sample_indices(cfg.batch_size, state.gen)
        images = clip.preprocess(pool.batch(idx, 32))
        tokens = clip.tokenize(pool.captions(idx, state.gen))
        f_img = model.encode_image(images, normalize=True)
        f_txt = model.encode_text(tokens, normalize=True)
        return loss_fn(f_img, f_txt, model.logit_scale.exp()), {"scale": model.logit_scale.exp().item()}

    def evaluate(st) -> dict[str, float]:
        scores = {
            "raw": retrieval_top1(ClipModel(st.model, BUNDLED_CLIP)),
            "ema": retrieval_top1(ClipModel(st.ema.model, BUNDLED_CLIP)),
        }
        meta = {"kind": "clip", "model_name": BUNDLED_CLIP, "metric": "text->image top-1 (256 held-out)"}
        return {**{f"top1_{k}": v for k, v in scores.items()},
                **export_if_best(st, cfg, scores, cfg.out("clip.safetensors"), meta)}

    train_loop(cfg, state, step, evaluate)
