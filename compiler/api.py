"""kiln's Python API: ``optimize`` (and, from the driver, ``compile``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.errors import UsageError

if TYPE_CHECKING:
    from kiln.ir.core import Graph
    from kiln.passmanager.base import PassContext
    from kiln.passmanager.pipeline import Pipeline


def optimize(
    graph: Graph, level: int = 2, *, pipeline: str | Pipeline | None = None, ctx: PassContext | None = None
) -> Graph:
    """Optimizes ``graph`` in place with preset ``O<level>`` (or ``pipeline``) and returns it.

    Args:
        graph: the graph to optimize; it is changed in place.
        level: 0..3, the preset ``O0``..``O3``; ignored when ``pipeline`` is given.
        pipeline: a pipeline string (``"fold,dce"``) or :class:`Pipeline` to run instead.
        ctx: the pass context (target, calibration data ...); a fresh one by default.

    Raises:
        UsageError: ``level`` is not 0..3.
        PipelineError: the pipeline does not parse or names an unknown pass.
        PassFailure: a pass failed.
    """
    from kiln.passmanager.manager import PassManager
    from kiln.passmanager.presets import preset_name

    if pipeline is None:
        try:
            pipeline = preset_name(level)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    PassManager(pipeline).run(graph, ctx)
    return graph
