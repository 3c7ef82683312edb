"""``kiln inspect``: what a model holds, as a dict, as text and as JSON; with ``--memory``, its memory plan."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln.driver.options import format_size
from kiln.ir.core import Graph, domain_text
from kiln.ir.types import format_type

if TYPE_CHECKING:
    from kiln.memory import MemoryPlan


def describe(graph: Graph, file: str) -> dict[str, Any]:
    """Everything ``kiln inspect --json`` prints, except the text IR.

    Keys: file, ir_version, producer, opsets, inputs, outputs (each a list of
    ``{name, type, dtype, shape}``), nodes (subgraphs included), constants,
    constant_bytes, ops (``op_id -> count``, most frequent first).
    """
    ops = Counter(node.op_id for node in graph.walk())
    constants = [v for g in graph.all_graphs() for v in g.constants.values()]
    info = graph.model
    producer = " ".join(p for p in (info.producer_name, info.producer_version) if p)
    return {
        "file": file,
        "ir_version": info.ir_version,
        "producer": producer,
        "opsets": {domain_text(d): v for d, v in sorted(graph.opsets.items())},
        "inputs": [_value_info(v) for v in graph.inputs],
        "outputs": [_value_info(v) for v in graph.outputs],
        "nodes": sum(ops.values()),
        "constants": len(constants),
        "constant_bytes": sum(v.const.nbytes for v in constants if v.const is not None),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _value_info(value: Any) -> dict[str, Any]:
    tt = value.tensor_type
    return {
        "name": value.name,
        "type": format_type(value.type),
        "dtype": tt.dtype.name.lower() if tt is not None else None,
        "shape": list(tt.shape) if tt is not None and tt.shape is not None else None,
    }


def format_summary(info: dict[str, Any]) -> str:
    """The default ``kiln inspect`` text: one fact per line."""
    rows: list[tuple[str, str]] = [
        ("file", info["file"]),
        ("ir_version", str(info["ir_version"])),
        ("producer", info["producer"] or "-"),
        ("opsets", ", ".join(f"{d} {v}" for d, v in info["opsets"].items()) or "-"),
    ]
    for key in ("inputs", "outputs"):
        values = info[key] or [{"name": "-", "type": ""}]
        for i, v in enumerate(values):
            rows.append((key if i == 0 else "", f"{v['name']}: {v['type']}" if v["type"] else v["name"]))
    rows.append(("nodes", str(info["nodes"])))
    rows.append(("constants", f"{info['constants']} ({format_size(info['constant_bytes'])})"))
    return "\n".join(f"{k:<12}{v}".rstrip() for k, v in rows)


def format_ops(ops: dict[str, int]) -> str:
    """The op histogram, most frequent first."""
    if not ops:
        return "ops: none"
    width = len(str(max(ops.values())))
    lines = [f"ops ({len(ops)} kinds, {sum(ops.values())} nodes):"]
    lines += [f"  {count:>{width}}  {op}" for op, count in ops.items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- --memory


@dataclass
class MemorySection:
    """``kiln inspect --memory``: the plan of the model optimized at ``-O<level>``."""

    plan: MemoryPlan
    level: int
    nodes: int

    def as_json(self) -> dict[str, Any]:
        """The plan's JSON (``kiln.memory.plan_json``), with the level and node count it was made at."""
        from kiln.memory import plan_json

        return {"level": self.level, "nodes": self.nodes, **plan_json(self.plan)}

    def text(self, *, tensors: bool = True) -> str:
        from kiln.memory.report import format_plan

        return format_plan(self.plan, tensors=tensors, heading=f"memory plan at -O{self.level}")


def plan_model_memory(graph: Graph, *, level: int = 2, alignment: int = 64, reorder: bool = True) -> MemorySection:
    """Optimizes ``graph`` in place with preset ``O<level>``, then runs ``plan-memory`` on it.

    Raises:
        KilnError: a pass failed, or a value's size is not static (the message names it).
    """
    from kiln.memory import PLAN_KEY
    from kiln.passmanager.manager import PassManager

    options = f"alignment={alignment}" + ("" if reorder else " reorder=false")
    pipeline = f"plan-memory{{{options}}}"
    if level > 0:
        pipeline = f"O{level},{pipeline}"
    PassManager(pipeline).run(graph)
    return MemorySection(graph.meta[PLAN_KEY], level, len(graph))
