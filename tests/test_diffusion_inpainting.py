"""Inpainting: mask = 1 where known. Model-conditioned (GLIDE) and replacement (RePaint) against an oracle."""

from __future__ import annotations

import math

import pytest
import torch

from nodegraph.diffusion import (
    GaussianDiffusion,
    GaussianMixtureOracle,
    classifier_free_guidance,
    inpaint_conditioned,
    inpaint_repaint,
    inpainting_channels,
    make_betas,
    paste_known,
    repaint_schedule,
    timestep_sequence,
    with_inpainting_channels,
)

# Two well separated components; knowing pixel 0 = -0.6 makes pixel 1 ≈ -0.6 as well, although the prior
# puts only 30% of the mass on that component: a test of whether the fill agrees with the context.
MIX = GaussianMixtureOracle(torch.tensor([[-0.6, -0.6], [0.6, 0.6]]), [0.15, 0.15], [0.3, 0.7])
N = 600
IMAGE = torch.tensor([[-0.6, 9.0]], dtype=torch.float64).expand(N, 2)  # pixel 1 is unknown (its value unused)
MASK = torch.tensor([[1.0, 0.0]], dtype=torch.float64)


def _noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(N, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_repaint_schedule():
    assert repaint_schedule(5, 2, 1) == [0, 1, 2, 3, 4, 5]
    assert repaint_schedule(10, 3, 2) == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 7, 8, 9, 6, 7, 8, 9, 10]
    path = repaint_schedule(50, 10, 4)
    down = sum(1 for p, q in zip(path, path[1:], strict=False) if q == p + 1)
    assert path[0] == 0 and path[-1] == 50 and down == 50 + 3 * 10 * 4  # blocks ending at 49, 39, 29, 19
    assert all(q in (p + 1, p - 10) for p, q in zip(path, path[1:], strict=False))


def test_inpainting_channels_for_images():
    image = torch.rand(2, 3, 4, 4) * 2 - 1
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1
    extra = inpainting_channels(image, mask)
    assert extra.shape == (2, 4, 4, 4)
    assert torch.equal(extra[:, :3], image * mask) and torch.equal(extra[:, 3:], mask.expand(2, 1, 4, 4))


def test_paste_known_uses_the_mask_convention():
    image, x = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert paste_known(image, mask, x).flatten().tolist() == [1.0, 0.0, 0.0, 1.0]


def test_repaint_keeps_the_known_region_and_resampling_harmonises_the_fill():
    d = GaussianDiffusion(make_betas("linear", 1000))
    ts = timestep_sequence(1000, 50)
    fraction = {}
    for r in (1, 5):
        x = inpaint_repaint(d, MIX.model_fn(d), IMAGE, MASK, _noise(), ts, jump_length=5, n_resample=r,
                            generator=torch.Generator().manual_seed(1))  # fmt: skip
        assert torch.equal(x[:, 0], IMAGE[:, 0])
        fraction[r] = (x[:, 1] < 0).double().mean().item()
    assert fraction[1] > 0.85 and fraction[5] > 0.98 and fraction[5] > fraction[1]


def _conditional_oracle() -> GaussianMixtureOracle:
    """p(x | x[0] = -0.6): x[0] is a point mass, components reweighted by the likelihood of the known pixel."""
    w1 = 0.7 * math.exp(-0.5 * (1.2 / 0.15) ** 2)
    return GaussianMixtureOracle(
        torch.tensor([[-0.6, -0.6], [-0.6, 0.6]]), torch.tensor([[0.0, 0.15], [0.0, 0.15]]), [0.3, w1]
    )


def test_conditioned_inpainting_feeds_the_known_pixels_and_pastes_them_into_x0():
    d = GaussianDiffusion(make_betas("linear", 1000))
    exact = _conditional_oracle().model_fn(d)
    seen_inputs, seen_x0 = [], []

    def network(x_in, t, cond):  # a GLIDE-style inpainting net: channels [x_t, image·mask, mask]
        seen_inputs.append(x_in)
        return exact(x_in[:, :2], t)

    model = with_inpainting_channels(network)
    cond = {"inpaint_image": IMAGE, "inpaint_mask": MASK}
    model_fn = classifier_free_guidance(model, [cond], [2.0], cond)  # two branches, both fed the known pixels
    x = inpaint_conditioned(d, model_fn, IMAGE, MASK, _noise(2), sampler="ddim", steps=50,
                            callback=lambda s, n, x, x0: seen_x0.append(x0))  # fmt: skip
    assert seen_inputs[0].shape == (2 * N, 6)
    torch.testing.assert_close(seen_inputs[0][:, 2:4], (IMAGE * MASK).repeat(2, 1))
    torch.testing.assert_close(seen_inputs[0][:, 4:], MASK.expand(2 * N, 2))
    assert all(torch.equal(x0[:, 0], IMAGE[:, 0]) for x0 in seen_x0)
    assert torch.equal(x[:, 0], IMAGE[:, 0])
    assert (x[:, 1] < 0).all()
    assert x[:, 1].mean().item() == pytest.approx(-0.6, abs=0.03)


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m"])
def test_conditioned_inpainting_with_other_samplers_returns_the_known_region_exactly(sampler):
    d = GaussianDiffusion(make_betas("cosine", 1000), prediction="v")
    x = inpaint_conditioned(d, _conditional_oracle().model_fn(d), IMAGE, MASK, _noise(3), sampler=sampler, steps=20,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(x[:, 0], IMAGE[:, 0]) and (x[:, 1] < 0).double().mean() > 0.99
