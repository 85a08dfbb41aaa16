"""`nodegraph serve --backend ray`: the server's HTTP and websocket API over a local multi-process Ray cluster that
the module starts itself (CPU, 2 workers, tiny models), one server and cluster shared by every test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from nodegraph.cluster.options import BackendOptions  # noqa: E402
from nodegraph.server.background import BackgroundServer  # noqa: E402
from nodegraph.server.config import ServerConfig  # noqa: E402

from fixtures_models import PRODUCERS, build_tiny_models  # noqa: E402
from test_server_support import Client, http  # noqa: E402

pytestmark = pytest.mark.slow

FIRST_RUN = 120.0  # a worker's first run imports torch and loads models: slow on a busy 2-core machine


def decode_graph(seed: int, steps: int = 4, prefix: str = "dec") -> dict[str, Any]:
    return {**PRODUCERS, "p_noise": {"class_type": "Noise", "inputs": {"seed": seed}},
            "decode": {"class_type": "Decoder", "inputs": {"decoder": ["p_dec", 0], "noise": ["p_noise", 0],
                                                           "text": ["p_text", 0], "steps": steps}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}}}


def upsample_graph() -> dict[str, Any]:
    return {**PRODUCERS, "up": {"class_type": "Upsample", "inputs": {"upsampler": ["p_ups", 0],
                                                                     "images": ["p_image", 0], "steps": 2}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["up", 0], "filename_prefix": "up"}}}


def long_graph(seed: int, decodes: int = 2) -> dict[str, Any]:
    """50-step decodes (about 1 s each on a free core): long enough to interrupt or kill at its first step."""
    graph = decode_graph(seed, steps=50, prefix="long")
    for i in range(2, decodes + 1):
        graph[f"noise_{i}"] = {"class_type": "Noise", "inputs": {"seed": seed + i}}
        graph[f"decode_{i}"] = {"class_type": "Decoder", "inputs": {"decoder": ["p_dec", 0], "noise": [f"noise_{i}", 0],
                                                                   "text": ["p_text", 0], "steps": 50}}
        graph[f"save_{i}"] = {"class_type": "SaveImage", "inputs": {"images": [f"decode_{i}", 0],
                                                                   "filename_prefix": "long"}}
    return graph


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = tmp_path_factory.mktemp("ray-server")
    models = build_tiny_models(root / "models")
    with pytest.MonkeyPatch.context() as patch:
        # The driver validates with these models; the local cluster's processes inherit this environment.
        patch.setenv("NODEGRAPH_MODELS", str(models["clip"].parent))
        patch.setenv("OMP_NUM_THREADS", "1")
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        config = ServerConfig(port=0, cluster=BackendOptions("ray", workers=2), device="cpu",
                              output_dir=root / "output", input_dir=root / "input", state_dir=root / "state",
                              ping_interval=None)
        server = BackgroundServer(config)
        try:
            yield server.start(timeout=FIRST_RUN)
        finally:
            server.stop()
            ray.shutdown()


def post_prompt(server: BackgroundServer, workflow: dict[str, Any], client_id: str) -> str:
    status, _, reply = http("POST", server.url("/prompt"), {"prompt": workflow, "client_id": client_id})
    assert status == 200, reply
    return reply["prompt_id"]


def history(server: BackgroundServer, prompt_id: str) -> dict[str, Any]:
    return http("GET", server.url(f"/history/{prompt_id}"))[2][prompt_id]


def cluster_stats(server: BackgroundServer, prefix: str = "") -> dict[str, Any]:
    status, _, body = http("GET", server.url(prefix + "/system_stats"))
    assert status == 200
    return body["cluster"]


def wait_for(condition: Any, timeout: float = FIRST_RUN) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def json_frames(frames: list[Any]) -> list[dict[str, Any]]:
    """The run's JSON messages (not the queue's status broadcasts, not progress_state)."""
    return [frame for frame in frames if isinstance(frame, dict) and frame["type"] not in ("status", "progress_state")]


def first_progress(client: Client, prompt_id: str) -> list[Any]:
    """Frames up to the prompt's first progress message (the run is then on a worker, at its first step)."""
    frames = []
    while True:
        frame = client.recv(FIRST_RUN)
        frames.append(frame)
        if isinstance(frame, dict) and frame["type"] == "progress" and frame["data"]["prompt_id"] == prompt_id:
            return frames


def test_prompts_from_several_clients_all_complete_with_only_their_own_events(served: BackgroundServer) -> None:
    clients = [Client(served, f"ray-client-{i}") for i in range(4)]
    try:
        ids = [post_prompt(served, decode_graph(seed=i), client.client_id) for i, client in enumerate(clients)]
        logs = [client.until_done(prompt_id, timeout=FIRST_RUN) for client, prompt_id in zip(clients, ids, strict=True)]
    finally:
        for client in clients:
            client.__exit__()
    output_dir = served.server.output_dir
    spans = []
    for prompt_id, frames in zip(ids, logs, strict=True):
        messages = json_frames(frames)
        assert {m["data"].get("prompt_id") for m in messages} == {prompt_id}  # no other client's events
        kinds = [m["type"] for m in messages]
        assert kinds[0] == "execution_start" and kinds.count("execution_start") == 1
        assert kinds[-2:] == ["execution_success", "executing"] and messages[-1]["data"]["node"] is None
        steps = [m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "decode"]
        assert steps == sorted(steps) and steps[-1] == 4
        [executed] = [m for m in messages if m["type"] == "executed"]
        entry = history(served, prompt_id)
        assert entry["nodegraph"]["status"] == "success"
        # The event, the history and the output directory agree on the landed file's name.
        [image] = entry["outputs"]["save"]["images"]
        assert executed["data"]["output"]["images"] == [image]
        status, _, body = http("GET", served.url("/view", **image))
        assert status == 200 and body == (output_dir / image["filename"]).read_bytes()
        spans.append((entry["nodegraph"]["started_at"], entry["nodegraph"]["finished_at"]))
    names = {history(served, prompt_id)["outputs"]["save"]["images"][0]["filename"] for prompt_id in ids}
    assert len(names) == 4  # four prompts, four files, none overwritten
    # Two workers: two prompts ran at once, never three.
    most = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert most == 2, spans


def queue_idle(server: BackgroundServer) -> bool:
    status, _, body = http("GET", server.url("/queue"))
    assert status == 200
    return not body["queue_running"] and not body["queue_pending"]


def test_repeated_workflows_go_to_the_worker_holding_their_models(served: BackgroundServer) -> None:
    # the counters are the cluster's: prompts an earlier test left running (one that timed out, say) would
    # still be placed after `before` is read and be counted here
    wait_for(lambda: queue_idle(served))
    before = cluster_stats(served)
    with Client(served, "affinity") as client:
        for round_ in range(3):
            for workflow in (decode_graph(seed=100 + round_), upsample_graph()):
                client.until_done(client.submit(workflow), timeout=FIRST_RUN)
    after = cluster_stats(served, "/api")  # the same route under /api/
    assert after["placements"] - before["placements"] == 6
    assert after["affinity_hits"] - before["affinity_hits"] >= 4, after  # the first of each may miss
    assert after["affinity_hit_rate"] == round(after["affinity_hits"] / after["placements"], 4)
    assert [w["name"] for w in after["workers"]] == [w["name"] for w in cluster_stats(served)["workers"]]
    assert len(after["workers"]) == after["target_workers"] == 2


def test_interrupt_over_http_reaches_the_worker_running_the_prompt(served: BackgroundServer) -> None:
    with Client(served, "stop-one") as client:
        prompt_id = post_prompt(served, long_graph(200), "stop-one")
        first_progress(client, prompt_id)
        status, _, reply = http("POST", served.url("/interrupt"), {"prompt_id": prompt_id})
        assert status == 200 and reply == {"prompt_id": prompt_id, "interrupted": True}
        kinds = [m["type"] for m in json_frames(client.until_done(prompt_id))]
    assert "execution_interrupted" in kinds and "execution_success" not in kinds
    assert history(served, prompt_id)["nodegraph"]["status"] == "interrupted"


def test_interrupt_without_an_id_stops_every_running_prompt(served: BackgroundServer) -> None:
    with Client(served, "stop-a") as first, Client(served, "stop-b") as second:
        ids = [post_prompt(served, long_graph(300), "stop-a"), post_prompt(served, long_graph(400), "stop-b")]
        first_progress(first, ids[0])
        first_progress(second, ids[1])
        running = http("GET", served.url("/queue"))[2]["queue_running"]
        assert sorted(item[1] for item in running) == sorted(ids)  # both run at once, one per worker
        status, _, reply = http("POST", served.url("/interrupt"))
        assert status == 200 and reply["interrupted"] and sorted(reply["prompt_ids"]) == sorted(ids)
        for client, prompt_id in zip((first, second), ids, strict=True):
            assert "execution_interrupted" in [m["type"] for m in json_frames(client.until_done(prompt_id))]
    assert [history(served, prompt_id)["nodegraph"]["status"] for prompt_id in ids] == ["interrupted"] * 2


def kill_at_first_step(server: BackgroundServer, client: Client, prompt_id: str,
                       times: int) -> tuple[list[Any], list[str]]:
    """Kill the worker running the prompt at its first progress message, `times` times (each requeued run
    again); then every frame up to the prompt's end, and the names of the workers killed."""
    pool = server.server.pool
    frames: list[Any] = []
    killed: list[str] = []
    while len(killed) < times:
        frames += first_progress(client, prompt_id)
        worker = next(w for w in pool._workers.values() if w.busy == prompt_id)
        killed.append(worker.name)
        ray.kill(worker.handle)
        if len(killed) < times:  # skip what the dead attempt still sends; the next run starts over
            while True:
                frame = client.recv(FIRST_RUN)
                frames.append(frame)
                if isinstance(frame, dict) and frame["type"] == "execution_start":
                    break
    return frames + client.until_done(prompt_id, timeout=FIRST_RUN), killed


def test_a_worker_killed_mid_prompt_loses_nothing(served: BackgroundServer) -> None:
    pool = served.server.pool
    output_dir = served.server.output_dir
    files_before = set(output_dir.glob("*.png"))
    requeued = pool.requeued
    with Client(served, "killed") as client:
        once = post_prompt(served, long_graph(500), "killed")
        frames, killed = kill_at_first_step(served, client, once, times=1)
    kinds = [m["type"] for m in json_frames(frames)]
    assert kinds.count("execution_start") == 2 and kinds[-2:] == ["execution_success", "executing"]
    assert pool.requeued == requeued + 1
    entry = history(served, once)
    assert entry["nodegraph"]["status"] == "success"
    landed = {output_dir / image["filename"] for node in ("save", "save_2")
              for image in entry["outputs"][node]["images"]}
    assert set(output_dir.glob("*.png")) - files_before == landed and len(landed) == 2  # no file lost or doubled
    assert killed[0] not in {w["name"] for w in cluster_stats(served)["workers"]}

    # Killed again after its requeue: a failed entry that says why, and nothing written.
    with Client(served, "killed-twice") as client:
        twice = post_prompt(served, long_graph(600), "killed-twice")
        frames, killed = kill_at_first_step(served, client, twice, times=2)
    messages = json_frames(frames)
    [error] = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert error["exception_type"].endswith("WorkerDied") and "died" in error["exception_message"]
    assert all(name in error["exception_message"] for name in killed), error
    assert messages[-1]["type"] == "executing" and messages[-1]["data"]["node"] is None
    entry = history(served, twice)
    assert entry["nodegraph"]["status"] == "error" and entry["status"]["status_str"] == "error"
    assert set(output_dir.glob("*.png")) - files_before == landed
    assert http("GET", served.url("/queue"))[2] == {"queue_running": [], "queue_pending": []}
    wait_for(lambda: workers_up(pool) == 2)  # the replacements are up


def workers_up(pool: Any) -> int:
    """How many of the pool's workers answer (a starting one answers once it has imported torch; a dead one is
    replaced and left out)."""
    return len(pool.worker_info())


def test_workers_added_while_serving_run_more_prompts_at_once(served: BackgroundServer) -> None:
    pool = served.server.pool
    [added] = pool.add_workers(1)
    wait_for(lambda: workers_up(pool) == 3)
    clients = [Client(served, f"grow-{i}") for i in range(3)]
    try:
        ids = [post_prompt(served, long_graph(700 + 10 * i, decodes=4), client.client_id)
               for i, client in enumerate(clients)]
        wait_for(lambda: len(http("GET", served.url("/queue"))[2]["queue_running"]) == 3)
        http("POST", served.url("/interrupt"))
        for client, prompt_id in zip(clients, ids, strict=True):
            client.until_done(prompt_id, timeout=FIRST_RUN)
    finally:
        for client in clients:
            client.__exit__()
    assert pool.remove_worker(added)
    assert cluster_stats(served)["target_workers"] == 2


def test_shutdown_stops_the_pool(served: BackgroundServer) -> None:
    pool = served.server.pool
    served.stop()
    assert pool.stats()["workers"] == [] and pool._closed
