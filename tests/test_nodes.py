"""The built-in generation nodes, run through the Engine on small API-format workflows.

Every model comes from tiny random checkpoints (tests/fixtures_models.py) in a temporary models
directory that NODEGRAPH_MODELS points at, so these tests never depend on the bundled models.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nodegraph.engine.api import Engine
from nodegraph.engine.context import RunContext
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.registry import Registry
from nodegraph.errors import InputValueError, Interrupted, NodeExecutionError, WorkflowError
from nodegraph.generate.embeddings import slerp, text_direction
from nodegraph.models.checkpoint import load_state_dict
from nodegraph.world.scorer import score

from fixtures_models import DECODER_SIZE, HIGH_RES, build_tiny_models, write_decoder

PROMPT = "a large red circle on the left on a blue background"


class FixedEmbed(Node):
    """Test source of IMAGE_EMBED: `batch` seeded random unit vectors of any width."""

    category = "test"
    inputs = {
        "width": In("INT", default=128, min=1, max=4096),
        "batch": In("INT", default=1, min=1, max=64),
        "seed": In("INT", default=0, min=0),
    }
    outputs = (Out("IMAGE_EMBED", "image_embed"),)

    def run(self, ctx: RunContext, width: int, batch: int, seed: int) -> tuple[torch.Tensor]:
        return (unit_vectors(batch, width, seed),)


def unit_vectors(batch: int, width: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(batch, width, generator=torch.Generator().manual_seed(seed)), dim=-1)


def make_engine(root: Path) -> Engine:
    registry = Registry.discover(plugins=False)
    registry.register(FixedEmbed)
    (root / "input").mkdir(parents=True, exist_ok=True)
    return Engine("cpu", input_dir=root / "input", output_dir=root / "output", registry=registry)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def models_env(tiny_models):
    """NODEGRAPH_MODELS -> the tiny models for the whole module (a test may point it elsewhere)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NODEGRAPH_MODELS", str(tiny_models["clip"].parent))
        yield tiny_models


@pytest.fixture(scope="module")
def shared(models_env, tmp_path_factory) -> Engine:
    """One engine for the tests that do not care what is cached: models load once for all of them."""
    return make_engine(tmp_path_factory.mktemp("engine"))


@pytest.fixture
def fresh(models_env, tmp_path) -> Engine:
    """An engine with an empty cache."""
    return make_engine(tmp_path)


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def text_graph(prompt: str = PROMPT, **extra: dict) -> dict[str, Any]:
    """CLIP + one caption, plus whatever nodes the test adds."""
    return {"clip": node("CLIPLoader"), "text": node("TextEncode", clip=["clip", 0], text=prompt), **extra}


def preview(source: str, index: int = 0) -> dict[str, Any]:
    return node("Preview", value=[source, index])


def value(result, node_id: str = "out") -> Any:
    return result.outputs[node_id]["value"]


def failure(engine: Engine, workflow: dict, **kw) -> NodeExecutionError:
    """Run a workflow that must fail at run time because of a user's input value (CLI exit 2)."""
    with pytest.raises(NodeExecutionError) as info:
        engine.run(workflow, **kw)
    assert info.value.is_input_error, info.value
    return info.value


# ------------------------------------------------------------------------------------- whole graph
def dalle2_graph() -> dict[str, Any]:
    nodes = text_graph(
        prior_model=node("PriorLoader"),
        decoder_model=node("DecoderLoader", checkpoint=""),
        upsampler_model=node("UpsamplerLoader"),
        noise=node("Noise", seed=1, batch_size=2),
        prior=node("Prior", prior=["prior_model", 0], text=["text", 0], noise=["noise", 0], steps=3),
        decode=node("Decoder", decoder=["decoder_model", 0], noise=["noise", 0], text=["text", 0],
                    image_embed=["prior", 0], steps=3),
        upsample=node("Upsample", upsampler=["upsampler_model", 0], images=["decode", 0], noise=["noise", 0], steps=2),
        save=node("SaveImage", images=["upsample", 0], filename_prefix="dalle2"),
    )
    return {"nodes": nodes, "params": {"seed": {"node": "noise", "input": "seed"}}}


def test_text_prior_decoder_upsample_graph_writes_pngs_and_a_new_seed_reruns_only_what_follows_noise(fresh):
    first = fresh.run(dalle2_graph())
    assert len(first.files) == 2  # one PNG per image of the noise batch
    for path in first.files:
        with Image.open(path) as png:
            assert png.size == (HIGH_RES, HIGH_RES)  # the upsampler's resolution
            assert "prompt" in png.text  # the workflow travels with the image
    again = fresh.run(dalle2_graph(), params={"seed": 2})
    assert set(again.executed) == {"noise", "prior", "decode", "upsample", "save"}
    assert set(again.cached) == {"clip", "text", "prior_model", "decoder_model", "upsampler_model"}
    assert len(again.files) == 2 and not set(again.files) & set(first.files)
    with Image.open(first.files[0]) as a, Image.open(again.files[0]) as b:
        assert a.tobytes() != b.tobytes()  # the new seed made new images


# ------------------------------------------------------------------------------------------ loaders
@pytest.fixture
def models_dir(tmp_path, monkeypatch, tiny_models) -> Path:
    """A models directory of this test's own (decoder only), with a decoder file just outside it."""
    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(tiny_models["decoder"], root / "decoder.safetensors")
    shutil.copy(tiny_models["decoder"], tmp_path / "outside.safetensors")
    monkeypatch.setenv("NODEGRAPH_MODELS", str(root))
    return root


def loader_graph(class_type: str = "DecoderLoader", checkpoint: str = "") -> dict[str, Any]:
    return {"model": node(class_type, checkpoint=checkpoint), "out": preview("model")}


def test_empty_checkpoint_name_loads_the_default_file(fresh, models_dir):
    (models_dir / "other.safetensors").write_bytes(b"not a checkpoint")
    model = value(fresh.run(loader_graph()))
    assert model.kind == "decoder"
    expected = load_state_dict(models_dir / "decoder.safetensors", dtype=torch.float32)
    assert torch.equal(model.net.state_dict()["inp.weight"], expected["inp.weight"])


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ("missing.safetensors", "no decoder checkpoint at"),
        ("../outside.safetensors", "no absolute paths or '..'"),
        ("ABSOLUTE", "no absolute paths or '..'"),
        ("link.safetensors", "resolves outside the models directory"),
    ],
    ids=["missing", "dotdot", "absolute", "symlink-out"],
)
def test_checkpoint_outside_the_models_dir_or_missing_is_an_invalid_input(fresh, models_dir, checkpoint, message):
    outside = models_dir.parent / "outside.safetensors"
    (models_dir / "link.safetensors").symlink_to(outside)
    name = str(outside) if checkpoint == "ABSOLUTE" else checkpoint
    issues = fresh.validate(loader_graph(checkpoint=name))
    assert [(i.node, i.input, i.type) for i in issues] == [("model", "checkpoint", "invalid_value")]
    assert message in issues[0].message
    # Running it is refused the same way, before anything runs (exit 2 on the command line).
    with pytest.raises(WorkflowError) as info:
        fresh.run(loader_graph(checkpoint=name))
    assert info.value.errors == issues


def test_missing_default_checkpoint_says_how_to_train_it(fresh, models_dir):
    issues = fresh.validate(loader_graph("UpsamplerLoader"))
    assert [(i.node, i.input) for i in issues] == [("model", "checkpoint")]
    assert "upsampler.safetensors" in issues[0].message
    assert "python -m nodegraph.train upsampler" in issues[0].message


def test_checkpoint_of_the_wrong_kind_fails_with_a_clear_message(fresh, models_dir):
    shutil.copy(models_dir / "decoder.safetensors", models_dir / "mine.safetensors")
    err = failure(fresh, loader_graph("UpsamplerLoader", "mine.safetensors"))
    assert err.node_id == "model" and err.exception.input == "checkpoint"
    assert "holds a 'decoder' model, but a 'upsampler' model is needed" in str(err)
    err = failure(fresh, loader_graph("ClassifierLoader", "mine.safetensors"))
    assert "is not a nodegraph classifier checkpoint" in str(err) and err.exception.input == "checkpoint"


def test_replaced_checkpoint_is_reloaded_and_an_unchanged_one_is_cached(fresh, models_dir):
    path = models_dir / "decoder.safetensors"
    first = fresh.run(loader_graph())
    assert first.executed == ["model", "out"]
    assert fresh.run(loader_graph()).executed == []  # same file: the loaded model is reused
    stat = path.stat()
    write_decoder(path, seed=9)
    # Make sure the new file looks different even where mtime has a coarse resolution.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    reloaded = fresh.run(loader_graph())
    assert reloaded.executed == ["model", "out"]
    new = load_state_dict(path, dtype=torch.float32)["inp.weight"]
    assert torch.equal(value(reloaded).net.state_dict()["inp.weight"], new)
    assert not torch.equal(value(first).net.state_dict()["inp.weight"], new)


# ------------------------------------------------------------------------------------- TextEncode
@pytest.mark.parametrize(
    ("text", "message"),
    [("a red circle " * 12, "tokens long but this CLIP reads at most 32"),
     ("a" * 2001, "2001 characters; at most 2000")],
    ids=["tokens", "characters"],
)
def test_too_long_caption_is_an_error_naming_text(shared, text, message):
    err = failure(shared, text_graph(text, out=preview("text")))
    assert err.node_id == "text" and err.exception.input == "text"
    assert message in str(err)


# ---------------------------------------------------------------------------------------- Decoder
def decoder_graph(**decoder_inputs: Any) -> dict[str, Any]:
    return text_graph(
        decoder_model=node("DecoderLoader"),
        inpaint_model=node("InpaintLoader"),
        noise=node("Noise", seed=3, batch_size=1),
        decode=node("Decoder", **{"decoder": ["decoder_model", 0], "steps": 2, **decoder_inputs}),
        out=preview("decode"),
    )


def test_decoder_without_noise_or_latent_asks_for_noise(shared):
    err = failure(shared, decoder_graph(text=["text", 0]))
    assert err.exception.input == "noise" and "connect a Noise node" in str(err)


def test_decoder_refuses_guidance_together_with_text(shared):
    graph = decoder_graph(text=["text", 0], noise=["noise", 0], guidance=["guide", 0])
    graph["guide"] = node("GuidanceCombine", text_1=["text", 0])
    err = failure(shared, graph)
    assert err.exception.input == "guidance" and "not both" in str(err)


def test_decoder_refuses_an_inpainting_model_before_running(shared):
    issues = shared.validate(decoder_graph(decoder=["inpaint_model", 0], noise=["noise", 0], text=["text", 0]))
    assert [(i.node, i.input, i.type) for i in issues] == [("decode", "decoder", "type_mismatch")]
    assert "takes DECODER" in issues[0].message and "INPAINT_MODEL" in issues[0].message


def test_decoder_draws_one_image_per_embedding_when_the_noise_batch_is_one(shared):
    graph = decoder_graph(noise=["noise", 0], image_embed=["embeds", 0], guidance_scale=2.0)
    graph["embeds"] = node("FixedEmbed", batch=3, seed=1)
    images = value(shared.run(graph))
    assert images.shape == (3, 3, DECODER_SIZE, DECODER_SIZE)
    assert images.min() >= -1 and images.max() <= 1
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])


def inverted_graph(**decoder_inputs: Any) -> dict[str, Any]:
    graph = decoder_graph(latent=["invert", 0], image_embed=["embed", 0], **decoder_inputs)
    graph.update(
        image=node("RenderScene", caption=PROMPT, resolution=DECODER_SIZE),
        embed=node("CLIPImageEmbed", clip=["clip", 0], images=["image", 0]),
        invert=node("DDIMInvert", decoder=["decoder_model", 0], images=["image", 0], image_embed=["embed", 0],
                    steps=4),
    )
    return graph


def test_decoder_on_an_inverted_latent_draws_variations_only_with_eta(shared, tmp_path):
    graph = inverted_graph(noise=["noise", 0], eta=0.0)
    graph["noise"]["inputs"]["batch_size"] = 3
    # fp32: equal up to float rounding (with several threads a batch row may reduce in another order). At the
    # default precision (auto: bf16 convolutions) an odd batch's rows can round differently, and this tiny
    # random decoder amplifies that (0.12 seen; the bundled decoder's rows agree to 1/255).
    graph["decoder_model"]["inputs"]["dtype"] = "fp32"
    same = value(shared.run(graph))
    assert same.shape[0] == 3 and (same - same[:1]).abs().max() < 1e-4
    graph["decode"]["inputs"]["eta"] = 1.0
    varied = value(shared.run(graph))
    pairwise = [(varied[i] - varied[j]).abs().mean() for i, j in ((0, 1), (1, 2), (0, 2))]
    assert varied.shape[0] == 3 and min(pairwise) > 1e-3
    torch.testing.assert_close(value(make_engine(tmp_path).run(graph)), varied)  # same seed, no cache: same images
    graph["noise"]["inputs"]["seed"] = 4
    assert (value(shared.run(graph)) - varied).abs().mean() > 1e-3


def test_decoder_on_an_inverted_latent_needs_ddim(shared):
    err = failure(shared, inverted_graph(sampler="dpmpp_2m"))
    assert err.exception.input == "sampler" and "'ddim'" in str(err)


def test_guidance_nodes_steer_the_decoder(shared):
    # Composable CFG over two captions plus classifier and noised-CLIP terms, in one Decoder.
    graph = decoder_graph(noise=["noise", 0], guidance=["guide", 0])
    graph.update(
        other=node("TextEncode", clip=["clip", 0], text="a small green square at the top on a white background"),
        classifier_model=node("ClassifierLoader"),
        noised_model=node("NoisedCLIPLoader"),
        by_class=node("ClassifierGuidance", classifier=["classifier_model", 0], caption="a red circle", scale=2.0),
        by_clip=node("CLIPGuidance", text=["text", 0], mode="noised", noised_clip=["noised_model", 0], scale=10.0),
        guide=node("GuidanceCombine", text_1=["text", 0], weight_1=3.0, text_2=["other", 0], weight_2=-1.0,
                   classifier=["by_class", 0], clip=["by_clip", 0]),
        plain=node("Decoder", decoder=["decoder_model", 0], noise=["noise", 0], text=["text", 0], steps=2,
                   guidance_scale=3.0),
        plain_out=preview("plain"),
    )
    result = shared.run(graph)
    guided, plain = value(result), value(result, "plain_out")
    assert guided.shape == plain.shape == (1, 3, DECODER_SIZE, DECODER_SIZE)
    assert not torch.allclose(guided, plain, atol=1e-3)  # the extra terms changed the sample


def test_edit_guidance_keeps_an_inversion_exact_where_target_equals_source(shared):
    """Unlike CFG at scale > 1, edit guidance decodes an unchanged condition exactly as the plain
    conditional decode (the inversion's reconstruction), at any strength; a changed target moves it."""
    graph = inverted_graph(guidance_scale=1.0)
    # The algebra is checked in fp32. At the loaders' default precision (auto: bf16 convolutions) a batch of one
    # and the guidance's batch of two round differently, which (1 + s)·ε − s·ε then amplifies (0.05 seen).
    graph["decoder_model"]["inputs"]["dtype"] = "fp32"
    graph.update(
        edit=node("EditGuidance", target_image_embed=["embed", 0], source_image_embed=["embed", 0], strength=2.0),
        edited=node("Decoder", decoder=["decoder_model", 0], latent=["invert", 0], guidance=["edit", 0], steps=4),
        edited_out=preview("edited"),
        other=node("TextEncode", clip=["clip", 0], text="a small green square at the top on a white background"),
        by_text=node("EditGuidance", target_text=["other", 0], target_image_embed=["embed", 0],
                     source_image_embed=["embed", 0], strength=2.0),
        moved=node("Decoder", decoder=["decoder_model", 0], latent=["invert", 0], guidance=["by_text", 0], steps=4),
        moved_out=preview("moved"),
    )
    result = shared.run(graph)
    plain = value(result)
    # Not bit-exact: (1 + s)·ε − s·ε in fp32 from a batched forward is ε up to a few ulp, which the DDIM steps
    # amplify by up to 1/√ᾱ (1.08e-5 seen with torch 2.14). A changed condition moves pixels by > 1e-3, so a
    # 1e-4 bound still tells "unchanged" from "edited" with a 10x margin.
    torch.testing.assert_close(value(result, "edited_out"), plain, atol=1e-4, rtol=0)
    assert (value(result, "moved_out") - plain).abs().max() > 1e-3


def test_edit_guidance_without_a_source_says_what_to_connect(shared):
    graph = text_graph(edit=node("EditGuidance", target_text=["text", 0]), out=preview("edit"))
    err = failure(shared, graph)
    assert err.exception.input == "source_text" and "inverted" in str(err)


# ----------------------------------------------------------------------------------------- Inpaint
RECT = {"x": 8, "y": 4, "w": 12, "h": 16}


@pytest.mark.parametrize(("loader", "paint"), [
    ("InpaintLoader", node("Inpaint", model=["model", 0], images=["image", 0], mask=["mask", 0], noise=["noise", 0],
                           text=["text", 0], steps=3)),
    ("DecoderLoader", node("RePaint", decoder=["model", 0], images=["image", 0], mask=["mask", 0],
                           noise=["noise", 0], text=["text", 0], steps=3, jump_length=2, resample=2)),
], ids=["Inpaint", "RePaint"])
def test_inpaint_regenerates_only_the_masked_region_bit_exactly(shared, loader, paint):
    graph = text_graph(
        model=node(loader),
        image=node("RenderScene", caption=PROMPT, resolution=DECODER_SIZE),
        mask=node("MaskFromRect", width=DECODER_SIZE, height=DECODER_SIZE, **RECT),
        noise=node("Noise", seed=5, batch_size=2),
        paint=paint,
        out=preview("paint"),
        src=preview("image"),
    )
    result = shared.run(graph)
    out, src = value(result), value(result, "src")
    assert out.shape == (2, 3, DECODER_SIZE, DECODER_SIZE)
    inside = torch.zeros(DECODER_SIZE, DECODER_SIZE, dtype=torch.bool)
    inside[RECT["y"] : RECT["y"] + RECT["h"], RECT["x"] : RECT["x"] + RECT["w"]] = True
    # MASK = 1 marks what to generate: everything else is the input, to the bit.
    keep = (~inside).expand_as(out)
    assert torch.equal(out[keep], src.expand_as(out)[keep])
    assert (out - src)[inside.expand_as(out)].abs().mean() > 0.05


@pytest.mark.parametrize(("loader", "paint", "wanted"), [
    ("DecoderLoader", "Inpaint", "INPAINT_MODEL"), ("InpaintLoader", "RePaint", "DECODER")])
def test_inpainting_nodes_refuse_the_other_kind_of_model_before_running(shared, loader, paint, wanted):
    graph = text_graph(
        model=node(loader),
        image=node("RenderScene", caption=PROMPT, resolution=DECODER_SIZE),
        mask=node("MaskFromRect", width=DECODER_SIZE, height=DECODER_SIZE),
        noise=node("Noise"),
        paint=node(paint, **{"model" if paint == "Inpaint" else "decoder": ["model", 0]}, images=["image", 0],
                   mask=["mask", 0], noise=["noise", 0], steps=2),
        out=preview("paint"),
    )
    issues = shared.validate(graph)
    assert [(i.node, i.type) for i in issues] == [("paint", "type_mismatch")]
    assert wanted in issues[0].message and loader in issues[0].message


# ---------------------------------------------------------------------------------------- Guidance
def test_guidance_combine_with_nothing_connected_is_an_error(shared):
    err = failure(shared, {"guide": node("GuidanceCombine"), "out": preview("guide")})
    assert "nothing to guide with" in str(err)


def test_classifier_guidance_with_an_unreadable_prompt_names_prompt(shared):
    graph = {
        "classifier": node("ClassifierLoader"),
        "guide": node("ClassifierGuidance", classifier=["classifier", 0], caption="make it pretty"),
        "out": preview("guide"),
    }
    err = failure(shared, graph)
    assert err.exception.input == "caption" and "no Shapes World attribute" in str(err)


def test_clip_guidance_on_x0_without_a_clip_names_mode(shared):
    err = failure(shared, text_graph(guide=node("CLIPGuidance", text=["text", 0], mode="x0"), out=preview("guide")))
    assert err.exception.input == "mode" and "needs clip" in str(err)


# ------------------------------------------------------------------------------------------- Masks
def test_mask_from_rect_geometry(shared):
    result = shared.run({"mask": node("MaskFromRect", width=20, height=10, x=15, y=2, w=10, h=3),
                         "out": preview("mask")})
    mask = value(result)
    assert mask.shape == (1, 1, 10, 20)
    expected = torch.zeros(10, 20)
    expected[2:5, 15:20] = 1  # clipped at the right edge
    assert torch.equal(mask[0, 0], expected)


@pytest.mark.parametrize(("x", "y", "bad"), [(20, 0, "x"), (0, 10, "y")])
def test_mask_from_rect_starting_outside_names_the_input(shared, x, y, bad):
    err = failure(shared, {"mask": node("MaskFromRect", width=20, height=10, x=x, y=y), "out": preview("mask")})
    assert err.exception.input == bad and "outside the 20x10 mask" in str(err)


def test_mask_from_image_thresholds_channels_and_invert_mask(shared):
    def masks(prompt: str, channel: str, threshold: float) -> torch.Tensor:
        graph = {
            "image": node("RenderScene", caption=prompt, resolution=32),
            "mask": node("MaskFromImage", images=["image", 0], channel=channel, threshold=threshold),
            "inverted": node("InvertMask", mask=["mask", 0]),
            "out": preview("mask"),
            "inv": preview("inverted"),
        }
        result = shared.run(graph)
        mask, inverted = value(result), value(result, "inv")
        assert mask.shape == (1, 1, 32, 32)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(inverted, 1 - mask)
        return mask[0, 0]

    centre, corner = (16, 16), (0, 0)
    red_on_blue = "a large red square in the center on a blue background"
    red = masks(red_on_blue, "red", 0.5)
    assert red[centre] == 1 and red[corner] == 0
    blue = masks(red_on_blue, "blue", 0.5)
    assert blue[centre] == 0 and blue[corner] == 1
    white_on_black = "a large white square in the center on a black background"
    lum = masks(white_on_black, "luminance", 0.5)
    assert lum[centre] == 1 and lum[corner] == 0
    # Strictly brighter than the threshold: nothing exceeds 1, and black (25/255) exceeds 0.
    assert masks(white_on_black, "luminance", 1.0).sum() == 0
    assert masks(white_on_black, "luminance", 0.0).sum() == 32 * 32


@pytest.mark.parametrize("prompt", ["a small red triangle on the left on a blue background",
                                    "a large white cross in the center on a black background",
                                    "a large yellow circle at the bottom on a white background"])
def test_object_mask_finds_the_shape_on_its_ground_and_the_background_is_its_complement(shared, prompt):
    from nodegraph.world.captions import parse_prompt
    from nodegraph.world.scene import PALETTE

    graph = {
        "image": node("RenderScene", caption=prompt, resolution=32),
        "tight": node("ObjectMask", images=["image", 0], grow=0),
        "grown": node("ObjectMask", images=["image", 0], grow=1),
        "ground": node("ObjectMask", images=["image", 0], region="background", grow=1),
        "all": node("ObjectMask", images=["image", 0], region="all"),
        "t": preview("tight"), "g": preview("grown"), "b": preview("ground"), "i": preview("image"),
        "a": preview("all"),
    }
    result = shared.run(graph)
    assert bool((value(result, "a") == 1).all())
    tight, grown, ground, image = (value(result, k)[0, 0] if k != "i" else value(result, k)[0] for k in "tgbi")
    spec = parse_prompt(prompt)
    shape = torch.tensor(PALETTE[spec.shapes[0].color], dtype=torch.float32).view(3, 1, 1) / 127.5 - 1
    ground_colour = torch.tensor(PALETTE[spec.background], dtype=torch.float32).view(3, 1, 1) / 127.5 - 1
    # every pixel nearer the shape's colour than the ground's is the object, every pure ground pixel is not
    nearer_shape = (image - shape).abs().sum(0) < (image - ground_colour).abs().sum(0)
    pure_ground = (image - ground_colour).abs().amax(0) < 1e-3
    assert nearer_shape.any() and bool(tight[nearer_shape].all()) and not tight[pure_ground].any()
    # growing covers the anti-aliased edge and one more pixel; the background side is the grown object's complement
    assert bool((grown >= tight).all()) and grown.sum() > tight.sum()
    assert torch.equal(ground, 1 - grown)


def test_object_mask_refuses_what_it_cannot_read_naming_the_input():
    from nodegraph.generate.masks import object_mask

    for images, name in ((torch.zeros(1, 3, 2, 2), "images"), (torch.zeros(1, 1, 8, 8), "images")):
        with pytest.raises(InputValueError) as err:
            object_mask(images)
        assert err.value.input == name
    with pytest.raises(InputValueError) as err:
        object_mask(torch.zeros(1, 3, 8, 8), grow=-1)
    assert err.value.input == "grow"


# ------------------------------------------------------------------------------------------- World
@pytest.mark.parametrize(
    ("prompt", "full"),
    [
        (PROMPT, PROMPT),
        ("a red circle on a blue background", "a large red circle in the center on a blue background"),
        ("a small green square and a large yellow triangle, on a black background",
         "a small green square on the left and a large yellow triangle on the right, on a black background"),
    ],
    ids=["one", "defaults", "two"],
)
def test_render_scene_draws_what_the_prompt_names(shared, prompt, full):
    image = value(shared.run({"image": node("RenderScene", caption=prompt, resolution=64), "out": preview("image")}))
    assert image.shape == (1, 3, 64, 64)
    # Unnamed size and position default to large and centre (left / right for two shapes).
    result = score(image[0], full)
    assert result.all_named_right and result.n_correct == result.n_named, result.checks


@pytest.mark.parametrize(
    ("prompt", "message"),
    [("a cat on a mat", "not a canonical Shapes World prompt"), ("a red circle on a red background", "must differ")],
)
def test_render_scene_rejects_prompts_it_cannot_draw(shared, prompt, message):
    err = failure(shared, {"image": node("RenderScene", caption=prompt), "out": preview("image")})
    assert err.exception.input == "caption" and message in str(err)


def test_score_image_records_attribute_accuracy(shared):
    def accuracy(prompt: str) -> float:
        graph = {"image": node("RenderScene", caption=PROMPT, resolution=32),
                 "score": node("ScoreImage", images=["image", 0], caption=prompt)}
        recorded = shared.run(graph).outputs["score"]
        assert recorded["per_attribute"]["color"] in (0.0, 1.0)
        return recorded["attribute_accuracy"]

    assert accuracy(PROMPT) == 1.0
    assert accuracy(PROMPT.replace("red", "green")) == pytest.approx(4 / 5)  # only the colour is wrong
    err = failure(shared, {"image": node("RenderScene"), "score": node("ScoreImage", images=["image", 0],
                                                                        caption="blue things")})
    assert err.exception.input == "caption"


# -------------------------------------------------------------------------------------- Embeddings
def mix_graph(a: dict, b: dict, **mix: Any) -> dict[str, Any]:
    return {"a": node("FixedEmbed", **a), "b": node("FixedEmbed", **b),
            "mix": node("EmbedMix", a=["a", 0], b=["b", 0], **mix), "out": preview("mix")}


def test_embed_mix_outputs_count_embeddings_t_major(shared):
    a, b = unit_vectors(2, 128, 1), unit_vectors(2, 128, 2)
    out = value(shared.run(mix_graph({"batch": 2, "seed": 1}, {"batch": 2, "seed": 2}, t_start=0.0, t_end=1.0,
                                     count=3)))
    assert out.shape == (6, 128)
    for i, t in enumerate((0.0, 0.5, 1.0)):
        torch.testing.assert_close(out[2 * i : 2 * i + 2], slerp(a, b, t))
    single = value(shared.run(mix_graph({"seed": 1}, {"seed": 2}, t_start=0.3, count=1, mode="lerp")))
    torch.testing.assert_close(single, F.normalize(0.7 * a[:1] + 0.3 * b[:1], dim=-1))


@pytest.mark.parametrize(("a", "b", "message"), [({"width": 64}, {}, "widths differ (64 vs 128)"),
                                                ({"batch": 2}, {"batch": 3}, "batches 2 and 3 do not match")])
def test_embed_mix_rejects_mismatched_embeddings(shared, a, b, message):
    err = failure(shared, mix_graph(a, b))
    assert err.exception.input == "b" and message in str(err)


def test_text_diff_is_the_unit_direction_between_captions(shared):
    graph = text_graph(
        target=node("TextEncode", clip=["clip", 0], text=PROMPT.replace("red", "green")),
        diff=node("TextDiff", source=["text", 0], target=["target", 0]),
        out=preview("diff"),
        source_out=preview("text"),
        target_out=preview("target"),
    )
    result = shared.run(graph)
    direction = value(result)
    assert direction.shape == (1, 128)
    torch.testing.assert_close(direction.norm(dim=-1), torch.ones(1))
    source, target = value(result, "source_out"), value(result, "target_out")
    torch.testing.assert_close(direction, text_direction(source.embed, target.embed))


def arithmetic_graph(base: dict, subtract: dict, add: dict, **inputs: Any) -> dict[str, Any]:
    return {"base": node("FixedEmbed", **base), "subtract": node("FixedEmbed", **subtract),
            "add": node("FixedEmbed", **add),
            "shift": node("EmbedArithmetic", base=["base", 0], subtract=["subtract", 0], add=["add", 0], **inputs),
            "out": preview("shift")}


def test_embed_arithmetic_averages_each_side_then_moves_every_base_row(shared):
    base, sub, add = unit_vectors(2, 128, 3), unit_vectors(4, 128, 4), unit_vectors(4, 128, 5)
    out = value(shared.run(arithmetic_graph({"batch": 2, "seed": 3}, {"batch": 4, "seed": 4},
                                            {"batch": 4, "seed": 5}, weight=0.5)))
    assert out.shape == (2, 128)
    torch.testing.assert_close(out, F.normalize(base + 0.5 * (add.mean(0) - sub.mean(0)), dim=-1))


def test_embed_arithmetic_rejects_an_embedding_of_another_width(shared):
    err = failure(shared, arithmetic_graph({}, {"width": 64}, {}))
    assert err.exception.input == "subtract" and "widths differ (64 vs 128)" in str(err)


# ----------------------------------------------------------------------------- events and interrupts
def test_decoder_reports_every_step_with_a_preview(shared):
    events: list[dict] = []
    graph = decoder_graph(noise=["noise", 0], text=["text", 0], steps=4, guidance_scale=1.5)
    shared.run(graph, on_event=lambda kind, data: events.append(data) if kind == "progress" else None)
    decoder_events = [e for e in events if e["node"] == "decode"]
    assert [(e["value"], e["max"]) for e in decoder_events] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(isinstance(e["preview"], Image.Image) for e in decoder_events)


def test_interrupt_from_the_first_progress_event_stops_the_decoder_within_a_step(shared):
    graph = decoder_graph(noise=["noise", 0], text=["text", 0], steps=6)
    graph["noise"]["inputs"]["seed"] = 123  # not cached by another test
    events: list[tuple[str, dict]] = []

    def on_event(kind: str, data: dict) -> None:
        events.append((kind, data))
        if kind == "progress" and data["node"] == "decode" and data["value"] == 1:
            assert shared.interrupt()

    with pytest.raises(Interrupted):
        shared.run(graph, on_event=on_event)
    steps = [d["value"] for k, d in events if k == "progress" and d["node"] == "decode"]
    assert steps == [1]  # stopped at the next step, not at the end of sampling
    interrupted = [d for k, d in events if k == "execution_interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["node_id"] == "decode"
    # The engine is still usable and the interrupted node left nothing half-done in the cache.
    result = shared.run(graph)
    assert "decode" in result.executed
    assert value(result).shape == (1, 3, DECODER_SIZE, DECODER_SIZE)
