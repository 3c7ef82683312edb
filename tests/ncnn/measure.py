"""Measures kiln's ncnn target on the zoo: fp32 / fp16-storage error, int8 SQNR, latency vs onnxruntime.

    python tests/ncnn/measure.py [NAME ...]      # default: every PP-OCR, light and timm model available

Each model is compiled three ways and run on ncnn's runtime (1 thread, fp16 arithmetic off)
against onnxruntime on the original model (1 thread).  fp32/fp16: max |a-b| / max |a| on
``zoo.example_inputs``; int8: output SQNR over held-out inputs (PP-OCR: rendered text
images, entropy calibration on 16 others; timm: random inputs); latency: median of 5 runs,
ncnn fp32 over onnxruntime.  The light models run with random weights
(``test_zoo.randomized_light``).  Prints a Markdown table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent), str(_HERE.parent / "calib")]

import zoo
from kiln.calib import CalibrationConfig
from kiln.driver.compile import compile as kiln_compile
from kiln.errors import KilnError
from kiln.quant import sqnr_db
from kiln.runtime import ncnn as ncnn_runtime

IMAGES = {"ppocr_cls": ("line", (48, 192), "height", (0.5,), (0.5,)),
          "ppocr_rec": ("line", (48, 320), "height", (0.5,), (0.5,)),
          "ppocr_det": ("page", (320, 320), "stretch", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def _images(name: str, seed: int, count: int, tmp: Path) -> np.ndarray:
    from kiln.calib.images import ImageOptions, load_image
    from ocr_images import write_images

    kind, size, mode, mean, std = IMAGES[name]
    options = ImageOptions(size=size, mode=mode, mean=mean, std=std, channels="bgr")
    folder = Path(tempfile.mkdtemp(dir=tmp))
    write_images(folder, kind, count, seed=seed)
    return np.stack([load_image(p, options, (None, 3, *size)) for p in sorted(folder.glob("*.png"))]).astype(np.float32)


def _rel(ref: list[np.ndarray], got: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(ref, got.values()))


def _median_s(fn, runs: int = 5) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(name: str) -> dict[str, str]:
    # Everything a model writes (random-weight copies, three compiles, images) goes away with it:
    # the light models alone are gigabytes.
    with tempfile.TemporaryDirectory(prefix="kiln-ncnn-measure-") as tmp:
        return _measure(name, Path(tmp))


def _measure(name: str, tmp: Path) -> dict[str, str]:
    import onnxruntime as ort

    model = zoo.get_model(name)
    if name.startswith("light_"):
        # Their shipped weights are one value each (a uniform output): measure with random ones.
        from test_zoo import randomized_light

        model = randomized_light(name, tmp)
    shapes = {"x": zoo.PPOCR[name][1]} if name in zoo.PPOCR else None
    feed = zoo.example_inputs(name)
    ref = zoo.run_onnxruntime(model, feed)
    row: dict[str, str] = {"model": name}
    out = tmp
    fp32 = kiln_compile(model, "ncnn", out / "fp32", input_shapes=shapes).artifacts[0]
    row["fp32"] = f"{_rel(ref, ncnn_runtime.run(fp32, feed)):.1e}"
    fp16 = kiln_compile(model, "ncnn", out / "fp16", input_shapes=shapes, fp16=True).artifacts[0]
    row["fp16"] = f"{_rel(ref, ncnn_runtime.run(fp16, feed)):.1e}"
    (iname, _), = feed.items()
    if name in IMAGES:
        calib, test = _images(name, 1, 16, tmp), _images(name, 2, 4, tmp)
    else:
        calib = np.concatenate([zoo.example_inputs(name, seed=s)[iname] for s in range(1, 9)])
        test = np.concatenate([zoo.example_inputs(name, seed=s)[iname] for s in (20, 21)])
    try:
        int8 = kiln_compile(model, "ncnn", out / "int8", input_shapes=shapes, int8=True,
                            calibration=CalibrationConfig(data={iname: calib}, progress=False)).artifacts[0]
        net = ncnn_runtime.load_net(int8)
        want = np.concatenate([zoo.run_onnxruntime(model, {iname: test[i:i + 1]})[0] for i in range(len(test))])
        got = np.concatenate([next(iter(ncnn_runtime.run(int8, {iname: test[i:i + 1]}, net=net).values()))
                              for i in range(len(test))])
        row["int8"] = f"{sqnr_db(want, got):.1f} dB"
    except KilnError as exc:
        row["int8"] = "n/a: " + exc.message[:90]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    net = ncnn_runtime.load_net(fp32, threads=1)
    t_ort = _median_s(lambda: sess.run(None, feed))
    t_ncnn = _median_s(lambda: ncnn_runtime.run(fp32, feed, net=net))
    row["latency"] = f"{t_ncnn / t_ort:.2f}"
    return row


def main(argv: list[str]) -> int:
    names = argv or (zoo.list_models("ppocr") + zoo.list_models("light")
                     + [n for n in zoo.list_models("timm") if zoo.available(n, build=False)[0]])
    print("| model | fp32 max rel err | fp16 storage max rel err | int8 SQNR | ncnn/ORT latency (1 thread) |")
    print("|---|---|---|---|---|")
    for name in names:
        try:
            row = measure(name)
            print(f"| {name} | {row['fp32']} | {row['fp16']} | {row['int8']} | {row['latency']} |", flush=True)
        except Exception as exc:  # noqa: BLE001 - a measurement script reports and goes on
            print(f"| {name} | failed: {type(exc).__name__}: {str(exc)[:80]} | | | |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
