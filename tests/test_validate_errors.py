"""Each validation problem is reported with its stable code, the node and input it concerns."""

from __future__ import annotations

import math
from typing import Any

import pytest

from nodegraph.engine.api import Engine
from nodegraph.engine.context import RunContext
from nodegraph.engine.node import In, Node, Out
from nodegraph.errors import ValidationIssue, WorkflowError


class Ranged(Node):
    """Test node with ranges, choices and a link-only input."""

    inputs = {
        "steps": In("INT", default=10, min=1, max=100),
        "scale": In("FLOAT", default=1.0, min=0.0, max=10.0),
        "mode": In("STRING", default="a", choices=("a", "b")),
        "flag": In("BOOLEAN", default=False),
        "image": In("IMAGE", optional=True),
    }
    outputs = (Out("FLOAT", "x"),)

    def run(self, ctx: RunContext, steps: int, scale: float, mode: str, flag: bool, image: Any) -> tuple[float]:
        return (steps * scale,)


@pytest.fixture
def eng(engine: Engine) -> Engine:
    engine.registry.register(Ranged)
    return engine


def preview(source: str, index: int = 0) -> dict[str, Any]:
    return {"class_type": "Preview", "inputs": {"value": [source, index]}}


def only(issues: list[ValidationIssue], code: str) -> ValidationIssue:
    matching = [issue for issue in issues if issue.type == code]
    assert len(matching) == 1, f"expected one {code}, got {issues}"
    return matching[0]


def test_valid_workflow_has_no_issues(eng: Engine) -> None:
    workflow = {"1": {"class_type": "Ranged", "inputs": {"steps": 5}}, "2": preview("1")}
    assert eng.validate(workflow) == []


@pytest.mark.parametrize(
    ("workflow", "code", "node", "input"),
    [
        ({"1": 5, "2": {"class_type": "Preview", "inputs": {"value": 1}}}, "node_not_object", "1", None),
        ({"1": {"inputs": {}}, "2": preview("1")}, "missing_class_type", "1", None),
        ({"1": {"class_type": 7, "inputs": {}}, "2": preview("1")}, "invalid_class_type", "1", None),
        ({"1": {"class_type": "Nope", "inputs": {}}, "2": preview("1")}, "unknown_class_type", "1", None),
        ({"1": {"class_type": "Add", "inputs": [1, 2]}, "2": preview("1")}, "inputs_not_object", "1", None),
        ({"1": {"class_type": "Preview", "inputs": {}}}, "missing_required_input", "1", "value"),
        ({"1": {"class_type": "Add", "inputs": {"c": 1}}, "2": preview("1")}, "unknown_input", "1", "c"),
        ({"1": {"class_type": "Add", "inputs": {}}, "2": preview("9")}, "link_to_missing_node", "2", "value"),
        ({"1": {"class_type": "Add", "inputs": {}}, "2": preview("1", 1)}, "output_index_out_of_range", "2", "value"),
        ({"1": {"class_type": "Int", "inputs": {"value": 2.5}}, "2": preview("1")}, "wrong_type", "1", "value"),
        ({"1": {"class_type": "Int", "inputs": {"value": True}}, "2": preview("1")}, "wrong_type", "1", "value"),
        ({"1": {"class_type": "Int", "inputs": {"value": "5"}}, "2": preview("1")}, "wrong_type", "1", "value"),
        ({"1": {"class_type": "Float", "inputs": {"value": "x"}}, "2": preview("1")}, "wrong_type", "1", "value"),
        ({"1": {"class_type": "Float", "inputs": {"value": True}}, "2": preview("1")}, "wrong_type", "1", "value"),
        ({"1": {"class_type": "String", "inputs": {"value": 5}}, "2": preview("1")}, "wrong_type", "1", "value"),
        ({"1": {"class_type": "Ranged", "inputs": {"flag": 1}}, "2": preview("1")}, "wrong_type", "1", "flag"),
        (
            {"1": {"class_type": "Ranged", "inputs": {"image": "cat.png"}}, "2": preview("1")},
            "wrong_type",
            "1",
            "image",
        ),
        ({"1": {"class_type": "Preview", "inputs": {"value": {"a": 1}}}}, "wrong_type", "1", "value"),
        ({"1": {"class_type": "Float", "inputs": {"value": math.nan}}, "2": preview("1")}, "non_finite", "1", "value"),
        ({"1": {"class_type": "Float", "inputs": {"value": -math.inf}}, "2": preview("1")}, "non_finite", "1", "value"),
        ({"1": {"class_type": "Ranged", "inputs": {"steps": 0}}, "2": preview("1")}, "out_of_range", "1", "steps"),
        ({"1": {"class_type": "Ranged", "inputs": {"scale": 10.5}}, "2": preview("1")}, "out_of_range", "1", "scale"),
        ({"1": {"class_type": "Ranged", "inputs": {"mode": "c"}}, "2": preview("1")}, "not_in_choices", "1", "mode"),
        ({"1": {"class_type": "Add", "inputs": {}}}, "no_output_node", None, None),
        ({1: {"class_type": "Add", "inputs": {}}, "2": preview("1")}, "invalid_node_id", "1", None),
    ],
)
def test_each_problem_has_its_code(
    eng: Engine, workflow: dict[str, Any], code: str, node: str | None, input: str | None
) -> None:
    issue = only(eng.validate(workflow), code)
    assert (issue.node, issue.input) == (node, input)
    assert issue.message


@pytest.mark.parametrize("link", [["1"], ["1", "0"], [1.5, 0], ["1", -1], ["1", 0, 2], [None, 0], ["1", True]])
def test_malformed_links(eng: Engine, link: list[Any]) -> None:
    workflow = {"1": {"class_type": "Float", "inputs": {}}, "2": {"class_type": "Preview", "inputs": {"value": link}}}
    issue = only(eng.validate(workflow), "malformed_link")
    assert (issue.node, issue.input) == ("2", "value")


def test_type_mismatch_names_both_types(eng: Engine) -> None:
    workflow = {
        "1": {"class_type": "String", "inputs": {"value": "x"}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}},
        "3": preview("2"),
    }
    issue = only(eng.validate(workflow), "type_mismatch")
    assert (issue.node, issue.input) == ("2", "a")
    assert "STRING" in issue.message and "FLOAT" in issue.message


def test_float_input_into_int_is_a_mismatch_but_int_into_float_is_coerced(eng: Engine) -> None:
    ok = {"1": {"class_type": "Int", "inputs": {"value": 2}}, "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}}}
    assert eng.validate({**ok, "3": preview("2")}) == []
    bad = {
        "1": {"class_type": "Float", "inputs": {"value": 2.0}},
        "2": {"class_type": "Ranged", "inputs": {"steps": ["1", 0]}},
        "3": preview("2"),
    }
    issue = only(eng.validate(bad), "type_mismatch")
    assert "INT" in issue.message and "FLOAT" in issue.message


def test_int_constant_is_widened_for_float_inputs(eng: Engine) -> None:
    result = eng.run({"1": {"class_type": "Add", "inputs": {"a": 2, "b": 3}}, "2": preview("1")})
    value = result.outputs["2"]["value"]
    assert value == 5.0 and type(value) is float


def test_cycle_names_its_nodes(eng: Engine) -> None:
    workflow = {
        "1": {"class_type": "Add", "inputs": {"a": ["3", 0]}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}},
        "3": {"class_type": "Add", "inputs": {"a": ["2", 0]}},
        "4": preview("3"),
    }
    issue = only(eng.validate(workflow), "cycle")
    assert all(f"'{node}'" in issue.message for node in ("1", "2", "3"))
    assert "'4'" not in issue.message


def test_self_loop(eng: Engine) -> None:
    workflow = {"1": {"class_type": "Add", "inputs": {"a": ["1", 0]}}, "2": preview("1")}
    issue = only(eng.validate(workflow), "cycle")
    assert issue.node == "1"


def test_every_problem_is_reported_in_one_pass(eng: Engine) -> None:
    workflow = {
        "1": {"class_type": "Nope"},
        "2": {"class_type": "Int", "inputs": {"value": 2.5, "extra": 1}},
        "3": {"class_type": "Add", "inputs": {"a": ["missing", 0], "b": ["2", 3]}},
        "4": {"class_type": "Ranged", "inputs": {"steps": 1000, "mode": "z"}},
        "5": {"class_type": "Add", "inputs": {"a": ["5", 0]}},
        "6": {"class_type": "Preview", "inputs": {}},
    }
    codes = sorted(issue.type for issue in eng.validate(workflow))
    assert codes == sorted(
        [
            "unknown_class_type",
            "wrong_type",
            "unknown_input",
            "link_to_missing_node",
            "output_index_out_of_range",
            "out_of_range",
            "not_in_choices",
            "cycle",
            "missing_required_input",
        ]
    )


def test_run_raises_workflow_error_with_the_same_issues(eng: Engine) -> None:
    workflow = {"1": {"class_type": "Int", "inputs": {"value": "x"}}, "2": preview("1")}
    with pytest.raises(WorkflowError) as caught:
        eng.run(workflow)
    assert [issue.type for issue in caught.value.errors] == ["wrong_type"]
    assert "node '1' input 'value'" in str(caught.value)
    assert caught.value.to_json()["errors"][0]["node"] == "1"


def test_null_leaves_an_optional_input_unconnected(eng: Engine) -> None:
    workflow = {"1": {"class_type": "Ranged", "inputs": {"image": None}}, "2": preview("1")}
    assert eng.validate(workflow) == []
    assert [issue.type for issue in eng.validate({**workflow, "1": {"class_type": "Add", "inputs": {"a": None}}})] == [
        "wrong_type"
    ]


def test_a_cycle_through_many_nodes_gives_a_short_message(eng: Engine) -> None:
    workflow = {str(i): {"class_type": "Add", "inputs": {"a": [str((i + 1) % 500), 0]}} for i in range(500)}
    (issue,) = eng.validate({**workflow, "out": preview("0")})
    assert issue.type == "cycle" and "more)" in issue.message and len(issue.message) < 500


def test_requested_outputs_must_be_output_nodes(eng: Engine) -> None:
    workflow = {"1": {"class_type": "Float", "inputs": {}}, "2": preview("1")}
    issue = only(eng.validate(workflow, outputs=["1"]), "unknown_output")
    assert issue.node == "1"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ([1, 2], "invalid_workflow_shape"),
        (5, "invalid_workflow_shape"),
        ({"nodes": [1], "params": {}}, "invalid_workflow_shape"),
        ({"nodes": {}, "extra": 1}, "invalid_workflow_shape"),
        ({"nodes": {}, "params": {"a": {"node": "1"}}}, "invalid_param"),
        ({"nodes": {}, "params": {"a": {"node": 1, "input": "x"}}}, "invalid_param"),
    ],
)
def test_envelope_shape(eng: Engine, data: Any, code: str) -> None:
    issues = eng.validate(data)
    assert issues and all(issue.type == code for issue in issues)


def test_unknown_class_suggests_close_names(eng: Engine) -> None:
    issue = only(eng.validate({"1": {"class_type": "add"}, "2": preview("1")}), "unknown_class_type")
    assert "Add" in issue.message
