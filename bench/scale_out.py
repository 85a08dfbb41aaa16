"""Scale-out on Ray: throughput and latency with 1, 2 and 4 CPU workers beside the local backend, the per-prompt
overhead Ray adds (through the engine, and through the server: submit over the websocket to the run's last
event), affinity with two alternating workflows, and recovery after a killed worker.

    .venv/bin/python bench/scale_out.py [--prompts 12] [--server-only]

Prompts are image workflows on the bundled models at few steps (decoder text-to-image 32 px, and the
upsampler), submitted all at once from as many client threads as there are workers. On a machine with C cores,
throughput cannot pass what C cores give: read the ratios to the local backend, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CAPTION = "a large red circle on the left on a blue background"
LOADERS = {"clip": {"class_type": "CLIPLoader", "inputs": {}}, "dec": {"class_type": "DecoderLoader", "inputs": {}},
           "ups": {"class_type": "UpsamplerLoader", "inputs": {}}}


def glide(seed: int) -> dict[str, Any]:
    return {**LOADERS, "text": {"class_type": "TextEncode", "inputs": {"clip": ["clip", 0], "text": CAPTION}},
            "noise": {"class_type": "Noise", "inputs": {"seed": seed}},
            "decode": {"class_type": "Decoder", "inputs": {"decoder": ["dec", 0], "noise": ["noise", 0],
                                                           "text": ["text", 0], "steps": 10}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "glide"}}}


def upsample(seed: int) -> dict[str, Any]:
    return {**LOADERS, "image": {"class_type": "LoadImage", "inputs": {"image": "example:red_circle_on_blue.png"}},
            "noise": {"class_type": "Noise", "inputs": {"seed": seed}},
            "up": {"class_type": "Upsample", "inputs": {"upsampler": ["ups", 0], "images": ["image", 0],
                                                        "noise": ["noise", 0], "steps": 5}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["up", 0], "filename_prefix": "up"}}}


ADD = {"a": {"class_type": "Float", "inputs": {"value": 1.0}},
       "s": {"class_type": "Add", "inputs": {"a": ["a", 0], "b": 2.0}},
       "p": {"class_type": "Preview", "inputs": {"value": ["s", 0]}}}


def load(engine: Any, prompts: list[dict[str, Any]], clients: int) -> tuple[float, list[float]]:
    """(prompts per second, latencies) with all prompts submitted at once from `clients` threads."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(workflow: dict[str, Any]) -> None:
        start = time.perf_counter()
        engine.run(workflow)
        with lock:
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, prompts))
    return len(prompts) / (time.perf_counter() - start), latencies


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--server-only", action="store_true", help="only the per-prompt overhead through the server")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray
    import torch

    from nodegraph.cluster.engine import ClusterEngine
    from nodegraph.engine.api import Engine

    torch.set_num_threads(1)
    out = tempfile.mkdtemp(prefix="scale-out-")
    if args.server_only:
        _print_server_overhead(out, ray)
        return
    prompts = [glide(i) if i % 2 == 0 else upsample(i) for i in range(args.prompts)]
    local = Engine("cpu", output_dir=out)
    for workflow in (glide(1000), upsample(1001)):
        local.run(workflow)  # models loaded (other seeds: nothing timed is a cache hit): warm engines
    rows = [("local (1 process)", *load(local, prompts, 1))]
    ray.init(num_cpus=max(5, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    overhead = {}
    for workers in (1, 2, 4):
        engine = ClusterEngine(output_dir=out, workers=workers, device="cpu", monitor_seconds=5.0)
        warm = [glide(2000 + i) if i % 2 == 0 else upsample(2000 + i) for i in range(2 * workers)]
        load(engine, warm, workers)  # every worker loads its models before the timing
        rows.append((f"ray, {workers} worker(s)", *load(engine, prompts, workers)))
        if workers == 1:
            local_add = statistics.median(_time(lambda: local.run(ADD)) for _ in range(20))
            ray_add = statistics.median(_time(lambda engine=engine: engine.run(ADD)) for _ in range(20))
            overhead = {"local": local_add, "ray": ray_add}
        if workers == 2:
            before = engine.pool.stats()
            for i in range(8):
                engine.run(glide(100 + i) if i % 2 == 0 else upsample(100 + i))
            after = engine.pool.stats()
            hits = (after["affinity_hits"] - before["affinity_hits"]) / (after["placements"] - before["placements"])
            recovery = _recovery(engine, ray)
        engine.pool.shutdown()
    base = rows[0][1]
    print(f"{'backend':<22}{'prompts/s':>10}{'x local':>9}{'p50 s':>8}{'p95 s':>8}")
    print("-" * 57)
    for name, rate, latencies in rows:
        print(f"{name:<22}{rate:>10.2f}{rate / base:>9.2f}{pct(latencies, 0.5):>8.2f}{pct(latencies, 0.95):>8.2f}")
    print(f"\nper-prompt overhead (3-node Add workflow, median of 20): local {overhead['local'] * 1000:.1f} ms, "
          f"ray {overhead['ray'] * 1000:.1f} ms -> Ray adds {(overhead['ray'] - overhead['local']) * 1000:.1f} ms")
    print(f"affinity, two alternating workflows on 2 workers: {hits:.0%} of 8 placements on a worker holding the "
          "models")
    print(f"recovery after a killed worker: the run finished {recovery['run']:.2f} s after the kill (requeued); "
          f"a replacement worker answered after {recovery['replacement']:.2f} s")
    _print_server_overhead(out, ray)


def _print_server_overhead(out: str, ray: Any) -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=max(3, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    local, remote = _server_add(out, "local"), _server_add(out, "ray")
    print(f"through the server (3-node Add workflow, websocket submit to last event, median of 20): local "
          f"{local * 1000:.1f} ms, ray (1 worker) {remote * 1000:.1f} ms -> Ray adds {(remote - local) * 1000:.1f} ms")
    ray.shutdown()


def _server_add(out: str, backend: str) -> float:
    """Median seconds from a websocket `prompt` message to the run's final `executing` (node null)."""
    import json

    from websockets.sync.client import connect

    from nodegraph.server.background import BackgroundServer
    from nodegraph.server.config import ServerConfig

    config = ServerConfig(port=0, backend=backend, workers=1, device="cpu", output_dir=Path(out, backend),
                          input_dir=Path(out, "input"), ping_interval=None)
    times = []
    with BackgroundServer(config) as server, connect(server.ws_url(clientId="bench")) as ws:
        for i in range(25):  # the first 5 warm the worker (imports, plan memo)
            start = time.perf_counter()
            ws.send(json.dumps({"type": "prompt", "data": {"prompt": {**ADD, "a": {
                "class_type": "Float", "inputs": {"value": float(i)}}}}}))
            while True:
                message = json.loads(ws.recv(timeout=120))
                if message["type"] == "executing" and message["data"]["node"] is None:
                    break
            if i >= 5:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def _time(action: Any) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _recovery(engine: Any, ray: Any) -> dict[str, float]:
    """Kill the worker running a prompt at its first progress event; time until the prompt finishes elsewhere
    and until the pool has a full set of live workers again."""
    killed: dict[str, float] = {}

    def kill(kind: str, data: dict[str, Any]) -> None:
        if kind == "progress" and not killed:
            worker = next(w for w in engine.pool._workers.values() if w.busy == data["prompt_id"])
            killed["at"] = time.perf_counter()
            ray.kill(worker.handle)

    engine.run(glide(999), on_event=kill)
    finished = time.perf_counter()
    while True:
        try:
            if len(engine.pool.worker_info()) == engine.pool.target:
                break
        except Exception:
            pass
        time.sleep(0.2)
    return {"run": finished - killed["at"], "replacement": time.perf_counter() - killed["at"]}


if __name__ == "__main__":
    main()
