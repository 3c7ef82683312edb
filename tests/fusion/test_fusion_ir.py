"""IR text tests for the fusion passes: ``cases/*.kir``, IR in -> pipeline -> checked IR out.

Each case file holds the input graph in kiln's text form and, in ``#``
comments, the pipeline (``# PIPELINE: fuse-bn``) and FileCheck directives
(``# CHECK: ...``) that the printed result must satisfy.  Every case is also
run on onnxruntime before and after the pipeline (the outputs must agree),
and its result must print -> parse -> print to the same text.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kiln
import numpy as np
import pytest
from kiln.ir import TensorType, parse_ir, print_ir
from kiln.passmanager import PassManager
from rewrite_helpers import assert_close, run_ort

CASES = sorted((Path(__file__).parent / "cases").glob("*.kir"))


def _pipeline(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("# PIPELINE:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("the case has no '# PIPELINE:' line")


def _feed(graph: kiln.ir.Graph) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for value in graph.inputs:
        t = value.type
        assert isinstance(t, TensorType) and t.shape is not None
        feed[value.name] = rng.standard_normal(t.shape).astype(t.dtype.numpy)
    return feed


def test_cases_exist() -> None:
    assert len(CASES) >= 5


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_case(case: Path) -> None:
    text = case.read_text()
    before = parse_ir(text)
    after = parse_ir(text)
    PassManager(_pipeline(text)).run(after)
    out = print_ir(after)
    assert print_ir(parse_ir(out)) == out
    feed = _feed(before)
    assert_close(run_ort(kiln.to_onnx(before), feed), run_ort(kiln.to_onnx(after), feed))
    exe = shutil.which("filecheck")
    if exe is None:
        pytest.skip("the filecheck package is not installed")
    result = subprocess.run([exe, str(case)], input=out, text=True, capture_output=True, check=False)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n--- output ---\n{out}"
