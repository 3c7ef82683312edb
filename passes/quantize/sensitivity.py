"""Measuring what int8 costs, on calibration samples: mixed precision and the per-layer report.

:class:`QuantProbe` runs the float model exported from the IR, with chosen
layers quantized as the quantize pass writes them (one Q/DQ pair with the
calibrated scale per quantized activation, int8 weights per channel through
DequantizeLinear) patched into the ONNX proto, on the first ``samples``
samples of the calibration subsample, in onnxruntime.  The float reference
runs once.  It answers three questions:

* :meth:`~QuantProbe.sensitivity`: a layer's *sensitivity* is the SQNR of the
  model's outputs (all outputs, all samples) when *only that layer* is
  quantized.  The lower, the more the layer costs; ``keep-float=N`` keeps
  the N lowest in float.  Only the part of the model the layer reaches runs
  for it, on float values recorded once (:mod:`kiln.passes.quantize.suffix`:
  PP-OCRv4 rec's 59 layers in 4.0 s instead of 7.5-8.1 s, det's 86 in
  5.1-6.0 s instead of 9.9-11.9 s, the same figures).
* :meth:`~QuantProbe.output_sqnr`: the output SQNR with a set of layers
  quantized; ``min-sqnr=DB`` keeps the fewest most sensitive layers in float
  that bring it to ``DB`` on the check samples, searching on their number
  where the layers' noise, added up and rescaled to each measurement, puts
  it (with bisection steps where that does not close in).  Patching the copies in
  the written model's form matters: onnxruntime then runs the same int8
  kernels (``QLinearConv`` ...) on both, whose integer accumulation and
  requantization round a value to the neighbouring level here and there.
  Most networks do not notice; networks that amplify small perturbations do
  (PP-OCRv4 rec: a 44 dB error in its second layer's weights reaches the
  output at 14 dB), and a float simulation of int8 there misses the written
  model's SQNR by several dB.  What remains different (the pass moves some
  pairs through MaxPool, sharing a scale) is a few tenths of a dB, and the
  figure reported is :meth:`~QuantProbe.graph_sqnr`'s, on the written model.
* :meth:`~QuantProbe.local_errors`: the per-layer report.  One run of a model
  that computes, beside every float layer, a shadow copy reading quantized
  inputs and weights: each quantized tensor's SQNR (``x`` against
  ``DQ(Q(x))``) and each layer's (its float output against the shadow's),
  both on the float model's own activations, so a layer's figure is its own
  error, not what it inherits; and each quantized tensor's *channel spread*,
  the largest per-channel ``max |x|`` over the median one, along the axis its
  first layer reduces over (a Conv's input channels, a MatMul's features).
  One int8 scale per tensor serves a tensor whose channels differ 10x in range
  poorly, whatever the threshold: PP-OCRv4 det's depthwise convolutions read
  inputs spread 14x (9-21 dB on their own at any threshold), rec's reach 36x,
  timm mobilenetv3's squeeze-and-excitation inputs 132x; resnet50's stay under
  5x.  The report names such layers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from kiln.calib.calibrators import TensorRange
from kiln.calib.data import batch_size_for, input_specs, iter_batches, iter_samples, select
from kiln.calib.executor import make_session
from kiln.calib.progress import ProgressBar
from kiln.errors import UsageError
from kiln.ir.core import Graph
from kiln.passes.quantize.placement import WEIGHTED_CONV, Layer, Plan
from kiln.quant.islands import fewest_sensitive
from kiln.quant.metrics import power_ratio_db, sqnr_db
from kiln.quant.weights import QMAX, quantize_weight

logger = logging.getLogger(__name__)

_TAG = "__kiln_probe"


class QuantProbe:
    """The float model and ``samples`` calibration samples, ready to measure quantized variants of it."""

    def __init__(self, graph: Graph, ranges: dict[str, TensorRange], calibration: Any, samples: int = 8,
                 purpose: str = "keep-float", check_samples: int | None = None) -> None:
        import onnx
        from kiln.calib import CalibrationConfig
        from kiln.exporter import to_onnx
        from kiln.runtime.onnxruntime import constant_arrays, detach_initializers

        if not isinstance(calibration, CalibrationConfig):
            raise UsageError(f"{purpose} measures layers on calibration data; a calibration table is not enough")
        self.progress = calibration.progress
        self.ranges = ranges
        self._onnx = onnx
        self.base = to_onnx(graph)
        # The weights stay the graph's arrays, read in place by every probe's session: the copies of the base
        # that the probes make and serialize are then kilobytes, not the model's size.
        self._weights = detach_initializers(self.base, constant_arrays(graph))
        self.outputs = [o.name for o in self.base.graph.output]
        self.feeds, self.samples = _feeds(graph, calibration, samples)
        if not self.feeds:
            raise UsageError(f"{purpose}: the calibration data gave no samples")
        # The float outputs are run when first needed: the report's own model computes them on the way
        # (on a 100 MB model a separate run of them is a quarter of the report's time).
        self._reference: list[np.ndarray] | None = None
        self._check_reference: list[np.ndarray] | None = None
        if check_samples is not None and check_samples > samples:
            self.check_feeds, self.check_samples = _feeds(graph, calibration, check_samples)
        else:
            self.check_feeds, self.check_samples = self.feeds, self.samples

    @property
    def reference(self) -> list[np.ndarray]:
        """The float model's outputs on the samples (every output of every batch, in order)."""
        if self._reference is None:
            self._reference = self._run(self.base, self.outputs)
        return self._reference

    @property
    def check_reference(self) -> list[np.ndarray]:
        """The float model's outputs on the check samples."""
        if self.check_feeds is self.feeds:
            return self.reference
        if self._check_reference is None:
            self._check_reference = self._run(self.base, self.outputs, self.check_feeds)
        return self._check_reference

    # ---- measurements

    def output_sqnr(self, layers: Iterable[Layer], check: bool = False, activations: bool = True) -> float:
        """Output SQNR (dB, all outputs and samples) with ``layers`` quantized and the rest float; ``check``: on
        the check samples.  ``activations=False``: only the layers' int8 weights, every activation float, which
        no activation calibration can improve on, since quantizing the activations as well only adds noise
        (PP-OCRv4 rec: 15.6 dB on 8 samples, most of it from one depthwise convolution)."""
        model = self._copy()
        _patch(model, list(layers), self.ranges, activations)
        if check:
            return sqnr_db(self.check_reference, self._run(model, self.outputs, self.check_feeds))
        return sqnr_db(self.reference, self._run(model, self.outputs))

    def graph_sqnr(self, graph: Graph) -> float:
        """Output SQNR of ``graph`` (the quantized model itself) against the float model, on the check samples."""
        from kiln.exporter import to_onnx
        from kiln.runtime.onnxruntime import constant_arrays, detach_initializers

        model = to_onnx(graph)
        weights = detach_initializers(model, constant_arrays(graph))
        return sqnr_db(self.check_reference, self._run(model, self.outputs, self.check_feeds, weights))

    def sensitivity(self, layers: Sequence[Layer]) -> dict[str, float]:
        """Layer name -> output SQNR with only that layer quantized."""
        from kiln.passes.quantize.suffix import SuffixRuns

        result: dict[str, float] = {}
        bar = ProgressBar(len(layers), label="measuring layer sensitivity", enabled=self.progress)
        try:
            # Each layer's suffix alone, on the float values recorded where it starts (suffix.py), where that
            # applies; else the whole model for each layer.
            suffixes = SuffixRuns.prepare(self, layers)
            for layer in layers:
                result[layer.name] = suffixes.output_sqnr(layer) if suffixes else self.output_sqnr([layer])
                bar.update(1)
        finally:
            bar.close()
        return result

    def fewest_float(self, layers: Sequence[Layer], sensitivity: dict[str, float], target_db: float) -> list[str]:
        """The fewest most sensitive layers to keep in float so that the output SQNR on the check samples reaches
        ``target_db``.  The search starts where the layers' noise, added up, would put the answer."""

        def cost(quantized: set[int]) -> float:  # lower is better, as fewest_sensitive wants
            return -self.output_sqnr((layers[i] for i in sorted(quantized)), check=True)

        def additive(order: list[int], count: int, cost_there: float) -> int:
            return additive_guess([sensitivity[layers[i].name] for i in order], count, -cost_there, target_db)

        kept = fewest_sensitive(range(len(layers)), cost, budget=-target_db,
                                sensitivity=lambda i: -sensitivity[layers[i].name], guess=additive)
        return [layer.name for i, layer in enumerate(layers) if i in kept]

    def local_errors(self, plan: Plan) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        """(tensor name -> SQNR of its Q/DQ, layer name -> SQNR of its output, tensor name -> channel spread),
        on float activations."""
        from onnx import TensorProto, helper

        model = self._copy()
        graph = model.graph
        producers = {out: node for node in graph.node for out in node.output}
        fetch: list[str] = []
        channel_max: dict[str, str] = {}  # tensor -> output of its per-channel max |x|
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        pairs: dict[str, tuple[str, str]] = {}  # what -> (signal power output, noise power output)

        def power(name: str, tag: str) -> str:
            out = f"{tag}_power"
            graph.node.append(helper.make_node("ReduceSumSquare", [name], [out], keepdims=0))
            graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
            fetch.append(out)
            return out

        def error_of(reference: str, test: str, tag: str) -> tuple[str, str]:
            graph.node.append(helper.make_node("Sub", [reference, test], [f"{tag}_err"]))
            return power(reference, f"{tag}_ref"), power(f"{tag}_err", f"{tag}_err")

        quantized: dict[str, str] = {}
        for v in plan.activations():
            tag = f"{_TAG}_t{len(quantized)}"
            nodes, quantized[v.name] = _qdq(model, v.name, self.ranges[v.name], tag)
            graph.node.extend(nodes)
            pairs[f"tensor:{v.name}"] = error_of(v.name, quantized[v.name], tag)
            axes = _other_axes(v, reduction_axis(plan, v))
            if axes:
                channel_max[v.name] = f"{tag}_chmax"
                graph.node.extend(_absmax_nodes(v.name, axes, channel_max[v.name], opset, tag))
                graph.output.append(helper.make_tensor_value_info(channel_max[v.name], TensorProto.FLOAT, None))
        for k, layer in enumerate(plan.layers):
            node = producers.get(layer.node.outputs[0].name)
            if node is None:
                continue
            tag = f"{_TAG}_l{k}"
            shadow = helper.make_node(node.op_type, list(node.input), [f"{tag}_out{i}" for i in range(len(node.output))],
                                      domain=node.domain)
            shadow.attribute.extend(node.attribute)
            for index, value in layer.acts:
                shadow.input[index] = quantized[value.name]
            for site in layer.weights:
                dq, shadow.input[site.index] = _int8_weight(model, site, tag)
                graph.node.append(dq)
            graph.node.append(shadow)
            pairs[f"layer:{layer.name}"] = error_of(node.output[0], shadow.output[0], tag)
        sums = np.zeros(len(fetch), dtype=np.float64)
        outputs = self.outputs if self._reference is None else []  # the float outputs, on the way
        maxima = list(channel_max.values())
        peaks: dict[str, np.ndarray] = {}
        reference: list[np.ndarray] = []
        for got in self._run_each(model, fetch + maxima + outputs, basic=True):
            sums += np.array([float(np.asarray(g)) for g in got[:len(fetch)]])
            for name, peak in zip(maxima, got[len(fetch):len(fetch) + len(maxima)]):
                peaks[name] = np.maximum(peaks[name], peak) if name in peaks else np.asarray(peak)
            reference.extend(got[len(fetch) + len(maxima):])
        if outputs:
            self._reference = reference
        total = dict(zip(fetch, sums))
        tensors: dict[str, float] = {}
        layers: dict[str, float] = {}
        for key, (signal, noise) in pairs.items():
            kind, name = key.split(":", 1)
            (tensors if kind == "tensor" else layers)[name] = power_ratio_db(total[signal], total[noise])
        spread = {name: s for name, out in channel_max.items() if (s := channel_spread(peaks[out])) is not None}
        return tensors, layers, spread

    # ---- plumbing

    def _copy(self) -> Any:
        model = self._onnx.ModelProto()
        model.CopyFrom(self.base)
        return model

    def _run(self, model: Any, outputs: list[str], feeds: list[dict[str, np.ndarray]] | None = None,
             weights: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        got: list[np.ndarray] = []
        for result in self._run_each(model, outputs, feeds=feeds, weights=weights):
            got.extend(result)
        return got

    def _session(self, model: Any, basic: bool = False, weights: dict[str, np.ndarray] | None = None) -> Any:
        """An onnxruntime session on ``model`` (a patched copy of the base), reading the weights in place."""
        return make_session(model, basic=basic, initializers=self._weights if weights is None else weights)

    def _run_each(self, model: Any, outputs: list[str], basic: bool = False,
                  feeds: list[dict[str, np.ndarray]] | None = None,
                  weights: dict[str, np.ndarray] | None = None) -> Iterable[list[np.ndarray]]:
        session = self._session(model, basic=basic, weights=weights)
        for feed in self.feeds if feeds is None else feeds:
            yield session.run(outputs, feed)


def additive_guess(alone_db: Sequence[float], count: int, db: float, target_db: float) -> int:
    """How many of the most sensitive layers to keep in float to reach ``target_db``, if each layer's output
    noise (read from its sensitivity, ``alone_db``, most sensitive first) added to the others', scaled to the
    output SQNR ``db`` measured with ``count`` of them in float: the search's next guess.

    Errors compound, so plain addition from the fully quantized model asks for too few (13 where PP-OCRv4
    det needs 21); rescaled to each new measurement below the target it closes in within a step or two."""
    noise = [10.0 ** (-alone / 10.0) if math.isfinite(alone) else 0.0 for alone in alone_db]
    rest = sum(noise[count:])
    if rest <= 0 or not math.isfinite(db):
        return count + 1
    allowed = rest * 10.0 ** ((db - target_db) / 10.0)  # the noise that reaches target_db, in the same units
    left = sum(noise)
    for k, n in enumerate(noise):
        if left <= allowed:
            return k
        left -= n
    return len(noise)


def _feeds(graph: Graph, calibration: Any, samples: int) -> tuple[list[dict[str, np.ndarray]], int]:
    """The model's batches of the first ``samples`` samples of the calibration subsample, and their count."""
    specs = input_specs(graph)
    source = calibration.source(specs)
    indices = select(source, calibration.count, calibration.seed)
    if indices is not None:
        indices = indices[: max(1, samples)]
    batch = batch_size_for(specs, calibration.batch_size)
    static = any(s.batch is not None for s in specs)
    feeds, count = [], 0
    for feed, n in iter_batches(iter_samples(source, indices, samples), specs, batch, static_batch=static):
        feeds.append(feed)
        count += n
    return feeds, count


def channel_spread(channel_absmax: np.ndarray) -> float | None:
    """The largest channel's ``max |x|`` over the median channel's (channels that are all zero left out);
    ``None`` with fewer than two non-zero channels."""
    live = np.asarray(channel_absmax, dtype=np.float64).ravel()
    live = live[live > 0]
    if live.size < 2:
        return None
    return float(live.max() / np.median(live))


def reduction_axis(plan: Plan, v: Any) -> int | None:
    """The axis the first layer that reduces across ``v``'s channels (Conv, ConvTranspose, Gemm, MatMul) reduces
    over, or ``None`` where none does (pooling, Concat, Add read channels one by one)."""
    rank = len(v.shape) if v.shape is not None else None
    if rank is None or rank < 2:
        return None
    for layer in plan.layers:
        for index, value in layer.acts:
            if value is not v:
                continue
            op = layer.node.op_id
            if op in WEIGHTED_CONV and index == 0:
                return 1
            if op in ("onnx.Gemm", "kiln.GemmAct"):
                transposed = bool(layer.node.attr("transA" if index == 0 else "transB", 0))
                return (1 if index == 0 else 0) if not transposed else (0 if index == 0 else 1)
            if op == "onnx.MatMul":
                return rank - 1 if index == 0 else rank - 2
    return None


def _other_axes(v: Any, axis: int | None) -> list[int]:
    if axis is None or v.shape is None:
        return []
    return [a for a in range(len(v.shape)) if a != axis]


def _absmax_nodes(name: str, axes: list[int], out: str, opset: int, tag: str) -> list[Any]:
    """``ReduceMax(Abs(name), axes, keepdims=0)`` (axes an input from opset 18)."""
    from onnx import helper

    nodes = [helper.make_node("Abs", [name], [f"{tag}_abs"])]
    if opset >= 18:
        nodes.append(helper.make_node("Constant", [], [f"{tag}_axes"],
                                      value=helper.make_tensor(f"{tag}_axes", 7, [len(axes)], axes)))
        nodes.append(helper.make_node("ReduceMax", [f"{tag}_abs", f"{tag}_axes"], [out], keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceMax", [f"{tag}_abs"], [out], axes=axes, keepdims=0))
    return nodes


def _qdq(model: Any, name: str, r: TensorRange, tag: str) -> tuple[list[Any], str]:
    """The nodes of ``DequantizeLinear(QuantizeLinear(name))`` with ``r``'s scale (their constants are added to
    ``model``), and the output's name."""
    from onnx import helper, numpy_helper

    scale = np.float32(r.threshold / QMAX) if r.threshold > 0 else np.float32(1.0)
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{tag}_scale"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), f"{tag}_zp"),
    ])
    nodes = [helper.make_node("QuantizeLinear", [name, f"{tag}_scale", f"{tag}_zp"], [f"{tag}_q"]),
             helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_scale", f"{tag}_zp"], [f"{tag}_dq"])]
    return nodes, f"{tag}_dq"


def _int8_weight(model: Any, site: Any, tag: str) -> tuple[Any, str]:
    """``DequantizeLinear`` of ``site``'s weight as int8 with per-channel scales, as the quantize pass writes it
    (so that onnxruntime runs the same int8 kernels on the copy as on the written model): the node, whose
    constants are added to ``model``, and its output's name."""
    from onnx import helper, numpy_helper

    q, scales = quantize_weight(site.value.numpy(), site.axis)
    name = f"{tag}_w{site.index}"
    zero = np.zeros(scales.shape, dtype=np.int8)
    if site.axis is None:
        scales, zero = scales.reshape(()), zero.reshape(())
    model.graph.initializer.extend([numpy_helper.from_array(q, f"{name}_q"),
                                    numpy_helper.from_array(scales, f"{name}_scale"),
                                    numpy_helper.from_array(zero, f"{name}_zp")])
    attrs = {} if site.axis is None else {"axis": site.axis}
    node = helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zp"], [name], **attrs)
    return node, name


def _patch(model: Any, layers: list[Layer], ranges: dict[str, TensorRange], activations: bool = True) -> None:
    """Quantizes ``layers`` in ``model`` (a copy of the float export) as the quantize pass would: one Q/DQ pair
    per quantized tensor, read by every layer that quantizes it, and int8 weights through DequantizeLinear.
    (One pair, not one per reader: onnxruntime fuses ``Conv -> QuantizeLinear`` into an int8 kernel only where
    the Conv's output has that single reader, and the rounding differs.)  ``activations=False``: the int8
    weights only."""
    graph = model.graph
    index_of = {out: i for i, node in enumerate(graph.node) for out in node.output}
    before: dict[int, list[Any]] = {}
    readers: dict[str, list[tuple[int, int]]] = {}
    for k, layer in enumerate(layers):
        i = index_of[layer.node.outputs[0].name]
        for index, value in layer.acts if activations else ():
            readers.setdefault(value.name, []).append((i, index))
        for site in layer.weights:
            dq, graph.node[i].input[site.index] = _int8_weight(model, site, f"{_TAG}_p{k}")
            before.setdefault(i, []).append(dq)
    for t, (name, uses) in enumerate(readers.items()):
        first = min(i for i, _ in uses)
        nodes, out = _qdq(model, graph.node[first].input[uses[0][1]], ranges[name], f"{_TAG}_a{t}")
        before.setdefault(first, []).extend(nodes)
        for i, index in uses:
            graph.node[i].input[index] = out
    if before:
        nodes = list(graph.node)
        del graph.node[:]
        for i, node in enumerate(nodes):
            graph.node.extend(before.get(i, []))
            graph.node.append(node)
