"""The memory plan as a picture: tensors as rectangles over time (steps) and arena offset.

matplotlib is imported only when a plot is drawn, with its non-interactive
``Agg`` backend; without it :func:`plot_plan` raises a
:class:`~kiln.memory.dataflow.MemoryPlanError` saying how to install it
(``pip install 'kiln[plot]'``).  The file is written under a temporary name
and renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from kiln.memory.dataflow import MemoryPlanError
from kiln.memory.plan import MemoryPlan


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MemoryPlanError(
            "plotting the memory plan needs matplotlib, which is not installed "
            "(pip install 'kiln[plot]', or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _buffers(plan: MemoryPlan) -> dict[str, int]:
    """Tensor name -> the index of the buffer it lives in (in-place chains share one)."""
    buffer: dict[str, int] = {}
    count = 0
    for t in plan.tensors:  # in order of first step: a tensor's source comes before it
        if t.shares is not None and t.shares in buffer:
            buffer[t.name] = buffer[t.shares]
        else:
            buffer[t.name] = count
            count += 1
    return buffer


def live_bytes(plan: MemoryPlan) -> list[int]:
    """Bytes live at each step, each in-place buffer counted once."""
    steps = len(plan.schedule)
    diff = [0] * (steps + 1)
    spans: dict[int, list[int]] = {}
    buffer = _buffers(plan)
    for t in plan.tensors:
        b = buffer[t.name]
        span = spans.setdefault(b, [t.first, t.last, t.size])
        span[0] = min(span[0], t.first)
        span[1] = max(span[1], t.last)
    for first, last, size in spans.values():
        diff[first] += size
        diff[last + 1] -= size
    out, total = [], 0
    for s in range(steps):
        total += diff[s]
        out.append(total)
    return out


def plot_plan(plan: MemoryPlan, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Writes the plan as a PNG timeline to ``path``; returns the path.

    Each tensor is a rectangle from its first to its last step, at its offset
    and as tall as its size; tensors sharing bytes in place share a colour.
    Lines mark the arena and the lower bound; a step line shows the bytes live
    at each step.
    """
    plt = _pyplot()
    from matplotlib.collections import PolyCollection

    target = Path(path)
    mib = 1024.0 * 1024.0
    buffer = _buffers(plan)
    cmap = plt.get_cmap("tab20")
    polys, colors = [], []
    for t in plan.tensors:
        x0, x1 = t.first - 0.45, t.last + 0.45
        y0, y1 = t.offset / mib, t.end / mib
        polys.append([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
        colors.append(cmap(buffer[t.name] % 20))
    steps = max(len(plan.schedule), 1)
    fig, ax = plt.subplots(figsize=(min(6 + steps / 40, 24), 6), dpi=100)
    try:
        ax.add_collection(PolyCollection(polys, facecolors=colors, edgecolors="black", linewidths=0.2))
        live = live_bytes(plan)
        if live:
            xs = [s - 0.5 for s in range(len(live))] + [len(live) - 0.5]
            ax.step(
                xs,
                [v / mib for v in live] + [live[-1] / mib],
                where="post",
                color="gray",
                linewidth=0.8,
                label="live bytes",
            )
        ax.axhline(
            plan.arena_bytes / mib,
            color="tab:red",
            linewidth=1.2,
            label=f"arena {plan.arena_bytes / mib:.2f} MiB",
        )
        ax.axhline(
            plan.lower_bound_bytes / mib,
            color="tab:blue",
            linestyle="--",
            linewidth=1.0,
            label=f"lower bound {plan.lower_bound_bytes / mib:.2f} MiB",
        )
        ax.set_xlim(-1, steps)
        ax.set_ylim(0, max(plan.arena_bytes, plan.lower_bound_bytes, 1) / mib * 1.05)
        ax.set_xlabel("step (execution order)")
        ax.set_ylabel("arena offset (MiB)")
        ax.set_title(
            title
            or f"memory plan: arena {plan.arena_bytes / mib:.2f} MiB, "
            f"bound {plan.lower_bound_bytes / mib:.2f} MiB, naive {plan.naive_bytes / mib:.2f} MiB"
        )
        ax.legend(loc="upper right", fontsize="small")
        fig.tight_layout()
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        plt.close(fig)
    return target
