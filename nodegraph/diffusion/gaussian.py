"""The Gaussian diffusion process: forward noising, prediction conversions, single reverse steps, losses.

Notation (Ho et al. 2020; Nichol & Dhariwal 2021): ᾱ_t = Π_{s≤t}(1 - β_s); x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε.
Every reverse step goes from a timestep t to an *earlier* timestep s of the original T-step schedule
(s = t - 1 unrespaced, anything smaller when respaced, s = -1 for the clean image, where ᾱ_{-1} = 1). All
step coefficients are computed from ᾱ_t and ᾱ_s alone, so respaced sequences need no separate diffusion
object, and the model is always called with original timestep indices.

Timesteps are Python ints (one step for the whole batch: coefficients are Python floats, no tensor work) or
integer tensors of shape (batch,) (coefficients gathered per sample, in the dtype of x_t).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Prediction = Literal["eps", "x0", "v"]
Variance = Literal["fixed_small", "fixed_large", "learned_range"]
Timestep = int | Tensor
Coef = float | Tensor
DenoisedFn = Callable[[Tensor], Tensor]


class PMeanVariance(NamedTuple):
    """The model's reverse-step Gaussian p(x_s | x_t) = N(mean, variance), with its x̂0 and ε̂."""

    mean: Tensor
    variance: Coef
    log_variance: Coef
    pred_x0: Tensor
    pred_eps: Tensor


def _log(v: Coef) -> Coef:
    return math.log(v) if isinstance(v, float) else torch.log(v)


def _exp(v: Coef) -> Coef:
    return math.exp(v) if isinstance(v, float) else torch.exp(v)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all but the batch dimension."""
    return x.flatten(1).mean(dim=1)


def dynamic_threshold(percentile: float = 0.995) -> DenoisedFn:
    """Imagen's dynamic thresholding of x̂0: per sample s = max(quantile_p(|x̂0|), 1), x̂0 ← clamp(x̂0, ±s)/s.

    Saturated pixels are pushed inwards instead of being clipped flat, which keeps high guidance scales
    from producing over-saturated images; with every pixel inside [-1, 1] it does nothing.
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile}")

    def threshold(x0: Tensor) -> Tensor:
        s = torch.quantile(x0.abs().flatten(1).float(), percentile, dim=1).clamp(min=1.0).to(x0.dtype)
        s = s.view(-1, *([1] * (x0.ndim - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s

    return threshold


def normal_kl(mean1: Tensor, logvar1: Coef, mean2: Tensor, logvar2: Coef) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + _exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * _exp(-logvar2))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Coef) -> Tensor:
    """log P(x) of 8-bit data in [-1, 1] under N(mean, e^{2·log_scale}) integrated over each pixel's bin.

    Bins have width 2/255; the outermost bins extend to ±∞ (Ho et al. 2020, eq. 13). Uses log Φ directly
    (``log_ndtr``) so the tails stay finite instead of underflowing to log 0.
    """
    centered = x - mean
    inv_std = _exp(-log_scale)
    upper = inv_std * (centered + 1.0 / 255.0)
    lower = inv_std * (centered - 1.0 / 255.0)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_one_minus_cdf_lower = torch.special.log_ndtr(-lower)
    bin_mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_one_minus_cdf_lower, torch.log(bin_mass)))


class GaussianDiffusion:
    """A T-step Gaussian diffusion with a given prediction target and reverse-variance parameterisation.

    prediction — what the model outputs (its first C channels):
      ``eps``: ε;  ``x0``: x_0 (the DALL·E 2 prior);  ``v``: v = √ᾱ_t ε - √(1-ᾱ_t) x_0 (Salimans & Ho 2022).
    variance — Σ of the reverse step t → s, with β = 1 - ᾱ_t/ᾱ_s and β̃ = β (1-ᾱ_s)/(1-ᾱ_t):
      ``fixed_small``: β̃ (the true posterior's variance);  ``fixed_large``: β;
      ``learned_range``: the model outputs 2C channels, the last C a value v ∈ [-1, 1] and
      log Σ = (v+1)/2 · log β + (1-v)/2 · log β̃ (improved DDPM, ADM, GLIDE).
    At the final step (s = -1) β̃ = 0; its log is floored at the original schedule's β̃_1, as ADM does, so
    learned variances and the t = 0 likelihood stay finite (no noise is added at that step anyway).
    """

    def __init__(
        self,
        betas: Tensor | Sequence[float],
        prediction: Prediction = "eps",
        variance: Variance = "fixed_small",
    ) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().flatten()
        if betas.numel() < 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a non-empty sequence of values in (0, 1]")
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
        if variance not in ("fixed_small", "fixed_large", "learned_range"):
            raise ValueError(f"variance must be 'fixed_small', 'fixed_large' or 'learned_range', got {variance!r}")
        self.prediction: Prediction = prediction
        self.variance: Variance = variance
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # ᾱ with ᾱ_{-1} = 1 prepended: ᾱ_t is entry t + 1, so t = -1 (the clean image) needs no special case.
        self._abar_ext = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        self._abar_list: list[float] = self._abar_ext.tolist()
        self._abar_on: dict[torch.device, Tensor] = {}
        a0, a1 = self._abar_list[1], self._abar_list[min(2, len(self._abar_list) - 1)]
        self._log_posterior_variance_floor = math.log(
            (1 - a0) / (1 - a1) * (1 - a1 / a0) if len(betas) > 1 else float(betas[0])
        )

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    # ----------------------------------------------------------------------------------------- helpers
    def abar(self, t: Timestep, like: Tensor) -> Coef:
        """ᾱ_t (ᾱ_{-1} = 1): a Python float for an int t, else a (batch, 1, …) tensor shaped to ``like``."""
        if isinstance(t, int):
            if not -1 <= t < self.num_timesteps:
                raise IndexError(f"timestep {t} outside [-1, {self.num_timesteps - 1}]")
            return self._abar_list[t + 1]
        table = self._abar_on.get(like.device)
        if table is None:
            dtype = torch.float32 if like.device.type == "mps" else torch.float64
            table = self._abar_on[like.device] = self._abar_ext.to(like.device, dtype)
        return table[t.to(like.device).long() + 1].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    @staticmethod
    def _is_final(s: Timestep, like: Tensor) -> bool | Tensor:
        """Whether s is the clean image (s < 0), as a bool or a (batch, 1, …) bool tensor."""
        if isinstance(s, int):
            return s < 0
        return (s < 0).to(like.device).reshape(-1, *([1] * (like.ndim - 1)))

    def split_output(self, model_output: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """(prediction, variance values): ``learned_range`` outputs carry 2C channels, the others C."""
        if self.variance != "learned_range":
            return model_output, None
        c = x_t.shape[1]
        if model_output.shape[1] != 2 * c:
            raise ValueError(f"learned_range needs {2 * c} output channels, got {model_output.shape[1]}")
        return model_output[:, :c], model_output[:, c:]

    # -------------------------------------------------------------------------------- forward process
    def q_sample(self, x0: Tensor, t: Timestep, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε."""
        a = self.abar(t, x0)
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise

    def q_posterior_mean_variance(
        self, x0: Tensor, x_t: Tensor, t: Timestep, t_prev: Timestep | None = None
    ) -> tuple[Tensor, Coef, Coef]:
        """q(x_s | x_t, x_0) = N(μ̃, β̃) for s = ``t_prev`` (default t - 1); returns (μ̃, β̃, clipped log β̃).

        With β = 1 - ᾱ_t/ᾱ_s:  μ̃ = √ᾱ_s β/(1-ᾱ_t) · x_0 + √(ᾱ_t/ᾱ_s) (1-ᾱ_s)/(1-ᾱ_t) · x_t,
        β̃ = β (1-ᾱ_s)/(1-ᾱ_t).
        """
        s = t - 1 if t_prev is None else t_prev
        a_t, a_s = self.abar(t, x_t), self.abar(s, x_t)
        beta = 1 - a_t / a_s
        mean = (a_s**0.5 * beta / (1 - a_t)) * x0 + ((a_t / a_s) ** 0.5 * (1 - a_s) / (1 - a_t)) * x_t
        var = beta * (1 - a_s) / (1 - a_t)
        final = self._is_final(s, x_t)
        if isinstance(final, bool):
            log_var = self._log_posterior_variance_floor if final else _log(var)
        else:
            floor = math.exp(self._log_posterior_variance_floor)
            log_var = torch.log(torch.where(final, torch.full_like(var * 1.0, floor), var))
        return mean, var, log_var

    # ---------------------------------------------------------------------------- prediction algebra
    def _x0_eps(self, pred: Tensor, x_t: Tensor, a: Coef) -> tuple[Tensor, Tensor]:
        """(x̂0, ε̂) from the model's prediction at noise level ᾱ = a (they satisfy x_t = √a x̂0 + √(1-a) ε̂)."""
        if self.prediction == "eps":
            return (x_t - (1 - a) ** 0.5 * pred) / a**0.5, pred
        if self.prediction == "x0":
            return pred, (x_t - a**0.5 * pred) / (1 - a) ** 0.5
        return a**0.5 * x_t - (1 - a) ** 0.5 * pred, (1 - a) ** 0.5 * x_t + a**0.5 * pred

    def predict_x0(self, model_output: Tensor, x_t: Tensor, t: Timestep) -> Tensor:
        """x̂0: eps → (x_t - √(1-ᾱ) ε̂)/√ᾱ;  x0 → itself;  v → √ᾱ x_t - √(1-ᾱ) v̂."""
        pred, _ = self.split_output(model_output, x_t)
        return self._x0_eps(pred, x_t, self.abar(t, x_t))[0]

    def predict_eps(self, model_output: Tensor, x_t: Tensor, t: Timestep) -> Tensor:
        """ε̂: eps → itself;  x0 → (x_t - √ᾱ x̂0)/√(1-ᾱ);  v → √(1-ᾱ) x_t + √ᾱ v̂."""
        pred, _ = self.split_output(model_output, x_t)
        return self._x0_eps(pred, x_t, self.abar(t, x_t))[1]

    def eps_from_x0(self, x0: Tensor, x_t: Tensor, t: Timestep) -> Tensor:
        """The ε consistent with x_t and a (processed) x̂0: (x_t - √ᾱ_t x̂0)/√(1-ᾱ_t)."""
        a = self.abar(t, x_t)
        return (x_t - a**0.5 * x0) / (1 - a) ** 0.5

    def x0_from_eps(self, eps: Tensor, x_t: Tensor, t: Timestep) -> Tensor:
        """The x0 consistent with x_t and a (guided) ε̂: (x_t - √(1-ᾱ_t) ε̂)/√ᾱ_t."""
        a = self.abar(t, x_t)
        return (x_t - (1 - a) ** 0.5 * eps) / a**0.5

    @staticmethod
    def process_x0(x0: Tensor, clip_denoised: bool = False, denoised_fn: DenoisedFn | None = None) -> Tensor:
        """Post-process x̂0: ``denoised_fn`` first (e.g. pasting known pixels, dynamic thresholding), then
        static clipping to [-1, 1] — ADM's order."""
        if denoised_fn is not None:
            x0 = denoised_fn(x0)
        return x0.clamp(-1.0, 1.0) if clip_denoised else x0

    def denoise(
        self,
        model_output: Tensor,
        x_t: Tensor,
        t: Timestep,
        clip_denoised: bool = False,
        denoised_fn: DenoisedFn | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(x̂0, ε̂), x̂0 post-processed by :meth:`process_x0`.

        When x̂0 is changed, ε̂ is recomputed from it so that the pair still reproduces x_t; a step built
        from them then moves towards the processed x̂0 (ADM and diffusers do the same for DDIM).
        """
        pred, _ = self.split_output(model_output, x_t)
        a = self.abar(t, x_t)
        x0, eps = self._x0_eps(pred, x_t, a)
        if denoised_fn is None and not clip_denoised:
            return x0, eps
        x0 = self.process_x0(x0, clip_denoised, denoised_fn)
        return x0, (x_t - a**0.5 * x0) / (1 - a) ** 0.5

    # ----------------------------------------------------------------------------------- reverse steps
    def p_mean_variance(
        self,
        model_output: Tensor,
        x_t: Tensor,
        t: Timestep,
        t_prev: Timestep | None = None,
        clip_denoised: bool = False,
        denoised_fn: DenoisedFn | None = None,
    ) -> PMeanVariance:
        """The model's Gaussian for the step t → s = ``t_prev`` (default t - 1).

        mean = μ̃(x̂0, x_t) (the posterior mean with x̂0 plugged in); variance per ``self.variance``.
        """
        s = t - 1 if t_prev is None else t_prev
        x0, eps = self.denoise(model_output, x_t, t, clip_denoised, denoised_fn)
        mean, post_var, post_log_var = self.q_posterior_mean_variance(x0, x_t, t, s)
        if self.variance == "fixed_small":
            return PMeanVariance(mean, post_var, post_log_var, x0, eps)
        beta = 1 - self.abar(t, x_t) / self.abar(s, x_t)
        if self.variance == "fixed_large":
            return PMeanVariance(mean, beta, _log(beta), x0, eps)
        _, v = self.split_output(model_output, x_t)
        frac = (v + 1) / 2
        log_var = frac * _log(beta) + (1 - frac) * post_log_var
        return PMeanVariance(mean, torch.exp(log_var), log_var, x0, eps)

    def ddpm_step(
        self,
        model_output: Tensor,
        x_t: Tensor,
        t: Timestep,
        t_prev: Timestep,
        noise: Tensor,
        *,
        clip_denoised: bool = False,
        denoised_fn: DenoisedFn | None = None,
    ) -> Tensor:
        """Ancestral step x_s = mean + √Σ · z (z = ``noise``; no noise at the final step s = -1)."""
        p = self.p_mean_variance(model_output, x_t, t, t_prev, clip_denoised, denoised_fn)
        final = self._is_final(t_prev, x_t)
        if isinstance(final, bool):
            return p.mean if final else p.mean + _exp(0.5 * p.log_variance) * noise
        return p.mean + (~final).to(x_t.dtype) * _exp(0.5 * p.log_variance) * noise

    def ddim_step(
        self,
        model_output: Tensor,
        x_t: Tensor,
        t: Timestep,
        t_prev: Timestep,
        eta: float = 0.0,
        noise: Tensor | None = None,
        *,
        clip_denoised: bool = False,
        denoised_fn: DenoisedFn | None = None,
    ) -> Tensor:
        """DDIM (Song et al. 2021, eq. 12):  x_s = √ᾱ_s x̂0 + √(1-ᾱ_s-σ²) ε̂ + σ z,
        σ = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_s).  η = 0 is deterministic; η = 1 has DDPM's fixed_small variance.
        """
        x0, eps = self.denoise(model_output, x_t, t, clip_denoised, denoised_fn)
        return ddim_update(x0, eps, self.abar(t, x_t), self.abar(t_prev, x_t), eta, noise)

    def ddim_invert_step(self, model_output: Tensor, x_t: Tensor, t: Timestep, t_next: Timestep) -> Tensor:
        """Deterministic DDIM run forwards (t → t_next > t): x_next = √ᾱ_next x̂0 + √(1-ᾱ_next) ε̂.

        t = -1 (the clean image, ᾱ = 1) is allowed for ε-prediction: then x̂0 = x_t and ε̂ is the output.
        """
        x0, eps = self.denoise(model_output, x_t, t)
        a_next = self.abar(t_next, x_t)
        return a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps

    # ------------------------------------------------------------------------------------------ losses
    def vlb_terms(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Per-sample variational-bound term L_t in bits/dim.

        KL(q(x_{t-1}|x_t,x_0) ‖ p(x_{t-1}|x_t)) for t > 0; the discretized-Gaussian decoder NLL
        -log p(x_0|x_1) at t = 0.
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        p = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p.mean, p.log_variance)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Timestep, noise: Tensor, min_snr_gamma: float = 0.0
    ) -> Tensor:
        """Per-sample loss, shape (batch,).

        MSE (mean over dimensions) between the prediction and its target (ε, x_0, or v = √ᾱ ε - √(1-ᾱ) x_0).
        With ``learned_range`` add the improved-DDPM hybrid term λ·L_vlb with λ = 0.001: L_vlb ≈ T·E_t[L_t],
        so each sample adds L_t · T/1000 (ADM), where L_t is computed with the mean's input detached
        (stop-gradient) so the VLB trains only the variance and the MSE alone trains the mean.
        ``min_snr_gamma`` > 0 weights the MSE by Min-SNR-γ (Hang et al. 2023), min(SNR, γ)/SNR for ε
        (min(SNR, γ) for x_0): the nearly clean timesteps stop dominating the gradient, which speeds up
        convergence several-fold. For v the weight is (min(SNR, γ) + 1)/(SNR + 1), i.e. x_0 error weighted
        by min(SNR, γ) + 1: the paper's min(SNR, γ)/(SNR + 1) goes to 0 as SNR → 0 and would leave the
        nearly pure-noise steps untrained, yet the sampler's first x̂0 comes from exactly those.
        """
        if isinstance(t, int):
            t = torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.long)
        pred, v = self.split_output(model_output, x_t)
        a = self.abar(t, x0)
        target = {"eps": noise, "x0": x0, "v": a**0.5 * noise - (1 - a) ** 0.5 * x0}[self.prediction]
        loss = mean_flat((target - pred) ** 2)
        if min_snr_gamma > 0:
            snr = (a / (1 - a)).flatten()
            clipped = snr.clamp(max=min_snr_gamma)
            weight = {"eps": clipped / snr, "x0": clipped, "v": (clipped + 1) / (snr + 1)}[self.prediction]
            loss = loss * weight.to(loss.dtype)
        if v is not None:
            frozen = torch.cat([pred.detach(), v], dim=1)
            loss = loss + self.vlb_terms(frozen, x0, x_t, t) * (self.num_timesteps / 1000.0)
        return loss


def ddim_update(x0: Tensor, eps: Tensor, a_t: Coef, a_s: Coef, eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
    """x_s = √ᾱ_s x̂0 + √(1-ᾱ_s-σ²) ε̂ + σ z with σ² = η² (1-ᾱ_s)/(1-ᾱ_t) (1-ᾱ_t/ᾱ_s).

    The direction coefficient is written as (1-ᾱ_s)(1 - η²(1-ᾱ_t/ᾱ_s)/(1-ᾱ_t)), a product of two
    non-negative factors for 0 ≤ η ≤ 1, so rounding can never make it negative.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if eta == 0.0:
        return a_s**0.5 * x0 + (1 - a_s) ** 0.5 * eps
    if noise is None:
        raise ValueError("a stochastic DDIM step (eta > 0) needs noise")
    ratio = (1 - a_t / a_s) / (1 - a_t)
    sigma = eta * ((1 - a_s) * ratio) ** 0.5
    return a_s**0.5 * x0 + ((1 - a_s) * (1 - eta**2 * ratio)) ** 0.5 * eps + sigma * noise
