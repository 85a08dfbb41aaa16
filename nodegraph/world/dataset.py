"""Training data: a seeded pool of rendered scenes, drawn from at random.

Rendering a batch costs a noticeable share of a CPU training step, so each training run renders
its pool once (in chunks) and samples batches from it; captions are drawn fresh every time.
The pool is cached on disk, keyed by its parameters, so resumed and sibling runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nodegraph.world.captions import training_caption
from nodegraph.world.render import render_uint8, to_model_range
from nodegraph.world.scene import Scene, Shape, random_scenes


@dataclass(frozen=True)
class PoolSpec:
    size: int
    seed: int
    resolutions: tuple[int, ...] = (32,)
    jitter: bool = True
    p_two: float = 0.5

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


class ScenePool:
    def __init__(self, spec: PoolSpec, cache_dir: Path | None = None, chunk: int = 512, workers: int = 1):
        self.spec = spec
        path = cache_dir / f"pool-{spec.key()}.pt" if cache_dir is not None else None
        if path is not None and path.exists():
            data = torch.load(path, weights_only=True)
            self.images = {int(r): v for r, v in data["images"].items()}
            self.scenes = [_scene_from_dict(d) for d in json.loads(data["scenes"])]
            return
        self.scenes = random_scenes(spec.size, spec.seed, p_two=spec.p_two, jitter=spec.jitter)
        self.images = {}
        chunks = [self.scenes[i : i + chunk] for i in range(0, spec.size, chunk)]
        for res in spec.resolutions:
            self.images[res] = torch.cat(_render_chunks(chunks, res, workers))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({"images": self.images, "scenes": json.dumps([asdict(s) for s in self.scenes])}, tmp)
            tmp.replace(path)

    def __len__(self) -> int:
        return len(self.scenes)

    def sample_indices(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(len(self.scenes), (batch,), generator=gen)

    def batch(self, idx: torch.Tensor, res: int) -> torch.Tensor:
        """Images of the given pool indices as floats in [-1, 1]."""
        return to_model_range(self.images[res][idx].float())

    def captions(self, idx: torch.Tensor, gen: torch.Generator) -> list[str]:
        return [training_caption(self.scenes[i], gen) for i in idx.tolist()]


def _scene_from_dict(d: dict) -> Scene:
    return Scene(background=d["background"], shapes=tuple(Shape(**s) for s in d["shapes"]))


def _render_chunks(chunks: list[list[Scene]], res: int, workers: int) -> list[torch.Tensor]:
    """Render scene chunks in order; rendering is a pure function of the scene, so worker processes
    give the same pool as one process (a 150k pool is minutes on one core, seconds on sixteen)."""
    if workers <= 1:
        return [render_uint8(c, res) for c in chunks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a fork taken after torch has started its thread pool can deadlock in the child
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        return list(ex.map(render_uint8, chunks, [res] * len(chunks)))
