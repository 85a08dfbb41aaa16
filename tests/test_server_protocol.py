"""The websocket protocol end to end: event order, caching, failures, validation, previews (plain and
node-tagged), progress_state, interrupts, per-client delivery, the queue (listing, deletion, limits),
history and the node catalogue."""

from __future__ import annotations

import io
import json
import struct
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from nodegraph.server.clients import NodeState, _latest_states

from test_server_support import (
    ADD_WORKFLOW,
    TIMEOUT,
    Client,
    ServeFactory,
    ServerPool,
    fresh_gate,
    steps_workflow,
    types_of,
)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    with ServerPool(tmp_path) as pool:
        yield pool.start


@pytest.fixture
def gate() -> threading.Semaphore:
    return fresh_gate()


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:
        return json.loads(reply.read())


def test_connecting_sends_status_with_the_client_id(serve: ServeFactory) -> None:
    server = serve()
    with Client(server, "alice") as client:
        status = {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "alice"}
        assert client.hello == {"type": "status", "data": status}


def test_a_workflow_reports_every_event_in_order(serve: ServeFactory) -> None:
    server = serve()
    with Client(server) as client:
        prompt_id = client.submit(ADD_WORKFLOW, {"a": 4}, prompt_id="add-1")
        frames = client.until_done(prompt_id)
    assert prompt_id == "add-1"
    assert types_of(frames) == [
        "execution_start",
        "execution_cached",
        "executing",
        "executing",
        "executing",
        "executing",
        "executed",
        "execution_success",
        "executing",
    ]
    assert all(frame["data"]["prompt_id"] == prompt_id for frame in frames)
    executing = [frame["data"]["node"] for frame in frames if frame["type"] == "executing"]
    assert sorted(executing[:2]) == ["1", "2"] and executing[2:] == ["3", "4", None]
    assert frames[1]["data"]["nodes"] == []
    assert frames[6]["data"]["node"] == "4" and frames[6]["data"]["output"] == {"value": 7.0}


def test_an_identical_rerun_lists_the_cached_nodes(serve: ServeFactory) -> None:
    server = serve()
    with Client(server) as client:
        client.run(ADD_WORKFLOW)
        frames = client.run(ADD_WORKFLOW)
    assert types_of(frames) == ["execution_start", "execution_cached", "executed", "execution_success", "executing"]
    assert sorted(frames[1]["data"]["nodes"]) == ["1", "2", "3", "4"]
    assert frames[2]["data"]["output"] == {"value": 5.0}


def test_a_node_failing_at_run_time_reports_execution_error(serve: ServeFactory) -> None:
    server = serve()
    workflow = {
        "1": {"class_type": "Fail", "inputs": {"message": "no luck"}},
        "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
    }
    with Client(server) as client:
        prompt_id = client.submit(workflow)
        frames = client.until_done(prompt_id)
        history = client.request("history", {"prompt_id": prompt_id})["data"]
    assert types_of(frames) == ["execution_start", "execution_cached", "executing", "execution_error", "executing"]
    error = frames[3]["data"]
    assert error["node_id"] == "1" and error["node_type"] == "Fail"
    assert error["exception_type"] == "builtins.RuntimeError" and error["exception_message"] == "no luck"
    assert any("no luck" in line for line in error["traceback"])
    status = history[prompt_id]["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    assert [message[0] for message in status["messages"]] == ["execution_start", "execution_cached", "execution_error"]


def test_an_invalid_workflow_is_answered_with_prompt_error_and_not_queued(serve: ServeFactory) -> None:
    server = serve()
    workflow = {
        "1": {"class_type": "Add", "inputs": {"a": "seven", "b": 1.0}},
        "2": {"class_type": "Nope", "inputs": {}},
        "3": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
    }
    with Client(server) as client:
        client.send("prompt", {"prompt": workflow, "prompt_id": "bad"})
        reply = client.next_message("prompt_error", "prompt_queued")
        queue = client.request("queue")["data"]
    assert reply["type"] == "prompt_error"
    data = reply["data"]
    assert data["prompt_id"] == "bad" and data["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(data["node_errors"]) == {"1", "2"}
    assert data["node_errors"]["1"]["class_type"] == "Add"
    [problem] = data["node_errors"]["1"]["errors"]
    assert problem["type"] == "invalid_input_type"  # ComfyUI's name; nodegraph's code beside it
    assert problem["extra_info"] == {"input_name": "a", "nodegraph_type": "wrong_type"}
    assert "seven" in problem["message"]
    assert data["node_errors"]["2"]["errors"][0]["type"] == "invalid_prompt"
    assert {issue["node"] for issue in data["error"]["extra_info"]["errors"]} == {"1", "2"}
    assert queue["queue_pending"] == [] and queue["queue_running"] == []


def test_bad_params_are_a_prompt_error(serve: ServeFactory) -> None:
    server = serve()
    with Client(server) as client:
        client.send("prompt", {"prompt": ADD_WORKFLOW, "params": {"a": "many", "zzz": 1}})
        reply = client.next_message("prompt_error", "prompt_queued")
    assert reply["type"] == "prompt_error"
    codes = {issue["type"] for issue in reply["data"]["error"]["extra_info"]["errors"]}
    assert codes == {"invalid_param_value", "unknown_param"}


def test_progress_previews_are_binary_png_frames_at_most_every_n_steps(serve: ServeFactory) -> None:
    server = serve(preview_every=2)
    with Client(server) as client:
        frames = client.run(steps_workflow(5, tag="previews"))
    progress = [frame["data"] for frame in frames if isinstance(frame, dict) and frame["type"] == "progress"]
    assert [(item["value"], item["max"], item["node"]) for item in progress] == [(step, 5, "1") for step in range(1, 6)]
    assert all("preview" not in item for item in progress)
    # A preview follows the progress message of its step: steps 1, 3 and 5 with N = 2.
    after = [types_of(frames)[index - 1] for index, frame in enumerate(frames) if isinstance(frame, bytes)]
    assert after == ["progress"] * 3
    preview_steps = [frames[index - 1]["data"]["value"] for index, f in enumerate(frames) if isinstance(f, bytes)]
    assert preview_steps == [1, 3, 5]
    for frame in (f for f in frames if isinstance(f, bytes)):
        assert struct.unpack(">II", frame[:8]) == (1, 2)
        with Image.open(io.BytesIO(frame[8:])) as picture:
            assert picture.format == "PNG" and picture.size == (8, 8)


def test_a_client_that_asks_for_it_gets_previews_that_name_their_node(serve: ServeFactory) -> None:
    server = serve()
    with Client(server) as client:
        client.send("feature_flags", {"supports_preview_metadata": True, "max_upload_size": 1})
        flags = client.next_message("feature_flags")["data"]
        assert flags["supports_preview_metadata"] is True and flags["max_upload_size"] > 0
        prompt_id = client.submit(steps_workflow(2, tag="tagged"))
        frames = client.until_done(prompt_id)
    previews = [frame for frame in frames if isinstance(frame, bytes)]
    assert len(previews) == 2
    for frame in previews:
        event, length = struct.unpack(">II", frame[:8])
        header = json.loads(frame[8 : 8 + length])
        assert event == 4 and header["node_id"] == "1" and header["prompt_id"] == prompt_id
        assert header["image_type"] == "image/png"
        with Image.open(io.BytesIO(frame[8 + length :])) as picture:
            assert picture.format == "PNG"


def test_progress_state_follows_the_running_node(serve: ServeFactory, gate: threading.Semaphore) -> None:
    server = serve()
    with Client(server) as client:
        prompt_id = client.submit(steps_workflow(3, gated=True, tag="state"))
        for step in range(1, 4):  # one step at a time, so each state is the latest when it is written
            gate.release()
            while client.next_message("progress")["data"]["value"] != step:
                pass
        client.until_done(prompt_id)
    states = client.progress_states
    assert states and all(state["prompt_id"] == prompt_id for state in states)
    running = [(node, entry["value"], entry["max"]) for state in states for node, entry in state["nodes"].items()]
    # Steps 1 and 2 were each the latest state when written (the node then waited for the gate); step 3 may
    # share a write with the Preview node's start, and only the latest state of a write is sent.
    assert ("1", 1, 3) in running and ("1", 2, 3) in running and running[-1] in [("1", 3, 3), ("2", 0, 1)]
    assert all(entry["state"] == "running" for state in states for entry in state["nodes"].values())
    first = next(state["nodes"]["1"] for state in states if "1" in state["nodes"])
    assert {"node_id", "display_node_id", "real_node_id", "parent_node_id"} <= set(first)


def test_a_superseded_progress_state_is_not_sent() -> None:
    # Written in one go, only the last state of a prompt goes out (the frontend keeps only the latest).
    frames = [NodeState("p", "1"), "text", NodeState("q", "9"), NodeState("p", "2", 1, 4), b"binary"]
    assert _latest_states(frames) == {2, 3}


def test_interrupt_stops_a_progress_loop_within_one_step(serve: ServeFactory, gate: threading.Semaphore) -> None:
    server = serve()
    with Client(server) as client:
        prompt_id = client.submit(steps_workflow(10, gated=True, tag="interrupt"))
        gate.release(3)
        while True:
            message = client.next_message("progress")
            if message["data"]["value"] == 3:
                break
        reply = client.request("interrupt", {"prompt_id": prompt_id})
        assert reply["data"] == {"prompt_id": prompt_id, "interrupted": True}
        frames = client.until_done(prompt_id)
        history = client.request("history", {"prompt_id": prompt_id})["data"][prompt_id]
    kinds = [kind for kind in types_of(frames) if kind != "binary"]
    assert kinds == ["execution_interrupted", "executing"]
    assert frames[-2]["data"]["node_id"] == "1" and frames[-2]["data"]["node_type"] == "Steps"
    assert history["status"]["status_str"] == "error" and history["nodegraph"]["status"] == "interrupted"
    assert history["status"]["messages"][-1][0] == "execution_interrupted"


def test_interrupt_answers_when_there_is_nothing_to_stop(serve: ServeFactory, gate: threading.Semaphore) -> None:
    server = serve()
    with Client(server) as client:
        assert client.request("interrupt")["data"] == {
            "prompt_id": None,
            "interrupted": False,
            "reason": "nothing is running",
        }
        running = client.submit(steps_workflow(1, gated=True, tag="hold"))
        client.next_message("execution_start")
        pending = client.submit(ADD_WORKFLOW)
        reply = client.request("interrupt", {"prompt_id": pending})["data"]
        assert reply["interrupted"] is False and "pending" in reply["reason"]
        gate.release()
        client.until_done(running)
        client.until_done(pending)


def test_each_client_receives_only_its_own_events(serve: ServeFactory, gate: threading.Semaphore) -> None:
    server = serve()
    with Client(server, "alice") as alice, Client(server, "bob") as bob:
        first = alice.submit(steps_workflow(2, gated=True, tag="alice"))
        second = bob.submit(ADD_WORKFLOW, {"a": 10})
        gate.release(2)
        alice_frames = alice.until_done(first)
        bob_frames = bob.until_done(second)
        others = alice.request("history", {"prompt_id": second})
    # Both heard the queue change when the second prompt was queued behind the first.
    for client in (alice, bob):
        assert 2 in [message["data"]["status"]["exec_info"]["queue_remaining"] for message in client.statuses]
    assert {frame["data"]["prompt_id"] for frame in alice_frames if isinstance(frame, dict)} == {first}
    assert {frame["data"]["prompt_id"] for frame in bob_frames} == {second}
    assert bob_frames[-3]["data"]["output"] == {"value": 13.0}
    assert "bob" not in json.dumps(others["data"][second])  # history is shared; events and client ids are not


def test_the_queue_lists_and_deletes_pending_prompts(serve: ServeFactory, gate: threading.Semaphore) -> None:
    server = serve()
    with Client(server, "owner") as owner, Client(server, "other") as other:
        running = owner.submit(steps_workflow(1, gated=True, tag="queue"))
        owner.next_message("execution_start")
        first = owner.submit(ADD_WORKFLOW, {"a": 1})
        second = owner.submit(ADD_WORKFLOW, {"a": 2})
        third = owner.submit(ADD_WORKFLOW, {"a": 3})
        listing = other.request("queue")["data"]
        assert [item[1] for item in listing["queue_running"]] == [running]
        assert [item[1] for item in listing["queue_pending"]] == [first, second, third]
        assert [item[0] for item in listing["queue_pending"]] == [1, 2, 3]
        assert "owner" not in json.dumps(listing)  # client ids are not shown to others

        reply = other.request("queue", {"delete": [second, running, "unknown"]})["data"]
        assert reply["deleted"] == [second]
        assert set(reply["not_deleted"]) == {running, "unknown"} and "interrupt" in reply["not_deleted"][running]
        assert [item[1] for item in reply["queue_pending"]] == [first, third]
        assert owner.next_message("prompt_deleted")["data"] == {"prompt_id": second}

        reply = other.request("queue", {"clear": True})["data"]
        assert reply["deleted"] == [first, third] and reply["queue_pending"] == []
        gate.release()
        frames = owner.until_done(running)
        assert frames[-2]["type"] == "execution_success"
        assert owner.request("history", {"prompt_id": second})["data"] == {}


def test_the_queue_length_is_capped(serve: ServeFactory, gate: threading.Semaphore) -> None:
    server = serve(max_queue=1)
    with Client(server) as client:
        running = client.submit(steps_workflow(1, gated=True, tag="cap"))
        client.next_message("execution_start")
        pending = client.submit(ADD_WORKFLOW)
        client.send("prompt", {"prompt": ADD_WORKFLOW, "params": {"a": 9}})
        reply = client.next_message("prompt_error", "prompt_queued")
        assert reply["type"] == "prompt_error" and reply["data"]["error"]["type"] == "queue_full"
        gate.release()
        client.until_done(running)
        client.until_done(pending)


def test_a_prompt_id_cannot_be_reused(serve: ServeFactory) -> None:
    server = serve()
    with Client(server) as client:
        client.run(ADD_WORKFLOW, prompt_id="once")
        client.send("prompt", {"prompt": ADD_WORKFLOW, "prompt_id": "once"})
        reply = client.next_message("prompt_error", "prompt_queued")
    assert reply["data"]["error"]["type"] == "duplicate_prompt_id"


def test_history_over_websocket_and_http(serve: ServeFactory) -> None:
    server = serve()
    with Client(server) as client:
        first = client.submit(ADD_WORKFLOW, {"a": 1})
        client.until_done(first)
        second = client.submit(ADD_WORKFLOW, {"b": 1})
        client.until_done(second)
        everything = client.request("history")["data"]
        latest = client.request("history", {"max_items": 1})["data"]
        unknown = client.request("history", {"prompt_id": "missing"})["data"]
    assert list(everything) == [first, second] and list(latest) == [second] and unknown == {}
    entry = everything[first]
    assert entry["outputs"] == {"4": {"value": 4.0}} and entry["nodegraph"]["params"] == {"a": 1}
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert entry["prompt"][:3] == [0, first, ADD_WORKFLOW]
    assert entry["meta"]["4"]["node_id"] == "4"
    assert http_json(server.url("/history")) == everything
    assert http_json(server.url(f"/history/{second}")) == {second: everything[second]}
    assert http_json(server.url("/history/missing")) == {}
    assert list(http_json(server.url("/history", max_items="1"))) == [second]
    assert http_json(server.url("/prompt")) == {"exec_info": {"queue_remaining": 0}}


def test_object_info_is_comfyui_shaped_and_the_catalogue_has_a_path_of_its_own(serve: ServeFactory) -> None:
    server = serve()
    with Client(server) as client:
        info = client.request("object_info")["data"]
    assert info == http_json(server.url("/object_info")) == http_json(server.url("/api/object_info"))
    assert info["Add"]["input"]["required"]["a"][0] == "FLOAT" and info["Add"]["output_name"] == ["sum"]
    assert http_json(server.url("/nodegraph/catalogue")) == server.server.engine.catalogue()


def test_saved_images_are_in_the_outputs_and_served_by_view(serve: ServeFactory, tmp_path: Path) -> None:
    server = serve()
    workflow = {
        "1": {"class_type": "Gradient", "inputs": {"size": 16}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "runs/grad"}},
    }
    with Client(server) as client:
        prompt_id = client.submit(workflow)
        frames = client.until_done(prompt_id)
        entry = client.request("history", {"prompt_id": prompt_id})["data"][prompt_id]
    [executed] = [frame for frame in frames if frame["type"] == "executed"]
    [image] = executed["data"]["output"]["images"]
    assert image == {"filename": "grad_00001_.png", "subfolder": "runs", "type": "output"}
    assert entry["nodegraph"]["files"] == [image] and entry["outputs"]["2"]["images"] == [image]
    with urllib.request.urlopen(server.url("/view", **image), timeout=TIMEOUT) as reply:
        assert reply.headers["Content-Type"] == "image/png"
        body = reply.read()
    assert body == (tmp_path / "output" / "runs" / "grad_00001_.png").read_bytes()


def test_an_input_file_vanishing_before_the_run_is_an_execution_error(
    serve: ServeFactory, gate: threading.Semaphore, tmp_path: Path
) -> None:
    server = serve()
    picture = tmp_path / "input" / "photo.png"
    Image.new("RGB", (4, 4)).save(picture)
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
    }
    with Client(server) as client:
        holder = client.submit(steps_workflow(1, gated=True, tag="vanish"))
        client.next_message("execution_start")
        prompt_id = client.submit(workflow)  # valid now: the file exists
        picture.unlink()
        gate.release()
        client.until_done(holder)
        frames = client.until_done(prompt_id)
    assert types_of(frames) == ["execution_error", "executing"]
    error = frames[0]["data"]
    assert error["node_id"] == "1" and error["node_type"] == "LoadImage"
    assert error["exception_type"] == "nodegraph.errors.WorkflowError"
    assert [issue["type"] for issue in error["errors"]] == ["file_not_found"]
