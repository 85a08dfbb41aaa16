"""GAN inversion, pivotal tuning, the CLIP objective, StyleCLIP latent optimisation and StyleGAN-NADA on tiny
models."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F

from nodegraph.errors import InputValueError
from nodegraph.generate import clip_objective, gan_sampling, nada, styleclip
from nodegraph.generate.clip_objective import PLAIN, ClipObjective, ObjectiveSettings, objective_for
from nodegraph.generate.gan_inversion import InversionSettings, invert, noise_regularization, psnr, ramped_lr
from nodegraph.generate.pivotal_tuning import PivotalSettings, synthesis_parameters, tune
from nodegraph.models.clip import build_clip
from nodegraph.models.noised_clip import NoisedClipConfig, NoisedImageTower
from nodegraph.models.stylegan import GanModel, StyleGANConfig, StyleLatent

from fixtures_models import tiny_stylegan as tiny_generator

CFG = StyleGANConfig(size=16, style_dim=8, n_mlp=2, channels=(16, 12, 8))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: a second thread buys nothing and, on a busy machine, costs a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gan() -> GanModel:
    net = tiny_generator(0, CFG)
    return GanModel(net, net.mean_latent(256, torch.Generator().manual_seed(0)), origin="tiny")


@pytest.fixture(scope="module")
def clip():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_clip()
    model.model.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def noised():
    with torch.random.fork_rng():
        torch.manual_seed(1)
        tower = NoisedImageTower(NoisedClipConfig(width=32, layers=1, heads=2, embed_dim=128))
    return tower.requires_grad_(False)


def test_ramped_lr_warms_up_and_ends_at_zero():
    assert ramped_lr(0.0, 0.1) == 0.0 and ramped_lr(0.5, 0.1) == pytest.approx(0.1) and ramped_lr(1.0, 0.1) == 0.0


def test_noise_regularization_is_small_for_white_noise_and_large_for_smooth_maps():
    gen = torch.Generator().manual_seed(0)
    white = [torch.randn(1, 1, 32, 32, generator=gen)]
    smooth = [torch.ones(1, 1, 32, 32)]
    assert noise_regularization(white) < 1e-2 < noise_regularization(smooth)


def test_inversion_reconstructs_an_image_the_generator_can_draw(gan):
    target = gan_sampling.sample_latents(gan, seed=3, batch=2)
    images = gan.render(target)
    start = gan.render(StyleLatent(gan.w_avg.view(1, 1, -1).expand(2, gan.n_latent, -1)))
    steps: list[int] = []
    latent, recon = invert(gan, images, InversionSettings(steps=40, lr=0.1), generator=torch.Generator().manual_seed(0),
                           callback=lambda step, total, preview: steps.append(step))
    assert steps == list(range(1, 41)) and latent.w.shape == (2, gan.n_latent, 8)
    assert (psnr(recon, images) > psnr(start, images) + 3).all()
    torch.testing.assert_close(gan.render(latent), recon)  # the latent carries its optimised noise maps
    w_only, _ = invert(gan, images, InversionSettings(space="w", steps=5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(w_only.w[:, 0], w_only.w[:, -1])  # one code for every layer
    with pytest.raises(InputValueError, match="space"):
        invert(gan, images, InversionSettings(space="z"))


def test_objective_views_are_seeded_and_plain_is_one_view(clip, noised):
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    robust = ClipObjective(clip, noised, ObjectiveSettings(views=4))
    a = robust.text_loss(images, "a red circle", torch.Generator().manual_seed(0))
    b = robust.text_loss(images, "a red circle", torch.Generator().manual_seed(0))
    c = robust.text_loss(images, "a red circle", torch.Generator().manual_seed(1))
    assert a.shape == (3,) and torch.equal(a, b) and not torch.equal(a, c)
    plain = ClipObjective.plain(clip)
    assert plain.settings == PLAIN and "plain" in plain.describe()
    expected = 1 - (torch.nn.functional.normalize(clip.encode_image(images), dim=-1)
                    * plain.text_embeddings("a red circle")).sum(-1)
    torch.testing.assert_close(plain.text_loss(images, "a red circle"), expected)
    # the noised tower only joins when given and weighted
    assert objective_for(clip, None).noised is None and objective_for(clip, noised).noised is noised
    assert objective_for(clip, noised, views=1, augment=False).settings.shift == 0


def test_directional_loss_pairs_views_and_prefers_the_text_direction(clip, noised):
    obj = ClipObjective(clip, noised, ObjectiveSettings(views=4))
    src = torch.rand(2, 3, 32, 32) * 2 - 1
    edit = src.clone().requires_grad_(True)
    loss = obj.directional_loss(src, edit + 0.3, "a red circle", "a blue circle", torch.Generator().manual_seed(0))
    loss.sum().backward()
    assert loss.shape == (2,) and edit.grad is not None and edit.grad.abs().sum() > 0
    with pytest.raises(InputValueError):
        obj.directional_loss(src, src[:1], "a", "b")


def test_directional_loss_is_tame_where_the_two_images_are_still_the_same(clip, noised):
    """NADA's trained copy starts equal to the frozen generator (same codes, same noise), so its first step sees
    no image direction at all. A 1e-6 floor under the norm made that gradient ~1e6 times a normal one, and
    Adam's second moment (beta2 0.99) then shrank every later update to nothing: the generator stopped
    changing after one step. At the floor the loss must reward moving along the text direction with a
    gradient of ordinary size."""
    obj = ClipObjective.plain(clip)
    src = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    same = src.clone().requires_grad_(True)
    obj.directional_loss(src, same, "a red circle", "a blue circle").sum().backward()
    assert torch.isfinite(same.grad).all() and same.grad.abs().sum() > 0
    # a small step down that gradient moves the image's embedding along the text direction
    step = src - 1e-3 * same.grad / same.grad.norm()
    direction = obj.text_embeddings("a blue circle") - obj.text_embeddings("a red circle")
    with torch.no_grad():
        moved = clip.encode_image(step) - clip.encode_image(src)
    assert (F.cosine_similarity(moved, direction.expand_as(moved), dim=-1) > 0.5).all()
    with pytest.MonkeyPatch.context() as patch:  # the old floor: the same gradient, 1e4 times larger
        patch.setattr(clip_objective, "DIRECTION_EPS", 1e-6)
        old = src.clone().requires_grad_(True)
        obj.directional_loss(src, old, "a red circle", "a blue circle").sum().backward()
    assert old.grad.norm() > 1e3 * same.grad.norm()


def test_nada_keeps_changing_the_generator_after_its_first_step(gan, clip):
    obj = ClipObjective(clip, None, ObjectiveSettings(views=2, noised_weight=0.0))
    latent = gan_sampling.sample_latents(gan, seed=3, batch=2)
    images = [gan.render(latent)]
    for steps in (1, 6):
        settings = nada.NadaSettings(steps=steps, layers=0, batch=2, lr=0.002)
        adapted = nada.adapt(gan, obj, "a red circle", "a blue circle", settings,
                             generator=torch.Generator().manual_seed(0))
        images.append(adapted.render(latent))
    first, later = (images[1] - images[0]).abs().mean(), (images[2] - images[1]).abs().mean()
    assert later > 0.5 * first  # five more steps; under the old 1e-6 floor they barely moved it


def test_styleclip_lowers_the_clip_loss_and_lambda_keeps_the_latent_near_its_start(gan, clip):
    obj = ClipObjective(clip, None, ObjectiveSettings(views=2, noised_weight=0.0))
    start = gan_sampling.sample_latents(gan, seed=1, batch=2)
    text = "a large blue square in the center on a red background"
    before = obj.text_loss(gan.render(start), text, torch.Generator().manual_seed(5)).mean()
    seen = []
    free, images = styleclip.edit(gan, start, obj, text, styleclip.StyleCLIPSettings(steps=12, lr=0.2, l2_lambda=0.0),
                                  generator=torch.Generator().manual_seed(0), callback=lambda s, t, p: seen.append(s))
    after = obj.text_loss(images, text, torch.Generator().manual_seed(5)).mean()
    assert seen[-1] == 12 and after < before
    tied, _ = styleclip.edit(gan, start, obj, text, styleclip.StyleCLIPSettings(steps=12, lr=0.2, l2_lambda=10.0),
                             generator=torch.Generator().manual_seed(0))
    assert (tied.w - start.w).norm() < (free.w - start.w).norm()
    assert free.noise is start.noise  # the source's noise maps are kept
    with pytest.raises(InputValueError, match="latent"):
        styleclip.edit(gan, StyleLatent(torch.zeros(1, 3, 8)), obj, text)


def test_styleclip_moves_only_the_layers_it_is_given(gan, clip):
    obj = ClipObjective(clip, None, ObjectiveSettings(views=2, noised_weight=0.0))
    start = gan_sampling.sample_latents(gan, seed=2, batch=2)
    text = "a small green circle on the left on a white background"
    settings = styleclip.StyleCLIPSettings(steps=6, lr=0.2, l2_lambda=0.0, layers=styleclip.parse_layers("1, 3-4"))
    edited, images = styleclip.edit(gan, start, obj, text, settings, generator=torch.Generator().manual_seed(0))
    moved = (edited.w - start.w).abs().amax(dim=(0, 2)) > 0
    assert moved.tolist() == [i in (1, 3, 4) for i in range(gan.n_latent)]
    torch.testing.assert_close(gan.render(edited), images)
    everything, _ = styleclip.edit(gan, start, obj, text, styleclip.StyleCLIPSettings(steps=6, lr=0.2, l2_lambda=0.0),
                                   generator=torch.Generator().manual_seed(0))
    assert ((everything.w - start.w).abs().amax(dim=(0, 2)) > 0).all()


def test_style_offsets_move_one_convolution_and_zero_offsets_change_nothing(gan):
    net, latent = gan.net, gan_sampling.sample_latents(gan, seed=4, batch=2)
    layers = net.style_layers()
    modulated = [net.conv1.conv, net.to_rgb1.conv, *(m.conv for j in range(len(net.to_rgbs))
                                                     for m in (net.convs[2 * j], net.convs[2 * j + 1], net.to_rgbs[j]))]
    assert [w for _, w in layers] == [m.modulation.weight.shape[0] for m in modulated]
    assert [e for e, _ in layers][-1] == gan.n_latent - 1
    plain = gan.render(latent)
    zeros = tuple(torch.zeros(2, w) for _, w in layers)
    torch.testing.assert_close(gan.render(StyleLatent(latent.w, latent.noise, zeros)), plain, rtol=0, atol=0)
    last = [None] * (len(layers) - 1) + [torch.full((1, layers[-1][1]), 0.5)]  # the last toRGB: colour only
    moved = gan.render(StyleLatent(latent.w, latent.noise, tuple(last)))
    assert (moved - plain).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="modulated convs"):
        net.synthesis(latent.w, list(latent.noise), [None])
    wrong = StyleLatent(latent.w, latent.noise, tuple(torch.zeros(2, w + 1) for _, w in layers))
    with pytest.raises(InputValueError, match="style offsets"):
        gan_sampling.render(gan, wrong)


def test_styleclip_in_s_moves_the_style_vectors_of_the_chosen_entries_only(gan, clip):
    obj = ClipObjective(clip, None, ObjectiveSettings(views=2, noised_weight=0.0))
    start = gan_sampling.sample_latents(gan, seed=2, batch=2)
    text = "a large blue square in the center on a red background"
    before = obj.text_loss(gan.render(start), text, torch.Generator().manual_seed(5)).mean()
    settings = styleclip.StyleCLIPSettings(steps=12, lr=0.2, l2_lambda=0.0, layers=(3, 4), space="s")
    edited, images = styleclip.edit(gan, start, obj, text, settings, generator=torch.Generator().manual_seed(0))
    assert torch.equal(edited.w, start.w) and edited.noise is start.noise
    moved = [s is not None and bool(s.abs().amax() > 0) for s in edited.styles]
    assert moved == [entry in (3, 4) for entry, _ in gan.net.style_layers()]
    torch.testing.assert_close(gan.render(edited), images)
    assert obj.text_loss(images, text, torch.Generator().manual_seed(5)).mean() < before
    tied, _ = styleclip.edit(gan, start, obj, text, dataclasses.replace(settings, l2_lambda=10.0),
                             generator=torch.Generator().manual_seed(0))
    size = [sum(float(s.norm()) for s in e.styles if s is not None) for e in (tied, edited)]
    assert size[0] < size[1]  # λ weighs the squared offsets in S
    again, _ = styleclip.edit(gan, edited, obj, text, dataclasses.replace(settings, layers=(1,)),
                              generator=torch.Generator().manual_seed(0))
    kept = [k for k, (entry, _) in enumerate(gan.net.style_layers()) if entry in (3, 4)]
    assert all(torch.equal(again.styles[k], edited.styles[k]) for k in kept)  # a second edit adds to the first
    with pytest.raises(InputValueError, match="latent space") as err:
        styleclip.edit(gan, start, obj, text, dataclasses.replace(settings, space="z"))
    assert err.value.input == "space"
    with pytest.raises(InputValueError, match="style offsets from a StyleCLIP edit in S"):
        nada.adapt(gan, obj, "a red circle", "a blue circle", nada.NadaSettings(steps=1), pivots=edited)


@pytest.mark.parametrize("text, message", [("5-x", "not a W+ index"), ("7-5", "runs backwards"),
                                           ("0-100000000", "beyond any generator"), ("-1", "not a W+ index")])
def test_unreadable_layer_lists_are_input_errors_before_any_work(text, message):
    with pytest.raises(InputValueError, match=re.escape(message)) as err:
        styleclip.parse_layers(text)
    assert err.value.input == "layers"


def test_layers_the_generator_lacks_are_input_errors(gan, clip):
    assert styleclip.parse_layers(" all ") is None and styleclip.parse_layers("") is None
    assert styleclip.parse_layers("6,5-6,2") == (2, 5, 6)
    obj = ClipObjective(clip, None, ObjectiveSettings(views=1, noised_weight=0.0))
    start = gan_sampling.sample_latents(gan, seed=2, batch=1)
    with pytest.raises(InputValueError, match=f"0-{gan.n_latent - 1}"):
        styleclip.edit(gan, start, obj, "a red circle", styleclip.StyleCLIPSettings(steps=1, layers=(gan.n_latent,)))


def test_nada_trains_a_copy_on_the_chosen_layers_only(gan, clip):
    obj = ClipObjective(clip, None, ObjectiveSettings(views=2, noised_weight=0.0))
    before = {k: v.clone() for k, v in gan.net.state_dict().items()}
    settings = nada.NadaSettings(steps=3, layers=1, batch=2, lr=0.05)
    gen = torch.Generator().manual_seed(0)
    adapted = nada.adapt(gan, obj, "a red circle", "a blue circle", settings, generator=gen)
    after = gan.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the input generator is untouched
    new = adapted.net.state_dict()
    changed = {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("convs.") else "")
               for k in new if not torch.equal(new[k], before[k])}
    assert changed and len(changed) <= 3  # at most one styled conv per step
    assert not any(k.startswith(("style.", "to_rgb")) for k in new if not torch.equal(new[k], before[k]))
    assert isinstance(adapted, GanModel) and torch.equal(adapted.w_avg, gan.w_avg) and "NADA" in adapted.origin
    assert not any(p.requires_grad for p in adapted.net.parameters())
    assert nada.styled_convs(gan.net)[-1] is None and len(nada.styled_convs(gan.net)) == gan.n_latent


def test_nada_trains_only_the_convolutions_of_the_entries_it_may(gan, clip):
    obj = ClipObjective(clip, None, ObjectiveSettings(views=1, noised_weight=0.0))
    before = _snapshot(gan)
    settings = nada.NadaSettings(steps=2, layers=0, batch=2, lr=0.05, trainable_layers=(2,))
    adapted = nada.adapt(gan, obj, "a red circle", "a blue circle", settings,
                         generator=torch.Generator().manual_seed(0))
    allowed = {id(p) for p in nada.styled_convs(adapted.net)[2].parameters()}
    moved = [name for name, p in adapted.net.named_parameters() if not torch.equal(p, before[name])]
    assert moved and all(id(dict(adapted.net.named_parameters())[name]) in allowed for name in moved)
    # an entry that styles only the image output leaves nothing to train: said before any work
    with pytest.raises(InputValueError) as err:
        nada.adapt(gan, obj, "a", "b", nada.NadaSettings(steps=1, trainable_layers=(gan.n_latent - 1,)))
    assert err.value.input == "trainable_layers"


def test_nada_trains_on_the_pivots_beside_its_samples(gan, clip):
    """The images to be edited (their inverted latents) are in every step's batch, rendered as they are."""
    obj = ClipObjective(clip, None, ObjectiveSettings(views=1, noised_weight=0.0))
    pivots = gan_sampling.sample_latents(gan, seed=5, batch=2)
    seen: list[torch.Tensor] = []
    nada.adapt(gan, obj, "a red circle", "a blue circle", nada.NadaSettings(steps=1, batch=3, layers=0),
               pivots=pivots, generator=torch.Generator().manual_seed(0),
               callback=lambda step, total, images: seen.append(images))
    assert seen[0].shape[0] == 3 + 2
    torch.testing.assert_close(seen[0][3:], gan.render(pivots).clamp(-1, 1))
    other = StyleLatent(torch.zeros(1, gan.n_latent + 1, gan.net.style_dim))
    with pytest.raises(InputValueError, match="latent"):
        nada.adapt(gan, obj, "a", "b", nada.NadaSettings(steps=1), pivots=other)


def test_latents_render_only_on_generators_of_their_layout(gan):
    other = GanModel(tiny_generator(1, StyleGANConfig(size=8, style_dim=8, n_mlp=1, channels=(8, 8))),
                     torch.zeros(8))
    latent = gan_sampling.sample_latents(gan, seed=0, batch=1)
    assert gan_sampling.render(gan, latent).shape == (1, 3, 16, 16)
    with pytest.raises(InputValueError, match="latent"):
        gan_sampling.render(other, latent)
    # a seed gives the same latent every time, drawn on the CPU
    again = gan_sampling.sample_latents(gan, seed=0, batch=1)
    assert torch.equal(latent.w, again.w) and all(torch.equal(a, b) for a, b in zip(latent.noise, again.noise,
                                                                                        strict=True))


def test_one_latent_of_a_batch_renders_as_it_did_in_the_batch(gan):
    latent = gan_sampling.sample_latents(gan, seed=6, batch=3)
    torch.testing.assert_close(gan.render(latent.item(1)), gan.render(latent)[1:2])
    fixed = StyleLatent(latent.w)  # no noise of its own: the generator's fixed maps, for the item too
    torch.testing.assert_close(gan.render(fixed.item(2)), gan.render(fixed)[2:3])


def test_a_blended_render_keeps_the_reference_outside_the_edit_region_and_shows_the_edit_inside(gan):
    edited, reference = gan_sampling.sample_latents(gan, 1, 2), gan_sampling.sample_latents(gan, 2, 2)
    plain, ref = gan.render(edited), gan.render(reference)
    region = torch.zeros(2, 1, 16, 16)
    region[0, :, 2:9, 3:12] = 1.0
    region[1, :, 8:, :] = 1.0
    # blended from the last resolution: exactly the edit inside, exactly the reference outside
    out = gan_sampling.render_keeping(gan, edited, gan, reference, region, from_size=16)
    torch.testing.assert_close(out * region, plain * region)
    torch.testing.assert_close(out * (1 - region), ref * (1 - region))
    # blended from 4 px: coarser maps carry the seam, so the kept side is close to the reference, not equal
    coarse = gan_sampling.render_keeping(gan, edited, gan, reference, region, from_size=4)
    kept = (1 - region).bool().expand_as(coarse)
    assert (coarse - ref).abs()[kept].mean() < 0.5 * (plain - ref).abs()[kept].mean()
    # nothing to show keeps the reference whole; everything to show is the plain render, at any resolution
    torch.testing.assert_close(gan_sampling.render_keeping(gan, edited, gan, reference, torch.zeros(1, 1, 16, 16), 4),
                               ref)
    torch.testing.assert_close(gan_sampling.render_keeping(gan, edited, gan, reference, torch.ones(1, 1, 16, 16), 4),
                               plain)
    # one reference latent serves a batch of edits
    one = gan_sampling.render_keeping(gan, edited, gan, reference.item(0), torch.zeros(1, 1, 16, 16), 16)
    torch.testing.assert_close(one, ref[:1].expand(2, -1, -1, -1))


def test_blended_renders_refuse_other_architectures_batches_and_masks_by_input(gan):
    latent = gan_sampling.sample_latents(gan, 0, 2)
    other = GanModel(tiny_generator(1, StyleGANConfig(size=16, style_dim=8, n_mlp=2, channels=(16, 12, 4))),
                     torch.zeros(8))
    region = torch.ones(1, 1, 16, 16)
    cases = [((gan, latent, other, latent, region), "reference_generator"),
             ((gan, latent, gan, gan_sampling.sample_latents(gan, 0, 3), region), "reference_latent"),
             ((gan, latent, gan, latent, torch.ones(3, 1, 16, 16)), "edit_region"),
             ((gan, latent, gan, latent, torch.ones(1, 3, 16, 16)), "edit_region")]
    for args, name in cases:
        with pytest.raises(InputValueError) as err:
            gan_sampling.render_keeping(*args, from_size=8)
        assert err.value.input == name


# ------------------------------------------------------------------------------------------------ pivotal tuning
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
