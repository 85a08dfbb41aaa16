"""nodegraph.generate: guidance assembly, conditions, sampling entry points and embedding arithmetic,
on tiny random checkpoints (tests/fixtures_models.py), never on the bundled models still in training."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nodegraph.diffusion import make_betas
from nodegraph.errors import ConditionError, InputValueError
from nodegraph.generate.conditions import (
    ClassifierTerm,
    ClipTerm,
    Condition,
    Guidance,
    NoiseSpec,
    prior_condition,
    unet_condition,
)
from nodegraph.generate.embeddings import analogy, interpolate, lerp, slerp, text_direction
from nodegraph.generate.sampling import (
    SamplerSettings,
    guidance_cond_fn,
    guided_model_fn,
    inpaint,
    invert,
    run_denoiser,
    sample_prior,
    upsample,
)
from nodegraph.models.classifier import ClassifierConfig, NoisyClassifier
from nodegraph.models.clip import TextEncoding, load_clip
from nodegraph.models.diffusion_model import DiffusionModel, DiffusionSpec, load_diffusion_model
from nodegraph.models.noised_clip import NoisedClipConfig, NoisedImageTower
from nodegraph.world.render import render, to_model_range
from nodegraph.world.scene import Scene, Shape

from fixtures_models import DECODER_SIZE, HIGH_RES, LOW_RES, TIMESTEPS, build_tiny_models

PROMPT = "a large red circle on the left on a blue background"
# Batched and separate forwards may take different kernels: equal up to float rounding, not bit for bit.
TOL = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    paths = build_tiny_models(tmp_path_factory.mktemp("models"))
    out: dict = {"clip": load_clip(paths["clip"])}
    for family in ("prior", "decoder", "inpaint", "upsampler"):
        out[family] = load_diffusion_model(paths[family], expect_kind=family)
    return out


@torch.no_grad()
def encode(models, *prompts: str) -> TextEncoding:
    return models["clip"].encode_text(list(prompts))


@torch.no_grad()
def image_embed(models, images: torch.Tensor) -> torch.Tensor:
    return F.normalize(models["clip"].encode_image(images), dim=-1)


def scene_image(res: int = DECODER_SIZE, batch: int = 1) -> torch.Tensor:
    scenes = [Scene("blue", (Shape("circle", "red", "large", "left"),)),
              Scene("white", (Shape("square", "green", "small", "top"),))]
    return to_model_range(render((scenes * batch)[:batch], res))


class CountingNet(nn.Module):
    """Wraps a network and records the batch size of every forward call."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.inner = net
        self.cfg = net.cfg
        self.batches: list[int] = []

    def forward(self, x, t, **kw):
        self.batches.append(x.shape[0])
        return self.inner(x, t, **kw)

    def denormalize(self, z):
        return self.inner.denormalize(z)


def counting(model: DiffusionModel) -> tuple[DiffusionModel, CountingNet]:
    net = CountingNet(model.net)
    return dataclasses.replace(model, net=net), net


@torch.no_grad()
def forward(model: DiffusionModel, cond: Condition, x: torch.Tensor, t: torch.Tensor, length: int) -> torch.Tensor:
    """One plain forward of the network under a condition (what guidance is checked against)."""
    return model.net(x, t, **unet_condition(model.net.cfg, cond, x.shape[0], length, model.device))


def noisy_input(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, DECODER_SIZE, DECODER_SIZE, generator=gen), torch.full((batch,), 30)


# ------------------------------------------------------------------------------------ guided_model_fn
def test_cfg_at_scale_one_is_the_conditional_model_without_a_null_forward(models):
    model, net = counting(models["decoder"])
    enc = encode(models, PROMPT)
    cond = Condition(text=enc)
    x, t = noisy_input()
    with torch.no_grad():
        out = guided_model_fn(model, Guidance.cfg(cond, 1.0), 2)(x, t)
    # Scale 1 needs no unconditional prediction: one forward over the batch itself, not 2B.
    assert net.batches == [2]
    expected = forward(models["decoder"], cond, x, t, enc.tokens.shape[1])
    torch.testing.assert_close(out, expected, **TOL)
    # The condition matters (otherwise the checks above and below could not tell conditions apart).
    assert not torch.allclose(expected, forward(models["decoder"], Condition(), x, t, enc.tokens.shape[1]), atol=1e-3)


def test_cfg_at_scale_zero_is_the_unconditional_model(models):
    model, net = counting(models["decoder"])
    enc = encode(models, PROMPT)
    cond = Condition(text=enc, image_embed=image_embed(models, scene_image()))
    x, t = noisy_input()
    with torch.no_grad():
        out = guided_model_fn(model, Guidance.cfg(cond, 0.0), 2)(x, t)
    assert net.batches == [4]  # conditional and null halves in one forward
    length = enc.tokens.shape[1]
    null = forward(models["decoder"], Condition(), x, t, length)
    torch.testing.assert_close(out[:, :3], null[:, :3], **TOL)
    # The learned-variance channels come from the conditional prediction, as in GLIDE.
    torch.testing.assert_close(out[:, 3:], forward(models["decoder"], cond, x, t, length)[:, 3:], **TOL)


def test_composable_guidance_matches_separate_forwards_in_one_batched_call(models):
    model, net = counting(models["decoder"])
    enc = encode(models, PROMPT)
    text_cond = Condition(text=enc)
    image_cond = Condition(image_embed=image_embed(models, scene_image(batch=2)[1:]))
    weights = (2.5, -0.75)
    guidance = Guidance(conditions=((text_cond, weights[0]), (image_cond, weights[1])))
    x, t = noisy_input()
    with torch.no_grad():
        out = guided_model_fn(model, guidance, 2)(x, t)
    assert net.batches == [6]  # two conditions and the null condition, batch 2 each, one call
    length = enc.tokens.shape[1]
    e_null = forward(models["decoder"], Condition(), x, t, length)[:, :3]
    e_text = forward(models["decoder"], text_cond, x, t, length)[:, :3]
    e_image = forward(models["decoder"], image_cond, x, t, length)[:, :3]
    expected = e_null + weights[0] * (e_text - e_null) + weights[1] * (e_image - e_null)
    torch.testing.assert_close(out[:, :3], expected, **TOL)


def test_no_condition_samples_the_null_model(models):
    model, net = counting(models["decoder"])
    x, t = noisy_input()
    with torch.no_grad():
        out = guided_model_fn(model, Guidance(), 2)(x, t)
    assert net.batches == [2]
    torch.testing.assert_close(out, forward(models["decoder"], Condition(), x, t, 1), **TOL)


def test_classifier_free_guidance_costs_one_forward_per_step(models):
    model, net = counting(models["decoder"])
    enc = encode(models, PROMPT, "a small green square at the top on a white background")
    guidance = Guidance(conditions=((Condition(text=enc), 3.0),
                                    (Condition(image_embed=image_embed(models, scene_image())), 1.5)))
    x_T, _ = noisy_input()
    run_denoiser(model, x_T, guidance, SamplerSettings(steps=5))
    assert net.batches == [6] * 5


def test_classifier_and_clip_gradient_terms_add_up(models):
    decoder = models["decoder"]
    torch.manual_seed(0)
    classifier = NoisyClassifier(ClassifierConfig(model_channels=8, channel_mult=(1, 2), norm_groups=8)).eval()
    tower = NoisedImageTower(NoisedClipConfig(patch_size=8, width=32, layers=1, heads=2)).eval()
    by_class = ClassifierTerm(classifier, {"kind": "circle", "color": "red"}, 2.0)
    by_clip = ClipTerm("noised", tower, encode(models, PROMPT).embed, 10.0)
    model_fn = guided_model_fn(decoder, Guidance(), 2)
    x, t = noisy_input()

    def grad(guidance: Guidance) -> torch.Tensor:
        return guidance_cond_fn(decoder, guidance, model_fn, None)(x, t)

    both = grad(Guidance(classifier=by_class, clip=by_clip))
    alone = grad(Guidance(classifier=by_class)), grad(Guidance(clip=by_clip))
    assert alone[0].abs().max() > 0 and alone[1].abs().max() > 0
    torch.testing.assert_close(both, alone[0] + alone[1])
    assert guidance_cond_fn(decoder, Guidance(), model_fn, None) is None


# ---------------------------------------------------------------------------------------- conditions
def test_unet_condition_rejects_wrong_widths_and_batches_with_helpful_messages(models):
    cfg = models["decoder"].net.cfg
    enc = encode(models, PROMPT)
    cpu = torch.device("cpu")
    with pytest.raises(ConditionError, match=r"width 64, the decoder expects 128: use the CLIP"):
        unet_condition(cfg, Condition(image_embed=torch.randn(1, 64)), 1, 32, cpu)
    narrow = TextEncoding(embed=enc.embed, tokens=enc.tokens[..., :64], mask=enc.mask)
    with pytest.raises(ConditionError, match=r"text tokens have width 64.*expects 128"):
        unet_condition(cfg, Condition(text=narrow), 1, 32, cpu)
    with pytest.raises(ConditionError, match=r"batch 2 but the noise has batch 3; use 1 or 3"):
        unet_condition(cfg, Condition(image_embed=F.normalize(torch.randn(2, 128), dim=-1)), 3, 32, cpu)
    two_texts = encode(models, PROMPT, PROMPT)
    with pytest.raises(ConditionError, match=r"the text has batch 2 but the noise has batch 3"):
        unet_condition(cfg, Condition(text=two_texts), 3, 32, cpu)


def test_unet_condition_broadcasts_batch_one_and_switches_null_off(models):
    cfg = models["decoder"].net.cfg
    enc = encode(models, PROMPT)
    emb = image_embed(models, scene_image())
    on = unet_condition(cfg, Condition(text=enc, image_embed=emb), 3, 32, torch.device("cpu"))
    off = unet_condition(cfg, Condition(), 3, 32, torch.device("cpu"))
    # Same keys and shapes: conditional and null conditions concatenate into one batch.
    assert {k: v.shape for k, v in on.items()} == {k: v.shape for k, v in off.items()}
    assert on["image_embed"].shape == (3, 128) and torch.equal(on["image_embed"][2], emb[0])
    assert on["image_on"].tolist() == [1.0] * 3 and off["image_on"].tolist() == [0.0] * 3
    assert on["text_mask"].any(dim=1).all() and not off["text_mask"].any()


def test_conditions_a_model_cannot_take_raise(models):
    ups = models["upsampler"].net.cfg
    cpu = torch.device("cpu")
    with pytest.raises(ConditionError, match="takes no text"):
        unet_condition(ups, Condition(text=encode(models, PROMPT)), 1, 32, cpu)
    with pytest.raises(ConditionError, match="takes no image embedding"):
        unet_condition(ups, Condition(image_embed=torch.randn(1, 128)), 1, 32, cpu)
    with pytest.raises(ConditionError, match="conditioned on text only"):
        prior_condition(Condition(image_embed=torch.randn(1, 128)), 1, 32, 128, 128, cpu)
    with pytest.raises(ConditionError, match="the text has batch 2 but the noise has batch 3"):
        prior_condition(Condition(text=encode(models, PROMPT, PROMPT)), 3, 32, 128, 128, cpu)
    with pytest.raises(ConditionError, match="needs text"):
        sample_prior(models["prior"], Condition(), 2.0, SamplerSettings(steps=2), 1)


def test_prior_null_condition_switches_text_off(models):
    enc = encode(models, PROMPT)
    on = prior_condition(Condition(text=enc), 2, 32, 128, 128, torch.device("cpu"))
    off = prior_condition(Condition(), 2, 32, 128, 128, torch.device("cpu"))
    assert {k: v.shape for k, v in on.items()} == {k: v.shape for k, v in off.items()}
    assert on["text_on"].all() and not off["text_on"].any()


# -------------------------------------------------------------------------------------- sample_prior
def test_sample_prior_returns_unit_norm_embeddings_one_per_sample(models):
    enc = encode(models, PROMPT)
    gen = torch.Generator().manual_seed(0)
    emb = sample_prior(models["prior"], Condition(text=enc), 2.0, SamplerSettings(steps=4), 3, generator=gen)
    assert emb.shape == (3, 128)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)  # each sample draws its own x_T
    with pytest.raises(ConditionError, match=r"shape \(6, 128\) for batch 3 x best_of 2"):
        sample_prior(models["prior"], Condition(text=enc), 2.0, SamplerSettings(steps=4), 3, best_of=2,
                     x_T=torch.randn(3, 128))


def test_best_of_keeps_per_sample_the_candidate_closest_to_its_text(models):
    batch, k = 4, 3
    prompts = [PROMPT, "a small green square at the top on a white background",
               "a large yellow cross on the right on a black background", "a small blue triangle on a red background"]
    enc = encode(models, *prompts)
    x_T = torch.randn(k * batch, 128, generator=torch.Generator().manual_seed(3))
    settings = SamplerSettings(steps=4)
    best = sample_prior(models["prior"], Condition(text=enc), 2.0, settings, batch, best_of=k, x_T=x_T)
    # The candidates themselves, sampled as one plain batch from the same x_T (candidate-major).
    repeated = TextEncoding(embed=enc.embed.repeat(k, 1), tokens=enc.tokens.repeat(k, 1, 1), mask=enc.mask.repeat(k, 1))
    cands = sample_prior(models["prior"], Condition(text=repeated), 2.0, settings, k * batch, x_T=x_T)
    cands = cands.view(k, batch, 128)
    cos = (cands * F.normalize(enc.embed, dim=-1)[None]).sum(-1)  # [k, batch]
    pick = cos.argmax(dim=0)
    assert len(set(pick.tolist())) > 1, "the seed should make different candidates win, or the test proves little"
    torch.testing.assert_close(best, cands[pick, torch.arange(batch)], **TOL)


# ------------------------------------------------------------------------------------------- inpaint
def paint_mask(batch: int = 1) -> torch.Tensor:
    """The MASK socket's polarity: 1 = the region to generate."""
    mask = torch.zeros(batch, 1, DECODER_SIZE, DECODER_SIZE)
    mask[..., 6:22, 4:20] = 1
    return mask


@pytest.mark.parametrize(("family", "method"), [("inpaint", "model"), ("decoder", "repaint")])
def test_inpaint_keeps_known_pixels_exactly(models, family, method):
    image, mask = scene_image(batch=2), paint_mask()
    guidance = Guidance.cfg(Condition(text=encode(models, PROMPT)), 3.0)
    out = inpaint(models[family], image, mask, guidance, SamplerSettings(steps=4), method=method, jump_length=2,
                  n_resample=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == image.shape
    known = (1 - mask).expand_as(image).bool()
    assert torch.equal(out[known], image[known])
    # Where mask = 0 something was generated.
    assert (out[~known] - image[~known]).abs().mean() > 0.05


def test_inpaint_refuses_a_model_of_the_wrong_kind_for_the_method(models):
    image, mask, guidance, settings = scene_image(), paint_mask(), Guidance(), SamplerSettings(steps=2)
    with pytest.raises(ConditionError, match="needs an inpainting checkpoint, got a decoder"):
        inpaint(models["decoder"], image, mask, guidance, settings, method="model")
    with pytest.raises(ConditionError, match="runs a plain decoder"):
        inpaint(models["inpaint"], image, mask, guidance, settings, method="repaint")
    with pytest.raises(ConditionError, match="unknown inpainting method 'paint'"):
        inpaint(models["decoder"], image, mask, guidance, settings, method="paint")


# -------------------------------------------------------------------------------------------- invert
class GaussianDenoiser(nn.Module):
    """The exact ε̂ for pixels x0 ~ N(m, s²), with m = +0.3 when text is on and -0.3 when it is off.

    A random UNet's ε̂ jumps with t and x, so no step count makes DDIM invertible for it; a trained
    decoder's ε̂ is smooth, like this one, which is what inversion relies on. It takes the decoder's
    keyword conditions, so it runs through the same condition and guidance assembly.
    """

    def __init__(self, cfg, abar: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device
        self.register_buffer("abar", abar.float())

    def forward(self, x, t, **cond):
        a = self.abar[t].view(-1, 1, 1, 1)
        m = torch.where(cond["text_mask"].any(dim=1), 0.3, -0.3).view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * (x - a.sqrt() * m) / (a * 0.25 + 1 - a)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)  # learned-range channels: mid-range variance


def test_invert_then_ddim_along_the_same_steps_reconstructs_better_with_more_steps(models):
    # The bundled decoder's schedule: cosine over 1000 steps, whose last β is clipped to 0.999.
    spec = DiffusionSpec(schedule="cosine", timesteps=1000, prediction="eps", variance="learned_range")
    diffusion = spec.build()
    abar = torch.cumprod(1 - torch.as_tensor(make_betas("cosine", 1000), dtype=torch.float64), 0)
    model = DiffusionModel("decoder", GaussianDenoiser(models["decoder"].net.cfg, abar), diffusion, spec)
    image = scene_image()
    cond = Condition(text=encode(models, PROMPT))
    errors, null_errors = [], []
    for steps in (10, 25, 100):
        x_T, ts = invert(model, image, cond, SamplerSettings(steps=steps))
        assert len(ts) == steps and x_T.shape == image.shape
        ddim = SamplerSettings(sampler="ddim", eta=0.0)
        rec = run_denoiser(model, x_T, Guidance.cfg(cond, 1.0), ddim, timesteps=ts)
        errors.append((rec - image).abs().max().item())
        # Under another condition the same x_T decodes to another image: inversion used the condition.
        other = run_denoiser(model, x_T, Guidance(), ddim, timesteps=ts)
        null_errors.append((other - image).abs().max().item())
    # First-order convergence: 2.5x and 4x the steps shrink the error about as much.
    assert errors[0] > errors[1] > errors[2], errors
    assert 1.8 < errors[0] / errors[1] < 3.2 and 3 < errors[1] / errors[2] < 5, errors
    assert errors[2] < 0.05, errors
    assert min(null_errors) > 0.4, null_errors


# ------------------------------------------------------------------------------------------ upsample
def test_upsample_outputs_the_model_resolution_in_range_and_is_seeded(models):
    low = F.avg_pool2d(scene_image(batch=2), DECODER_SIZE // LOW_RES)  # the renderer's smallest size is 32

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return upsample(models["upsampler"], low, SamplerSettings(steps=3), generator=gen)

    out = run(0)
    assert out.shape == (2, 3, HIGH_RES, HIGH_RES)
    assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(out, run(0))
    assert not torch.equal(out, run(1))


# ---------------------------------------------------------------------------------------- embeddings
def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_slerp_endpoints_unit_norm_and_constant_speed():
    a, b = unit(3, 16, seed=0), unit(3, 16, seed=1)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    theta = torch.acos((a * b).sum(-1))
    for t in (0.1, 0.25, 0.5, 0.9):
        p = slerp(a, b, t)
        torch.testing.assert_close(p.norm(dim=-1), torch.ones(3))
        # On the great circle, at angle t·θ from a and (1 - t)·θ from b.
        torch.testing.assert_close(torch.acos((p * a).sum(-1).clamp(-1, 1)), t * theta, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.acos((p * b).sum(-1).clamp(-1, 1)), (1 - t) * theta, atol=1e-4, rtol=1e-4)
    # Unnormalised inputs are normalised; identical inputs give no NaN.
    torch.testing.assert_close(slerp(3 * a, 2 * b, 0.5), slerp(a, b, 0.5))
    same = slerp(a, a, 0.3)
    assert torch.isfinite(same).all()
    torch.testing.assert_close(same, a)


def test_lerp_is_the_normalised_chord():
    a, b = unit(2, 16, seed=2), unit(2, 16, seed=3)
    p = lerp(a, b, 0.3)
    torch.testing.assert_close(p, F.normalize(0.7 * a + 0.3 * b, dim=-1))
    torch.testing.assert_close(p.norm(dim=-1), torch.ones(2))


def test_text_direction_is_unit_norm_and_antisymmetric():
    s, t = torch.randn(2, 16), torch.randn(2, 16)
    d = text_direction(s, t)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(text_direction(t, s), -d)
    # It points from the source caption toward the target one.
    assert ((F.normalize(t, dim=-1) - F.normalize(s, dim=-1)) * d).sum(-1).gt(0).all()


def test_analogy_moves_the_base_by_the_difference_and_lands_on_the_target_when_base_is_the_source():
    base, source, target = unit(3, 16, seed=6), unit(3, 16, seed=7), unit(3, 16, seed=8)
    out = analogy(base, source, target)
    torch.testing.assert_close(out, F.normalize(base - source + target, dim=-1))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    # The image whose embedding is the source's becomes the target's: the endpoint of the edit.
    torch.testing.assert_close(analogy(source, source, target), target)
    # Weight 0 is the base; the slerp from base to the result is the edit's path.
    torch.testing.assert_close(analogy(base, source, target, weight=0.0), base)
    half = analogy(base, source, target, weight=0.5)
    assert ((half * target).sum(-1) > (base * target).sum(-1)).all()


def test_interpolate_is_t_major():
    a, b = unit(2, 16, seed=4), unit(2, 16, seed=5)
    ts = [0.0, 0.4, 1.0]
    out = interpolate(a, b, ts)
    assert out.shape == (6, 16)
    for i, t in enumerate(ts):
        for j in range(2):
            torch.testing.assert_close(out[i * 2 + j], slerp(a[j], b[j], t))
    # A batch-1 endpoint is shared by every row of the other.
    torch.testing.assert_close(interpolate(a[:1], b, [0.0]), a[:1].expand(2, -1))
    torch.testing.assert_close(interpolate(a, b, [0.5], mode="lerp"), lerp(a, b, 0.5))
    with pytest.raises(ValueError, match="slerp' or 'lerp"):
        interpolate(a, b, ts, mode="cubic")


# ------------------------------------------------------------------------------------------ NoiseSpec
def test_noise_spec_draws_the_same_x_T_every_time_on_the_cpu():
    spec = NoiseSpec(seed=7, batch=2)
    first = spec.initial((3, 8, 8), torch.device("cpu"))
    assert first.shape == (2, 3, 8, 8)
    assert torch.equal(first, spec.initial((3, 8, 8), torch.device("cpu")))
    # Drawn by a CPU generator whatever the target device, so every device starts from the same x_T.
    assert torch.equal(first, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7)))
    assert spec.initial((4,), torch.device("cpu"), count=5).shape == (5, 4)
    assert not torch.equal(first, NoiseSpec(seed=8, batch=2).initial((3, 8, 8), torch.device("cpu")))


def test_sampler_generator_is_not_the_x_T_stream():
    spec = NoiseSpec(seed=7)
    x_T = spec.initial((3, 8, 8), torch.device("cpu"))
    gen = spec.sampler_generator(torch.device("cpu"))
    # DDPM noise drawn from the same stream as x_T would correlate the two.
    assert not torch.equal(torch.randn(x_T.shape, generator=gen), x_T)
    again = torch.randn(x_T.shape, generator=spec.sampler_generator(torch.device("cpu")))
    assert torch.equal(again, torch.randn(x_T.shape, generator=NoiseSpec(seed=7).sampler_generator("cpu")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_noise_spec_x_T_is_the_same_on_cuda():
    spec = NoiseSpec(seed=11, batch=2)
    cuda = spec.initial((3, 8, 8), torch.device("cuda"))
    assert cuda.device.type == "cuda"
    assert torch.equal(cuda.cpu(), spec.initial((3, 8, 8), torch.device("cpu")))


def test_guidance_batch_is_the_largest_condition_batch(models):
    enc = encode(models, PROMPT)
    emb = image_embed(models, scene_image(batch=2)).repeat(2, 1)  # batch 4
    g = Guidance(conditions=((Condition(text=enc), 2.0), (Condition(image_embed=emb), 1.0)))
    # The Decoder draws one x_T per embedding when the noise batch is 1.
    assert g.batch() == 4 and Guidance().batch() == 1


def test_noised_latent_starts_part_way_and_any_sampler_continues_it(models):
    from nodegraph.generate.conditions import NoiseSpec
    from nodegraph.generate.sampling import decode, noised_latent

    image = scene_image()
    settings = SamplerSettings(steps=10)
    full = settings.timesteps(models["decoder"].diffusion.num_timesteps)
    latent = noised_latent(models["decoder"], image, 0.5, settings, NoiseSpec(3))
    assert not latent.inverted and latent.timesteps[0] <= 0.5 * TIMESTEPS and set(latent.timesteps) <= set(full)
    # a weak strength keeps the image close; the same seed gives the same start
    weak = noised_latent(models["decoder"], image, 0.05, settings, NoiseSpec(3))
    assert (weak.x - image).abs().mean() < (latent.x - image).abs().mean()
    assert torch.equal(noised_latent(models["decoder"], image, 0.5, settings, NoiseSpec(3)).x, latent.x)
    out = decode(models["decoder"], Guidance(), SamplerSettings(sampler="ddpm"), latent=latent, noise=NoiseSpec(3))
    assert out.shape == image.shape
    with pytest.raises(InputValueError, match="strength"):
        noised_latent(models["decoder"], image, 0.0, settings, NoiseSpec(3))
