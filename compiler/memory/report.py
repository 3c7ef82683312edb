"""The memory plan as text: the summary and the per-tensor table of ``kiln inspect --memory``."""

from __future__ import annotations

from kiln.memory.plan import MemoryPlan, TensorPlan

_PEAK_LISTED = 12


def format_bytes(n: int) -> str:
    """``6.2 MiB (6553600 B)``: binary units, with the exact count."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit} ({n} B)"
        size /= 1024
    raise AssertionError("unreachable")


def _pct(new: int, old: int) -> str:
    if not old:
        return "0.0%"
    return f"{(old - new) / old * 100:.1f}%"


def format_plan(plan: MemoryPlan, *, tensors: bool = True, heading: str = "memory plan") -> str:
    """The summary (arena, bound, naive, ratio, scheduler, widest point, streams) and the tensor table."""
    rows: list[tuple[str, str]] = []

    def add(key: str, *parts: str) -> None:
        rows.append((key, "".join(parts)))

    naive_ratio = plan.arena_bytes / plan.naive_bytes if plan.naive_bytes else 1.0
    add("arena", f"{format_bytes(plan.arena_bytes)}  {plan.algorithm}")
    add("lower bound", f"{format_bytes(plan.lower_bound_bytes)}  (most bytes live at once)")
    add("naive sum", f"{format_bytes(plan.naive_bytes)}  (every tensor its own bytes)")
    add("ratio", f"arena / bound {plan.ratio:.4f}, arena / naive {naive_ratio:.4f}")
    add(
        "ONNX order",
        f"bound {format_bytes(plan.input_lower_bound_bytes)}, arena {format_bytes(plan.input_arena_bytes)}",
        "" if plan.reordered else "  (the planned order)",
    )
    s = plan.scheduler
    if s is not None:
        add(
            "scheduler",
            f"{s.regions} free regions ({s.exact} exact, {s.heuristic} heuristic), {s.improved} reordered, ",
            f"{s.moved} nodes moved; bound {_pct(plan.lower_bound_bytes, plan.input_lower_bound_bytes)} lower",
        )
        add("", f"  at cut nodes (the same in every order): {format_bytes(s.fixed_bytes)}")
        if s.regions:
            add(
                "",
                f"  inside the free regions: {format_bytes(s.branchy_input_bytes)} -> ",
                f"{format_bytes(s.branchy_bytes)} ({_pct(s.branchy_bytes, s.branchy_input_bytes)} lower)",
            )
        for g in s.gains[:3]:
            add(
                "",
                f"  region of {g.nodes} nodes from {g.first}: {format_bytes(g.input_bytes)} -> ",
                f"{format_bytes(g.bytes)} ({_pct(g.bytes, g.input_bytes)} lower)",
            )
    else:
        add("scheduler", "off (the ONNX order is planned)")
    by_name = {t.name: t for t in plan.tensors}
    if plan.peak_step >= 0:
        add(
            "widest point",
            f"step {plan.peak_step} (node {plan.schedule[plan.peak_step]}): ",
            f"{format_bytes(plan.lower_bound_bytes)} in {len(plan.peak_tensors)} tensors",
        )
        for name in plan.peak_tensors[:_PEAK_LISTED]:
            t = by_name[name]
            add("", f"  {name}  {format_bytes(t.size)}  steps {t.first}..{t.last}")
        if len(plan.peak_tensors) > _PEAK_LISTED:
            add("", f"  ... and {len(plan.peak_tensors) - _PEAK_LISTED} more")
    st = plan.streams
    if st is not None:
        add(
            "streams",
            f"width {st.width} ({'exact' if st.exact else 'lower bound'}), {st.streams} streams ",
            f"({st.aux_streams} aux for TensorRT), {st.cross_stream_edges} cross-stream edges",
        )
        for chain in st.antichains:
            listed = ", ".join(chain[:8]) + (f" and {len(chain) - 8} more" if len(chain) > 8 else "")
            add("", f"  antichain of {len(chain)}: {listed}")
    head = f"{heading} ({len(plan.schedule)} steps, {len(plan.tensors)} arena tensors, alignment {plan.alignment} B):"
    lines = [head] + [f"  {k:<14}{v}".rstrip() for k, v in rows]
    if tensors:
        lines += ["", format_tensor_table(plan.tensors)]
    return "\n".join(lines)


def format_tensor_table(tensors: tuple[TensorPlan, ...]) -> str:
    """One line per tensor: offset, size, first and last step, name, and what it overwrote in place."""
    lines = [f"tensors ({len(tensors)}):", f"  {'offset':>12} {'size':>12} {'first':>6} {'last':>6}  name"]
    for t in tensors:
        shares = f"  (in place of {t.shares})" if t.shares else ""
        lines.append(f"  {t.offset:>12} {t.size:>12} {t.first:>6} {t.last:>6}  {t.name}{shares}")
    return "\n".join(lines)
