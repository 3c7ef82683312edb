"""Zoo models on ncnn's runtime against onnxruntime on the original model (fp32, fp16 storage, int8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zoo
from kiln.driver.compile import compile as kiln_compile
from kiln.quant import sqnr_db
from kiln.runtime import ncnn as ncnn_runtime

pytest.importorskip("ncnn")

# The light models run with random weights (test_light_random_weights); light_vgg19 and
# light_zfnet512 (alexnet's layers, 30 s each to fold their weights) only in tests/ncnn/measure.py.
FAST = ["ppocr_cls", "timm_mobilenetv2_100_ts"]
SLOW = ["ppocr_det", "ppocr_rec", "timm_resnet50_ts", "timm_mobilenetv3_large_100_ts",
        "timm_efficientnet_b0_ts", "timm_convnext_tiny_ts", "timm_vit_small_patch16_224_ts", "timm_regnetx_016_ts",
        "timm_convnext_tiny_dynamo", "timm_vit_small_patch16_224_dynamo"]
FP16 = ["ppocr_cls", "ppocr_det", "ppocr_rec", "timm_mobilenetv3_large_100_ts", "timm_convnext_tiny_ts",
        "timm_vit_small_patch16_224_ts"]


def _model(name: str) -> Path:
    ok, why = zoo.available(name, build=False)
    if not ok:
        pytest.skip(why)
    return zoo.get_model(name)


def _shapes(name: str) -> dict | None:
    return {"x": zoo.PPOCR[name][1]} if name in zoo.PPOCR else None


def max_rel_error(name: str, tmp_path: Path, fp16: bool = False) -> float:
    model = _model(name)
    result = kiln_compile(model, "ncnn", tmp_path, input_shapes=_shapes(name), fp16=fp16)
    feed = zoo.example_inputs(name)
    ref = zoo.run_onnxruntime(model, feed)
    got = list(ncnn_runtime.run(result.artifacts[0], feed).values())
    assert len(got) == len(ref)
    return max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(ref, got))



@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_fp32(tmp_path, name):
    assert max_rel_error(name, tmp_path) <= 1e-3


@pytest.mark.parametrize("name", ["ppocr_cls"] + [pytest.param(n, marks=pytest.mark.slow) for n in FP16[1:]])
def test_fp16_storage(tmp_path, name):
    assert max_rel_error(name, tmp_path, fp16=True) <= 1e-2


def _line_images(folder: Path, seed: int, count: int) -> np.ndarray:
    from kiln.calib.images import ImageOptions, load_image
    from ocr_images import write_images

    options = ImageOptions(size=(48, 192), mode="height", mean=(0.5,), std=(0.5,), channels="bgr")
    write_images(folder, "line", count, seed=seed)
    return np.stack([load_image(p, options, (None, 3, 48, 192)) for p in sorted(folder.glob("*.png"))])


def test_int8_ppocr_cls(tmp_path):
    pytest.importorskip("PIL")
    from kiln.calib import CalibrationConfig

    model = _model("ppocr_cls")
    calib = _line_images(tmp_path / "calib", 1, 16).astype(np.float32)
    test = _line_images(tmp_path / "test", 2, 6).astype(np.float32)
    result = kiln_compile(model, "ncnn", tmp_path / "out", input_shapes=_shapes("ppocr_cls"), int8=True,
                          calibration=CalibrationConfig(data={"x": calib}, progress=False))
    param = result.artifacts[0]
    layers = [line.split() for line in param.read_text().splitlines()[2:]]
    int8 = [f for f in layers if f[0] in ("Convolution", "ConvolutionDepthWise", "InnerProduct")
            and any(p.startswith("8=") for p in f)]
    assert len(int8) >= 40
    # The 9 squeeze-and-excitation blocks' 1x1 convolutions run int8 on vectors, as InnerProduct.
    assert sum(1 for f in int8 if f[0] == "InnerProduct") >= 18
    net = ncnn_runtime.load_net(param)
    ref = np.concatenate([zoo.run_onnxruntime(model, {"x": test[i:i + 1]})[0] for i in range(len(test))])
    got = np.concatenate([ncnn_runtime.run(param, {"x": test[i:i + 1]}, net=net)[ncnn_runtime.load_map(param)
                                                                               ["outputs"][0]["name"]]
                          for i in range(len(test))])
    assert sqnr_db(ref, got) >= 25
    assert (ref.argmax(1) == got.argmax(1)).all()


def randomized_light(name: str, folder: Path) -> Path:
    """The light model with its ConstantOfShape weights replaced by random ones.

    The light graphs fill every weight with one value, so their softmax output is uniform
    and any converter matches it; random weights (He-scaled for kernels, [0.5, 1.5] for
    per-channel vectors, so BatchNorm variances stay positive) make the comparison real,
    and the final softmax is dropped (random logits would saturate it to one-hot).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(_model(name)))
    shapes = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    rng = np.random.default_rng(0)

    def random(dims: tuple[int, ...]) -> np.ndarray:
        if len(dims) >= 2:
            return (rng.standard_normal(dims) * np.sqrt(2.0 / max(1, int(np.prod(dims[1:]))))).astype(np.float32)
        return rng.uniform(0.5, 1.5, dims).astype(np.float32)

    for init in model.graph.initializer:  # alexnet/zfnet/vgg keep (uniform) weights as initializers
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) >= 1:
            init.CopyFrom(numpy_helper.from_array(random(tuple(init.dims)), init.name))
    nodes = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            dims = tuple(int(d) for d in shapes[node.input[0]])
            tensor = numpy_helper.from_array(random(dims), node.output[0] + "_random")
            node = helper.make_node("Constant", [], [node.output[0]], value=tensor)
        nodes.append(node)
    # Random logits saturate the final softmax to one-hot: compare the logits instead.
    outputs = {o.name for o in model.graph.output}
    last = nodes[-1]
    if last.op_type == "Softmax" and last.output[0] in outputs:
        nodes.pop()
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info(last.input[0], onnx.TensorProto.FLOAT, None))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    path = folder / f"{name}_random.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("name", ["light_squeezenet", "light_shufflenet"] + [
    pytest.param(n, marks=pytest.mark.slow) for n in
    ("light_alexnet", "light_densenet121", "light_inception_v1", "light_inception_v2", "light_resnet50")])
def test_light_random_weights(tmp_path, name):
    path = randomized_light(name, tmp_path)
    feed = zoo.example_inputs(name)
    ref = zoo.run_onnxruntime(path, feed)
    assert ref[0].std() > 1e-2 * np.abs(ref[0]).max()  # spread-out logits, not a uniform output
    result = kiln_compile(path, "ncnn", tmp_path / "out")
    got = list(ncnn_runtime.run(result.artifacts[0], feed).values())
    assert max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(ref, got)) <= 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name,floor,int8_layers", [("timm_resnet50_ts", 30.0, 40), ("timm_vit_small_patch16_224_ts", 20.0, 1)])
def test_int8_timm(tmp_path, name, floor, int8_layers):
    # Random weights and inputs: a check that int8 Convolution / InnerProduct carry the calibrated scales,
    # not a figure of merit.  vit's token Gemms stay float (ncnn's int8 InnerProduct over rows is ~4x
    # slower); its patch embedding and head go int8.
    from kiln.calib import CalibrationConfig

    model = _model(name)
    iname = next(iter(zoo.example_inputs(name)))
    calib = np.concatenate([zoo.example_inputs(name, seed=s)[iname] for s in range(1, 5)])
    result = kiln_compile(model, "ncnn", tmp_path, int8=True,
                          calibration=CalibrationConfig(data={iname: calib}, progress=False))
    text = result.artifacts[0].read_text()
    assert text.count(" 8=2") >= int8_layers
    if "vit" in name:  # every block's four token Gemms in ncnn's float Gemm, none in int8 InnerProduct
        types = [line.split()[0] for line in text.splitlines()[2:]]
        assert types.count("Gemm") >= 4 * 12 and types.count("InnerProduct") <= 1
    feed = zoo.example_inputs(name, seed=20)
    ref = zoo.run_onnxruntime(model, feed)[0]
    got = next(iter(ncnn_runtime.run(result.artifacts[0], feed).values()))
    assert sqnr_db(ref, got) >= floor


def test_int8_opset9_light_graph(tmp_path):
    # The light zoo graphs are opset 9: quantization upgrades them to opset 13 (per-channel Q/DQ) and the
    # pre-13 Softmax over axis 1 of a 4-D tensor must reach ncnn without a Shape op.
    from kiln.calib import CalibrationConfig

    name = "light_squeezenet"
    model = _model(name)
    iname = next(iter(zoo.example_inputs(name)))
    calib = np.concatenate([zoo.example_inputs(name, seed=s)[iname] for s in range(1, 4)])
    result = kiln_compile(model, "ncnn", tmp_path, int8=True,
                          calibration=CalibrationConfig(data={iname: calib}, progress=False))
    assert result.artifacts[0].read_text().count(" 8=2") >= 20  # int8 Convolution weights
    feed = zoo.example_inputs(name, seed=20)
    ref = zoo.run_onnxruntime(model, feed)[0]
    got = next(iter(ncnn_runtime.run(result.artifacts[0], feed).values()))
    assert got.size == ref.size and np.allclose(got.reshape(ref.shape), ref, atol=1e-3)


@pytest.mark.parametrize("name", ["bert_tiny_ts", "bert_tiny_dynamo"])
def test_bert_encoder_runs_on_ncnn(name, tmp_path):
    # Token ids reach ncnn's Embed as int32 bits, the int64 attention mask as float values; the additive
    # mask [1, 1, 1, seq] is widened to SDPA's [seq, seq] rows (pnnx writes torch ops ncnn cannot load here).
    model = _model(name)
    result = kiln_compile(model, "ncnn", tmp_path)
    layers = [line.split()[0] for line in result.artifacts[0].read_text().splitlines()[2:]]
    assert layers.count("Embed") == 1 and layers.count("SDPA") == 2 and layers.count("LayerNorm") == 5
    assert "Cast" not in layers
    feed = zoo.example_inputs(name, seed=3)
    feed["attention_mask"][0, -9:] = 0  # padding at the end: the masked keys must not leak into any row
    ref = zoo.run_onnxruntime(model, feed)[0]
    got = ncnn_runtime.run(result.artifacts[0], feed)["last_hidden_state"]
    assert float(np.abs(ref - got).max() / np.abs(ref).max()) <= 1e-4
    unmasked = dict(feed, attention_mask=np.ones_like(feed["attention_mask"]))
    assert np.abs(zoo.run_onnxruntime(model, unmasked)[0] - ref).max() > 1e-2  # the mask matters


def test_ids_must_be_integers(tmp_path):
    from kiln.errors import UsageError

    result = kiln_compile(_model("bert_tiny_ts"), "ncnn", tmp_path)
    feed = zoo.example_inputs("bert_tiny_ts")
    feed["input_ids"] = feed["input_ids"].astype(np.float32)
    with pytest.raises(UsageError, match="input 'input_ids' holds ids: expected integers"):
        ncnn_runtime.run(result.artifacts[0], feed)
