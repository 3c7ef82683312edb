"""int8 accuracy of the real-weight PP-OCR models on every runtime kiln targets, over many held-out text images.

The converter benchmarks (bench_ncnn.py, bench_tflite.py) measure int8 on one held-out input per model,
beside latency.  This one measures accuracy only, and better: for PP-OCR det, rec and cls it compiles
kiln's int8 artifact for the ONNX (Q/DQ on onnxruntime), NCNN and TFLite targets, each with entropy
calibration (TensorRT's KL search, kiln's default) alone and with ``--min-sqnr DB`` mixed precision, then
compares every artifact on its own runtime with onnxruntime on the float model over ``--test`` held-out
text images (calibration uses ``--count`` others, made by the same generator as the test suite's).

Reported per artifact: the output SQNR over all held-out images together, the median of the per-image
SQNR (one hard image, a classifier's near-tie, weighs heavily on the first), the argmax agreement for the
text recognizer and the classifier, the layers kept in float, the output SQNR kiln measured on calibration
samples (its int8 report), and the compile time.

    python benchmarks/bench_int8_targets.py [--models ppocr_det,ppocr_rec,ppocr_cls] [--min-sqnr 25]
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
ARGMAX = ("ppocr_rec", "ppocr_cls")  # outputs whose last axis is a class distribution
TARGETS = ("onnx", "ncnn", "tflite")


def _runner(target: str, artifact: Path, input_name: str):
    from kiln.runtime import litert, ncnn, onnxruntime

    run = {"onnx": onnxruntime.run, "ncnn": ncnn.run, "tflite": litert.run}[target]
    return lambda x: next(iter(run(artifact if target != "onnx" else str(artifact), {input_name: x}).values()))


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(((ref.astype(np.float64) - got) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref.astype(np.float64) ** 2).sum()) / noise)


def measure(name: str, work: Path, count: int, test: int, variants: dict[str, list[str]]) -> list[dict]:
    from kiln.runtime import onnxruntime

    model = Path(cv.zoo().get_model(name))
    calib = work / f"{name}_calib.npy"
    np.save(calib, cv.ocr_samples(name, count, seed=1, work=work / f"{name}_calib_images"))
    held_out = cv.ocr_samples(name, test, seed=1000, work=work / f"{name}_test_images")
    input_name = onnxruntime.session(str(model)).get_inputs()[0].name
    ref = np.stack([next(iter(onnxruntime.run(str(model), {input_name: x[None]}).values()))[0] for x in held_out])
    rows = []
    for label, flags in variants.items():
        for target in TARGETS:
            out = work / f"{name}_{label}_{target}"
            cmd = [sys.executable, "-m", "kiln", "compile", str(model), "-t", target, "-o", str(out), "-q",
                   "--input-shape", f"{input_name}:{STATIC_SHAPES[name]}", "--int8", "--calib", str(calib), *flags]
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
                "argmax": float((ref.argmax(-1) == got.argmax(-1)).mean()) if name in ARGMAX else None,
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
        "# int8 on every target: PP-OCR, entropy calibration, with and without --min-sqnr",
        "",
        (f"`python benchmarks/bench_int8_targets.py --count {args.count} --test {args.test} --min-sqnr {args.min_sqnr}`"
        f"; {cv.machine_line()}."),
        "",
        (f"Calibration: {args.count} generated text images (line crops for rec/cls, pages for det), entropy "
        f"(TensorRT's KL search). Measured: {args.test} other images of the same generator, each artifact on its "
        "own runtime (onnxruntime for the Q/DQ ONNX, ncnn, LiteRT) against onnxruntime on the float model. "
        "*SQNR* is over all held-out images together; *median* is the median of the per-image SQNR; *argmax*: "
        "agreement of the class (recognizer: per time step); *calib SQNR*: the output SQNR kiln's int8 report "
        "measured on calibration samples (8; 32 with --min-sqnr, `--check-samples`)."),
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
    p.add_argument("--out", default=str(cv.REPO / "benchmarks" / "results" / "int8_targets"))
    args = p.parse_args()
    variants = {"entropy": [], f"entropy --min-sqnr {args.min_sqnr:g}": ["--min-sqnr", str(args.min_sqnr)]}
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
