"""The streaming executor: statistics of every tensor, workers, determinism, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import kiln
import numpy as np
import pytest
from calib_models import conv_net, samples
from kiln.calib import CalibrationConfig, calibrate, collect, input_specs, open_source
from kiln.calib.executor import calibration_model, float_values
from kiln.errors import UsageError


@pytest.fixture
def graph():
    return kiln.load(conv_net())


def test_collects_every_float_tensor(graph):
    data = samples(10)
    stats = collect(graph, open_source(data, input_specs(graph)), batch_size=4)
    assert stats.samples == 10
    assert set(stats) == set(float_values(graph))
    assert stats["x"].count == data.size and stats["x"].max == pytest.approx(float(data.max()))
    r1 = stats["r1"]
    assert r1.min >= 0 and r1.count == 10 * 8 * 8 * 8


def test_statistics_match_a_direct_run(graph):
    """Histograms of the streamed activations equal those of one big onnxruntime run (exact merge)."""
    import onnxruntime as ort
    from kiln.calib.histogram import TensorHistogram

    data = samples(9, seed=5)
    stats = collect(graph, open_source(data, input_specs(graph)), batch_size=2)
    model, fetch, _ = calibration_model(graph)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for name, value in zip(fetch, sess.run(fetch, {"x": data})):
        h = TensorHistogram()
        h.observe(value)
        assert stats[name] == h, name


def test_subset_of_tensors_and_subsample(graph, tmp_path):
    np.save(tmp_path / "d.npy", samples(40))
    stats = collect(graph, open_source(tmp_path / "d.npy", input_specs(graph)), tensors=["p1", "c2"], count=7)
    assert set(stats) == {"p1", "c2"} and stats.samples == 7
    with pytest.raises(UsageError, match="no such value"):
        collect(graph, open_source(tmp_path / "d.npy", input_specs(graph)), tensors=["nope"])


def test_workers_give_identical_statistics(graph, tmp_path):
    np.save(tmp_path / "d.npy", samples(24, seed=2))
    cfg = CalibrationConfig(str(tmp_path / "d.npy"), batch_size=3)
    one = cfg.collect(graph)
    cfg.workers = 2
    two = cfg.collect(graph)
    assert two.samples == one.samples == 24
    for name in one:
        assert two[name] == one[name], name


def test_workers_need_indexable_data(graph):
    with pytest.raises(UsageError, match="--calib-workers"):
        collect(graph, open_source(iter([samples(2)]), input_specs(graph)), workers=2)


def test_calibrate_api_and_iterable(graph):
    result = calibrate(graph, (samples(2, seed=i) for i in range(3)), "percentile")
    assert result.samples == 6 and result.calibrator == "percentile"
    assert all(r.threshold > 0 for r in result.ranges.values())


def test_bad_data_shape_is_a_clear_error(graph):
    with pytest.raises(UsageError, match=r"sample 0 of input 'x' has shape \[3, 5, 5\]; the model takes \[3, 8, 8\]"):
        collect(graph, open_source(np.zeros((2, 3, 5, 5), np.float32), input_specs(graph)))


def test_python_memory_flat_in_sample_count():
    """tracemalloc peak (numpy arrays included) does not grow with the number of samples."""
    graph = kiln.load(conv_net(size=48))
    specs = input_specs(graph)

    def peak(n: int) -> int:
        tracemalloc.start()
        collect(graph, open_source(f"random:{n}", specs), batch_size=4)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    peak(4)
    small, large = peak(32), peak(256)
    per_sample = 8 * 48 * 48 * 4 * 6  # bytes of activations one sample produces, roughly
    # Two lanes hold a batch each at most; whether a run had both alive at once is timing, so the margin is
    # one batch (4 samples), where keeping the 224 extra samples would cost 56 times that.
    assert large < small + 4 * per_sample, (small, large)


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, {calib!r})
    import kiln
    from calib_models import conv_net
    from kiln.calib import collect, input_specs, open_source
    graph = kiln.load(conv_net(size=64))
    stats = collect(graph, open_source("random:" + sys.argv[1], input_specs(graph)), batch_size=4)
    # VmHWM: this process's peak since exec (ru_maxrss would keep the parent's from before exec).
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
    rss = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"samples": stats.samples, "rss_kb": rss}}))
    """
)


def test_peak_rss_flat_in_sample_count(tmp_path):
    """Peak RSS of a whole calibration process with 16 and with 512 samples (32x): within a few MB."""
    script = tmp_path / "rss.py"
    script.write_text(_RSS_SCRIPT.format(calib=str(Path(__file__).resolve().parent)))
    runs = {}
    for n in (16, 512):
        out = subprocess.run([sys.executable, str(script), str(n)], capture_output=True, text=True, check=True)
        runs[n] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs[512]["samples"] == 512
    growth_mb = (runs[512]["rss_kb"] - runs[16]["rss_kb"]) / 1024
    # 512 samples of 64x64 activations would be ~800 MB if they were kept; allow noise only.
    assert growth_mb < 24, runs
    assert runs[16]["rss_kb"] < 400 * 1024  # the measurement is of the child, not of pytest


def test_minmax_collects_no_histograms_and_gives_the_same_ranges(graph, tmp_path):
    from kiln.calib import CalibrationStats, compute_ranges

    data = samples(12)
    full = collect(graph, open_source(data, input_specs(graph)), batch_size=4)
    lean = collect(graph, open_source(data, input_specs(graph)), batch_size=4, histograms=False)
    assert not lean.histograms and all(not lean[n].bins.any() for n in lean)
    assert compute_ranges(lean, "minmax") == compute_ranges(full, "minmax")
    with pytest.raises(UsageError, match="entropy calibrator needs histograms"):
        compute_ranges(lean, "entropy")
    lean.save(str(tmp_path / "s.npz"))
    assert not CalibrationStats.load(str(tmp_path / "s.npz")).histograms
    assert not CalibrationStats.from_state(lean.state()).histograms
    assert not CalibrationStats().merge(lean).histograms
    # calibrate() picks the lean collection for minmax by itself
    assert calibrate(graph, data, "minmax", batch_size=4).ranges == compute_ranges(full, "minmax")


def test_a_failed_reduction_propagates(graph, monkeypatch):
    """A failure while a lane reduces a batch surfaces in the caller, not silently."""
    from kiln.calib import histogram

    calls = {"n": 0}
    real = histogram.TensorHistogram.observe

    def flaky(self, x):
        calls["n"] += 1
        if calls["n"] == 30:
            raise RuntimeError("reduction failed")
        return real(self, x)

    monkeypatch.setattr(histogram.TensorHistogram, "observe", flaky)
    with pytest.raises(RuntimeError, match="reduction failed"):
        collect(graph, open_source(samples(16), input_specs(graph)), batch_size=2)


def test_weights_reach_onnxruntime_as_the_graphs_arrays():
    """Calibration and the int8 report hand onnxruntime the large weights as arrays read in place: the
    protobuf it parses drops to kilobytes, the outputs are the same, a detached weight that no node reads
    any more (a probe's replaced float weight) is left out, and a missing array is a clear error."""
    from kiln.errors import KilnError
    from kiln.runtime.onnxruntime import constant_arrays, detach_initializers, session
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 32, 3, 3)).astype(np.float32)  # 73 KB: detached
    b = rng.standard_normal(64).astype(np.float32)  # 256 B: stays in the protobuf
    spare = rng.standard_normal((128, 256)).astype(np.float32)  # read by nothing in the copy below
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 8, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]), opset_imports=[helper.make_opsetid("", 17)])
    graph = kiln.load(model)
    proto = kiln.to_onnx(graph)
    full = proto.SerializeToString()
    detached = detach_initializers(proto, constant_arrays(graph))
    assert set(detached) == {"w"} and proto.ByteSize() < 2000 < len(full)
    x = rng.standard_normal((1, 32, 8, 8)).astype(np.float32)
    expected = session(full).run(None, {"x": x})[0]
    np.testing.assert_array_equal(session(proto, initializers=detached).run(None, {"x": x})[0], expected)

    proto.graph.initializer.append(numpy_helper.from_array(spare, "spare"))
    detached.update(detach_initializers(proto, {"spare": spare}))
    np.testing.assert_array_equal(session(proto, initializers=detached).run(None, {"x": x})[0], expected)
    assert len(proto.graph.initializer) == 3  # the caller's model is left as it was

    for missing in ({}, None):
        with pytest.raises(KilnError, match="'w' was detached"):
            session(proto, initializers=missing)


# ---- lanes: batches run on two threads, each reducing into its own statistics


@pytest.mark.parametrize(("cores", "workers", "expected"), [
    (1, 1, (1, None)), (2, 1, (2, 1)), (8, 1, (2, 4)), (2, 2, (1, 1)), (16, 4, (2, 2))])
def test_lanes_split_the_cores(monkeypatch, cores, workers, expected):
    from kiln.calib import executor

    monkeypatch.setattr(executor, "available_cores", lambda: cores)
    assert executor.calibration_lanes(workers) == expected


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_lanes_give_identical_statistics(graph, monkeypatch, lanes):
    """Whichever lane reduced a batch, the merged histograms are bit for bit one lane's."""
    from kiln.calib import executor

    data = samples(21, seed=7)
    monkeypatch.setattr(executor, "calibration_lanes", lambda workers=1: (1, None))
    one = collect(graph, open_source(data, input_specs(graph)), batch_size=2)
    monkeypatch.setattr(executor, "calibration_lanes", lambda workers=1: (lanes, 1))
    many = collect(graph, open_source(data, input_specs(graph)), batch_size=2)
    assert many.samples == one.samples == 21
    assert list(many) == list(one)  # the tensors in the plan's order, whichever lane saw them first
    for name in one:
        assert many[name] == one[name], name


def test_a_bad_sample_stops_every_lane(graph, monkeypatch):
    """A sample that does not fit, met by one lane, is the error the caller gets; no lane runs on past it."""
    from kiln.calib import executor

    monkeypatch.setattr(executor, "calibration_lanes", lambda workers=1: (2, 1))
    good = [samples(1, seed=i)[0] for i in range(40)]
    data = [*good[:5], np.full((3, 8, 8), np.nan, np.float32), *good[5:]]
    runs = []
    real_run = executor._run

    def counting_run(job, session, *args, **kwargs):  # type: ignore[no-untyped-def]
        class Counting:
            def run(self, fetch, feed):  # type: ignore[no-untyped-def]
                runs.append(1)
                return session.run(fetch, feed)
        return real_run(job, Counting(), *args, **kwargs)

    monkeypatch.setattr(executor, "_run", counting_run)
    with pytest.raises(UsageError, match=r"sample 5 of input 'x' holds 192 NaN or inf values"):
        collect(graph, open_source(data, input_specs(graph)), batch_size=1)
    assert len(runs) <= 6


def test_a_failed_run_is_a_kiln_error(graph, monkeypatch):
    from kiln.calib import executor
    from kiln.errors import KilnError

    monkeypatch.setattr(executor, "calibration_lanes", lambda workers=1: (2, 1))
    real_session = executor.make_session

    class Failing:
        def __init__(self, inner):  # type: ignore[no-untyped-def]
            self.inner, self.calls = inner, 0

        def run(self, fetch, feed):  # type: ignore[no-untyped-def]
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("out of\n   memory")
            return self.inner.run(fetch, feed)

    monkeypatch.setattr(executor, "make_session", lambda *a, **k: Failing(real_session(*a, **k)))
    with pytest.raises(KilnError, match=r"onnxruntime failed on a calibration batch \(x\[2, 3, 8, 8\]\): out of memory$"):
        collect(graph, open_source(samples(12), input_specs(graph)), batch_size=2)


def test_an_interrupted_caller_stops_the_lanes(graph, monkeypatch):
    """Ctrl-C while the lanes run: they end after their current batch instead of reading every sample."""
    import threading
    from concurrent.futures import Future

    from kiln.calib import executor

    monkeypatch.setattr(executor, "calibration_lanes", lambda workers=1: (2, 1))
    read = []
    first_batch = threading.Event()

    def data():
        for i in range(2000):
            read.append(i)
            if i == 4:
                first_batch.set()
            yield samples(1, seed=i)[0]

    original = Future.result

    def interrupted(self, timeout=None):  # type: ignore[no-untyped-def]
        if threading.current_thread() is threading.main_thread():
            first_batch.wait(5)
            raise KeyboardInterrupt
        return original(self, timeout)

    monkeypatch.setattr(Future, "result", interrupted)
    with pytest.raises(KeyboardInterrupt):
        collect(graph, open_source(data(), input_specs(graph)), batch_size=1)
    assert len(read) < 1000  # without the stop, every sample is read before the interrupt surfaces
