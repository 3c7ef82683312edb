"""The generated program as source: it type-checks, uses only TensorRT 11 names, and is reproducible.

(a) mypy --strict on the program against ``tensorrt-stubs``;
(b) every attribute the program reads or sets on TensorRT objects is a name in the
    TensorRT 11 bindings (``tensorrt_cu13_bindings``'s ``tensorrt.so``, read as strings
    without loading it) and no name of the removed implicit-quantization API appears;
plus byte-identical artifacts on rerun and the builder configuration through the test double.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import trt_double
import zoo
from kiln import frontend
from kiln.api import optimize
from kiln.codegen import tensorrt as target
from kiln.driver.options import parse_input_shape_ranges, shapes_for_load
from kiln.errors import UsageError
from trt_helpers import compile_zoo, rel_error, zoo_model

REMOVED = ("IInt8Calibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
           "IInt8LegacyCalibrator", "set_dynamic_range", "get_dynamic_range", "dynamic_range", "int8_calibrator",
           "BuilderFlag.INT8", "BuilderFlag.FP16", "CalibrationAlgoType")
# Roots in the program that are not TensorRT objects.
NOT_TRT = {"np", "os", "sys", "argparse", "Path", "parser", "args", "data", "path", "tmp", "timing_cache",
           "weights", "engine", "__doc__", "__file__"}


# ------------------------------------------------------------------------------------------- (a) mypy


@cache
def _stub_dir(root: str) -> Path | None:
    """A sanitized copy of tensorrt-stubs 10.13, or None when they are not installed.

    The published stubs do not parse as they are: parameters named ``in`` (a keyword),
    one parameter without a default after defaulted ones (``add_scale_nd``), and an import
    of ``tensorrt_libs``, which they do not ship.  The copy fixes exactly those three.
    """
    spec = importlib.util.find_spec("tensorrt_bindings")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    found = [Path(f) for f in folders if (Path(f) / "tensorrt.pyi").is_file()]
    trt_spec = importlib.util.find_spec("tensorrt")
    trt_dirs = [Path(f) for f in (trt_spec.submodule_search_locations or [])] if trt_spec is not None else []
    trt_found = [d for d in trt_dirs if (d / "__init__.pyi").is_file()]
    if not found or not trt_found:
        return None
    out = Path(root)
    shutil.copytree(found[0], out / "tensorrt_bindings", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copytree(trt_found[0], out / "tensorrt", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    stub = out / "tensorrt_bindings" / "tensorrt.pyi"
    text = re.sub(r"([(,] *)in: ", r"\1in_: ", stub.read_text())
    text = text.replace("channel_axis: int) -> IScaleLayer", "channel_axis: int = ...) -> IScaleLayer")
    stub.write_text(text)
    for init in (out / "tensorrt" / "__init__.pyi", out / "tensorrt_bindings" / "__init__.pyi"):
        if init.exists():
            init.write_text(init.read_text().replace("import tensorrt_libs as tensorrt_libs\n", ""))
    (out / "mypy.ini").write_text(
        "[mypy]\nstrict = True\n"
        "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]\nignore_errors = True\n"
        "[mypy-tensorrt_libs]\nignore_missing_imports = True\n"
    )
    return out


@pytest.mark.parametrize("name,int8", [("ppocr_rec", False), ("ppocr_cls", True)])
def test_program_type_checks_against_tensorrt_stubs(name: str, int8: bool, tmp_path, tmp_path_factory) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    stubs = _stub_dir(str(tmp_path_factory.mktemp("trtstubs")))
    if stubs is None:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    program, _, _ = compile_zoo(name, tmp_path, int8=int8)
    env = dict(os.environ, MYPYPATH=str(stubs))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(stubs / "mypy.ini"), "--no-incremental",
         "--cache-dir", os.devnull, program.name],
        cwd=program.parent, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_sees_a_wrong_attribute(tmp_path, tmp_path_factory) -> None:
    """The check can fail: a misspelt layer attribute is an error against the stubs."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    stubs = _stub_dir(str(tmp_path_factory.mktemp("trtstubs")))
    if stubs is None:
        pytest.skip("tensorrt-stubs is not installed")
    bad = tmp_path / "bad.py"
    bad.write_text("import tensorrt as trt\n\n\ndef f(layer: trt.IConvolutionLayer) -> None:\n"
                   "    layer.strides_nd = trt.Dims([1, 1])\n")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(stubs / "mypy.ini"),
                           "--no-incremental", "--cache-dir", os.devnull, bad.name],
                          cwd=tmp_path, env=dict(os.environ, MYPYPATH=str(stubs)), capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "strides_nd" in proc.stdout


# ------------------------------------------------------------------------------------------- (b) TensorRT 11 names


@cache
def _trt11_strings() -> tuple[frozenset[str], bytes] | None:
    """The NUL-terminated strings of the TensorRT 11 bindings' ``tensorrt.so`` (found, not imported)."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        so = Path(folder) / "tensorrt.so"
        if so.is_file():
            data = so.read_bytes()
            if b"STRONGLY_TYPED" not in data or b"add_attention" not in data:
                return None  # an older TensorRT: not the bindings this check is about
            strings = frozenset(m.group().decode() for m in re.finditer(rb"[\x20-\x7e]{2,}(?=\x00)", data))
            return strings, data
    return None


def _present(name: str, strings: frozenset[str]) -> bool:
    # The linker merges a string into the tail of a longer one ("RELU" inside "LEAKY_RELU").
    return name in strings or any(s.endswith(name) for s in strings)


def trt_names(source: str) -> set[str]:
    """Attribute names the program uses on TensorRT modules, objects and enums."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Call):
                root = root.func
                while isinstance(root, ast.Attribute):
                    root = root.value
            if isinstance(root, ast.Name) and root.id not in NOT_TRT:
                names.add(node.attr)
    return names


def _programs(tmp_path: Path) -> list[str]:
    texts = []
    for name, int8 in [("ppocr_rec", False), ("ppocr_det", True), ("light_inception_v1", False),
                       ("light_shufflenet", False)]:
        program, _, _ = compile_zoo(name, tmp_path / f"{name}{int8}", int8=int8)
        texts.append(program.read_text())
    return texts


def test_program_uses_only_tensorrt11_names(tmp_path) -> None:
    found = _trt11_strings()
    if found is None:
        pytest.skip("the TensorRT 11 bindings are not installed: pip install --no-deps tensorrt-cu13-bindings "
                    "(their tensorrt.so is read as bytes, never imported)")
    strings, data = found
    used: set[str] = set()
    for text in _programs(tmp_path):
        used |= trt_names(text)
        for removed in REMOVED:
            assert removed not in text
    assert {"add_convolution_nd", "add_quantize", "add_dequantize", "add_attention", "STRONGLY_TYPED",
            "max_aux_streams", "add_lrn", "add_normalization"} <= used
    missing = sorted(n for n in used if not _present(n, strings))
    assert not missing, f"not in the TensorRT 11 bindings: {missing}"
    for removed in ("IInt8Calibrator", "set_dynamic_range", "int8_calibrator", "IInt8EntropyCalibrator2"):
        assert removed.encode() not in data, f"{removed} is back in TensorRT 11?"
    for fp16 in ("FP16",):  # the weakly typed builder flags are gone: the program must not need them
        assert not _present(fp16, strings)


def test_codegen_source_has_no_removed_api() -> None:
    folder = Path(target.__file__).parent
    for path in sorted(folder.glob("*.py")):
        text = path.read_text()
        for removed in REMOVED:
            assert removed not in text, f"{path.name} mentions {removed}"


def test_name_check_can_fail() -> None:
    found = _trt11_strings()
    if found is None:
        pytest.skip("the TensorRT 11 bindings are not installed")
    strings, _ = found
    names = trt_names("import tensorrt as trt\nconfig.set_flag(trt.BuilderFlag.FP16)\nl.padding_mode = 1\n")
    assert names == {"set_flag", "BuilderFlag", "FP16", "padding_mode"}
    assert not _present("FP16", strings) and _present("padding_mode", strings)


# ------------------------------------------------------------------------------------------- reproducibility


def test_rerun_is_byte_identical(tmp_path) -> None:
    first = compile_zoo("ppocr_cls", tmp_path / "a", int8=True)[0].parent
    second = compile_zoo("ppocr_cls", tmp_path / "b", int8=True)[0].parent
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"ch_ppocr_mobile_v2.0_cls_infer.trt.py", "ch_ppocr_mobile_v2.0_cls_infer.weights.npz",
            "ch_ppocr_mobile_v2.0_cls_infer.qdq.onnx"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert str(tmp_path) not in (first / "ch_ppocr_mobile_v2.0_cls_infer.trt.py").read_text()


def test_weights_load_without_pickle(tmp_path) -> None:
    program, _, _ = compile_zoo("ppocr_cls", tmp_path)
    weights = program.with_name(program.name.replace(".trt.py", ".weights.npz"))
    with np.load(weights, allow_pickle=False) as data:
        assert data.files and all(data[k].dtype != object for k in data.files)


# ------------------------------------------------------------------------------------------- builder configuration


def _load_graph(name: str, spec: str | None):
    path = zoo_model(name)
    ranges = parse_input_shape_ranges([spec]) if spec else {}
    graph = frontend.load(str(path), input_shapes=shapes_for_load(ranges)) if ranges else frontend.load(str(path))
    optimize(graph, pipeline=f"O2,{target.legalize_pipeline({})}")
    return path, graph, ranges


def test_configuration_and_build_through_the_double(tmp_path) -> None:
    _, graph, ranges = _load_graph("light_inception_v1", None)
    opts = {"fp16": False, "int8": False, "input_shapes": ranges, "workspace": 1 << 30,
            "builder_optimization_level": 5, "timing_cache": str(tmp_path / "user.cache")}
    files = target.emit(graph, tmp_path, "m", opts)
    assert [f.name for f in files[:3]] == ["m.trt.py", "m.weights.npz", "m.qdq.onnx"]
    module = trt_double.load_program(files[0])
    assert module.WORKSPACE == 1 << 30 and module.OPTIMIZATION_LEVEL == 5
    assert module.AUX_STREAMS is not None and module.AUX_STREAMS >= 1  # inception's parallel branches
    assert module.PROFILES == {}
    engine = tmp_path / "m.engine"
    assert module.main(["--engine", str(engine), "--timing-cache", str(tmp_path / "m.timing.cache")]) == 0
    builder = trt_double.Builder.last
    assert builder is not None and builder.config is not None and builder.network is not None
    assert builder.network.flags == 1 << int(trt_double.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert builder.config.pools == {trt_double.MemoryPoolType.WORKSPACE: 1 << 30}
    assert builder.config.builder_optimization_level == 5
    assert builder.config.max_aux_streams == module.AUX_STREAMS
    assert builder.config.timing_cache is not None
    assert engine.read_bytes().startswith(b"kiln trt_double plan:")
    assert (tmp_path / "m.timing.cache").is_file()


@pytest.mark.parametrize("name,spec,profile,dims,shapes", [
    ("ppocr_det", "x:1,3,160..320..640,160..320..640", ([1, 3, 160, 160], [1, 3, 320, 320], [1, 3, 640, 640]),
     [1, 3, -1, -1], [(1, 3, 160, 224), (1, 3, 256, 192)]),
    # Batch and width dynamic: Shape -> Reshape and Split of dynamic tensors (shape tensors at run time).
    ("ppocr_rec", "x:1..4,3,48,160..320..960", ([1, 3, 48, 160], [4, 3, 48, 320], [4, 3, 48, 960]),
     [-1, 3, 48, -1], [(2, 3, 48, 200), (1, 3, 48, 320)]),
])
def test_dynamic_input_gets_a_profile_and_runs_at_two_sizes(name, spec, profile, dims, shapes, tmp_path) -> None:
    path, graph, ranges = _load_graph(name, spec)
    files = target.emit(graph, tmp_path, "m", {"fp16": False, "int8": False, "input_shapes": ranges})
    module = trt_double.load_program(files[0])
    assert module.PROFILES == {"x": profile}
    assert f"add_input('x', trt.float32, trt.Dims({dims}))" in files[0].read_text()
    out = next(iter(trt_double.run_program(files[0], {"x": zoo.text_page(shapes[0])})))
    for shape in shapes:
        feed = {"x": np.concatenate([zoo.text_page((1, *shape[1:]), seed=i) for i in range(shape[0])])}
        got = trt_double.run_program(files[0], feed)
        (ref,) = zoo.run_onnxruntime(path, feed)
        assert rel_error(got[out], ref) <= 1e-4


def test_dynamic_input_without_a_range_is_a_usage_error(tmp_path) -> None:
    _, graph, _ = _load_graph("ppocr_det", None)
    with pytest.raises(UsageError, match=r"--input-shape x:MIN\.\.MAX"):
        target.emit(graph, tmp_path, "det", {"fp16": False, "int8": False, "input_shapes": {}})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("opts,message", [
    ({"nhwc_io": True}, "target tensorrt has no option --nhwc-io"),
    ({"builder_optimization_level": 9}, "--builder-optimization-level 9"),
    ({"workspace": -1}, "--workspace -1"),
])
def test_bad_options(opts, message, tmp_path) -> None:
    _, graph, _ = _load_graph("light_squeezenet", None)
    with pytest.raises(UsageError, match=re.escape(message)):
        target.emit(graph, tmp_path, "m", {"fp16": False, "int8": False, "input_shapes": {}, **opts})


def test_1d_network_is_lifted_to_2d_kernels(tmp_path) -> None:
    """TensorRT's convolution and pooling layers take 2-D or 3-D windows: 1-D ones are emitted over height 1."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layout"))
    from kiln.runtime.onnxruntime import run as ort_run
    from nets import Net

    net = Net((1, 4, 16))
    c = net.node("Relu", [net.node("Conv", ["x", net.w((8, 4, 3)), net.w((8,))], kernel_shape=[3], pads=[1, 1])])
    y = net.node("AveragePool", [net.node("Conv", [c, net.w((8, 1, 3))], kernel_shape=[3], group=8)],
                 kernel_shape=[2], strides=[2])
    model = net.model(y)
    graph = frontend.load(model)
    optimize(graph, pipeline=f"O2,{target.legalize_pipeline({})}")
    program = target.emit(graph, tmp_path, "m", {"fp16": False, "int8": False, "input_shapes": {}})[0]
    text = program.read_text()
    assert "add_convolution_nd" in text and "trt.Dims([1, 3])" in text and "trt.Dims([1, 2])" in text
    got = trt_double.run_program(program, net.feed())
    assert rel_error(got[y], ort_run(model, net.feed())[y]) < 1e-5


def test_kiln_op_without_a_layer_is_emitted_as_its_parts(tmp_path) -> None:
    """A pipeline that ran fuse-add-act (TFLite's) leaves kiln.AddAct, which TensorRT has no layer for: the
    lowering emits its decomposition, an elementwise sum and an activation."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layout"))
    from kiln.runtime.onnxruntime import run as ort_run
    from nets import Net

    net = Net((1, 4, 6, 6))
    c = net.node("Conv", ["x", net.w((4, 4, 3, 3)), net.w((4,))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = net.node("LeakyRelu", [net.node("Add", [c, "x"])], alpha=0.1)
    model = net.model(y)
    graph = frontend.load(model)
    optimize(graph, pipeline=f"O2,{target.legalize_pipeline({})},fuse-add-act")
    assert "kiln.AddAct" in [n.op_id for n in graph]
    program = target.emit(graph, tmp_path, "m", {"fp16": False, "int8": False, "input_shapes": {}})[0]
    text = program.read_text()
    assert "ElementWiseOperation.SUM" in text and "ActivationType.LEAKY_RELU" in text
    got = trt_double.run_program(program, net.feed())
    assert rel_error(got[y], ort_run(model, net.feed())[y]) < 1e-5
