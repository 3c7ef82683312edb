"""The two shortcuts that keep ``keep-float`` and ``min-sqnr`` affordable, checked against the long way round.

* Each layer's sensitivity runs only the layer's suffix on recorded float values (``kiln.passes.quantize.suffix``):
  the same figures as running the whole model per layer.
* ``min-sqnr``'s search starts where the layers' noise, added up, puts the answer
  (``kiln.quant.islands.fewest_sensitive(guess=)``): the same answer as searching from one layer up.
"""

from __future__ import annotations

import logging
import math

import kiln
import numpy as np
import onnx
import pytest
from calib_models import conv_net, samples
from kiln.calib import CalibrationConfig
from kiln.passes.quantize import suffix
from kiln.passes.quantize.opset import upgrade_opset
from kiln.passes.quantize.placement import plan_quantization
from kiln.passes.quantize.sensitivity import QuantProbe, additive_guess
from kiln.quant.islands import fewest_sensitive


def two_output_net() -> onnx.ModelProto:
    """conv_net with its residual block's output as a second graph output: the Gemm does not reach it."""
    model = conv_net()
    model.graph.output.append(onnx.helper.make_tensor_value_info("r2", onnx.TensorProto.FLOAT, None))
    return model


def probe_for(model: onnx.ModelProto | str, data: np.ndarray, samples_: int = 8):
    g = kiln.load(model)
    upgrade_opset(g, 13)
    ranges = kiln.calib.calibrate(g, data, "entropy").ranges
    return g, plan_quantization(g), lambda: QuantProbe(g, ranges, CalibrationConfig(data), samples_)


def whole_and_suffix(monkeypatch, model, data) -> tuple[dict[str, float], dict[str, float], object]:
    _, plan, make = probe_for(model, data)
    probe = make()
    shortcut = suffix.SuffixRuns.prepare(probe, plan.layers)
    assert shortcut is not None
    fast = {layer.name: shortcut.output_sqnr(layer) for layer in plan.layers}
    monkeypatch.setattr(suffix, "MAX_RECORD_BYTES", 0)  # no room for records: the whole model per layer
    slow = make().sensitivity(plan.layers)
    return fast, slow, shortcut


def test_suffix_runs_give_the_whole_model_figures(monkeypatch):
    fast, slow, shortcut = whole_and_suffix(monkeypatch, two_output_net(), samples(16))
    assert set(fast) == set(slow) and len(fast) >= 5
    for name in fast:
        assert fast[name] == pytest.approx(slow[name], abs=0.01), name
    # The Gemm's suffix starts after the residual block: it reads the flattened features, not the image.
    assert shortcut.crossing["fc"] == ["f1"] and "x" in shortcut.crossing["conv1"]


def test_suffix_runs_on_a_real_model(monkeypatch, tmp_path):
    """PP-OCR cls (trained weights, 72 layers, squeeze-and-excitation branches that rejoin the trunk)."""
    pytest.importorskip("PIL")
    import zoo
    from kiln.calib.images import ImageOptions, load_image
    from ocr_images import write_images

    ok, why = zoo.available("ppocr_cls")
    if not ok:
        pytest.skip(why)
    options = ImageOptions(size=(48, 192), mode="height", mean=(0.5,), std=(0.5,), channels="bgr")
    data = np.stack([load_image(p, options, (None, 3, 48, 192)) for p in write_images(tmp_path, "line", 12, seed=3)])
    fast, slow, _ = whole_and_suffix(monkeypatch, str(zoo.get_model("ppocr_cls")), data.astype(np.float32))
    assert len(fast) > 50
    worst = max(abs(fast[k] - slow[k]) for k in fast if math.isfinite(slow[k]))
    assert worst < 0.05
    assert sorted(fast, key=fast.get)[:10] == sorted(slow, key=slow.get)[:10]


def test_suffix_records_come_in_groups_within_the_budget(monkeypatch):
    _, plan, make = probe_for(conv_net(), samples(16))
    probe = make()
    whole_group = suffix.SuffixRuns.prepare(probe, plan.layers)
    assert len(whole_group.groups) == 1
    reference = {layer.name: whole_group.output_sqnr(layer) for layer in plan.layers}
    # A budget that fits the largest layer's values alone: several groups, recorded one at a time.
    first = whole_group._record(list(dict.fromkeys(n for names in whole_group.crossing.values() for n in names)),
                                probe.feeds[:1])[0]
    need = max(sum(first[n].nbytes for n in names) * len(probe.feeds) for names in whole_group.crossing.values())
    monkeypatch.setattr(suffix, "MAX_RECORD_BYTES", need)
    grouped = suffix.SuffixRuns.prepare(make(), plan.layers)
    assert len(grouped.groups) >= 2 and set(grouped.group_of) == set(reference)
    for layer in plan.layers:
        assert grouped.output_sqnr(layer) == pytest.approx(reference[layer.name], abs=1e-9)
        assert grouped.recorded == grouped.group_of[layer.name]
        held = sum(a.nbytes for record in grouped.records for a in record.values())
        assert held <= need


def test_a_layer_over_the_budget_runs_the_whole_model_and_says_so(monkeypatch, caplog):
    _, plan, make = probe_for(conv_net(), samples(16))
    monkeypatch.setattr(suffix, "MAX_RECORD_BYTES", 1)
    probe = make()
    with caplog.at_level(logging.INFO, logger="kiln"):
        runs = suffix.SuffixRuns.prepare(probe, plan.layers)
        figures = probe.sensitivity(plan.layers)
    assert runs.group_of == {} and not runs.groups
    assert "runs the whole model" in caplog.text
    assert set(figures) == {layer.name for layer in plan.layers}


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 33])
def test_the_search_finds_the_fewest_from_any_guess(size):
    """Candidate i is the i-th most sensitive; the error stays within budget once the first ``answer`` stay float32.
    Every answer, from every constant guess and from the default (doubling), in a bounded number of runs."""
    for answer in range(1, size + 1):
        for start in [None, *range(size + 3)]:
            calls: list[int] = []

            def error(rounded: set[int], answer: int = answer, calls: list[int] = calls) -> float:
                calls.append(len(rounded))
                return 1.0 if rounded and min(rounded) < answer else 0.0

            guess = None if start is None else (lambda order, count, err, start=start: start)
            kept = fewest_sensitive(range(size), error, 0.5, sensitivity=lambda i: -i, guess=guess)
            assert kept == set(range(answer)), (answer, start)
            assert len(calls) <= 2 * size.bit_length() + 2


def test_a_good_guess_gives_the_same_answer_in_fewer_runs():
    rng = np.random.default_rng(0)
    cost = rng.exponential(1.0, 40)  # each candidate's share of the error

    def error(rounded: set[int]) -> float:
        calls.append(len(rounded))
        return float(sum(cost[i] for i in rounded))

    for budget in (0.5, 3.0, 10.0, 25.0):
        calls: list[int] = []
        plain = fewest_sensitive(range(40), error, budget, sensitivity=lambda i: cost[i])
        plain_calls = len(calls)
        assert error(set(range(40)) - plain) <= budget
        assert error(set(range(40)) - set(sorted(plain, key=lambda i: cost[i])[1:])) > budget  # one fewer fails
        for off in (-3, -1, 0, 1, 5):
            calls = []
            start = len(plain) + off
            guided = fewest_sensitive(range(40), error, budget, sensitivity=lambda i: cost[i],
                                      guess=lambda order, count, err, start=start: start)
            assert guided == plain
            if off == 0:  # the all-rounded check, the guess, and the count below it
                assert len(calls) == 3 < plain_calls
            assert len(calls) <= plain_calls + 2


def test_the_additive_guess():
    # Four layers whose noise adds up exactly: 20, 23, 26 and 30 dB alone.
    alone = [20.0, 23.0, 26.0, 30.0]
    noise = [10 ** (-db / 10) for db in alone]
    all_db = -10 * math.log10(sum(noise))
    for target, keep in ((all_db + 0.1, 1), (-10 * math.log10(sum(noise[2:])) - 0.01, 2), (29.0, 3), (40.0, 4)):
        assert additive_guess(alone, 0, all_db, target) == keep, target
    # Measured 3 dB worse than addition says with one layer kept: its noise counts double from there on.
    one_kept = -10 * math.log10(sum(noise[1:])) - 3.0103
    assert additive_guess(alone, 1, one_kept, -10 * math.log10(2 * sum(noise[2:])) - 0.01) == 2
    assert additive_guess([float("inf")] * 3, 0, 10.0, 20.0) == 1  # no noise to go on: one more


def test_min_sqnr_search_takes_few_runs_on_the_check_samples(monkeypatch):
    """The search's runs on the check samples, after the sensitivities: with the additive guess, a handful."""
    g, plan, _ = probe_for(conv_net(), samples(32))
    probe = QuantProbe(g, kiln.calib.calibrate(g, samples(32), "minmax").ranges, CalibrationConfig(samples(32)), 8,
                       check_samples=32)
    figures = probe.sensitivity(plan.layers)
    full = probe.output_sqnr(plan.layers, check=True)
    runs: list[int] = []
    measure = probe.output_sqnr
    monkeypatch.setattr(probe, "output_sqnr", lambda layers, check=False: runs.append(1) or measure(layers, check))
    kept = probe.fewest_float(plan.layers, figures, full + 6)
    assert kept and len(runs) <= 4


def test_graphs_with_subgraphs_run_the_whole_model():
    """An If body reads outer values by name, which a cut would have to follow: no shortcut there."""
    from onnx import TensorProto, helper

    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["b"])], "branch", [],
                               [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    assert suffix._has_subgraphs(helper.make_graph([node], "g", [], []))
    assert not suffix._has_subgraphs(conv_net().graph)


def test_a_layer_that_reaches_no_output_costs_nothing(monkeypatch):
    model = conv_net()
    model.graph.node.append(onnx.helper.make_node("Conv", ["x", "w1"], ["unused"], name="dead", pads=[1, 1, 1, 1]))
    _, plan, make = probe_for(model, samples(16))
    dead = [layer for layer in plan.layers if layer.name == "dead"]
    assert dead
    assert make().sensitivity(dead)["dead"] == math.inf
    monkeypatch.setattr(suffix, "MAX_RECORD_BYTES", 0)
    assert make().sensitivity(dead)["dead"] == math.inf
