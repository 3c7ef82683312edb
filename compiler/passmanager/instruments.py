"""Pass instruments: hooks the pass manager calls around every pass (MLIR, TVM).

An instrument subclasses :class:`PassInstrument` and overrides any of

* ``before_pipeline(graph, run)`` / ``after_pipeline(graph, report)``;
* ``before_pass(pass_, graph, run)``;
* ``check(pass_, graph, record, run)``: right after the pass; raising a
  ``KilnError`` here makes it the pass's failure (verification);
* ``after_pass(pass_, graph, record, run)``;
* ``pass_failed(pass_, graph, error, run) -> str | None``: may return a note
  for the error message (where a reproducer was written).

``run`` is the manager's :class:`~kiln.passmanager.manager.RunState`.
Instruments that print write to the stream they are given (default
``sys.stderr``); nothing else in the pass manager prints.

Reproducer files (written by :class:`DumpIRDir` when a pass fails) are the
IR before the failing pass, preceded by ``#`` header lines, the last of
which is ``# pipeline: <the rest of the pipeline>``;
:func:`read_reproducer` splits one back into (pipeline, IR text).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from kiln.errors import PipelineError, VerificationError
from kiln.ir.core import Graph
from kiln.passmanager.base import Pass
from kiln.passmanager.pipeline import Pipeline
from kiln.passmanager.registry import suggest

if TYPE_CHECKING:
    from kiln.passmanager.manager import PassRecord, PassReport, RunState

Printer = Callable[[Graph], str]

REPRODUCER_NAME = "reproducer.kir"


def _print_ir(graph: Graph) -> str:
    from kiln.ir import print_ir

    return print_ir(graph)


class PassInstrument:
    """Base class of instruments; every hook does nothing by default."""

    def before_pipeline(self, graph: Graph, run: RunState) -> None:
        """Called once before the first pass."""

    def before_pass(self, pass_: Pass, graph: Graph, run: RunState) -> None:
        """Called before each pass."""

    def check(self, pass_: Pass, graph: Graph, record: PassRecord, run: RunState) -> None:
        """Called right after each pass; a ``KilnError`` raised here fails the pass."""

    def after_pass(self, pass_: Pass, graph: Graph, record: PassRecord, run: RunState) -> None:
        """Called after each pass that succeeded (and passed the checks)."""

    def pass_failed(self, pass_: Pass, graph: Graph, error: BaseException, run: RunState) -> str | None:
        """Called when a pass fails; may return a note for the error message."""
        return None

    def after_pipeline(self, graph: Graph, report: PassReport) -> None:
        """Called once after the last pass (not after a failure)."""


class VerifyEach(PassInstrument):
    """Verifies the input, then the IR after every pass that reports a change (on by default).

    A pass that returns ``False`` must not have changed the graph, so its
    output is the input it was given, already verified.
    """

    def __init__(self, *, check_schemas: bool = True) -> None:
        self.check_schemas = check_schemas

    def _verify(self, graph: Graph, run: RunState) -> None:
        from kiln.ir import verify

        start = time.perf_counter()
        try:
            verify(graph, check_schemas=self.check_schemas)
        finally:
            run.add_time("verify", time.perf_counter() - start)

    def before_pipeline(self, graph: Graph, run: RunState) -> None:
        try:
            self._verify(graph, run)
        except VerificationError as exc:
            exc.notes.append("the input IR is invalid, before any pass ran")
            raise

    def check(self, pass_: Pass, graph: Graph, record: PassRecord, run: RunState) -> None:
        if record.changed:
            self._verify(graph, run)


class TimePasses(PassInstrument):
    """Writes a table of time per pass at the end (``--time-passes``)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def after_pipeline(self, graph: Graph, report: PassReport) -> None:
        (self.stream or sys.stderr).write(report.timing_table())


def _pass_names(run: RunState) -> list[str]:
    return list(dict.fromkeys(p.name for p in run.pipeline.passes()))


def _check_names(flag: str, names: Iterable[str], run: RunState) -> None:
    """Raises ``PipelineError`` for a name that is not a pass of the pipeline (a typo)."""
    present = _pass_names(run)
    for name in names:
        if name not in present:
            close = suggest(name, present)
            notes = [f"did you mean {' or '.join(repr(c) for c in close)}?"] if close else []
            raise PipelineError(
                f"{flag}: no pass {name!r} in the pipeline {str(run.pipeline)!r}", notes=notes
            )


def _names(passes: str | Iterable[str]) -> set[str] | None:
    """``"all"`` -> None (every pass); ``"a,b"``, ``["a", "b"]`` or ``["a,b"]`` -> {"a", "b"}."""
    items = [passes] if isinstance(passes, str) else list(passes)
    names = {name.strip() for item in items for name in item.split(",") if name.strip()}
    return None if "all" in names else names


class PrintIRAfter(PassInstrument):
    """Prints the IR after the named passes (``--print-ir-after=fold,dce`` or ``all``)."""

    def __init__(
        self,
        passes: str | Iterable[str] = "all",
        stream: TextIO | None = None,
        printer: Printer | None = None,
    ) -> None:
        self.passes = _names(passes)
        self.stream = stream
        self.printer = printer or _print_ir

    def before_pipeline(self, graph: Graph, run: RunState) -> None:
        if self.passes is not None:
            _check_names("print-ir-after", sorted(self.passes), run)

    def after_pass(self, pass_: Pass, graph: Graph, record: PassRecord, run: RunState) -> None:
        if self.passes is None or record.name in self.passes:
            _write_dump(self.stream, record, self.printer(graph))


class PrintIRAfterChange(PassInstrument):
    """Prints the IR after every pass that reports a change (``--print-ir-after-change``)."""

    def __init__(self, stream: TextIO | None = None, printer: Printer | None = None) -> None:
        self.stream = stream
        self.printer = printer or _print_ir

    def after_pass(self, pass_: Pass, graph: Graph, record: PassRecord, run: RunState) -> None:
        if record.changed:
            _write_dump(self.stream, record, self.printer(graph))


def _write_dump(stream: TextIO | None, record: PassRecord, text: str) -> None:
    out = stream or sys.stderr
    state = "changed" if record.changed else "unchanged"
    out.write(f"# IR after {record.name} (pass {record.index}, {state})\n")
    out.write(text if text.endswith("\n") else text + "\n")


class StopAfter(PassInstrument):
    """Ends the pipeline after the first run of the named pass (``--stop-after``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def before_pipeline(self, graph: Graph, run: RunState) -> None:
        _check_names("stop-after", [self.name], run)

    def after_pass(self, pass_: Pass, graph: Graph, record: PassRecord, run: RunState) -> None:
        if record.name == self.name:
            run.stop(f"stop-after {self.name}")


class DumpIRDir(PassInstrument):
    """Writes the IR to ``DIR/NN-passname.kir`` after each pass (``--dump-ir-dir``).

    ``00-input.kir`` is the IR before the first pass; ``NN`` is the run number,
    zero-padded so the files sort in run order.  When a pass fails, the IR
    before it and the rest of the pipeline go to ``DIR/reproducer.kir``.
    """

    def __init__(self, path: str | os.PathLike[str], printer: Printer | None = None) -> None:
        self.path = Path(path)
        self.printer = printer or _print_ir
        self._width = 2
        self._before = ""

    def before_pipeline(self, graph: Graph, run: RunState) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._width = max(2, len(str(run.pipeline.max_runs())))
        self._before = self.printer(graph)
        write_text_atomic(self.path / f"{0:0{self._width}d}-input.kir", self._before)

    def after_pass(self, pass_: Pass, graph: Graph, record: PassRecord, run: RunState) -> None:
        if record.changed:
            self._before = self.printer(graph)
        write_text_atomic(self.path / f"{record.index:0{self._width}d}-{record.name}.kir", self._before)

    def pass_failed(self, pass_: Pass, graph: Graph, error: BaseException, run: RunState) -> str | None:
        path = self.path / REPRODUCER_NAME
        write_reproducer(
            path, self._before, run.rest(), f"pass {pass_.name!r} failed: {type(error).__name__}: {error}"
        )
        return f"reproducer written to {path}"


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary name beside ``path`` and renames it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_reproducer(path: Path, ir_text: str, rest: Pipeline, reason: str) -> None:
    """Writes a reproducer: ``#`` header lines (the last one the pipeline), a blank line, the IR."""
    reason_line = " ".join(reason.split())
    header = f"# kiln reproducer\n# {reason_line}\n# pipeline: {rest}\n\n"
    write_text_atomic(path, header + ir_text)


def read_reproducer(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Splits a reproducer file into (pipeline string, IR text)."""
    text = Path(path).read_text(encoding="utf-8")
    header, sep, ir_text = text.partition("\n\n")
    pipeline = None
    for line in header.splitlines():
        if line.startswith("# pipeline: "):
            pipeline = line[len("# pipeline: ") :]
    if not sep or pipeline is None or not header.startswith("# kiln reproducer"):
        raise PipelineError(f"{path} is not a kiln reproducer file")
    return pipeline, ir_text
