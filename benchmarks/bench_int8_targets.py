"""int8 accuracy on every runtime kiln targets, over many held-out images: PP-OCR and the timm CNNs.

The converter benchmarks (bench_ncnn.py, bench_tflite.py) measure int8 on one held-out input per model,
beside latency.  This one measures accuracy only, and better: for each model it compiles kiln's int8 artifact for the ONNX
(Q/DQ on onnxruntime), NCNN and TFLite targets with each ``--variants`` entry: ``entropy`` (kiln's default:
TensorRT's KL search with kiln's guard), ``trt`` (``--entropy-floor 0``: the KL search alone) and
``min-sqnr`` (``--min-sqnr DB`` mixed precision), then compares every artifact on its own runtime with
onnxruntime on the float model over ``--test`` held-out images; calibration uses ``--count`` others, made by
the same generators as the test suite's: text images for the real-weight PP-OCR models, scene-like images
(``ocr_images.natural``, ImageNet preprocessing) for the timm CNNs (random weights).

Reported per artifact: the output SQNR over all held-out images together, the median of the per-image
SQNR (one hard image, a classifier's near-tie, weighs heavily on the first), the argmax agreement for the
text recognizer and the classifier, the layers kept in float, the output SQNR kiln measured on calibration
samples (its int8 report), and the compile time.

    python benchmarks/bench_int8_targets.py [--models ppocr_det,ppocr_rec,ppocr_cls] [--min-sqnr 25]
        [--variants entropy,trt,min-sqnr]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _converters as cv

STATIC_SHAPES = {"ppocr_det": "1,3,320,320", "ppocr_rec": "1,3,48,320", "ppocr_cls": "1,3,48,192"}
"""PP-OCR's dynamic input shapes, fixed for the runs; the timm exports are static (1x3x224x224)."""
NO_ARGMAX = ("ppocr_det",)  # every other model's last axis is a class distribution
TARGETS = ("onnx", "ncnn", "tflite")


def _runner(target: str, artifact: Path, input_name: str):
    from kiln.runtime import litert, ncnn, onnxruntime

    run = {"onnx": onnxruntime.run, "ncnn": ncnn.run, "tflite": litert.run}[target]
    return lambda x: next(iter(run(artifact if target != "onnx" else str(artifact), {input_name: x}).values()))


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(((ref.astype(np.float64) - got) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref.astype(np.float64) ** 2).sum()) / noise)


def samples(name: str, shape: list, count: int, seed: int, work: Path) -> np.ndarray:
    """[count, 3, H, W] preprocessed images: text for PP-OCR, scene-like photos for the others."""
    drawn = cv.model_samples(name, shape, count, seed, work)
    if drawn is None:
        raise SystemExit(f"{name}: this benchmark measures models that read images (PP-OCR, the timm CNNs)")
    return drawn


def measure(name: str, work: Path, count: int, test: int, variants: dict[str, list[str]]) -> list[dict]:
    from kiln.runtime import onnxruntime

    model = Path(cv.zoo().get_model(name))
    first = onnxruntime.session(str(model)).get_inputs()[0]
    input_name = first.name
    shape = [int(d) for d in STATIC_SHAPES[name].split(",")] if name in STATIC_SHAPES else first.shape
    calib = work / f"{name}_calib.npy"
    np.save(calib, samples(name, shape, count, 1, work / f"{name}_calib_images"))
    held_out = samples(name, shape, test, 1000, work / f"{name}_test_images")
    ref = np.stack([next(iter(onnxruntime.run(str(model), {input_name: x[None]}).values()))[0] for x in held_out])
    rows = []
    for label, flags in variants.items():
        for target in TARGETS:
            out = work / f"{name}_{label}_{target}"
            shapes = ["--input-shape", f"{input_name}:{STATIC_SHAPES[name]}"] if name in STATIC_SHAPES else []
            cmd = [sys.executable, "-m", "kiln", "compile", str(model), "-t", target, "-o", str(out), "-q",
                   *shapes, "--int8", "--calib", str(calib), *flags]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            seconds = time.perf_counter() - start
            row: dict = {"model": name, "variant": label, "target": target, "compile_s": seconds}
            if proc.returncode != 0:
                row["error"] = cv.last_line(proc.stderr, 200)
                rows.append(row)
                continue
            ext = {"onnx": ".onnx", "ncnn": ".param", "tflite": ".tflite"}[target]
            artifact = out / (model.stem + ext)
            run = _runner(target, artifact, input_name)
            got = np.stack([np.asarray(run(x[None])).reshape(ref.shape[1:]) for x in held_out])
            table = json.loads((out / (model.stem + ".calib.json")).read_text())
            row.update({
                "sqnr_db": sqnr(ref, got),
                "median_db": float(np.median([sqnr(r, g) for r, g in zip(ref, got)])),
                "argmax": float((ref.argmax(-1) == got.argmax(-1)).mean()) if name not in NO_ARGMAX else None,
                "kept_float": len(table["kept_float"]),
                "layers": len(table["layers"]) + len(table["kept_float"]),
                "calib_sqnr_db": table.get("output_sqnr_db"),
            })
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# int8 on every target: entropy calibration, guarded and not, and with --min-sqnr",
        "",
        (f"`python benchmarks/bench_int8_targets.py {' '.join(sys.argv[1:])}`; {cv.machine_line()}."),
        "",
        (f"Calibration: {args.count} generated images (PP-OCR: text line crops for rec/cls, pages for det; timm "
        "CNNs, random weights: scene-like images with ImageNet preprocessing). *entropy* is kiln's default: "
        "TensorRT's KL search, with kiln's guard (a tensor the KL threshold would leave below 25 dB takes the mse "
        f"threshold); *--entropy-floor 0* is the KL search alone. Measured: {args.test} other images of the same "
        "generator, each artifact on its own runtime (onnxruntime for the Q/DQ ONNX, ncnn, LiteRT) against "
        "onnxruntime on the float model. *SQNR* is over all held-out images together; *median* is the median of "
        "the per-image SQNR; *argmax*: agreement of the class (recognizer: per time step); *calib SQNR*: the output "
        "SQNR kiln's int8 report measured on calibration samples (8; 32 with --min-sqnr, `--check-samples`)."),
        "",
        "| model | calibration | target | SQNR dB | median dB | argmax | float layers | calib SQNR dB | compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | {r['target']} | error: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['variant']} | {r['target']} | {fmt(r['sqnr_db'])} | {fmt(r['median_db'])} "
                     f"| {fmt(r['argmax'], '.3f')} | {r['kept_float']} of {r['layers']} | {fmt(r['calib_sqnr_db'])} "
                     f"| {r['compile_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="ppocr_det,ppocr_rec,ppocr_cls")
    p.add_argument("--count", type=int, default=64, help="calibration images (default 64)")
    p.add_argument("--test", type=int, default=32, help="held-out images (default 32)")
    p.add_argument("--min-sqnr", type=float, default=25.0, help="the mixed-precision variant's --min-sqnr")
    p.add_argument("--variants", default="entropy,trt,min-sqnr",
                   help="entropy (kiln's default), trt (--entropy-floor 0), min-sqnr (comma-separated)")
    p.add_argument("--out", default=str(cv.REPO / "benchmarks" / "results" / "int8_targets"))
    args = p.parse_args()
    known = {"entropy": ("entropy", []), "trt": ("entropy --entropy-floor 0", ["--entropy-floor", "0"]),
             "min-sqnr": (f"entropy --min-sqnr {args.min_sqnr:g}", ["--min-sqnr", str(args.min_sqnr)])}
    wanted = [v for v in args.variants.split(",") if v]
    unknown = [v for v in wanted if v not in known]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r} (choose from {', '.join(known)})")
    variants = dict(known[v] for v in wanted)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-int8-") as tmp:
        for name in args.models.split(","):
            rows += measure(name, Path(tmp), args.count, args.test, variants)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    out.with_suffix(".md").write_text(table(rows, args))
    print(table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
