"""Noise schedules and timestep sequences.

A schedule is the vector of betas β_0 … β_{T-1} of a T-step forward process
q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I), so that ᾱ_t = Π_{s≤t} (1 - β_s) and
q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I).

Samplers walk a *descending* list of integer timesteps of that original schedule (e.g. ``[999, 979, …, 0]``);
after the last entry they step to the clean image (written ``-1``, where ᾱ = 1). A model is always called
with original timestep indices, so a respaced sequence needs no respaced model.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

BetaSchedule = Literal["linear", "cosine"]
Spacing = Literal["leading", "trailing", "linspace"]


def make_betas(kind: BetaSchedule, num_timesteps: int) -> torch.Tensor:
    """Return the float64 betas of a ``num_timesteps``-step schedule.

    - ``linear`` (DDPM / ADM): β evenly spaced from 1e-4·1000/T to 0.02·1000/T, so that any T gives
      roughly the same ᾱ curve as the original T = 1000 schedule.
    - ``cosine`` (improved DDPM, diffusers' ``squaredcos_cap_v2``): ᾱ(t) = f(t)/f(0) with
      f(t) = cos²(((t/T + s)/(1 + s))·π/2), s = 0.008, and β_t = min(1 - ᾱ(t+1)/ᾱ(t), 0.999); the cap keeps
      the last steps from being singular.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if kind == "linear":
        scale = 1000.0 / num_timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    if kind == "cosine":
        s = 0.008

        def f(t: float) -> float:
            return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1.0 - f(i + 1) / f(i), 0.999) for i in range(num_timesteps)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {kind!r}; expected 'linear' or 'cosine'")


def space_timesteps(num_timesteps: int, section_counts: str | int) -> list[int]:
    """ADM ("improved DDPM") respacing, returned as a descending list of original timesteps.

    ``section_counts`` is
    - ``"ddimN"``: the stride-k sequence ``0, k, 2k, …`` with exactly N entries (the smallest such k), as in
      the DDIM paper; raises if no integer stride gives N steps;
    - a comma-separated list such as ``"10,10,3,2,2"`` (GLIDE's "fast27"): the T steps are cut into that many
      nearly equal sections (the first ``T % n`` get one extra step) and section i contributes ``counts[i]``
      evenly spaced steps, both ends of the section included (rounded as ADM rounds, i.e. Python's round);
    - a single number ``"100"`` / ``100``: one section, so the steps spread evenly from 0 to T-1.
    """
    text = str(section_counts).strip()
    form = "respacing is 'ddimN' or step counts per section like '10,10,3,2,2'"
    if text.startswith("ddim"):
        if not text[len("ddim") :].isdecimal():
            raise ValueError(f"{form}, got {text[:40]!r}")
        wanted = int(text[len("ddim") :])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == wanted:
                return sorted(range(0, num_timesteps, stride), reverse=True)
        raise ValueError(f"no integer stride gives exactly {wanted} steps out of {num_timesteps}")

    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdecimal() and len(part) <= 6 for part in parts) or len(parts) > num_timesteps:
        raise ValueError(f"{form} (at most {num_timesteps} sections), got {text[:40]!r}")
    counts = [int(part) for part in parts]
    base, extra = divmod(num_timesteps, len(counts))
    steps: set[int] = set()
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if not 0 < count <= size:
            raise ValueError(f"section {i} has {size} timesteps and cannot take {count} steps")
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        steps.update(start + round(j * stride) for j in range(count))
        start += size
    return sorted(steps, reverse=True)


def ddim_timesteps(num_timesteps: int, steps: int, spacing: Spacing = "trailing") -> list[int]:
    """``steps`` descending timesteps with diffusers' ``timestep_spacing`` semantics (steps_offset = 0).

    - ``leading``:  k·⌊T/n⌋ for k = 0 … n-1 (the DDIM paper; equals ADM's ``ddimN`` when n divides T);
    - ``trailing``: round(T - k·T/n) - 1, so the first step is always T-1 (Lin et al. 2023);
    - ``linspace``: n rounded points of linspace(0, T-1), so both T-1 and 0 are visited.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if spacing == "leading":
        ratio = num_timesteps // steps
        ts = [k * ratio for k in range(steps)]
    elif spacing == "trailing":
        ts = [round(num_timesteps - k * num_timesteps / steps) - 1 for k in range(steps)]
    elif spacing == "linspace":
        # k·step with step = (T-1)/(n-1), as numpy's linspace (and so diffusers) computes it: the rounding of
        # exact halves depends on it (T = 1000, n = 27 gives 499.49999… there, not 499.5)
        stride = (num_timesteps - 1) / (steps - 1) if steps > 1 else 0.0
        ts = [round(k * stride) for k in range(steps)]
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected 'leading', 'trailing' or 'linspace'")
    return sorted(set(ts), reverse=True)


def timestep_sequence(
    num_timesteps: int,
    steps: int | None = None,
    respacing: str | None = None,
    spacing: Spacing = "trailing",
) -> list[int]:
    """The sequence a sampler walks: ADM ``respacing`` when given (it wins), else ``steps`` with ``spacing``,
    else every timestep T-1 … 0.

    ``trailing`` is the default: it always starts at T-1, and it does not end on t = 0, whose λ = log(α/σ)
    lies far beyond its neighbour's; that lone huge last step costs DPM-Solver++ its second order (on the
    Gaussian oracle, 20 linspace steps give 3.5x (linear) to 8x (cosine) the error of 20 trailing ones).
    """
    if respacing:
        return space_timesteps(num_timesteps, respacing)
    if steps is None:
        return list(range(num_timesteps - 1, -1, -1))
    return ddim_timesteps(num_timesteps, steps, spacing)
