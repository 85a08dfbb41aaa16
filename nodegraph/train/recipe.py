"""The one training skeleton every bundled model runs through.

A model module says only what is its own, in a `Recipe`: which scene pool it draws from, whether it needs
the frozen CLIP, and how to build its `Trainee` (the network, a batch's loss, an evaluation, the export
metadata). `run` does the rest the same way for all: seeding, the pool, resuming, the optimisation loop,
evaluating raw and EMA weights, and exporting the better of them when it beats the run's best.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nodegraph.models import loader
from nodegraph.models.clip import ClipModel
from nodegraph.models.unet import count_params
from nodegraph.train.common import RunState, TrainConfig, export_if_best, lr_at, start_or_resume, train_loop
from nodegraph.world.dataset import PoolSpec, ScenePool

Loss = Callable[[nn.Module, torch.Generator], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Evaluation:
    """One set of weights measured on held-out data."""

    score: float  # higher is better: picks raw or EMA weights and decides whether they are exported
    stats: dict[str, float]  # logged as NAME_raw and NAME_ema
    metadata: dict[str, object] = field(default_factory=dict)  # exported with these weights only (a per-t table)


@dataclass(frozen=True)
class Adversary:
    """A second network trained against the trainee's (a GAN's discriminator), with its own optimiser.

    Before every step of `net` the skeleton calls `step(net, gen, step_index, lr)`, which updates the
    adversary (lr follows the run's schedule) and returns statistics to log; the network and optimiser are
    saved in the run's checkpoint beside `net`'s and restored with them, so a resumed run equals one that
    never stopped.
    """

    net: nn.Module
    opt: torch.optim.Optimizer
    step: Callable[[nn.Module, torch.Generator, int, float], dict[str, float]]


@dataclass(frozen=True)
class Trainee:
    """A model ready to train: `loss` draws its batch with the run's generator, so a resumed run continues
    the same data stream."""

    net: nn.Module
    loss: Loss
    evaluate: Callable[[nn.Module], Evaluation]
    metadata: dict[str, object]  # exported with the weights: kind, config, metric, ...
    adversary: Adversary | None = None
    betas: tuple[float, float] = (0.9, 0.999)  # of the trainee's AdamW (GANs want a short memory: (0, 0.99))


@dataclass(frozen=True)
class Setup:
    """What a recipe builds its trainee from."""

    cfg: TrainConfig
    pool: ScenePool
    clip: ClipModel | None  # the frozen CLIP, for recipes that ask for it


@dataclass(frozen=True)
class Recipe:
    family: str  # the weights family the run exports (nodegraph.weights)
    build: Callable[[Setup], Trainee]
    uses_clip: bool = False
    pool_seed: int = 0  # offset from the run's seed, for models whose pool must not be another model's
    resolutions: tuple[int, ...] = (32,)
    p_two: float = 0.5
    device_aware: bool = False  # trains on `--device cuda`: batches drawn on the CPU, moved to the weights


def run(recipe: Recipe, cfg: TrainConfig) -> RunState:
    # weight initialisation is part of the seeded run, and loading CLIP draws from the same generator first
    torch.manual_seed(cfg.seed)
    clip = frozen_clip(cfg) if recipe.uses_clip else None
    pool = scene_pool(recipe, cfg)
    trainee = recipe.build(Setup(cfg, pool, clip))
    print(f"[{cfg.name}] {count_params(trainee.net) / 1e6:.2f}M parameters")
    adversary = trainee.adversary
    companions = {"adversary": adversary.net, "adversary_opt": adversary.opt} if adversary is not None else None
    state = start_or_resume(trainee.net, cfg, betas=trainee.betas, companions=companions)

    def step(model: nn.Module, i: int) -> tuple[torch.Tensor, dict[str, float]]:
        if adversary is None:
            return trainee.loss(model, state.gen)
        adversary_stats = adversary.step(model, state.gen, i, lr_at(i, cfg))
        loss, stats = trainee.loss(model, state.gen)
        return loss, {**adversary_stats, **stats}

    return train_loop(cfg, state, step, lambda st: evaluate_and_export(recipe.family, trainee, st, cfg))


def load_start(family: str, path: str | None, device: str = "cpu") -> object:
    """Weights a run starts from: the file `--set FAMILY=PATH` names, else the family's default file."""
    if path:
        return loader.load_file(family, Path(path), device)
    return loader.load(family, device=device)


def frozen_clip(cfg: TrainConfig) -> ClipModel:
    clip: ClipModel = load_start("clip", cfg.extra.get("clip"), cfg.device)
    clip.model.requires_grad_(False)
    return clip


def scene_pool(recipe: Recipe, cfg: TrainConfig) -> ScenePool:
    spec = PoolSpec(size=cfg.extra["pool"], seed=cfg.seed + recipe.pool_seed, resolutions=recipe.resolutions,
                    p_two=recipe.p_two)
    # beside the runs, so sibling and resumed runs share a rendered pool
    return ScenePool(spec, cache_dir=cfg.dir().parent / "pools", workers=cfg.extra.get("render_workers", 1))


def evaluate_and_export(family: str, trainee: Trainee, state: RunState, cfg: TrainConfig) -> dict[str, float]:
    """Both weights' statistics for the log, after exporting the better weights if they beat the run's best."""
    ev = {"raw": trainee.evaluate(state.model), "ema": trainee.evaluate(state.ema.model)}
    stats = {f"{name}_{which}": ev[which].stats[name] for name in ev["raw"].stats for which in ev}
    best = export_if_best(state, cfg, {which: e.score for which, e in ev.items()}, cfg.export_path(family),
                          trainee.metadata, {which: e.metadata for which, e in ev.items()})
    return {**stats, **best}
