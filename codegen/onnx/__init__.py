"""The ``onnx`` target: optimized ONNX, kiln ops as standard ops or local functions.

A target package provides ``legalize_pipeline(options)`` (the passes that make
IR expressible on the target) and ``emit(graph, out_dir, stem, options)`` (the
artifact files).  ONNX can express every IR state, so its legalization is
empty; the exporter decides how each kiln op is written (a standard op where
the model's opset has one, else a model-local function).

``--onnx-contrib`` (``options["onnx_contrib"]``) targets onnxruntime: the
legalization then runs kiln's fusions (activations into Conv/Gemm/MatMul,
GELU/SiLU/attention raising, the Q/K/V projections merged) and the emitter
writes the kiln ops that onnxruntime has a fused kernel for as its
``com.microsoft`` contrib ops (see :mod:`kiln.codegen.onnx.contrib`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln.errors import UsageError
from kiln.ir.core import Graph

SUFFIX = ".onnx"

# Keys the driver always passes (kiln.driver.compile.STANDARD_OPTIONS); the
# graph already carries what int8/fp16 did, and shapes were applied at load.
_STANDARD = ("fp16", "int8", "input_shapes", "pipeline")
_OPTIONS = ("onnx_contrib",)

CONTRIB_PIPELINE = (
    "repeat{max=2}(fuse-act,raise-patterns,fuse-sibling-matmul,fuse-concat-split,fuse-bias,dce)"
)
"""The fusions ``--onnx-contrib`` runs: those whose kiln ops become onnxruntime contrib ops."""


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options, with a :class:`UsageError` for a truthy one that is not the onnx target's."""
    options = dict(options or {})
    unknown = sorted(k for k, v in options.items() if k not in _STANDARD + _OPTIONS and v not in (None, False))
    if unknown:
        raise UsageError(f"target onnx has no option {_flag(unknown[0])}")
    return options


def legalize_pipeline(options: Mapping[str, Any] | None = None) -> str:
    """Nothing for plain ONNX; with ``onnx_contrib`` the fusions whose results onnxruntime runs fused."""
    return CONTRIB_PIPELINE if _check_options(options).get("onnx_contrib") else ""


def keep_layer_norm_unfused(graph: Graph) -> int:
    """Writes a residual ``Add`` that feeds a LayerNorm as ``Sum``; returns how many.

    onnxruntime fuses ``Add -> LayerNormalization`` into its ``SkipLayerNormalization``
    contrib kernel, whose CPU implementation (onnxruntime 1.32) is 5-8x slower than the two
    ops it replaces: measured per block, [1, 32, 128] 21.9 vs 4.6 us, [1, 128, 768] 488 vs
    61 us, [1, 197, 384] 375 vs 50 us.  Its fusion matches ``Add`` only, and ``Sum`` of two
    inputs is the same computation (with the same broadcasting since opset 8), so the
    transformer blocks kiln writes keep onnxruntime's fast LayerNormalization kernel.
    """
    if graph.opsets.get("", 0) < 8:
        return 0
    changed = 0
    for node in graph:
        if node.op != "Add" or node.domain != "" or len(node.outputs) != 1:
            continue
        if any(use.index == 0 and use.node.op in ("LayerNormalization", "LayerNorm")
               and use.node.domain in ("", "kiln") for use in node.outputs[0].uses):
            node.op = "Sum"
            changed += 1
    return changed


def emit(graph: Graph, out_dir: str | Path, stem: str, options: Mapping[str, Any] | None = None) -> list[Path]:
    """Writes ``out_dir/<stem>.onnx``; returns the files written, the model first.

    The driver calls this on a private staging folder and renames the files
    into place, so a failure leaves nothing behind in the user's folder.
    ``options["onnx_contrib"]`` writes kiln ops as onnxruntime contrib ops
    where one exists; any other truthy non-standard option is a
    :class:`UsageError`.
    """
    from kiln.exporter import save

    options = _check_options(options)
    keep_layer_norm_unfused(graph)
    lower = None
    if options.get("onnx_contrib"):
        from kiln.codegen.onnx.contrib import lower

    path = Path(out_dir) / f"{stem}{SUFFIX}"
    written = save(graph, path, lower=lower)
    if isinstance(written, (list, tuple)) and written:
        return [Path(p) for p in written]
    return [path]
