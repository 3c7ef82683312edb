"""The generated TensorRT programs, run by the numpy test double, against onnxruntime on the zoo.

fp32: every output within 1e-4 of onnxruntime on the original model (max
error over max magnitude), or within twice onnxruntime's own disagreement
between its optimized and unoptimized runs where that is larger (ppocr_det).  int8: the double runs the Q/DQ network kiln
emitted; its error against the float model stays within the error of the
``.qdq.onnx`` kiln wrote (run on onnxruntime), and it is closer to that Q/DQ
ONNX than the Q/DQ ONNX is to the float model.  The double computes products
in float64, so a value on a rounding boundary of a quantize layer can land on
the other side than in onnxruntime; that is why int8 is compared through the
Q/DQ ONNX's own error rather than bit for bit.
"""

from __future__ import annotations

import pytest
import trt_double
import zoo
from trt_helpers import compile_zoo, output_names, rel_error

FP32_TOL = 1e-4

FAST_FP32 = ["ppocr_det", "ppocr_rec", "ppocr_cls", "light_squeezenet", "light_shufflenet",
             "light_inception_v1", "light_inception_v2", "light_resnet50",
             "timm_resnet50_ts", "timm_mobilenetv3_large_100_ts", "timm_efficientnet_b0_ts", "timm_mobilenetv2_100_ts",
             "timm_regnetx_016_ts", "timm_vit_small_patch16_224_ts"]
# The dynamo exports of resnet50/mobilenetv3/efficientnet lower to the same layers as their TorchScript
# exports after O2; vit and convnext differ (Gather, Reshape, ReduceMean) and are kept.
SLOW_FP32 = ["light_alexnet", "light_densenet121", "light_vgg19", "timm_convnext_tiny_ts",
             "timm_vit_small_patch16_224_dynamo", "timm_convnext_tiny_dynamo"]
# light_squeezenet: an opset-9 graph, which the quantize pass upgrades to opset 13 first.
FAST_INT8 = ["ppocr_det", "ppocr_rec", "ppocr_cls", "timm_mobilenetv3_large_100_ts", "light_squeezenet"]
SLOW_INT8 = ["timm_resnet50_ts", "timm_efficientnet_b0_ts", "timm_mobilenetv2_100_ts", "timm_regnetx_016_ts",
             "timm_vit_small_patch16_224_ts", "timm_convnext_tiny_ts"]


def _params(fast: list[str], slow: list[str]) -> list[object]:
    return [*fast, *(pytest.param(n, marks=pytest.mark.slow) for n in slow)]


@pytest.mark.parametrize("name", _params(FAST_FP32, SLOW_FP32))
def test_fp32_program_matches_onnxruntime(name: str, tmp_path) -> None:
    program, model, feed = compile_zoo(name, tmp_path)
    got = trt_double.run_program(program, feed)
    refs = zoo.run_onnxruntime(model, feed)
    plain = zoo.run_onnxruntime(model, feed, optimize=False)
    for out, ref, ref0 in zip(output_names(model), refs, plain):
        # onnxruntime disagrees with itself (graph optimizations on/off) by up to 2e-4 on ppocr_det,
        # whose sigmoid output sits on large logits; the tolerance is never below that disagreement.
        tol = max(FP32_TOL, 2 * rel_error(ref0, ref))
        err = rel_error(got[out], ref)
        assert err <= tol, f"{name} {out}: relative error {err:.2e} (tolerance {tol:.2e})"


@pytest.mark.parametrize("name", _params(FAST_INT8, SLOW_INT8))
def test_int8_program_within_qdq_onnx_error(name: str, tmp_path) -> None:
    program, model, feed = compile_zoo(name, tmp_path, int8=True)
    text = program.read_text()
    assert "add_quantize(" in text and "add_dequantize(" in text
    qdq = program.with_name(program.name.replace(".trt.py", ".qdq.onnx"))
    got = trt_double.run_program(program, feed)
    refs = zoo.run_onnxruntime(model, feed)
    qdq_outs = zoo.run_onnxruntime(qdq, feed, optimize=False)
    for out, ref, q in zip(output_names(model), refs, qdq_outs):
        own = rel_error(q, ref)
        err = rel_error(got[out], ref)
        assert err <= 1.25 * own + 1e-3, f"{name} {out}: error {err:.2e}, the Q/DQ ONNX's {own:.2e}"
        assert rel_error(got[out], q) <= max(own, 1e-3), f"{name} {out}: farther from the Q/DQ ONNX than it is from float"


@pytest.mark.parametrize("name", ["ppocr_cls", pytest.param("timm_vit_small_patch16_224_ts", marks=pytest.mark.slow)])
def test_fp16_program_within_fp16_onnx_error(name: str, tmp_path) -> None:
    """--fp16: the program's tensors are float16 (strongly typed); its error is that of kiln's fp16 ONNX."""
    program, model, feed = compile_zoo(name, tmp_path, fp16=True)
    assert "trt.float16" in program.read_text()
    onnx16 = program.with_name(program.name.replace(".trt.py", ".qdq.onnx"))
    got = trt_double.run_program(program, feed)
    for out, ref, h in zip(output_names(model), zoo.run_onnxruntime(model, feed), zoo.run_onnxruntime(onnx16, feed)):
        own = rel_error(h, ref)
        assert rel_error(got[out], ref) <= 3 * own + 2e-3, f"{name} {out}: fp16 ONNX error {own:.2e}"
