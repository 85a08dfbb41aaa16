"""Server load: many clients, malformed traffic and long chains through a real `nodegraph serve` process.

    OMP_NUM_THREADS=1 .venv/bin/python bench/server_load.py [--clients 8] [--prompts 25] [--fuzz 10000]
        [--repeats 5] [--chains 100,200,500] [--image-workflow workflows/dalle2_text2img.json | none]
        [--baseline-server DIR]

Prompts are submitted as ComfyUI's clients submit them: HTTP POST /prompt with a client_id, events on the
websocket. `--baseline-server DIR` also measures a previous server (DIR is its `server/` folder, e.g. from
`git worktree add /tmp/old 90acd04`: the websockets-only server, which takes prompts over the websocket) on
the same engine and prints the two side by side, with the ratio of per-prompt overheads.

Three parts, each printed as a table:

1. load: N clients connected at once, each running its prompts one after another (submit, wait for
   the run to end, submit the next): utility workflows (a + b with fresh params, a 10-Add chain with a
   fresh constant, an identical re-run served from cache) and, when its file exists, one small image
   workflow per client (bundled models, a few steps). Checked for every prompt: queued once, finished
   once, events in the protocol's order with its own prompt_id only, success. Reported: p50/p95/max
   from submit to prompt_queued, to execution_start and to the last `executing` (node null); the
   server's resident memory before and after.
2. fuzz: random and malformed messages (binary frames, broken JSON, wrong shapes and field types,
   deep nesting, NaN, huge numbers, oversized frames, invalid workflows, valid requests); each
   must be answered by exactly one reply, and a valid prompt must still run afterwards.
3. chains of 100, 200 and 500 Add nodes: submit to the last `executing`, cold (a fresh constant each
   time, so validation, planning and every node run again) and identical re-run (all cached), with
   the server's CPU time per run (what to compare on a machine busy with other work: there the wall
   clock is mostly time spent waiting for a CPU, and "(min)" the least-disturbed run). ComfyUI's
   server took about 0.5-1 s cold and 0.6 s cached at 100 nodes, 3 s and 2 s at 200 on this machine.

The server is a separate process started here (`python -m nodegraph serve --port 0 --device cpu`),
so it does not share an interpreter with the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parent.parent
ADD_WORKFLOW = json.loads((REPO / "workflows" / "utility_add.json").read_text())
TERMINAL = {"execution_success", "execution_error", "execution_interrupted"}
MIB = 1024 * 1024


# ---------------------------------------------------------------- the server process


def shim_with_server(workdir: Path, server_dir: Path) -> Path:
    """A package folder that is this checkout's nodegraph with another `server/` in it (symlinks), so a
    previous server runs on today's engine and the comparison measures the server stack alone."""
    root = workdir / "shim"
    package = root / "nodegraph"
    package.mkdir(parents=True)
    for entry in (REPO / "nodegraph").iterdir():
        if entry.name not in ("server", "nodes"):
            (package / entry.name).symlink_to(entry)
    (package / "nodes").symlink_to(REPO / "nodes")
    (package / "server").symlink_to(server_dir.resolve())
    return root


class ServerProcess:
    """`nodegraph serve` in a child process; its address, memory and CPU time."""

    def __init__(self, workdir: Path, extra: list[str], pythonpath: Path | None = None) -> None:
        command = [sys.executable, "-m", "nodegraph", "serve", "--port", "0", "--device", "cpu"]
        command += ["--output-dir", str(workdir / "out"), "--input-dir", str(workdir / "in"), "--log-level", "error"]
        environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        if pythonpath is not None:
            environment["PYTHONPATH"] = str(pythonpath)
        self.process = subprocess.Popen([*command, *extra], cwd=workdir, env=environment, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()  # "nodegraph server listening on http://HOST:PORT/"
        match = re.search(r"listening on http://([^/\s]+)/", line)
        if match is None:
            self.process.kill()
            raise SystemExit(f"the server did not start (exit {self.process.wait()}): {line!r}")
        self.address = match.group(1)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.address}/ws"

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=120)


# ---------------------------------------------------------------- a client


class Client:
    """A websocket for events; prompts go by HTTP POST /prompt (`http`), or over the websocket (the old server)."""

    http: aiohttp.ClientSession | None = None  # shared by every client; set by main_async
    base_url = ""

    def __init__(self, ws: ClientConnection, client_id: str) -> None:
        self.ws = ws
        self.client_id = client_id

    @classmethod
    async def open(cls, url: str, client_id: str) -> Client:
        ws = await connect(f"{url}?clientId={client_id}", max_size=None, open_timeout=60, ping_interval=None)
        client = cls(ws, client_id)
        hello = json.loads(await ws.recv())
        assert hello["type"] == "status" and hello["data"]["sid"] == client_id, hello
        return client

    async def submit(self, data: dict[str, Any]) -> str | None:
        """Queue a prompt; None when it was answered over the websocket (read by the caller)."""
        if self.http is None:
            await self.send("prompt", data)
            return None
        body = {**data, "client_id": self.client_id}
        async with self.http.post(f"{self.base_url}/prompt", json=body) as reply:
            await reply.read()
            return "prompt_queued" if reply.status == 200 else "prompt_error"

    async def recv(self, timeout: float = 600) -> Any:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return json.loads(raw) if isinstance(raw, str) else raw

    async def send(self, type_: str, data: dict[str, Any]) -> None:
        await self.ws.send(json.dumps({"type": type_, "data": data}))


@dataclass
class PromptRecord:
    kind: str
    prompt_id: str
    submitted: float
    queued: float | None = None
    started: float | None = None
    done: float | None = None
    frames: list[Any] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)  # prompt_queued / prompt_error / error
    foreign: int = 0  # events carrying another prompt's id


async def run_prompt(
    client: Client, kind: str, workflow: dict[str, Any], params: dict[str, Any] | None
) -> PromptRecord:
    prompt_id = uuid.uuid4().hex
    data: dict[str, Any] = {"prompt": workflow, "prompt_id": prompt_id}
    if params:
        data["params"] = params
    record = PromptRecord(kind, prompt_id, time.perf_counter())
    answer = await client.submit(data)
    if answer is not None:
        record.replies.append(answer)
        record.queued = time.perf_counter()
        if answer != "prompt_queued":
            return record
    while True:
        message = await client.recv()
        now = time.perf_counter()
        if isinstance(message, bytes):
            record.frames.append(message)
            continue
        kind_ = message["type"]
        if kind_ == "status":
            continue
        if kind_ in ("prompt_queued", "prompt_error", "error"):
            record.replies.append(kind_)
            record.queued = record.queued or now
            if kind_ != "prompt_queued":
                return record
            continue
        if message["data"].get("prompt_id") != prompt_id:
            record.foreign += 1
            continue
        record.frames.append(message)
        if kind_ == "execution_start":
            record.started = record.started or now
        if kind_ == "executing" and message["data"]["node"] is None:
            record.done = now
            return record


def order_problem(record: PromptRecord) -> str | None:
    """Why this prompt's events are out of the protocol's order (None when they are right)."""
    frames = record.frames
    kinds = [frame["type"] if isinstance(frame, dict) else "binary" for frame in frames]
    if record.replies != ["prompt_queued"]:
        return f"replies {record.replies}"
    if kinds[:2] != ["execution_start", "execution_cached"]:
        return f"starts with {kinds[:2]}"
    if kinds[-1] != "executing" or frames[-1]["data"]["node"] is not None:
        return "does not end with executing null"
    if kinds[-2] != "execution_success":
        return f"ended with {kinds[-2]}"
    for index, kind in enumerate(kinds[2:-2], start=2):
        if kind == "binary" and kinds[index - 1] not in ("progress", "progress_state"):
            return "a preview not right after its progress message"
        if kind not in ("executing", "progress", "progress_state", "executed", "binary"):
            return f"unexpected {kind} mid-run"
        if kind == "executing" and frames[index]["data"]["node"] is None:
            return "executing null before the end"
    return None


def percentiles(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return (float("nan"),) * 3
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95, ordered[-1]


# ---------------------------------------------------------------- 1. load


def chain(length: int, start: float) -> dict[str, Any]:
    nodes: dict[str, Any] = {"0": {"class_type": "Float", "inputs": {"value": start}}}
    for index in range(1, length + 1):
        nodes[str(index)] = {"class_type": "Add", "inputs": {"a": [str(index - 1), 0], "b": 1.0}}
    nodes["out"] = {"class_type": "Preview", "inputs": {"value": [str(length), 0]}}
    return nodes


def load_plan(client_index: int, prompts: int, image: dict[str, Any] | None) -> list[tuple[str, Any, Any]]:
    plan: list[tuple[str, Any, Any]] = []
    for index in range(prompts):
        if image is not None and index == prompts // 2:
            fast = {"prior_steps": 2, "steps": 3, "upsample_steps": 2, "seed": client_index}
            plan.append(("image", image, fast))
        elif index % 3 == 0:
            plan.append(("add", ADD_WORKFLOW, {"a": client_index, "b": index}))
        elif index % 3 == 1:
            plan.append(("chain10", chain(10, float(client_index * 1000 + index)), None))
        else:
            plan.append(("cached", ADD_WORKFLOW, None))
    return plan


async def load_test(
    server: ServerProcess, clients: int, prompts: int, image: dict[str, Any] | None
) -> dict[str, tuple[float, float]]:
    rss_before = server.rss_mib()
    connections = [await Client.open(server.ws_url, f"load{index}") for index in range(clients)]
    cpu_before = server.cpu_seconds()

    async def one_client(index: int) -> list[PromptRecord]:
        return [await run_prompt(connections[index], *item) for item in load_plan(index, prompts, image)]

    started = time.perf_counter()
    per_client = await asyncio.gather(*(one_client(index) for index in range(clients)))
    wall = time.perf_counter() - started
    cpu_per_prompt = (server.cpu_seconds() - cpu_before) / (clients * prompts) * 1000
    records = [record for batch in per_client for record in batch]
    for connection in connections:
        await connection.ws.close()
    in_history = 0
    for record in records:
        entry = await fetch_json(server, f"/history/{record.prompt_id}")
        in_history += record.prompt_id in entry
    rss_after = server.rss_mib()

    completed = sum(record.done is not None for record in records)
    ids = [record.prompt_id for record in records]
    problems = [(record, order_problem(record)) for record in records]
    bad = [(record.prompt_id, why) for record, why in problems if why is not None]
    foreign = sum(record.foreign for record in records)
    with_images = " with one image workflow per client" if image is not None else ", utility workflows only"
    print(f"\n1. load: {clients} clients x {prompts} prompts{with_images}; each submits its next prompt when one ends")
    kinds = Counter(record.kind for record in records)
    print("   workflows: " + ", ".join(f"{kind} x{count}" for kind, count in kinds.items()))
    header = f"{'prompts':>8}{'completed':>11}{'lost':>6}{'dup ids':>9}{'bad order':>11}{'foreign':>9}"
    header += f"{'in history':>12}{'wall s':>9}{'prompts/s':>11}"
    print(header)
    print("-" * len(header))
    print(
        f"{len(records):>8}{completed:>11}{len(records) - completed:>6}{len(ids) - len(set(ids)):>9}{len(bad):>11}"
        f"{foreign:>9}{in_history:>12}{wall:>9.2f}{len(records) / wall:>11.1f}"
    )
    for prompt_id, why in bad[:5]:
        print(f"   bad order: {prompt_id}: {why}")
    print()
    header = f"{'latency ms':<28}{'p50':>9}{'p95':>9}{'max':>9}"
    print(header)
    print("-" * len(header))
    rows: list[tuple[str, list[float]]] = [
        ("submit -> prompt_queued", [r.queued - r.submitted for r in records if r.queued]),
        ("submit -> execution_start", [r.started - r.submitted for r in records if r.started]),
    ]
    for kind in sorted(kinds):
        rows.append((f"submit -> done ({kind})", [r.done - r.submitted for r in records if r.kind == kind and r.done]))
    summary: dict[str, tuple[float, float]] = {}
    for label, values in rows:
        p50, p95, high = percentiles(values)
        summary[label] = (p50 * 1000, p95 * 1000)
        print(f"{label:<28}{p50 * 1000:>9.1f}{p95 * 1000:>9.1f}{high * 1000:>9.1f}")
    print(f"\n   server CPU per prompt: {cpu_per_prompt:.2f} ms; RSS: {rss_before:.0f} MiB before, "
          f"{rss_after:.0f} MiB after")
    summary["server cpu per prompt"] = (cpu_per_prompt, cpu_per_prompt)
    lost = len(records) - completed
    summary["lost"] = (float(lost), float(len(bad)))
    return summary


async def fetch_json(server: ServerProcess, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(f"http://{server.address}{path}") as reply:
        return await reply.json(content_type=None)


# ---------------------------------------------------------------- 2. fuzz


def fuzz_message(rng: random.Random) -> str | bytes:
    """One random message; never a runnable prompt (workflows name unregistered node classes)."""
    pick = rng.random()
    types = ["prompt", "interrupt", "queue", "history", "object_info"]
    if pick < 0.08:
        return rng.randbytes(rng.randrange(0, 64))
    if pick < 0.16:
        return "".join(rng.choice("{}[]\":,ab1 \\") for _ in range(rng.randrange(1, 80)))
    if pick < 0.24:
        text = json.dumps({"type": rng.choice(types), "data": {"prompt": {"1": {"class_type": "Add"}}}})
        return text[: rng.randrange(1, len(text))]
    if pick < 0.30:
        return json.dumps(rng.choice([1, -2.5, "text", None, True, [1, 2], [], [{"type": "prompt"}]]))
    if pick < 0.36:
        return json.dumps(rng.choice([{}, {"data": {}}, {"type": 5}, {"type": None}, {"type": ["prompt"]}]))
    if pick < 0.42:
        return json.dumps({"type": f"no_such_type_{rng.randrange(1000)}", "data": {}})
    if pick < 0.62:
        kind = rng.choice(types)
        bad = rng.choice(
            [
                {"prompt": rng.choice([5, "x", [1], None])},
                {"prompt": {}, "prompt_id": rng.choice([7, "../../etc", "", "x" * 200, "a b"])},
                {"prompt": {}, "params": "a=1"},
                {"prompt_id": ["a"]},
                {"delete": "abc"},
                {"clear": "yes"},
                {"max_items": rng.choice([0, -1, True, 1.5, "3"])},
                {"unexpected": 1},
            ]
        )
        return json.dumps({"type": kind, "data": rng.choice([bad, [], "data", 3])})
    if pick < 0.66:
        depth = rng.randrange(1000, 50_000)
        return "[" * depth + "]" * depth
    if pick < 0.70:
        return rng.choice(
            [
                '{"type": "history", "data": {"max_items": NaN}}',
                '{"type": "history", "data": {"max_items": Infinity}}',
                '{"type": "history", "data": {"max_items": 1e999}}',
                '{"type": "history", "data": {"max_items": 1' + "0" * 5000 + "}}",
            ]
        )
    if pick < 0.702:
        return json.dumps({"type": "queue", "data": {"pad": "x" * (4 * MIB + 16)}})  # over the default 4 MiB limit
    if pick < 0.90:
        nodes = {
            str(index): {
                "class_type": f"Fuzz{rng.randrange(100)}",
                "inputs": {"value": rng.choice([1, "a", [str(index), 0], None, {"x": 1}])},
            }
            for index in range(rng.randrange(1, 8))
        }
        return json.dumps({"type": "prompt", "data": {"prompt": nodes}})
    return json.dumps(
        rng.choice(
            [
                {"type": "queue", "data": {}},
                {"type": "history", "data": {"max_items": 1}},
                {"type": "interrupt", "data": {}},
                {"type": "queue", "data": {"delete": ["nothing-here"]}},
            ]
        )
    )


async def fuzz_test(server: ServerProcess, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    client = await Client.open(server.ws_url, "fuzzer")
    replies: Counter[str] = Counter()
    window = 50
    missing = 0
    started = time.perf_counter()
    sent = 0
    while sent < count:
        batch = [fuzz_message(rng) for _ in range(min(window, count - sent))]
        for message in batch:
            await client.ws.send(message)
        sent += len(batch)
        got = 0
        while got < len(batch):
            try:
                reply = await client.recv(timeout=60)
            except TimeoutError:
                missing += len(batch) - got
                break
            if isinstance(reply, bytes) or reply["type"] == "status":
                continue
            code = reply["data"].get("code") or reply["data"].get("error", {}).get("type")
            replies[f"{reply['type']}:{code}" if code else reply["type"]] += 1
            got += 1
    wall = time.perf_counter() - started
    after = await run_prompt(client, "add", ADD_WORKFLOW, {"a": 1, "b": 2})
    fresh = await Client.open(server.ws_url, "after-fuzz")
    again = await run_prompt(fresh, "add", ADD_WORKFLOW, {"a": 3, "b": 4})
    for connection in (client, fresh):
        await connection.ws.close()
    survived = order_problem(after) is None and order_problem(again) is None
    print(f"\n2. fuzz: {count} random and malformed messages on one connection (seed {seed})")
    header = f"{'sent':>7}{'answered':>10}{'unanswered':>12}{'msgs/s':>9}{'valid prompt after':>20}{'RSS MiB':>9}"
    print(header)
    print("-" * len(header))
    print(
        f"{count:>7}{sum(replies.values()):>10}{missing:>12}{count / wall:>9.0f}"
        f"{'ok' if survived else 'FAILED':>20}{server.rss_mib():>9.0f}"
    )
    print("   replies: " + ", ".join(f"{key} {value}" for key, value in sorted(replies.items())))


# ---------------------------------------------------------------- 3. chains


async def chain_test(
    server: ServerProcess, lengths: list[int], repeats: int
) -> dict[int, tuple[float, float, float, float]]:
    client = await Client.open(server.ws_url, "chains")
    comfy = {100: (0.5, 1.0, 0.6), 200: (3.0, 3.0, 2.0)}  # ComfyUI: cold low, cold high, cached (seconds)
    print(f"\n3. chains of Add nodes through the server: submit -> last executing; median of {repeats}")
    header = f"{'graph':<12}{'nodes':>6}{'cold ms':>10}{'(min)':>8}{'rerun ms':>10}{'(min)':>8}"
    header += f"{'cpu cold':>10}{'cpu rerun':>11}{'ComfyUI cold/cached s':>23}{'x faster':>16}"
    print(header)
    print("-" * len(header))
    results: dict[int, tuple[float, float, float, float]] = {}
    warm = await run_prompt(client, "warm", chain(50, -1.0), None)  # first-use costs (imports, code paths)
    assert order_problem(warm) is None, order_problem(warm)
    counter = 0
    for length in lengths:
        cold, rerun = [], []
        cpu = server.cpu_seconds()
        for _ in range(repeats):
            counter += 1
            record = await run_prompt(client, "cold", chain(length, float(counter)), None)
            assert order_problem(record) is None, order_problem(record)
            cold.append(record.done - record.submitted)
        cpu_cold = (server.cpu_seconds() - cpu) / repeats
        same = chain(length, float(counter))
        cpu = server.cpu_seconds()
        for _ in range(repeats):
            record = await run_prompt(client, "rerun", same, None)
            assert order_problem(record) is None, order_problem(record)
            cached = record.frames[1]["data"]["nodes"]
            assert len(cached) == length + 2, f"a re-run should be all cached, got {len(cached)}"
            rerun.append(record.done - record.submitted)
        cpu_rerun = (server.cpu_seconds() - cpu) / repeats
        cold_ms, rerun_ms = statistics.median(cold) * 1000, statistics.median(rerun) * 1000
        results[length] = (cold_ms, rerun_ms, cpu_cold * 1000, cpu_rerun * 1000)
        low, high, cached_s = comfy.get(length, (float("nan"),) * 3)
        reference = f"{low:g}-{high:g} / {cached_s:g}" if low == low else "-"
        faster = f"{low * 1000 / cold_ms:.0f}x / {cached_s * 1000 / rerun_ms:.0f}x" if low == low else "-"
        print(
            f"{'chain ' + str(length):<12}{length + 2:>6}{cold_ms:>10.1f}{min(cold) * 1000:>8.1f}{rerun_ms:>10.1f}"
            f"{min(rerun) * 1000:>8.1f}{cpu_cold * 1000:>10.1f}{cpu_rerun * 1000:>11.1f}{reference:>23}{faster:>16}"
        )
    if len(lengths) >= 2:
        small, large = lengths[0], lengths[-1]
        ratio = results[large][0] / results[small][0]
        print(f"   cold {large}/{small} = {ratio:.2f} (linear: {large / small:.2f})")
    await client.ws.close()
    return results


# ---------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> None:
    image = None
    if args.image_workflow != "none":
        path = Path(args.image_workflow)
        if path.is_file():
            image = json.loads(path.read_text())
        else:
            print(f"(no image workflow: {path} does not exist)")
    lengths = [int(length) for length in args.chains.split(",")]
    measured: dict[str, list[tuple[dict[str, Any], dict[int, Any]]]] = {"new": [], "previous": []}
    servers: list[tuple[str, Path | None]] = [("new", None)]
    if args.baseline_server is not None:
        servers.append(("previous", Path(args.baseline_server)))
    # Rounds alternate the servers, so load from other work on the machine falls on both alike.
    for round_index, (name, baseline) in enumerate(servers * args.rounds):
        with tempfile.TemporaryDirectory(prefix="nodegraph-bench-") as workdir:
            where = Path(workdir)
            pythonpath = shim_with_server(where, baseline) if baseline is not None else None
            print(f"\n===== {name} server{f' ({baseline})' if baseline else ''}: starting ...", flush=True)
            server = ServerProcess(where, ["--max-queue", "100000"], pythonpath)
            # The previous server takes prompts over the websocket only; the new one as ComfyUI's clients send them.
            session = aiohttp.ClientSession() if baseline is None else None
            Client.http, Client.base_url = session, f"http://{server.address}"
            submit = "websocket message" if baseline is not None else "HTTP POST /prompt"
            try:
                print(f"server pid {server.process.pid} at {server.address}, RSS {server.rss_mib():.0f} MiB; "
                      f"prompts submitted by {submit}")
                load = await load_test(server, args.clients, args.prompts, None)
                first = round_index < len(servers)
                if image is not None and baseline is None and first:
                    await load_test(server, args.clients, args.prompts, image)
                if baseline is None and first:
                    await fuzz_test(server, args.fuzz)
                chains = await chain_test(server, lengths, args.repeats)
                measured[name].append((load, chains))
            finally:
                if session is not None:
                    await session.close()
                code = server.stop()
            print(f"\nserver stopped on SIGTERM with exit code {code}")
    if measured["previous"]:
        compare(median_of(measured["previous"]), median_of(measured["new"]), lengths, args.rounds)


def median_of(rounds: list[tuple[dict[str, Any], dict[int, Any]]]) -> tuple[dict[str, Any], dict[int, Any]]:
    """Each measure's median over the rounds."""
    load = {
        label: tuple(statistics.median(r[0][label][i] for r in rounds) for i in range(2)) for label in rounds[0][0]
    }
    chains = {
        length: tuple(statistics.median(r[1][length][i] for r in rounds) for i in range(4)) for length in rounds[0][1]
    }
    return load, chains


def compare(previous: tuple[dict[str, Any], dict[int, Any]], new: tuple[dict[str, Any], dict[int, Any]],
            lengths: list[int], rounds: int) -> None:
    """Per-prompt overhead of the previous server against the new one (the target: new within 1.5x)."""
    print(f"\n4. per-prompt overhead (medians of {rounds} alternating rounds): previous server (websockets, prompts "
          "over the websocket) against the new one (aiohttp, HTTP POST /prompt)")
    header = f"{'measure (ms)':<34}{'previous':>10}{'new':>10}{'new/previous':>14}"
    print(header)
    print("-" * len(header))
    rows: list[tuple[str, float, float]] = []
    rows.append(("server cpu per prompt (load)", previous[0]["server cpu per prompt"][0],
                 new[0]["server cpu per prompt"][0]))
    for label in new[0]:
        if label.startswith("submit ->") and label in previous[0]:
            rows.append((f"{label} p50", previous[0][label][0], new[0][label][0]))
            rows.append((f"{label} p95", previous[0][label][1], new[0][label][1]))
    for length in lengths:
        old_chain, new_chain = previous[1][length], new[1][length]
        rows.append((f"chain {length} cold (median)", old_chain[0], new_chain[0]))
        rows.append((f"chain {length} rerun (median)", old_chain[1], new_chain[1]))
        rows.append((f"chain {length} server cpu, cold", old_chain[2], new_chain[2]))
    for label, old_value, new_value in rows:
        ratio = new_value / old_value if old_value > 0 else float("nan")
        print(f"{label:<34}{old_value:>10.1f}{new_value:>10.1f}{ratio:>14.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=25, help="prompts per client")
    parser.add_argument("--fuzz", type=int, default=10_000, help="random messages to send")
    parser.add_argument("--repeats", type=int, default=5, help="runs per chain measurement")
    parser.add_argument("--chains", default="100,200,500", help="chain lengths, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds per server (with a baseline)")
    parser.add_argument(
        "--baseline-server",
        default=None,
        metavar="DIR",
        help="a previous server/ folder to measure on the same engine and compare (e.g. from git worktree)",
    )
    parser.add_argument(
        "--image-workflow",
        default=str(REPO / "workflows" / "dalle2_text2img.json"),
        help="one run per client at a few steps; 'none' to skip",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
