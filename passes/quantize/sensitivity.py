"""Per-layer sensitivity for mixed precision (``quantize{keep-float=N}``, ``--keep-float N``).

A layer's sensitivity is the SQNR of the model's outputs (all outputs, all
samples, against the float model) when *only that layer* is quantized: its
activation inputs through Q/DQ with their calibrated scales, its weights
fake-quantized per channel.  The lower the SQNR, the more the layer costs;
the N layers with the lowest SQNR stay in float.

Each measurement runs the float model with one layer's quantization patched
into the ONNX proto, on the first ``samples`` samples of the calibration
subsample, in onnxruntime.  The float reference runs once.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from kiln.calib.calibrators import TensorRange
from kiln.calib.data import batch_size_for, input_specs, iter_batches, iter_samples, select
from kiln.calib.executor import make_session
from kiln.calib.progress import ProgressBar
from kiln.errors import UsageError
from kiln.ir.core import Graph
from kiln.passes.quantize.placement import Layer, Plan
from kiln.quant.metrics import sqnr_db
from kiln.quant.weights import QMAX, fake_quantize

logger = logging.getLogger(__name__)


def layer_sensitivity(graph: Graph, plan: Plan, ranges: dict[str, TensorRange], calibration: Any,
                      samples: int = 8) -> dict[str, float]:
    """Layer name -> output SQNR (dB) with only that layer quantized, for every layer of ``plan``."""
    import onnx
    from kiln.calib import CalibrationConfig
    from kiln.exporter import to_onnx

    if not isinstance(calibration, CalibrationConfig):
        raise UsageError("keep-float measures each layer on calibration data; a calibration table is not enough")
    specs = input_specs(graph)
    source = calibration.source(specs)
    indices = select(source, calibration.count, calibration.seed)
    if indices is not None:
        indices = indices[: max(1, samples)]
    batch = batch_size_for(specs, calibration.batch_size)
    static = any(s.batch is not None for s in specs)
    feeds = [f for f, _ in iter_batches(iter_samples(source, indices, samples), specs, batch, static_batch=static)]
    if not feeds:
        raise UsageError("keep-float: the calibration data gave no samples")
    base = to_onnx(graph)
    outputs = [o.name for o in base.graph.output]
    reference = _run(base.SerializeToString(), outputs, feeds)
    producers = {out: i for i, node in enumerate(base.graph.node) for out in node.output}
    result: dict[str, float] = {}
    bar = ProgressBar(len(plan.layers), label="measuring layer sensitivity", enabled=calibration.progress)
    try:
        for layer in plan.layers:
            model = onnx.ModelProto()
            model.CopyFrom(base)
            _patch(model, layer, producers, ranges)
            got = _run(model.SerializeToString(), outputs, feeds)
            result[layer.name] = sqnr_db(reference, got)
            bar.update(1)
    finally:
        bar.close()
    return result


def _run(model: bytes, outputs: list[str], feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    session = make_session(model)
    got: list[np.ndarray] = []
    for feed in feeds:
        got.extend(session.run(outputs, feed))
    return got


def _patch(model: Any, layer: Layer, producers: dict[str, int], ranges: dict[str, TensorRange]) -> None:
    """Quantizes only ``layer`` in ``model`` (a copy of the float export)."""
    from onnx import helper, numpy_helper

    node_index = producers[layer.node.outputs[0].name]
    node = model.graph.node[node_index]
    new_nodes = []
    for index, value in layer.acts:
        r = ranges[value.name]
        scale = np.float32(r.threshold / QMAX) if r.threshold > 0 else np.float32(1.0)
        tag = f"__kiln_sens_{index}"
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{tag}_scale"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), f"{tag}_zp"),
        ])
        new_nodes.append(helper.make_node("QuantizeLinear", [node.input[index], f"{tag}_scale", f"{tag}_zp"], [f"{tag}_q"]))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_scale", f"{tag}_zp"], [f"{tag}_dq"]))
        node.input[index] = f"{tag}_dq"
    for site in layer.weights:
        w = site.value.numpy()
        fq = numpy_helper.from_array(fake_quantize(w, site.axis), f"__kiln_sens_w{site.index}")
        model.graph.initializer.append(fq)
        node.input[site.index] = fq.name
    if new_nodes:
        rest = list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(rest[:node_index] + new_nodes + rest[node_index:])
