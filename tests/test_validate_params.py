"""Params: declared knobs set inputs, parsed to the input's type; every misuse is a coded issue."""

from __future__ import annotations

from typing import Any

import pytest

from nodegraph.engine.api import Engine
from nodegraph.engine.context import RunContext
from nodegraph.engine.node import In, Node, Out
from nodegraph.errors import WorkflowError


class Knobs(Node):
    """Echoes every constant type so params can be checked end to end."""

    inputs = {
        "count": In("INT", default=1, min=0, max=10),
        "scale": In("FLOAT", default=1.0),
        "text": In("STRING", default=""),
        "flag": In("BOOLEAN", default=False),
        "image": In("IMAGE", optional=True),
    }
    outputs = (Out("INT"), Out("FLOAT"), Out("STRING"), Out("BOOLEAN"))

    def run(self, ctx: RunContext, count: int, scale: float, text: str, flag: bool, image: Any) -> tuple[Any, ...]:
        return count, scale, text, flag


def workflow(params: dict[str, Any] | None = None) -> dict[str, Any]:
    nodes = {"k": {"class_type": "Knobs", "inputs": {}}}
    for index in range(4):
        nodes[f"p{index}"] = {"class_type": "Preview", "inputs": {"value": ["k", index]}}
    default_params = {
        "count": {"node": "k", "input": "count"},
        "scale": {"node": "k", "input": "scale", "description": "a float"},
        "text": {"node": "k", "input": "text"},
        "flag": {"node": "k", "input": "flag"},
    }
    return {"nodes": nodes, "params": default_params if params is None else params, "meta": {"title": "knobs"}}


@pytest.fixture
def eng(engine: Engine) -> Engine:
    engine.registry.register(Knobs)
    return engine


def values(eng: Engine, params: dict[str, Any]) -> list[Any]:
    result = eng.run(workflow(), params)
    return [result.outputs[f"p{index}"]["value"] for index in range(4)]


def test_strings_are_parsed_to_the_target_type(eng: Engine) -> None:
    got = values(eng, {"count": "5", "scale": "0.25", "text": "7", "flag": "true"})
    assert got == [5, 0.25, "7", True]
    assert [type(value) for value in got] == [int, float, str, bool]


def test_typed_values_pass_and_ints_widen_to_float(eng: Engine) -> None:
    got = values(eng, {"count": 3, "scale": 2, "flag": False})
    assert got == [3, 2.0, "", False] and type(got[1]) is float


@pytest.mark.parametrize("text", ["false", "FALSE", "0", "no"])
def test_boolean_words(eng: Engine, text: str) -> None:
    assert values(eng, {"flag": text})[3] is False


def test_string_params_are_kept_verbatim(eng: Engine) -> None:
    assert values(eng, {"text": "  a = b, 5 "})[2] == "  a = b, 5 "


@pytest.mark.parametrize(
    ("params", "code", "input"),
    [
        ({"count": "2.5"}, "invalid_param_value", "count"),
        ({"count": "five"}, "invalid_param_value", "count"),
        ({"count": 2.5}, "invalid_param_value", "count"),
        ({"scale": "abc"}, "invalid_param_value", "scale"),
        ({"scale": "nan"}, "invalid_param_value", "scale"),
        ({"flag": "maybe"}, "invalid_param_value", "flag"),
        ({"text": 5}, "invalid_param_value", "text"),
        ({"count": "11"}, "out_of_range", "count"),
        ({"nope": 1}, "unknown_param", None),
    ],
)
def test_bad_param_values(eng: Engine, params: dict[str, Any], code: str, input: str | None) -> None:
    issues = eng.validate(workflow(), params)
    assert [(issue.type, issue.input) for issue in issues] == [(code, input)]


def test_unknown_param_lists_known_ones(eng: Engine) -> None:
    (issue,) = eng.validate(workflow(), {"nope": 1})
    assert "count" in issue.message and "scale" in issue.message


def test_param_pointing_at_missing_node_or_input(eng: Engine) -> None:
    params = {
        "a": {"node": "missing", "input": "count"},
        "b": {"node": "k", "input": "missing"},
        "c": {"node": "k", "input": "image"},
    }
    issues = eng.validate(workflow(params))
    assert sorted(issue.type for issue in issues) == ["param_missing_input", "param_missing_node", "param_not_settable"]
    by_type = {issue.type: issue for issue in issues}
    assert (by_type["param_missing_input"].node, by_type["param_missing_input"].input) == ("k", "missing")


def test_params_do_not_modify_the_callers_workflow(eng: Engine) -> None:
    data = workflow()
    eng.run(data, {"count": 4})
    assert data["nodes"]["k"]["inputs"] == {}


def test_param_replaces_a_link(eng: Engine) -> None:
    data = {
        "nodes": {
            "1": {"class_type": "Float", "inputs": {"value": 1.0}},
            "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1.0}},
            "3": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
        },
        "params": {"a": {"node": "2", "input": "a"}},
    }
    assert eng.run(data).outputs["3"]["value"] == 2.0
    assert eng.run(data, {"a": "10"}).outputs["3"]["value"] == 11.0


def test_run_reports_param_problems_as_workflow_error(eng: Engine) -> None:
    with pytest.raises(WorkflowError) as caught:
        eng.run(workflow(), {"count": "x", "nope": 1})
    assert sorted(issue.type for issue in caught.value.errors) == ["invalid_param_value", "unknown_param"]


def test_resolved_params_are_in_the_result(eng: Engine) -> None:
    assert eng.run(workflow(), {"count": "2"}).params == {"count": 2}
