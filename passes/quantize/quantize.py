"""``quantize``: symmetric int8 quantization with explicit Q/DQ, calibrated on real data.

Steps:

1. Upgrade the opset to 13 when it is lower (per-channel DequantizeLinear
   needs it; :mod:`kiln.passes.quantize.opset`).
2. Plan which layer inputs to quantize (:mod:`kiln.passes.quantize.placement`:
   TensorRT's placement), minus the skipped layers and ops.
3. Calibrate the activations that plan needs: ``ctx.calibration`` is a
   :class:`kiln.calib.CalibrationConfig` (data: run the streaming executor on
   the graph as it is now), :class:`kiln.calib.CalibrationStats` (histograms
   already collected) or :class:`kiln.calib.CalibrationResult` (a table,
   e.g. read from ``.calib.json``); the calibrator turns histograms into
   thresholds ``T`` (scale ``T / 127``).
4. Mixed precision, measured on calibration samples
   (:mod:`kiln.passes.quantize.sensitivity`): with ``keep-float=N`` keep the
   N most sensitive layers in float (sensitivity: output SQNR with only that
   layer quantized); with ``min-sqnr=DB`` keep the fewest most sensitive
   layers in float that bring the output SQNR to ``DB``.
5. Move pairs upstream where that is exact, then insert, for each quantized
   activation ``x``, ``QuantizeLinear(x, s, 0:int8) -> DequantizeLinear``
   read by the layers that quantize it; and for each weight ``W``, an int8
   constant ``clip(rint(W / s_c), -127, 127)`` with per-channel scales
   ``s_c = max|W_c| / 127`` read through ``DequantizeLinear(Wq, s, 0, axis)``
   (the float weight goes away unless something else reads it).

6. The int8 report (``report``, on by default when there is data): each
   quantized tensor's and layer's SQNR on the float model's activations, and
   the written model's output SQNR, on the same calibration samples; a
   warning when the output SQNR is poor.

The result is the Q/DQ ONNX form that TensorRT's explicit quantization,
onnxruntime and the TFLite/ncnn converters read.  What was decided is left
in ``ctx.extra["calibration"]`` (a :class:`kiln.calib.CalibrationResult`,
written as tables by the driver); counters ``quantize.*`` go to ``ctx.stats``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from kiln.calib.calibrators import (
    CALIBRATORS,
    DEFAULT_PERCENTILE,
    ENTROPY_FLOOR_DB,
    TensorRange,
    compute_ranges,
)
from kiln.calib.table import CalibrationResult, LayerInfo, WeightScales
from kiln.errors import UsageError
from kiln.ir.core import UNKNOWN_LOCATION, Graph, Value
from kiln.ops.builder import OpBuilder
from kiln.passes.quantize.opset import upgrade_opset
from kiln.passes.quantize.placement import Plan, WeightSite, plan_quantization, propagate, quantized_uses
from kiln.passes.quantize.sensitivity import QuantProbe
from kiln.passmanager.base import Pass, PassContext
from kiln.passmanager.registry import register_pass
from kiln.quant.weights import QMAX, quantize_weight

logger = logging.getLogger(__name__)

QDQ_OPSET = 13


@register_pass
@dataclass(frozen=True)
class Quantize(Pass):
    """Inserts int8 QuantizeLinear/DequantizeLinear (zero point 0) with calibrated scales."""

    name: ClassVar[str] = "quantize"
    calibrator: str = field(default="entropy", metadata={"doc": "minmax, entropy, percentile or mse"})
    percentile: float = field(default=DEFAULT_PERCENTILE, metadata={"doc": "the percentile calibrator's p"})
    entropy_floor: float = field(default=ENTROPY_FLOOR_DB, metadata={
        "doc": "entropy: a tensor whose KL threshold leaves it below this SQNR (dB, on its histogram) takes the "
               "mse threshold when that is 3 dB better; 0: TensorRT's search alone"})
    per_channel: bool = field(default=True, metadata={"doc": "weights per output channel (else per tensor)"})
    skip_layers: tuple[str, ...] = field(default=(), metadata={"doc": "layer (node) names to keep in float"})
    skip_ops: tuple[str, ...] = field(default=(), metadata={"doc": "op types to keep in float (Conv, Add ...)"})
    keep_float: int = field(default=0, metadata={"doc": "keep the N most sensitive layers in float"})
    min_sqnr: float = field(default=0.0, metadata={
        "doc": "keep the fewest most sensitive layers in float that bring the output SQNR (dB, on calibration "
               "samples) to this; 0: off"})
    sensitivity_samples: int = field(default=8, metadata={
        "doc": "calibration samples for each layer's sensitivity and the per-layer report"})
    check_samples: int = field(default=32, metadata={
        "doc": "with min-sqnr: calibration samples for the output SQNR (the search's target and the reported "
               "figure); otherwise the output SQNR uses sensitivity-samples"})
    report: bool = field(default=True, metadata={
        "doc": "measure each tensor's and layer's SQNR and the output SQNR on calibration samples"})
    move: bool = field(default=True, metadata={"doc": "move Q/DQ through Reshape/Transpose/MaxPool/Relu where exact"})

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if self.calibrator not in CALIBRATORS:
            raise UsageError(f"quantize: unknown calibrator {self.calibrator!r} (choose from {', '.join(CALIBRATORS)})")
        if self.keep_float < 0:
            raise UsageError(f"quantize: keep-float {self.keep_float} must be >= 0")
        if self.keep_float and self.min_sqnr:
            raise UsageError("quantize: give keep-float (how many layers) or min-sqnr (what output SQNR), not both")
        start = time.perf_counter()
        if upgrade_opset(graph, QDQ_OPSET):
            ctx.bump("quantize.opset-upgraded")
            logger.info("upgraded the model to opset %d for per-channel quantization", QDQ_OPSET)
        plan = plan_quantization(graph, skip_layers=self.skip_layers, skip_ops=self.skip_ops,
                                 per_channel=self.per_channel)
        reused_float = _reused_float_layers(ctx.calibration, plan)
        if not plan.layers:
            logger.warning("quantize: no layer to quantize")
            ctx.extra["calibration"] = CalibrationResult(self.calibrator, 0, skipped=list(plan.skipped))
            return False
        ranges, samples = self._ranges(graph, plan, ctx)
        result = CalibrationResult(self.calibrator, samples, skipped=list(plan.skipped), kept_float=reused_float)
        probe = self._probe(graph, ranges, ctx)
        if probe is not None and (self.keep_float or self.min_sqnr):
            result.sensitivity = probe.sensitivity(plan.layers)
            if self.keep_float:
                ranked = sorted(result.sensitivity, key=lambda k: result.sensitivity[k])
                result.kept_float = ranked[: self.keep_float]
            else:
                result.kept_float = probe.fewest_float(plan.layers, result.sensitivity, self.min_sqnr)
            keep = set(result.kept_float)
            plan.layers = [layer for layer in plan.layers if layer.name not in keep]
            if not plan.layers:
                logger.warning("int8: %s keeps all %d layers in float: nothing is quantized",
                               f"--min-sqnr {self.min_sqnr:g}" if self.min_sqnr else f"--keep-float {self.keep_float}",
                               len(keep))
        if probe is not None and plan.layers and self.report:
            result.tensor_sqnr, result.layer_sqnr, result.channel_spread = probe.local_errors(plan)
            result.weights_sqnr = probe.output_sqnr(plan.layers, activations=False)
        changed = self.apply(graph, plan, ranges, result, ctx)
        if probe is not None and plan.layers and (self.report or self.min_sqnr):
            result.output_sqnr = probe.graph_sqnr(graph)
            result.probe_samples = probe.check_samples
            result.layer_samples = probe.samples
            _warn_if_poor(result, self.min_sqnr)
        result.seconds = time.perf_counter() - start
        ctx.extra["calibration"] = result
        return changed

    def _probe(self, graph: Graph, ranges: dict[str, TensorRange], ctx: PassContext) -> QuantProbe | None:
        """The measuring harness on calibration samples, when there is data to measure on and something asks
        for it (keep-float, min-sqnr, the report)."""
        from kiln.calib import CalibrationConfig

        wanted = self.keep_float or self.min_sqnr or self.report
        if not wanted or self.sensitivity_samples < 1:
            return None
        if not isinstance(ctx.calibration, CalibrationConfig):
            if self.keep_float or self.min_sqnr:
                option = "keep-float" if self.keep_float else "min-sqnr"
                raise UsageError(f"{option} measures each layer on calibration data; a calibration table is not "
                                 "enough")
            return None
        purpose = "keep-float" if self.keep_float else "min-sqnr" if self.min_sqnr else "the int8 report"
        # The output SQNR is checked on more samples only where a decision rests on it (min-sqnr's target): on
        # PP-OCR det the 32-sample check costs as much as the rest of the compile.
        check = max(self.check_samples, self.sensitivity_samples) if self.min_sqnr else None
        return QuantProbe(graph, ranges, ctx.calibration, self.sensitivity_samples, purpose, check_samples=check)

    # ---- calibration

    def _ranges(self, graph: Graph, plan: Plan, ctx: PassContext) -> tuple[dict[str, TensorRange], int]:
        from kiln.calib import CalibrationConfig, CalibrationStats

        names = [v.name for v in plan.activations()]
        cal = ctx.calibration
        if cal is None:
            raise UsageError("quantize needs calibration data (--calib DATA, or PassContext.calibration)")
        if isinstance(cal, CalibrationResult):
            missing = [n for n in names if n not in cal.ranges]
            if missing:
                where = f"{cal.source}: " if cal.source else ""
                raise UsageError(
                    f"{where}the calibration table has no range for tensor {missing[0]!r} "
                    f"({len(missing)} of {len(names)} missing); was it made for this model and pipeline?"
                )
            return {n: cal.ranges[n] for n in names}, cal.samples
        histograms = self.calibrator != "minmax"  # minmax reads min/max only: no histogram to fill
        if isinstance(cal, CalibrationStats):
            stats = cal
        elif isinstance(cal, CalibrationConfig):
            stats = cal.collect(graph, names, histograms=histograms)
        else:
            stats = CalibrationConfig(cal).collect(graph, names, histograms=histograms)
        missing = [n for n in names if n not in stats]
        if missing:
            raise UsageError(f"calibration statistics have no histogram for tensor {missing[0]!r}")
        ctx.extra["calibration_stats"] = stats
        ranges = compute_ranges(stats, self.calibrator, percentile=self.percentile, names=names,
                                entropy_floor=self.entropy_floor)
        return ranges, stats.samples

    # ---- rewriting

    def apply(self, graph: Graph, plan: Plan, ranges: dict[str, TensorRange], result: CalibrationResult,
              ctx: PassContext) -> bool:
        """Inserts the pairs and weight dequantizations of ``plan`` (thresholds from ``ranges``)."""
        uses = quantized_uses(plan)
        thresholds = {v: ranges[v.name].threshold for v in uses}
        # Every calibrated range goes into the table (so it can be reused), moved or not.
        result.ranges.update({v.name: ranges[v.name] for v in uses})
        moved_from: dict[Value, Value] = {}
        if self.move:
            ctx.bump("quantize.moved", propagate(graph, uses, thresholds, moved_from))
        for v, readers in uses.items():
            dq = _insert_pair(graph, v, thresholds[v])
            for node, index in readers:
                node.set_input(index, dq)
            r = ranges[moved_from.get(v, v).name]
            result.ranges.setdefault(v.name, TensorRange(thresholds[v], r.min, r.max, r.count, r.method))
        ctx.bump("quantize.activations", len(uses))
        weight_dq: dict[tuple[int, int | None], Value] = {}
        for layer in plan.layers:
            for site in layer.weights:
                key = (id(site.value), site.axis)
                dq = weight_dq.get(key)
                if dq is None:
                    dq, scales = _dequantized_weight(graph, site)
                    weight_dq[key] = dq
                    result.weights[site.value.name] = WeightScales(site.axis, tuple(float(s) for s in scales))
                site.node.set_input(site.index, dq)
            weight = layer.weights[0].value.name if layer.weights else None
            result.layers[layer.name] = LayerInfo(layer.node.op, tuple(v.name for _, v in layer.acts), weight)
        _drop_unused_constants(graph, [site.value for layer in plan.layers for site in layer.weights])
        ctx.bump("quantize.weights", len(weight_dq))
        ctx.bump("quantize.layers", len(plan.layers))
        return bool(uses or weight_dq)


POOR_SQNR_DB = 20.0
"""Below this output SQNR (on calibration samples) the compile warns: the int8 model is far from the float one."""


def _reused_float_layers(calibration: Any, plan: Plan) -> list[str]:
    """The layers a reused table kept in float (``kept_float``), taken out of ``plan`` so that the table gives
    back the model it was made with."""
    if not isinstance(calibration, CalibrationResult) or not calibration.kept_float:
        return []
    keep = set(calibration.kept_float)
    plan.layers = [layer for layer in plan.layers if layer.name not in keep]
    return list(calibration.kept_float)


def _warn_if_poor(result: CalibrationResult, target: float) -> None:
    sqnr = result.output_sqnr
    if sqnr is None:
        return
    worst = ", ".join(name for name, _ in result.worst_layers(3))
    if target and sqnr < target - 0.05:
        # The search measures float simulations of int8; the written model runs int8 kernels, and on
        # networks that amplify small perturbations the two differ by a few dB (see sensitivity.py).
        logger.warning("int8: --min-sqnr %.1f: the written model reaches %.1f dB on %d calibration samples with %d "
                       "layers kept in float; ask for more, or measure on more samples (--probe-samples)",
                       target, sqnr, result.probe_samples, len(result.kept_float))
    elif sqnr < POOR_SQNR_DB:
        weights = result.weights_sqnr
        if weights is not None and weights < POOR_SQNR_DB + 3:
            # The weights alone already cost that much: no calibrator helps, only keeping layers float does.
            logger.warning("int8: output SQNR %.1f dB against float on %d calibration samples (%s calibrator); "
                           "the int8 weights alone, every activation float, give %.1f dB, so no calibrator can "
                           "do much better.  Keep the costliest layers in float: --min-sqnr DB or --skip-layers "
                           "(worst layers: %s)", sqnr, result.probe_samples, result.calibrator, weights, worst)
        else:
            logger.warning("int8: output SQNR %.1f dB against float on %d calibration samples (%s calibrator); "
                           "worst layers: %s.  Try another --calibrator, --min-sqnr DB (mixed precision) or "
                           "--skip-layers", sqnr, result.probe_samples, result.calibrator, worst)


def _insert_pair(graph: Graph, v: Value, threshold: float) -> Value:
    """``DequantizeLinear(QuantizeLinear(v))`` right after ``v``'s producer; returns the DQ output."""
    scale = np.float32(threshold / QMAX) if threshold > 0 else np.float32(1.0)
    producer = v.producer
    before = producer.next if producer is not None else next(iter(graph), None)
    b = OpBuilder(graph, before=before, loc=producer.loc if producer is not None else UNKNOWN_LOCATION)
    s = b.const(np.array(scale, dtype=np.float32), name=f"{v.name}_scale")
    zp = b.const(np.array(0, dtype=np.int8), name=f"{v.name}_zero_point")
    q = b.op("QuantizeLinear", v, s, zp, _name=f"{v.name}_QuantizeLinear")
    return b.op("DequantizeLinear", q, s, zp, _name=f"{v.name}_DequantizeLinear")  # type: ignore[no-any-return]


def _dequantized_weight(graph: Graph, site: WeightSite) -> tuple[Value, np.ndarray]:
    w = site.value.numpy()
    q, scales = quantize_weight(w, site.axis)
    base = site.value.name
    qv = graph.add_constant(f"{base}_quantized", q)
    if site.axis is None:
        sv = graph.add_constant(f"{base}_scale", scales.reshape(()))
        zv = graph.add_constant(f"{base}_zero_point", np.array(0, dtype=np.int8))
        attrs: dict[str, Any] = {}
    else:
        sv = graph.add_constant(f"{base}_scale", scales)
        zv = graph.add_constant(f"{base}_zero_point", np.zeros(scales.shape, dtype=np.int8))
        attrs = {"axis": site.axis}
    b = OpBuilder(graph, before=site.node, loc=site.node.loc)
    dq = b.op("DequantizeLinear", qv, sv, zv, _name=f"{base}_DequantizeLinear", **attrs)
    return dq, scales


def _drop_unused_constants(graph: Graph, values: list[Value]) -> None:
    for v in values:
        if v.graph is graph and v.const is not None and not v.uses and not graph.is_output(v):
            graph.remove_constant(v)
