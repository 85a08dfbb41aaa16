"""Guidance: classifier-free (batched, weighted, any number of conditions), classifier, and both CLIP forms."""

from __future__ import annotations

import pytest
import torch

from nodegraph.diffusion import (
    GaussianDiffusion,
    GaussianMixtureOracle,
    bind_cond,
    classifier_free_guidance,
    classifier_guidance,
    clip_x0_guidance,
    concat_conds,
    make_betas,
    noised_clip_guidance,
    random_cutouts,
    range_loss,
    sample,
    sample_ddim,
    sample_ddpm,
    spherical_distance,
    timestep_sequence,
    tv_loss,
)

MIX = GaussianMixtureOracle(torch.tensor([[-0.6, -0.6], [0.6, 0.6]]), [0.15, 0.15], [0.3, 0.7])


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def mixture_cond_model(diffusion: GaussianDiffusion, calls: list | None = None):
    """model(x, t, {"label": (B,)}): label k → the exact denoiser of component k, -1 → of the whole mixture."""
    oracles = {
        -1: MIX.model_fn(diffusion),
        0: MIX.conditional(0).model_fn(diffusion),
        1: MIX.conditional(1).model_fn(diffusion),
    }

    def model(x, t, cond):
        if calls is not None:
            calls.append((x.shape[0], cond["label"].tolist()))
        out = torch.empty_like(x)
        for label, fn in oracles.items():
            rows = cond["label"] == label
            if rows.any():
                out[rows] = fn(x[rows], t[rows])
        return out

    return model


# ------------------------------------------------------------------------------------ classifier-free
def test_cfg_scale_one_is_the_conditional_model_and_zero_the_unconditional():
    d = GaussianDiffusion(make_betas("linear", 1000))
    model = mixture_cond_model(d)
    x, t = _noise(6), torch.full((6,), 400)
    cond, null = {"label": torch.zeros(6, dtype=torch.long)}, {"label": torch.tensor([-1])}
    torch.testing.assert_close(classifier_free_guidance(model, [cond], [1.0], null)(x, t), model(x, t, cond))
    torch.testing.assert_close(
        classifier_free_guidance(model, [cond], [0.0], null)(x, t), model(x, t, {"label": torch.full((6,), -1)})
    )


def test_cfg_runs_one_batched_forward_and_combines_many_weighted_conditions():
    d = GaussianDiffusion(make_betas("linear", 1000))
    calls = []
    model = mixture_cond_model(d, calls)
    c0, c1 = {"label": torch.tensor([0])}, {"label": torch.tensor([1, 1, 1])}
    null = {"label": torch.tensor([-1])}
    guided = classifier_free_guidance(model, [c0, c1], [2.5, -0.75], null)
    x, t = _noise(3, 1), torch.full((3,), 600)
    out = guided(x, t)
    assert calls == [(9, [0, 0, 0, 1, 1, 1, -1, -1, -1])]  # [c_1, c_2, ∅], one forward of (K+1)·B
    e = {k: model(x, t, {"label": torch.full((3,), k)}) for k in (-1, 0, 1)}
    torch.testing.assert_close(out, e[-1] + 2.5 * (e[0] - e[-1]) - 0.75 * (e[1] - e[-1]))


def test_edit_weights_summing_to_one_skip_the_null_forward_and_equal_target_keeps_the_model():
    """ε(target) + s(ε(target) − ε(source)): the null branch has weight 0, so it is not computed, and with
    target == source the guided model is the conditional one (an inverted latent still reconstructs)."""
    d = GaussianDiffusion(make_betas("linear", 1000))
    calls = []
    model = mixture_cond_model(d, calls)
    target, source = {"label": torch.tensor([1])}, {"label": torch.tensor([0])}
    null = {"label": torch.tensor([-1])}
    x, t = _noise(3, 2), torch.full((3,), 500)
    out = classifier_free_guidance(model, [target, source], [3.0, -2.0], null)(x, t)
    assert calls == [(6, [1, 1, 1, 0, 0, 0])]  # no ∅ rows
    e = {k: model(x, t, {"label": torch.full((3,), k)}) for k in (0, 1)}
    torch.testing.assert_close(out, e[1] + 2.0 * (e[1] - e[0]))
    same = classifier_free_guidance(model, [source, source], [3.0, -2.0], null)(x, t)
    torch.testing.assert_close(same, e[0])


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_cfg_on_outputs_equals_guiding_eps_and_guiding_x0(prediction):
    """The weights sum to one, so guiding an x0-model's output is guiding its ε̂ (and vice versa)."""
    d = GaussianDiffusion(make_betas("cosine", 1000), prediction=prediction)
    model = mixture_cond_model(d)
    x, t = _noise(4, 2), torch.full((4,), 300)
    out = classifier_free_guidance(model, [{"label": torch.tensor([1])}], [3.0], {"label": torch.tensor([-1])})(x, t)
    oc = model(x, t, {"label": torch.ones(4, dtype=torch.long)})
    ou = model(x, t, {"label": -torch.ones(4, dtype=torch.long)})
    for convert in (d.predict_eps, d.predict_x0):
        e_out, e_c, e_u = (convert(o, x, t) for o in (out, oc, ou))
        torch.testing.assert_close(e_out, e_u + 3.0 * (e_c - e_u))


def test_cfg_takes_learned_variance_channels_from_the_first_condition():
    def model(x, t, cond):
        v = cond["v"].view(-1, 1).expand_as(x)
        return torch.cat([x * cond["v"].view(-1, 1), v], 1)

    x, t = _noise(2), torch.zeros(2, dtype=torch.long)
    conds = [{"v": torch.tensor([0.5])}, {"v": torch.tensor([0.25])}]
    out = classifier_free_guidance(model, conds, [2.0, 1.0], {"v": torch.tensor([-1.0])})(x, t)
    torch.testing.assert_close(out[:, 2:], torch.full((2, 2), 0.5, dtype=torch.float64))
    torch.testing.assert_close(out[:, :2], x * (-1 + 2.0 * 1.5 + 1.0 * 1.25))


def test_concat_conds_broadcasts_and_checks():
    out = concat_conds([{"a": torch.ones(1, 3)}, {"a": torch.zeros(2, 3)}], 2)
    assert out["a"].shape == (4, 3) and out["a"][:2].eq(1).all() and out["a"][2:].eq(0).all()
    with pytest.raises(ValueError, match="keys"):
        concat_conds([{"a": torch.ones(1)}, {"b": torch.ones(1)}], 1)
    with pytest.raises(ValueError, match="batch 3"):
        concat_conds([{"a": torch.ones(3)}], 2)
    with pytest.raises(ValueError):
        classifier_free_guidance(lambda x, t, c: x, [{}], [1.0, 2.0], {})


def test_bind_cond_is_the_plain_conditional_model():
    d = GaussianDiffusion(make_betas("linear", 1000))
    model = mixture_cond_model(d)
    x, t = _noise(3), torch.full((3,), 10)
    torch.testing.assert_close(
        bind_cond(model, {"label": torch.tensor([1])})(x, t), MIX.conditional(1).model_fn(d)(x, t)
    )


# ---------------------------------------------------------------------------------------- classifier
def _log_prob_fn(d: GaussianDiffusion, label: int):
    return lambda x, t: MIX.log_class_prob(x, d.abar(t, x), label)


def test_classifier_guidance_with_the_exact_classifier_is_the_conditional_flow_for_ddim():
    """ε̂ - √(1-ᾱ)∇log p(y|x_t) is exactly the conditional model's ε̂, so guided DDIM = conditional DDIM."""
    d = GaussianDiffusion(make_betas("cosine", 1000), prediction="v")
    x_T = _noise(400, 3)
    ts = timestep_sequence(1000, 30)
    guided = sample_ddim(d, MIX.model_fn(d), x_T, ts, cond_fn=classifier_guidance(_log_prob_fn(d, 0), 1.0))
    conditional = sample_ddim(d, MIX.conditional(0).model_fn(d), x_T, ts)
    torch.testing.assert_close(guided, conditional, rtol=1e-7, atol=1e-7)
    assert (guided.sum(1) < 0).all()


def test_classifier_guidance_mean_shift_draws_from_the_chosen_component():
    d = GaussianDiffusion(make_betas("linear", 1000))
    g = torch.Generator().manual_seed(4)
    cond_fn = classifier_guidance(_log_prob_fn(d, 0), 1.0)
    x = sample_ddpm(d, MIX.model_fn(d), _noise(1500, 4), timestep_sequence(1000, 250), generator=g, cond_fn=cond_fn)
    assert (x.sum(1) < 0).double().mean().item() > 0.995  # the prior weight of component 0 is only 0.3
    torch.testing.assert_close(x.mean(0), torch.tensor([-0.6, -0.6], dtype=torch.float64), atol=0.02, rtol=0)
    torch.testing.assert_close(x.std(0), torch.tensor([0.15, 0.15], dtype=torch.float64), rtol=0.1, atol=0)


def test_classifier_guidance_scale_sharpens_and_applies_to_every_sampler():
    d = GaussianDiffusion(make_betas("linear", 1000))
    cond_fn = classifier_guidance(_log_prob_fn(d, 0), 4.0)
    for sampler in ("ddpm", "ddim", "dpmpp_2m"):
        x = sample(
            d, MIX.model_fn(d), _noise(300, 5), sampler=sampler, steps=25, cond_fn=cond_fn, generator=torch.Generator()
        )
        assert (x.sum(1) < 0).all()


# ------------------------------------------------------------------------------------------------ CLIP
def test_noised_clip_guidance_is_the_gradient_of_the_embedding_dot_product():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(5, 12, generator=g, dtype=torch.float64)
    encoder = lambda x, t: (x.flatten(1) * (1 + t.view(-1, 1))) @ w.T  # noise-aware: depends on t
    text = torch.randn(1, 5, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([3, 7])
    grad = noised_clip_guidance(encoder, text, 2.0)(x, t)
    expected = 2.0 * (1 + t.view(-1, 1)) * (text @ w).expand(2, 12)
    torch.testing.assert_close(grad, expected.view_as(x))


def test_random_cutouts_are_seeded_and_cut_major():
    img = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    a = random_cutouts(img, 8, 5, torch.Generator().manual_seed(0))
    b = random_cutouts(img, 8, 5, torch.Generator().manual_seed(0))
    assert a.shape == (10, 3, 8, 8) and torch.equal(a, b)
    full = random_cutouts(img, 16, 1, torch.Generator().manual_seed(0))  # cut_size = side: the image itself
    assert torch.equal(full, img)


def test_losses():
    a = torch.tensor([[1.0, 0.0]])
    assert spherical_distance(a, torch.tensor([[0.0, 3.0]])).item() == pytest.approx((torch.pi / 2) ** 2 / 2)
    assert spherical_distance(a, a * 5).item() == pytest.approx(0.0, abs=1e-6)
    flat = torch.ones(2, 3, 4, 4)
    assert tv_loss(flat).abs().max() == 0 and range_loss(flat).abs().max() == 0
    assert range_loss(flat * 1.5).tolist() == pytest.approx([0.25, 0.25])


def _toy_clip(dim: int = 6, seed: int = 7):
    w = torch.randn(dim, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return lambda images: images.mean((2, 3)) @ w.T + 0.1 * images.std((2, 3)) @ w.T


def test_clip_x0_guidance_gradient_matches_the_explicit_loss():
    d = GaussianDiffusion(make_betas("linear", 1000))
    g = torch.Generator().manual_seed(8)
    proj = torch.randn(3, 3, generator=g, dtype=torch.float64)
    model_fn = lambda x, t: torch.einsum("ij,bjhw->bihw", proj, x) * 0.1  # a small linear "ε-model"
    encoder, target = _toy_clip(), torch.randn(1, 6, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([500, 500])
    cond_fn = clip_x0_guidance(d, model_fn, encoder, target, scale=10.0, cutn=4, cut_size=4, tv_scale=3.0,
                               range_scale=5.0, generator=torch.Generator().manual_seed(1))  # fmt: skip
    grad = cond_fn(x, t)

    x_in = x.clone().requires_grad_()
    f = (1 - d.alphas_cumprod[500].item()) ** 0.5
    blend = d.predict_x0(model_fn(x_in, t), x_in, t) * f + x_in * (1 - f)
    cuts = random_cutouts(blend, 4, 4, torch.Generator().manual_seed(1))
    dist = spherical_distance(encoder(cuts).view(4, 2, -1), target).mean(0)
    loss = 10.0 * dist.sum() + 3.0 * tv_loss(blend).sum() + 5.0 * range_loss(blend).sum()
    loss.backward()
    torch.testing.assert_close(grad, -x_in.grad)

    clamped = clip_x0_guidance(d, model_fn, encoder, target, scale=1e4, cutn=4, cut_size=4, grad_clamp=0.05,
                               generator=torch.Generator().manual_seed(1))(x, t)  # fmt: skip
    rms = clamped.pow(2).flatten(1).mean(1).sqrt()
    assert rms.max().item() == pytest.approx(0.05)


def test_clip_x0_guidance_steers_samples_towards_the_target():
    d = GaussianDiffusion(make_betas("linear", 1000))
    blob = GaussianMixtureOracle(torch.zeros(1, 3, 8, 8), [0.5])
    encoder = lambda images: images.mean((2, 3))  # "embedding" = mean colour
    target = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    plain = sample(d, blob.model_fn(d), x_T, sampler="ddim", steps=20)
    cond_fn = clip_x0_guidance(d, blob.model_fn(d), encoder, target, scale=50.0, cutn=2, cut_size=8,
                               generator=torch.Generator().manual_seed(0))  # fmt: skip
    guided = sample(d, blob.model_fn(d), x_T, sampler="ddim", steps=20, cond_fn=cond_fn)
    before = spherical_distance(encoder(plain), target).mean()
    after = spherical_distance(encoder(guided), target).mean()
    assert after < 0.5 * before
