"""Runs on a local multi-process Ray cluster that the tests start themselves (CPU, 2 workers, tiny models)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from nodegraph.cluster.engine import ClusterEngine  # noqa: E402
from nodegraph.engine.api import Engine  # noqa: E402
from nodegraph.errors import Interrupted  # noqa: E402

from fixtures_models import CAPTION, PRODUCERS, build_tiny_models  # noqa: E402

pytestmark = pytest.mark.slow


def decode_graph(steps: int = 4, seed: int = 0) -> dict[str, Any]:
    return {**PRODUCERS, "p_noise": {"class_type": "Noise", "inputs": {"seed": seed}},
            "decode": {"class_type": "Decoder", "inputs": {"decoder": ["p_dec", 0], "noise": ["p_noise", 0],
                                                           "text": ["p_text", 0], "steps": steps}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "dec"}}}


def upsample_graph() -> dict[str, Any]:
    return {**PRODUCERS, "up": {"class_type": "Upsample", "inputs": {"upsampler": ["p_ups", 0],
                                                                     "images": ["p_image", 0], "steps": 2}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["up", 0], "filename_prefix": "up"}}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> ClusterEngine:
    models = build_tiny_models(tmp_path_factory.mktemp("models"))
    env = {"NODEGRAPH_MODELS": str(models["clip"].parent), "OMP_NUM_THREADS": "1"}
    with pytest.MonkeyPatch.context() as patch:  # the driver validates with the same models
        patch.setenv("NODEGRAPH_MODELS", env["NODEGRAPH_MODELS"])
        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
        engine = ClusterEngine(output_dir=tmp_path_factory.mktemp("out"), workers=2, device="cpu", env=env,
                               monitor_seconds=0.5)
        yield engine
        engine.pool.shutdown()
        ray.shutdown()


def test_runs_from_several_clients_all_complete_with_their_events_in_order(cluster: ClusterEngine) -> None:
    logs: dict[int, list[tuple[str, Any]]] = {i: [] for i in range(4)}
    results: dict[int, Any] = {}

    def client(i: int) -> None:
        results[i] = cluster.run(decode_graph(seed=i), on_event=lambda kind, data: logs[i].append((kind, data)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert sorted(results) == [0, 1, 2, 3]
    for i, log in logs.items():
        kinds = [kind for kind, _ in log]
        assert kinds[0] == "execution_start" and kinds[-2:] == ["execution_success", "executing"]
        assert log[-1][1]["node"] is None and {data["prompt_id"] for _, data in log} == {results[i].prompt_id}
        assert results[i].files and all(Path(f).exists() for f in results[i].files)
    names = sorted(Path(f).name for r in results.values() for f in r.files)
    assert len(set(names)) == 4  # four runs, four files, none overwritten


def test_repeated_workflows_go_to_the_worker_that_holds_their_models(cluster: ClusterEngine) -> None:
    before = cluster.pool.stats()
    for _ in range(3):
        cluster.run(decode_graph())
        cluster.run(upsample_graph())
    after = cluster.pool.stats()
    placements = after["placements"] - before["placements"]
    hits = after["affinity_hits"] - before["affinity_hits"]
    assert placements == 6 and hits >= 4, after  # the first of each may land on a worker without its models


def test_a_worker_killed_mid_run_loses_nothing(cluster: ClusterEngine) -> None:
    killed: list[str] = []

    def kill_it(kind: str, data: dict[str, Any]) -> None:
        if kind == "progress" and not killed:
            worker = next(w for w in cluster.pool._workers.values() if w.busy == data["prompt_id"])
            killed.append(worker.name)
            ray.kill(worker.handle)

    requeued = cluster.pool.requeued
    result = cluster.run(decode_graph(steps=30, seed=7), on_event=kill_it)
    assert killed and cluster.pool.requeued == requeued + 1
    assert result.files and Path(result.files[0]).exists()
    assert killed[0] not in {w["name"] for w in cluster.pool.stats()["workers"]}
    assert len(cluster.pool.stats()["workers"]) == 2  # a replacement was started


def test_a_worker_that_dies_idle_is_replaced_once_and_worker_info_still_answers(cluster: ClusterEngine) -> None:
    pool = cluster.pool
    victim = next(iter(pool._workers.values()))
    ray.kill(victim.handle)
    # Several callers find the death at once (with the monitor looking every half second): one replacement.
    answers: list[list[dict[str, Any]]] = []
    threads = [threading.Thread(target=lambda: answers.append(pool.worker_info())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 4 and all(len(infos) <= pool.target for infos in answers)  # no caller saw an error
    sizes = []
    for _ in range(20):  # the monitor's checks meanwhile start nothing more
        sizes.append(len(pool.stats()["workers"]))
        threading.Event().wait(0.1)
    assert max(sizes) == pool.target == 2, sizes
    infos = pool.worker_info()
    assert len(infos) == 2 and victim.name not in {info["name"] for info in infos}
    assert cluster.run(decode_graph(seed=15)).files  # and the pool still runs prompts


def test_interrupt_reaches_the_worker_running_the_prompt(cluster: ClusterEngine) -> None:
    def stop(kind: str, data: dict[str, Any]) -> None:
        if kind == "progress" and data["value"] == 2:
            assert cluster.interrupt(data["prompt_id"])

    with pytest.raises(Interrupted):
        cluster.run(decode_graph(steps=40, seed=11), on_event=stop)
    assert cluster.run(decode_graph(seed=12)).files  # the worker is free again


def test_an_interrupt_asked_while_its_worker_dies_is_not_undone_by_the_requeue(cluster: ClusterEngine) -> None:
    """The user asked the run to stop and its worker died: running it again on another worker would undo that."""
    asked: list[bool] = []

    def kill_then_interrupt(kind: str, data: dict[str, Any]) -> None:
        if kind == "progress" and not asked:
            asked.append(True)
            worker = next(w for w in cluster.pool._workers.values() if w.busy == data["prompt_id"])
            ray.kill(worker.handle)
            cluster.interrupt(data["prompt_id"])

    # Whether the pool hears of the death before or after the interrupt (two threads race here), the run ends
    # interrupted: caught before the requeue, before the retry starts, or by the retry's worker at its first node.
    with pytest.raises(Interrupted):
        cluster.run(decode_graph(steps=30, seed=13), on_event=kill_then_interrupt)
    assert asked
    assert cluster.run(decode_graph(seed=14)).files  # and the pool still runs prompts
    assert not cluster.pool._stop_asked  # nothing kept about finished runs


def test_workers_added_and_removed_while_running_are_picked_up(cluster: ClusterEngine) -> None:
    [name] = cluster.pool.add_workers(1)
    assert name in {w["name"] for w in cluster.pool.stats()["workers"]}
    assert cluster.pool.remove_worker(name)
    assert len(cluster.pool.stats()["workers"]) == cluster.pool.target == 2


def test_a_batch_on_the_cluster_writes_the_same_files_as_a_local_batch(cluster: ClusterEngine, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from nodegraph import cli

    monkeypatch.setenv("NODEGRAPH_MODELS", cluster.pool._options["runtime_env"]["env_vars"]["NODEGRAPH_MODELS"])
    workflow = tmp_path / "wf.json"
    params = {"seed": {"node": "p_noise", "input": "seed"}, "caption": {"node": "p_text", "input": "text"}}
    workflow.write_text(json.dumps({"nodes": decode_graph(), "params": params}))
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps({"seed": s, "caption": CAPTION}) + "\n" for s in range(5)))
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert cli.main(["run", str(workflow), "--params-file", str(runs), "--out", str(local), "--device", "cpu"]) == 0
    monkeypatch.setattr("nodegraph.cluster.engine.WorkerPool", lambda **_: cluster.pool)
    assert cli.main(["run", str(workflow), "--params-file", str(runs), "--out", str(remote), "--backend", "ray"]) == 0
    local_files = sorted(p.name for p in local.iterdir())
    assert local_files == sorted(p.name for p in remote.iterdir()) and len(local_files) == 5
    for name in local_files:
        assert (local / name).read_bytes() == (remote / name).read_bytes(), name
    assert Engine  # the local batch above ran on the plain Engine
