"""kiln's ncnn target against pnnx (PyPI), same ONNX in, same ncnn runtime.

For each model: convert with pnnx (`pnnx M.onnx inputshape=[..] fp16=0`, in a
temporary copy, as it writes beside the model) and with `kiln compile M -t
ncnn`, each in its own process and timed; run every artifact once on ncnn's
Python package and compare with onnxruntime on the original model (max
relative error, as `kiln verify`); then time them on ncnn at 1 and 2 threads,
interleaved with onnxruntime at the same thread count (median of rounds x
reps runs after warm-up).  Also: fp16 weight storage (pnnx's default fp16=1,
kiln's --fp16) for accuracy, and kiln's int8 (--int8 --calib, calibration on
N generated images: text for PP-OCR, scene-like photos for the timm CNNs; the
zoo's example inputs at seeds 1..N for the others; the measured input is held
out) for SQNR and int8 / fp32 latency.  Read the ratios, not the seconds.

    python benchmarks/bench_ncnn.py                                   # every model
    python benchmarks/bench_ncnn.py --models ppocr_cls timm_resnet50_ts --tools pnnx
    python benchmarks/bench_ncnn.py --write benchmarks/results/ncnn.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _converters as cv

TOOLS = ("pnnx", "kiln")


def pnnx_convert(case: cv.Case, fp16: bool, timeout: float) -> cv.Converted:
    """pnnx on a copy of the model (it writes all of its files beside the model)."""
    pnnx = shutil.which("pnnx")
    if pnnx is None:
        return cv.Converted("pnnx", None, 0.0, "pnnx is not installed (pip install pnnx)")
    folder = case.work / ("pnnx_fp16" if fp16 else "pnnx")
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.onnx"
    if not model.exists():
        shutil.copy(case.path, model)
    kinds = {"float32": "f32", "float16": "f16", "int64": "i64", "int32": "i32", "int8": "i8", "uint8": "u8"}
    shapes = ",".join("[" + ",".join(str(d) for d in case.feed[n].shape) + "]" + kinds.get(str(case.feed[n].dtype), "")
                      for n in case.inputs)
    code, text, secs = cv.run_cli([pnnx, model.name, f"inputshape={shapes}", f"fp16={int(fp16)}"], timeout,
                                  cwd=folder)
    param = folder / "model.ncnn.param"
    if code != 0 or not param.exists() or not (folder / "model.ncnn.bin").exists():
        why = cv.last_line(text) if code else "no model.ncnn.param written"
        return cv.Converted("pnnx", None, secs, why)
    layers = [ln.split()[0] for ln in param.read_text().splitlines()[2:] if ln.strip()]
    return cv.Converted("pnnx", param, secs, extra={"layers": len(layers)})


def ncnn_layers(param: Path | None) -> dict[str, int]:
    counts: dict[str, int] = {}
    if param is None:
        return counts
    for line in param.read_text().splitlines()[2:]:
        if line.strip():
            counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    return counts


def bench_model(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    case = cv.load_case(name, root / name)
    row: dict[str, Any] = {"model": name}
    arts: dict[str, cv.Converted] = {}
    tools = args.tools.split(",")
    digest = cv.file_digest(case.path)
    if "pnnx" in tools:
        arts["pnnx"] = pnnx_convert(case, False, args.timeout)
        if args.fp16:
            arts["pnnx_fp16"] = pnnx_convert(case, True, args.timeout)
    cv.check_untouched(case, digest, "pnnx")
    if "kiln" in tools:
        arts["kiln"] = cv.kiln_compile(case, "ncnn", case.work / "kiln", [], args.timeout)
        if args.fp16:
            arts["kiln_fp16"] = cv.kiln_compile(case, "ncnn", case.work / "kiln_fp16", ["--fp16"], args.timeout)
        if args.int8 and cv.is_cnn(name) and len(case.inputs) == 1:
            calib = case.calib_npy(args.calib_count)
            arts["kiln_int8"] = cv.kiln_compile(case, "ncnn", case.work / "kiln_int8", ["--int8", "--calib", str(calib)],
                                                args.timeout * 2)
    for label, conv in arts.items():
        entry: dict[str, Any] = {"convert_s": conv.seconds}
        if conv.artifact is None:
            entry["error"] = conv.error
        else:
            bridge = "kiln" if label.startswith("kiln") and args.kiln_bridge else "own"
            entry["check"] = cv.check("ncnn", conv.artifact, case, bridge, args.timeout)
            if bridge == "kiln" and "error" in entry["check"]:  # the bridge may be late: say so, use ours
                entry["bridge_error"] = entry["check"]["error"]
                entry["check"] = cv.check("ncnn", conv.artifact, case, "own", args.timeout)
            entry["layers"] = ncnn_layers(conv.artifact)
        row[label] = entry
        print(f"{name} {label}: {json.dumps({k: v for k, v in entry.items() if k != 'layers'})[:300]}", file=sys.stderr)
    cv.time_checked("ncnn", row, arts, ("pnnx", "kiln", "kiln_int8"), case, args)
    return row


def _err_cell(row: dict[str, Any], label: str) -> str:
    e = row.get(label)
    if e is None or "error" in e:
        return "—"
    return cv.fmt_err(e.get("check"))


def _median(row: dict[str, Any], threads: int, label: str) -> float | None:
    res = row.get(f"time_{threads}t", {})
    return res.get("median", {}).get(label)


def _act_fusions(row: dict[str, Any], label: str) -> str:
    """Standalone activation layers ncnn could have fused into a Convolution (HardSwish, Swish, Mish, ...)."""
    e = row.get(label) or {}
    layers = e.get("layers", {})
    n = sum(layers.get(k, 0) for k in ("HardSwish", "Swish", "Mish", "HardSigmoid", "Sigmoid", "ReLU", "Clip"))
    return f"{sum(layers.values())} / {n}" if layers else "—"


def to_markdown(rows: list[dict[str, Any]], command: str, args: argparse.Namespace, machine: str) -> str:
    ts = args.threads
    lines = [
        "# ncnn: kiln vs pnnx, same ONNX in, same ncnn runtime",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}; each converter in its own process; every artifact checked in its own process;",
        (f"latency: median of {args.rounds} interleaved rounds x {args.reps} runs after 2 warm-up runs, all artifacts "
        "and onnxruntime (ORT_ENABLE_ALL, spinning off) timed in one process per thread count."),
        f"Peers: {_versions()}. ncnn options: "
        + ("its defaults (fp16 storage and arithmetic where the CPU has them)." if args.ncnn_default_opts else
           "fp32 (use_fp16_storage/packed/arithmetic and use_bf16_storage off, as kiln.runtime.ncnn runs), "
           "for every file alike."),
        "",
        "- converts: wall seconds of the converter process (imports included).",
        ("- rel err: max |a - b| / max |a| against onnxruntime on the original model, on the zoo's example input "
        "(a generated image where the model reads images: a line crop for PP-OCR cls/rec, a page for det, a scene-like photo for the timm CNNs; standard normal otherwise); pnnx fp32 is `fp16=0`, pnnx fp16 its "
        "default `fp16=1`, kiln fp16 is `--fp16` (fp16 weight storage)."),
        ("- `k/p Nt`: kiln's ncnn latency / pnnx's at N threads (below 1: kiln faster); `k/ORT 1t`: kiln's ncnn "
        "latency / onnxruntime's on the original at 1 thread; `p/ORT 1t` the same for pnnx. Each latency ratio "
        "is `ratio of medians (ratio of the fastest runs)`: the machine is shared, and at 2 threads a busy "
        "second core stalls ncnn's OpenMP barriers, so the 2-thread medians are mostly noise."),
        ("- int8: kiln `--int8 --calib` (entropy calibration on N samples: generated text images for PP-OCR, "
        "scene-like photos for the timm CNNs, the zoo's example inputs otherwise; measured on a held-out input): output SQNR against onnxruntime fp32, and its ncnn latency / kiln fp32's at 1 thread."),
        ("- layers / act: ncnn layers in the .param / of them standalone activation layers "
        "(ReLU, Clip, Sigmoid, HardSwish, HardSigmoid, Swish, Mish)."),
        "",
        "| model | pnnx converts | kiln converts | pnnx rel err | kiln rel err | pnnx fp16 rel err | kiln fp16 rel err | "
        + " | ".join(f"k/p {t}t" for t in ts)
        + " | k/ORT 1t | p/ORT 1t | kiln int8 SQNR | int8/fp32 1t | layers/act pnnx | layers/act kiln |",
        "|---" * (13 + len(ts)) + "|",
    ]
    for row in rows:
        int8 = row.get("kiln_int8")
        if int8 is None:
            sq = "—"
        elif "error" in int8:
            sq = "no: " + int8["error"][:60]
        else:
            sq = cv.fmt_sqnr(int8.get("check"))
        cells = [
            row["model"], cv.conv_cell(row, "pnnx"), cv.conv_cell(row, "kiln"), _err_cell(row, "pnnx"),
            _err_cell(row, "kiln"), _err_cell(row, "pnnx_fp16"), _err_cell(row, "kiln_fp16"),
            *[cv.time_ratio(row, t, "kiln", "pnnx") for t in ts],
            cv.time_ratio(row, 1, "kiln", "onnxruntime"), cv.time_ratio(row, 1, "pnnx", "onnxruntime"), sq,
            cv.time_ratio(row, 1, "kiln_int8", "kiln"),
            _act_fusions(row, "pnnx"), _act_fusions(row, "kiln"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    pn = [r for r in rows if "pnnx" in r]
    kn = [r for r in rows if "kiln" in r]
    conv_p = sum(1 for r in pn if "error" not in r["pnnx"])
    conv_k = sum(1 for r in kn if "error" not in r["kiln"])
    lines += ["", f"Converted: pnnx {conv_p} of {len(pn)}, kiln {conv_k} of {len(kn)}."]
    notes = sorted({f"{r['model']}: kiln.runtime.ncnn failed ({r[lbl]['bridge_error'][:100]}); its row used the "
                    "benchmark's own ncnn runner" for r in rows for lbl in ("kiln", "kiln_fp16", "kiln_int8")
                    if "bridge_error" in r.get(lbl, {})})
    lines += [""] + [f"- {n}" for n in notes] if notes else []
    seconds = ["", "Medians in ms (`kiln / pnnx / kiln int8 / onnxruntime`):", ""]
    for row in rows:
        parts = []
        for t in ts:
            med = row.get(f"time_{t}t", {}).get("median", {})
            err = row.get(f"time_{t}t", {}).get("error")
            cell = " / ".join(f"{med[k] * 1e3:.1f}" if k in med else "—"
                              for k in ("kiln", "pnnx", "kiln_int8", "onnxruntime"))
            parts.append(f"{t}t {cell}" + (f" (timing failed: {err[:80]})" if err else ""))
        seconds.append(f"- {row['model']}: " + "; ".join(parts))
    return "\n".join(lines + seconds) + "\n"


def _versions() -> str:
    import importlib.metadata as md

    out = []
    for dist in ("pnnx", "ncnn", "onnxruntime", "onnx"):
        try:
            out.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            out.append(f"{dist} not installed")
    return ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=cv.DEFAULT_MODELS)
    parser.add_argument("--tools", default=",".join(TOOLS), help="pnnx,kiln or one of them")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--reps", type=int, default=2, help="runs of each artifact per round")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per conversion or check")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false", help="skip the fp16-storage files")
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip kiln's int8 files")
    parser.add_argument("--calib-count", type=int, default=8, help="calibration samples for --int8")
    parser.add_argument("--no-kiln-bridge", dest="kiln_bridge", action="store_false",
                        help="check kiln's files with the benchmark's runner, not kiln.runtime.ncnn")
    parser.add_argument("--ncnn-default-opts", action="store_true",
                        help="run ncnn with its default options (fp16 storage/arithmetic where the CPU has them) "
                        "instead of fp32; kiln's files are then checked with the benchmark's runner too")
    parser.add_argument("--keep", type=Path, help="keep the artifacts in this folder")
    parser.add_argument("--json", type=Path, help="also write the raw rows as JSON")
    parser.add_argument("--write", type=Path, help="write the markdown to this file")
    parser.add_argument("--command", help="with --from-json: the command that made it")
    parser.add_argument("--machine", help="with --from-json: the machine line")
    parser.add_argument("--from-json", type=Path, help="only render the markdown of an earlier --json")
    args = parser.parse_args(argv)
    if args.from_json:
        rows = json.loads(args.from_json.read_text())
        text = to_markdown(rows, args.command or "(see --json)", args, args.machine or "")
        print(text)
        if args.write:
            args.write.write_text(text)
        return 0
    if args.ncnn_default_opts:  # the children read it; kiln's bridge would run fp32 regardless
        os.environ["KILN_BENCH_NCNN_DEFAULT_OPTS"] = "1"
        args.kiln_bridge = False
    command = "python benchmarks/bench_ncnn.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = cv.machine_line()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_ncnn_") as tmp:
        root = args.keep or Path(tmp)
        for name in args.models:
            ok, why = cv.zoo().available(name, build=False)
            if not ok:
                print(f"skip {name}: {why}", file=sys.stderr)
                continue
            rows.append(bench_model(name, args, root))
            if args.json:  # as we go: a long run that dies keeps its rows
                args.json.write_text(json.dumps(rows, indent=1, default=str))
            if args.keep is None:  # vgg19's files alone are over 2 GB
                shutil.rmtree(root / name, ignore_errors=True)
    text = to_markdown(rows, command.strip(), args, machine)
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
