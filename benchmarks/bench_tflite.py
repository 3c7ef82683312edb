"""kiln's TFLite target against onnx2tf (PyPI), same ONNX in, same LiteRT runtime.

onnx2tf needs TensorFlow, so it lives in its own virtual environment (not the
project's): by default /work/.venvs/onnx2tf, made with

    python3.12 -m venv /work/.venvs/onnx2tf
    /work/.venvs/onnx2tf/bin/pip install onnx2tf==2.6.9 "tensorflow==2.21.*" tf-keras onnx onnxruntime \\
        onnxsim onnx_graphsurgeon sng4onnx psutil ml_dtypes ai-edge-litert

(onnx2tf 2.x needs Python >= 3.12), and is called by path (`--onnx2tf-python`).
Without it the onnx2tf columns say so and kiln's are still measured.

For each model: convert with onnx2tf (`onnx2tf -i M -o DIR -ois NAME:SHAPE`,
which writes <stem>_float32.tflite and <stem>_float16.tflite) and with `kiln
compile M -t tflite` (and `--fp16`), each in its own process and timed (wall
seconds, imports included); int8 full-integer with onnx2tf's `-oiqt -cind`
(per-channel; on failure again with `-tb tf_converter`) and kiln's `--int8
--calib`, both calibrated on the same samples (generated images: text for
PP-OCR, scene-like photos for the timm CNNs; the zoo's example inputs at seeds
1..N for the others; the measured input is held out).  Every file runs once on LiteRT
(ai_edge_litert, XNNPACK) against onnxruntime on the original; then the float32
and int8 files are timed at 1 and 2 threads, interleaved with onnxruntime.

    python benchmarks/bench_tflite.py
    python benchmarks/bench_tflite.py --models ppocr_cls --tools onnx2tf
    python benchmarks/bench_tflite.py --write benchmarks/results/tflite.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _converters as cv

TOOLS = ("onnx2tf", "kiln")
DEFAULT_ONNX2TF_PYTHON = Path("/work/.venvs/onnx2tf/bin/python")


def _onnx2tf_cmd(python: Path) -> list[str]:
    return [str(python), "-c", "import sys; from onnx2tf import main; sys.argv[0] = 'onnx2tf'; sys.exit(main())"]


def _private_copy(case: cv.Case) -> Path:
    """The model copied into the case's work folder, the only path onnx2tf is given.

    onnx2tf runs onnxsim on its input and writes the simplified model back over the file it was given (seen
    with onnx2tf 2.6.9: every light zoo graph in the onnx package and every timm export in the zoo cache was
    rewritten in place, and 8 GB of its temporary .data files were left beside them), so it must never see
    the zoo's or a package's own file.
    """
    copy = case.work / "onnx2tf_input" / case.path.name
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(case.path, copy)
    return copy


def onnx2tf_convert(case: cv.Case, python: Path, timeout: float) -> dict[str, cv.Converted]:
    """float32 and float16 files from one onnx2tf run (it writes both)."""
    out = case.work / "onnx2tf"
    shapes = [f"{n}:{','.join(str(d) for d in case.feed[n].shape)}" for n in case.inputs]
    code, text, secs = cv.run_cli([*_onnx2tf_cmd(python), "-i", str(_private_copy(case)), "-o", str(out), "-ois", *shapes],
                                  timeout, cwd=case.work, env=_quiet_env())
    stem = case.path.stem
    result = {}
    for label, suffix in (("onnx2tf", "float32"), ("onnx2tf_fp16", "float16")):
        path = out / f"{stem}_{suffix}.tflite"
        if path.exists():
            result[label] = cv.Converted("onnx2tf", path, secs)
        else:
            why = cv.last_line(_errors(text)) if code else f"no {path.name} written"
            result[label] = cv.Converted("onnx2tf", None, secs, why)
    return result


def onnx2tf_int8(case: cv.Case, python: Path, backends: list[str], count: int, timeout: float) -> cv.Converted:
    """Full-integer int8 (`-oiqt`, per-channel), calibrated on NHWC samples; tries each backend in turn."""
    calib = case.calib_npy(count)
    nhwc = case.work / "calib_nhwc.npy"
    samples = np.load(calib)
    np.save(nhwc, samples.transpose(0, 2, 3, 1) if samples.ndim == 4 else samples)
    channels = samples.shape[1] if samples.ndim == 4 else 1
    zeros, ones = "[[[[" + ",".join(["0"] * channels) + "]]]]", "[[[[" + ",".join(["1"] * channels) + "]]]]"
    shapes = [f"{n}:{','.join(str(d) for d in case.feed[n].shape)}" for n in case.inputs]
    errors, total = [], 0.0
    for backend in backends:
        out = case.work / f"onnx2tf_int8_{backend}"
        cmd = [*_onnx2tf_cmd(python), "-i", str(_private_copy(case)), "-o", str(out), "-ois", *shapes, "-tb", backend, "-oiqt",
               "-cind", case.inputs[0], str(nhwc), zeros, ones]
        code, text, secs = cv.run_cli(cmd, timeout, cwd=case.work, env=_quiet_env())
        total += secs
        path = out / f"{case.path.stem}_full_integer_quant.tflite"
        if code == 0 and path.exists():
            return cv.Converted("onnx2tf", path, total, extra={"backend": backend})
        errors.append(f"{backend}: {cv.last_line(_errors(text), 200)}")
    return cv.Converted("onnx2tf", None, total, "; ".join(errors))


def _errors(text: str) -> str:
    """onnx2tf prints its own error lines (coloured) before the traceback; keep the most telling one."""
    lines = [ln.replace("\x1b[31m", "").replace("\x1b[0m", "") for ln in text.splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln.strip())
              and "fast path failed" not in ln]
    specific = [ln for ln in lines if "error:" in ln.lower()]
    return (raised[:1] or specific[-1:] or lines[-1:] or ["failed"])[0]


def _quiet_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"})
    return env


def transposes(path: Path | None) -> int | None:
    """Number of TRANSPOSE operators in a .tflite file (None when it cannot be read)."""
    if path is None:
        return None
    try:
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path))
        ops = interp._get_ops_details()
        return sum(1 for op in ops if op.get("op_name") == "TRANSPOSE")
    except Exception:  # noqa: BLE001 - a file LiteRT cannot load gets its error in the check column
        return None


def bench_model(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    case = cv.load_case(name, root / name)
    row: dict[str, Any] = {"model": name}
    arts: dict[str, cv.Converted] = {}
    tools = args.tools.split(",")
    cnn = cv.is_cnn(name) and len(case.inputs) == 1
    digest = cv.file_digest(case.path)
    if "onnx2tf" in tools and args.onnx2tf_python.exists():
        arts.update(onnx2tf_convert(case, args.onnx2tf_python, args.timeout))
        if args.int8 and cnn and args.int8_backends:  # --int8-backends "": onnx2tf's int8 not tried
            arts["onnx2tf_int8"] = onnx2tf_int8(case, args.onnx2tf_python, args.int8_backends.split(","),
                                                args.calib_count, args.timeout)
    cv.check_untouched(case, digest, "onnx2tf")
    if "kiln" in tools:
        arts["kiln"] = cv.kiln_compile(case, "tflite", case.work / "kiln", [], args.timeout)
        arts["kiln_fp16"] = cv.kiln_compile(case, "tflite", case.work / "kiln_fp16", ["--fp16"], args.timeout)
        if args.int8 and cnn:
            calib = case.calib_npy(args.calib_count)
            arts["kiln_int8"] = cv.kiln_compile(case, "tflite", case.work / "kiln_int8",
                                                ["--int8", "--calib", str(calib)], args.timeout * 2)
    for label, conv in arts.items():
        entry: dict[str, Any] = {"convert_s": conv.seconds, **conv.extra}
        if conv.artifact is None:
            entry["error"] = conv.error
        else:
            bridge = "kiln" if label.startswith("kiln") and args.kiln_bridge else "own"
            entry["check"] = cv.check("litert", conv.artifact, case, bridge, args.timeout)
            if bridge == "kiln" and "error" in entry["check"]:
                entry["bridge_error"] = entry["check"]["error"]
                entry["check"] = cv.check("litert", conv.artifact, case, "own", args.timeout)
            entry["transposes"] = transposes(conv.artifact)
            entry["bytes"] = conv.artifact.stat().st_size
        row[label] = entry
        print(f"{name} {label}: {json.dumps(entry)[:300]}", file=sys.stderr)
    cv.time_checked("litert", row, arts, ("onnx2tf", "kiln", "onnx2tf_int8", "kiln_int8"), case, args)
    return row


def _check(row: dict[str, Any], label: str, sqnr: bool = False) -> str:
    e = row.get(label)
    if e is None:
        return "—"
    if "error" in e:
        return "no file"
    res = e.get("check")
    if res and "error" in res:
        return "does not run: " + str(res["error"])[:70]
    return cv.fmt_sqnr(res) if sqnr else cv.fmt_err(res)


def _median(row: dict[str, Any], threads: int, label: str) -> float | None:
    return row.get(f"time_{threads}t", {}).get("median", {}).get(label)


def _secs(row: dict[str, Any], label: str) -> float | None:
    e = row.get(label)
    return None if e is None or "error" in e else e["convert_s"]


def to_markdown(rows: list[dict[str, Any]], command: str, args: argparse.Namespace, machine: str,
                onnx2tf_note: str) -> str:
    ts = args.threads
    lines = [
        "# TFLite: kiln vs onnx2tf, same ONNX in, same LiteRT runtime",
        "",
        f"Command: `{command}`  ",
        (f"Machine: {machine}; each converter in its own process; every file checked in its own process; latency: "
        f"median of {args.rounds} interleaved rounds x {args.reps} runs after 2 warm-up runs, all files and "
        "onnxruntime (ORT_ENABLE_ALL, spinning off) timed in one process per thread count; LiteRT with its default "
        "XNNPACK delegate."),
        f"Versions: {_versions(args.onnx2tf_python)}. {onnx2tf_note}",
        "",
        ("- converts: wall seconds of the converter process (imports included: TensorFlow's for onnx2tf); "
        "`k/o conv`: kiln's conversion time / onnx2tf's (float32 + float16 in one onnx2tf run; kiln's float32 run)."),
        ("- rel err: max |a - b| / max |a| against onnxruntime on the original model, on the zoo's example input "
        "(a generated image where the model reads images: a line crop for PP-OCR cls/rec, a page for det, a scene-like photo for the timm CNNs; standard normal otherwise). fp16: onnx2tf's <stem>_float16.tflite, "
        "kiln's `--fp16`: `does not run` is LiteRT refusing the file."),
        ("- `k/o Nt`: kiln's LiteRT latency / onnx2tf's at N threads (below 1: kiln faster); `k/ORT 1t`: kiln's "
        "latency / onnxruntime's on the original at 1 thread. Each latency ratio is `ratio of medians (ratio "
        "of the fastest runs)`: the machine is shared, so the medians carry the other processes' noise."),
        ("- int8: full-integer files (onnx2tf `-oiqt` <stem>_full_integer_quant.tflite, int8 I/O, dequantized here; "
        "kiln `--int8 --calib`), calibrated on the same samples; SQNR against onnxruntime fp32, latency at 1 thread "
        "as a ratio of the same tool's float32 file."),
        "- T: TRANSPOSE operators in the float32 file (onnx2tf / kiln).",
        "",
        "| model | onnx2tf converts | kiln converts | k/o conv | onnx2tf rel err | kiln rel err | onnx2tf fp16 | "
        "kiln fp16 | " + " | ".join(f"k/o {t}t" for t in ts)
        + " | k/ORT 1t | o/ORT 1t | onnx2tf int8 SQNR | kiln int8 SQNR | o int8/fp32 1t | k int8/fp32 1t | "
        "k int8 / o int8 1t | T o / k |",
        "|---" * (16 + len(ts)) + "|",
    ]
    for row in rows:
        tr = [str((row.get(lbl) or {}).get("transposes", "—")) for lbl in ("onnx2tf", "kiln")]
        cells = [
            row["model"], cv.conv_cell(row, "onnx2tf", 90), cv.conv_cell(row, "kiln", 90), cv.ratio(_secs(row, "kiln"), _secs(row, "onnx2tf")),
            _check(row, "onnx2tf"), _check(row, "kiln"), _check(row, "onnx2tf_fp16"), _check(row, "kiln_fp16"),
            *[cv.time_ratio(row, t, "kiln", "onnx2tf") for t in ts],
            cv.time_ratio(row, 1, "kiln", "onnxruntime"), cv.time_ratio(row, 1, "onnx2tf", "onnxruntime"),
            _int8_cell(row, "onnx2tf_int8"), _int8_cell(row, "kiln_int8"),
            cv.time_ratio(row, 1, "onnx2tf_int8", "onnx2tf"), cv.time_ratio(row, 1, "kiln_int8", "kiln"),
            cv.time_ratio(row, 1, "kiln_int8", "onnx2tf_int8"), " / ".join(tr),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for tool in ("onnx2tf", "kiln"):
        rs = [r for r in rows if tool in r]
        if rs:
            ok = sum(1 for r in rs if "error" not in r[tool])
            fp16_runs = sum(1 for r in rs if "error" not in r.get(f"{tool}_fp16", {"error": 1})
                            and "error" not in r[f"{tool}_fp16"].get("check", {"error": 1}))
            lines.append("")
            lines.append(f"{tool}: converted {ok} of {len(rs)}; float16 files that run on LiteRT: {fp16_runs} of {len(rs)}.")
    notes = sorted({f"{r['model']}: kiln.runtime.litert failed ({r[lbl]['bridge_error'][:100]}); the row used "
                    "the benchmark's own LiteRT runner" for r in rows for lbl in ("kiln", "kiln_fp16", "kiln_int8")
                    if "bridge_error" in r.get(lbl, {})})
    lines += ([""] + [f"- {n}" for n in notes]) if notes else []
    lines += ["", "int8 conversion failures:", ""]
    for row in rows:
        for lbl in ("onnx2tf_int8", "kiln_int8"):
            if "error" in row.get(lbl, {}):
                lines.append(f"- {row['model']} {lbl}: {row[lbl]['error'][:200]}")
    lines += ["", "Medians in ms (`kiln / onnx2tf / kiln int8 / onnx2tf int8 / onnxruntime`):", ""]
    for row in rows:
        parts = []
        for t in ts:
            res = row.get(f"time_{t}t", {})
            med = res.get("median", {})
            cell = " / ".join(f"{med[k] * 1e3:.1f}" if k in med else "—"
                              for k in ("kiln", "onnx2tf", "kiln_int8", "onnx2tf_int8", "onnxruntime"))
            parts.append(f"{t}t {cell}" + (f" (timing failed: {res['error'][:80]})" if "error" in res else ""))
        lines.append(f"- {row['model']}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def _int8_cell(row: dict[str, Any], label: str) -> str:
    e = row.get(label)
    if e is None:
        return "—"
    if "error" in e:
        return "no file"
    return _check(row, label, sqnr=True) + (f" ({e['backend']})" if e.get("backend") == "tf_converter" else "")


def _versions(python: Path) -> str:
    import importlib.metadata as md

    out = []
    for dist in ("ai-edge-litert", "onnxruntime", "onnx"):
        try:
            out.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            out.append(f"{dist} not installed")
    if python.exists():
        code, text, _ = cv.run_cli([str(python), "-c", ("import importlib.metadata as m; print('onnx2tf', "
                                    "m.version('onnx2tf'), 'tensorflow', m.version('tensorflow'))")], 120)
        out.append(text.strip() if code == 0 else "onnx2tf: version unknown")
    return ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=cv.DEFAULT_MODELS)
    parser.add_argument("--tools", default=",".join(TOOLS), help="onnx2tf,kiln or one of them")
    parser.add_argument("--onnx2tf-python", type=Path, default=DEFAULT_ONNX2TF_PYTHON,
                        help="the python of the environment onnx2tf is installed in")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--reps", type=int, default=2, help="runs of each file per round")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per conversion or check")
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip the int8 files")
    parser.add_argument("--int8-backends", default="flatbuffer_direct,tf_converter",
                        help="onnx2tf backends to try in turn for -oiqt (\"\": do not try)")
    parser.add_argument("--calib-count", type=int, default=8, help="calibration samples for int8")
    parser.add_argument("--no-kiln-bridge", dest="kiln_bridge", action="store_false",
                        help="check kiln's files with the benchmark's runner, not kiln.runtime.litert")
    parser.add_argument("--keep", type=Path, help="keep the files in this folder")
    parser.add_argument("--json", type=Path, help="also write the raw rows as JSON")
    parser.add_argument("--write", type=Path, help="write the markdown to this file")
    parser.add_argument("--command", help="with --from-json: the command that made it")
    parser.add_argument("--machine", help="with --from-json: the machine line")
    parser.add_argument("--from-json", type=Path, help="only render the markdown of an earlier --json")
    args = parser.parse_args(argv)
    if args.from_json:
        text = to_markdown(json.loads(args.from_json.read_text()), args.command or "(see --json)", args,
                           args.machine or "", "")
        print(text)
        if args.write:
            args.write.write_text(text)
        return 0
    command = "python benchmarks/bench_tflite.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = cv.machine_line()
    note = ""
    if "onnx2tf" in args.tools and not args.onnx2tf_python.exists():
        note = f"onnx2tf not measured: {args.onnx2tf_python} does not exist (see this file's docstring)."
        print(note, file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_tflite_") as tmp:
        root = args.keep or Path(tmp)
        for name in args.models:
            ok, why = cv.zoo().available(name, build=False)
            if not ok:
                print(f"skip {name}: {why}", file=sys.stderr)
                continue
            rows.append(bench_model(name, args, root))
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1, default=str))
            if args.keep is None:
                shutil.rmtree(root / name, ignore_errors=True)
    text = to_markdown(rows, command.strip(), args, machine, note)
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
