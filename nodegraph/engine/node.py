"""The node protocol: a class declares typed inputs and outputs and one `run` function.

    class Add(Node):
        '''Adds two numbers.'''
        category = "utility"
        inputs = {"a": In("FLOAT", default=0.0), "b": In("FLOAT", default=0.0)}
        outputs = (Out("FLOAT", "sum"),)

        def run(self, ctx: RunContext, a: float, b: float) -> tuple[float]:
            return (a + b,)

A node is instantiated afresh for every execution, so it cannot carry state between runs. It may
define `fingerprint(cls, ctx, **constants) -> str | None` (a classmethod), called when a workflow is
validated and again before every run starts, with the constant inputs (linked ones are absent): it
checks what they name outside the workflow (an InputValueError there is reported as a validation issue,
before any node runs: a missing file, an unwritable output folder) and returns what joins the cache key,
e.g. the hash of a file it reads, or None when that cannot be known before the run (a file name that
arrives over a link), which makes the node and everything downstream of it run every time.
`NodeSpec.from_class` checks a declaration once, at registration, so that mistakes surface when a module
is loaded rather than in the middle of a run.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from nodegraph.engine import sockets
from nodegraph.errors import NodeDefinitionError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nodegraph.engine.context import RunContext


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


class DynamicChoices(Sequence):
    """Choices that depend on the machine, e.g. the model files found in a folder: a validation that only
    looked at the node declaration would go stale when a file is added or removed.

    Listing (`list(choices)`, the catalogue, ComfyUI's combo) calls `options()` each time; membership, which
    validation checks, is `accepts(value)`: the values that may be looked up at all (a well-formed file
    name), since whether that file exists is checked by the node's `fingerprint` when the workflow is
    validated and before every run, where the error can say what to do ("put FILE in DIR").
    """

    def __init__(self, options: Callable[[], Sequence[Any]], accepts: Callable[[Any], bool]) -> None:
        self.options = options
        self.accepts = accepts

    def __getitem__(self, index):  # type: ignore[override]
        return tuple(self.options())[index]

    def __len__(self) -> int:
        return len(tuple(self.options()))

    def __iter__(self) -> Iterator[Any]:
        return iter(tuple(self.options()))

    def __contains__(self, value: object) -> bool:
        return self.accepts(value)

    def __repr__(self) -> str:
        return f"DynamicChoices({getattr(self.options, '__qualname__', self.options)!r})"


def _declared(type_: str) -> str:
    """A bare name of a built-in socket type becomes its declaration (value class, conventions)."""
    if isinstance(type_, sockets.SocketType):
        return type_
    return sockets.BUILTIN.get(type_, type_) if isinstance(type_, str) else type_


@dataclass(frozen=True, slots=True)
class In:
    """An input socket: its type (a SocketType, or a name) and, for constant types, default, range and choices."""

    type: str
    default: Any = NO_DEFAULT
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] | DynamicChoices | None = None
    optional: bool = False
    description: str = ""
    multiline: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", _declared(self.type))

    @property
    def has_default(self) -> bool:
        return self.default is not NO_DEFAULT

    @property
    def is_bounded(self) -> bool:
        return self.min is not None or self.max is not None or self.choices is not None

    def bounds_problem(self, value: Any) -> tuple[str, str] | None:
        """(issue code, what is wrong after "input X is VALUE") when `value` is outside the declared range or
        choices; the same check for constants at validation and for linked values when they arrive."""
        try:
            if self.min is not None and value < self.min:
                return "out_of_range", f", below the minimum {self.min}"
            if self.max is not None and value > self.max:
                return "out_of_range", f", above the maximum {self.max}"
            outside = self.choices is not None and value not in self.choices
        except TypeError:  # a linked value of another type: the socket check lets only declared types through
            return "wrong_type", ", which cannot be compared with its range"
        if outside:
            if isinstance(self.choices, DynamicChoices):
                return "not_in_choices", ", which is not a name these choices can take"
            return "not_in_choices", f"; choose one of {', '.join(repr(choice) for choice in self.choices)}"
        return None

    def describe(self) -> dict[str, Any]:
        """The catalogue entry for this input (JSON-friendly; absent fields are omitted)."""
        info: dict[str, Any] = {"type": str(self.type)}
        if self.has_default:
            info["default"] = self.default
        for key in ("min", "max", "step"):
            value = getattr(self, key)
            if value is not None:
                info[key] = value
        if self.choices is not None:
            info["choices"] = list(self.choices)
        info["optional"] = self.optional
        info["link_only"] = self.type not in sockets.CONSTANT_TYPES and self.type != sockets.ANY
        info["accepts"] = sockets.accepted_link_types(self.type)
        if self.multiline:
            info["multiline"] = True
        if self.description:
            info["description"] = self.description
        return info


@dataclass(frozen=True, slots=True)
class Out:
    """An output socket: its type (a SocketType, or a name) and a name shown in the catalogue and GUI."""

    type: str
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", _declared(self.type))

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"type": str(self.type), "name": self.name or self.type.lower()}
        if self.description:
            info["description"] = self.description
        return info


class Node:
    """Base class of every node. Subclasses set the class attributes and implement `run`."""

    category: ClassVar[str] = "misc"
    description: ClassVar[str] = ""  # defaults to the class docstring
    version: ClassVar[int | str] = 1  # bump when outputs change for the same inputs (joins the cache key)
    inputs: ClassVar[Mapping[str, In]] = {}
    outputs: ClassVar[tuple[Out, ...]] = ()
    output_node: ClassVar[bool] = False
    node_name: ClassVar[str | None] = None  # the workflow's class_type; defaults to the class name
    # the input whose value output 0 repeats unchanged (the constant nodes): a constant there that reaches a
    # bounded input downstream is checked against that input's range or choices when the graph is validated
    passthrough: ClassVar[str | None] = None

    def run(self, ctx: RunContext, **inputs: Any) -> tuple[Any, ...] | None:
        raise NotImplementedError(f"{type(self).__name__} does not implement run()")


@dataclass(slots=True)
class NodeSpec:
    """A checked, precomputed view of a node class, used on the hot path instead of the class."""

    name: str
    cls: type[Node]
    inputs: dict[str, In]
    outputs: tuple[Out, ...]
    output_node: bool
    version: int | str
    category: str
    description: str
    has_fingerprint: bool
    passthrough: str | None = None  # Node.passthrough
    # per input: the constant check to run on inline values (None for link-only inputs)
    constant_checks: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_class(cls, node_cls: type[Node], name: str | None = None) -> NodeSpec:
        if not (isinstance(node_cls, type) and issubclass(node_cls, Node)):
            raise NodeDefinitionError(f"{node_cls!r} is not a subclass of nodegraph.Node")
        node_name = name or node_cls.node_name or node_cls.__name__
        where = f"node {node_name} ({node_cls.__module__}.{node_cls.__qualname__})"
        if not isinstance(node_name, str) or not node_name.isidentifier():
            raise NodeDefinitionError(f"{where}: name must be an identifier, got {node_name!r}")
        if node_cls.run is Node.run:
            raise NodeDefinitionError(f"{where}: does not implement run(self, ctx, ...)")
        inputs = dict(node_cls.inputs)
        for input_name, spec in inputs.items():
            _check_input(where, input_name, spec)
        outputs = tuple(node_cls.outputs)
        for index, out in enumerate(outputs):
            if not isinstance(out, Out):
                raise NodeDefinitionError(f"{where}: outputs[{index}] must be Out(...), got {out!r}")
            if not sockets.is_valid_type_name(out.type) or out.type == sockets.ANY:
                raise NodeDefinitionError(f"{where}: outputs[{index}] has an invalid type {out.type!r}")
        _check_run_signature(where, node_cls, inputs)
        fingerprint = getattr(node_cls, "fingerprint", None)
        if fingerprint is not None and not inspect.ismethod(fingerprint):
            raise NodeDefinitionError(f"{where}: fingerprint must be a classmethod")
        description = node_cls.description or inspect.cleandoc(node_cls.__doc__ or "")
        checks = {input_name: sockets.CONSTANT_CHECKS.get(spec.type) for input_name, spec in inputs.items()}
        passthrough = node_cls.passthrough
        if passthrough is not None and (passthrough not in inputs or not outputs):
            raise NodeDefinitionError(f"{where}: passthrough {passthrough!r} must name an input, and the node "
                                      "must have an output to repeat it on")
        return cls(
            name=node_name,
            cls=node_cls,
            inputs=inputs,
            outputs=outputs,
            output_node=bool(node_cls.output_node),
            version=node_cls.version,
            category=str(node_cls.category),
            description=description,
            has_fingerprint=fingerprint is not None,
            passthrough=passthrough,
            constant_checks=checks,
        )

    def describe(self) -> dict[str, Any]:
        """This node's catalogue entry (what `nodegraph nodes --json` prints)."""
        return {
            "name": self.name,
            "category": self.category,
            "description": self.description,
            "version": self.version,
            "output_node": self.output_node,
            "inputs": {name: spec.describe() for name, spec in self.inputs.items()},
            "outputs": [out.describe() for out in self.outputs],
        }


def _check_input(where: str, name: str, spec: In) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise NodeDefinitionError(f"{where}: input name {name!r} must be an identifier")
    if not isinstance(spec, In):
        raise NodeDefinitionError(f"{where}: input {name!r} must be In(...), got {spec!r}")
    if not sockets.is_valid_type_name(spec.type):
        raise NodeDefinitionError(
            f"{where}: input {name!r} has invalid type {spec.type!r} (use an UPPER_CASE name or '*')"
        )
    constant = spec.type in sockets.CONSTANT_TYPES
    if not constant and (spec.min is not None or spec.max is not None or spec.choices is not None):
        raise NodeDefinitionError(f"{where}: input {name!r}: min/max/choices only apply to constant types")
    if spec.min is not None and spec.max is not None and spec.min > spec.max:
        raise NodeDefinitionError(f"{where}: input {name!r}: min {spec.min} > max {spec.max}")
    for bound in (spec.min, spec.max, spec.step):
        if bound is not None and (isinstance(bound, bool) or not math.isfinite(bound)):
            raise NodeDefinitionError(f"{where}: input {name!r}: bounds must be finite numbers")
    if spec.choices is not None and not isinstance(spec.choices, DynamicChoices):  # those are listed when asked
        if not isinstance(spec.choices, tuple) or not spec.choices:
            raise NodeDefinitionError(f"{where}: input {name!r}: choices must be a non-empty tuple")
        for choice in spec.choices:
            _check_value(where, name, spec, choice, "choice")
    if spec.has_default:
        if not constant and spec.type != sockets.ANY:
            raise NodeDefinitionError(f"{where}: input {name!r}: link-only type {spec.type} cannot have a default")
        _check_value(where, name, spec, spec.default, "default")
        if spec.choices is not None and spec.default not in spec.choices:
            raise NodeDefinitionError(f"{where}: input {name!r}: default {spec.default!r} is not among choices")
        if spec.type in (sockets.INT, sockets.FLOAT):
            if (spec.min is not None and spec.default < spec.min) or (spec.max is not None and spec.default > spec.max):
                raise NodeDefinitionError(f"{where}: input {name!r}: default {spec.default!r} is out of range")


def _check_value(where: str, name: str, spec: In, value: Any, what: str) -> None:
    try:
        converted = sockets.check_constant(spec.type, value)
    except sockets.ConstantError as exc:
        raise NodeDefinitionError(f"{where}: input {name!r}: {what} {value!r}: {exc}") from None
    if type(converted) is not type(value):
        # Defaults are stored as written; require the exact Python type so signatures stay stable.
        raise NodeDefinitionError(f"{where}: input {name!r}: {what} {value!r} must be a {type(converted).__name__}")


def _check_run_signature(where: str, node_cls: type[Node], inputs: dict[str, In]) -> None:
    try:
        params = inspect.signature(node_cls.run).parameters
    except (TypeError, ValueError):
        return  # builtins or C callables: nothing to introspect
    names = list(params)[2:]  # skip self and ctx
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [name for name in inputs if name not in names]
    if missing:
        raise NodeDefinitionError(f"{where}: run() does not accept input(s) {missing}; add them as parameters")
    extra = [
        name
        for name in names
        if name not in inputs
        and params[name].default is inspect.Parameter.empty
        and params[name].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if extra:
        raise NodeDefinitionError(f"{where}: run() requires {extra} which are not declared inputs")
