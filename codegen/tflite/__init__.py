"""The ``tflite`` target: NHWC TFLite flatbuffers for LiteRT, in float32, float16 weights or full int8.

``legalize_pipeline`` runs the target fusions (activations into Conv/Gemm ...)
and the ``to-nhwc`` layout pass; ``emit`` lowers the channels-last graph to
builtin operators (:mod:`kiln.codegen.tflite.lower`) and writes
``<stem>.tflite`` with :mod:`kiln.codegen.tflite.flatbuffer`.

Options: ``nhwc_io`` (4-D inputs and outputs NHWC, so no Transpose is left at
all) and ``int8_io`` (with ``--int8``: int8 inputs and outputs rather than
float ones with QUANTIZE/DEQUANTIZE at the boundary).  ``--fp16`` means
float16 weight storage (DEQUANTIZE to float32 at load, as the TFLite
converter's float16 mode), not a float16 graph, so the precision pipeline
holds only the quantize step.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln.errors import UsageError
from kiln.ir.core import Graph

SUFFIX = ".tflite"

_STANDARD = ("fp16", "int8", "input_shapes", "pipeline")
_OWN = ("nhwc_io", "int8_io")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_options(options: Mapping[str, Any]) -> None:
    unknown = sorted(k for k, v in options.items() if k not in _STANDARD + _OWN and v not in (None, False))
    if unknown:
        raise UsageError(f"target tflite has no option {_flag(unknown[0])}")
    if options.get("int8_io") and not options.get("int8"):
        raise UsageError("--int8-io needs --int8 (a float model has float inputs and outputs)")
    if options.get("int8") and options.get("fp16"):
        raise UsageError("--fp16 and --int8 exclude each other on target tflite")


def legalize_pipeline(options: Mapping[str, Any] | None = None) -> str:
    """Target fusions, then channels-last layout (NHWC inputs/outputs with ``nhwc_io``), then activations into
    the Adds before them (ADD carries the Relu family)."""
    options = dict(options or {})
    _check_options(options)
    layout = "to-nhwc{nhwc-io=true}" if options.get("nhwc_io") else "to-nhwc"
    return f"target-fusions,lift-1d,{layout},fuse-add-act,remove-noops,dce"


def precision_pipeline(int8: bool, fp16: bool, quantize_options: Mapping[str, Any] | None = None) -> str:
    """Only the quantize step: TFLite's ``--fp16`` is float16 weight storage, done by ``emit``."""
    from kiln.calib.cli import quantize_step

    return quantize_step(quantize_options) if int8 else ""


def emit(graph: Graph, out_dir: str | Path, stem: str, options: Mapping[str, Any] | None = None) -> list[Path]:
    """Writes ``out_dir/<stem>.tflite``; returns ``[path]``.

    Raises:
        UsageError: an option that is not for this target, or a dynamic shape.
        UnsupportedOpError: an op (or an op's attribute) TFLite cannot express,
            naming the node; nothing is written.
    """
    from kiln.codegen.tflite.lower import build

    options = dict(options or {})
    _check_options(options)
    pipeline = str(options.get("pipeline") or legalize_pipeline(options))
    source = graph.model.source_path
    data = build(graph, fp16=bool(options.get("fp16")), nhwc_io=bool(options.get("nhwc_io")),
                 pipeline=pipeline, source=source, int8_io=bool(options.get("int8_io")))
    path = Path(out_dir) / f"{stem}{SUFFIX}"
    path.write_bytes(data)
    return [path]
