"""``to-nhwc`` over the zoo's CNNs: onnxruntime on the channels-last graph (``kiln.to_onnx``) matches the
original, and no Transpose is left inside the body (only the input's, at the boundary).

The graph goes through ``O2`` and the target fusions first, as on the TFLite target.
"""

from __future__ import annotations

import kiln
import pytest
import zoo
from kiln.passes.layout.nhwc import interior_transposes
from kiln.runtime.onnxruntime import run
from nets import rel_err

pytestmark = pytest.mark.slow

# The big-Gemm classics (0.2-0.5 GB of weights, minutes of export and onnxruntime) go through the same
# pass in tests/tflite/test_zoo_tflite.py, which checks their Transposes and their LiteRT output.
HEAVY = ("light_vgg19", "light_zfnet512", "light_alexnet")
MODELS = [m for m in zoo.list_models("ppocr") + zoo.list_models("light") + zoo.list_models("timm") if m not in HEAVY]


@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_channels_last(name: str) -> None:
    ok, why = zoo.available(name)  # builds a timm export that is not cached yet
    if not ok:  # torch or timm missing, or the export failed: the reason says which
        pytest.skip(why)
    path = str(zoo.get_model(name))
    feed = zoo.example_inputs(name)
    graph = kiln.load(path, input_shapes={k: v.shape for k, v in feed.items()})
    kiln.optimize(graph, pipeline="O2,target-fusions,to-nhwc,dce")
    assert interior_transposes(graph) == 0
    assert sum(1 for n in graph if n.op.startswith("Nhwc")) > 0
    expected = run(path, feed)
    actual = run(kiln.to_onnx(graph), feed)
    # ppocr_det: a probability map where reassociated float sums alone move pixels by ~1e-4
    tol = 3e-4 if name == "ppocr_det" else 1e-4
    for key, e in expected.items():
        assert rel_err(e, actual[key]) <= tol, key
