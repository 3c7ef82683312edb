"""``kiln inspect MODEL --fusions``: per rule, times applied, ops made, the result's nodes it made."""

from __future__ import annotations

import json

import pytest
import zoo
from kiln.driver.cli import main
from rewrite_helpers import const_text, model_text, parse_model


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def conv_bn_relu(tmp_path):
    import onnx

    text = model_text(
        "(float[1,3,8,8] x) => (float[1,4,8,8] y)",
        [const_text("w", (4, 3, 3, 3), 1), const_text("b", (4,), 2), const_text("s", (4,), 3, low=0.5),
         const_text("o", (4,), 4), const_text("m", (4,), 5), const_text("v", (4,), 6, low=0.5)],
        "c = Conv<pads=[1,1,1,1]>(x, w, b)\nn = BatchNormalization(c, s, o, m, v)\ny = Relu(n)",
    )
    path = tmp_path / "cbr.onnx"
    onnx.save(parse_model(text), str(path))
    return path


def test_fusions_at_o2_and_with_a_target(conv_bn_relu, capsys) -> None:
    code, out, _ = _run(["inspect", str(conv_bn_relu), "--fusions", "--json"], capsys)
    assert code == 0
    report = json.loads(out)["fusions"]
    assert report["level"] == 2 and report["nodes_before"] == 3 and report["nodes_after"] == 2
    assert report["rules"] == [{"rule": "fuse-bn-into-linear", "applied": 1, "made": {"onnx.Conv": 1},
                                "result": {"onnx.Conv": 1}, "fused_nodes": 2}]  # Conv + BatchNormalization

    code, out, _ = _run(["inspect", str(conv_bn_relu), "--fusions", "-t", "ncnn", "--json"], capsys)
    if code == 2:
        pytest.skip("the ncnn target is not importable here")
    rules = {r["rule"]: r for r in json.loads(out)["fusions"]["rules"]}
    assert rules["fuse-bn-into-linear"]["result"] == {}  # its Conv was absorbed by the activation fusion
    assert rules["fuse-conv-act"]["result"] == {"kiln.ConvAct": 1}
    assert rules["fuse-conv-act"]["fused_nodes"] == 3  # the Conv, its BatchNormalization and the Relu


def test_fusions_text_names_absorbed_rules(capsys) -> None:
    ok, why = zoo.available("bert_tiny_ts")
    if not ok:
        pytest.skip(why)
    code, out, _ = _run(["inspect", str(zoo.get_model("bert_tiny_ts")), "--fusions", "-O", "2"], capsys)
    assert code == 0
    section = out[out.index("fusions at -O2"):]
    lines = {line.split()[0]: line for line in section.splitlines()[2:]}
    assert "onnx.LayerNormalization x5" in lines["layernorm-bias"]  # the last rule that touched them
    assert "[made onnx.LayerNormalization x5]" in lines["raise-layernorm"]


def test_target_without_fusions_is_a_usage_error(conv_bn_relu, capsys) -> None:
    code, _, err = _run(["inspect", str(conv_bn_relu), "-t", "onnx"], capsys)
    assert code == 2 and "--target needs --fusions" in err
    code, _, err = _run(["inspect", str(conv_bn_relu), "--fusions", "-t", "nope"], capsys)
    assert code == 2 and "unknown target 'nope'" in err


def test_fusions_beside_memory(conv_bn_relu, capsys) -> None:
    code, out, _ = _run(["inspect", str(conv_bn_relu), "--fusions", "--memory", "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["fusions"]["nodes_after"] == 2 and info["memory"]["nodes"] == 2
