"""Calibration results and the files they are written to.

:class:`CalibrationResult` holds what quantization decided: the range of every
quantized activation, the per-channel scales of every quantized weight, the
layers, (with ``keep_float`` or ``min_sqnr``) each layer's sensitivity and the
layers kept in float, and the measurements of the int8 report: each quantized
tensor's and layer's SQNR and the output SQNR on calibration samples
(:meth:`CalibrationResult.report`).  It is written as:

* ``<stem>.calib.json``: kiln's calibration table (read back by
  :func:`read_json`, so ``--calib-table table.json`` reuses it without data,
  layers kept in float included);
* ``<stem>.trt.cache``: TensorRT's calibration cache, the text format of
  ``IInt8Calibrator::writeCalibrationCache`` (a header line
  ``TRT-<version>-EntropyCalibration2`` (``MinMaxCalibration`` for minmax),
  then ``<tensor>: <scale>`` with the scale as the big-endian hex of its
  float32 bits), for activations;
* ``<stem>.ncnn.table``: the table ``ncnn2table`` writes and ``ncnn2int8``
  reads: ``<layer>_param_0 s0 s1 ...`` (weight scales per output channel,
  ``127 / max|w|``) for every weighted layer, then ``<layer> s`` (the scale
  of the layer's input, ``127 / T``).  Layers are named by kiln node names.

Scales here are kiln's (``T / 127``: real = int8 * scale) except in the ncnn
table, which uses ncnn's reciprocal convention (int8 = real * scale).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kiln.calib.calibrators import QMAX, TensorRange
from kiln.errors import UsageError

TABLE_FORMAT = "kiln-calibration"
TABLE_VERSION = 1
TRT_VERSION = 100000
"""The version written in TensorRT cache headers (NV_TENSORRT_VERSION of 10.0.0)."""


@dataclass(frozen=True)
class WeightScales:
    """Per-channel (or per-tensor, ``axis=None``) scales of one quantized weight."""

    axis: int | None
    scales: tuple[float, ...]


@dataclass(frozen=True)
class LayerInfo:
    """One quantized layer: its op, the activations quantized at its inputs, its weight."""

    op: str
    inputs: tuple[str, ...]
    weight: str | None = None


CHANNEL_SPREAD_HINT = 8.0
"""A quantized input whose channels' ranges spread this much (largest over median) gets a line in the report:
resnet50's stay under 5x and its int8 keeps 35 dB; PP-OCRv4 det's worst depthwise inputs spread 14x."""

_NAME_WIDTH = 40
"""Layer and tensor names longer than this are shortened in the report (from the left: the end says more)."""


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[len(text) - width + 1:]


@dataclass
class CalibrationResult:
    """Everything calibration and quantization decided (see the module doc)."""

    calibrator: str
    samples: int
    ranges: dict[str, TensorRange] = field(default_factory=dict)
    weights: dict[str, WeightScales] = field(default_factory=dict)
    layers: dict[str, LayerInfo] = field(default_factory=dict)
    sensitivity: dict[str, float] = field(default_factory=dict)
    kept_float: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    tensor_sqnr: dict[str, float] = field(default_factory=dict)
    """Quantized activation -> SQNR (dB) of ``DQ(Q(x))`` against ``x`` on the probe samples."""
    layer_sqnr: dict[str, float] = field(default_factory=dict)
    """Quantized layer -> SQNR (dB) of its output with quantized inputs and weights, on float activations."""
    channel_spread: dict[str, float] = field(default_factory=dict)
    """Quantized activation -> its largest channel's max |x| over the median channel's, along the axis its layer
    reduces over (see :mod:`kiln.passes.quantize.sensitivity`)."""
    output_sqnr: float | None = None
    """The model's output SQNR (dB) with every quantized layer quantized, on the probe samples."""
    weights_sqnr: float | None = None
    """The output SQNR (dB) with only the quantized layers' int8 weights, every activation float, on the
    ``layer_samples``: the most any activation calibration could reach."""
    probe_samples: int = 0
    """Calibration samples the output SQNR was measured on."""
    layer_samples: int = 0
    """Calibration samples the tensor and layer SQNRs (and the sensitivities) were measured on."""
    seconds: float = 0.0
    source: str | None = field(default=None, compare=False, repr=False)
    """The file the table was read from (for error messages; never written)."""

    # ---- writers

    def to_json(self) -> str:
        def num(x: float) -> float | str:
            return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")

        doc = {
            "format": TABLE_FORMAT,
            "version": TABLE_VERSION,
            "calibrator": self.calibrator,
            "samples": self.samples,
            "activations": {
                name: {"threshold": r.threshold, "scale": r.scale, "min": r.min, "max": r.max, "count": r.count,
                       **({"method": r.method} if r.method else {}),
                       **({"sqnr_db": num(self.tensor_sqnr[name])} if name in self.tensor_sqnr else {}),
                       **({"channel_spread": self.channel_spread[name]} if name in self.channel_spread else {})}
                for name, r in sorted(self.ranges.items())
            },
            "weights": {name: {"axis": w.axis, "scales": list(w.scales)} for name, w in sorted(self.weights.items())},
            "layers": {name: {"op": li.op, "inputs": list(li.inputs), "weight": li.weight,
                              **({"sqnr_db": num(self.layer_sqnr[name])} if name in self.layer_sqnr else {})}
                       for name, li in self.layers.items()},
            "output_sqnr_db": None if self.output_sqnr is None else num(self.output_sqnr),
            "weights_sqnr_db": None if self.weights_sqnr is None else num(self.weights_sqnr),
            "probe_samples": self.probe_samples,
            "layer_samples": self.layer_samples,
            "sensitivity": {k: num(v) for k, v in self.sensitivity.items()},
            "kept_float": list(self.kept_float),
            "skipped": list(self.skipped),
        }
        return json.dumps(doc, indent=1, sort_keys=False) + "\n"

    def worst_layers(self, count: int = 10) -> list[tuple[str, float]]:
        """The ``count`` quantized layers with the lowest SQNR (layer name, dB), worst first."""
        return sorted(self.layer_sqnr.items(), key=lambda kv: (kv[1], kv[0]))[:count]

    def report(self, count: int = 10) -> str:
        """The int8 report: the output SQNR, what stayed float, and the ``count`` worst layers with the
        threshold, scale and SQNR of their quantized inputs.  Empty when nothing was measured (a reused table)."""
        if self.output_sqnr is None:
            return ""
        lines = [f"int8 report ({self.calibrator} calibration): output SQNR {self.output_sqnr:.1f} dB on "
                 f"{self.probe_samples} calibration samples; {len(self.layers)} layers quantized"
                 + (f", {len(self.kept_float)} kept in float" if self.kept_float else "")
                 + (f", {len(self.skipped)} skipped" if self.skipped else "")]
        if self.weights_sqnr is not None:
            lines.append(f"int8 weights alone (every activation float): {self.weights_sqnr:.1f} dB on "
                         f"{self.layer_samples or self.probe_samples} samples, what no activation calibration "
                         "can improve on")
        moved = sum(1 for r in self.ranges.values() if r.method)
        if moved:
            lines.append(f"{moved} of {len(self.ranges)} activations took the mse threshold: their KL threshold left "
                         "them below the entropy floor (--entropy-floor; 0 keeps TensorRT's search for all)")
        worst = self.worst_layers(count)
        if worst:
            rows = []
            for name, db in worst:
                info = self.layers.get(name)
                inputs = [t for t in (info.inputs if info is not None else ()) if t in self.ranges] or [""]
                for k, tensor in enumerate(inputs):
                    r = self.ranges.get(tensor)
                    rows.append((name if k == 0 else "", (info.op if info else "") if k == 0 else "",
                                 f"{db:.1f}" if k == 0 else "", tensor,
                                 (f"{r.threshold:.4g}" + (f" ({r.method})" if r.method else "")) if r else "",
                                 f"{r.scale:.4g}" if r else "",
                                 f"{self.tensor_sqnr.get(tensor, float('nan')):.1f}" if r else "",
                                 f"{self.channel_spread[tensor]:.1f}x" if tensor in self.channel_spread else ""))
            head = ("layer", "op", "layer dB", "quantized input", "threshold", "scale", "input dB", "ch spread")
            widths = [min(max(len(row[i]) for row in [head, *rows]), _NAME_WIDTH) for i in range(len(head))]
            lines.append(f"the {len(worst)} worst layers (their own output SQNR, on the float model's activations "
                         f"for {self.layer_samples or self.probe_samples} samples):")
            for row in [head, *rows]:
                cells = [_fit(c, w).ljust(w) if i in (0, 1, 3) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths))]
                lines.append(("  " + "  ".join(cells)).rstrip())
            spread = [(name, self.channel_spread[tensor]) for name, _ in worst
                      for tensor in (self.layers[name].inputs if name in self.layers else ())
                      if self.channel_spread.get(tensor, 0.0) >= CHANNEL_SPREAD_HINT]
            if spread:
                named = ", ".join(f"{name} ({s:.0f}x)" for name, s in spread[:3])
                lines.append(f"ch spread: the largest input channel's range over the median one's.  {named}: one "
                             "int8 scale per tensor serves channels that far apart poorly, whatever the threshold; "
                             "--min-sqnr DB keeps the layers that cost the most in float")
        return "\n".join(lines) + "\n"

    def to_tensorrt_cache(self, trt_version: int = TRT_VERSION) -> str:
        kind = "MinMaxCalibration" if self.calibrator == "minmax" else "EntropyCalibration2"
        lines = [f"TRT-{trt_version}-{kind}"]
        for name, r in sorted(self.ranges.items()):
            lines.append(f"{name}: {struct.pack('>f', r.scale).hex()}")
        return "\n".join(lines) + "\n"

    def to_ncnn_table(self) -> str:
        weight_lines, act_lines = [], []
        for layer, info in self.layers.items():
            if info.weight is not None and info.weight in self.weights:
                w = self.weights[info.weight]
                scales = " ".join(f"{1.0 / s:.6f}" if s > 0 else "0" for s in w.scales)
                weight_lines.append(f"{layer}_param_0 {scales}")
            if info.inputs and info.inputs[0] in self.ranges:
                r = self.ranges[info.inputs[0]]
                act_lines.append(f"{layer} {QMAX / r.threshold:.6f}")
        return "\n".join(weight_lines + act_lines) + "\n"

    def files(self, stem: str) -> dict[str, str]:
        """File name -> text of every table, for ``stem``."""
        return {
            f"{stem}.calib.json": self.to_json(),
            f"{stem}.trt.cache": self.to_tensorrt_cache(),
            f"{stem}.ncnn.table": self.to_ncnn_table(),
        }

    def write(self, folder: str | os.PathLike[str], stem: str) -> list[Path]:
        out: list[Path] = []
        for name, text in self.files(stem).items():
            path = Path(folder) / name
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
            out.append(path)
        return out


def read_json(path: str | os.PathLike[str]) -> CalibrationResult:
    """Reads a table written by :meth:`CalibrationResult.to_json` (for reuse without data)."""
    where = os.fspath(path)
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{where}: not a readable calibration table ({exc})") from None
    if not isinstance(doc, Mapping) or doc.get("format") != TABLE_FORMAT:
        raise UsageError(f"{where}: not a kiln calibration table (no \"format\": \"{TABLE_FORMAT}\")")
    if doc.get("version") != TABLE_VERSION:
        raise UsageError(f"{where}: calibration table version {doc.get('version')!r} is not supported")
    try:
        result = CalibrationResult(str(doc["calibrator"]), int(doc["samples"]), source=where)
        for name, r in doc["activations"].items():
            t = float(r["threshold"])
            if not (t > 0 and math.isfinite(t)):
                raise ValueError(f"tensor {name!r} has threshold {t}")
            method = r.get("method")
            result.ranges[str(name)] = TensorRange(t, float(r["min"]), float(r["max"]), int(r["count"]),
                                                   None if method is None else str(method))
        for name, w in doc.get("weights", {}).items():
            axis = w.get("axis")
            result.weights[str(name)] = WeightScales(None if axis is None else int(axis),
                                                     tuple(float(s) for s in w["scales"]))
        result.kept_float = [str(n) for n in doc.get("kept_float", [])]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"{where}: malformed calibration table ({exc})") from None
    return result

