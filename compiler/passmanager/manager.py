"""The pass manager: runs a pipeline over a graph, with instruments around each pass.

::

    pm = PassManager("fold,dce,repeat{max=3}(fuse-act,dce)", instruments=[TimePasses()])
    report = pm.run(graph)            # graph is changed in place
    print(report.timing_table())

For each pass the manager calls the instruments' ``before_pass`` hooks, runs
the pass, drops the cached analyses (``ctx.analyses``) if it reports a
change, runs the instruments' ``check`` hooks (verification: a failure there
is the pass's failure), records the run, then calls ``after_pass``.  Hooks
run in the order the instruments were given; ``VerifyEach`` comes first
unless ``verify_each=False``.

When a pass raises (or leaves invalid IR) the instruments' ``pass_failed``
hooks run (``DumpIRDir`` writes a reproducer there) and the manager raises
:class:`~kiln.errors.PassFailure` naming the pass and the passes already
run; a :class:`~kiln.errors.KilnError` raised by the pass itself passes
through with that context added to its notes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.ir.gcpause import paused_gc
from kiln.errors import KilnError, PassFailure, PipelineError, VerificationError
from kiln.ir.core import Graph
from kiln.passmanager.base import Pass, PassContext
from kiln.passmanager.instruments import PassInstrument, VerifyEach
from kiln.passmanager.pipeline import PassStep, Pipeline, RepeatStep, Step
from kiln.passmanager.registry import PassRegistry, default_registry

logger = logging.getLogger(__name__)

_LISTED_RUNS = 20


@dataclass
class PassRecord:
    """One run of one pass.

    Attributes:
        index: 1-based position among the runs of this pipeline.
        name: the pass name.
        changed: what the pass reported.
        seconds: time in ``run`` (instruments excluded).
        stats: how much each ``ctx.stats`` counter moved during the run.
        iteration: the innermost ``repeat`` iteration (1-based), if any.
        pass_: the pass instance.
    """

    index: int
    name: str
    changed: bool
    seconds: float
    stats: dict[str, int] = field(default_factory=dict)
    iteration: int | None = None
    pass_: Pass | None = field(default=None, repr=False, compare=False)


@dataclass
class PassReport:
    """What a pipeline run did.

    Attributes:
        pipeline: the expanded pipeline that ran, as text.
        records: every pass run, in order.
        stats: ``ctx.stats`` at the end.
        seconds: wall time of the whole run, instruments included.
        overhead: seconds spent outside passes, by label (``verify``).
        stopped_after: the pass ``StopAfter`` stopped at, if any.
    """

    pipeline: str
    records: list[PassRecord] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    overhead: dict[str, float] = field(default_factory=dict)
    stopped_after: str | None = None

    @property
    def changed(self) -> bool:
        """Whether any pass changed the graph."""
        return any(r.changed for r in self.records)

    @property
    def ran(self) -> list[str]:
        """The names of the passes run, in order (repeats included)."""
        return [r.name for r in self.records]

    def timing_table(self) -> str:
        """A table of time per pass name (in first-run order), overheads and the total."""
        rows: dict[str, list[float]] = {}
        for r in self.records:
            row = rows.setdefault(r.name, [0.0, 0, 0])
            row[0] += r.seconds
            row[1] += 1
            row[2] += int(r.changed)
        total = self.seconds or sum(r.seconds for r in self.records) or 1e-12
        lines = [
            f"kiln pass timing: {len(self.records)} runs in {self.seconds:.4f} s",
            "   seconds   share  runs  changed  pass",
        ]
        for name, (secs, runs, changed) in rows.items():
            lines.append(f"{secs:10.4f} {100 * secs / total:6.1f}% {int(runs):5d} {int(changed):8d}  {name}")
        for label, secs in self.overhead.items():
            lines.append(f"{secs:10.4f} {100 * secs / total:6.1f}% {'':5} {'':8}  ({label})")
        lines.append(f"{self.seconds:10.4f} {100.0:6.1f}% {'':5} {'':8}  total")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        changed = sum(r.changed for r in self.records)
        stop = f", stopped after {self.stopped_after}" if self.stopped_after else ""
        return f"{len(self.records)} pass runs ({changed} changed the graph) in {self.seconds:.3f} s{stop}"


@dataclass
class _Frame:
    steps: Sequence[Step]
    index: int = 0
    repeat: RepeatStep | None = None
    iteration: int = 0


class RunState:
    """What instruments see while a pipeline runs.

    Attributes:
        graph: the graph being optimized.
        ctx: the pass context.
        pipeline: the expanded pipeline.
        records: the passes run so far (the failing one excluded).
        overhead: seconds spent outside passes, by label; instruments add to it.
    """

    def __init__(self, graph: Graph, ctx: PassContext, pipeline: Pipeline) -> None:
        self.graph = graph
        self.ctx = ctx
        self.pipeline = pipeline
        self.records: list[PassRecord] = []
        self.overhead: dict[str, float] = {}
        self.stop_reason: str | None = None
        self._frames: list[_Frame] = [_Frame(pipeline.steps)]
        self._runs = 0

    def stop(self, reason: str) -> None:
        """Ends the pipeline after the current pass."""
        self.stop_reason = reason

    def add_time(self, label: str, seconds: float) -> None:
        self.overhead[label] = self.overhead.get(label, 0.0) + seconds

    @property
    def iteration(self) -> int | None:
        """The innermost repeat iteration, or ``None`` outside repeats."""
        for frame in reversed(self._frames):
            if frame.repeat is not None:
                return frame.iteration
        return None

    def rest(self) -> Pipeline:
        """The pipeline from the current step on: what a reproducer must run.

        Inside ``repeat{max=N}`` at iteration ``k`` that is the rest of the
        body, then ``repeat{max=N-k}(body)``, then what follows the repeat.
        """
        frames = self._frames
        steps: list[Step] = list(frames[-1].steps[frames[-1].index :])
        for depth in range(len(frames) - 2, -1, -1):
            inner, outer = frames[depth + 1], frames[depth]
            if inner.repeat is not None and inner.repeat.max > inner.iteration:
                steps.append(RepeatStep(inner.repeat.body, inner.repeat.max - inner.iteration))
            steps.extend(outer.steps[outer.index + 1 :])
        return Pipeline(steps)

    def ran_summary(self) -> str:
        """The passes already run, for error messages."""
        names = [r.name for r in self.records]
        if not names:
            return "none"
        if len(names) > _LISTED_RUNS:
            hidden = len(names) - _LISTED_RUNS
            return f"{len(names)} runs, the last {_LISTED_RUNS}: " + ", ".join(names[hidden:])
        return ", ".join(names)


class PassManager:
    """Runs a pipeline over graphs.

    Args:
        pipeline: a pipeline string, a :class:`Pipeline`, or a list of passes
            and pass names.  Bundles (``O2``) are expanded when ``run`` starts.
        verify_each: verify the input and the IR after each pass that reports
            a change (adds :class:`VerifyEach` unless one is given).
        instruments: hooks around each pass (``TimePasses()``, ``DumpIRDir(...)``...).
        registry: where names are looked up (default: the process registry).
    """

    def __init__(
        self,
        pipeline: str | Pipeline | Iterable[Any],
        *,
        verify_each: bool = True,
        instruments: Iterable[PassInstrument] = (),
        registry: PassRegistry | None = None,
    ) -> None:
        self.registry = registry or default_registry()
        if isinstance(pipeline, Pipeline):
            self.pipeline = pipeline
        elif isinstance(pipeline, str):
            self.pipeline = Pipeline.parse(pipeline, registry=self.registry)
        else:
            self.pipeline = Pipeline(pipeline, registry=self.registry)
        self.instruments: list[PassInstrument] = list(instruments)
        if verify_each and not any(isinstance(i, VerifyEach) for i in self.instruments):
            self.instruments.insert(0, VerifyEach())

    def __repr__(self) -> str:
        return f"PassManager({str(self.pipeline)!r})"

    def run(self, graph: Graph, ctx: PassContext | None = None) -> PassReport:
        """Runs the pipeline over ``graph`` in place.

        Raises:
            PipelineError: a bundle does not resolve (checked before any pass runs).
            VerificationError: the input graph is invalid (with ``verify_each``).
            PassFailure: a pass raised or left invalid IR.
            KilnError: a pass raised one; the notes name the pass and what ran before.
        """
        ctx = ctx if ctx is not None else PassContext()
        pipeline = self.pipeline.expand(self.registry)
        state = RunState(graph, ctx, pipeline)
        start = time.perf_counter()
        logger.debug("running pipeline %s", pipeline)
        for inst in self.instruments:
            inst.before_pipeline(graph, state)
        with paused_gc():
            self._run_steps(pipeline.steps, state)
        report = PassReport(
            pipeline=str(pipeline),
            records=state.records,
            stats=dict(ctx.stats),
            seconds=time.perf_counter() - start,
            overhead=dict(state.overhead),
            stopped_after=state.records[-1].name if state.stop_reason and state.records else None,
        )
        for inst in self.instruments:
            inst.after_pipeline(graph, report)
        logger.debug("pipeline done: %s", report)
        return report

    # ---- execution

    def _run_steps(self, steps: Sequence[Step], state: RunState) -> bool:
        """Runs ``steps`` (the innermost frame's); returns whether any changed the graph."""
        frame = state._frames[-1]
        changed = False
        for i, step in enumerate(steps):
            if state.stop_reason is not None:
                break
            frame.index = i
            if isinstance(step, PassStep):
                changed |= self._run_pass(step.pass_, state)
            elif isinstance(step, RepeatStep):
                changed |= self._run_repeat(step, state)
            else:  # a bundle left after expand(): cannot happen through run()
                raise PipelineError(f"bundle {step} was not expanded")
        return changed

    def _run_repeat(self, step: RepeatStep, state: RunState) -> bool:
        any_changed = False
        for iteration in range(1, step.max + 1):
            state._frames.append(_Frame(step.body.steps, repeat=step, iteration=iteration))
            try:
                changed = self._run_steps(step.body.steps, state)
            finally:
                state._frames.pop()
            any_changed |= changed
            if not changed or state.stop_reason is not None:
                break
            if iteration == step.max:
                logger.info("%s: still changing the graph after %d iterations", step, step.max)
        return any_changed

    def _run_pass(self, p: Pass, state: RunState) -> bool:
        graph, ctx = state.graph, state.ctx
        for inst in self.instruments:
            inst.before_pass(p, graph, state)
        stats_before = dict(ctx.stats)
        start = time.perf_counter()
        try:
            result = p.run(graph, ctx)
            if not isinstance(result, (bool, np.bool_)):
                raise TypeError(
                    f"run() returned {result!r}; it must return a bool saying whether it changed the graph"
                )
        except Exception as exc:
            failure = self._failure(p, state, exc, checking=False)
            if failure is exc:
                raise
            raise failure from exc
        seconds = time.perf_counter() - start
        changed = bool(result)
        if changed:
            ctx.invalidate()
        state._runs += 1
        record = PassRecord(
            index=state._runs,
            name=p.name,
            changed=changed,
            seconds=seconds,
            stats=_stats_delta(stats_before, ctx.stats),
            iteration=state.iteration,
            pass_=p,
        )
        logger.debug("pass %s: changed=%s in %.4f s", p.name, changed, seconds)
        try:
            for inst in self.instruments:
                inst.check(p, graph, record, state)
        except KilnError as exc:
            raise self._failure(p, state, exc, checking=True) from exc
        state.records.append(record)
        for inst in self.instruments:
            inst.after_pass(p, graph, record, state)
        return changed

    def _failure(self, p: Pass, state: RunState, exc: BaseException, *, checking: bool) -> BaseException:
        """Runs the failure hooks and builds the error to raise."""
        notes = [f"passes already run: {state.ran_summary()}"]
        for inst in self.instruments:
            try:
                note = inst.pass_failed(p, state.graph, exc, state)
            except Exception:
                logger.exception("instrument %s failed while reporting a failure", type(inst).__name__)
                continue
            if note:
                notes.append(note)
        passes_run = [r.name for r in state.records]
        if isinstance(exc, KilnError) and not checking:
            exc.notes.extend([f"in pass {p.name!r}", *notes])
            _tag(exc, p.name, passes_run)
            return exc
        if isinstance(exc, KilnError):
            what = "left invalid IR" if isinstance(exc, VerificationError) else "failed a check"
            failure = PassFailure(
                f"pass {p.name!r} {what}: {exc.message}",
                node=exc.node,
                file=exc.file,
                notes=[*exc.notes, *notes],
            )
        else:
            failure = PassFailure(f"pass {p.name!r} failed: {type(exc).__name__}: {exc}", notes=notes)
        _tag(failure, p.name, passes_run)
        return failure


def _tag(error: BaseException, name: str, passes_run: list[str]) -> None:
    if not hasattr(error, "pass_name"):
        error.pass_name = name  # type: ignore[attr-defined]
        error.passes_run = passes_run  # type: ignore[attr-defined]


def _stats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    if before == after:
        return {}
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
