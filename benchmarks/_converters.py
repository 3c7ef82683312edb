"""Shared parts of the converter benchmarks (bench_ncnn.py, bench_tflite.py).

Both benchmarks take the same ONNX model from tests/zoo.py, convert it with a
peer (pnnx, onnx2tf) and with kiln (`kiln compile -t ncnn|tflite`), each in
its own process, then run every artifact on the same runtime (ncnn's Python
package, LiteRT) against onnxruntime on the original model.

Runtime work happens in child processes of this file (``python
benchmarks/_converters.py check|time SPEC.json``), so that an artifact that
crashes its runtime (a bad .param can segfault ncnn) costs one row, not the
run:

- ``check``: one run of one artifact on the benchmark's input; writes the
  outputs (ONNX names, ONNX layout) to an .npz.
- ``time``: every artifact that passed ``check``, plus onnxruntime, at one
  thread count, interleaved round by round; prints the median seconds of each.

kiln's artifacts run through kiln's own bridges (``kiln.runtime.ncnn``,
``kiln.runtime.litert``) for accuracy when they import; the peers' (and
kiln's, for timing) through the small runners here, which know each peer's
naming: pnnx writes blobs in0.. / out0.. in ONNX input / output order,
onnx2tf writes NHWC inputs and outputs for 4-D tensors.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

# The models of issues 6 and 7, in the order the tables list them.
PPOCR = ["ppocr_det", "ppocr_rec", "ppocr_cls"]
LIGHT = [f"light_{n}" for n in ("alexnet", "vgg19", "resnet50", "squeezenet", "shufflenet", "inception_v1",
                                "inception_v2", "densenet121", "zfnet512")]
TIMM = [f"timm_{a}_ts" for a in ("resnet50", "mobilenetv2_100", "mobilenetv3_large_100", "efficientnet_b0",
                                 "regnetx_016", "convnext_tiny", "vit_small_patch16_224")]
DEFAULT_MODELS = PPOCR + LIGHT + TIMM
CNN_GROUPS = ("ppocr", "light", "timm")  # int8 is measured on CNNs: everything but the vit


def zoo() -> Any:
    """tests/zoo.py, imported from the repo's tests folder."""
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    import zoo as module

    return module


# ------------------------------------------------------------------------------------------- the model side


@dataclass
class Case:
    """One model, its benchmark input, onnxruntime's outputs on it, and calibration samples."""

    name: str
    path: Path
    feed: dict[str, np.ndarray]
    ref: dict[str, np.ndarray]
    inputs: list[str]
    outputs: list[str]
    work: Path
    feed_npz: Path = field(init=False)

    def __post_init__(self) -> None:
        self.feed_npz = self.work / "feed.npz"
        np.savez(self.feed_npz, **self.feed)

    def input_shape_args(self) -> list[str]:
        """`--input-shape` for every input whose model shape is not fully static."""
        import onnx

        model = onnx.load(str(self.path), load_external_data=False)
        init = {i.name for i in model.graph.initializer}
        args = []
        for value in model.graph.input:
            if value.name in init:
                continue
            dims = value.type.tensor_type.shape.dim
            if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
                shape = ",".join(str(s) for s in self.feed[value.name].shape)
                args += ["--input-shape", f"{value.name}:{shape}"]
        return args

    def calib_npy(self, count: int) -> Path:
        """[count, ...] samples for the (single) input: generated images where the model reads images
        (:func:`model_samples`: text for PP-OCR, scene-like photos for the timm CNNs), else the zoo's
        example inputs at seeds 1..count.

        The benchmark input is kept out of calibration (it is drawn at another seed) so the int8 figures
        are measured on an input the calibration did not see.
        """
        out = self.work / "calib.npy"
        if not out.exists():
            shape = self.feed[self.inputs[0]].shape
            drawn = model_samples(self.name, shape, count, seed=1, work=self.work / "calib_images")
            if drawn is None:
                z = zoo()
                drawn = np.concatenate([z.example_inputs(self.name, seed=s)[self.inputs[0]]
                                        for s in range(1, count + 1)], axis=0)
            np.save(out, drawn)
        return out


# PP-OCR reads text: its benchmark input and its int8 calibration samples are text images made by
# tests/calib/ocr_images.py (line crops for the classifier and recognizer, pages for the detector; the
# test suite's PP-OCR int8 tests use the same), preprocessed as PP-OCR's own pipeline does.  The zoo's
# plain printed page is far from what the classifier was trained on: calibrated and measured on such
# pages its int8 output is a coin flip (3 dB), while on text lines it keeps 35 dB.
OCR_INPUTS = {
    "ppocr_cls": ("line", (48, 192), "height", (0.5,), (0.5,)),
    "ppocr_rec": ("line", (48, 320), "height", (0.5,), (0.5,)),
    "ppocr_det": ("page", (320, 320), "stretch", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def ocr_samples(name: str, count: int, seed: int, work: Path) -> np.ndarray:
    """[count, 3, H, W] preprocessed text images for a PP-OCR model (``OCR_INPUTS``)."""
    from kiln.calib.images import ImageOptions

    kind, size, mode, mean, std = OCR_INPUTS[name]
    return image_samples(kind, ImageOptions(size=size, mode=mode, mean=mean, std=std, channels="bgr"), count, seed,
                         work)


def image_samples(kind: str, options: Any, count: int, seed: int, work: Path) -> np.ndarray:
    """[count, 3, H, W] images of ``kind`` ("line", "page", "natural") drawn by the test suite's generator
    (tests/calib/ocr_images.py) into ``work``, preprocessed with ``options`` (an ImageOptions with a size)."""
    from kiln.calib.images import load_image

    zoo()  # puts tests/ on sys.path
    if str(REPO / "tests" / "calib") not in sys.path:
        sys.path.insert(0, str(REPO / "tests" / "calib"))
    from ocr_images import write_images

    paths = write_images(work, kind, count, seed=seed)
    return np.stack([load_image(p, options, (None, 3, *options.size)) for p in paths]).astype(np.float32)


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def model_samples(name: str, shape: Sequence[int], count: int, seed: int, work: Path) -> np.ndarray | None:
    """[count, 3, H, W] generated images for a model that reads images: text for PP-OCR (``OCR_INPUTS``),
    scene-like photos with ImageNet preprocessing for the timm CNNs (random weights, but calibrated and
    measured on image statistics, not standard-normal noise: a network's activations on noise are not the
    ones it quantizes in use); None for the others."""
    if name in OCR_INPUTS:
        return ocr_samples(name, count, seed=seed, work=work)
    if not (name.startswith("timm_") and is_cnn(name) and len(shape) == 4 and shape[1] == 3):
        return None
    from kiln.calib.images import ImageOptions

    options = ImageOptions(size=(int(shape[2]), int(shape[3])), mode="shorter", mean=IMAGENET[0], std=IMAGENET[1])
    return image_samples("natural", options, count, seed, work)


def load_case(name: str, work: Path) -> Case:
    """The model's path, its benchmark input (a generated image for PP-OCR and the timm CNNs, see
    :func:`model_samples`; else the zoo's seed-0 example input) and onnxruntime's outputs."""
    z = zoo()
    path = Path(z.get_model(name))
    feed = z.example_inputs(name, seed=0)
    first = next(iter(feed))
    # A held-out generated image where the model reads images (calibration draws at seed 1).
    image = model_samples(name, feed[first].shape, 1, seed=1000, work=work / "input_image")
    if image is not None:
        feed = {first: image}
    from kiln.runtime import onnxruntime as kort

    ref = kort.run(path, feed)
    work.mkdir(parents=True, exist_ok=True)
    return Case(name, path, feed, ref, list(feed), list(ref), work)


def file_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_untouched(case: Case, digest: str, tool: str) -> None:
    """Stops the run if ``tool`` rewrote the model it was given (onnx2tf does, in place)."""
    if file_digest(case.path) != digest:
        raise SystemExit(f"{case.path} changed while {tool} ran: restore it (reinstall its package or rebuild the "
                         f"zoo model) before trusting any figure of this run")


def is_cnn(name: str) -> bool:
    return "vit_" not in name and "bert" not in name


# ------------------------------------------------------------------------------------------- conversions


@dataclass
class Converted:
    """A conversion's outcome: the main artifact (None when it failed), wall seconds, and why it failed."""

    tool: str
    artifact: Path | None
    seconds: float
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def last_line(text: str, limit: int = 140) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "failed")[:limit].replace("|", "/")


def run_cli(cmd: Sequence[str], timeout: float, cwd: Path | None = None,
            env: Mapping[str, str] | None = None) -> tuple[int, str, float]:
    """(exit code, stdout+stderr, wall seconds) of one converter process; exit -9 on a timeout."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env=dict(env) if env is not None else None)
    except subprocess.TimeoutExpired:
        return -9, f"timed out ({timeout:.0f} s)", time.perf_counter() - start
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start


def kiln_compile(case: Case, target: str, out: Path, flags: Sequence[str], timeout: float) -> Converted:
    """`kiln compile MODEL -t TARGET -o OUT [flags]`; the artifact is the first file the summary names or
    OUT/<stem>.<ext>."""
    ext = {"ncnn": ".param", "tflite": ".tflite"}[target]
    cmd = [sys.executable, "-m", "kiln", "compile", str(case.path), "-t", target, "-o", str(out), "-q",
           *case.input_shape_args(), *flags]
    code, text, secs = run_cli(cmd, timeout)
    artifact = out / (case.path.stem + ext)
    if code != 0 or not artifact.exists():
        why = last_line(text.replace(str(case.path.parent) + os.sep, ""), 220) if code else f"no {artifact.name} written"
        return Converted("kiln", None, secs, why)
    return Converted("kiln", artifact, secs)


# ------------------------------------------------------------------------------------------- child processes


def child(mode: str, spec: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """Runs this file as `python _converters.py MODE SPEC.json`; its last stdout line is JSON."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        code, text, _ = run_cli([sys.executable, str(THIS), mode, handle.name], timeout, env=env)
    finally:
        os.unlink(handle.name)
    if code != 0:
        why = f"crashed (signal {-code})" if code < 0 and code != -9 else last_line(text)
        return {"error": why}
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    return {"error": last_line(text)}


def check(runtime: str, artifact: Path, case: Case, bridge: str, timeout: float) -> dict[str, Any]:
    """Runs ``artifact`` once on the case's input; {"diff": {output: {max_rel, sqnr_db}}, "max_rel", "sqnr_db"}."""
    out = artifact.with_suffix(artifact.suffix + ".out.npz")
    spec = {"runtime": runtime, "artifact": str(artifact), "bridge": bridge, "feed": str(case.feed_npz),
            "out": str(out), "inputs": case.inputs, "outputs": case.outputs,
            "ref_shapes": {k: list(v.shape) for k, v in case.ref.items()}}
    res = child("check", spec, timeout)
    if "error" in res:
        return res
    from kiln.driver.verify import compare

    got = np.load(out)
    diffs = {}
    for name in case.outputs:
        if name not in got.files:
            return {"error": f"output {name!r} missing"}
        d = compare(case.ref[name], got[name])
        diffs[name] = {"max_rel": d.max_rel, "sqnr_db": d.sqnr_db, "note": d.note}
    worst = max(d["max_rel"] for d in diffs.values())
    sq = min(d["sqnr_db"] for d in diffs.values())
    return {"max_rel": worst, "sqnr_db": sq, "diff": diffs}


def time_all(runtime: str, entries: Mapping[str, Path], case: Case, threads: int, rounds: int,
             reps: int, timeout: float, with_ort: bool) -> dict[str, Any]:
    """Median seconds per run of each artifact (and onnxruntime's on the original if ``with_ort``)."""
    spec = {"runtime": runtime, "entries": {k: str(v) for k, v in entries.items()}, "feed": str(case.feed_npz),
            "threads": threads, "rounds": rounds, "reps": reps,
            "onnx": str(case.path) if with_ort else None}
    return child("time", spec, timeout)


def time_checked(runtime: str, row: dict[str, Any], arts: Mapping[str, Converted], labels: Sequence[str],
                 case: Case, args: Any) -> None:
    """Times every artifact in ``labels`` that converted and passed its check, at each of ``args.threads``,
    into ``row["time_<N>t"]``."""
    timed = {label: arts[label].artifact for label in labels
             if label in arts and arts[label].artifact is not None and "error" not in row[label].get("check", {})}
    for threads in args.threads:
        res = time_all(runtime, timed, case, threads, args.rounds, args.reps, args.timeout * 4, with_ort=True)
        row[f"time_{threads}t"] = res
        print(f"{case.name} {threads}t: {res}", file=sys.stderr)


def conv_cell(row: Mapping[str, Any], label: str, width: int = 80) -> str:
    """The "converts" cell: ``yes (S s)``, ``no: <error>`` or ``not run``."""
    e = row.get(label)
    if e is None:
        return "not run"
    if "error" in e:
        return "no: " + e["error"][:width]
    return f"yes ({e['convert_s']:.1f} s)"


# ------------------------------------------------------------------------------------------- runners (child side)


# ncnn's default options turn on fp16 storage and arithmetic where the CPU has F16C (x86) or fp16 (arm),
# which alone gives ~1e-4..1e-2 relative error on fp32 weights.  Every artifact here runs in fp32, as
# kiln.runtime.ncnn runs kiln's (its fp16=False default); `--ncnn-default-opts` (KILN_BENCH_NCNN_DEFAULT_OPTS=1
# in the children) keeps ncnn's defaults instead, for every artifact alike.
_FP32_OFF = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage")


def _ncnn_net(param: str, threads: int) -> Any:
    import ncnn

    net = ncnn.Net()
    net.opt.num_threads = threads
    net.opt.use_vulkan_compute = False
    if os.environ.get("KILN_BENCH_NCNN_DEFAULT_OPTS") != "1":
        for flag in _FP32_OFF:
            setattr(net.opt, flag, False)
    bin_path = param[: -len(".param")] + ".bin" if param.endswith(".param") else param + ".bin"
    if net.load_param(param) != 0:
        raise RuntimeError(f"ncnn cannot load {param}")
    if net.load_model(bin_path) != 0:
        raise RuntimeError(f"ncnn cannot load {bin_path}")
    return net


def _ncnn_blobs(param: str) -> tuple[list[str], list[str]]:
    """Input blobs (Input layers, in order) and output blobs (produced, never consumed, in order)."""
    lines = Path(param).read_text().split("\n")
    inputs, produced, consumed = [], [], set()
    for line in lines[2:]:
        parts = line.split()
        if len(parts) < 4:
            continue
        kind, n_in, n_out = parts[0], int(parts[2]), int(parts[3])
        bottoms, tops = parts[4:4 + n_in], parts[4 + n_in:4 + n_in + n_out]
        consumed.update(bottoms)
        produced += tops
        if kind == "Input":
            inputs += tops
    return inputs, [b for b in produced if b not in consumed]


def _ncnn_runner(param: str, threads: int, arrays: list[np.ndarray]) -> Any:
    """A no-argument callable doing one inference; returns the output Mats' arrays (no batch)."""
    import ncnn

    net = _ncnn_net(param, threads)
    in_blobs, out_blobs = _ncnn_blobs(param)
    if len(in_blobs) != len(arrays):
        raise RuntimeError(f"{len(in_blobs)} Input layers, {len(arrays)} inputs")
    mats = [ncnn.Mat(np.ascontiguousarray(a[0] if a.ndim > 1 and a.shape[0] == 1 else a)) for a in arrays]

    def once() -> list[np.ndarray]:
        ex = net.create_extractor()
        for blob, mat in zip(in_blobs, mats):
            ex.input(blob, mat)
        outs = []
        for blob in out_blobs:
            ret, mat = ex.extract(blob)
            if ret != 0:
                raise RuntimeError(f"ncnn extract {blob} returned {ret}")
            outs.append(np.array(mat))
        return outs

    return once


def _litert_runner(path: str, threads: int, arrays: list[np.ndarray]) -> Any:
    """One-inference callable on LiteRT (XNNPACK, the default delegate); NCHW inputs transposed to NHWC
    where the model's input is NHWC; returns the raw outputs."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    details = interp.get_input_details()
    if len(details) != len(arrays):
        raise RuntimeError(f"{len(details)} inputs in the file, {len(arrays)} given")
    feeds = []
    for det, arr in zip(details, _match_inputs(details, arrays)):
        want = tuple(det["shape"])
        if arr.shape != want and arr.ndim == 4 and arr.transpose(0, 2, 3, 1).shape == want:
            arr = arr.transpose(0, 2, 3, 1)
        if det["dtype"] != arr.dtype:
            scale, zero = det.get("quantization", (0.0, 0))
            if np.issubdtype(det["dtype"], np.integer) and scale:
                arr = np.clip(np.round(arr / scale + zero), np.iinfo(det["dtype"]).min,
                              np.iinfo(det["dtype"]).max)
            arr = arr.astype(det["dtype"])
        feeds.append((det["index"], np.ascontiguousarray(arr)))
    outs = interp.get_output_details()

    def once() -> list[np.ndarray]:
        for index, arr in feeds:
            interp.set_tensor(index, arr)
        interp.invoke()
        result = []
        for det in outs:
            val = interp.get_tensor(det["index"])
            scale, zero = det.get("quantization", (0.0, 0))
            if np.issubdtype(val.dtype, np.integer) and scale:
                val = (val.astype(np.float32) - zero) * scale
            result.append(val)
        return result

    once.output_names = [d["name"] for d in outs]  # type: ignore[attr-defined]
    return once


def _match_inputs(details: list[dict], arrays: list[np.ndarray]) -> list[np.ndarray]:
    return arrays  # every benchmark model has one input; several would need onnx2tf's name mapping


def _fit(value: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """An output in the reference's layout: as is, NHWC -> NCHW (onnx2tf), or reshaped (ncnn drops batch)."""
    shape = tuple(shape)
    if value.shape == shape:
        return value
    if value.ndim == 4 and len(shape) == 4 and value.transpose(0, 3, 1, 2).shape == shape:
        return value.transpose(0, 3, 1, 2)
    if value.ndim == 3 and len(shape) == 3 and value.transpose(0, 2, 1).shape == shape and shape[1] != shape[2]:
        return value.transpose(0, 2, 1)
    if value.size == math.prod(shape):
        return value.reshape(shape)
    return value


def _child_check(spec: dict[str, Any]) -> dict[str, Any]:
    feed = dict(np.load(spec["feed"]))
    arrays = [feed[n] for n in spec["inputs"]]
    shapes = spec["ref_shapes"]
    if spec["bridge"] == "kiln":
        import importlib

        bridge = importlib.import_module({"ncnn": "kiln.runtime.ncnn", "litert": "kiln.runtime.litert"}[spec["runtime"]])
        got = {k: np.asarray(v) for k, v in bridge.run(spec["artifact"], feed).items()}
    else:
        runner = (_ncnn_runner if spec["runtime"] == "ncnn" else _litert_runner)(spec["artifact"], 1, arrays)
        values = runner()
        names = list(spec["outputs"])
        if len(values) != len(names):
            raise RuntimeError(f"{len(values)} outputs from the artifact, {len(names)} in the model")
        if spec["runtime"] == "litert" and len(names) > 1:  # onnx2tf keeps ONNX output names (sanitized)
            by_name = dict(zip(runner.output_names, values))
            values = [by_name.get(n, v) for n, v in zip(names, values)]
        got = dict(zip(names, values))
    fitted = {n: _fit(np.asarray(got[n]), shapes[n]) for n in spec["outputs"] if n in got}
    np.savez(spec["out"], **fitted)
    return {"ok": True}


def _child_time(spec: dict[str, Any]) -> dict[str, Any]:
    feed = dict(np.load(spec["feed"]))
    arrays = list(feed.values())
    threads, rounds, reps = spec["threads"], spec["rounds"], spec["reps"]
    make = _ncnn_runner if spec["runtime"] == "ncnn" else _litert_runner
    runners = {label: make(path, threads, arrays) for label, path in spec["entries"].items()}
    if spec.get("onnx"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # don't steal the others' cores
        sess = ort.InferenceSession(spec["onnx"], opts, providers=["CPUExecutionProvider"])
        runners["onnxruntime"] = lambda: sess.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():  # warm-up: first-run allocations, packing, XNNPACK weight caches
        fn()
        fn()
    for r in range(rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for label in order:
            fn = runners[label]
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t0)
    return {"median": {k: statistics.median(v) for k, v in times.items()},
            "min": {k: min(v) for k, v in times.items()}, "runs": {k: len(v) for k, v in times.items()}}


# ------------------------------------------------------------------------------------------- formatting


def fmt_err(res: Mapping[str, Any] | None) -> str:
    if not res:
        return "—"
    if "error" in res:
        return "fails: " + str(res["error"])[:70]
    return f"{res['max_rel']:.1e}"


def fmt_sqnr(res: Mapping[str, Any] | None) -> str:
    if not res:
        return "—"
    if "error" in res:
        return "fails: " + str(res["error"])[:70]
    return "inf" if math.isinf(res["sqnr_db"]) and res["sqnr_db"] > 0 else f"{res['sqnr_db']:.1f} dB"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def time_ratio(row: Mapping[str, Any], threads: int, a: str, b: str) -> str:
    """`median ratio (ratio of the fastest runs)` of labels a / b at ``threads``: on a shared machine the
    median carries the other processes' noise, the fastest run less so."""
    res = row.get(f"time_{threads}t", {})
    med, low = res.get("median", {}), res.get("min", {})
    if a not in med or b not in med or not med[b] or not low.get(b):
        return "—"
    return f"{med[a] / med[b]:.2f} ({low[a] / low[b]:.2f})"


def machine_line() -> str:
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return f"{os.cpu_count()} cores, load average {load:.1f} at the start"


def main(argv: list[str]) -> int:
    mode, spec_path = argv[0], argv[1]
    spec = json.loads(Path(spec_path).read_text())
    result = _child_check(spec) if mode == "check" else _child_time(spec)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
