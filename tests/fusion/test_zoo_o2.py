"""Differential test over the zoo: kiln's O2 output matches onnxruntime on the original, with no more nodes than onnxslim.

For every PP-OCR and light-zoo model, the timm TorchScript exports and the zoo's
BERT encoder (both exporters) where they can be had: load -> O2 -> ``kiln.to_onnx`` -> onnxruntime, against
onnxruntime on the original file (graph optimizations off on both sides),
within 1e-4 of the output's magnitude; and the node count of the O2 graph is
at most what ``onnxslim.slim`` leaves.

ppocr_det gets a synthetic page (lines of dark glyph-like strokes on white)
rather than noise: on noise its probability map is ~1e-5 everywhere, and onnxruntime's own
BatchNorm folding moves that by 0.25 % of its tiny maximum, so a relative
check there would measure float32 rounding, not kiln.
"""

from __future__ import annotations

import functools

import kiln
import numpy as np
import onnx
import pytest
import zoo
from rewrite_helpers import run_ort

pytestmark = pytest.mark.slow

MODELS = (zoo.list_models("ppocr") + zoo.list_models("light") + [m for m in zoo.list_models("timm") if m.endswith("_ts")]
          + zoo.list_models("bert"))

NODE_COUNT_GAPS: dict[str, str] = {}
"""Models where kiln O2 may still have more nodes than onnxslim, and why (not a fusion)."""


def _path(name: str) -> str:
    ok, why = zoo.available(name)
    if not ok:
        pytest.skip(why)
    return str(zoo.get_model(name))


def _feed(name: str) -> dict[str, np.ndarray]:
    feed = zoo.example_inputs(name)
    if name == "ppocr_det":
        rng = np.random.default_rng(0)
        page = np.ones((1, 3, 320, 320), np.float32)
        for row in range(40, 300, 40):
            x = 20
            while x < 290:
                width = int(rng.integers(4, 10))
                page[0, :, row:row + 14, x:x + width] = 0.0
                x += width + int(rng.integers(2, 6))
        feed = {next(iter(feed)): (page - 0.5) / 0.5}
    return feed


@functools.cache
def _optimized(name: str) -> kiln.ir.Graph:
    graph = kiln.load(_path(name))
    kiln.optimize(graph, level=2)
    return graph


@pytest.mark.parametrize("name", MODELS)
def test_o2_matches_onnxruntime(name: str) -> None:
    path = _path(name)
    feed = _feed(name)
    expected = run_ort(onnx.load(path), feed)
    actual = run_ort(kiln.to_onnx(_optimized(name)), feed)
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        e64, a64 = e.astype(np.float64), a.astype(np.float64)
        scale = max(float(np.abs(e64).max()), 1e-30)
        assert float(np.abs(e64 - a64).max()) / scale <= 1e-4


@pytest.mark.parametrize(
    "name",
    [pytest.param(m, marks=pytest.mark.xfail(reason=NODE_COUNT_GAPS[m], strict=False)) if m in NODE_COUNT_GAPS else m
     for m in MODELS],
)
def test_o2_has_no_more_nodes_than_onnxslim(name: str) -> None:
    onnxslim = pytest.importorskip("onnxslim")
    slim = len(onnxslim.slim(_path(name)).graph.node)
    assert len(_optimized(name)) <= slim


def test_o2_is_a_fixed_point() -> None:
    graph = kiln.load(_path("ppocr_cls"))
    kiln.optimize(graph, level=2)
    before = kiln.ir.print_ir(graph)
    ctx = kiln.PassContext()
    kiln.optimize(graph, level=2, ctx=ctx)
    assert kiln.ir.print_ir(graph) == before
    assert not any(k.startswith("rules.") for k in ctx.stats)
