"""Toy passes and graphs for the pass-manager tests (no built-in pass is used)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from kiln.errors import UnsupportedOpError
from kiln.ir import DType, Graph, TensorType, Value
from kiln.passmanager import Pass, PassContext, PassRegistry


def chain_graph() -> Graph:
    """x -> Identity -> Relu -> Identity -> y."""
    g = Graph("toy")
    g.opsets = {"": 17}
    x = g.add_input("x", TensorType(DType.FLOAT, (2, 3)))
    a = g.create_node("Identity", [x], output_names=["a"])
    b = g.create_node("Relu", [a.outputs[0]], output_names=["b"])
    c = g.create_node("Identity", [b.outputs[0]], output_names=["y"])
    g.outputs.append(c.outputs[0])
    return g


def toy_print(graph: Graph) -> str:
    """A stand-in for kiln.ir.print_ir while the real printer is being written."""
    lines = [f"graph {graph.name}"]
    lines += [repr(node) for node in graph]
    lines.append("return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    return "\n".join(lines) + "\n"


def ops(graph: Graph) -> list[str]:
    return [node.op for node in graph]


@dataclass(frozen=True)
class StripIdentity(Pass):
    """Removes Identity nodes (except those that name a graph output)."""

    name: ClassVar[str] = "strip-identity"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        changed = False
        for node in graph:
            if node.is_op("Identity") and not graph.is_output(node.outputs[0]):
                source = node.inputs[0]
                assert source is not None
                node.outputs[0].replace_all_uses_with(source)
                graph.remove_node(node)
                ctx.bump("strip-identity.removed")
                changed = True
        return changed


@dataclass(frozen=True)
class Noop(Pass):
    """Does nothing."""

    name: ClassVar[str] = "noop"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return False


@dataclass(frozen=True)
class Countdown(Pass):
    """Reports a change on its first `times` runs (counted in ctx.extra)."""

    name: ClassVar[str] = "countdown"
    times: int = field(default=2, metadata={"doc": "how many runs report a change"})

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        done = ctx.extra.get("countdown", 0)
        ctx.extra["countdown"] = done + 1
        return done < self.times


@dataclass(frozen=True)
class BreakIR(Pass):
    """Adds a node that reads a value defined nowhere."""

    name: ClassVar[str] = "break-ir"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        graph.create_node("Relu", [Value("ghost")], name="broken")
        return True


@dataclass(frozen=True)
class Explode(Pass):
    """Raises a plain Python error."""

    name: ClassVar[str] = "explode"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        raise RuntimeError("boom")


@dataclass(frozen=True)
class RaiseKiln(Pass):
    """Raises a KilnError about the first node."""

    name: ClassVar[str] = "raise-kiln"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        raise UnsupportedOpError("cannot handle this op", node=next(iter(graph)))


@dataclass(frozen=True)
class ForgetsReturn(Pass):
    """Returns None instead of a bool."""

    name: ClassVar[str] = "forgets-return"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return None  # type: ignore[return-value]


@dataclass(frozen=True)
class UseCounts(Pass):
    """Reads the cached use-count analysis and notes whether it had to compute it."""

    name: ClassVar[str] = "use-counts"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        log = ctx.extra.setdefault("computed", [])

        def compute() -> dict[str, int]:
            log.append(True)
            return {n.outputs[0].name: len(n.outputs[0].uses) for n in graph}

        before = len(log)
        ctx.analysis("use-counts", compute)
        if len(log) == before:
            log.append(False)
        return False


class Layout(enum.Enum):
    NCHW = "nchw"
    NHWC = "nhwc"


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


@dataclass(frozen=True)
class Opts(Pass):
    """Has an option of every type a pipeline string can carry."""

    name: ClassVar[str] = "opts"
    count: int = field(default=3, metadata={"doc": "an int"})
    scale: float = field(default=0.5, metadata={"doc": "a float"})
    per_channel: bool = field(default=False, metadata={"doc": "a bool"})
    label: str = field(default="x", metadata={"doc": "a str"})
    calibrator: Literal["minmax", "entropy", "percentile"] = field(
        default="minmax", metadata={"doc": "a choice"}
    )
    ops: list[str] = field(default_factory=list, metadata={"doc": "a list of str"})
    axes: tuple[int, ...] = field(default=(0,), metadata={"doc": "a tuple of int"})
    limit: int | None = field(default=None, metadata={"doc": "an optional int"})
    tag: str | None = field(default=None, metadata={"doc": "an optional str"})
    layout: Layout = field(default=Layout.NCHW, metadata={"doc": "a str enum"})
    level: Level = field(default=Level.LOW, metadata={"doc": "an int enum"})

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return False


@dataclass(frozen=True)
class NeedsLimit(Pass):
    """Has a required option and a validated one."""

    name: ClassVar[str] = "needs-limit"
    limit: int
    ratio: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], not {self.ratio}")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return False


ALL = [
    StripIdentity,
    Noop,
    Countdown,
    BreakIR,
    Explode,
    RaiseKiln,
    ForgetsReturn,
    UseCounts,
    Opts,
    NeedsLimit,
]


def toy_registry(*, presets: bool = True) -> PassRegistry:
    """A registry with no entry points: the toy passes, and the presets if asked."""
    from kiln.passmanager.presets import register_presets

    registry = PassRegistry(entry_point_group=None)
    for cls in ALL:
        registry.add_pass(cls)
    if presets:
        register_presets(registry)
    return registry
