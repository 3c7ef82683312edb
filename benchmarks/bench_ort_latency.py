"""onnxruntime latency of kiln's O3 output (plain, and with --onnx-contrib) against onnxslim's and the original.

For each zoo model, four files are made: the original, ``onnxslim.slim`` of it, ``kiln compile -O3``
and ``kiln compile -O3 --onnx-contrib``.  Each is loaded in onnxruntime's CPU provider with one
intra-op and one inter-op thread, sequential execution, at two graph-optimization levels:
``ORT_ENABLE_ALL`` (what a user gets) and ``ORT_DISABLE_ALL`` (what the file itself is worth,
without onnxruntime's own fusions).  All sessions of a model are made first and warmed; then in
each round every session runs once, in an order rotated round by round, so load on the machine
falls on every variant alike, for about ``--seconds`` per model.  The table gives the median of all runs and the ratio
of kiln's to onnxslim's (below 1: kiln faster); on a busy machine read the ratios, and the
``min`` ratios (the least-disturbed run of each) beside them.

    python benchmarks/bench_ort_latency.py                          # the default models
    python benchmarks/bench_ort_latency.py --models bert_tiny_ts ppocr_cls --seconds 10
    python benchmarks/bench_ort_latency.py --write benchmarks/results/ort_latency.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import numpy as np
import onnx
import zoo

DEFAULT_MODELS = (
    "ppocr_det", "ppocr_rec", "ppocr_cls", "light_resnet50", "light_inception_v1", "light_shufflenet",
    "timm_resnet50_ts", "timm_mobilenetv3_large_100_ts", "timm_efficientnet_b0_ts",
    "timm_vit_small_patch16_224_ts", "timm_convnext_tiny_ts", "bert_tiny_ts", "bert_tiny_dynamo", "chain_1k",
)
VARIANTS = ("original", "onnxslim", "kiln O3", "kiln O3 contrib")
LEVELS = ("ENABLE_ALL", "DISABLE_ALL")


def _prepare(name: str, folder: Path) -> dict[str, tuple[str, int]]:
    """variant -> (path, top-level node count)."""
    import onnxslim
    from kiln.driver.compile import compile as kiln_compile

    source = str(zoo.get_model(name))
    original = onnx.load(source, load_external_data=False)
    out: dict[str, tuple[str, int]] = {"original": (source, len(original.graph.node))}
    slim = onnxslim.slim(source)
    slim_path = folder / "onnxslim.onnx"
    onnx.save(slim, str(slim_path), save_as_external_data=slim.ByteSize() > 2**31 - 2**20)
    out["onnxslim"] = (str(slim_path), len(slim.graph.node))
    for variant, options in (("kiln O3", {}), ("kiln O3 contrib", {"onnx_contrib": True})):
        sub = folder / variant.replace(" ", "_")
        result = kiln_compile(source, "onnx", sub, level=3, options=options, stem="model")
        path = result.artifacts[0]
        out[variant] = (str(path), len(onnx.load(str(path), load_external_data=False).graph.node))
    return out


def _session(path: str, level: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_{level}")
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def measure(name: str, seconds: float, min_rounds: int = 5, warmup: int = 2) -> dict[str, Any]:
    """Node counts and per-(variant, level) latencies in ms (all runs) of one model.

    Each round runs every session once, in an order rotated round by round; there are as many
    rounds as fit in about ``seconds`` (judged from the warm-up runs), at least ``min_rounds``.
    """
    with tempfile.TemporaryDirectory(prefix="kiln-ort-latency-") as tmp:
        files = _prepare(name, Path(tmp))
        feed = zoo.example_inputs(name)
        sessions = {(v, lv): _session(files[v][0], lv) for v in VARIANTS for lv in LEVELS}
        reference = sessions[("original", "DISABLE_ALL")].run(None, feed)
        errors = {}
        start = time.perf_counter()
        for key, session in sessions.items():
            for _ in range(warmup):
                got = session.run(None, feed)
            errors[key] = max(float(np.abs(e - g).max()) / max(float(np.abs(e).max()), 1e-30)
                              for e, g in zip(reference, got))
        per_round = (time.perf_counter() - start) / warmup
        rounds = max(min_rounds, int(seconds / max(per_round, 1e-6)))
        times: dict[tuple[str, str], list[float]] = {key: [] for key in sessions}
        keys = list(sessions)
        for r in range(rounds):
            shift = r % len(keys)
            for key in keys[shift:] + keys[:shift]:
                start = time.perf_counter()
                sessions[key].run(None, feed)
                times[key].append((time.perf_counter() - start) * 1e3)
        del sessions
    return {"name": name, "nodes": {v: files[v][1] for v in VARIANTS}, "times": times, "errors": errors,
            "rounds": rounds}


def _fmt(ms: float) -> str:
    return f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def table(results: list[dict[str, Any]]) -> str:
    head = ["model", "runs", "nodes orig / slim / O3 / O3c"]
    for lv in LEVELS:
        head += [f"{lv} ms orig / slim / O3 / O3c", f"{lv} O3c / slim (min)", f"{lv} O3 / slim"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        t = res["times"]
        row = [res["name"], str(res["rounds"]), " / ".join(str(res["nodes"][v]) for v in VARIANTS)]
        for lv in LEVELS:
            med = {v: statistics.median(t[(v, lv)]) for v in VARIANTS}
            low = {v: min(t[(v, lv)]) for v in VARIANTS}
            row.append(" / ".join(_fmt(med[v]) for v in VARIANTS))
            row.append(f"{med['kiln O3 contrib'] / med['onnxslim']:.2f} ({low['kiln O3 contrib'] / low['onnxslim']:.2f})")
            row.append(f"{med['kiln O3'] / med['onnxslim']:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="about how long to time each model, all sessions together (default 20)")
    parser.add_argument("--write", metavar="FILE.md", help="also write the table (and how it was made) here")
    args = parser.parse_args(argv)
    import onnxruntime
    import onnxslim

    results = []
    for name in args.models:
        ok, why = zoo.available(name)
        if not ok:
            print(f"{name}: skipped: {why}", file=sys.stderr)
            continue
        start = time.perf_counter()
        res = measure(name, args.seconds)
        worst = max(res["errors"].values())
        print(f"{name}: {time.perf_counter() - start:.0f} s, worst max-rel error vs original {worst:.1e}",
              file=sys.stderr, flush=True)
        results.append(res)
    text = table(results)
    print(text)
    if args.write:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        command = "python benchmarks/bench_ort_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
        header = (
            "# onnxruntime latency: kiln O3 (plain and --onnx-contrib) vs onnxslim vs the original\n\n"
            f"Command: `{command.strip()}`  \n"
            f"onnxruntime {onnxruntime.__version__}, onnxslim {onnxslim.__version__}; CPU provider, 1 intra-op and "
            f"1 inter-op thread, sequential; interleaved rounds (each session once per round, the order rotated), "
            f"about {args.seconds:g} s per model (`runs`: rounds, at least 5); "
            f"load average at the end {load:.1f} on {os.cpu_count()} cores.  Cells: median ms (orig / onnxslim / "
            "kiln O3 / kiln O3 --onnx-contrib); ratios below 1: kiln faster than onnxslim; in brackets the ratio "
            "of the fastest runs.  Node counts are the ONNX files' top-level nodes (a kiln local-function call "
            "counts one).\n\n"
        )
        Path(args.write).write_text(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
