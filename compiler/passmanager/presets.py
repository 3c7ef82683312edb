"""Optimization presets ``O0``..``O3`` and the target fusion bundle: named bundles over built-in pass names.

A preset is only a pipeline string; it registers as a bundle, so it can
appear inside other pipelines (``O2,fuse-conv-bn``) and is parsed when used.
A preset naming a pass that is not (yet) registered fails with a clear error
when it is run, and the other presets are unaffected.

Later issues add to ``O2`` (fusion, layout) by editing :data:`PRESETS`;
``O3`` builds on ``O2``.  ``O2`` is the ONNX preset: a pass is in it when it is
exact (up to the rounding of folded constants), never leaves more nodes, and
onnxruntime runs its result at least as fast.  Target-only fusions are in the
``target-fusions`` bundle, for the NCNN/TFLite/TensorRT legalization pipelines.

Per pass, and the measurements behind the decision (onnxruntime 1.32 CPU, one
intra-op thread, ``ORT_ENABLE_ALL``, min of 40-80 interleaved runs; B/A is the
latency with the pass over without it):

- ``fuse-bn``, ``fuse-bias``, ``fuse-pad``: in ``O2`` (exact folds into weights).
- ``raise-patterns{onnx-only=true}``: in ``O2``, placed before ``fuse-bias`` (which
  would otherwise fold GELU's 1/2 into the next MatMul or distribute it).  It raises
  LayerNorm (opset 17), RMSNorm (23), GELU (20), HardSwish (14), Swish (24),
  Softmax, attention (23) and 2-D MatMul + Add / Transpose to the ONNX op, only
  where the model's opset has it: a kiln op there would be a local function that
  onnxruntime inlines back.  Measured against the previous ``O2`` on zoo models
  upgraded to those opsets with ``onnx.version_converter``: ppocr_det@14 (HardSwish)
  236 -> 164 nodes, B/A 0.892; ppocr_rec@17 (LayerNorm, HardSwish, Softmax) 319 ->
  193, 0.857; convnext_tiny ts@20 (LayerNorm, Gelu) 238 -> 184, 0.968; vit_small
  dynamo@23 (LayerNorm, Gelu, Attention) 380 -> 140, 0.969; vit_small ts@20 320 ->
  284, 0.987.  On the zoo's own opsets (9-18) the one raise left is PaddlePaddle's
  ``x·relu6(x+3)/6`` below opset 14, spelled ``x·HardSigmoid(x)`` (2 nodes for 4):
  ppocr_det 236 -> 188 nodes, B/A 0.904; ppocr_rec 313 -> 253, 0.852; ppocr_cls
  179 -> 143, 0.732.
- ``fold-elementwise``, ``merge-slices``, ``fuse-concat-split``: in ``O2``: exact data
  movement or constant folding, each rewrite removes nodes, and what is left is the
  same kernels on the same data in fewer launches.  On the zoo: vit_small dynamo 380
  -> 356 nodes (its three Slices per block become one Split), B/A 1.000; ppocr_rec
  313 -> 306, 0.984; ppocr_det 236 -> 235, 1.000.
- ``fuse-sibling-conv``: not in ``O2``.  The wide Conv plus Split was slower on
  onnxruntime: light_inception_v1 138 -> 115 nodes, B/A 1.009; light_inception_v2
  154 -> 133, 1.018; light_resnet50 1.019; timm_resnet50 ts/dynamo 1.018 (one merge
  of two 1x1 Convs, the Split's copy of the wide output costing more than the GEMM
  saves).  With ``min-siblings=3``: inception_v1 1.007, inception_v2 1.011.
- ``fuse-sibling-matmul``: not in ``O2``.  Q/K/V projections with biases, 4 layers:
  [1,128,384] 32 -> 20 nodes, B/A 1.029; [1,197,768] 1.015; [4,128,768] 1.011.
- ``raise-channel-shuffle``: not in ``O2``: it always makes ``kiln.ChannelShuffle``,
  a function of the same three nodes on onnxruntime.
- ``fuse-act``: not in ``O2`` (onnxruntime fuses activations itself).
- ``fuse-convtranspose-act`` and ``fuse-add-act``: in no preset and not in ``target-fusions``;
  each runs in the one target pipeline whose layer carries the activation (NCNN's
  Deconvolution; TFLite's ADD, for Relu/Relu6/ReluN1To1, after its layout pass).
  onnxruntime has no fused kernel for either (a kiln op there is a local function it
  inlines back), nor do TensorRT's layers; the other targets lower a kiln op they have
  no layer for as its decomposition (``kiln.ops.decompose``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.passmanager.registry import PassRegistry

PRESETS: dict[str, tuple[str, str]] = {
    "O0": ("", "No optimization."),
    "O1": ("remove-noops,fold-shapes,fold,dce", "One round of cleanup and constant folding."),
    "O2": (
        (
            "repeat{max=4}(remove-noops,fold-shapes,fold,fold-if,raise-patterns{onnx-only=true},fuse-bn,fuse-bias,"
            "fuse-pad,fold-elementwise,merge-slices,fuse-concat-split,cse,dce)"
        ),
        (
            "Cleanup, folding, decomposed ops raised to ONNX ops, exact layer fusions (BatchNorm, bias, Pad), "
            "Concat/Split/Slice simplification and common subexpressions to a fixed point."
        ),
    ),
    "O3": (
        "O2,fuse-global-pool,target-fusions",
        (
            "O2, then global pool + Flatten as one Reduce and the target fusions (activations into Conv/Gemm, "
            "kiln ops for GELU/SiLU/attention, sibling Conv/MatMul merging): kiln ops the ONNX target writes "
            "as standard or contrib ops where they exist, else as local functions."
        ),
    ),
    "target-fusions": (
        (
            "repeat{max=2}(fuse-act,raise-patterns,raise-channel-shuffle,fuse-sibling-conv,fuse-sibling-matmul,"
            "fuse-concat-split,fuse-bias,dce)"
        ),
        (
            "Fusions for the NCNN/TFLite/TensorRT targets (after O2): activations into Conv/Gemm, kiln ops for "
            "patterns the opset lacks, channel shuffle, sibling Conv/MatMul merging."
        ),
    ),
}
"""Preset or bundle name -> (pipeline string, summary).

``target-fusions`` runs ``fuse-act`` before raising, because ``fuse-act`` knows
the ONNX activations (Sigmoid/HardSigmoid gates, Gelu) but not ``kiln.Swish`` or
``kiln.Gelu``; and it ends with ``fuse-bias``, which folds a constant factor
that raising leaves (``2 · Gelu(x)`` when the 1/2 already went into a weight).
"""


def register_presets(registry: PassRegistry) -> None:
    """Registers every preset as a bundle of ``registry``."""
    for name, (pipeline, summary) in PRESETS.items():
        registry.add_bundle(name, pipeline, summary=summary, provider="kiln.passmanager.presets")


def preset_name(level: int) -> str:
    """``2`` -> ``"O2"``; raises ``ValueError`` for a level with no preset."""
    name = f"O{level}"
    if isinstance(level, bool) or not isinstance(level, int) or name not in PRESETS:
        raise ValueError(f"optimization level must be one of 0, 1, 2, 3, not {level!r}")
    return name
