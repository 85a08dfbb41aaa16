"""Server lifecycle: graceful shutdown, restart with history and the pending queue (a journal written on
every change: nothing runs twice, nothing deleted comes back, a hard kill loses at most the running prompt),
state files that are damaged, the `nodegraph serve` command (signals, options handed over by the CLI, a port
in use)."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from nodegraph import cli
from nodegraph.engine.context import RunContext
from nodegraph.engine.node import In, Node, Out
from nodegraph.server import main as server_main

from test_server_support import (
    ADD_WORKFLOW,
    REPO,
    TIMEOUT,
    Client,
    ServeFactory,
    ServerPool,
    fresh_gate,
    make_engine,
    steps_workflow,
)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    with ServerPool(tmp_path) as pool:
        yield pool.start


@pytest.fixture
def gate() -> threading.Semaphore:
    return fresh_gate()


def close_frame(client: Client) -> Any:
    """Read until the server closes the connection; the close frame it sent."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            client.recv()
    return closed.value.rcvd


def journal(root: Path, folder: str = "queue") -> list[str]:
    """Prompt ids in the queue journal's folder, in queue order."""
    directory = root / "state" / folder
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    return [json.loads(path.read_text())["prompt_id"] for path in files]


def saved_prompt(prompt_id: str, number: int, workflow: dict[str, Any] = ADD_WORKFLOW) -> dict[str, Any]:
    return {"prompt_id": prompt_id, "number": number, "client_id": "client", "prompt": workflow, "params": {}}


def wait_until_idle(client: Client) -> None:
    """Return once the server reports an empty queue (at connect, or in a later status message)."""
    remaining = client.hello["data"]["status"]["exec_info"]["queue_remaining"]
    while remaining:
        remaining = client.next_message("status")["data"]["status"]["exec_info"]["queue_remaining"]


def test_restart_keeps_the_history_and_reloads_the_pending_queue(
    serve: ServeFactory, gate: threading.Semaphore, tmp_path: Path
) -> None:
    first = serve()
    with Client(first, "keeper") as client:
        done = client.submit(ADD_WORKFLOW, {"a": 1})
        client.until_done(done)
        running = client.submit(steps_workflow(5, gated=True, tag="restart"))
        gate.release(1)
        client.next_message("progress")
        pending = [client.submit(ADD_WORKFLOW, {"a": value}) for value in (2, 3)]
        shutdown = first.submit(first.server.shutdown())
        frames = client.until_done(running)  # the interrupted run still reports to its client
        closing = close_frame(client)
        shutdown.result(TIMEOUT)
    assert [frame["type"] for frame in frames if isinstance(frame, dict)][-2:] == ["execution_interrupted", "executing"]
    assert (closing.code, closing.reason) == (1001, "server shutting down")
    assert journal(tmp_path) == pending and journal(tmp_path, "running") == []

    second = serve()  # same state directory, a fresh engine
    with Client(second, "keeper") as client:
        wait_until_idle(client)
        history = client.request("history")["data"]
        later = client.submit(ADD_WORKFLOW, {"a": 4})
        client.until_done(later)
        entry = client.request("history", {"prompt_id": later})["data"][later]
    assert list(history) == [done, running, *pending]
    statuses = [history[key]["nodegraph"]["status"] for key in history]
    assert statuses == ["success", "interrupted", "success", "success"]
    assert history[pending[1]]["outputs"] == {"4": {"value": 6.0}}
    assert [history[key]["prompt"][0] for key in history] == [0, 1, 2, 3]
    assert entry["prompt"][0] == 4  # numbers continue after a restart
    assert journal(tmp_path) == []
    assert sorted(path.stem for path in (tmp_path / "state" / "history").glob("*.json")) == sorted([*history, later])


def test_the_queue_is_on_disk_at_every_moment(serve: ServeFactory, gate: threading.Semaphore, tmp_path: Path) -> None:
    server = serve()
    with Client(server) as client:
        running = client.submit(steps_workflow(1, gated=True, tag="journal"))
        client.next_message("execution_start")
        first, second = client.submit(ADD_WORKFLOW, {"a": 1}), client.submit(ADD_WORKFLOW, {"a": 2})
        # Written before the prompt was acknowledged, moved when it started, removed when deleted.
        assert journal(tmp_path) == [first, second] and journal(tmp_path, "running") == [running]
        client.request("queue", {"delete": [first]})
        assert journal(tmp_path) == [second]
        gate.release()
        client.until_done(running)
        client.until_done(second)
        assert journal(tmp_path) == [] and journal(tmp_path, "running") == []


def test_pending_prompts_already_in_the_history_are_not_run_twice(serve: ServeFactory, tmp_path: Path) -> None:
    # A journal file whose prompt already finished (a crash between the two writes) is dropped at start.
    first = serve()
    with Client(first) as client:
        done = client.submit(ADD_WORKFLOW)
        client.until_done(done)
    first.stop()
    queue = tmp_path / "state" / "queue"
    queue.mkdir(parents=True, exist_ok=True)
    (queue / f"+000000000000_{done}.json").write_text(json.dumps(saved_prompt(done, 0)))
    second = serve()
    with Client(second) as client:
        assert client.hello["data"]["status"]["exec_info"]["queue_remaining"] == 0
        assert list(client.request("history")["data"]) == [done]
    assert journal(tmp_path) == []


def test_a_deleted_prompt_does_not_come_back_after_a_restart(
    serve: ServeFactory, gate: threading.Semaphore, tmp_path: Path
) -> None:
    first = serve()
    with Client(first) as client:
        client.submit(steps_workflow(1, gated=True, tag="deleted"))
        client.next_message("execution_start")
        kept, deleted = client.submit(ADD_WORKFLOW, {"a": 5}), client.submit(ADD_WORKFLOW, {"a": 6})
        client.request("queue", {"delete": [deleted]})
    first.stop()
    second = serve()
    with Client(second) as client:
        wait_until_idle(client)
        history = client.request("history")["data"]
    assert kept in history and deleted not in history


def test_a_prompt_cut_off_by_a_hard_kill_is_reported_not_rerun(
    serve: ServeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What a SIGKILL mid-run leaves: the running prompt's journal file, no history entry; a pending one too.
    running = tmp_path / "state" / "running"
    running.mkdir(parents=True)
    (running / "+000000000003_killed.json").write_text(json.dumps(saved_prompt("killed", 3)))
    (tmp_path / "state" / "queue").mkdir()
    (tmp_path / "state" / "queue" / "+000000000004_waiting.json").write_text(json.dumps(saved_prompt("waiting", 4)))
    server = serve()
    with Client(server) as client:
        wait_until_idle(client)
        history = client.request("history")["data"]
    assert list(history) == ["killed", "waiting"]
    assert history["killed"]["status"]["status_str"] == "error" and history["killed"]["outputs"] == {}
    [[event, data]] = history["killed"]["status"]["messages"]
    assert event == "execution_error" and "was not run again" in data["exception_message"]
    assert history["waiting"]["nodegraph"]["status"] == "success"
    assert any("killed" in record.getMessage() and "not run again" in record.getMessage() for record in caplog.records)
    assert journal(tmp_path, "running") == []


def test_damaged_state_files_are_skipped(serve: ServeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    history = tmp_path / "state" / "history"
    history.mkdir(parents=True)
    (history / "broken.json").write_text("{not json")
    (history / "other.json").write_text(json.dumps({"prompt": [1, "someone-else", {}, {}, []]}))
    (history / "good.json").write_text(json.dumps({"prompt": [7, "good", {}, {}, []], "outputs": {}}))
    (tmp_path / "state" / "queue").mkdir()
    (tmp_path / "state" / "queue" / "+1_broken.json").write_text("[1, 2")
    server = serve()
    with Client(server) as client:
        assert list(client.request("history")["data"]) == ["good"]
        prompt_id = client.submit(ADD_WORKFLOW)
        assert client.until_done(prompt_id)[-2]["type"] == "execution_success"
        assert client.request("history", {"prompt_id": prompt_id})["data"][prompt_id]["prompt"][0] == 8
    warnings = " ".join(record.getMessage() for record in caplog.records)
    assert "broken.json" in warnings and "other.json" in warnings and "+1_broken.json" in warnings


class Stubborn(Node):
    """Test node: waits for an event and never checks for interrupts (a badly behaved node)."""

    category = "testing"
    inputs = {"tag": In("STRING", default="")}
    outputs = (Out("FLOAT", "value"),)
    release = threading.Event()
    started = threading.Event()

    def run(self, ctx: RunContext, tag: str) -> tuple[float]:
        type(self).started.set()
        type(self).release.wait(TIMEOUT)
        return (1.0,)


def test_shutdown_does_not_wait_forever_for_a_node_that_ignores_interrupts(
    serve: ServeFactory, tmp_path: Path
) -> None:
    Stubborn.release, Stubborn.started = threading.Event(), threading.Event()
    engine = make_engine(tmp_path)
    engine.registry.register(Stubborn)
    server = serve(engine)
    workflow = {
        "1": {"class_type": "Stubborn", "inputs": {}},
        "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
    }
    try:
        with Client(server) as client:
            client.submit(workflow)
            waiting = client.submit(ADD_WORKFLOW)
            assert Stubborn.started.wait(TIMEOUT)
            started = time.monotonic()
            server.call(server.server.shutdown(timeout=0.2))
            assert time.monotonic() - started < 5
            assert close_frame(client).code == 1001
        assert journal(tmp_path) == [waiting]
    finally:
        Stubborn.release.set()


# ---------------------------------------------------------------- the command line


def test_the_cli_hands_server_options_over(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("nodegraph.server")
    fake.main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nodegraph.server", fake)
    options = ["--token", "s3cret-token", "--input-dir", "in", "--preview-every", "4"]
    assert cli.main(["serve", "--port", "0", *options]) == 0
    assert seen == [["--host", "127.0.0.1", "--port", "0", *options]]
    with pytest.raises(SystemExit) as exited:
        cli.main(["validate", "workflow.json", "--token", "x"])  # other commands still refuse unknown options
    assert exited.value.code == 2


def test_serve_help_lists_the_server_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--token", "--input-dir", "--output-dir", "--state-dir", "--max-queue", "--preview-every"):
        assert option in text


def test_a_port_in_use_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = server_main(["--port", str(port), "--log-level", "error"], engine=make_engine(tmp_path))
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_an_unusable_state_directory_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the state directory should be")
    code = server_main(["--port", "0", "--state-dir", str(tmp_path / "state")], engine=make_engine(tmp_path))
    assert code == 2
    assert f"cannot use the state directory {tmp_path / 'state'}" in capsys.readouterr().err


@pytest.mark.slow
def test_nodegraph_serve_runs_prompts_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "nodegraph", "serve", "--port", "0", "--device", "cpu", "--log-level", "warning"]
    command += ["--output-dir", str(tmp_path / "out"), "--input-dir", str(tmp_path / "in")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        address = _listening_address(process, timeout=180)
        with Client(f"ws://{address}") as client:
            prompt_id = client.submit(ADD_WORKFLOW, {"a": 40, "b": 2})
            frames = client.until_done(prompt_id)
            process.send_signal(signal.SIGTERM)
            closing = close_frame(client)
        assert frames[-3]["data"]["output"] == {"value": 42.0}
        assert (closing.code, closing.reason) == (1001, "server shutting down")
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        stderr = process.stderr.read().decode() if process.stderr else ""
        process.wait()
    assert (tmp_path / "out" / ".nodegraph" / "history" / f"{prompt_id}.json").is_file()
    assert "Traceback" not in stderr, stderr


def _listening_address(process: subprocess.Popen[bytes], timeout: float) -> str:
    """host:port from the server's 'listening on http://HOST:PORT/' line."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    output = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            output += chunk
            match = re.search(rb"listening on http://([^/\s]+)/", output)
            if match:
                return match.group(1).decode()
    process.kill()
    raise AssertionError(f"the server did not start: {output!r} {process.stderr.read() if process.stderr else ''!r}")
