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

from fixtures_models import CAPTION, PRODUCERS, SOURCE, build_tiny_models
from fixtures_released import build_released_models

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
        elif name == "respacing" and input_name != name and spec.category == "sampling/released":
            inputs[name] = "2"  # the released families' nets are slower: their steps bound is checked, 2 run
    inputs[input_name] = value
    graph = {**PRODUCERS, "node": {"class_type": class_type, "inputs": inputs}}
    for index, _ in enumerate(spec.outputs):
        graph[f"out{index}"] = {"class_type": "Preview", "inputs": {"value": ["node", index]}}
    return graph


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    models = build_tiny_models(tmp_path_factory.mktemp("models"))
    build_released_models(models["clip"].parent)  # the released families' files, in the same models directory
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
