"""Calibration benchmark: kiln's calibrators against onnxruntime.quantization.quantize_static, same run.

For PP-OCR cls, det and rec (the trained models shipped in rapidocr_onnxruntime) and synthetic PP-OCR-like
images (tests/calib/ocr_images.py: text-line crops for cls/rec, text pages for det), each configuration runs in
its own child process and reports:

* time of calibration + quantization (load, calibrate, quantize, save) relative to plain float inference of
  the same calibration inputs in onnxruntime (= 1.0), with the same batch size;
* peak RSS of the child process (ru_maxrss);
* output SQNR of the quantized model against float on held-out images, and top-1 agreement (cls: the class;
  rec: the character at every time step).

onnxruntime's side: quantize_static, QDQ, int8 symmetric activations and weights, weights per channel, on the
model upgraded to opset 13 (onnx.version_converter; quantize_static's output at opsets 11/12 does not load).
Its histogram calibrators keep every activation of every sample in memory, so on det and rec they run on
``--ort-hist-count`` samples only (default 8) and the table says so.

Also measured: the KL-divergence search for one tensor at 2048 bins, kiln's kernel against onnxruntime's
``HistogramCollector.get_entropy_threshold``; and kiln's peak RSS against the number of samples.

    python benchmarks/bench_calib.py                   # everything, writes benchmarks/results/calib.md + .json
    python benchmarks/bench_calib.py --models cls --count 64
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "calib"))

MODELS = {
    "cls": ("ppocr_cls", "line", {"size": (48, 192), "mode": "height", "mean": (0.5,), "std": (0.5,),
                                  "channels": "bgr"}),
    "rec": ("ppocr_rec", "line", {"size": (48, 320), "mode": "height", "mean": (0.5,), "std": (0.5,),
                                  "channels": "bgr"}),
    "det": ("ppocr_det", "page", {"size": (320, 320), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                                  "channels": "bgr"}),
    # timm resnet50 (random weights, the zoo's TorchScript export) on generated scene-like images
    "resnet50": ("timm_resnet50_ts", "natural", {"size": (224, 224), "mean": (0.485, 0.456, 0.406),
                                                 "std": (0.229, 0.224, 0.225)}),
}
CLASSIFIERS = ("cls", "rec", "resnet50")  # top-1 agreement is reported for these
ORT_FULL = {"cls": ("MinMax", "Entropy", "Percentile"), "det": ("MinMax",), "rec": ("MinMax",)}
"""onnxruntime methods run on every calibration sample; the others (which hold every activation of every
sample in memory) on --ort-hist-count samples."""
KILN_CALIBRATORS = ("minmax", "entropy", "percentile", "mse")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
BATCH = 8


# ----------------------------------------------------------------------------------------------- data


def make_data(model: str, count: int, test: int, folder: Path) -> tuple[Path, Path]:
    """Generates images, preprocesses them once, saves calib.npy and test.npy (the same inputs for everyone)."""
    from kiln.calib.images import ImageOptions, load_image
    from ocr_images import write_images

    _, kind, opts = MODELS[model]
    options = ImageOptions(**opts)
    h, w = options.size
    out = []
    for name, n, seed in (("calib", count, 1), ("test", test, 2)):
        paths = write_images(folder / f"{model}_{name}", kind, n, seed)
        arr = np.stack([load_image(p, options, (None, 3, h, w)) for p in paths])
        np.save(folder / f"{model}_{name}.npy", arr)
        out.append(folder / f"{model}_{name}.npy")
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------- children


def _rss_mb() -> float:
    """Peak RSS of this process since its exec (VmHWM; ru_maxrss would include the parent's before exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _float_time(model_path: str, data: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: data[:1]})
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, len(data), BATCH):
            sess.run(None, {name: data[i:i + BATCH]})
        best = min(best, time.perf_counter() - start)
    return best


def child_float(model_path: str, calib: str) -> dict:
    data = np.load(calib)
    return {"seconds": _float_time(model_path, data), "rss_mb": _rss_mb()}


def child_kiln(model_path: str, calib: str, calibrator: str, out: str, workers: int, images: str | None = None,
               keep_float: int = 0, min_sqnr: float = 0.0, entropy_floor: float | None = None) -> dict:
    """``images``: a MODELS key; ``calib`` is then a folder of images preprocessed as that model wants."""
    import kiln
    import kiln.calib.executor
    import kiln.driver.compile
    import kiln.frontend
    import kiln.passes.quantize.quantize
    import onnxruntime  # noqa: F401  (imports are not timed, as for onnxruntime's side)
    from kiln.calib import CalibrationConfig, ImageOptions
    from kiln.passmanager.registry import default_registry

    default_registry().discover()
    calib_seconds = _time_calibration()
    report_seconds = _time_report() if not (keep_float or min_sqnr) else None
    image = ImageOptions(**MODELS[images][2]) if images else None
    start = time.perf_counter()
    config = CalibrationConfig(calib, batch_size=BATCH, workers=workers, progress=False, image=image)
    options = {"calibrator": calibrator, "keep_float": int(keep_float or 0), "min_sqnr": float(min_sqnr or 0)}
    if entropy_floor is not None:
        options["entropy_floor"] = float(entropy_floor)
    result = kiln.compile(model_path, "onnx", out, calibration=config, int8=True, quantize_options=options,
                          stem="model")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "calib_s": calib_seconds[0], "rss_mb": _rss_mb(),
            "report_s": report_seconds[0] if report_seconds else None,
            "artifact": str(Path(out) / "model.onnx"),
            "samples": json.loads((Path(out) / "model.calib.json").read_text())["samples"], "stats": result.stats}


def _time_report() -> list[float]:
    """Times the int8 report (its probe's float reference, each tensor's and layer's SQNR, the written model's
    output SQNR), which onnxruntime.quantization does not make; returns a one-element list filled in later."""
    from kiln.passes.quantize.sensitivity import QuantProbe

    total = [0.0]
    for method in ("__init__", "local_errors", "graph_sqnr"):
        setattr(QuantProbe, method, _timed(getattr(QuantProbe, method), total))
    return total


def _timed(fn, total: list[float]):  # type: ignore[no-untyped-def]
    """``fn``, adding the seconds each call takes to ``total[0]``."""
    def wrapper(*a, **k):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            total[0] += time.perf_counter() - start
    return wrapper


def _time_calibration() -> list[float]:
    """Times what the quantize pass spends calibrating: data collection (export, session, runs, histograms)
    plus range computation, by wrapping the two calls it makes; returns a one-element list filled in later."""
    import kiln.calib
    import kiln.passes.quantize.quantize as qpass

    total = [0.0]
    kiln.calib.collect = _timed(kiln.calib.collect, total)  # CalibrationConfig.collect calls it through the package
    qpass.compute_ranges = _timed(qpass.compute_ranges, total)
    return total


class _Reader:
    def __init__(self, data: np.ndarray, name: str) -> None:
        self.data, self.name, self.i = data, name, 0

    def get_next(self):  # type: ignore[no-untyped-def]
        if self.i >= len(self.data):
            return None
        batch = self.data[self.i:self.i + BATCH]
        self.i += BATCH
        return {self.name: batch}

    def rewind(self) -> None:
        self.i = 0


def child_ort(model13: str, calib: str, method: str, out: str, count: int | None) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    data = np.load(calib)
    if count:
        data = data[:count]
    name = onnx.load(model13, load_external_data=False).graph.input[0].name
    calib_seconds = _time_ort_calibration()
    start = time.perf_counter()
    quantize_static(model13, out, _Reader(data, name), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return {"seconds": time.perf_counter() - start, "calib_s": calib_seconds[0], "rss_mb": _rss_mb(),
            "artifact": out, "samples": len(data)}


def _time_ort_calibration() -> list[float]:
    """Times onnxruntime's calibration inside ``quantize_static``, the counterpart of kiln's: making the
    calibrator (the augmented model and its session), ``collect_data`` and ``compute_data``; returns a
    one-element list filled in later."""
    import onnxruntime.quantization.quantize  # noqa: F401  (the module, not the function of the same name)

    module = sys.modules["onnxruntime.quantization.quantize"]
    total = [0.0]
    make = _timed(module.create_calibrator, total)

    def create_calibrator(*a, **k):  # type: ignore[no-untyped-def]
        calibrator = make(*a, **k)
        calibrator.collect_data = _timed(calibrator.collect_data, total)
        calibrator.compute_data = _timed(calibrator.compute_data, total)
        return calibrator

    module.create_calibrator = create_calibrator
    return total


def child_kl(calib: str, model_path: str) -> dict:
    """One heavy-tailed activation's histogram searched by both implementations.

    onnxruntime histograms signed values symmetrically: its "2048 bins" are 1024 per side and its loop runs
    over 1024 - 64 candidates; TensorRT's setting (2048 bins of |x|, 128 levels) is onnxruntime's 4096 bins,
    256 quantized bins.  Both are timed.
    """
    from kiln import kernels
    from kiln.calib.kl import kl_threshold
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(0)
    x = rng.laplace(size=2_000_000).astype(np.float32)
    out: dict = {"native": kernels.NATIVE}
    amax = float(np.abs(x).max())
    for bins, levels in ((2048, 128), (4096, 256)):
        hist, edges = np.histogram(x, bins=bins, range=(-amax, amax))
        collector = HistogramCollector("entropy", True, bins, levels, 99.99, "same")
        start = time.perf_counter()
        collector.get_entropy_threshold((hist, edges, float(x.min()), float(x.max())), levels)
        out[f"ort_{bins}_s"] = time.perf_counter() - start
    hist, edges = np.histogram(np.abs(x), bins=2048, range=(0, amax))
    kl_threshold(hist, float(edges[1]))
    reps = 20
    start = time.perf_counter()
    for _ in range(reps):
        kl_threshold(hist, float(edges[1]))
    out["kiln_s"] = (time.perf_counter() - start) / reps
    return out


def child_ratio(model_path: str, calib: str, calibrator: str, repeat: int) -> dict:
    """Calibration alone against float inference, interleaved ``repeat`` times in this process (best of each),
    so that load from other processes on a shared machine weighs on both sides alike.

    Calibration is what the quantize pass runs: on the graph it sees (after -O2 and the opset upgrade), the
    executor on the activations its plan quantizes (export, session, every batch, histograms), then the
    calibrator on every histogram.
    """
    import kiln
    import kiln.calib.executor  # imports are not timed
    import onnxruntime as ort
    from kiln.calib import CalibrationConfig, compute_ranges
    from kiln.passes.quantize.opset import upgrade_opset
    from kiln.passes.quantize.placement import plan_quantization
    from kiln.passmanager.registry import default_registry

    default_registry().discover()
    graph = kiln.load(model_path)
    kiln.optimize(graph, pipeline="O2")
    upgrade_opset(graph, 13)
    names = [v.name for v in plan_quantization(graph).activations()]
    data = np.load(calib)
    # Pool threads that do not spin, so that on a loaded machine neither side wins CPU share by busy-waiting
    # (kiln's calibration runs one onnxruntime thread per lane, kiln.calib.executor), and CPU time counts work
    # rather than waiting.
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    # Also onnxruntime as it comes (pool threads that spin), and from a fresh session: what a script that
    # loads the model and runs it pays, as kiln's calibration does (export, session, first runs on cold memory).
    default = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    feed_name = sess.get_inputs()[0].name
    sess.run(None, {feed_name: data[:BATCH]})
    default.run(None, {feed_name: data[:BATCH]})

    def run_all(session: ort.InferenceSession) -> None:
        for i in range(0, len(data), BATCH):
            session.run(None, {feed_name: data[i:i + BATCH]})

    def cold() -> None:
        run_all(ort.InferenceSession(model_path, providers=["CPUExecutionProvider"]))

    times: dict[str, list[float]] = {k: [] for k in ("float", "float_default", "float_cold", "calib")}
    cpu_times: dict[str, list[float]] = {k: [] for k in times}
    for _ in range(repeat):
        for key, work in (("float", lambda: run_all(sess)), ("float_default", lambda: run_all(default)),
                          ("float_cold", cold), ("calib", None)):
            start, cpu = time.perf_counter(), time.process_time()
            if work is not None:
                work()
            else:
                config = CalibrationConfig(calib, batch_size=BATCH, progress=False)
                stats = config.collect(graph, names, histograms=calibrator != "minmax")
                compute_ranges(stats, calibrator, names=names)
            times[key].append(time.perf_counter() - start)
            cpu_times[key].append(time.process_time() - cpu)
    return {**{f"{k}_s": min(v) for k, v in times.items()}, **{f"{k}_cpu_s": min(v) for k, v in cpu_times.items()},
            "tensors": len(names)}


def child_detmem(batches: int, size: int) -> dict:
    """Entropy calibration of PP-OCR det on ``batches`` batches of one generated text page ``size`` x ``size``,
    streamed from a Python generator (no data file whose pages would count in RSS); peak RSS at the end."""
    import kiln
    import zoo
    from kiln.calib import calibrate

    graph = kiln.load(zoo.get_model("ppocr_det"))
    pages = (zoo.text_page((1, 3, size, size), seed=i) for i in range(batches))
    start = time.perf_counter()
    result = calibrate(graph, pages, "entropy", batch_size=1, progress=False)
    return {"seconds": time.perf_counter() - start, "rss_mb": _rss_mb(), "samples": result.samples,
            "tensors": len(result.ranges)}


def child(argv: list[str]) -> None:
    kind = argv[0]
    fn = {"float": child_float, "kiln": child_kiln, "ort": child_ort, "kl": child_kl, "detmem": child_detmem,
          "ratio": child_ratio}[kind]
    args = [None if a == "-" else (int(a) if a.isdigit() else a) for a in argv[1:]]
    print("RESULT " + json.dumps(fn(*args)))


def spawn(*args: object, timeout: float = 3600) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *[("-" if a is None else str(a)) for a in args]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}


# ----------------------------------------------------------------------------------------------- metrics


def accuracy(model: str, float_model: str, quant_model: str, test: str) -> dict:
    import onnxruntime as ort
    from kiln.quant import sqnr_db

    x = np.load(test)
    outs = []
    for path in (float_model, quant_model):
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        outs.append(np.concatenate([sess.run(None, {name: x[i:i + BATCH]})[0] for i in range(0, len(x), BATCH)]))
    ref, got = outs
    out = {"sqnr_db": sqnr_db(ref, got)}
    if model in CLASSIFIERS:
        out["top1"] = float((ref.argmax(-1) == got.argmax(-1)).mean())
    return out


def dynamic_batch(model_path: Path, folder: Path) -> Path:
    """A private copy of ``model_path`` (other tools on a shared machine have been seen rewriting the shipped
    PP-OCR files in place) whose input and output batch dim is symbolic (timm's exports fix it at 1), so every
    tool runs it at batch BATCH."""
    import onnx

    proto = onnx.load(str(model_path))
    dims = [v.type.tensor_type.shape.dim[0] for v in (*proto.graph.input, *proto.graph.output)
            if v.type.tensor_type.shape.dim]
    for d in dims:
        d.dim_param = "N"
    out = folder / (model_path.stem + "_batchN.onnx")
    onnx.save(proto, str(out))
    return out


def upgrade(model_path: Path, folder: Path) -> Path:
    import onnx
    from onnx import version_converter

    proto = onnx.load(str(model_path), load_external_data=False)
    if next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0) >= 13:
        return model_path
    out = folder / (model_path.stem + "_op13.onnx")
    if not out.exists():
        onnx.save(version_converter.convert_version(onnx.load(str(model_path)), 13), str(out))
    return out


# ----------------------------------------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return 0
    import zoo

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="cls,det,rec")
    p.add_argument("--count", type=int, default=64, help="calibration samples (default 64)")
    p.add_argument("--test", type=int, default=32, help="held-out samples for SQNR (default 32)")
    p.add_argument("--ort-hist-count", type=int, default=8,
                   help="samples for onnxruntime's histogram calibrators on det/rec (they keep every activation)")
    p.add_argument("--memory-counts", default="16,64,256", help="sample counts for the memory-flatness run (cls)")
    p.add_argument("--det-memory", default="50,500",
                   help="batch counts for the PP-OCR det peak-RSS run (every float tensor, entropy; '' for none)")
    p.add_argument("--det-memory-size", type=int, default=96, help="page size of that run (default 96)")
    p.add_argument("--calibrators", default=",".join(KILN_CALIBRATORS), help="kiln calibrators to run")
    p.add_argument("--ratio-repeat", type=int, default=3,
                   help="interleaved float/calibration repeats for the calibration ratio (default 3)")
    p.add_argument("--no-ort", action="store_true")
    p.add_argument("--keep-float", default="rec:entropy:8",
                   help="extra kiln rows MODEL:CALIBRATOR:N with --keep-float N (comma-separated; '' for none)")
    p.add_argument("--trt-entropy", default="cls,det,rec",
                   help="models with an extra kiln row of TensorRT's KL search alone (--entropy-floor 0; '' for none)")
    p.add_argument("--min-sqnr", default="det:entropy:25,rec:entropy:25",
                   help="extra kiln rows MODEL:CALIBRATOR:DB with --min-sqnr DB (comma-separated; '' for none)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "calib"))
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kiln-bench-calib-"))
    atexit.register(shutil.rmtree, tmp, True)  # models, data sets and outputs: hundreds of MB a run
    rows: list[dict] = []
    for model in args.models.split(","):
        zoo_name = MODELS[model][0]
        path = dynamic_batch(zoo.get_model(zoo_name), tmp)
        calib, test = make_data(model, args.count, args.test, tmp)
        base = spawn("float", str(path), str(calib))
        print(f"{model}: float inference of {args.count} samples: {base['seconds']:.3f} s, RSS {base['rss_mb']:.0f} MB",
              flush=True)
        for cal in args.calibrators.split(","):
            r = spawn("kiln", str(path), str(calib), cal, str(tmp / f"{model}_kiln_{cal}"), 1)
            if "error" not in r:
                r.update(accuracy(model, str(path), r["artifact"], str(test)))
                ratio = spawn("ratio", str(path), str(calib), cal, args.ratio_repeat)
                r["calib_ratio"] = ratio["calib_s"] / ratio["float_s"] if "calib_s" in ratio else None
                r["calib_cpu_ratio"] = ratio["calib_cpu_s"] / ratio["float_cpu_s"] if "calib_s" in ratio else None
                r["calib_default_ratio"] = ratio["calib_s"] / ratio["float_default_s"] if "calib_s" in ratio else None
                r["calib_cold_ratio"] = ratio["calib_s"] / ratio["float_cold_s"] if "calib_s" in ratio else None
                r["ratio_run"] = ratio
            rows.append({"model": model, "tool": "kiln", "method": cal, "float_s": base["seconds"], **r})
            print(json.dumps(rows[-1]), flush=True)
        if model in args.trt_entropy.split(","):
            r = spawn("kiln", str(path), str(calib), "entropy", str(tmp / f"{model}_kiln_trt"), 1, None, 0, 0, 0)
            if "error" not in r:
                r.update(accuracy(model, str(path), r["artifact"], str(test)))
            rows.append({"model": model, "tool": "kiln", "method": "entropy --entropy-floor 0", "float_s": base["seconds"],
                         **r})
            print(json.dumps(rows[-1]), flush=True)
        for spec in filter(None, args.keep_float.split(",")):
            which, cal, n = spec.split(":")
            if which != model:
                continue
            r = spawn("kiln", str(path), str(calib), cal, str(tmp / f"{model}_kiln_{cal}_kf{n}"), 1, None, n)
            if "error" not in r:
                r.update(accuracy(model, str(path), r["artifact"], str(test)))
            rows.append({"model": model, "tool": "kiln", "method": f"{cal} --keep-float {n}", "float_s": base["seconds"], **r})
            print(json.dumps(rows[-1]), flush=True)
        for spec in filter(None, args.min_sqnr.split(",")):
            which, cal, db = spec.split(":")
            if which != model:
                continue
            r = spawn("kiln", str(path), str(calib), cal, str(tmp / f"{model}_kiln_{cal}_ms{db}"), 1, None, 0, db)
            if "error" not in r:
                r.update(accuracy(model, str(path), r["artifact"], str(test)))
                table = json.loads((Path(r["artifact"]).parent / "model.calib.json").read_text())
                r["note"] = f"{len(table['kept_float'])} of {len(table['sensitivity'])} layers float"
            rows.append({"model": model, "tool": "kiln", "method": f"{cal} --min-sqnr {db}", "float_s": base["seconds"],
                         **r})
            print(json.dumps(rows[-1]), flush=True)
        if not args.no_ort:
            model13 = upgrade(path, tmp)
            for method in ORT_METHODS:
                count = None if method in ORT_FULL.get(model, ()) else args.ort_hist_count
                r = spawn("ort", str(model13), str(calib), method, str(tmp / f"{model}_ort_{method}.onnx"), count)
                if "error" not in r:
                    r.update(accuracy(model, str(path), r["artifact"], str(test)))
                    if count:  # relative to float inference of the samples it saw
                        r["note"] = f"{count} samples"
                rows.append({"model": model, "tool": "onnxruntime", "method": method,
                             "float_s": base["seconds"] * (count / args.count if count else 1.0), **r})
                print(json.dumps(rows[-1]), flush=True)

    memory = []
    if "cls" in args.models.split(","):
        path = zoo.get_model("ppocr_cls")
        for n in [int(c) for c in filter(None, args.memory_counts.split(","))]:
            # From the image folder (decoded sample by sample): an .npy would be memory-mapped, and its
            # pages, though reclaimable, count in RSS in proportion to the data set.
            make_data("cls", n, 1, tmp / f"mem{n}")
            folder = tmp / f"mem{n}" / "cls_calib"
            r = spawn("kiln", str(path), str(folder), "entropy", str(tmp / f"mem_{n}"), 1, "cls")
            memory.append({"samples": n, **{k: r.get(k) for k in ("seconds", "rss_mb", "error")}})
            print(json.dumps(memory[-1]), flush=True)
    det_memory = []
    for n in [int(c) for c in filter(None, args.det_memory.split(","))]:
        r = spawn("detmem", n, args.det_memory_size)
        det_memory.append({"batches": n, **r})
        print(json.dumps(det_memory[-1]), flush=True)
    memory = {"cls": memory, "det": det_memory}
    kl = spawn("kl", "-", "-")
    print(json.dumps(kl), flush=True)
    write_report(rows, memory, kl, args, Path(args.out))
    return 0


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _calibration_against_calibration(rows: list[dict]) -> list[str]:
    """onnxruntime's calibration time (inside quantize_static: its calibrator, collect_data, compute_data)
    against kiln's (inside kiln.compile: collection and ranges), per sample, same method and data."""
    kiln_rows = {(r["model"], r["method"]): r for r in rows if r["tool"] == "kiln" and r.get("calib_s")}
    out = []
    for r in rows:
        k = kiln_rows.get((r["model"], r["method"].lower()))
        if r["tool"] != "onnxruntime" or not r.get("calib_s") or k is None:
            continue
        ratio = (r["calib_s"] / r["samples"]) / (k["calib_s"] / k["samples"])
        out.append(f"| {r['model']} | {r['method']} | {k['calib_s']:.3f} ({k['samples']}) | "
                   f"{r['calib_s']:.3f} ({r['samples']}) | {ratio:.1f} |")
    if not out:
        return []
    return ["", ("Calibration against calibration, inside the whole runs above: kiln's collection and range "
                 "computation in `kiln.compile`, onnxruntime's calibrator (augmented model and session), "
                 "`collect_data` and `compute_data` in `quantize_static`; per sample, since onnxruntime's histogram "
                 "methods see fewer samples on det and rec:"), "",
            "| model | method | kiln s (samples) | onnxruntime s (samples) | onnxruntime / kiln per sample |",
            "|---|---|---|---|---|", *out]


def write_report(rows: list[dict], memory: dict[str, list[dict]], kl: dict, args: argparse.Namespace, out: Path) -> None:
    import onnxruntime

    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Calibration: kiln vs onnxruntime.quantization.quantize_static",
        "",
        (f"`python benchmarks/bench_calib.py {' '.join(sys.argv[1:])}`; "
        f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} cores. Generated images (PP-OCR-like text for cls/rec/det, scene-like for resnet50). "
        f"1.0 = onnxruntime running the float model over the same calibration samples (batch {BATCH}, session "
        "made beforehand, best of 3). *calibration*: kiln's data collection (export, session, runs, histograms) "
        "plus range computation, as the quantize pass runs them, timed alternately with float inference in one "
        f"process, best of {args.ratio_repeat} each (so that load from other processes weighs on both alike), "
        "against three float runs of the same samples: a session with non-spinning pool threads (*x float*; its "
        "CPU column is process CPU time, the work done), a session with onnxruntime's default options, whose "
        "pool threads spin between ops (*x float, defaults*: the fastest float pass on an idle machine), and a "
        "fresh default session per pass (*x fresh float*: loading the model and running it once, which is what "
        "any calibrator starts from; kiln's calibration also makes its session and runs on cold memory); "
        "*whole*: load + optimize + calibrate + quantize + int8 report + save (`kiln.compile`) or onnxruntime's "
        "`quantize_static`, against the float time measured in its own process; *without the int8 report*: "
        "less the time of kiln's per-layer report (probe runs on 8 calibration samples and the written model's "
        "output SQNR), which onnxruntime does not make: the same work on both sides. "
        "kiln's `entropy` is TensorRT's KL search with kiln's guard (a tensor the KL threshold would leave below "
        "25 dB takes the mse threshold); `entropy --entropy-floor 0` is the KL search alone. "
        f"SQNR and top-1 agreement on {args.test} held-out images. "
        "Reading: on a shared 2-core machine the ratios move by 10-30% from run to run (most on cls, whose float "
        "pass over 64 samples takes about 40 ms, so that session setup and the per-tensor searches weigh more "
        "than on the larger models); a row whose calibration comes out at or below 1.0 had its float pass slowed "
        "by load in every repeat."),
        "",
        ("| model | tool | method | calibration x float | calibration CPU x float CPU | calibration x float, "
         "defaults | calibration x fresh float | whole x float | whole without the int8 report x float | "
         "calibration s | peak RSS MB | output SQNR dB | top-1 agreement | note |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['tool']} | {r['method']} | failed: {r['error']} | | | | | | | | | | |")
            continue
        top1 = f"{r['top1']:.3f}" if "top1" in r else "-"
        cal = f"{r['calib_ratio']:.2f}" if r.get("calib_ratio") else "-"
        cpu = f"{r['calib_cpu_ratio']:.2f}" if r.get("calib_cpu_ratio") else "-"
        default = f"{r['calib_default_ratio']:.2f}" if r.get("calib_default_ratio") else "-"
        cold = f"{r['calib_cold_ratio']:.2f}" if r.get("calib_cold_ratio") else "-"
        bare = (f"{(r['seconds'] - r['report_s']) / r['float_s']:.2f}" if r.get("report_s") is not None
                else f"{r['seconds'] / r['float_s']:.2f}" if r["tool"] != "kiln" else "-")
        lines.append(f"| {r['model']} | {r['tool']} | {r['method']} | {cal} | {cpu} | {default} | {cold} | "
                     f"{r['seconds'] / r['float_s']:.2f} | "
                     f"{bare} | {_seconds(r.get('calib_s'))} | {r['rss_mb']:.0f} | {r['sqnr_db']:.1f} | {top1} | "
                     f"{r.get('note', '')} |")
    lines += _calibration_against_calibration(rows)
    if memory["cls"]:
        lines += ["", "kiln entropy on cls from a folder of PNG images, peak RSS against the number of samples:", "",
                  "| samples | seconds | peak RSS MB |", "|---|---|---|"]
        lines += [f"| {m['samples']} | {m['seconds']:.2f} | {m['rss_mb']:.0f} |" for m in memory["cls"]]
    if memory["det"]:
        lines += ["", (f"kiln entropy on PP-OCR det, every float tensor, batches of one {args.det_memory_size}x"
                       f"{args.det_memory_size} text page streamed from a generator; peak RSS of the process:"), "",
                  "| batches | tensors | seconds | peak RSS MB |", "|---|---|---|---|"]
        lines += [f"| {m['batches']} | {m.get('tensors', '-')} | {m.get('seconds', 0):.1f} | {m.get('rss_mb', 0):.0f} |"
                  for m in memory["det"]]
    if "kiln_s" in kl:
        lines += ["", (f"KL threshold search, one tensor: kiln (2048 bins of |x|, 128 levels, 1921 candidates) "
                      f"{kl['kiln_s'] * 1000:.1f} ms ({'Cython' if kl['native'] else 'numpy'}); onnxruntime "
                      f"{kl['ort_2048_s']:.2f} s at 2048 signed bins ({kl['ort_2048_s'] / kl['kiln_s']:.0f}x), "
                      f"{kl['ort_4096_s']:.2f} s at 4096 signed bins / 256 levels, TensorRT's setting "
                      f"({kl['ort_4096_s'] / kl['kiln_s']:.0f}x).")]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "memory": memory, "kl": kl}, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
