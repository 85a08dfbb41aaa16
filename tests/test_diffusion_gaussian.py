"""GaussianDiffusion: schedules, forward process, prediction algebra, posterior, variances, losses."""

from __future__ import annotations

import math

import pytest
import torch

from nodegraph.diffusion import (
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    dynamic_threshold,
    make_betas,
    normal_kl,
)

PREDICTIONS = ["eps", "x0", "v"]


def _data(batch: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((batch, 3, 4, 4), generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn((batch, 3, 4, 4), generator=g, dtype=torch.float64)
    return x0, noise


def _target(diffusion: GaussianDiffusion, x0, noise, t) -> torch.Tensor:
    a = diffusion.abar(t, x0)
    return {"eps": noise, "x0": x0, "v": a**0.5 * noise - (1 - a) ** 0.5 * x0}[diffusion.prediction]


# ------------------------------------------------------------------------------------------ schedules
def test_linear_betas_scale_with_T():
    b = make_betas("linear", 1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    b = make_betas("linear", 250)
    assert b[0].item() == pytest.approx(4e-4) and b[-1].item() == pytest.approx(0.08)


def test_cosine_betas_follow_the_squared_cosine_and_cap():
    T, s = 1000, 0.008
    b = make_betas("cosine", T)
    abar = torch.cumprod(1 - b, 0)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    for t in (0, 10, 500, 900):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert b.max().item() == pytest.approx(0.999)
    assert (b > 0).all() and (b[1:] >= b[:-1]).all()


def test_cosine_betas_match_diffusers_squaredcos_cap_v2():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(make_betas("cosine", 1000).float(), sched.betas, rtol=1e-5, atol=1e-7)


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError):
        GaussianDiffusion(make_betas("linear", 10), prediction="score")
    with pytest.raises(ValueError):
        GaussianDiffusion(make_betas("linear", 10), variance="learned")
    with pytest.raises(ValueError):
        GaussianDiffusion([0.1, 1.5])
    with pytest.raises(ValueError):
        make_betas("quadratic", 10)


# ------------------------------------------------------------------------------- forward + predictions
def test_q_sample_int_and_tensor_timesteps_agree():
    d = GaussianDiffusion(make_betas("linear", 1000))
    x0, noise = _data()
    a = d.alphas_cumprod[500].item()
    expected = a**0.5 * x0 + (1 - a) ** 0.5 * noise
    torch.testing.assert_close(d.q_sample(x0, 500, noise), expected)
    torch.testing.assert_close(d.q_sample(x0, torch.full((4,), 500), noise), expected)
    t = torch.tensor([0, 10, 500, 999])
    per_sample = torch.stack([d.q_sample(x0[i : i + 1], int(t[i]), noise[i : i + 1])[0] for i in range(4)])
    torch.testing.assert_close(d.q_sample(x0, t, noise), per_sample)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_predictions_invert_the_forward_process(prediction, schedule):
    d = GaussianDiffusion(make_betas(schedule, 1000), prediction=prediction)
    x0, noise = _data()
    t = torch.tensor([0, 250, 700, 999])
    x_t = d.q_sample(x0, t, noise)
    out = _target(d, x0, noise, t)
    torch.testing.assert_close(d.predict_x0(out, x_t, t), x0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(d.predict_eps(out, x_t, t), noise, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(d.eps_from_x0(x0, x_t, t), noise, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(d.x0_from_eps(noise, x_t, t), x0, rtol=1e-7, atol=1e-7)


def test_clipping_and_dynamic_thresholding_keep_x0_eps_consistent():
    d = GaussianDiffusion(make_betas("linear", 1000))
    x0, noise = _data()
    x_t = d.q_sample(3 * x0, 300, noise)  # x0 outside [-1, 1]
    for kwargs in ({"clip_denoised": True}, {"denoised_fn": dynamic_threshold(0.9)}):
        x0_hat, eps_hat = d.denoise(noise, x_t, 300, **kwargs)
        assert x0_hat.abs().max() <= 1 + 1e-12
        torch.testing.assert_close(d.q_sample(x0_hat, 300, eps_hat), x_t)


def test_dynamic_threshold_is_identity_inside_the_range_and_rescales_outside():
    thr = dynamic_threshold(0.995)
    x = torch.rand(2, 3, 8, 8) * 1.8 - 0.9
    torch.testing.assert_close(thr(x), x)
    y = torch.stack([x[0], 4 * x[1]])
    out = thr(y)
    torch.testing.assert_close(out[0], x[0])
    s = torch.quantile(y[1].abs().flatten(), 0.995)
    torch.testing.assert_close(out[1], y[1].clamp(-s, s) / s)


# ------------------------------------------------------------------------------------------ posterior
def _posterior_by_conditioning(a_t: float, a_s: float, x0, x_t):
    """q(x_s | x_t, x_0) by Gaussian conditioning of (x_s, x_t) given x_0, written independently."""
    cov = (a_t / a_s) ** 0.5 * (1 - a_s)
    mean = a_s**0.5 * x0 + cov / (1 - a_t) * (x_t - a_t**0.5 * x0)
    return mean, (1 - a_s) - cov**2 / (1 - a_t)


@pytest.mark.parametrize("t,s", [(1, 0), (500, 499), (999, 998), (600, 400), (20, -1)])
def test_q_posterior_matches_gaussian_conditioning(t, s):
    d = GaussianDiffusion(make_betas("cosine", 1000))
    x0, noise = _data()
    x_t = d.q_sample(x0, t, noise)
    mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, t, s)
    a_s = 1.0 if s < 0 else d.alphas_cumprod[s].item()
    ref_mean, ref_var = _posterior_by_conditioning(d.alphas_cumprod[t].item(), a_s, x0, x_t)
    torch.testing.assert_close(mean, ref_mean)
    assert var == pytest.approx(ref_var, abs=1e-15)
    if s >= 0:
        assert log_var == pytest.approx(math.log(ref_var))
    # batched timesteps give the same numbers per sample
    tb, sb = torch.full((4,), t), torch.full((4,), s)
    mean_b, var_b, log_var_b = d.q_posterior_mean_variance(x0, x_t, tb, sb)
    torch.testing.assert_close(mean_b, mean)
    torch.testing.assert_close(log_var_b.flatten(), torch.full((4,), float(log_var), dtype=torch.float64))


def test_q_posterior_default_is_previous_step_and_clipped_log_variance_at_t0():
    d = GaussianDiffusion(make_betas("linear", 1000))
    x0, noise = _data()
    b, abar = d.betas, d.alphas_cumprod
    x_t = d.q_sample(x0, 0, noise)
    mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, 0)
    torch.testing.assert_close(mean, x0)  # ᾱ_{-1} = 1: the posterior at t = 0 is a point mass on x_0
    assert var == 0.0
    beta_tilde_1 = b[1].item() * (1 - abar[0].item()) / (1 - abar[1].item())
    assert log_var == pytest.approx(math.log(beta_tilde_1))


@pytest.mark.parametrize("t,s", [(700, 699), (700, 300), (5, -1)])
def test_variance_types(t, s):
    betas = make_betas("linear", 1000)
    x0, noise = _data()
    out = torch.cat([noise, torch.zeros_like(noise)], 1)
    small = GaussianDiffusion(betas, variance="fixed_small")
    large = GaussianDiffusion(betas, variance="fixed_large")
    learned = GaussianDiffusion(betas, variance="learned_range")
    x_t = small.q_sample(x0, t, noise)
    p_small = small.p_mean_variance(noise, x_t, t, s)
    p_large = large.p_mean_variance(noise, x_t, t, s)
    a_t = small.alphas_cumprod[t].item()
    a_s = 1.0 if s < 0 else small.alphas_cumprod[s].item()
    assert p_large.variance == pytest.approx(1 - a_t / a_s)
    if s >= 0:
        assert p_small.variance == pytest.approx((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
    for v, expected in [(-1.0, p_small.log_variance), (1.0, p_large.log_variance)]:
        p = learned.p_mean_variance(torch.cat([noise, torch.full_like(noise, v)], 1), x_t, t, s)
        torch.testing.assert_close(p.log_variance, torch.full_like(noise, expected))
        torch.testing.assert_close(p.mean, p_small.mean)
    p_mid = learned.p_mean_variance(out, x_t, t, s)
    torch.testing.assert_close(
        p_mid.log_variance, torch.full_like(noise, (p_small.log_variance + p_large.log_variance) / 2)
    )
    with pytest.raises(ValueError, match="6 output channels"):
        learned.p_mean_variance(noise, x_t, t, s)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_p_mean_with_perfect_prediction_is_the_true_posterior_mean(prediction):
    d = GaussianDiffusion(make_betas("linear", 1000), prediction=prediction)
    x0, noise = _data()
    t = torch.tensor([1, 50, 400, 999])
    x_t = d.q_sample(x0, t, noise)
    p = d.p_mean_variance(_target(d, x0, noise, t), x_t, t)
    mean, _, _ = d.q_posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(p.mean, mean)
    torch.testing.assert_close(p.pred_x0, x0)


# ---------------------------------------------------------------------------------------------- losses
def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    m1, m2, lv1, lv2 = (torch.randn(10, generator=g, dtype=torch.float64) for _ in range(4))
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)


def test_discretized_gaussian_likelihood_sums_to_one_over_the_256_bins():
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in [(0.3, math.log(0.05)), (-0.99, math.log(0.2)), (0.0, math.log(1e-3))]:
        logp = discretized_gaussian_log_likelihood(bins, torch.full_like(bins, mean), log_scale)
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_training_loss_is_the_mse_to_the_target(prediction):
    d = GaussianDiffusion(make_betas("cosine", 1000), prediction=prediction)
    x0, noise = _data()
    t = torch.tensor([0, 3, 500, 999])
    x_t = d.q_sample(x0, t, noise)
    target = _target(d, x0, noise, t)
    assert d.training_losses(target, x0, x_t, t, noise).abs().max() < 1e-20
    off = target + 0.1
    torch.testing.assert_close(d.training_losses(off, x0, x_t, t, noise), torch.full((4,), 0.01, dtype=torch.float64))


def test_hybrid_loss_adds_the_vlb_in_bits_scaled_by_T_over_1000():
    T = 2000
    d = GaussianDiffusion(make_betas("linear", T), variance="learned_range")
    x0, noise = _data()
    x0 = (x0 * 127.5).round() / 127.5  # on the 8-bit grid, as the decoder likelihood assumes
    t = torch.tensor([0, 1, 700, 1999])
    x_t = d.q_sample(x0, t, noise)
    g = torch.Generator().manual_seed(3)
    v = torch.rand(x0.shape, generator=g, dtype=torch.float64) * 2 - 1
    eps_err = 0.05 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    out = torch.cat([noise + eps_err, v], 1)
    loss = d.training_losses(out, x0, x_t, t, noise)
    mse = (eps_err**2).flatten(1).mean(1)
    # L_t by hand: KL to the true posterior for t > 0, the decoder NLL at t = 0, both in bits/dim
    p = d.p_mean_variance(out, x_t, t)
    true_mean, _, true_log_var = d.q_posterior_mean_variance(x0, x_t, t)
    kl = normal_kl(true_mean, true_log_var, p.mean, p.log_variance).flatten(1).mean(1) / math.log(2)
    nll = -discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * p.log_variance).flatten(1).mean(1) / math.log(2)
    vb = torch.where(t == 0, nll, kl)
    assert (vb > 0).all()
    torch.testing.assert_close(loss, mse + vb * T / 1000)


def test_hybrid_loss_trains_the_mean_only_through_the_mse():
    d = GaussianDiffusion(make_betas("linear", 1000), variance="learned_range")
    x0, noise = _data()
    t = torch.tensor([0, 10, 200, 900])
    x_t = d.q_sample(x0, t, noise)
    pred = (noise + 0.1).requires_grad_()
    v = torch.zeros_like(noise).requires_grad_()
    d.training_losses(torch.cat([pred, v], 1), x0, x_t, t, noise).sum().backward()
    n = noise[0].numel()
    torch.testing.assert_close(pred.grad, torch.full_like(noise, 2 * 0.1 / n))
    assert v.grad.abs().sum() > 0


def test_perfect_learned_model_has_zero_kl_terms():
    d = GaussianDiffusion(make_betas("linear", 1000), variance="learned_range")
    x0, noise = _data()
    t = torch.tensor([1, 10, 200, 900])
    x_t = d.q_sample(x0, t, noise)
    out = torch.cat([noise, -torch.ones_like(noise)], 1)  # exact ε, variance β̃
    assert d.training_losses(out, x0, x_t, t, noise).abs().max() < 1e-12


def test_min_snr_weighting_scales_only_high_snr_timesteps():
    """Min-SNR-γ: below SNR γ the ε loss is untouched; above it is scaled by γ/SNR."""
    d = GaussianDiffusion(make_betas("cosine", 1000), "eps", "fixed_small")
    x0 = torch.randn(2, 3, 4, 4)
    noise = torch.randn(2, 3, 4, 4)
    t = torch.tensor([10, 900])  # SNR far above 5, and far below
    x_t = d.q_sample(x0, t, noise)
    out = torch.randn(2, 3, 4, 4)
    plain = d.training_losses(out, x0, x_t, t, noise)
    weighted = d.training_losses(out, x0, x_t, t, noise, min_snr_gamma=5.0)
    a = d.abar(t, x0).flatten()
    snr = a / (1 - a)
    torch.testing.assert_close(weighted[0], plain[0] * 5.0 / snr[0].float())
    torch.testing.assert_close(weighted[1], plain[1])


def test_min_snr_weighting_for_v_keeps_pure_noise_steps_trained():
    """For v the x0-space weight is min(SNR, γ) + 1: ~1 near pure noise (where plain Min-SNR gives ~0)."""
    d = GaussianDiffusion(make_betas("cosine", 1000), "v", "fixed_small")
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([10, 999])
    x_t = d.q_sample(x0, t, noise)
    out = torch.randn(2, 3, 4, 4)
    plain = d.training_losses(out, x0, x_t, t, noise)
    weighted = d.training_losses(out, x0, x_t, t, noise, min_snr_gamma=5.0)
    snr = (d.abar(t, x0) / (1 - d.abar(t, x0))).flatten().float()
    torch.testing.assert_close(weighted[0], plain[0] * 6.0 / (snr[0] + 1))
    assert weighted[1] > 0.99 * plain[1]
