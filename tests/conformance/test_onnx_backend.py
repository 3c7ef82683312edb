"""ONNX's own backend node tests, round-tripped through kiln and run on onnxruntime.

Two measurements, both over the cases the installed ``onnx`` package
generates (``collect_testcases``), restricted to those onnxruntime itself
gets right on the original model:

1. load -> optimize(level=2) -> to_onnx -> onnxruntime gives the expected
   outputs in at least 99% of the cases;
2. with every graph input turned into an initializer, O2 must fold the whole
   graph with kiln's own numpy references; the result (constants only) must
   match in at least 95% of the cases.

Each measurement is one test that reports every failing case by name, so a
regression shows which op broke.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import kiln

pytestmark = pytest.mark.slow

RTOL, ATOL = 1e-3, 1e-6


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]


def _cases() -> list[Case]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = collect_testcases()
    cases = []
    for tc in found:
        if not tc.data_sets or tc.kind != "node":
            continue
        inputs, outputs = tc.data_sets[0]
        cases.append(Case(tc.name, tc.model, list(inputs), list(outputs)))
    return cases


def _is_tensor_list(values: list) -> bool:
    return all(isinstance(v, np.ndarray) for v in values)


def _run_ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def _close(got: list, expected: list[np.ndarray]) -> bool:
    if len(got) != len(expected):
        return False
    for g, e in zip(got, expected):
        g = np.asarray(g)
        if g.shape != e.shape:
            return False
        if e.dtype == object or e.dtype.kind in "SU":
            if not np.array_equal(g.astype(str), e.astype(str)):
                return False
        elif e.dtype.kind in "fc":
            if not np.allclose(g.astype(np.float64), e.astype(np.float64), rtol=RTOL, atol=ATOL, equal_nan=True):
                return False
        elif not np.array_equal(g, e):
            return False
    return True


def _feeds(model: onnx.ModelProto, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    init = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in init]
    return dict(zip(names, arrays))


@pytest.fixture(scope="module")
def ort_passing_cases() -> list[Case]:
    """The cases (tensor inputs and outputs only) onnxruntime passes on the original model."""
    passing = []
    for case in _cases():
        if not (_is_tensor_list(case.inputs) and _is_tensor_list(case.outputs)):
            continue
        try:
            got = _run_ort(case.model, _feeds(case.model, case.inputs))
        except Exception:  # noqa: BLE001 - onnxruntime lacks the op or version: not counted
            continue
        if _close(got, case.outputs):
            passing.append(case)
    assert len(passing) > 1000, f"only {len(passing)} cases usable: is onnxruntime installed correctly?"
    return passing


def _through_kiln(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = kiln.load(model)
    kiln.optimize(graph, level=2)
    return kiln.to_onnx(graph)


def test_backend_node_cases_after_O2(ort_passing_cases: list[Case]) -> None:
    failures: list[str] = []
    for case in ort_passing_cases:
        try:
            optimized = _through_kiln(case.model)
            got = _run_ort(optimized, _feeds(optimized, case.inputs))
        except Exception as exc:  # noqa: BLE001 - every failure is counted and named
            failures.append(f"{case.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            continue
        if not _close(got, case.outputs):
            failures.append(f"{case.name}: wrong output")
    rate = 1 - len(failures) / len(ort_passing_cases)
    print(f"\nO2 conformance: {len(ort_passing_cases) - len(failures)}/{len(ort_passing_cases)} = {rate:.2%}")
    for f in failures:
        print("  FAIL", f)
    assert rate >= 0.99, f"{len(failures)} of {len(ort_passing_cases)} cases fail:\n" + "\n".join(failures[:60])


def _inputs_as_initializers(case: Case) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    feeds = _feeds(model, case.inputs)
    graph = model.graph
    kept = [i for i in graph.input if i.name not in feeds]
    for name, array in feeds.items():
        graph.initializer.append(numpy_helper.from_array(array, name))
    del graph.input[:]
    graph.input.extend(kept)
    if model.ir_version < 4:
        model.ir_version = 4
    return model


def test_backend_node_cases_folded_by_kiln(ort_passing_cases: list[Case]) -> None:
    failures: list[str] = []
    not_folded: list[str] = []
    for case in ort_passing_cases:
        model = _inputs_as_initializers(case)
        try:
            graph = kiln.load(model)
            kiln.optimize(graph, level=2)
            remaining = sorted({n.op for n in graph if not n.is_op("Identity")})
            optimized = kiln.to_onnx(graph)
            got = _run_ort(optimized, {})
        except Exception as exc:  # noqa: BLE001 - every failure is counted and named
            failures.append(f"{case.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            continue
        if remaining:
            not_folded.append(f"{case.name}: {','.join(remaining)}")
        if not _close(got, case.outputs):
            failures.append(f"{case.name}: wrong output" + (f" (unfolded: {','.join(remaining)})" if remaining else ""))
    total = len(ort_passing_cases)
    rate = 1 - len(failures) / total
    folded_rate = 1 - len(not_folded) / total
    print(f"\nfolded conformance: {total - len(failures)}/{total} = {rate:.2%} correct; "
          f"fully folded by kiln's references: {total - len(not_folded)}/{total} = {folded_rate:.2%}")
    for f in failures:
        print("  FAIL", f)
    for f in not_folded:
        print("  NOT FOLDED", f)
    assert rate >= 0.95, f"{len(failures)} of {total} cases fail:\n" + "\n".join(failures[:60])
    assert folded_rate >= 0.95, f"{len(not_folded)} of {total} cases not folded:\n" + "\n".join(not_folded[:60])
