"""Every constant input of every built-in node, given its extreme and hostile values, either works or is
reported as the user's mistake (a validation issue, or a node input error: exit 2), never as a crash of
the node (exit 1) or an exception from inside the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodegraph.engine.api import Engine
from nodegraph.engine.registry import Registry
from nodegraph.engine.sockets import CONSTANT_TYPES
from nodegraph.errors import NodeExecutionError, WorkflowError

from fixtures_models import DECODER_SIZE, build_tiny_models

CAPTION = "a large red circle on the left on a blue background"
# One producer for every socket type; the planner keeps only what the node under test needs.
PRODUCERS: dict[str, dict[str, Any]] = {
    "p_clip": {"class_type": "CLIPLoader", "inputs": {}},
    "p_prior": {"class_type": "PriorLoader", "inputs": {}},
    "p_dec": {"class_type": "DecoderLoader", "inputs": {}},
    "p_inp": {"class_type": "InpaintLoader", "inputs": {}},
    "p_ups": {"class_type": "UpsamplerLoader", "inputs": {}},
    "p_cls": {"class_type": "ClassifierLoader", "inputs": {}},
    "p_nclip": {"class_type": "NoisedCLIPLoader", "inputs": {}},
    "p_image": {"class_type": "RenderScene", "inputs": {"caption": CAPTION, "resolution": DECODER_SIZE}},
    "p_mask": {"class_type": "MaskFromRect", "inputs": {"width": DECODER_SIZE, "height": DECODER_SIZE}},
    "p_text": {"class_type": "TextEncode", "inputs": {"clip": ["p_clip", 0], "text": CAPTION}},
    "p_embed": {"class_type": "CLIPImageEmbed", "inputs": {"clip": ["p_clip", 0], "images": ["p_image", 0]}},
    "p_noise": {"class_type": "Noise", "inputs": {}},
    "p_latent": {"class_type": "DDIMInvert", "inputs": {"decoder": ["p_dec", 0], "images": ["p_image", 0],
                                                         "steps": 2}},
    "p_guid": {"class_type": "GuidanceCombine", "inputs": {"text_1": ["p_text", 0]}},
    "p_cguid": {"class_type": "ClassifierGuidance", "inputs": {"classifier": ["p_cls", 0]}},
    "p_clipguid": {"class_type": "CLIPGuidance", "inputs": {"text": ["p_text", 0], "clip": ["p_clip", 0],
                                                            "mode": "x0", "cutn": 1}},
    "p_float": {"class_type": "Float", "inputs": {"value": 1.0}},
}
SOURCE = {"CLIP": "p_clip", "PRIOR": "p_prior", "DECODER": "p_dec", "INPAINT_MODEL": "p_inp", "UPSAMPLER": "p_ups",
          "CLASSIFIER": "p_cls", "NOISED_CLIP": "p_nclip", "IMAGE": "p_image", "MASK": "p_mask",
          "TEXT_EMBED": "p_text", "IMAGE_EMBED": "p_embed", "NOISE": "p_noise", "LATENT": "p_latent",
          "GUIDANCE": "p_guid", "CLASSIFIER_GUIDANCE": "p_cguid", "CLIP_GUIDANCE": "p_clipguid", "*": "p_float"}
# Optional links a node needs to get as far as using its constants.
NEEDED = {"Decoder": ("noise",), "CLIPGuidance": ("clip", "noised_clip"), "GuidanceCombine": ("text_1",),
          "EditGuidance": ("target_text", "source_text")}
HOSTILE_STRINGS = ["", "../../../etc/passwd", "nul\x00inside", "x" * 20_000, "ünï ☃ 𝔘", "\ud800 lone surrogate",
                   CAPTION]


def values_for(spec: Any) -> list[Any]:
    if spec.choices is not None:
        return list(spec.choices)
    if spec.type == "BOOLEAN":
        return [True, False]
    if spec.type == "STRING":
        return HOSTILE_STRINGS
    if spec.type in ("INT", "FLOAT"):
        return [bound for bound in (spec.min, spec.max) if bound is not None] or [0, -1, 10**6]
    return []


def cases() -> list[tuple[str, str, Any]]:
    registry = Registry.discover(plugins=False)
    out = []
    for name in sorted(registry):
        spec = registry[name]
        for input_name, input_spec in spec.inputs.items():
            if input_spec.type in CONSTANT_TYPES:
                out += [(name, input_name, value) for value in values_for(input_spec)]
    return out


def workflow(registry: Registry, class_type: str, input_name: str, value: Any) -> dict[str, Any]:
    spec = registry[class_type]
    inputs: dict[str, Any] = {}
    for name, input_spec in spec.inputs.items():
        if input_spec.type not in CONSTANT_TYPES and (not input_spec.optional or name in NEEDED.get(class_type, ())):
            inputs[name] = [SOURCE[input_spec.type], 0]
        elif name == "steps" and name != input_name:
            inputs[name] = 2  # keep the many sampling cases fast
    inputs[input_name] = value
    graph = {**PRODUCERS, "node": {"class_type": class_type, "inputs": inputs}}
    for index, _ in enumerate(spec.outputs):
        graph[f"out{index}"] = {"class_type": "Preview", "inputs": {"value": ["node", index]}}
    return graph


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    models = build_tiny_models(tmp_path_factory.mktemp("models"))
    root = tmp_path_factory.mktemp("fuzz")
    (root / "input").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NODEGRAPH_MODELS", str(models["clip"].parent))
        yield Engine("cpu", input_dir=root / "input", output_dir=root / "output", plugins=False)


@pytest.mark.slow
@pytest.mark.parametrize(("class_type", "input_name", "value"), cases(),
                         ids=lambda v: repr(v)[:24] if not isinstance(v, str) else v[:24])
def test_every_input_of_every_node_works_or_blames_the_user(engine: Engine, class_type: str, input_name: str,
                                                            value: Any, tmp_path: Path) -> None:
    try:
        engine.run(workflow(engine.registry, class_type, input_name, value))
    except WorkflowError as exc:
        assert exc.errors and all(issue.message for issue in exc.errors)
    except NodeExecutionError as exc:
        assert exc.is_input_error, f"{class_type}.{input_name} = {value!r:.60} crashed the node:\n" + "".join(
            exc.traceback[-6:])
        assert exc.input is not None or exc.exception.input is None
