"""Work a network can do once and reuse while its weights stay the same: the pieces that remember it.

- `WeightsSnapshot` tells whether parameters still hold the values they held when it was taken. It keeps
  the old storage alive, so a parameter whose data was swapped (`.to()`, `param.data = …`) can never be
  mistaken for the old one by landing at the same address; in-place updates (an optimiser step, a
  `load_state_dict`) bump the version counter it compares.
- `InputMemo` remembers a network's step-invariant work (the prior's text-prefix keys and values, a UNet's
  conditioning tokens) for the last inputs and weights it saw, so a sampler's 25-50 steps compute it once.
- `Conv2d` is `nn.Conv2d` that, at inference on the CPU, hands oneDNN its weight already reordered into the
  blocked layout oneDNN computes in. A plain `F.conv2d` on a channels-last map reorders the weight on every
  call; for the bundled UNets' small maps that reorder is as long as the convolution itself (a 96-channel
  3x3 convolution on two 8x8 maps: 239 µs plain, 116 µs with the weight prepacked). Same primitive, same
  arithmetic: outputs equal to the plain call's (tested). Training, autograd, other devices, other dtypes
  and torch builds without the op take the plain path.
  A convolution whose `compute_dtype` is bf16 (a model loaded with precision "auto") keeps fp32 weights and
  maps but convolves in bf16 where the CPU has native bf16 instructions (AVX512-BF16, AMX): the map is rounded
  to bf16 on the way in, the weight once when packed; oneDNN accumulates in fp32 and adds the fp32 bias, and
  the result comes back as fp32. Where the CPU lacks them it is the fp32 convolution, bit for bit.

Memos and packed weights hold the tensors they were computed from and on, so the modules that own them forget
them when moved or cast (`_apply`, which `.to()`, `.cuda()` and the engine's offloading go through): a model
offloaded to the CPU must not keep GPU memory alive through its memo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn


class WeightsSnapshot:
    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self._held = [(p.detach(), p._version) for p in params]

    def matches(self, params: Iterable[torch.Tensor]) -> bool:
        held = self._held
        params = list(params)
        return len(params) == len(held) and all(
            p.data_ptr() == h.data_ptr() and p.dtype == h.dtype and p._version == v
            for p, (h, v) in zip(params, held, strict=True)
        )


T = TypeVar("T")


class InputMemo(Generic[T]):
    """The value of `compute()` for the last (inputs, weights) seen: inputs compared by value (a sampler's
    conditions are the same tensors' contents at every step, not always the same objects), weights by
    `WeightsSnapshot`, so a network sampled between optimiser steps never gets stale values."""

    def __init__(self) -> None:
        self._last: tuple[tuple, WeightsSnapshot, T] | None = None

    def get(self, inputs: tuple[torch.Tensor | None, ...], params: Iterable[torch.Tensor],
            compute: Callable[[], T]) -> T:
        params = list(params)
        last = self._last
        if last is not None and last[1].matches(params) and _same_inputs(last[0], inputs):
            return last[2]
        value = compute()
        kept = tuple(None if t is None else t.clone() for t in inputs)
        self._last = (kept, WeightsSnapshot(params), value)
        return value

    def clear(self) -> None:
        self._last = None


def _same_inputs(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(
        x is None and y is None
        or (x is not None and y is not None and x.shape == y.shape and x.dtype == y.dtype and x.device == y.device
            and torch.equal(x, y))
        for x, y in zip(a, b, strict=True)
    )


def _onednn_ops():
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return ops._convolution_pointwise.default, ops._reorder_convolution_weight.default
    except (AttributeError, RuntimeError):  # a torch build without oneDNN's fused-op entry points
        return None


def _onednn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_ONEDNN = _onednn_ops() if torch.backends.mkldnn.is_available() else None
_BF16 = _ONEDNN is not None and _onednn_bf16()  # bf16 convolutions only where the CPU has them natively
_SHAPES_KEPT = 4  # weights packed per convolution: one per input shape seen, the oldest dropped


class Conv2d(nn.Conv2d):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.compute_dtype: torch.dtype | None = None  # bf16: convolve fp32 maps in bf16 where native (above)
        self._packed: dict[tuple, torch.Tensor] = {}
        self._packed_for: WeightsSnapshot | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self._traced(x)
        if not self._can_pack(x):
            return super().forward(x)
        conv, _ = _ONEDNN
        if self._in_bf16(x):
            return conv(x.to(torch.bfloat16), self._packed_weight(x, torch.bfloat16), self.bias, self.padding,
                        self.stride, self.dilation, self.groups, "none", [], "").to(x.dtype)
        return conv(x, self._packed_weight(x, x.dtype), self.bias, self.padding, self.stride, self.dilation,
                    self.groups, "none", [], "")

    def _traced(self, x: torch.Tensor) -> torch.Tensor:
        """What torch.compile traces (models/compiled.py): the plain convolution, whose weight inductor freezes and
        prepacks itself; in bf16 where this convolution's `compute_dtype` asks for it, as the eager path does."""
        if not self._in_bf16(x):
            return super().forward(x)
        y = F.conv2d(x.to(torch.bfloat16), self.weight.to(torch.bfloat16), None, self.stride, self.padding,
                     self.dilation, self.groups).to(x.dtype)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def _in_bf16(self, x: torch.Tensor) -> bool:
        return self.compute_dtype == torch.bfloat16 and x.dtype == torch.float32 and _BF16

    def _can_pack(self, x: torch.Tensor) -> bool:
        w = self.weight
        return (
            _ONEDNN is not None
            and x.device.type == "cpu" and w.device.type == "cpu"
            and x.dim() == 4 and x.dtype == w.dtype
            and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _BF16))
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
            and self.padding_mode == "zeros" and not isinstance(self.padding, str)
            and x.is_contiguous(memory_format=torch.channels_last)
            and torch.backends.mkldnn.enabled
        )

    def _packed_weight(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # oneDNN picks the blocked layout for the input's shape; a weight packed for another shape still gives
        # the same result but is reordered again on every call (10x slower), so each shape gets its own.
        params = [self.weight]
        if self._packed_for is None or not self._packed_for.matches(params):
            self._packed, self._packed_for = {}, WeightsSnapshot(params)
        key = (tuple(x.shape), dtype)
        packed = self._packed.get(key)
        if packed is None:
            if len(self._packed) >= _SHAPES_KEPT:
                self._packed.pop(next(iter(self._packed)))
            _, reorder = _ONEDNN
            packed = reorder(self.weight.detach().to(dtype), self.padding, self.stride, self.dilation, self.groups,
                             list(x.shape))
            self._packed[key] = packed
        return packed

    def _apply(self, fn, recurse=True):
        self._packed, self._packed_for = {}, None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        # Copies (deepcopy, pickling) start without packed weights: oneDNN tensors do not pickle, and a copy's
        # weights are new storage anyway.
        state = super().__getstate__()
        return {**state, "_packed": {}, "_packed_for": None}


__all__ = ["Conv2d", "InputMemo", "WeightsSnapshot"]
