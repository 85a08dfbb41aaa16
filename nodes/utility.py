"""Utility nodes with fixed names: constants (Int, Float, String), Add, and the Preview output."""

from __future__ import annotations

from typing import Any

from nodegraph.engine.context import RunContext
from nodegraph.engine.node import In, Node, Out


class Int(Node):
    """An integer constant."""

    category = "utility"
    passthrough = "value"
    inputs = {"value": In("INT", default=0, description="the integer to output")}
    outputs = (Out("INT", "value"),)

    def run(self, ctx: RunContext, value: int) -> tuple[int]:
        return (value,)


class Float(Node):
    """A floating-point constant (integers are accepted and widened)."""

    category = "utility"
    passthrough = "value"
    inputs = {"value": In("FLOAT", default=0.0, description="the number to output")}
    outputs = (Out("FLOAT", "value"),)

    def run(self, ctx: RunContext, value: float) -> tuple[float]:
        return (value,)


class String(Node):
    """A text constant."""

    category = "utility"
    passthrough = "value"
    inputs = {"value": In("STRING", default="", multiline=True, description="the text to output")}
    outputs = (Out("STRING", "value"),)

    def run(self, ctx: RunContext, value: str) -> tuple[str]:
        return (value,)


class Add(Node):
    """Adds two numbers (INT inputs are converted to FLOAT)."""

    category = "utility"
    inputs = {
        "a": In("FLOAT", default=0.0, description="first addend"),
        "b": In("FLOAT", default=0.0, description="second addend"),
    }
    outputs = (Out("FLOAT", "sum"),)

    def run(self, ctx: RunContext, a: float, b: float) -> tuple[float]:
        return (a + b,)


class Preview(Node):
    """Shows any value: the run result keeps the value itself, the executed event a JSON summary."""

    category = "utility"
    output_node = True
    inputs = {"value": In("*", description="any value; tensors are summarised by shape and dtype")}

    def run(self, ctx: RunContext, value: Any) -> tuple[()]:
        ctx.record(value=value)
        return ()
