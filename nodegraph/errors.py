"""Exceptions a user can cause, and the validation issue record that crosses every boundary.

Shared by the engine and the library (the one module both import), so the library can say which of
its arguments is at fault without knowing about graphs. The engine turns these into events (Python
API, websocket) or exit codes (CLI): WorkflowError and InputValueError mean invalid input (exit 2),
NodeExecutionError a node failed at run time (exit 1).

The error contract: a library function that rejects an argument raises an InputValueError (or a
subclass: CheckpointError, ConditionError) naming the argument, and names its arguments like the node
inputs that feed them (`checkpoint`, `text`, `image_embed`, `guidance`, `latent`, ...). The executor
maps it to that node input in one place (NodeExecutionError.input), so nodes do not translate errors.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ValidationIssue(BaseModel):
    """One problem found in a workflow; `type` is a stable code that tools can match on."""

    model_config = ConfigDict(frozen=True)

    node: str | None = None
    input: str | None = None
    type: str
    message: str

    def where(self) -> str:
        if self.node is None:
            return "workflow"
        if self.input is None:
            return f"node {self.node!r}"
        return f"node {self.node!r} input {self.input!r}"


class NodegraphError(Exception):
    """Base of every error this package raises on purpose."""


MAX_ISSUES = 100  # reported per WorkflowError; a hostile workflow can have millions of problems
MAX_MESSAGE = 1000  # characters of one issue's message


class WorkflowError(NodegraphError):
    """The workflow (or its params, or a file it names) is invalid; `errors` lists every problem, up to
    MAX_ISSUES of them (then one `too_many_problems` issue counts the rest), each message cut to
    MAX_MESSAGE characters, so no input can make an error report larger than ~100 kB."""

    def __init__(self, errors: list[ValidationIssue]) -> None:
        self.errors = bounded(errors)
        lines = [f"  {issue.where()}: {issue.message} [{issue.type}]" for issue in self.errors]
        count = len(self.errors)
        super().__init__(f"invalid workflow ({count} problem{'s' if count != 1 else ''}):\n" + "\n".join(lines))

    def to_json(self) -> dict[str, list[dict[str, str | None]]]:
        return {"errors": [issue.model_dump() for issue in self.errors]}


def bounded(issues: list[ValidationIssue]) -> list[ValidationIssue]:
    """At most MAX_ISSUES issues (plus one that counts the rest), messages cut to MAX_MESSAGE characters."""
    kept = [
        issue if len(issue.message) <= MAX_MESSAGE
        else issue.model_copy(update={"message": issue.message[: MAX_MESSAGE - 20] + " ... (message cut)"})
        for issue in issues[:MAX_ISSUES]
    ]
    if len(issues) > MAX_ISSUES:
        more = len(issues) - MAX_ISSUES
        kept.append(ValidationIssue(type="too_many_problems",
                                    message=f"... and {more} more problem{'s' if more != 1 else ''} not listed; "
                                    "fix the ones above first"))
    return kept


class InputValueError(NodegraphError, ValueError):
    """A value given to a node input (or to the library argument of the same name) is unusable.

    It is the user's input that is wrong, not the node, so the CLI exits 2 rather than 1. `input` is
    None when no single input is to blame.
    """

    def __init__(self, input: str | None, message: str, code: str = "invalid_value") -> None:
        self.input = input
        self.code = code
        self.message = message
        super().__init__(message if input is None else f"input {input!r}: {message}")


class CheckpointError(InputValueError):
    """A checkpoint that cannot be found or read, or that does not fit the architecture it is loaded into."""

    def __init__(self, message: str, input: str | None = "checkpoint") -> None:
        super().__init__(input, message)


class ConditionError(InputValueError):
    """A condition a model cannot take: text for a model without a text input, a width or batch that does
    not fit, a guidance term of the wrong kind. `input` names the condition (text, image_embed, guidance...)."""

    def __init__(self, message: str, input: str | None = None) -> None:
        super().__init__(input, message)


class NodeExecutionError(NodegraphError):
    """A node raised while running; names the node, its class, the original exception and, for an
    InputValueError that names one of the node's inputs, that input (`input`; None otherwise)."""

    def __init__(
        self,
        node_id: str,
        node_type: str,
        exception: BaseException,
        traceback: list[str],
        input: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.node_type = node_type
        self.exception = exception
        self.traceback = traceback
        self.input = input
        super().__init__(f"node {node_id!r} ({node_type}) failed: {type(exception).__name__}: {exception}")

    @property
    def is_input_error(self) -> bool:
        """True when the node rejected one of its input values (a user error, not a crash)."""
        return isinstance(self.exception, InputValueError)


class Interrupted(NodegraphError):
    """The run was interrupted (Engine.interrupt(), the run's interrupt event, or Ctrl-C)."""


class NodeDefinitionError(NodegraphError):
    """A node class declares something inconsistent; raised when it is registered."""


class ReentrantRunError(NodegraphError, RuntimeError):
    """Engine.run was called from inside one of its own runs (e.g. from an on_event callback)."""


class ConfigError(NodegraphError):
    """An engine setting cannot be honoured (e.g. --device cuda on a machine without CUDA)."""
