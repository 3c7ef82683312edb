"""What the raising passes share: the ``onnx-only`` option and the choice between an ONNX op and a kiln op.

A raising pass replaces a decomposed pattern by one op: the standard ONNX op
when the model's opset has it (``Gelu`` from 20, ``LayerNormalization`` from
17 ...), else the kiln op of the same meaning (``kiln.Gelu``), which every
target lowers and the ONNX exporter writes as a local function.  With
``onnx-only=true`` (what the ONNX presets ask for) a pattern whose op the
opset lacks is left alone: a kiln op there would only become a function call
that onnxruntime inlines back into the same nodes.

The option reaches the rules through the pass context (``ctx.extra``), set
for the duration of the pass's run: declarative checks read it from
``MatchContext.pass_ctx``, imperative patterns from ``self.pass_ctx``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from kiln.ir.core import Graph
from kiln.passes.fusion._match import onnx_opset
from kiln.rewrite import RuleSet, RulesPass

if TYPE_CHECKING:
    from kiln.passmanager.base import PassContext

ONNX_ONLY_KEY = "kiln.passes.fusion.onnx_only"
"""``PassContext.extra`` key: the running raising pass creates no kiln ops."""


def kiln_ops_allowed(pass_ctx: PassContext | None) -> bool:
    """Whether the running pass may create kiln ops (not in ``onnx-only`` mode)."""
    return not (pass_ctx is not None and pass_ctx.extra.get(ONNX_ONLY_KEY))


# Ops onnxruntime runs by expanding their ONNX function body (no kernel of their own).
_ONNXRUNTIME_EXPANDS = frozenset({"HardSwish"})


@functools.cache
def _onnxruntime_kernels() -> dict[str, list[tuple[int, int]]]:
    """Default-domain op -> version ranges of the installed onnxruntime's CPU kernels."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        kernels: dict[str, list[tuple[int, int]]] = {}
        for kernel in ort_state.get_all_opkernel_def():
            if kernel.domain in ("", "ai.onnx") and kernel.provider == "CPUExecutionProvider":
                kernels.setdefault(kernel.op_name, []).append(tuple(kernel.version_range))
        return kernels
    except Exception:  # noqa: BLE001 - an onnxruntime without the listing: trust the opset
        return {}


def onnxruntime_runs(onnx_op: str, version: int) -> bool:
    """Whether the installed onnxruntime can run ``onnx_op`` at opset ``version``.

    The ONNX output of ``-O2`` is for onnxruntime: raising to an op it has no
    kernel for (Swish-24 in onnxruntime 1.32) would make a model it cannot load.
    """
    kernels = _onnxruntime_kernels()
    if not kernels or onnx_op in _ONNXRUNTIME_EXPANDS:
        return True
    return any(lo <= version <= hi for lo, hi in kernels.get(onnx_op, ()))


def raise_to(pass_ctx: PassContext | None, graph: Graph | None, onnx_op: str, since: int) -> str:
    """``"onnx"`` if the model's opset has ``onnx_op`` (added in opset ``since``), else ``"kiln"``,
    or the reason the pattern must stay (a sentence) when only a kiln op would do and the pass
    creates none."""
    version = onnx_opset(graph)
    if version >= since:
        if kiln_ops_allowed(pass_ctx) or onnxruntime_runs(onnx_op, version):
            return "onnx"
        return f"onnxruntime has no kernel for {onnx_op}-{version}, and the pass is onnx-only"
    if kiln_ops_allowed(pass_ctx):
        return "kiln"
    return f"opset {version} has no {onnx_op} (added in {since}) and the pass is onnx-only"


@dataclass(frozen=True)
class RaisePass(RulesPass):
    """A rule-set pass with the ``onnx-only`` option (see the module docstring)."""

    name: ClassVar[str] = ""
    rules: ClassVar[RuleSet | None] = None

    onnx_only: bool = field(
        default=False,
        metadata={"doc": "raise only to ONNX ops of the model's opset, never to kiln ops (the ONNX presets)"},
    )

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        missing = object()
        saved = ctx.extra.get(ONNX_ONLY_KEY, missing)
        ctx.extra[ONNX_ONLY_KEY] = self.onnx_only
        try:
            return super().run(graph, ctx)
        finally:
            if saved is missing:
                ctx.extra.pop(ONNX_ONLY_KEY, None)
            else:
                ctx.extra[ONNX_ONLY_KEY] = saved


__all__ = ["ONNX_ONLY_KEY", "RaisePass", "kiln_ops_allowed", "raise_to"]
