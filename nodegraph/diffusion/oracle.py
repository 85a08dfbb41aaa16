"""Exact denoisers for Gaussian-mixture data, for testing and benchmarking samplers.

For data x_0 ~ Σ_k π_k N(μ_k, diag σ_k²) the noised marginal is again a mixture,
x_t | k ~ N(√ᾱ μ_k, diag(ᾱσ_k² + 1 - ᾱ)), and the ideal denoiser is known in closed form:
    r_k(x_t) = p(k | x_t)                                (Bayes on the noised components)
    E[x_0 | x_t, k] = μ_k + √ᾱ σ_k² / (ᾱσ_k² + 1 - ᾱ) · (x_t - √ᾱ μ_k)
    E[x_0 | x_t] = Σ_k r_k E[x_0 | x_t, k],   ε̂ = (x_t - √ᾱ x̂0)/√(1 - ᾱ)   (Tweedie).
A sampler driven by this denoiser should reproduce the data distribution up to its discretisation error,
and log r_k is the exact noisy classifier for classifier guidance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .gaussian import Coef, GaussianDiffusion


class GaussianMixtureOracle:
    """Mixture data: means ``means[k]`` (shape (K, *event)), stds ``stds[k]`` (broadcastable), weights π_k."""

    def __init__(self, means: Tensor, stds: Tensor | Sequence[float], weights: Sequence[float] | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        k = self.means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64)
        self.stds = stds.reshape(k, *([1] * (self.means.ndim - 1))) if stds.ndim == 1 else stds
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights)
        self.weights = (w / w.sum()).to(torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n draws of x_0 (float64) and their component labels."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, *self.means.shape[1:]), generator=generator, dtype=torch.float64)
        return self.means[labels] + self.stds.expand_as(self.means)[labels] * z, labels

    def mean(self) -> Tensor:
        w = self.weights.view(-1, *([1] * (self.means.ndim - 1)))
        return (w * self.means).sum(0)

    def var(self) -> Tensor:
        w = self.weights.view(-1, *([1] * (self.means.ndim - 1)))
        second = (w * (self.stds**2 + self.means**2)).sum(0)
        return second - self.mean() ** 2

    def _per_component(self, x_t: Tensor, a: Coef) -> tuple[Tensor, list[Tensor]]:
        """log p(x_t | k) + log π_k stacked as (K, B), and E[x_0 | x_t, k] for each k.

        Components are looped over (K is small) and sums over the event run as a matmul, because CPU
        reductions over a tiny innermost dimension are orders of magnitude slower than the arithmetic.
        """
        ones = x_t.new_ones(x_t[0].numel())
        log_joint, cond_means = [], []
        for k in range(self.means.shape[0]):
            mu = self.means[k].to(x_t)
            var = (self.stds.expand_as(self.means)[k] ** 2).to(x_t)
            noised_var = a * var + (1 - a)
            diff = x_t - a**0.5 * mu
            quad = (diff**2 / noised_var + torch.log(2 * torch.pi * noised_var)).flatten(1) @ ones
            log_joint.append(-0.5 * quad + torch.log(self.weights[k]).item())
            cond_means.append(mu + a**0.5 * var / noised_var * diff)
        return torch.stack(log_joint), cond_means

    def x0(self, x_t: Tensor, a: Coef) -> Tensor:
        """E[x_0 | x_t] at noise level ᾱ = a."""
        log_joint, cond_means = self._per_component(x_t, a)
        r = torch.softmax(log_joint, dim=0).view(len(cond_means), -1, *([1] * (x_t.ndim - 1)))
        return sum(r[k] * m for k, m in enumerate(cond_means))

    def log_class_prob(self, x_t: Tensor, a: Coef, label: int) -> Tensor:
        """log p(k = label | x_t), per sample: the exact noisy classifier."""
        log_joint, _ = self._per_component(x_t, a)
        return torch.log_softmax(log_joint, dim=0)[label]

    def conditional(self, label: int) -> GaussianMixtureOracle:
        """The oracle of one component alone, i.e. of p(x_0 | k = label)."""
        return GaussianMixtureOracle(self.means[label : label + 1], self.stds.expand_as(self.means)[label : label + 1])

    def model_fn(self, diffusion: GaussianDiffusion, variance_value: float = -1.0):
        """``model_fn(x_t, t)`` giving the exact output in ``diffusion``'s prediction format; for
        ``learned_range`` the variance channels are the constant ``variance_value`` (-1 = β̃, 1 = β)."""

        def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
            a = diffusion.abar(t, x_t)
            x0 = self.x0(x_t, a)
            eps = (x_t - a**0.5 * x0) / (1 - a) ** 0.5
            out = {"eps": eps, "x0": x0, "v": a**0.5 * eps - (1 - a) ** 0.5 * x0}[diffusion.prediction]
            if diffusion.variance == "learned_range":
                out = torch.cat([out, torch.full_like(out, variance_value)], dim=1)
            return out

        return model_fn
