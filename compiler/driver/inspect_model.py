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


# --------------------------------------------------------------------------- --fusions


@dataclass
class FusionSection:
    """``kiln inspect --fusions``: what each rewrite rule did while optimizing the model.

    ``rules`` holds one entry per rule that applied (or whose nodes are in the result), by name:
    ``applied`` (times it fired), ``made`` (op id -> nodes it created, including those a later rule
    absorbed), ``result`` (op id -> nodes of the optimized graph whose location names this rule as
    the last one that fused them) and ``fused_nodes`` (the source-model nodes those stand for).
    """

    level: int
    target: str | None
    pipeline: str
    nodes_before: int
    nodes_after: int
    rules: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "target": self.target,
            "pipeline": self.pipeline,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "rules": self.rules,
        }

    def text(self) -> str:
        where = f"-O{self.level}" + (f" + target {self.target}'s legalization" if self.target else "")
        lines = [f"fusions at {where}: nodes {self.nodes_before} -> {self.nodes_after}"]
        if not self.rules:
            return lines[0] + "\n  no rewrite rule applied"
        width = max(len("rule"), *(len(r["rule"]) for r in self.rules))
        lines.append(f"  {'rule':<{width}}  {'applied':>7}  {'fused':>5}  result (op x nodes left)  [made]")
        for r in self.rules:
            result = ", ".join(f"{op} x{n}" for op, n in r["result"].items()) or "-"
            made = ", ".join(f"{op} x{n}" for op, n in r["made"].items())
            absorbed = "  [made " + made + "]" if made and r["made"] != r["result"] else ""
            lines.append(f"  {r['rule']:<{width}}  {r['applied']:>7}  {r['fused_nodes']:>5}  {result}{absorbed}")
        return "\n".join(lines)


def _sorted_counts(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def fusion_report(graph: Graph, *, level: int = 2, target: str | None = None) -> FusionSection:
    """Optimizes ``graph`` in place at ``-O<level>`` (then ``target``'s legalization) and reports each rule.

    Raises:
        UsageError: an unknown target.
        KilnError: a pass failed.
    """
    import importlib

    from kiln.errors import UsageError
    from kiln.passmanager.base import PassContext
    from kiln.passmanager.manager import PassManager
    from kiln.rewrite.driver import OPS_MADE_KEY

    parts = [f"O{level}"] if level > 0 else []
    if target is not None:
        from kiln.driver.compile import TARGETS

        if target not in TARGETS:
            raise UsageError(f"unknown target {target!r}; targets: {', '.join(sorted(TARGETS))}")
        codegen = importlib.import_module(TARGETS[target])
        legalize = codegen.legalize_pipeline({"fp16": False, "int8": False, "input_shapes": {}}).strip()
        if legalize:
            parts.append(legalize)
    pipeline = ",".join(parts)
    before = len(graph)
    ctx = PassContext()
    if pipeline:
        PassManager(pipeline).run(graph, ctx)
    applied = {k.removeprefix("rules."): v for k, v in ctx.stats.items() if k.startswith("rules.")}
    made: dict[str, dict[str, int]] = ctx.extra.get(OPS_MADE_KEY, {})
    result: dict[str, Counter[str]] = {}
    fused: Counter[str] = Counter()
    for node in graph.walk():
        rule = node.loc.rule
        if rule is None:
            continue
        result.setdefault(rule, Counter())[node.op_id] += 1
        fused[rule] += len(node.loc.fused_from)
    rules = [
        {
            "rule": name,
            "applied": applied.get(name, 0),
            "made": _sorted_counts(made.get(name, {})),
            "result": _sorted_counts(dict(result.get(name, {}))),
            "fused_nodes": fused[name],
        }
        for name in sorted(set(applied) | set(result))
    ]
    return FusionSection(level, target, pipeline, before, len(graph), rules)
