"""Workflow files that cannot be used give one clean issue each, never an exception escaping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodegraph.engine import workflow as workflow_module
from nodegraph.engine.api import Engine


def codes(engine: Engine, path: Path) -> list[str]:
    return [issue.type for issue in engine.validate(path)]


def test_invalid_json_names_line_and_column(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "1": {"class_type": "Int",,}\n}')
    (issue,) = engine.validate(path)
    assert issue.type == "invalid_json"
    assert "line 2" in issue.message and "column 29" in issue.message


def test_missing_file(engine: Engine, tmp_path: Path) -> None:
    assert codes(engine, tmp_path / "absent.json") == ["file_not_found"]


def test_directory_instead_of_file(engine: Engine, tmp_path: Path) -> None:
    assert codes(engine, tmp_path) == ["not_a_file"]


def test_binary_garbage(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "garbage.json"
    path.write_bytes(bytes(range(256)) * 8)
    assert codes(engine, path) == ["invalid_encoding"]


def test_valid_utf8_that_is_not_json(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "text.json"
    path.write_text("this is not json ✓")
    assert codes(engine, path) == ["invalid_json"]


def test_deeply_nested_json(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    assert codes(engine, path) == ["too_deeply_nested"]


def test_nested_constants_within_the_parser_limit_are_rejected_not_crashed(engine: Engine, tmp_path: Path) -> None:
    deep = "[" * 900 + "]" * 900
    path = tmp_path / "deep_value.json"
    path.write_text('{"1": {"class_type": "Preview", "inputs": {"value": ' + deep + "}}}")
    assert codes(engine, path) == ["malformed_link"]


def test_huge_file_is_refused_before_reading(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workflow_module, "MAX_WORKFLOW_BYTES", 1000)
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"1": {"class_type": "String", "inputs": {"value": "x" * 2000}}}))
    (issue,) = engine.validate(path)
    assert issue.type == "file_too_large" and "1000" in issue.message


def test_default_size_cap_is_generous_but_finite() -> None:
    assert 1 << 20 <= workflow_module.MAX_WORKFLOW_BYTES <= 1 << 30


def test_json_nan_literal_is_non_finite(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "nan.json"
    path.write_text(
        '{"1": {"class_type": "Float", "inputs": {"value": NaN}}, "2": {"class_type": "Preview", '
        '"inputs": {"value": ["1", 0]}}}'
    )
    assert codes(engine, path) == ["non_finite"]


def test_utf8_bom_is_accepted(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"1": {"class_type": "Preview", "inputs": {"value": 1}}}).encode())
    assert engine.validate(path) == []


def test_huge_integer_literal(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "bigint.json"
    path.write_text('{"1": {"class_type": "Int", "inputs": {"value": ' + "9" * 5000 + "}}}")
    assert codes(engine, path) == ["invalid_json"]
