"""A network's per-step work compiled by torch.compile (inductor) for inference on the CPU.

Eager PyTorch spends most of a small UNet's step outside its convolutions: per-op dispatch, GroupNorm, SiLU and
the scale-shift as separate passes over memory (docs/speed.md). Inductor fuses those element-wise tails into
generated C++ loops and, with `freezing`, folds the weights into the code as constants and prepacks the
convolutions' weights for oneDNN -- 1.4-1.6x faster per step for the bundled decoder and upsampler on an AMX CPU.

What that costs and how it stays correct:
- Compiling takes ~30 s per network and input shape on two cores (a new batch size compiles again), and every
  process pays most of it (the decoder: 37 s with an empty inductor cache, 27 s with a warm one): the main job's
  two UNets add ~85 s to a CLI run and save ~0.37 s per prompt -- worth it for a server or a batch of a few
  hundred prompts, not for one run, so it is opt-in (the UNet loaders' `compile` input).
- Frozen weights are a copy: a compiled forward serves a call only while the parameters still hold the values
  it froze (`WeightsSnapshot`); after an optimiser step or a `load_state_dict` the network runs as written.
- Generated element-wise kernels keep the OpenMP width of the call that compiled them when the thread policy
  (nodegraph/threads.py) later changes torch's count -- a compilation per count would stall a job for 20-40 s
  whenever a busy neighbour moved the count, and inductor's dynamic-threads mode was 37% slower on one thread.
  The convolutions, attention and matmuls follow torch's current count as before.
- Dynamo keeps its compiled variants per code object (at most 8) and the compiled graphs in the function's
  globals; each compiled network gets its own copy of both, so one model's shapes never evict another's and a
  model dropped from the cache takes its compiled code and frozen weights with it.
- Training, autograd, devices other than the CPU and dtypes other than fp32 / bf16 (inductor's frozen oneDNN
  convolutions refuse float64) run the network as written.
"""

from __future__ import annotations

import shutil
import types
import weakref
from collections.abc import Callable, Iterable

import torch
from torch import nn

from nodegraph.errors import InputValueError
from nodegraph.models.inference_cache import WeightsSnapshot

# freezing: weights as constants, convolutions prepacked; cpp_wrapper: the graph's kernel calls from C++, not
# Python (the decoder's step 8.8 ms against 11.7 ms, docs/speed.md).
OPTIONS = {"freezing": True, "cpp_wrapper": True}


class CompileUnavailable(InputValueError):
    """This machine cannot compile (no C++ compiler for inductor's CPU kernels): the `compile` input's fault."""

    def __init__(self, message: str) -> None:
        super().__init__("compile", message, code="compile_unavailable")


def has_compiler() -> bool:
    """Whether a C++ compiler inductor can use for its CPU kernels is on PATH."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def check_compiler() -> None:
    """Raise CompileUnavailable, saying what to install, where inductor would fail on the first call."""
    if not has_compiler():
        raise CompileUnavailable(
            "compiling needs a C++ compiler on PATH for inductor's CPU kernels (g++ or clang++; e.g. apt install "
            "g++); set compile to false to run the network as written")


class CompiledForward:
    """`method` (a bound method of a module) compiled for CPU inference with `params` frozen in."""

    def __init__(self, method: Callable[..., torch.Tensor], params: Iterable[torch.Tensor]) -> None:
        check_compiler()
        self._params = list(params)
        self._frozen = WeightsSnapshot(self._params)
        own = _own_code(method)
        self._fn = torch.compile(own, dynamic=False, fullgraph=True)
        # Dynamo's guards hold these globals, and are themselves kept by finalizers on the very weights the
        # compiled graphs in them hold: a cycle through a global registry. Emptying the globals when this object
        # goes breaks it, so a dropped model frees its weights.
        weakref.finalize(self, own.__func__.__globals__.clear)

    def serves(self, module: nn.Module, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and not torch.is_grad_enabled()
                and not module.training and self._frozen.matches(self._params))

    def __call__(self, *args) -> torch.Tensor:
        # Dynamo compiles on a call (the first, or one with new shapes), and inductor reads `freezing` from its
        # global config there: torch.compile's `options` do not reach that switch (torch 2.14).
        with torch._inductor.config.patch(OPTIONS):
            return self._fn(*args)


def _own_code(method: Callable) -> Callable:
    """The same method on fresh copies of its code object and globals. Dynamo keeps its compiled variants (at most
    8) on the code object and stores each compiled graph, with the frozen weights, in the function's globals: in
    the module's own globals that would keep every model ever compiled alive. These copies are ours alone."""
    func = method.__func__
    copy = types.FunctionType(func.__code__.replace(), dict(func.__globals__), func.__name__, func.__defaults__,
                              func.__closure__)
    copy.__kwdefaults__ = func.__kwdefaults__
    return types.MethodType(copy, method.__self__)


__all__ = ["CompileUnavailable", "CompiledForward", "OPTIONS", "check_compiler", "has_compiler"]
