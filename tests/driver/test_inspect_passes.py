"""``kiln inspect`` and ``kiln passes``."""

from __future__ import annotations

import json

from driver_helpers import INSPECT_STACK, PASSES_STACK, assert_clean_error, kiln_subprocess, requires

INSPECT_KEYS = {"file", "opsets", "inputs", "outputs", "nodes", "constants", "constant_bytes", "ops"}


@requires(*INSPECT_STACK)
def test_inspect_json(kiln_main, tiny):
    run = kiln_main("inspect", tiny, "--json")
    assert run.rc == 0, run.err
    info = json.loads(run.out)
    assert INSPECT_KEYS <= set(info)
    assert info["file"] == str(tiny)
    assert info["opsets"].get("onnx") == 17
    assert [i["name"] for i in info["inputs"]] == ["x"] and [o["name"] for o in info["outputs"]] == ["y"]
    assert info["inputs"][0]["shape"] == ["N", 4]
    assert info["nodes"] == sum(info["ops"].values())
    counts = list(info["ops"].values())
    assert counts == sorted(counts, reverse=True)


@requires(*INSPECT_STACK)
def test_inspect_text_ops_and_ir(kiln_main, tiny):
    run = kiln_main("inspect", tiny, "--ops", "--ir")
    assert run.rc == 0, run.err
    assert "inputs" in run.out and "x: f32[N,4]" in run.out
    assert "ops (" in run.out and "onnx.Relu" in run.out


@requires(*INSPECT_STACK)
def test_inspect_input_shape(kiln_main, tiny):
    run = kiln_main("inspect", tiny, "--json", "--input-shape", "x:2,4")
    assert run.rc == 0, run.err
    assert json.loads(run.out)["inputs"][0]["shape"] == [2, 4]


def test_inspect_missing_file(kiln_main, tmp_path):
    assert_clean_error(kiln_main("inspect", tmp_path / "none.onnx"), "none.onnx", "no such file")


@requires(*PASSES_STACK)
def test_passes_lists_passes_and_bundles():
    run = kiln_subprocess("passes")
    assert run.rc == 0, run.err
    assert "bundles:" in run.out and "O2" in run.out


@requires(*PASSES_STACK)
def test_passes_json(kiln_main):
    run = kiln_main("passes", "--json")
    assert run.rc == 0, run.err
    items = json.loads(run.out)
    names = {i["name"] for i in items}
    assert {"O0", "O1", "O2", "O3"} <= names
    for item in items:
        assert set(item) == {"name", "kind", "summary", "pipeline", "options"}
        for opt in item["options"]:
            assert set(opt) == {"name", "type", "default", "doc"}
