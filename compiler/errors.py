"""kiln's error hierarchy.

Every error a user can cause is a :class:`KilnError`.  Its message leads with
the ONNX identity of what went wrong (file, node index and name), then the
problem, then notes; the command prints it as one line and exits with 2.
Anything else escaping to the command is a bug in kiln and is reported as one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.ir.core import Node


class KilnError(Exception):
    """Base class of every user-facing kiln error."""

    exit_code = 2

    def __init__(self, message: str, *, node: "Node | None" = None, file: str | None = None, notes: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.node = node
        self.file = file
        self.notes = list(notes or [])

    def where(self) -> str:
        parts: list[str] = []
        node = self.node
        if node is not None:
            loc = node.loc
            file = self.file or loc.file
            if loc.fused_from:
                parts.append(loc.describe())
            else:
                if file:
                    parts.append(file)
                if loc.index is not None:
                    parts.append(f"node #{loc.index}")
                label = loc.name or node.name
                if label:
                    parts.append(repr(label))
            parts.append(f"({node.op_id})")
        elif self.file:
            parts.append(self.file)
        return " ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        text = f"{where}: {self.message}" if where else self.message
        if self.notes:
            text += " (" + "; ".join(self.notes) + ")"
        return text


class ModelLoadError(KilnError):
    """The model file cannot be read: truncated, not ONNX, hostile, or unsupported."""


class VerificationError(KilnError):
    """An IR invariant is broken (a pass bug, or a malformed model)."""


class InferenceFailure(KilnError):
    """A node's input types can never be valid for its op."""


class UnsupportedOpError(KilnError):
    """An op is unknown, or a target cannot express it."""


class PipelineError(KilnError):
    """A pipeline string or pass option is malformed or names an unknown pass."""


class PassFailure(KilnError):
    """A pass raised; the message lists the passes already run."""


class ExportError(KilnError):
    """The IR cannot be written in the requested format."""


class UsageError(KilnError):
    """A command-line or API argument is wrong (bad --input-shape, missing file ...)."""


class ParseError(KilnError):
    """The text IR is malformed; ``line`` and ``column`` (1-based) point at the problem.

    ``str()`` gives ``file:line:column: message`` followed by the source line and a
    caret under the offending spot.
    """

    def __init__(self, message: str, *, line: int, column: int, source_line: str = "", file: str | None = None):
        super().__init__(message, file=file)
        self.line = line
        self.column = column
        self.source_line = source_line

    def __str__(self) -> str:
        head = f"{self.file or '<text>'}:{self.line}:{self.column}: {self.message}"
        if not self.source_line:
            return head
        pad = "".join(c if c == "\t" else " " for c in self.source_line[: self.column - 1])
        return f"{head}\n{self.source_line}\n{pad}^"
