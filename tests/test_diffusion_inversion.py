"""DDIM inversion and image-to-image (SDEdit)."""

from __future__ import annotations

import pytest
import torch

from nodegraph.diffusion import (
    GaussianDiffusion,
    GaussianMixtureOracle,
    ddim_invert,
    img2img,
    make_betas,
    sample,
    sample_ddim,
    strength_to_start,
    timestep_sequence,
)

GAUSS = GaussianMixtureOracle(torch.tensor([[0.5, -0.3]]), torch.tensor([[0.3, 0.6]]))


def _data(n: int = 300, seed: int = 0) -> torch.Tensor:
    return GAUSS.sample(n, torch.Generator().manual_seed(seed))[0]


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_inversion_is_the_exact_inverse_of_ddim_for_a_constant_eps_model(spacing):
    """With ε̂ independent of x_t the two directions use the same ε̂, so the round trip is exact algebra."""
    d = GaussianDiffusion(make_betas("cosine", 1000))
    eps = torch.randn(1, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model_fn = lambda x, t: eps.expand_as(x)
    x0 = _data(20)
    ts = timestep_sequence(1000, 13, spacing=spacing)
    x_T = ddim_invert(d, model_fn, x0, ts)
    torch.testing.assert_close(sample_ddim(d, model_fn, x_T, ts), x0, rtol=0, atol=1e-10)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_inversion_round_trip_error_shrinks_at_first_order_with_steps(prediction):
    d = GaussianDiffusion(make_betas("linear", 1000), prediction=prediction)
    x0 = _data()
    errors = {}
    for n in (25, 50, 100, 200):
        ts = timestep_sequence(1000, n)
        x_T = ddim_invert(d, GAUSS.model_fn(d), x0, ts)
        errors[n] = (sample_ddim(d, GAUSS.model_fn(d), x_T, ts) - x0).abs().max().item()
    assert errors[25] > errors[50] > errors[100] > errors[200]
    assert errors[200] < 0.06 and 1.6 < errors[100] / errors[200] < 2.4


def test_inverted_latents_are_gaussian_noise():
    d = GaussianDiffusion(make_betas("linear", 1000))
    x_T = ddim_invert(d, GAUSS.model_fn(d), _data(3000, 2), timestep_sequence(1000, 50))
    torch.testing.assert_close(x_T.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.06, rtol=0)
    torch.testing.assert_close(x_T.std(0), torch.ones(2, dtype=torch.float64), atol=0.06, rtol=0)


def test_inversion_reports_progress():
    d = GaussianDiffusion(make_betas("linear", 1000))
    seen = []
    ddim_invert(d, GAUSS.model_fn(d), _data(4), timestep_sequence(1000, 7), callback=lambda *a: seen.append(a[:2]))
    assert seen == [(i, 7) for i in range(1, 8)]


def test_strength_to_start():
    assert [strength_to_start(10, s) for s in (0.0, 0.25, 0.3, 0.5, 1.0)] == [10, 8, 7, 5, 0]
    assert strength_to_start(100, 0.29) == 71
    with pytest.raises(ValueError):
        strength_to_start(10, 1.5)


def test_img2img_runs_the_tail_of_the_sequence_from_the_noised_image():
    d = GaussianDiffusion(make_betas("linear", 1000))
    image = _data(8, 3)
    ts = timestep_sequence(1000, 20)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(img2img(d, GAUSS.model_fn(d), image, ts, 0.0), image)
    calls = []
    model_fn = lambda x, t: (calls.append(int(t[0])), GAUSS.model_fn(d)(x, t))[1]
    out = img2img(d, model_fn, image, ts, 0.3, noise=noise)
    assert calls == ts[14:]
    expected = sample(d, GAUSS.model_fn(d), d.q_sample(image, ts[14], noise), timesteps=ts[14:])
    torch.testing.assert_close(out, expected)


def test_img2img_strength_trades_faithfulness_for_freedom():
    d = GaussianDiffusion(make_betas("linear", 1000))
    image = torch.tensor([[1.5, 1.5]], dtype=torch.float64).expand(500, 2)  # an outlier of the data
    ts = timestep_sequence(1000, 25)
    dist = {}
    for strength in (0.2, 0.6, 1.0):
        g = torch.Generator().manual_seed(5)
        out = img2img(d, GAUSS.model_fn(d), image, ts, strength, sampler="ddpm", generator=g)
        dist[strength] = (out - image).pow(2).sum(1).mean().item()
    assert dist[0.2] < dist[0.6] < dist[1.0]
