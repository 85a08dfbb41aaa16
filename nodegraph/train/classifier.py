"""Train the noisy classifier on one-shape scenes noised by the decoder's diffusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodegraph.models.classifier import HEADS, ClassifierConfig, NoisyClassifier
from nodegraph.train.common import TrainConfig
from nodegraph.train.decoder import SPEC
from nodegraph.train.recipe import Evaluation, Recipe, Setup, Trainee, run
from nodegraph.world.render import render, to_model_range
from nodegraph.world.scene import Scene, random_scenes

DEFAULTS = dict(
    steps=6000, batch_size=64, lr=5e-4, warmup=100, eval_every=250, ckpt_every=100, ema_decay=0.999,
    weight_decay=0.01, extra=dict(pool=20_000, channels=48),
)
EVAL_SEED = 50_000
EVAL_TIMESTEPS = (0, 250, 500, 750, 900)


def scene_labels(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    values = {
        "kind": [s.shapes[0].kind for s in scenes],
        "color": [s.shapes[0].color for s in scenes],
        "size": [s.shapes[0].size for s in scenes],
        "position": [s.shapes[0].position for s in scenes],
        "background": [s.background for s in scenes],
    }
    return {k: torch.tensor([HEADS[k].index(v) for v in vs]) for k, vs in values.items()}


@torch.no_grad()
def accuracy_by_t(net: NoisyClassifier, n: int = 256) -> dict[int, dict[str, float]]:
    """Per-head accuracy on held-out scenes noised to each of EVAL_TIMESTEPS (fixed noise)."""
    scenes = random_scenes(n, EVAL_SEED, p_two=0.0)
    x0, labels = to_model_range(render(scenes, 32)), scene_labels(scenes)
    diffusion = SPEC.build()
    gen = torch.Generator().manual_seed(0)
    out = {}
    for t in EVAL_TIMESTEPS:
        tt = torch.full((n,), t, dtype=torch.long)
        logits = net(diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=gen)), tt)
        out[t] = {k: (logits[k].argmax(1) == labels[k]).float().mean().item() for k in HEADS}
    return out


def mean_accuracy(table: dict[int, dict[str, float]]) -> float:
    return sum(sum(row.values()) / len(row) for row in table.values()) / len(table)


def build(setup: Setup) -> Trainee:
    cfg, pool, ex = setup.cfg, setup.pool, setup.cfg.extra
    net = NoisyClassifier(ClassifierConfig(model_channels=ex["channels"]))
    all_labels = scene_labels(pool.scenes)
    diffusion = SPEC.build()

    def loss(model: torch.nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        idx = pool.sample_indices(cfg.batch_size, gen)
        x0 = pool.batch(idx, 32)
        t = torch.randint(diffusion.num_timesteps, (x0.shape[0],), generator=gen)
        x_t = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
        logits = model(x_t, t)
        return sum(F.cross_entropy(logits[k], all_labels[k][idx]) for k in HEADS), {}

    def evaluate(model: NoisyClassifier) -> Evaluation:
        table = accuracy_by_t(model)
        acc = mean_accuracy(table)
        return Evaluation(acc, {"acc": acc}, {"accuracy_by_t": table})

    meta = {"kind": "classifier", "config": net.cfg.to_dict(), "diffusion": SPEC.__dict__,
            "heads": {k: list(v) for k, v in HEADS.items()},
            "metric": "mean head accuracy over t in (0, 250, 500, 750, 900)"}
    return Trainee(net, loss, evaluate, meta)


RECIPE = Recipe("classifier", build, pool_seed=2, p_two=0.0)


def main(cfg: TrainConfig) -> None:
    run(RECIPE, cfg)
