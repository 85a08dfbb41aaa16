"""The `nodegraph` command: run, validate, nodes, serve.

Exit codes: 0 success, 1 a node failed at run time, 2 invalid input (workflow, param, file or
option), 130 interrupted with Ctrl-C. Invalid input is reported as messages, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from nodegraph.cluster import options as cluster_options
from nodegraph.cluster.options import BackendOptions

EXIT_OK = 0
EXIT_NODE_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    from nodegraph.threads import prepare_openmp

    prepare_openmp()  # before any command imports torch: OpenMP reads its wait policy once (nodegraph.threads)
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Only `serve` takes options it does not declare: the server parses its own (--token, ...).
        if args.command != "serve":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.server_args = extra
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("nodegraph: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    from nodegraph import __version__

    parser = argparse.ArgumentParser(prog="nodegraph", description="A typed node-graph engine for image synthesis.")
    parser.add_argument("--version", action="version", version=f"nodegraph {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a workflow", description="Run a workflow JSON file.")
    run.add_argument("workflow", type=Path, help="workflow JSON (ComfyUI API format, bare or wrapped)")
    _add_param_options(run)
    run.add_argument("--params-file", type=Path, metavar="RUNS.jsonl", help="one run per line: a JSON object of params")
    run.add_argument("--out", type=Path, default=Path("out"), metavar="DIR", help="output directory (default: out)")
    run.add_argument(
        "--input-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where input files are read from (default: .)",
    )
    run.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda (default: auto)")
    cluster_options.add_arguments(run, "this process")
    run.add_argument("--json", action="store_true", help="print a JSON summary (files written per run) on stdout")
    run.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failing nodes")
    run.set_defaults(handler=_cmd_run)

    validate = commands.add_parser(
        "validate", help="check a workflow without running it",
        description="Check a workflow without running it. Model files it names that are not installed are listed "
        "under missing_models (exit 0: the workflow is valid; `run` refuses to start without them) unless "
        "--require-models makes them errors.")
    validate.add_argument("workflow", type=Path)
    _add_param_options(validate)
    validate.add_argument("--input-dir", type=Path, default=None, metavar="DIR", help="where input files are read from")
    validate.add_argument("--require-models", action="store_true",
                          help="exit 2 when a model file the workflow names is not installed")
    validate.set_defaults(handler=_cmd_validate)

    nodes = commands.add_parser("nodes", help="list the available nodes")
    nodes.add_argument("--json", action="store_true", help="the catalogue as JSON (inputs, types, ranges, outputs)")
    nodes.add_argument("--types", action="store_true",
                       help="the socket types the nodes use instead: each one's value class and conventions")
    nodes.set_defaults(handler=_cmd_nodes)

    serve = commands.add_parser(
        "serve",
        help="start the websocket server and GUI",
        add_help=False,  # `nodegraph serve --help` is answered by the server, which knows every option
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8188)
    serve.add_argument("--device", default=None, help="passed to the server (default: its own)")
    serve.add_argument("--out", default=None, help="passed to the server (default: its own)")
    serve.set_defaults(handler=_cmd_serve)
    return parser


def _add_param_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="set a workflow param (repeatable)"
    )


# ---------------------------------------------------------------- run


def _cmd_run(args: argparse.Namespace) -> int:
    from nodegraph.engine.workflow import load_workflow
    from nodegraph.errors import ConfigError, WorkflowError

    try:
        workflow = load_workflow(args.workflow)
        base = _parse_param_args(args.param)
        runs, problems = _read_params_file(args.params_file, base) if args.params_file else ([(None, base)], [])
        policy = _thread_policy(args)  # before the engine imports torch: its look at the machine overlaps that
        engine = _engine(args)
        prepared = _prepare_runs(engine, workflow, runs, base, args.params_file, problems)
    except WorkflowError as exc:
        _report_invalid(exc.errors, as_json=args.json)
        return EXIT_INVALID
    except ConfigError as exc:
        _report_invalid([_config_issue(exc)], as_json=args.json)
        return EXIT_INVALID

    summaries: list[dict[str, Any]] = []
    codes = []
    show_bars = sys.stderr.isatty()
    produce = _cluster_results(engine, prepared, show_bars) if args.backend == "ray" else None
    try:
        for index, ((line, params), ready) in enumerate(zip(runs, prepared, strict=True)):
            label = f"run {index + 1}/{len(runs)} " if len(runs) > 1 else ""
            summary, code = _run_once(engine, ready, params, line, label, show_bars and produce is None, args,
                                      produce[index] if produce is not None else None, policy)
            summaries.append(summary)
            codes.append(code)
    except KeyboardInterrupt:
        # Ctrl-C: the runs that finished are still reported (their files are whole), the rest are named.
        print(f"nodegraph: interrupted after {len(summaries)} of {len(runs)} run(s)", file=sys.stderr)
        for skipped, (line, params) in enumerate(runs[len(summaries):]):
            status = "interrupted" if skipped == 0 else "not_run"
            summaries.append({"status": status, "line": line, "params": params, "files": []})
        codes.append(EXIT_INTERRUPTED)
    if args.json:
        json.dump({"runs": summaries}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    failures = [code for code in codes if code != EXIT_OK]
    if not failures:
        return EXIT_OK
    if EXIT_INTERRUPTED in failures:
        return EXIT_INTERRUPTED
    # A node crash outranks bad input in another line: it is the one that needs a developer.
    return EXIT_INVALID if all(code == EXIT_INVALID for code in failures) else EXIT_NODE_FAILED


def _run_once(
    engine: Any,
    prepared: Any,
    params: dict[str, Any],
    line: int | None,
    label: str,
    show_bars: bool,
    args: Any,
    produce: Any = None,
    policy: Any = None,
) -> tuple[dict[str, Any], int]:
    from nodegraph.cli_progress import ProgressBars
    from nodegraph.errors import Interrupted, NodeExecutionError, NodegraphError, WorkflowError

    bars = ProgressBars(sys.stderr, label) if show_bars else None
    where = f"{args.params_file} line {line}: " if line is not None else ""
    # threads for this run from the CPUs free now, re-decided on its progress events
    on_event = policy.for_run(bars) if policy is not None else bars
    try:
        result = produce() if produce is not None else engine.run(prepared, on_event=on_event)
    except NodeExecutionError as exc:
        code = EXIT_INVALID if exc.is_input_error else EXIT_NODE_FAILED
        print(f"nodegraph: {where}{exc}", file=sys.stderr)
        if args.verbose:
            print("".join(exc.traceback), file=sys.stderr, end="")
        error = {
            "node_id": exc.node_id,
            "node_type": exc.node_type,
            "exception_type": type(exc.exception).__name__,
            "exception_message": str(exc.exception),
        }
        return {"status": "error", "line": line, "params": params, "error": error, "files": []}, code
    except WorkflowError as exc:  # e.g. a LoadImage file vanished between the check and the run
        _report_invalid(exc.errors, as_json=False, prefix=where)
        return {
            "status": "invalid",
            "line": line,
            "params": params,
            **exc.to_json(),
            "files": [],
        }, EXIT_INVALID
    except Interrupted as exc:
        print(f"nodegraph: {where}{exc}", file=sys.stderr)
        return {"status": "interrupted", "line": line, "params": params, "files": []}, EXIT_INTERRUPTED
    except NodegraphError as exc:  # the cluster lost the run (its workers died)
        print(f"nodegraph: {where}{exc}", file=sys.stderr)
        error = {"node_id": None, "node_type": None, "exception_type": type(exc).__name__,
                 "exception_message": str(exc)}
        return {"status": "error", "line": line, "params": params, "error": error, "files": []}, EXIT_NODE_FAILED
    finally:
        if bars is not None:
            bars.close()
    summary = result.to_json()
    summary["line"] = line
    if not args.json:
        _print_result(result, engine, sys.stdout)
    return summary, EXIT_OK


def _thread_policy(args: argparse.Namespace) -> Any:
    """Local runs size torch's thread pool by nodegraph.threads (NODEGRAPH_THREADS); Ray workers set their own."""
    if args.backend == "ray":
        return None
    from nodegraph.threads import ThreadPolicy

    return ThreadPolicy()


def _engine(args: argparse.Namespace) -> Any:
    backend = BackendOptions.from_args(args)
    problems = backend.problems()
    if problems:
        from nodegraph.errors import ConfigError

        raise ConfigError("; ".join(problems))
    if args.backend == "ray":
        return backend.cluster_engine(args.input_dir, args.out, args.device)
    from nodegraph.engine.api import Engine

    return Engine(args.device, input_dir=args.input_dir, output_dir=args.out)


def _cluster_results(engine: Any, prepared: list[Any], show_bar: bool) -> list[Any]:
    """Every run submitted to the cluster at once; per run, a callable that waits for it and lands its files,
    called in the batch's order (so files are numbered as a local batch numbers them), with one bar."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    bar = tqdm(total=len(prepared), desc="runs", unit="run", file=sys.stderr, disable=not show_bar)
    executor = ThreadPoolExecutor(max_workers=max(1, engine.pool.target))
    futures = []
    for ready in prepared:
        future = executor.submit(engine.submit, ready)
        future.add_done_callback(lambda _: bar.update(1))
        futures.append(future)
    executor.shutdown(wait=False)
    return [lambda ready=ready, future=future: engine.finish(ready, future.result())
            for ready, future in zip(prepared, futures, strict=True)]


def _print_result(result: Any, engine: Any, out: TextIO) -> None:
    from nodegraph.engine.events import jsonable

    for node_id, ui in result.outputs.items():
        for key, value in ui.items():
            if key == "images":
                continue  # listed below as files
            text = json.dumps(jsonable(value)) if not isinstance(value, str) else value
            out.write(f"{node_id}.{key}: {text}\n")
    for path in result.files:
        out.write(f"wrote {_display_path(path)}\n")
    out.write(f"done: {len(result.executed)} node(s) executed, {len(result.cached)} cached, {result.seconds:.3f} s\n")


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _parse_param_args(items: list[str]) -> dict[str, str]:
    from nodegraph.engine.workflow import issue
    from nodegraph.errors import WorkflowError

    params: dict[str, str] = {}
    problems = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            problems.append(issue("invalid_param_syntax", f"--param {item!r}: expected NAME=VALUE"))
            continue
        params[name.strip()] = value
    if problems:
        raise WorkflowError(problems)
    return params


def _read_params_file(path: Path, base: dict[str, Any]) -> tuple[list[tuple[int, dict[str, Any]]], list[Any]]:
    """(line number, params) per non-blank line, and an issue naming each line that is not JSON."""
    from nodegraph.engine.workflow import decode_text, issue, read_file_bytes
    from nodegraph.errors import WorkflowError

    text = decode_text(read_file_bytes(path, what="params"), source=str(path))
    runs: list[tuple[int, dict[str, Any]]] = []
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(
                issue("invalid_json", f"{path} line {number}: invalid JSON at column {exc.colno}: {exc.msg}")
            )
            continue
        except (RecursionError, ValueError) as exc:
            problems.append(issue("invalid_json", f"{path} line {number}: invalid JSON: {type(exc).__name__}"))
            continue
        if not isinstance(values, dict):
            problems.append(
                issue(
                    "invalid_params_line",
                    f'{path} line {number}: expected a JSON object of params, e.g. {{"seed": 1}}',
                )
            )
            continue
        runs.append((number, {**base, **values}))
    if not runs and not problems:
        raise WorkflowError([issue("invalid_params_line", f"{path} has no runs (no non-blank lines)")])
    return runs, problems


def _prepare_runs(
    engine: Any,
    workflow: Any,
    runs: list[tuple[int | None, dict[str, Any]]],
    base: dict[str, Any],
    params_file: Any,
    problems: list[Any],
) -> list[Any]:
    """Prepare (and check the files of) every run before the first one starts, so a bad line 40 does not
    waste 39 runs; the prepared runs are what then runs."""
    from nodegraph.errors import MAX_ISSUES, WorkflowError

    prepared, per_run, found = [], [], len(problems)
    for line, params in runs:
        try:
            ready = engine.prepare(workflow, params)
            issues = engine.validate(ready)
        except WorkflowError as exc:
            ready, issues = None, exc.errors
        prepared.append(ready)
        per_run.append((line, issues))
        found += len(issues)
        if found > MAX_ISSUES:
            break  # enough to report: checking thousands of bad lines would only grow the report
    if not found:
        return prepared
    # Issues the workflow has without the file's params are reported once; the rest name their line.
    own = set(engine.validate(workflow, base)) if params_file is not None else set()
    errors = []
    for line, issues in per_run:
        for issue in issues:
            if issue in own:
                if issue not in errors:
                    errors.append(issue)
                continue
            if line is not None:
                issue = issue.model_copy(update={"message": f"{params_file} line {line}: {issue.message}"})
            errors.append(issue)
    raise WorkflowError(errors + problems)


def _config_issue(exc: Exception) -> Any:
    from nodegraph.engine.workflow import issue

    return issue("invalid_option", str(exc))


def _report_invalid(errors: list[Any], *, as_json: bool, prefix: str = "") -> None:
    if as_json:
        json.dump({"errors": [error.model_dump() for error in errors]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(
        f"nodegraph: {prefix}invalid input ({len(errors)} problem{'s' if len(errors) != 1 else ''}):",
        file=sys.stderr,
    )
    for error in errors:
        print(f"  {error.where()}: {error.message} [{error.type}]", file=sys.stderr)


# ---------------------------------------------------------------- validate, nodes, serve


def _cmd_validate(args: argparse.Namespace) -> int:
    from nodegraph.engine.api import Engine
    from nodegraph.engine.workflow import load_workflow
    from nodegraph.errors import WorkflowError

    try:
        params = _parse_param_args(args.param)
        workflow = load_workflow(args.workflow)
        errors = Engine("cpu", input_dir=args.input_dir).validate(workflow, params)
    except WorkflowError as exc:
        errors = exc.errors
    # A model file that is not installed does not make the workflow invalid: it is what the user must install
    # before running it (and `run` refuses to start without it, with the same message).
    missing = [] if args.require_models else [error for error in errors if error.type == "model_not_found"]
    errors = [error for error in errors if error not in missing]
    report: dict[str, Any] = {"errors": [error.model_dump() for error in errors]}
    if missing:
        report["missing_models"] = [error.model_dump() for error in missing]
        for error in missing:
            print(f"nodegraph: note: {error.where()}: {error.message}", file=sys.stderr)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_INVALID if errors else EXIT_OK


def _cmd_nodes(args: argparse.Namespace) -> int:
    from nodegraph.engine.registry import Registry

    registry = Registry.discover()
    for error in registry.load_errors:
        print(f"nodegraph: warning: could not load {error}", file=sys.stderr)
    if args.types:
        table = registry.socket_types()
        if args.json:
            json.dump(table, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            for name, info in table.items():
                print(f"{name}: {info['value']}{'  [constant]' if info['constant'] else ''}")
                print(f"      {info['convention']}")
        return EXIT_OK
    catalogue = registry.catalogue()
    if args.json:
        json.dump(catalogue, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    category = None
    for name, info in catalogue.items():
        if info["category"] != category:
            category = info["category"]
            print(f"{category}:")
        inputs = ", ".join(_describe_input(input_name, spec) for input_name, spec in info["inputs"].items())
        outputs = ", ".join(f"{out['name']}: {out['type']}" for out in info["outputs"]) or "nothing"
        marker = "  [output]" if info["output_node"] else ""
        print(f"  {name}({inputs}) -> {outputs}{marker}")
        if info["description"]:
            print(f"      {info['description'].splitlines()[0]}")
    return EXIT_OK


def _describe_input(name: str, spec: dict[str, Any]) -> str:
    text = f"{name}: {spec['type']}"
    if "choices" in spec:
        text += " in {" + ", ".join(json.dumps(choice) for choice in spec["choices"]) + "}"
    if "min" in spec or "max" in spec:
        text += f" [{spec.get('min', '')}..{spec.get('max', '')}]"
    if "default" in spec:
        text += f" = {json.dumps(spec['default'])}"
    elif spec["optional"]:
        text += " (optional)"
    return text


def _cmd_serve(args: argparse.Namespace) -> int:
    from nodegraph.server import main as serve

    argv = ["--host", args.host, "--port", str(args.port)]
    if args.device is not None:
        argv += ["--device", args.device]
    if args.out is not None:
        argv += ["--out", args.out]
    argv += getattr(args, "server_args", [])
    return int(serve(argv))
