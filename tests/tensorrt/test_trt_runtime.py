"""The ``.engine`` bridge: a clear UsageError without TensorRT, and the real thing where it is installed."""

from __future__ import annotations

import pytest
import zoo
from kiln.errors import UsageError
from kiln.runtime import tensorrt as bridge
from trt_helpers import compile_zoo, output_names, rel_error

REASON = bridge.unavailable_reason()


def test_reason_or_none_is_a_line() -> None:
    assert REASON is None or (REASON and "\n" not in REASON)


@pytest.mark.skipif(REASON is None, reason="TensorRT is installed here; the missing-TensorRT error cannot happen")
def test_run_without_tensorrt_is_a_usage_error(tmp_path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(UsageError, match="TensorRT|tensorrt"):
        bridge.run(engine, {})


@pytest.mark.skipif(REASON is None, reason="TensorRT is installed here: the engine is built instead")
def test_compile_without_tensorrt_writes_the_program_and_says_so(tmp_path, caplog) -> None:
    with caplog.at_level("WARNING", logger="kiln.codegen.tensorrt"):
        from kiln.driver.compile import compile

        path = zoo.get_model("ppocr_cls")
        result = compile(str(path), "tensorrt", tmp_path, input_shapes={"x": (1, 3, 48, 192)})
    assert result.artifacts[0].name.endswith(".trt.py")
    notes = [r.getMessage() for r in caplog.records if r.name == "kiln.codegen.tensorrt"]
    assert len(notes) == 1 and "--engine" in notes[0] and "\n" not in notes[0]


@pytest.mark.tensorrt
@pytest.mark.skipif(REASON is not None, reason=f"needs TensorRT and a GPU: {REASON}")
@pytest.mark.parametrize("name,int8", [("ppocr_cls", False), ("timm_resnet50_ts", False), ("ppocr_cls", True)])
def test_real_engine_matches_onnxruntime(name: str, int8: bool, tmp_path) -> None:
    program, model, feed = compile_zoo(name, tmp_path, int8=int8)
    engine = program.with_name(program.name.replace(".trt.py", ".engine"))
    assert engine.is_file() and program.with_name(program.name.replace(".trt.py", ".timing.cache")).is_file()
    got = bridge.run(engine, feed)
    refs = zoo.run_onnxruntime(model, feed)
    qdq = zoo.run_onnxruntime(program.with_name(program.name.replace(".trt.py", ".qdq.onnx")), feed)
    for out, ref, q in zip(output_names(model), refs, qdq):
        tol = 1e-3 if not int8 else 1.5 * rel_error(q, ref) + 1e-2  # TF32 convolutions on a GPU
        assert rel_error(got[out], ref) <= tol
