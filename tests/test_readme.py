"""The README's examples run as written, and its set-up commands match CI's."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

import kiln

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _block_after(heading: str) -> str:
    section = README[README.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_plugin_pass_example_runs() -> None:
    namespace: dict = {}
    exec(compile(_block_after("## Writing a plugin pass"), "README.md", "exec", dont_inherit=True), namespace)
    nodes = [
        helper.make_node("Identity", ["x"], ["a"], name="keep_input_identity"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Identity", ["b"], ["c"], name="drop_me"),
        helper.make_node("Neg", ["c"], ["y"], name="neg"),
    ]
    vi = helper.make_tensor_value_info
    model = helper.make_model(
        helper.make_graph(nodes, "g", [vi("x", onnx.TensorProto.FLOAT, [2])], [vi("y", onnx.TensorProto.FLOAT, [2])]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    graph = kiln.load(model)
    kiln.optimize(graph, pipeline="drop-identities,dce")
    assert [n.op for n in graph] == ["Relu", "Neg"]
    x = np.array([-1.0, 2.0], np.float32)
    got = ort.InferenceSession(kiln.to_onnx(graph).SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, -np.maximum(x, 0))


def test_ci_runs_the_readme_test_command() -> None:
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    command = re.search(r"TEST_COMMAND='(.*)'", ci).group(1)  # type: ignore[union-attr]
    assert f"    {command}\n" in README


def test_every_flag_the_readme_shows_for_kiln_commands_exists() -> None:
    import subprocess
    import sys

    helps: dict[str, str] = {}
    for line in README.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "kiln" or not line.startswith("    "):
            continue
        command = words[1]
        if command not in helps:
            proc = subprocess.run([sys.executable, "-m", "kiln", command, "--help"], capture_output=True, text=True,
                                  check=False)
            assert proc.returncode == 0, (command, proc.stderr)
            helps[command] = proc.stdout
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line.split("#")[0]):
            assert flag in helps[command], f"README shows `kiln {command} ... {flag}`, which `kiln {command}` lacks"
    assert {"compile", "inspect", "verify"} <= set(helps)
