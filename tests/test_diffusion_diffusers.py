"""Single steps agree with an independent implementation: diffusers' DDIM, DDIMInverse and DDPM schedulers.

Both sides get the identical ᾱ table (ours is built from diffusers' ᾱ, and diffusers' table is promoted to
float64, so what is compared is the step math, not float32 rounding), identical float64 inputs and noise.
Diffusers conventions used: set_alpha_to_one=True (ᾱ_prev = 1 after the last step, our t_prev = -1),
steps_offset=0, clip_sample=False unless testing clipping; DDIM and DDIMInverse find the neighbouring
timestep as t ∓ T//n (so we pass exactly that one), DDPM takes it from its timestep list.
"""

from __future__ import annotations

import pytest
import torch

from nodegraph.diffusion import GaussianDiffusion, dynamic_threshold, make_betas, space_timesteps

diffusers = pytest.importorskip("diffusers")

T = 1000
SHAPE = (3, 2, 4, 4)
PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
TOL = dict(rtol=1e-5, atol=1e-5)


def _pair(scheduler_cls, schedule: str, prediction: str, variance: str = "fixed_small", **kwargs):
    betas = make_betas(schedule, T)
    sched = scheduler_cls(
        num_train_timesteps=T, trained_betas=betas.numpy(), prediction_type=PRED[prediction], **kwargs
    )
    # Run diffusers in float64 too: in float32 its 1 - ᾱ_t/ᾱ_{t-1} alone is off by ~1e-3 relative.
    abar = sched.alphas_cumprod = sched.alphas_cumprod.double()
    for name in ("one", "final_alpha_cumprod", "initial_alpha_cumprod"):
        if hasattr(sched, name):
            setattr(sched, name, getattr(sched, name).double())
    ours_betas = 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    ours = GaussianDiffusion(ours_betas, prediction=prediction, variance=variance)
    torch.testing.assert_close(ours.alphas_cumprod, abar, rtol=1e-12, atol=0)
    return sched, ours


def _inputs(seed: int, channels: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    out = torch.randn((SHAPE[0], channels, *SHAPE[2:]), generator=g, dtype=torch.float64)
    return x, out


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("spacing,steps", [("leading", 50), ("trailing", 30), ("linspace", 7)])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_diffusers(prediction, schedule, spacing, steps, eta):
    sched, ours = _pair(
        diffusers.DDIMScheduler, schedule, prediction, clip_sample=False, set_alpha_to_one=True,
        steps_offset=0, timestep_spacing=spacing,
    )  # fmt: skip
    sched.set_timesteps(steps)
    for k, t in enumerate(sched.timesteps.tolist()):
        x, out = _inputs(k)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + k), dtype=torch.float64)
        ref = sched.step(out, t, x, eta=eta, variance_noise=noise if eta else None).prev_sample
        t_prev = max(t - T // steps, -1)
        torch.testing.assert_close(ours.ddim_step(out, x, t, t_prev, eta=eta, noise=noise), ref, **TOL)
        tb, sb = torch.full((SHAPE[0],), t), torch.full((SHAPE[0],), t_prev)
        torch.testing.assert_close(ours.ddim_step(out, x, tb, sb, eta=eta, noise=noise), ref, **TOL)


@pytest.mark.parametrize("kind", ["clip", "dynamic"])
def test_ddim_step_with_clipping_or_dynamic_thresholding_matches_diffusers(kind):
    extra = {"clip_sample": True} if kind == "clip" else {"thresholding": True, "sample_max_value": 1e6}
    extra.setdefault("clip_sample", False)
    sched, ours = _pair(
        diffusers.DDIMScheduler, "linear", "eps", set_alpha_to_one=True, steps_offset=0,
        dynamic_thresholding_ratio=0.9, **extra,
    )  # fmt: skip
    sched.set_timesteps(20)
    kwargs = {"clip_denoised": True} if kind == "clip" else {"denoised_fn": dynamic_threshold(0.9)}
    for k, t in enumerate(sched.timesteps.tolist()):
        x, out = _inputs(k)
        ref = sched.step(out, t, x, use_clipped_model_output=True).prev_sample
        torch.testing.assert_close(ours.ddim_step(out, x, t, max(t - T // 20, -1), **kwargs), ref, **TOL)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("spacing,steps", [("leading", 50), ("trailing", 25)])
def test_ddim_invert_step_matches_diffusers_inverse_scheduler(prediction, schedule, spacing, steps):
    sched, ours = _pair(
        diffusers.DDIMInverseScheduler, schedule, prediction, clip_sample=False, set_alpha_to_one=True,
        steps_offset=0, timestep_spacing=spacing,
    )  # fmt: skip
    sched.set_timesteps(steps)
    for k, t_next in enumerate(sched.timesteps.tolist()):
        t = min(t_next - T // steps, T - 1)  # diffusers' source level; < 0 means the clean image
        if t < 0 and prediction == "x0":
            continue  # ε from an x0-prediction is undefined at ᾱ = 1 (both sides divide by zero)
        x, out = _inputs(k)
        ref = sched.step(out, t_next, x).prev_sample
        torch.testing.assert_close(ours.ddim_invert_step(out, x, max(t, -1), t_next), ref, **TOL)


SEQUENCES = {
    "unrespaced": list(range(T - 1, -1, -1)),
    "fast27": space_timesteps(T, "10,10,3,2,2"),
    "respaced100": space_timesteps(T, "100"),
}


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sequence", list(SEQUENCES))
def test_ddpm_step_matches_diffusers(variance, prediction, schedule, sequence):
    sched, ours = _pair(
        diffusers.DDPMScheduler, schedule, prediction, variance, variance_type=variance, clip_sample=False
    )
    ts = SEQUENCES[sequence]
    if sequence != "unrespaced":
        sched.set_timesteps(timesteps=ts)  # diffusers then takes t_prev from the list, as we do
    if len(ts) > 30:
        ts = ts[::9] + ts[-3:]  # a spread of the steps, always including the last ones (… → 0 → clean)
    channels = 4 if variance == "learned_range" else 2
    for k, t in enumerate(ts):
        t_prev = int(sched.previous_timestep(t))
        x, out = _inputs(k, channels)
        if variance == "learned_range":
            out[:, 2:] = out[:, 2:].tanh()  # v in [-1, 1]
        ref = sched.step(out, t, x, generator=torch.Generator().manual_seed(7 + k)).prev_sample
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7 + k), dtype=torch.float64)
        torch.testing.assert_close(ours.ddpm_step(out, x, t, t_prev, noise), ref, **TOL)
        tb, sb = torch.full((SHAPE[0],), t), torch.full((SHAPE[0],), t_prev)
        torch.testing.assert_close(ours.ddpm_step(out, x, tb, sb, noise), ref, **TOL)
