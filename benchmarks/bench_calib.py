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
import json
import os
import resource
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
    "cls": ("ppocr_cls", "line", dict(size=(48, 192), mode="height", mean=(0.5,), std=(0.5,), channels="bgr")),
    "rec": ("ppocr_rec", "line", dict(size=(48, 320), mode="height", mean=(0.5,), std=(0.5,), channels="bgr")),
    "det": ("ppocr_det", "page", dict(size=(320, 320), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                     channels="bgr")),
}
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
               keep_float: int = 0) -> dict:
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
    image = ImageOptions(**MODELS[images][2]) if images else None
    start = time.perf_counter()
    config = CalibrationConfig(calib, batch_size=BATCH, workers=workers, progress=False, image=image)
    result = kiln.compile(model_path, "onnx", out, calibration=config,
                          int8=True, quantize_options={"calibrator": calibrator, "keep_float": keep_float or 0}, stem="model")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_mb": _rss_mb(), "artifact": str(Path(out) / "model.onnx"),
            "samples": json.loads((Path(out) / "model.calib.json").read_text())["samples"], "stats": result.stats}


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
    start = time.perf_counter()
    quantize_static(model13, out, _Reader(data, name), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return {"seconds": time.perf_counter() - start, "rss_mb": _rss_mb(), "artifact": out, "samples": len(data)}


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


def child(argv: list[str]) -> None:
    kind = argv[0]
    fn = {"float": child_float, "kiln": child_kiln, "ort": child_ort, "kl": child_kl}[kind]
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
    if model in ("cls", "rec"):
        out["top1"] = float((ref.argmax(-1) == got.argmax(-1)).mean())
    return out


def upgrade(model_path: Path, folder: Path) -> Path:
    import onnx
    from onnx import version_converter

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
    p.add_argument("--no-ort", action="store_true")
    p.add_argument("--keep-float", default="rec:entropy:8",
                   help="extra kiln rows MODEL:CALIBRATOR:N with --keep-float N (comma-separated; '' for none)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "calib"))
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kiln-bench-calib-"))
    rows: list[dict] = []
    for model in args.models.split(","):
        zoo_name = MODELS[model][0]
        path = zoo.get_model(zoo_name)
        calib, test = make_data(model, args.count, args.test, tmp)
        base = spawn("float", str(path), str(calib))
        print(f"{model}: float inference of {args.count} samples: {base['seconds']:.3f} s, RSS {base['rss_mb']:.0f} MB",
              flush=True)
        for cal in KILN_CALIBRATORS:
            r = spawn("kiln", str(path), str(calib), cal, str(tmp / f"{model}_kiln_{cal}"), 1)
            if "error" not in r:
                r.update(accuracy(model, str(path), r["artifact"], str(test)))
            rows.append({"model": model, "tool": "kiln", "method": cal, "float_s": base["seconds"], **r})
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
        if not args.no_ort:
            model13 = upgrade(path, tmp)
            for method in ORT_METHODS:
                count = None if (model == "cls" or method == "MinMax") else args.ort_hist_count
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
        for n in [int(c) for c in args.memory_counts.split(",")]:
            # From the image folder (decoded sample by sample): an .npy would be memory-mapped, and its
            # pages, though reclaimable, count in RSS in proportion to the data set.
            make_data("cls", n, 1, tmp / f"mem{n}")
            folder = tmp / f"mem{n}" / "cls_calib"
            r = spawn("kiln", str(path), str(folder), "entropy", str(tmp / f"mem_{n}"), 1, "cls")
            memory.append({"samples": n, **{k: r.get(k) for k in ("seconds", "rss_mb", "error")}})
            print(json.dumps(memory[-1]), flush=True)
    kl = spawn("kl", "-", "-")
    print(json.dumps(kl), flush=True)
    write_report(rows, memory, kl, args, Path(args.out))
    return 0


def write_report(rows: list[dict], memory: list[dict], kl: dict, args: argparse.Namespace, out: Path) -> None:
    import onnxruntime

    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Calibration: kiln vs onnxruntime.quantization.quantize_static",
        "",
        f"`python benchmarks/bench_calib.py --models {args.models} --count {args.count} --test {args.test}`; "
        f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} cores. Synthetic PP-OCR-like images; "
        "time = calibrate + quantize + save, relative to float inference of the same calibration samples "
        f"(batch {BATCH}); SQNR and top-1 agreement on {args.test} held-out images.",
        "",
        "| model | tool | method | x float inference | peak RSS MB | output SQNR dB | top-1 agreement | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['tool']} | {r['method']} | failed: {r['error']} | | | | |")
            continue
        top1 = f"{r['top1']:.3f}" if "top1" in r else "-"
        lines.append(f"| {r['model']} | {r['tool']} | {r['method']} | {r['seconds'] / r['float_s']:.1f} | "
                     f"{r['rss_mb']:.0f} | {r['sqnr_db']:.1f} | {top1} | {r.get('note', '')} |")
    if memory:
        lines += ["", "kiln entropy on cls from a folder of PNG images, peak RSS against the number of samples:", "",
                  "| samples | seconds | peak RSS MB |", "|---|---|---|"]
        lines += [f"| {m['samples']} | {m['seconds']:.2f} | {m['rss_mb']:.0f} |" for m in memory]
    if "kiln_s" in kl:
        lines += ["", f"KL threshold search, one tensor: kiln (2048 bins of |x|, 128 levels, 1921 candidates) "
                      f"{kl['kiln_s'] * 1000:.1f} ms ({'Cython' if kl['native'] else 'numpy'}); onnxruntime "
                      f"{kl['ort_2048_s']:.2f} s at 2048 signed bins ({kl['ort_2048_s'] / kl['kiln_s']:.0f}x), "
                      f"{kl['ort_4096_s']:.2f} s at 4096 signed bins / 256 levels, TensorRT's setting "
                      f"({kl['ort_4096_s'] / kl['kiln_s']:.0f}x)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "memory": memory, "kl": kl}, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
