"""The zoo on LiteRT: ``kiln compile -t tflite`` of every PP-OCR, light and cached timm model runs on LiteRT
and matches onnxruntime on the original.

- float32 (XNNPACK, the bridge's default): max error <= 1e-3 of the output's magnitude;
- float16 weights, run on LiteRT's builtin CPU kernels (no delegate): every file runs, and matches
  onnxruntime on the same graph with its constants rounded to float16 within 1e-3 (so the lowering
  adds nothing to the rounding of the weights, which alone moves PP-OCR det's probability map by
  ~0.19 at its steepest pixel).
"""

from __future__ import annotations

import functools
from pathlib import Path

import kiln
import numpy as np
import pytest
import zoo
from kiln.runtime.onnxruntime import run as run_ort
from nets import rel_err

pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is not installed")

from kiln.runtime import litert

pytestmark = pytest.mark.slow

MODELS = zoo.list_models("ppocr") + zoo.list_models("light") + zoo.list_models("timm")
# The big-Gemm classics weigh 0.2-0.5 GB each; fp32 covers them, fp16 need not load them twice.
ATTENTION = ("ppocr_rec", "timm_vit_small_patch16_224_ts", "timm_vit_small_patch16_224_dynamo")
"""Models whose attention heads are split and merged by Transposes (kiln.Attention's decomposition)."""
FP16_MODELS = [m for m in MODELS if m not in ("light_vgg19", "light_zfnet512", "light_alexnet")]


def _model(name: str) -> tuple[str, dict[str, np.ndarray]]:
    ok, why = zoo.available(name)  # builds a timm export that is not cached yet
    if not ok:  # torch or timm missing, or the export failed: the reason says which
        pytest.skip(why)
    return str(zoo.get_model(name)), zoo.example_inputs(name)


@functools.cache
def _expected(name: str) -> dict[str, np.ndarray]:
    path, feed = _model(name)
    return run_ort(path, feed)


def _compile(name: str, out: Path, **kwargs: object) -> tuple[Path, kiln.ir.Graph]:
    path, feed = _model(name)
    result = kiln.compile(path, "tflite", str(out), input_shapes={k: v.shape for k, v in feed.items()},
                          **kwargs)  # type: ignore[arg-type]
    assert result.graph is not None
    return result.artifacts[0], result.graph


@pytest.mark.parametrize("name", MODELS)
def test_float32_matches_onnxruntime(name: str, tmp_path: Path) -> None:
    from kiln.passes.layout.nhwc import interior_transposes

    _, feed = _model(name)
    artifact, graph = _compile(name, tmp_path)
    if name not in ATTENTION:
        assert interior_transposes(graph) == 0
        assert _file_transposes(artifact) <= 1  # the NCHW input's, at the boundary (channel shuffles: GATHER)
    actual = litert.run(artifact, feed)
    for key, e in _expected(name).items():
        assert rel_err(e, actual[key]) <= 1e-3, key


def _file_transposes(path: Path) -> int:
    from ai_edge_litert.interpreter import Interpreter

    ops = Interpreter(model_path=str(path))._get_ops_details()
    return sum(1 for op in ops if op.get("op_name") == "TRANSPOSE")


def _run_builtin_kernels(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LiteRT's own CPU kernels, no XNNPACK (the float16 files must run there too)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner = interpreter.get_signature_runner()
    return {k: np.asarray(v) for k, v in runner(**feed).items()}


@pytest.mark.parametrize("name", FP16_MODELS)
def test_float16_weights_run_on_cpu_kernels(name: str, tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from kiln.ir.tensor import Tensor

    _, feed = _model(name)
    artifact, graph = _compile(name, tmp_path, fp16=True)
    actual = _run_builtin_kernels(artifact, feed)
    stored_half = {t["name"][: -len("_fp16")] for t in Interpreter(model_path=str(artifact)).get_tensor_details()
                   if t["dtype"] == np.float16 and t["name"].endswith("_fp16")}
    assert stored_half  # float16 weights, the few that float16 would spoil kept in float32
    for value in graph.constants.values():  # the reference: the same graph, those weights rounded
        data = value.numpy()
        if value.name in stored_half:
            value.const = Tensor.from_numpy(data.astype(np.float16).astype(np.float32))
    rounded = run_ort(kiln.to_onnx(graph), feed)
    for key, e in rounded.items():
        assert rel_err(e, actual[key]) <= 1e-3, key
    for key, e in _expected(name).items():  # and against the float model: the 1e-2
        assert rel_err(e, actual[key]) <= 1e-2, key


def _sqnr(reference: np.ndarray, actual: np.ndarray) -> float:
    r, a = reference.astype(np.float64), actual.astype(np.float64)
    return float(10 * np.log10((r**2).sum() / max(((r - a) ** 2).sum(), 1e-30)))


INT8_MODELS = {"timm_mobilenetv2_100_ts": 20.0, "timm_resnet50_ts": 20.0, "ppocr_cls": None, "light_squeezenet": None}
"""Model -> the SQNR against the float original it must reach (None: the quantization itself loses it;
on every model the TFLite file must match the Q/DQ graph it was lowered from)."""


@pytest.mark.parametrize("name", sorted(INT8_MODELS))
def test_int8_matches_its_qdq_graph(name: str, tmp_path: Path) -> None:
    from kiln.calib import CalibrationConfig

    _, feed = _model(name)
    key = next(iter(feed))
    data = {key: np.concatenate([zoo.example_inputs(name, seed=s)[key] for s in range(1, 9)])}
    artifact, graph = _compile(name, tmp_path, int8=True, calibration=CalibrationConfig(data=data, batch_size=1))
    actual = litert.run(artifact, feed)
    qdq = run_ort(kiln.to_onnx(graph), feed)
    for out, e in _expected(name).items():
        assert _sqnr(qdq[out], actual[out]) >= 25.0, out
        floor = INT8_MODELS[name]
        if floor is not None:
            assert _sqnr(e, actual[out]) >= floor, out
