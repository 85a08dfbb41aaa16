"""The memory manager (engine/memory.py): models stay cached within a device budget, are offloaded least
recently used first instead of dropped, come back before a node needs them, and are never reloaded needlessly.

Without a GPU the "device" is simulated: the run's device is the CPU, and the offload target is a label
("host") that test models understand; their weights stay in memory and only their label moves, which is all
the manager's bookkeeping looks at (it charges a model's bytes to the device it reports). The CUDA test at
the end moves real modules and is skipped without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from nodegraph.engine.api import Engine
from nodegraph.engine.cache import CacheEntry, OutputCache, tensor_bytes
from nodegraph.engine.context import RunContext
from nodegraph.engine.memory import find_movables, is_movable, placement
from nodegraph.engine.node import In, Node, Out

MB = 1 << 20
LOADS: list[str] = []


class FakeModel:
    """A movable model: `to(device)` moves it in place, `device` says where it is."""

    def __init__(self, name: str, size: int, device: str) -> None:
        self.name = name
        self.weights = torch.zeros(size // 4)
        self._device = device

    @property
    def device(self) -> str:
        return self._device

    def to(self, device: Any) -> FakeModel:
        self._device = str(device)
        return self


@dataclass
class Term:
    """A guidance-like value that holds a model another node loaded."""

    model: FakeModel
    scale: float


class LoadFake(Node):
    inputs = {"name": In("STRING", default="m"), "mb": In("INT", default=1, min=1)}
    outputs = (Out("FAKE_MODEL"),)

    def run(self, ctx: RunContext, name: str, mb: int) -> tuple[FakeModel]:
        LOADS.append(name)
        return (FakeModel(name, mb * MB, str(ctx.device)),)


class UseFake(Node):
    """Fails unless its model is on the run's device: the manager must have brought it back."""

    inputs = {"model": In("FAKE_MODEL"), "seed": In("INT", default=0), "after": In("*", optional=True)}
    outputs = (Out("FLOAT"),)

    def run(self, ctx: RunContext, model: FakeModel, seed: int, after: Any = None) -> tuple[float]:
        assert model.device == str(ctx.device), f"{model.name} is on {model.device}"
        return (float(seed),)


class MakeTerm(Node):
    inputs = {"model": In("FAKE_MODEL")}
    outputs = (Out("TERM"),)

    def run(self, ctx: RunContext, model: FakeModel) -> tuple[Term]:
        return (Term(model, 1.0),)


class UseTerm(Node):
    inputs = {"term": In("TERM"), "seed": In("INT", default=0)}
    outputs = (Out("FLOAT"),)

    def run(self, ctx: RunContext, term: Term, seed: int) -> tuple[float]:
        assert term.model.device == str(ctx.device)
        return (float(seed),)


class MakeTensor(Node):
    inputs = {"mb": In("INT", default=1), "seed": In("INT", default=0)}
    outputs = (Out("T"),)

    def run(self, ctx: RunContext, mb: int, seed: int) -> tuple[torch.Tensor]:
        return (torch.full((mb * MB // 4,), float(seed)),)


def engine(tmp_path: Path, device_mb: float, host_mb: float = 100) -> Engine:
    LOADS.clear()
    e = Engine("cpu", output_dir=tmp_path, plugins=False, offload_device="host",
               cache_budgets={"cpu": int(device_mb * MB), "host": int(host_mb * MB)})
    for cls in (LoadFake, UseFake, MakeTerm, UseTerm, MakeTensor):
        e.registry.register(cls)
    return e


def uses(*names: str, seed: int = 0) -> dict[str, Any]:
    graph: dict[str, Any] = {}
    for name in names:
        graph[f"load_{name}"] = {"class_type": "LoadFake", "inputs": {"name": name}}
        graph[f"use_{name}"] = {"class_type": "UseFake", "inputs": {"model": [f"load_{name}", 0], "seed": seed}}
        graph[f"show_{name}"] = {"class_type": "Preview", "inputs": {"value": [f"use_{name}", 0]}}
    return graph


def test_models_take_turns_on_the_device_without_being_reloaded(tmp_path: Path) -> None:
    e = engine(tmp_path, device_mb=2.5)
    stats = e.cache.residency.stats
    e.run(uses("a", "b"))
    assert LOADS == ["a", "b"] and stats.offloads == 0
    e.run(uses("c", "d"))  # two more models: a and b (least recently used) go to the host
    assert LOADS == ["a", "b", "c", "d"] and stats.offloads == 2
    assert e.cache.used["cpu"] <= 2.5 * MB and e.cache.used["host"] == 2 * MB
    again = e.run(uses("a", "b", seed=1))  # new seeds: the users run, the models come back, nothing reloads
    assert LOADS == ["a", "b", "c", "d"] and {"load_a", "load_b"} <= set(again.cached)
    assert stats.restores == 2 and stats.offloads == 4 and stats.drops == 0
    assert stats.restored_bytes == 2 * MB and stats.offloaded_bytes == 4 * MB
    assert e.cache.used["cpu"] <= 2.5 * MB and e.cache.used["host"] == 2 * MB
    e.run(uses("a", "b", seed=2))  # already resident: nothing moves
    assert stats.restores == 2 and stats.offloads == 4


def test_a_model_offloaded_during_a_run_comes_back_before_its_user(tmp_path: Path) -> None:
    e = engine(tmp_path, device_mb=2.5)
    graph = {
        "la": {"class_type": "LoadFake", "inputs": {"name": "a"}},
        "lb": {"class_type": "LoadFake", "inputs": {"name": "b"}},
        "lc": {"class_type": "LoadFake", "inputs": {"name": "c"}},
        # Using a after c was loaded: loading c offloaded a (the least recently used), so a must come back.
        "use": {"class_type": "UseFake", "inputs": {"model": ["la", 0], "after": ["uc", 0]}},
        "ub": {"class_type": "UseFake", "inputs": {"model": ["lb", 0], "after": ["lc", 0]}},
        "uc": {"class_type": "UseFake", "inputs": {"model": ["lc", 0], "after": ["ub", 0]}},
        "show": {"class_type": "Preview", "inputs": {"value": ["use", 0]}},
    }
    e.run(graph)
    stats = e.cache.residency.stats
    assert LOADS == ["a", "b", "c"] and stats.restores >= 1 and stats.drops == 0
    assert e.cache.used["cpu"] <= 2.5 * MB


def test_models_held_inside_other_values_come_back_too(tmp_path: Path) -> None:
    e = engine(tmp_path, device_mb=2.5)
    graph = {
        "la": {"class_type": "LoadFake", "inputs": {"name": "a"}},
        "term": {"class_type": "MakeTerm", "inputs": {"model": ["la", 0]}},
        "use": {"class_type": "UseTerm", "inputs": {"term": ["term", 0], "seed": 0}},
        "show": {"class_type": "Preview", "inputs": {"value": ["use", 0]}},
    }
    e.run(graph)
    e.run(uses("b", "c"))  # a goes to the host, with the Term that holds it
    model = e.cache.get(next(s for s, entry in e.cache._entries.items() if entry.outputs and
                             isinstance(entry.outputs[0], FakeModel) and entry.outputs[0].name == "a")).outputs[0]
    assert model.device == "host"
    graph["use"]["inputs"]["seed"] = 1
    e.run(graph)  # the Term is cached; UseTerm runs and gets its model back
    assert model.device == "cpu" and LOADS == ["a", "b", "c"]


def test_when_the_host_is_full_too_models_are_dropped_and_loaded_again(tmp_path: Path) -> None:
    e = engine(tmp_path, device_mb=2.5, host_mb=1.5)
    e.run(uses("a", "b"))
    e.run(uses("c", "d"))  # a and b offloaded, but only one fits on the host: the older is dropped
    stats = e.cache.residency.stats
    assert stats.offloads == 2 and stats.drops == 1 and e.cache.used["host"] <= 1.5 * MB
    e.run(uses("a", "b", seed=1))
    assert LOADS.count("a") == 2 and LOADS.count("b") == 1  # only the dropped one is loaded again


def test_tensors_are_never_moved_only_dropped(tmp_path: Path) -> None:
    e = engine(tmp_path, device_mb=2.5)
    graph = {f"t{i}": {"class_type": "MakeTensor", "inputs": {"seed": i}} for i in range(3)}
    graph.update({f"p{i}": {"class_type": "Preview", "inputs": {"value": [f"t{i}", 0]}} for i in range(3)})
    result = e.run(graph)
    assert all(out["value"].device.type == "cpu" for out in result.outputs.values())
    stats = e.cache.residency.stats
    assert stats.offloads == 0 and stats.drops > 0 and "host" not in {k for k, v in e.cache.used.items() if v}


def test_a_cpu_run_with_the_cpu_as_offload_device_manages_nothing(tmp_path: Path) -> None:
    e = Engine("cpu", output_dir=tmp_path, plugins=False, cache_budgets={"cpu": int(2.5 * MB)})
    for cls in (LoadFake, UseFake):
        e.registry.register(cls)
    LOADS.clear()
    assert not e.cache.manages("cpu")
    e.run(uses("a", "b"))
    e.run(uses("c", "d"))
    e.run(uses("a", "b", seed=1))
    assert LOADS == ["a", "b", "c", "d", "a", "b"]  # dropped, as the cache always did: nowhere to offload to
    assert e.cache.residency.stats.offloads == 0
    assert Engine("cpu", offload_device=None, plugins=False).cache.residency is None


def test_movables_and_their_bytes() -> None:
    net = torch.nn.Linear(4, 4)
    fake = FakeModel("x", 1024, "sim")
    assert is_movable(net) and is_movable(fake) and not is_movable(torch.zeros(2)) and not is_movable(Term)
    assert placement(net) == "cpu" and placement(fake) == "sim"
    assert find_movables((fake, [Term(fake, 1.0)], {"n": net})) in ([net, fake], [fake, net])
    # A model is charged to the device it reports, as a whole.
    assert tensor_bytes((fake, Term(fake, 2.0))) == {"sim": 1024}
    cache = OutputCache({"sim": 1500, "cpu": 10_000}, offload_device="cpu")
    cache.put("a", CacheEntry((fake,), None, None, tensor_bytes((fake,))))
    cache.put("b", CacheEntry((FakeModel("y", 1024, "sim"),), None, None, {"sim": 1024}))
    assert fake.device == "cpu" and cache.used == {"sim": 1024, "cpu": 1024} and "a" in cache
    cache.clear()
    assert cache.used == {} and not cache.residency._holders


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_modules_move_between_cuda_and_cpu(tmp_path: Path) -> None:
    class LoadNet(Node):
        inputs = {"name": In("STRING", default="m")}
        outputs = (Out("NET"),)

        def run(self, ctx: RunContext, name: str) -> tuple[torch.nn.Module]:
            LOADS.append(name)
            return (torch.nn.Linear(512, 512).to(ctx.device),)  # 1 MiB + bias

    class UseNet(Node):
        inputs = {"net": In("NET"), "seed": In("INT", default=0)}
        outputs = (Out("T"),)

        def run(self, ctx: RunContext, net: torch.nn.Module, seed: int) -> tuple[torch.Tensor]:
            return (net(torch.full((1, 512), float(seed), device=ctx.device)),)

    LOADS.clear()
    e = Engine("cuda", output_dir=tmp_path, plugins=False, cache_budgets={"cuda": int(2.5 * MB)})
    for cls in (LoadNet, UseNet):
        e.registry.register(cls)

    def graph(names: str, seed: int) -> dict[str, Any]:
        g: dict[str, Any] = {}
        for n in names:
            g[f"l{n}"] = {"class_type": "LoadNet", "inputs": {"name": n}}
            g[f"u{n}"] = {"class_type": "UseNet", "inputs": {"net": [f"l{n}", 0], "seed": seed}}
            g[f"p{n}"] = {"class_type": "Preview", "inputs": {"value": [f"u{n}", 0]}}
        return g

    first = e.run(graph("ab", 1)).outputs["pa"]["value"]
    e.run(graph("cd", 1))
    again = e.run(graph("ab", 1 + 0)).outputs  # cached outputs: nothing runs
    e.run(graph("ab", 2))
    stats = e.cache.residency.stats
    assert LOADS == ["a", "b", "c", "d"] and stats.offloads >= 2 and stats.restores == 2
    assert torch.equal(again["pa"]["value"], first) and first.device.type == "cuda"
    assert max(v for k, v in e.cache.used.items() if k.startswith("cuda")) <= 2.5 * MB
