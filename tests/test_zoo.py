"""The model zoo (tests/zoo.py): its models can be had, pass the checker and run on onnxruntime."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import zoo


def _runs(path: Path, feed: dict[str, np.ndarray], optimize: bool = True) -> list[np.ndarray]:
    outputs = zoo.run_onnxruntime(path, feed, optimize=optimize)
    assert outputs, f"{path.name} gave no output"
    for out in outputs:
        if out.dtype.kind == "f":
            assert np.isfinite(out).all(), f"{path.name}: output is not finite"
    return outputs


def test_groups() -> None:
    sizes = {group: len(zoo.list_models(group)) for group in ("ppocr", "light", "timm", "chain", "branchy", "bert")}
    assert sizes == {"ppocr": 3, "light": 9, "timm": 12, "chain": 3, "branchy": 1, "bert": 2}
    assert len(zoo.list_models()) == sum(sizes.values()) == len(set(zoo.list_models()))
    assert "timm_mobilenetv2_100_ts" in zoo.list_models("timm")
    assert "timm_mobilenetv2_100_dynamo" not in zoo.list_models("timm")
    with pytest.raises(KeyError):
        zoo.list_models("nope")
    with pytest.raises(KeyError):
        zoo.get_model("nope")


def test_zoo_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_ZOO_DIR", str(tmp_path))
    assert zoo.zoo_dir() == tmp_path
    monkeypatch.delenv("KILN_ZOO_DIR")
    assert zoo.zoo_dir() == Path(zoo.__file__).resolve().parent.parent / ".zoo"


@pytest.mark.parametrize("name", zoo.list_models("ppocr") + zoo.list_models("light"))
def test_shipped_model_runs(name: str) -> None:
    ok, why = zoo.available(name)
    assert ok, why
    path = zoo.get_model(name)
    assert path.is_file()
    onnx.checker.check_model(str(path))
    feed = zoo.example_inputs(name)
    outputs = _runs(path, feed)
    if name.startswith("light_"):
        assert outputs[0].size == 1000  # ImageNet classes
    if name in zoo.PPOCR:
        assert [a.shape for a in feed.values()] == [zoo.PPOCR[name][1]]


def test_ppocr_shapes() -> None:
    det = _runs(zoo.get_model("ppocr_det"), zoo.example_inputs("ppocr_det"))[0]
    assert det.shape == (1, 1, 320, 320)  # a text-probability map the size of the image
    cls = _runs(zoo.get_model("ppocr_cls"), zoo.example_inputs("ppocr_cls"))[0]
    assert cls.shape == (1, 2)  # 0 or 180 degrees


GENERATED = {"chain_1k": 999, "chain_10k": 9999, "chain_100k": 99999, "branchy": 101}


@pytest.mark.parametrize("name", ["chain_1k", "chain_10k", "branchy",
                                  pytest.param("chain_100k", marks=pytest.mark.slow)])
def test_generated_model_runs(name: str) -> None:
    path = zoo.get_model(name)  # chain_100k: ~35 s the first time (onnxruntime loads 100k nodes slowly)
    model = onnx.load(str(path))
    assert len(model.graph.node) == GENERATED[name]
    info = zoo.model_info(name)
    assert info["nodes"] == GENERATED[name]
    assert info["checker"] == "full_check"
    if name.startswith("chain"):
        ops = [n.op_type for n in model.graph.node]
        assert ops == ["Conv", "Add", "Relu"] * (GENERATED[name] // 3)
        assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 8, 16, 16]
    else:
        assert sum(n.op_type == "Concat" for n in model.graph.node) == 6
    shape = [1, 10] if name == "branchy" else [1, 8, 16, 16]
    assert info["outputs"] == [shape]  # the build's own onnxruntime run
    if name != "chain_100k":  # whose onnxruntime session alone takes ~30 s
        assert list(_runs(path, zoo.example_inputs(name))[0].shape) == shape


def test_chain_is_deterministic() -> None:
    first = zoo._generate("chain_1k").SerializeToString()
    assert first == zoo._generate("chain_1k").SerializeToString()
    assert first == zoo.get_model("chain_1k").read_bytes()


def test_chain_100k_generates_in_seconds() -> None:
    start = time.perf_counter()
    model = zoo._generate("chain_100k")
    assert time.perf_counter() - start < 20
    assert len(model.graph.node) == 99999


def test_failure_is_cached_and_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_ZOO_DIR", str(tmp_path))
    real = zoo._generate

    def broken(name: str) -> onnx.ModelProto:
        if name == "chain_1k":
            raise ValueError("boom")
        return real(name)

    monkeypatch.setattr(zoo, "_generate", broken)
    ok, why = zoo.available("chain_1k")
    assert not ok and "boom" in why
    assert json.loads((tmp_path / "chain_1k.failed.json").read_text())["reason"] == why
    assert not (tmp_path / "chain_1k.onnx").exists() and not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(zoo.ZooUnavailable, match="boom"):
        zoo.get_model("chain_1k")
    assert zoo.available("branchy") == (True, "")  # the others are unaffected
    monkeypatch.setattr(zoo, "_generate", real)
    assert zoo.available("chain_1k", build=False)[0] is False  # still cached...
    monkeypatch.setattr(zoo, "ZOO_VERSION", zoo.ZOO_VERSION + 1)  # ...until the recipe changes
    assert zoo.available("chain_1k") == (True, "")
    assert not (tmp_path / "chain_1k.failed.json").exists()


def test_interrupted_build_leaves_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_ZOO_DIR", str(tmp_path))

    def crash(*args: object) -> dict[str, object]:
        raise KeyboardInterrupt  # not an Exception: like a kill, nothing is recorded

    monkeypatch.setattr(zoo, "_verify", crash)
    with pytest.raises(KeyboardInterrupt):
        zoo.get_model("branchy")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".branchy.lock"]
    monkeypatch.undo()
    monkeypatch.setenv("KILN_ZOO_DIR", str(tmp_path))
    assert zoo.get_model("branchy").is_file()


def test_missing_torch_is_reported_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_ZOO_DIR", str(tmp_path))
    monkeypatch.setattr(zoo, "_has_module", lambda module: module != "torch")
    ok, why = zoo.available("timm_resnet50_ts")
    assert not ok and "torch" in why
    with pytest.raises(zoo.ZooUnavailable, match="torch"):
        zoo.get_model("timm_resnet50_ts")
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.list_models("timm"))
def test_timm_model_runs(name: str) -> None:
    missing = zoo._missing_deps(name)
    if missing:
        pytest.skip(missing)
    ok, why = zoo.available(name)  # exports on first use: 4-12 s each here
    if not ok and "import failed" in why:
        pytest.skip(f"torch/timm not importable: {why}")
    assert ok, why
    info = zoo.model_info(name)
    assert info["max_abs_diff_vs_torch"] < 1e-3
    assert info["opsets"] == {"ai.onnx": 17 if name.endswith("_ts") else zoo.DYNAMO_OPSET}
    out = _runs(zoo.get_model(name), zoo.example_inputs(name))[0]
    assert out.shape == (1, 1000)
