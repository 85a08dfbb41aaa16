"""Pivotal tuning on a tiny generator: it closes the reconstruction gap an inversion leaves, on a copy."""

from __future__ import annotations

import pytest
import torch

from nodegraph.errors import InputValueError
from nodegraph.generate import gan_sampling
from nodegraph.generate.gan_inversion import InversionSettings, invert, psnr
from nodegraph.generate.pivotal_tuning import PivotalSettings, synthesis_parameters, tune
from nodegraph.models.stylegan import GanModel, StyleGANConfig, StyleLatent

from fixtures_models import tiny_stylegan

CFG = StyleGANConfig(size=16, style_dim=8, n_mlp=2, channels=(16, 12, 8))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gan() -> GanModel:
    net = tiny_stylegan(0, CFG)
    return GanModel(net, net.mean_latent(256, torch.Generator().manual_seed(0)), origin="tiny")


@pytest.fixture(scope="module")
def off_manifold() -> torch.Tensor:
    """Images this generator cannot draw from any latent: a smooth colour field with a square on it."""
    images = torch.linspace(-0.8, 0.8, 16).view(1, 1, 1, 16).expand(2, 3, 16, 16).clone()
    images[0, 0, 4:10, 4:10] = 0.9
    images[1, 2, 6:14, 2:8] = -0.9
    return images


@pytest.fixture(scope="module")
def pivot(gan, off_manifold):
    latent, recon = invert(gan, off_manifold, InversionSettings(steps=30), generator=torch.Generator().manual_seed(0))
    return latent, recon


def _snapshot(gan: GanModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in gan.net.state_dict().items()}


def test_tuning_closes_the_gap_the_inversion_leaves_and_leaves_the_input_generator_alone(gan, off_manifold, pivot):
    latent, recon = pivot
    before = _snapshot(gan)
    steps: list[int] = []
    tuned, tuned_recon = tune(gan, latent, off_manifold, PivotalSettings(steps=60, lr=3e-3),
                              callback=lambda step, total, preview: steps.append(step))
    assert steps == list(range(1, 61))
    gain = psnr(tuned_recon, off_manifold) - psnr(recon, off_manifold)
    assert (gain > 3).all(), f"PSNR gained {gain.tolist()} dB"
    torch.testing.assert_close(tuned.render(latent), tuned_recon)  # the pivots render as the reconstruction
    for key, value in gan.net.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} of the input generator changed"
    assert isinstance(tuned, GanModel) and tuned.net is not gan.net and "pivotal" in tuned.origin
    assert not any(p.requires_grad for p in tuned.net.parameters())  # a finished model, like a loaded one


def test_the_mapping_network_is_not_tuned_so_sampled_latents_keep_their_codes(gan, off_manifold, pivot):
    tuned, _ = tune(gan, pivot[0], off_manifold, PivotalSettings(steps=5, lr=1e-2))
    for (name, p), (_, q) in zip(gan.net.named_parameters(), tuned.net.named_parameters(), strict=True):
        if name.startswith("style."):
            assert torch.equal(p, q), name
    assert any(not torch.equal(p, q) for p, q in zip(synthesis_parameters(gan.net), synthesis_parameters(tuned.net),
                                                      strict=True))
    sampled = gan_sampling.sample_latents(gan, seed=1, batch=2)
    torch.testing.assert_close(gan_sampling.sample_latents(tuned, seed=1, batch=2).w, sampled.w)


def test_the_locality_term_keeps_other_latents_rendering_as_before(gan, off_manifold, pivot):
    far = gan_sampling.sample_latents(gan, seed=7, batch=4)
    original = gan.render(far)
    drift = {}
    for weight in (0.0, 10.0):
        tuned, _ = tune(gan, pivot[0], off_manifold, PivotalSettings(steps=40, lr=3e-3, locality=weight),
                        generator=torch.Generator().manual_seed(0))
        drift[weight] = float((tuned.render(far) - original).abs().mean())
    assert drift[10.0] < 0.7 * drift[0.0], drift


def test_mismatched_latents_and_steps_are_input_errors(gan, off_manifold, pivot):
    latent = pivot[0]
    one = StyleLatent(latent.w[:1], tuple(n[:1] for n in latent.noise))
    with pytest.raises(InputValueError, match="1 latents for 2 images") as err:
        tune(gan, one, off_manifold)
    assert err.value.input == "latent"
    with pytest.raises(InputValueError, match="this generator takes"):
        tune(gan, StyleLatent(torch.zeros(2, 3, 8)), off_manifold)
    with pytest.raises(InputValueError, match="negative"):
        tune(gan, latent, off_manifold, PivotalSettings(steps=-1))
    with pytest.raises(InputValueError, match="1 latents for 2 images"):  # switched off, still checked
        tune(gan, one, off_manifold, PivotalSettings(steps=0))
    same, recon = tune(gan, latent, off_manifold, PivotalSettings(steps=0))
    assert same is gan
    torch.testing.assert_close(recon, gan.render(latent))
