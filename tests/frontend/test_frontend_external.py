"""External data: saving into <stem>.data, lazy loading, offsets past 2 GB, saving over the source."""

from __future__ import annotations

import os

import kiln
import numpy as np
import onnx
import pytest
from frontend_helpers import PPOCR_MODELS, assert_same_outputs, parse, run
from kiln.exporter import writer

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,256] x) => (float[2,64] y) {
  h = MatMul(x, w)
  y = Add(h, b)
}
"""


def _model_with_weights(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    model = parse(MODEL, check=False)
    model.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(rng.standard_normal((256, 64)).astype(np.float32), "w"),
            onnx.numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b"),
        ]
    )
    return model


def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(9).standard_normal((2, 256)).astype(np.float32)}


def test_save_external_and_load_back_lazily(tmp_path) -> None:
    model = _model_with_weights()
    graph = kiln.load(model)
    path = tmp_path / "net.onnx"
    written = kiln.save(graph, path, external_data=True)
    assert written == [path, tmp_path / "net.data"]
    assert sorted(os.listdir(tmp_path)) == ["net.data", "net.onnx"]
    saved = onnx.load(str(path), load_external_data=False)
    w = next(t for t in saved.graph.initializer if t.name == "w")
    entries = {e.key: e.value for e in w.external_data}
    assert w.data_location == onnx.TensorProto.EXTERNAL and entries["location"] == "net.data"
    assert int(entries["offset"]) % 64 == 0
    b = next(t for t in saved.graph.initializer if t.name == "b")
    assert b.data_location == onnx.TensorProto.DEFAULT  # 256 bytes: under the 1024-byte threshold
    back = kiln.load(path)
    w_value = back.constants["w"]
    assert not w_value.const.loaded and w_value.const.external is not None
    assert os.path.basename(w_value.const.external.path) == "net.data"
    np.testing.assert_array_equal(w_value.numpy(), onnx.numpy_helper.to_array(model.graph.initializer[0]))
    assert w_value.const.loaded
    assert_same_outputs(model, kiln.to_onnx(back), _feeds())
    np.testing.assert_allclose(run(str(path), _feeds())["y"], run(model, _feeds())["y"], rtol=1e-6)


def test_size_threshold_keeps_small_tensors_inline(tmp_path) -> None:
    graph = kiln.load(_model_with_weights())
    path = tmp_path / "m.onnx"
    kiln.save(graph, path, external_data=True, size_threshold=4096)
    saved = onnx.load(str(path), load_external_data=False)
    where = {t.name: t.data_location for t in saved.graph.initializer}
    assert where == {"w": onnx.TensorProto.EXTERNAL, "b": onnx.TensorProto.DEFAULT}
    # nothing large enough: no data file at all
    kiln.save(graph, tmp_path / "small.onnx", external_data=True, size_threshold=1 << 20)
    assert not (tmp_path / "small.data").exists()


def test_external_data_is_automatic_past_the_limit(tmp_path, monkeypatch) -> None:
    graph = kiln.load(_model_with_weights())
    kiln.save(graph, tmp_path / "a.onnx")
    assert not (tmp_path / "a.data").exists()
    monkeypatch.setattr(writer, "AUTO_EXTERNAL_BYTES", 1000)
    kiln.save(graph, tmp_path / "b.onnx")
    assert (tmp_path / "b.data").exists()


def test_offsets_past_2gb_are_mapped_lazily(tmp_path) -> None:
    data = tmp_path / "big.data"
    offset = (1 << 31) + 4096
    values = np.arange(16, dtype=np.float32)
    with open(data, "wb") as f:  # a sparse 2 GB+ file: nothing but the tensor is written
        f.seek(offset)
        f.write(values.tobytes())
    model = parse(
        """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[16] x) => (float[16] y) { y = Add(x, w) }
    """,
        check=False,
    )
    w = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[16])
    w.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "big.data"), ("offset", str(offset)), ("length", "64")):
        w.external_data.add(key=key, value=value)
    model.graph.initializer.append(w)
    onnx.save(model, str(tmp_path / "big.onnx"))
    graph = kiln.load(tmp_path / "big.onnx")
    const = graph.constants["w"].const
    assert not const.loaded
    np.testing.assert_array_equal(const.numpy(), values)


def test_save_over_own_external_data(tmp_path) -> None:
    model = _model_with_weights(seed=4)
    path = tmp_path / "m.onnx"
    kiln.save(kiln.load(model), path, external_data=True)
    graph = kiln.load(path)
    assert not graph.constants["w"].const.loaded
    # change the graph so the new data file differs, then save over the file it maps
    graph.constants["b"].const = kiln.ir.Tensor.from_numpy(np.zeros(64, np.float32))
    kiln.save(graph, path, external_data=True, size_threshold=0)
    expected = onnx.numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(graph.constants["w"].numpy(), expected)
    np.testing.assert_array_equal(kiln.load(path).constants["w"].numpy(), expected)


@pytest.mark.skipif(not PPOCR_MODELS, reason="rapidocr_onnxruntime is not installed")
def test_ppocr_through_external_data(tmp_path) -> None:
    source = next(p for p in PPOCR_MODELS if "det" in p)
    path = tmp_path / "det.onnx"
    kiln.save(kiln.load(source), path, external_data=True)
    assert os.path.getsize(path) < os.path.getsize(source) // 4
    graph = kiln.load(path)
    assert sum(not v.const.loaded for v in graph.constants.values()) > 10
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    assert_same_outputs(source, kiln.to_onnx(graph), feeds, atol=1e-4)
