"""The ``ncnn`` target: ``.param`` + ``.bin`` for ncnn, in fp32, fp16 weight storage or int8.

``legalize_pipeline`` adds the target fusions (activations into Conv/Gemm, raised
LayerNorm/GELU/attention, channel shuffle); :mod:`kiln.codegen.ncnn.lower` then maps
every node to ncnn layers with the batch dim dropped, :mod:`.legalize` adds the Split
layers ncnn needs, and :func:`emit` writes (main file first):

- ``<stem>.param`` (text) and ``<stem>.bin`` (weights with ncnn's storage tags);
- ``<stem>.ncnn.json``: ncnn blob names <-> ONNX input/output names and ONNX shapes,
  read by :mod:`kiln.runtime.ncnn`;
- ``<stem>.param.bin`` with ``--param-bin``; ``<stem>.id.h`` and ``<stem>.mem.h``
  with ``--c-header``.

``--fp16`` means float16 *weight storage* (tag 0x01306B47), as ncnn converters do, so
:func:`precision_pipeline` adds no ``fp16`` graph pass; ``--int8`` runs ``quantize``
and the int8 Convolution/InnerProduct layers take its scales.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiln.codegen.ncnn.excitation import vectorize_excitations
from kiln.codegen.ncnn.legalize import count_blobs, insert_splits, legalize_pipeline
from kiln.codegen.ncnn.lower import Lowered, Lowering
from kiln.codegen.ncnn.param import param_binary, param_text
from kiln.codegen.ncnn.weights import model_bin
from kiln.errors import UsageError
from kiln.ir.core import Graph

logger = logging.getLogger(__name__)

SUFFIX = ".param"
MAP_SUFFIX = ".ncnn.json"
_STANDARD = ("fp16", "int8", "input_shapes", "pipeline")
_OWN = ("param_bin", "c_header")

# ncnn's layer type indices (the order of ncnn_add_layer in ncnn's src/CMakeLists.txt),
# used by the binary param form.
_LAYER_ORDER = (
    "AbsVal ArgMax BatchNorm Bias BNLL Concat Convolution Crop Deconvolution Dropout Eltwise ELU Embed Exp "
    "Flatten InnerProduct Input Log LRN MemoryData MVN Pooling Power PReLU Proposal Reduction ReLU Reshape "
    "ROIPooling Scale Sigmoid Slice Softmax Split SPP TanH Threshold Tile RNN LSTM BinaryOp UnaryOp "
    "ConvolutionDepthWise Padding Squeeze ExpandDims Normalize Permute PriorBox DetectionOutput Interp "
    "DeconvolutionDepthWise ShuffleChannel InstanceNorm Clip Reorg YoloDetectionOutput Quantize Dequantize "
    "Yolov3DetectionOutput PSROIPooling ROIAlign Packing Requantize Cast HardSigmoid SELU HardSwish Noop "
    "PixelShuffle DeepCopy Mish StatisticsPooling Swish Gemm GroupNorm LayerNorm Softplus GRU "
    "MultiHeadAttention GELU Convolution1D Pooling1D ConvolutionDepthWise1D Convolution3D "
    "ConvolutionDepthWise3D Pooling3D MatMul Deconvolution1D DeconvolutionDepthWise1D Deconvolution3D "
    "DeconvolutionDepthWise3D Einsum DeformableConv2D GLU Fold Unfold GridSample CumulativeSum CopyTo Erf "
    "Diag CELU Shrink RMSNorm Spectrogram InverseSpectrogram Flip SDPA RotaryEmbed"
)
LAYER_INDEX = {name: i for i, name in enumerate(_LAYER_ORDER.split(" "))}

__all__ = ["SUFFIX", "emit", "legalize_pipeline", "lower", "precision_pipeline"]


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def precision_pipeline(int8: bool, fp16: bool, quantize_options: Mapping[str, Any] | None = None) -> str:
    """Only the quantize step: ncnn's --fp16 is weight storage, applied by :func:`emit`.

    ``raise-patterns`` runs first so attention, LayerNorm and GELU are single ops
    before Q/DQ pairs split their decomposed forms apart (ncnn has layers for them).
    """
    from kiln.calib.cli import quantize_step

    return f"raise-patterns,{quantize_step(quantize_options)}" if int8 else ""


def lower(graph: Graph, options: Mapping[str, Any] | None = None) -> Lowered:
    """The graph as ncnn layers, Split layers included (no file written)."""
    from kiln.codegen.ncnn.lower import op_tables
    from kiln.ops.decompose import decompose_unhandled

    _, kiln_ops = op_tables()
    decompose_unhandled(graph, lambda n: n.op in kiln_ops)  # a kiln op with no ncnn layer: what it was made of
    lowering = Lowering(graph, int8=bool((options or {}).get("int8")))
    lowered = lowering.run()
    if lowered.int8_layers:
        logger.info("ncnn: %d int8 Convolution/InnerProduct layers", lowered.int8_layers)
    vectorize_excitations(lowered, lowering.nshape)
    insert_splits(lowered)
    lowered.blob_count = count_blobs(lowered.layers)
    return lowered


def io_map(lowered: Lowered) -> dict[str, Any]:
    """The JSON written beside the param: ONNX names, ncnn blob names, ONNX shapes."""
    return {
        "format": "kiln-ncnn-io/1",
        "inputs": [{"name": io.name, "blob": io.blob, "shape": list(io.shape),
                    **({"feed": io.feed} if io.feed != "float32" else {})} for io in lowered.inputs],
        "outputs": [{"name": io.name, "blob": io.blob, "shape": list(io.shape)} for io in lowered.outputs],
    }


def emit(graph: Graph, out_dir: str | Path, stem: str, options: Mapping[str, Any] | None = None) -> list[Path]:
    """Writes ``<stem>.param``, ``.bin`` and ``.ncnn.json`` (and the optional forms) into ``out_dir``.

    Everything is built in memory first, so an unsupported op or a bad shape raises
    before any file is written.
    """
    opts = dict(options or {})
    unknown = sorted(k for k, v in opts.items() if k not in _STANDARD + _OWN and v not in (None, False))
    if unknown:
        raise UsageError(f"target ncnn has no option {_flag(unknown[0])}")
    lowered = lower(graph, opts)
    fp16 = bool(opts.get("fp16"))
    islands: set[int] = set()
    if fp16:
        from kiln.codegen.ncnn.precision import fp32_islands

        islands = fp32_islands(lowered)
    weights = model_bin([b for layer in lowered.layers for b in layer.weights], fp16, islands)
    files: list[tuple[str, bytes]] = [
        (f"{stem}{SUFFIX}", param_text(lowered.layers, lowered.blob_count).encode()),
        (f"{stem}.bin", weights),
        (f"{stem}{MAP_SUFFIX}", (json.dumps(io_map(lowered), indent=1, sort_keys=True) + "\n").encode()),
    ]
    if opts.get("param_bin") or opts.get("c_header"):
        binary = param_binary(lowered.layers, lowered.blob_count, LAYER_INDEX)
        if opts.get("param_bin"):
            files.append((f"{stem}{SUFFIX}.bin", binary))
        if opts.get("c_header"):
            from kiln.codegen.ncnn.headers import id_header, mem_header

            files.append((f"{stem}.id.h", id_header(stem, lowered.layers).encode()))
            files.append((f"{stem}.mem.h", mem_header(stem, binary, weights).encode()))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files:
        path = out / name
        path.write_bytes(data)
        written.append(path)
    return written
