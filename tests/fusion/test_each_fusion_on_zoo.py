"""Every fusion pass alone (after O1's cleanup) on zoo models: outputs match onnxruntime on the original.

O2/O3 as a whole are checked on every model in tests/fusion/test_zoo_o2.py and
tests/models/test_real_models.py; this runs each pass by itself, so a pass that is only correct
because another ran before it shows here.  Tolerance 1e-4 of the output's magnitude (BatchNorm and
bias folding reassociate float sums).  Outputs are compared with kiln ops exported both ways:
as local functions and inlined.
"""

from __future__ import annotations

import kiln
import numpy as np
import onnx
import pytest
import zoo
from kiln.passmanager import PassContext
from rewrite_helpers import run_ort

pytestmark = pytest.mark.slow

PASSES = (
    "fuse-bn", "fuse-bias", "fuse-pad", "fuse-act", "fuse-gemm", "fold-elementwise", "raise-norm", "raise-gelu",
    "raise-swish", "raise-softmax", "raise-attention", "raise-patterns", "raise-channel-shuffle",
    "fuse-sibling-conv", "fuse-sibling-matmul", "fuse-concat-split", "merge-slices", "fuse-global-pool",
    "fuse-convtranspose-act", "fuse-add-act",
)
MODELS = (
    "ppocr_cls", "ppocr_rec", "light_squeezenet", "light_shufflenet", "timm_mobilenetv3_large_100_ts",
    "bert_tiny_ts", "bert_tiny_dynamo",
)
"""Small models of each family (the large ones take seconds per pass: they run O2/O3 whole elsewhere)."""


def _max_rel(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    assert len(expected) == len(actual)
    worst = 0.0
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        scale = max(float(np.abs(e).max()), 1e-30)
        worst = max(worst, float(np.abs(e.astype(np.float64) - a).max()) / scale)
    return worst


@pytest.mark.parametrize("name", MODELS)
def test_each_fusion_alone(name: str) -> None:
    ok, why = zoo.available(name)
    if not ok:
        pytest.skip(why)
    path = str(zoo.get_model(name))
    feed = zoo.example_inputs(name)
    expected = run_ort(onnx.load(path), feed)
    fired: dict[str, int] = {}
    for pass_name in PASSES:
        graph = kiln.load(path)
        ctx = PassContext()
        kiln.optimize(graph, pipeline=f"O1,{pass_name},dce", ctx=ctx)
        fired[pass_name] = sum(v for k, v in ctx.stats.items() if k.startswith("rules."))
        for form in ("functions", "inline"):
            error = _max_rel(expected, run_ort(kiln.to_onnx(graph, kiln_ops=form), feed))
            assert error <= 1e-4, f"{pass_name} ({form}): max rel error {error:.3g}"
    assert any(fired.values()), fired  # some pass had work on every model


def test_conv_transpose_activations_of_ppocr_det() -> None:
    """PP-OCR det's head upsamples with ConvTranspose + BatchNorm + Relu and ConvTranspose + BatchNorm + Sigmoid:
    after O2 folds the BatchNorms, both activations join their ConvTranspose."""
    path = str(zoo.get_model("ppocr_det"))
    feed = zoo.example_inputs("ppocr_det")
    graph = kiln.load(path, input_shapes={k: v.shape for k, v in feed.items()})
    kiln.optimize(graph, pipeline="O2,fuse-convtranspose-act,dce")
    fused = [n for n in graph if n.op_id == "kiln.ConvTransposeAct"]
    assert sorted(n.attr("activation") for n in fused) == ["Relu", "Sigmoid"]
    assert not any(n.op == "ConvTranspose" for n in graph)
    expected = run_ort(onnx.load(path), feed)
    # a probability map where reassociated float sums alone move pixels by ~1e-4
    assert _max_rel(expected, run_ort(kiln.to_onnx(graph), feed)) <= 3e-4
