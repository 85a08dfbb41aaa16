"""Train the bundled CLIP on Shapes World with open_clip's contrastive loss.

Random in-batch negatives almost never differ from a positive in shape kind alone, so contrastive
training learns colour, size and position long before kind (at 1 000 steps the text embeddings of
"... triangle ..." and "... cross ..." had cosine 0.998). With `--set twins=K`, K scenes of each batch
come with a twin that differs only in one shape's kind, rendered on the fly: hard negatives that
make kind worth learning. Every model conditioned on CLIP inherits what CLIP cannot tell apart.
"""

from __future__ import annotations

import dataclasses

import torch
from open_clip import ClipLoss

from nodegraph.models.clip import BUNDLED_CLIP, ClipModel, build_clip
from nodegraph.train.common import TrainConfig
from nodegraph.train.recipe import Evaluation, Recipe, Setup, Trainee, run
from nodegraph.world.captions import caption, training_caption
from nodegraph.world.render import render, render_uint8, to_model_range
from nodegraph.world.scene import COLORS, KINDS, POSITIONS, Scene, random_scenes

DEFAULTS = dict(steps=3000, batch_size=128, lr=5e-4, warmup=200, weight_decay=0.1, eval_every=250,
                extra=dict(pool=60_000, twins=0))
SWAPS = {"kind": KINDS, "color": COLORS, "size": ("small", "large"), "position": tuple(POSITIONS)}
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


@torch.no_grad()
def swap_accuracy(clip: ClipModel, n: int = 128, seed: int = EVAL_SEED + 1) -> dict[str, float]:
    """Zero-shot attribute reading: for held-out one-shape images, does the caption with the right value
    of one attribute beat the same caption with each other value? Per attribute, over n scenes."""
    scenes = random_scenes(n, seed, p_two=0.0)
    img = torch.nn.functional.normalize(clip.encode_image(to_model_range(render(scenes, 32))), dim=-1)
    out = {}
    for attr, values in SWAPS.items():
        cands = [[v for v in values if not (attr == "color" and v == sc.background)] for sc in scenes]
        caps = [caption(Scene(sc.background, (dataclasses.replace(sc.shapes[0], **{attr: v}),)))
                for sc, cs in zip(scenes, cands, strict=True) for v in cs]
        txt = torch.nn.functional.normalize(clip.encode_text(caps).embed, dim=-1).split([len(c) for c in cands])
        hits = sum(cs[int((t @ img[i]).argmax())] == getattr(scenes[i].shapes[0], attr)
                   for i, (cs, t) in enumerate(zip(cands, txt, strict=True)))
        out[attr] = hits / n
    return out


def kind_twins(scenes: list[Scene], gen: torch.Generator) -> list[Scene]:
    """Each scene with one of its shapes turned into another kind (everything else identical)."""
    twins = []
    for sc in scenes:
        j = int(torch.randint(len(sc.shapes), (), generator=gen))
        others = [k for k in KINDS if k != sc.shapes[j].kind]
        kind = others[int(torch.randint(len(others), (), generator=gen))]
        shapes = tuple(dataclasses.replace(s, kind=kind) if i == j else s for i, s in enumerate(sc.shapes))
        twins.append(Scene(sc.background, shapes))
    return twins


def build(setup: Setup) -> Trainee:
    cfg, pool = setup.cfg, setup.pool
    clip = build_clip(BUNDLED_CLIP)
    contrastive = ClipLoss()

    def loss(model: torch.nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        k = cfg.extra["twins"]
        idx = pool.sample_indices(cfg.batch_size - k, gen)
        x, caps = pool.batch(idx, 32), pool.captions(idx, gen)
        if k:  # the first k pool scenes get a kind-swapped twin in the same batch
            twins = kind_twins([pool.scenes[i] for i in idx[:k].tolist()], gen)
            x = torch.cat([x, to_model_range(render_uint8(twins, 32).float())])  # quantised like the pool
            caps = caps + [training_caption(t, gen) for t in twins]
        f_img = model.encode_image(clip.preprocess(x), normalize=True)
        f_txt = model.encode_text(clip.tokenize(caps), normalize=True)
        return contrastive(f_img, f_txt, model.logit_scale.exp()), {"scale": model.logit_scale.exp().item()}

    def evaluate(model: torch.nn.Module) -> Evaluation:
        c = ClipModel(model, BUNDLED_CLIP)
        top1, swaps = retrieval_top1(c), swap_accuracy(c)
        # Retrieval saturates early; the worst-read attribute is what downstream models lack.
        return Evaluation((top1 + min(swaps.values())) / 2, {"top1": top1, **swaps})

    meta = {"kind": "clip", "model_name": BUNDLED_CLIP,
            "metric": "mean of text->image top-1 (256 held-out) and the worst attribute-swap accuracy"}
    return Trainee(clip.model, loss, evaluate, meta)


RECIPE = Recipe("clip", build)


def main(cfg: TrainConfig) -> None:
    run(RECIPE, cfg)
