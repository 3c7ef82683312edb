"""The ``onnx`` target: optimized ONNX, kiln ops as standard ops or local functions.

A target package provides ``legalize_pipeline()`` (the passes that make IR
expressible on the target) and ``emit(graph, out_dir, stem, options)`` (the
artifact files).  ONNX can express every IR state, so its legalization is
empty; the exporter decides how each kiln op is written.
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
_STANDARD = ("fp16", "int8", "input_shapes")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def legalize_pipeline(options: Mapping[str, Any] | None = None) -> str:
    """The pipeline that makes any IR expressible as ONNX: nothing to do."""
    return ""


def emit(graph: Graph, out_dir: str | Path, stem: str, options: Mapping[str, Any] | None = None) -> list[Path]:
    """Writes ``out_dir/<stem>.onnx``; returns the files written, the model first.

    The driver calls this on a private staging folder and renames the files
    into place, so a failure leaves nothing behind in the user's folder.
    The onnx target has no options yet; any given is a :class:`UsageError`.
    """
    from kiln.exporter import save

    unknown = sorted(k for k, v in (options or {}).items() if k not in _STANDARD and v not in (None, False))
    if unknown:
        raise UsageError(f"target onnx has no option {_flag(unknown[0])}")

    path = Path(out_dir) / f"{stem}{SUFFIX}"
    written = save(graph, path)
    if isinstance(written, (list, tuple)) and written:
        return [Path(p) for p in written]
    return [path]
