"""Shared pieces of the server tests (no tests here): test-only nodes, a server fixture, a client.

Servers run in-process on a free port (BackgroundServer); clients are real websockets clients
(the synchronous API, so tests read top to bottom) and plain HTTP (urllib, see `http`). Every receive
has a timeout, so a bug fails a test instead of hanging it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from PIL import Image
from websockets.sync.client import ClientConnection, connect

import nodegraph.nodes.image as image_nodes
import nodegraph.nodes.utility as utility_nodes
from nodegraph.engine.api import Engine
from nodegraph.engine.context import RunContext
from nodegraph.engine.node import In, Node, Out
from nodegraph.engine.registry import Registry
from nodegraph.server.background import BackgroundServer
from nodegraph.server.config import ServerConfig

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0  # generous: the test machine is shared with training jobs
ADD_WORKFLOW: dict[str, Any] = json.loads((REPO / "workflows" / "utility_add.json").read_text())


class Steps(Node):
    """Test node: `steps` progress reports with a preview each; gated runs wait for the test's go-ahead.

    While waiting for the gate it keeps checking for an interrupt, as a real node waiting on
    something should, so an interrupt or shutdown stops it without the test having to open the gate.
    """

    category = "testing"
    inputs = {
        "steps": In("INT", default=4, min=1),
        "gated": In("BOOLEAN", default=False),
        "tag": In("STRING", default="", description="varies the cache key"),
    }
    outputs = (Out("FLOAT", "steps"),)
    gate: threading.Semaphore = threading.Semaphore(0)

    def run(self, ctx: RunContext, steps: int, gated: bool, tag: str) -> tuple[float]:
        for step in range(1, steps + 1):
            if gated:
                deadline = time.monotonic() + TIMEOUT
                while not type(self).gate.acquire(timeout=0.005):
                    ctx.check_interrupt()
                    if time.monotonic() > deadline:
                        raise RuntimeError("the test never opened the gate")
            ctx.progress(step, steps, preview=Image.new("RGB", (8, 8), (step * 20 % 256, 64, 128)))
        return (float(steps),)


class Fail(Node):
    """Test node: raises at run time."""

    category = "testing"
    inputs = {"message": In("STRING", default="boom")}
    outputs = (Out("FLOAT", "never"),)

    def run(self, ctx: RunContext, message: str) -> tuple[float]:
        raise RuntimeError(message)


class Gradient(Node):
    """Test node: a small RGB gradient IMAGE [1, 3, H, W] in [-1, 1]."""

    category = "testing"
    inputs = {"size": In("INT", default=8, min=1, max=64)}
    outputs = (Out("IMAGE", "image"),)

    def run(self, ctx: RunContext, size: int) -> tuple[Any]:
        import torch

        ramp = torch.linspace(-1.0, 1.0, size)
        return (torch.stack([ramp.expand(size, size), ramp.expand(size, size).T, -ramp.expand(size, size)])[None],)


def make_engine(root: Path) -> Engine:
    """A CPU engine with the utility and image-file nodes plus the test nodes, nothing else."""
    registry = Registry()
    registry.register_module(utility_nodes)
    registry.register_module(image_nodes)
    for node in (Steps, Fail, Gradient):
        registry.register(node)
    (root / "input").mkdir(exist_ok=True)
    return Engine("cpu", input_dir=root / "input", output_dir=root / "output", registry=registry, plugins=False)


def steps_workflow(steps: int = 4, *, gated: bool = False, tag: str = "") -> dict[str, Any]:
    return {
        "1": {"class_type": "Steps", "inputs": {"steps": steps, "gated": gated, "tag": tag}},
        "2": {"class_type": "Preview", "inputs": {"value": ["1", 0]}},
    }


def add_chain(length: int, start: float = 0.0) -> dict[str, Any]:
    nodes: dict[str, Any] = {"0": {"class_type": "Float", "inputs": {"value": start}}}
    for index in range(1, length + 1):
        nodes[str(index)] = {"class_type": "Add", "inputs": {"a": [str(index - 1), 0], "b": 1.0}}
    nodes["out"] = {"class_type": "Preview", "inputs": {"value": [str(length), 0]}}
    return nodes


def fresh_gate() -> threading.Semaphore:
    """A new gate for gated Steps runs (use as a fixture); `gate.release(n)` lets n more steps happen."""
    Steps.gate = threading.Semaphore(0)
    return Steps.gate


ServeFactory = Callable[..., BackgroundServer]


class ServerPool:
    """Starts servers for one test and stops them all at the end (use as the `serve` fixture).

    `pool.start(engine=None, **ServerConfig fields)` -> a started BackgroundServer on a free port,
    with its state in ROOT/state and, by default, an engine from make_engine(ROOT).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[BackgroundServer] = []

    def start(self, engine: Engine | None = None, **options: Any) -> BackgroundServer:
        options.setdefault("port", 0)
        options.setdefault("state_dir", self.root / "state")
        options.setdefault("ping_interval", None)
        server = BackgroundServer(ServerConfig(**options), engine or make_engine(self.root))
        self.started.append(server)
        return server.start()

    def __enter__(self) -> ServerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.started:
            server.stop()


class Client:
    """A websockets client speaking the protocol; `hello` is the status message sent on connect."""

    def __init__(self, server: BackgroundServer | str, client_id: str = "client", **connect_options: Any) -> None:
        """`server` is a BackgroundServer or a base URL such as "ws://127.0.0.1:8188"."""
        query = {"clientId": client_id, **connect_options.pop("query", {})}
        url = server.ws_url(**query) if isinstance(server, BackgroundServer) else f"{server}/ws?{urlencode(query)}"
        self.client_id = client_id
        self.statuses: list[dict[str, Any]] = []  # every status message received, in order
        self.progress_states: list[dict[str, Any]] = []  # every progress_state message, in order
        self._connect = connect(url, open_timeout=TIMEOUT, close_timeout=5, max_size=None, **connect_options)
        self.ws: ClientConnection = self._connect.__enter__()
        self.hello = self.recv()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self._connect.__exit__(None, None, None)

    def send(self, type_: str, data: dict[str, Any] | None = None) -> None:
        self.ws.send(json.dumps({"type": type_, "data": data if data is not None else {}}))

    def recv(self, timeout: float = TIMEOUT) -> Any:
        """The next frame: a decoded JSON message, or the bytes of a binary frame."""
        raw = self.ws.recv(timeout=timeout)
        if isinstance(raw, bytes):
            return raw
        message = json.loads(raw)
        if message["type"] == "status":
            self.statuses.append(message)
        elif message["type"] == "progress_state":
            self.progress_states.append(message["data"])
        return message

    def next_message(self, *types: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next JSON message of one of `types` (any type but status and progress_state when none given)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.0, deadline - time.monotonic()))
            if isinstance(message, bytes):
                continue
            if (types and message["type"] in types) or (
                not types and message["type"] not in ("status", "progress_state")
            ):
                return message

    def request(self, type_: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a message and return its answer (a message of the same type, or an error)."""
        self.send(type_, data)
        return self.next_message(type_, "error")

    def submit(self, workflow: dict[str, Any], params: dict[str, Any] | None = None, **extra: Any) -> str:
        data: dict[str, Any] = {"prompt": workflow, **extra}
        if params is not None:
            data["params"] = params
        self.send("prompt", data)
        reply = self.next_message("prompt_queued", "prompt_error", "error")
        assert reply["type"] == "prompt_queued", reply
        return reply["data"]["prompt_id"]

    def until_done(self, prompt_id: str, timeout: float = TIMEOUT) -> list[Any]:
        """Every frame but status and progress_state (kept in `progress_states`) up to and including the
        prompt's final `executing` (node null)."""
        frames: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.0, deadline - time.monotonic()))
            if isinstance(message, dict) and message["type"] == "status":
                continue
            if isinstance(message, dict) and message["type"] == "progress_state":
                continue
            frames.append(message)
            if (
                isinstance(message, dict)
                and message["type"] == "executing"
                and message["data"]["node"] is None
                and message["data"]["prompt_id"] == prompt_id
            ):
                return frames

    def run(self, workflow: dict[str, Any], params: dict[str, Any] | None = None, **extra: Any) -> list[Any]:
        return self.until_done(self.submit(workflow, params, **extra))


def http(
    method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, decoded JSON or bytes) of one HTTP request; error statuses are returned, not raised."""
    import urllib.error
    import urllib.request

    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and raw is None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            status, reply_headers, payload = reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        status, reply_headers, payload = error.code, dict(error.headers), error.read()
    if reply_headers.get("Content-Type", "").startswith("application/json"):
        return status, reply_headers, json.loads(payload)
    return status, reply_headers, payload


def types_of(frames: list[Any]) -> list[str]:
    return [frame["type"] if isinstance(frame, dict) else "binary" for frame in frames]
