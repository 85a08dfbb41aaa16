"""The `nodegraph` command, run as a subprocess: exit codes 0 / 1 / 2, JSON reports, no tracebacks."""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from nodegraph import cli

from conftest import REPO, run_cli

ADD = str(REPO / "workflows" / "utility_add.json")


class Completed:
    """cli.main run in this process (a subprocess costs a torch import; a few tests still pay it)."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli_main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    def call(*args: str, cwd: Path | None = None) -> Completed:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            code = cli.main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Completed(code, captured.out, captured.err)

    return call


def assert_clean_failure(proc: Any, code: int = 2) -> None:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def test_run_prints_outputs_and_exits_0(tmp_path: Path) -> None:
    proc = run_cli("run", ADD, "--param", "a=5", "--param", "b=1.5", "--out", str(tmp_path), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "4.value: 6.5" in proc.stdout
    assert proc.stderr == ""  # quiet when not a terminal


def test_run_json_summary_lists_files_per_run(cli_main: Any, tmp_path: Path) -> None:
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "in.png")
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    (tmp_path / "wf.json").write_text(json.dumps(workflow))
    out = tmp_path / "out"
    proc = cli_main("run", "wf.json", "--out", str(out), "--input-dir", str(tmp_path), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = json.loads(proc.stdout)["runs"]
    assert run["status"] == "success"
    assert [Path(path).name for path in run["files"]] == ["x_00001_.png"]
    assert Path(run["files"][0]).exists()
    assert run["outputs"]["2"]["images"][0]["filename"] == "x_00001_.png"


def test_params_file_runs_every_line_in_one_process(cli_main: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.jsonl"
    runs.write_text('{"a": 1, "b": 2}\n\n{"a": "10"}\n{"a": 1, "b": 2}\n')
    proc = cli_main("run", ADD, "--params-file", str(runs), "--param", "b=100", "--json", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["runs"]
    assert [run["outputs"]["4"]["value"] for run in summary] == [3.0, 110.0, 3.0]
    assert [run["line"] for run in summary] == [1, 3, 4]
    assert summary[2]["executed"] == 0  # the cache is shared across lines


def test_params_file_bad_lines_are_reported_with_their_numbers(cli_main: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.jsonl"
    runs.write_text('{"a": 1}\n{"a": "x"}\n[1, 2]\n{"a": \n')
    proc = cli_main("run", ADD, "--params-file", str(runs), "--json", "--out", str(tmp_path))
    assert_clean_failure(proc)
    messages = [error["message"] for error in json.loads(proc.stdout)["errors"]]
    assert len(messages) == 3
    assert any("line 2" in message for message in messages)
    assert any("line 3" in message for message in messages)
    assert any("line 4" in message for message in messages)


@pytest.mark.parametrize(
    "args",
    [
        ["--param", "a=notanumber"],
        ["--param", "nope=1"],
        ["--param", "missing-equals"],
        ["--device", "tpu"],
        ["--params-file", "/nonexistent/runs.jsonl"],
    ],
)
def test_run_invalid_input_exits_2(cli_main: Any, tmp_path: Path, args: list[str]) -> None:
    proc = cli_main("run", ADD, "--out", str(tmp_path), *args)
    assert_clean_failure(proc)
    assert "nodegraph:" in proc.stderr


def test_run_invalid_workflow_json_report(cli_main: Any, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"1": {"class_type": "Nope"}}))
    proc = cli_main("run", str(tmp_path / "bad.json"), "--json")
    assert_clean_failure(proc)
    assert [error["type"] for error in json.loads(proc.stdout)["errors"]] == ["unknown_class_type", "no_output_node"]


def make_failing_plugin(root: Path) -> Path:
    """An installed-looking plugin (dist-info with an entry point) whose Explode node always raises."""
    plugin = root / "plugin"
    plugin.mkdir()
    (plugin / "ng_failing_plugin.py").write_text(
        "from nodegraph.engine.node import In, Node, Out\n"
        "class Explode(Node):\n"
        "    inputs = {'x': In('FLOAT', default=0.0)}\n"
        "    outputs = (Out('FLOAT'),)\n"
        "    def run(self, ctx, x):\n"
        "        raise RuntimeError('kaboom')\n"
    )
    info = plugin / "ng_failing_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ng-failing-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[nodegraph.nodes]\nfailing = ng_failing_plugin\n")
    workflow = {
        "1": {"class_type": "Float", "inputs": {"value": 1.0}},
        "2": {"class_type": "Explode", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "Preview", "inputs": {"value": ["2", 0]}},
    }
    (root / "wf.json").write_text(json.dumps(workflow))
    return plugin


def test_node_failure_exits_1_and_names_the_node(tmp_path: Path) -> None:
    plugin = make_failing_plugin(tmp_path)
    proc = run_cli("run", str(tmp_path / "wf.json"), "--out", str(tmp_path), "--json", env={"PYTHONPATH": str(plugin)})
    assert proc.returncode == 1, proc.stderr
    assert "node '2' (Explode) failed" in proc.stderr and "kaboom" in proc.stderr
    assert "Traceback" not in proc.stderr
    (run,) = json.loads(proc.stdout)["runs"]
    assert run["status"] == "error" and run["error"]["node_id"] == "2" and run["error"]["node_type"] == "Explode"


def test_verbose_prints_the_failing_nodes_traceback(
    cli_main: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = make_failing_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(plugin))
    importlib.invalidate_caches()
    proc = cli_main("run", str(tmp_path / "wf.json"), "--out", str(tmp_path), "-v")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "kaboom" in proc.stderr


def test_validate_valid_workflow(cli_main: Any) -> None:
    proc = cli_main("validate", ADD)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"errors": []}


def test_validate_reports_every_error_as_json(tmp_path: Path) -> None:
    workflow = {
        "1": {"class_type": "Int", "inputs": {"value": 2.5}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 3], "c": 1}},
        "3": {"class_type": "Add", "inputs": {"a": ["3", 0]}},
    }
    (tmp_path / "wf.json").write_text(json.dumps(workflow))
    proc = run_cli("validate", str(tmp_path / "wf.json"))
    assert_clean_failure(proc)
    errors = json.loads(proc.stdout)["errors"]
    assert all(set(error) == {"node", "input", "type", "message"} for error in errors)
    assert sorted((e["node"], e["input"], e["type"]) for e in errors) == [
        ("1", "value", "wrong_type"),
        ("2", "a", "output_index_out_of_range"),
        ("2", "c", "unknown_input"),
        ("3", None, "cycle"),
    ]


def test_validate_pathological_files(cli_main: Any, tmp_path: Path) -> None:
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    (tmp_path / "deep.json").write_text("[" * 100_000)
    with (tmp_path / "huge.json").open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)  # sparse: refused by size before anything is read
    (tmp_path / "broken.json").write_text('{"1": ')
    cases = {
        "binary.json": "invalid_encoding",
        "deep.json": "too_deeply_nested",
        "huge.json": "file_too_large",
        "broken.json": "invalid_json",
        "missing.json": "file_not_found",
        ".": "not_a_file",
    }
    for name, code in cases.items():
        proc = cli_main("validate", name, cwd=tmp_path)
        assert_clean_failure(proc)
        assert [error["type"] for error in json.loads(proc.stdout)["errors"]] == [code], name


def test_nodes_catalogue(cli_main: Any) -> None:
    proc = cli_main("nodes", "--json")
    assert proc.returncode == 0
    catalogue = json.loads(proc.stdout)
    assert {"Int", "Float", "String", "Add", "Preview", "LoadImage", "SaveImage"} <= set(catalogue)
    assert catalogue["Int"]["outputs"] == [{"type": "INT", "name": "value"}]
    text = cli_main("nodes")
    assert text.returncode == 0 and "Add(a: FLOAT = 0.0, b: FLOAT = 0.0) -> sum: FLOAT" in text.stdout


def test_usage_errors_exit_2(cli_main: Any) -> None:
    assert cli_main("frobnicate").returncode == 2
    assert cli_main("run").returncode == 2


def test_serve_hands_its_options_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    server = types.ModuleType("nodegraph.server")
    server.main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nodegraph.server", server)
    assert cli.main(["serve", "--port", "9000", "--device", "cpu"]) == 0
    assert seen == [["--host", "127.0.0.1", "--port", "9000", "--device", "cpu"]]


def test_progress_bars_follow_the_events() -> None:
    import io

    from nodegraph.cli_progress import ProgressBars

    stream = io.StringIO()
    bars = ProgressBars(stream, "run 1/2 ")
    bars("execution_start", {"prompt_id": "p"})
    bars("executing", {"node": "1", "prompt_id": "p"})
    for step in (1, 2, 3):
        bars("progress", {"value": step, "max": 3, "node": "1", "prompt_id": "p"})
    bars("executing", {"node": None, "prompt_id": "p"})
    text = stream.getvalue()
    assert "run 1/2 nodes" in text and "node 1" in text and "3/3" in text


def test_params_file_prepares_each_run_once(cli_main: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checking every line before the first run must not mean preparing every workflow twice."""
    from nodegraph.engine import api, prepare

    calls: list[dict[str, Any]] = []
    real = prepare.prepare

    def counting(workflow: Any, params: Any, *rest: Any) -> Any:
        calls.append(dict(params or {}))
        return real(workflow, params, *rest)

    monkeypatch.setattr(api, "prepare", counting)
    runs = tmp_path / "runs.jsonl"
    runs.write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n')
    proc = cli_main("run", ADD, "--params-file", str(runs), "--json", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert [c["a"] for c in calls] == [1, 2, 3]
    assert [run["outputs"]["4"]["value"] for run in json.loads(proc.stdout)["runs"]] == [4.0, 5.0, 6.0]  # a + 3


def test_ctrl_c_in_a_batch_still_reports_the_runs_that_finished(cli_main: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from nodegraph.engine.api import Engine

    real, calls = Engine.run, []

    def interrupted_second_time(self: Engine, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "run", interrupted_second_time)
    runs = tmp_path / "runs.jsonl"
    runs.write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n')
    proc = cli_main("run", ADD, "--params-file", str(runs), "--json", "--out", str(tmp_path))
    assert proc.returncode == 130
    report = json.loads(proc.stdout)["runs"]
    assert [run["status"] for run in report] == ["success", "interrupted", "not_run"]
    assert report[0]["outputs"]["4"]["value"] == 4.0 and [run["line"] for run in report] == [1, 2, 3]


def test_thousands_of_bad_params_give_a_bounded_report(cli_main: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps({f"unknown_{i}_{j}": 1 for j in range(50)}) + "\n" for i in range(2000)))
    proc = cli_main("run", ADD, "--params-file", str(runs), "--json", "--out", str(tmp_path))
    assert proc.returncode == 2
    errors = json.loads(proc.stdout)["errors"]
    assert len(errors) == 101 and errors[-1]["type"] == "too_many_problems"
    assert len(proc.stdout) < 200_000


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (["--gpus-per-worker", "1"], "--address and --gpus-per-worker need --backend ray"),
        (["--address", "auto"], "--address and --gpus-per-worker need --backend ray"),
        (["--backend", "ray", "--workers", "0"], "--workers must be a positive number or auto, got 0"),
        (["--backend", "ray", "--gpus-per-worker", "-1"], "--gpus-per-worker cannot be negative"),
    ],
)
def test_run_and_serve_refuse_the_same_backend_options(cli_main: Any, capsys: pytest.CaptureFixture[str],
                                                        options: list[str], problem: str) -> None:
    """Both commands take their backend options from one place: the same mistake, the same exit 2 and words,
    before any workflow is run or port bound."""
    from nodegraph.server.main import main as serve_main

    ran = cli_main("run", ADD, *options)
    assert ran.returncode == 2 and problem in ran.stderr
    assert serve_main(["--port", "0", *options]) == 2
    assert problem in capsys.readouterr().err


def test_a_param_a_shared_constant_node_passes_on_is_checked_before_anything_runs(cli_main: Any,
                                                                                 tmp_path: Path) -> None:
    """`condition` lands in one String node that feeds both fine-tuning nodes: a value neither accepts is one
    report naming both consumers and the choices, exit 2, and no image is written (no model was loaded)."""
    workflow = REPO / "workflows" / "diffusionclip_multi_attribute.json"
    proc = cli_main("run", str(workflow), "--param", "condition=bogus", "--json", "--out", str(tmp_path))
    assert proc.returncode == 2
    errors = json.loads(proc.stdout)["errors"]
    assert sorted(e["node"] for e in errors) == ["finetune_colour", "finetune_kind"]
    assert all(e["input"] == "condition" and "'none', 'source', 'target'" in e["message"] for e in errors)
    assert not list(tmp_path.iterdir())
