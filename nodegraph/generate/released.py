"""What the samplers of the released families share: step settings, the model-kind check, guidance over
keyword conditions, and one sampling call.

The released networks take their conditions as keyword tensors (`tokens`, `mask`, `y`, `low_res`, ...), so
classifier-free guidance is `nodegraph.diffusion.guidance.classifier_free_guidance` over condition dicts: one
batched forward over [conditional, null], variance channels from the conditional half, as GLIDE's and
Karlo's own `guided_model_fn` do. Every family samples with its own shipped diffusion settings
(`RealModel.diffusion`, see `nodegraph.models.real_diffusion`) and original timestep indices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from nodegraph.diffusion import guidance as G
from nodegraph.diffusion.samplers import SAMPLERS, CondFn, ModelFn, sample
from nodegraph.errors import ConditionError, InputValueError
from nodegraph.generate.conditions import NoiseSpec
from nodegraph.models.real import RealModel
from nodegraph.models.real_diffusion import DiffusionSettings

Callback = Callable[[int, int, Tensor, Tensor], "bool | None"]


@dataclass(frozen=True)
class Steps:
    """How to walk a released model's schedule. `steps` N is ADM's respacing "N" (N evenly strided steps;
    None = the family's shipped respacing); `respacing` overrides it ("fast27", "ddim25", "10,10,3,2,2")."""

    sampler: str = "ddpm"  # "ddpm" (the families' own ancestral sampler), "ddim" or "dpmpp_2m"
    steps: int | None = None
    respacing: str = ""
    eta: float = 0.0

    def timesteps(self, settings: DiffusionSettings) -> list[int]:
        if self.sampler not in SAMPLERS:
            raise InputValueError("sampler", f"{self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        respacing = self.respacing.strip() or (str(self.steps) if self.steps else settings.respacing)
        try:
            return settings.sequence(respacing)
        except (ValueError, IndexError) as exc:  # the user's steps or respacing do not fit the schedule
            where = "respacing" if self.respacing.strip() else "steps"
            raise InputValueError(where, f"{respacing!r:.40} does not fit a {settings.timesteps}-step schedule: "
                                  f"{exc}") from None


def require(model: RealModel, kind: str, input: str) -> None:
    """A ConditionError on `input` unless the model is of `kind` (the sockets make this a validation error for
    graphs; library callers get it here)."""
    if getattr(model, "kind", None) != kind:
        raise ConditionError(f"expected a {kind} model, got {getattr(model, 'kind', type(model).__name__)}", input)


def net_fn(model: RealModel) -> G.CondModel:
    net = model.net
    return lambda x, t, cond: net(x, t, **cond)


def guided(model: RealModel, cond: dict[str, Tensor], null: dict[str, Tensor] | None, scale: float) -> ModelFn:
    """model_fn(x_t, t): classifier-free guidance ε_∅ + s (ε_c − ε_∅) over condition dicts; at scale 1 (or
    without a null condition) just the conditional model, in one forward."""
    if null is None or scale == 1.0:
        return G.bind_cond(net_fn(model), cond)
    return G.classifier_free_guidance(net_fn(model), [cond], [scale], null)


def run(
    model: RealModel,
    model_fn: ModelFn,
    x_T: Tensor,
    steps: Steps,
    noise: NoiseSpec,
    *,
    callback: Callback | None = None,
    cond_fn: CondFn | None = None,
    denoised_fn: Callable[[Tensor], Tensor] | None = None,
    clip_denoised: bool | None = None,
) -> Tensor:
    """Sample along the model's shipped schedule from x_T; the sampler's own draws come from the noise's seed."""
    settings = model.diffusion
    timesteps = steps.timesteps(settings)
    inner = settings.denoised_fn()
    if denoised_fn is not None and inner is not None:
        outer = denoised_fn
        denoised_fn = lambda x0: inner(outer(x0))  # noqa: E731
    return sample(
        settings.build(), model_fn, x_T, sampler=steps.sampler, timesteps=timesteps, eta=steps.eta,
        generator=noise.sampler_generator(x_T.device), callback=callback, cond_fn=cond_fn,
        clip_denoised=settings.clip_denoised if clip_denoised is None else clip_denoised,
        denoised_fn=denoised_fn or inner,
    )


def batch_of(noise: NoiseSpec, *tensors: Tensor | None) -> int:
    """The batch of a run: the noise's, or the largest input batch when the noise asks for one image; every
    input must have batch 1 or that batch."""
    sizes = [t.shape[0] for t in tensors if t is not None]
    return noise.batch if noise.batch > 1 else max(sizes, default=1)


def expand(t: Tensor, batch: int, input: str) -> Tensor:
    if t.shape[0] not in (1, batch):
        raise InputValueError(input, f"batch {t.shape[0]} does not match the run's batch {batch}; use 1 or {batch}")
    return t.expand(batch, *t.shape[1:])


def class_labels(classes: int | None, label: int, noise: NoiseSpec, batch: int, device: torch.device) -> Tensor | None:
    """Class labels [batch] for a class-conditional model or a classifier with `classes` classes: `label`
    for every sample, or (label -1) one drawn per sample from the noise's seed, as guided-diffusion's
    scripts draw them. None when nothing takes labels."""
    if not classes:
        return None
    if label >= classes:
        raise InputValueError("class_label", f"{label} is not a class of this model (0 … {classes - 1}; -1 = random)")
    if label >= 0:
        return torch.full((batch,), label, dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(noise.seed + 2)
    return torch.randint(classes, (batch,), generator=gen).to(device)


__all__ = ["Steps", "batch_of", "class_labels", "expand", "guided", "net_fn", "require", "run"]
