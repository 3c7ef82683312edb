"""``kiln verify``: run a model and an artifact on the same inputs, compare outputs.

The model runs on onnxruntime (CPU); the artifact on the runtime its suffix
names (:data:`RUNTIMES`).  Outputs are matched by name, and each gets:

- ``max_abs``: max |a - b|;
- ``max_rel``: max |a - b| / max |a|, the largest error relative to the
  reference output's largest magnitude (0 when equal, inf when a is all zeros
  and b is not);
- ``sqnr_db``: 10 log10(sum a^2 / sum (a - b)^2), inf when equal.

``a`` is the model's output, ``b`` the artifact's.  NaNs in the same places
count as equal.  An output is within tolerance when ``max_rel <= rtol``.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import UsageError

# Artifact suffix -> the runtime bridge that runs it (a module with
# ``run(artifact, inputs) -> dict[str, np.ndarray]``, ONNX names and layouts).
RUNTIMES: dict[str, str] = {
    ".onnx": "kiln.runtime.onnxruntime",
    ".param": "kiln.runtime.ncnn",
    ".tflite": "kiln.runtime.litert",
    ".engine": "kiln.runtime.tensorrt",
}

DEFAULT_RTOL = 1e-4


@dataclass(frozen=True)
class OutputDiff:
    """How far one artifact output is from the model's."""

    max_abs: float
    max_rel: float
    sqnr_db: float
    note: str = ""

    def as_json(self) -> dict[str, float]:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "sqnr_db": self.sqnr_db}


@dataclass
class VerifyReport:
    """The comparison of every output; ``ok`` when all are within ``rtol``."""

    rtol: float
    outputs: dict[str, OutputDiff]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(d.max_rel <= self.rtol for d in self.outputs.values())

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "outputs": {name: d.as_json() for name, d in self.outputs.items()}}

    def table(self) -> str:
        """The human report: one row per output, then a verdict line."""
        header = ("output", "shape", "max_abs", "max_rel", "sqnr_db", "")
        rows = [header]
        for name, d in self.outputs.items():
            shape = "x".join(str(s) for s in self.shapes.get(name, ())) or "scalar"
            verdict = "ok" if d.max_rel <= self.rtol else "DIFFERS"
            rows.append((name, shape, f"{d.max_abs:.3g}", f"{d.max_rel:.3g}", f"{d.sqnr_db:.1f}", verdict))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        bad = sum(1 for d in self.outputs.values() if d.max_rel > self.rtol)
        total = len(self.outputs)
        if bad:
            lines.append(f"kiln: verify: {bad} of {total} outputs differ beyond rtol {self.rtol:g}")
        else:
            lines.append(f"kiln: verify: all {total} outputs within rtol {self.rtol:g}")
        return "\n".join(lines)


def runtime_for(artifact: str | os.PathLike[str]) -> Any:
    """The bridge module that runs ``artifact``, chosen by its suffix."""
    suffix = Path(artifact).suffix.lower()
    if suffix not in RUNTIMES:
        known = ", ".join(sorted(RUNTIMES))
        raise UsageError(f"no runtime runs {suffix or 'suffix-less'} artifacts (known: {known})", file=os.fspath(artifact))
    try:
        return importlib.import_module(RUNTIMES[suffix])
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"the runtime for {suffix} artifacts is not installed ({exc.name}); see the README's extras",
            file=os.fspath(artifact),
        ) from None


def load_inputs(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads an ``.npz`` of input arrays by name (never unpickles)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except Exception as exc:  # noqa: BLE001 - zipfile, format and pickle refusals all mean "unreadable"
        raise UsageError(f"--inputs {os.fspath(path)}: not a readable .npz of arrays ({' '.join(str(exc).split())})") from None


def verify(
    model: str | os.PathLike[str],
    artifact: str | os.PathLike[str],
    *,
    input_shapes: Mapping[str, tuple[int | str, ...]] | None = None,
    seed: int = 0,
    inputs: Mapping[str, np.ndarray] | None = None,
    rtol: float = DEFAULT_RTOL,
) -> VerifyReport:
    """Runs ``model`` on onnxruntime and ``artifact`` on its runtime with the same inputs.

    ``inputs`` defaults to :func:`kiln.runtime.onnxruntime.random_inputs`
    from ``seed`` and ``input_shapes``; the report's ``notes`` say which dims
    were defaulted.  Raises :class:`UsageError` when the artifact lacks one of
    the model's outputs.
    """
    from kiln.runtime import onnxruntime as ort_bridge

    bridge = runtime_for(artifact)
    notes: list[str] = []
    feeds = dict(inputs) if inputs is not None else ort_bridge.random_inputs(os.fspath(model), seed, input_shapes, notes=notes)
    expected = ort_bridge.run(os.fspath(model), feeds)
    actual = bridge.run(os.fspath(artifact), feeds)
    missing = [name for name in expected if name not in actual]
    if missing:
        have = ", ".join(actual) or "none"
        raise UsageError(f"the artifact has no output {missing[0]!r} (its outputs: {have})", file=os.fspath(artifact))
    extra = [name for name in actual if name not in expected]
    if extra:
        notes.append(f"artifact outputs not in the model, not compared: {', '.join(extra)}")
    report = VerifyReport(rtol=rtol, outputs={}, notes=notes)
    for name, a in expected.items():
        diff = compare(a, actual[name])
        report.outputs[name] = diff
        report.shapes[name] = tuple(np.shape(a))
        if diff.note:
            notes.append(f"output {name!r}: {diff.note}")
    return report


def compare(a: np.ndarray, b: np.ndarray) -> OutputDiff:
    """The metrics of the module docstring for reference ``a`` and candidate ``b``."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return OutputDiff(math.inf, math.inf, -math.inf, f"shape {a.shape} from the model, {b.shape} from the artifact")
    if a.dtype.kind in "OSU" or b.dtype.kind in "OSU":  # strings: equal or not
        equal = bool(np.array_equal(a, b))
        return OutputDiff(0.0, 0.0, math.inf) if equal else OutputDiff(math.inf, math.inf, -math.inf, "values differ")
    wide = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(b) else np.float64
    try:
        x, y = a.astype(wide), b.astype(wide)
    except (TypeError, ValueError):
        return OutputDiff(math.inf, math.inf, -math.inf, f"cannot compare {a.dtype} with {b.dtype}")
    with np.errstate(invalid="ignore", over="ignore"):
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        diff = np.where(same, 0.0, np.abs(x - y))
    diff[np.isnan(diff)] = math.inf  # NaN on one side only
    max_abs = float(diff.max()) if diff.size else 0.0
    finite = np.abs(x[np.isfinite(x)])
    scale = float(finite.max()) if finite.size else 0.0
    if max_abs == 0.0:
        max_rel = 0.0
    else:
        max_rel = max_abs / scale if scale > 0 else math.inf
    noise = float(np.sum(diff * diff))
    signal = float(np.sum(finite * finite))
    if noise == 0.0:
        sqnr = math.inf
    elif signal == 0.0 or math.isinf(noise):
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(signal / noise)
    return OutputDiff(max_abs, max_rel, sqnr)
