"""Sampling loops against exact oracles (Gaussian and Gaussian-mixture data, closed-form denoisers)."""

from __future__ import annotations

import pytest
import torch

from nodegraph.diffusion import (
    GaussianDiffusion,
    GaussianMixtureOracle,
    SamplingInterrupted,
    make_betas,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    space_timesteps,
    timestep_sequence,
)

MU, SD = torch.tensor([[0.5, -0.3]]), torch.tensor([[0.3, 0.6]])
GAUSS = GaussianMixtureOracle(MU, SD)
MIX = GaussianMixtureOracle(torch.tensor([[-0.6, -0.6], [0.6, 0.6]]), [0.15, 0.15], [0.3, 0.7])


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def exact_flow(diffusion: GaussianDiffusion, x_T: torch.Tensor, t_start: int) -> torch.Tensor:
    """The exact probability-flow ODE map for Gaussian data: in 1-D the flow is the monotone transport between
    the Gaussians N(√ᾱ μ, ᾱσ² + 1 - ᾱ) and N(μ, σ²), i.e. it preserves the standardised value."""
    a = diffusion.alphas_cumprod[t_start].item()
    return MU + SD * (x_T - a**0.5 * MU) / (a * SD**2 + 1 - a) ** 0.5


def _check_moments(x: torch.Tensor, oracle: GaussianMixtureOracle, mean_tol: float, std_rel: float) -> None:
    torch.testing.assert_close(x.mean(0), oracle.mean(), atol=mean_tol, rtol=0)
    torch.testing.assert_close(x.std(0), oracle.var().sqrt(), rtol=std_rel, atol=0)


def _weight_of_second(x: torch.Tensor) -> float:
    return (x.sum(1) > 0).double().mean().item()


# ------------------------------------------------------------------------------------ distributions
@pytest.mark.parametrize("prediction", ["eps", pytest.param("v", marks=pytest.mark.slow)])
def test_ddpm_full_chain_reproduces_gaussian_moments(prediction):
    d = GaussianDiffusion(make_betas("cosine", 1000), prediction=prediction)
    g = torch.Generator().manual_seed(1)
    x = sample_ddpm(d, GAUSS.model_fn(d), _noise(3000), timestep_sequence(1000), generator=g)
    _check_moments(x, GAUSS, mean_tol=0.03, std_rel=0.04)


@pytest.mark.slow
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_full_chain_reproduces_mixture_weights(variance):
    d = GaussianDiffusion(make_betas("linear", 1000), variance=variance)
    g = torch.Generator().manual_seed(2)
    x = sample_ddpm(d, MIX.model_fn(d), _noise(4000, 2), timestep_sequence(1000), generator=g)
    assert _weight_of_second(x) == pytest.approx(0.7, abs=0.025)
    _check_moments(x, MIX, mean_tol=0.04, std_rel=0.04)


@pytest.mark.parametrize("sampler,steps", [("ddim", 100), ("dpmpp_2m", 20), ("ddpm", 250)])
def test_samplers_reproduce_mixture_weights_and_moments(sampler, steps):
    d = GaussianDiffusion(make_betas("cosine", 1000), prediction="x0")
    g = torch.Generator().manual_seed(3)
    x = sample(d, MIX.model_fn(d), _noise(3000, 3), sampler=sampler, steps=steps, generator=g)
    assert _weight_of_second(x) == pytest.approx(0.7, abs=0.03)
    _check_moments(x, MIX, mean_tol=0.04, std_rel=0.05)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_deterministic_samplers_converge_to_the_exact_flow_at_their_order(prediction, schedule):
    """DDIM is first order (error halves when the steps double), DPM-Solver++(2M) second order (quarters)."""
    d = GaussianDiffusion(make_betas(schedule, 1000), prediction=prediction)
    x_T = _noise(500, 4)
    exact = exact_flow(d, x_T, 999)
    rms = {}
    for name, fn in [("ddim", sample_ddim), ("dpm", sample_dpmpp_2m)]:
        for n in (25, 50, 100):
            x = fn(d, GAUSS.model_fn(d), x_T, timestep_sequence(1000, n))
            rms[name, n] = (x - exact).pow(2).mean().sqrt().item()
    assert rms["ddim", 100] < 0.02 and rms["dpm", 25] < rms["ddim", 50] and rms["dpm", 50] < rms["ddim", 100]
    assert 1.7 < rms["ddim", 50] / rms["ddim", 100] < 2.3
    assert rms["dpm", 25] / rms["dpm", 50] > 3.0 and rms["dpm", 50] / rms["dpm", 100] > 3.0


def test_ddim_eta_one_step_is_the_ddpm_posterior_step():
    d = GaussianDiffusion(make_betas("linear", 1000))
    g = torch.Generator().manual_seed(5)
    x, out, z = (torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64) for _ in range(3))
    for t, s in [(999, 979), (500, 499), (40, 0)]:
        torch.testing.assert_close(d.ddim_step(out, x, t, s, eta=1.0, noise=z), d.ddpm_step(out, x, t, s, z))


# ----------------------------------------------------------------------------------------- respacing
def test_respacing_to_full_length_is_the_unrespaced_chain():
    d = GaussianDiffusion(make_betas("linear", 200))
    assert space_timesteps(200, "200") == timestep_sequence(200)
    f = GAUSS.model_fn(d)
    a = sample(d, f, _noise(50), sampler="ddpm", respacing="200", generator=torch.Generator().manual_seed(0))
    b = sample(d, f, _noise(50), sampler="ddpm", steps=None, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_respaced_ddpm_equals_a_respaced_diffusion_built_the_adm_way(variance):
    """ADM respaces by building a new diffusion whose betas are 1 - ᾱ_{t_i}/ᾱ_{t_{i-1}} and mapping the model's
    timesteps; our steps compute the same from (t, t_prev) of the original schedule."""
    base = GaussianDiffusion(make_betas("cosine", 1000), variance=variance)
    ts = space_timesteps(1000, "10,10,3,2,2")
    asc = ts[::-1]
    abar = [base.alphas_cumprod[t].item() for t in asc]
    new_betas = [1 - abar[0]] + [1 - abar[i] / abar[i - 1] for i in range(1, len(asc))]
    respaced = GaussianDiffusion(new_betas, variance=variance)
    to_original = torch.tensor(asc)
    model = base_model = GAUSS.model_fn(base, variance_value=0.3)

    def respaced_model(x, t):
        return base_model(x, to_original[t])

    x_T = _noise(200, 6)
    ours = sample_ddpm(base, model, x_T, ts, generator=torch.Generator().manual_seed(9))
    theirs = sample_ddpm(
        respaced, respaced_model, x_T, list(range(len(ts) - 1, -1, -1)), generator=torch.Generator().manual_seed(9)
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------- loop behaviour
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_callback_sees_every_step_and_can_interrupt(sampler):
    d = GaussianDiffusion(make_betas("linear", 1000))
    seen = []

    def callback(step, total, x, x0):
        seen.append((step, total, x.shape, x0.shape))

    sample(d, GAUSS.model_fn(d), _noise(8), sampler=sampler, steps=12, callback=callback, generator=torch.Generator())
    assert [s[:2] for s in seen] == [(i, 12) for i in range(1, 13)]
    assert all(s[2] == s[3] == (8, 2) for s in seen)
    with pytest.raises(SamplingInterrupted) as info:
        sample(d, GAUSS.model_fn(d), _noise(8), sampler=sampler, steps=12, callback=lambda s, *_: s == 4)
    assert info.value.step == 4 and info.value.x.shape == (8, 2)

    def boom(step, *_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample(d, GAUSS.model_fn(d), _noise(8), sampler=sampler, steps=12, callback=boom)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_batched_deterministic_sampling_equals_per_sample_sampling(sampler):
    d = GaussianDiffusion(make_betas("cosine", 1000), prediction="v")
    x_T = _noise(5, 7)
    batch = sample(d, MIX.model_fn(d), x_T, sampler=sampler, steps=15)
    singles = torch.cat([sample(d, MIX.model_fn(d), x_T[i : i + 1], sampler=sampler, steps=15) for i in range(5)])
    torch.testing.assert_close(batch, singles)


def test_model_is_called_with_original_timesteps_as_a_batch():
    d = GaussianDiffusion(make_betas("linear", 1000))
    calls = []

    def model_fn(x, t):
        calls.append(t.clone())
        return torch.zeros_like(x)

    ts = space_timesteps(1000, "10,10,3,2,2")
    sample_ddim(d, model_fn, _noise(3), ts)
    assert [c.tolist() for c in calls] == [[t] * 3 for t in ts]
    assert all(c.dtype == torch.long for c in calls)


def test_same_seed_same_samples_and_generator_drives_all_noise():
    d = GaussianDiffusion(make_betas("linear", 1000))
    run = lambda seed, sampler, eta=0.0: sample(
        d,
        GAUSS.model_fn(d),
        _noise(16),
        sampler=sampler,
        steps=20,
        eta=eta,
        generator=torch.Generator().manual_seed(seed),
    )
    assert torch.equal(run(1, "ddpm"), run(1, "ddpm"))
    assert not torch.equal(run(1, "ddpm"), run(2, "ddpm"))
    assert torch.equal(run(1, "ddim", 0.5), run(1, "ddim", 0.5))
    assert not torch.equal(run(1, "ddim", 0.5), run(2, "ddim", 0.5))
    assert torch.equal(run(1, "ddim"), run(2, "ddim"))  # eta = 0 draws nothing


def test_sample_rejects_bad_sequences_and_names():
    d = GaussianDiffusion(make_betas("linear", 100))
    f = GAUSS.model_fn(d)
    for bad in ([], [5, 5, 1], [1, 5], [100, 50], [10, -1]):
        with pytest.raises(ValueError):
            sample(d, f, _noise(2), timesteps=bad)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(d, f, _noise(2), sampler="euler")


def test_clipping_and_dynamic_thresholding_bound_every_x0():
    d = GaussianDiffusion(make_betas("linear", 1000))
    wide = GaussianMixtureOracle(torch.tensor([[0.0, 0.0]]), [3.0])
    seen = []
    callback = lambda step, total, x, x0: seen.append(x0.abs().max().item())
    for kwargs in ({"clip_denoised": True}, {"dynamic_threshold_percentile": 0.9}):
        seen.clear()
        x = sample(d, wide.model_fn(d), _noise(64), sampler="ddim", steps=10, callback=callback, **kwargs)
        assert max(seen) <= 1 + 1e-9 and x.abs().max() <= 1 + 1e-9
