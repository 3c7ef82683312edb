"""kiln O2 against onnxslim, onnxsim and the onnx.load + onnx.save floor.

Each tool runs in its own subprocess (so one tool's memory or crash cannot
touch another's figures, and a hung peer can be timed out), on the same
model, interleaved round by round; the time is measured inside the
subprocess around load -> optimize -> save only (imports excluded).  The
report gives node counts, median seconds, and kiln's time as a ratio of each
peer's: on a busy 2-core machine the ratios are what to read.

    python benchmarks/bench_onnx.py                   # the default zoo
    python benchmarks/bench_onnx.py --models ppocr_det chain_10k --rounds 3
    python benchmarks/bench_onnx.py --write benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import zoo  # noqa: E402  (tests/zoo.py builds and caches the models)

TOOLS = ("floor", "kiln", "onnxslim", "onnxsim")

# Each snippet reads IN and OUT from argv, prints one JSON line {"seconds": .., "nodes": ..}.
_SNIPPETS = {
    "floor": """
import onnx
t0 = time.perf_counter()
m = onnx.load(IN)
onnx.save(m, OUT, save_as_external_data=m.ByteSize() > 2**31 - 2**20)
secs = time.perf_counter() - t0
nodes = len(m.graph.node)
""",
    "kiln": """
import kiln
import onnx.helper as oh
# kiln imports its modules lazily, on first use; the peers import theirs at
# `import`.  Compile a one-node model first so both start the clock warm.
_tiny = oh.make_model(oh.make_graph([oh.make_node("Relu", ["a"], ["b"])], "w",
    [oh.make_tensor_value_info("a", 1, [1])], [oh.make_tensor_value_info("b", 1, [1])]))
kiln.to_onnx(kiln.optimize(kiln.load(_tiny), level=2))
t0 = time.perf_counter()
g = kiln.load(IN)
kiln.optimize(g, level=2)
kiln.save(g, OUT)
secs = time.perf_counter() - t0
nodes = len(g)
""",
    "onnxslim": """
import onnxslim, onnx
t0 = time.perf_counter()
m = onnxslim.slim(IN)
onnx.save(m, OUT, save_as_external_data=m.ByteSize() > 2**31 - 2**20)
secs = time.perf_counter() - t0
nodes = len(m.graph.node)
""",
    "onnxsim": """
import onnxsim, onnx
t0 = time.perf_counter()
m, ok = onnxsim.simplify(onnx.load(IN))
onnx.save(m, OUT, save_as_external_data=m.ByteSize() > 2**31 - 2**20)
secs = time.perf_counter() - t0
nodes = len(m.graph.node)
""",
}

_HARNESS = """
import json, sys, time
IN, OUT = sys.argv[1], sys.argv[2]
{body}
print(json.dumps({{"seconds": secs, "nodes": nodes}}))
"""

DEFAULT_MODELS = [
    "ppocr_det",
    "ppocr_rec",
    "ppocr_cls",
    "light_densenet121",
    "light_inception_v1",
    "light_resnet50",
    "light_vgg19",
    "timm_resnet50_ts",
    "timm_convnext_tiny_ts",
    "timm_vit_small_patch16_224_dynamo",
    "chain_1k",
    "chain_10k",
]


def run_tool(tool: str, model: Path, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.onnx"
        code = _HARNESS.format(body=_SNIPPETS[tool])
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code, str(model), str(out)],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out ({timeout:.0f} s)"}
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            return {"error": last[:120]}
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["wall"] = time.perf_counter() - start
        result["bytes"] = sum(p.stat().st_size for p in Path(tmp).iterdir())
        return result


def bench(models: list[str], rounds: int, timeout: float, tools: tuple[str, ...]) -> list[dict]:
    rows = []
    for name in models:
        ok, why = zoo.available(name)
        if not ok:
            print(f"skip {name}: {why}", file=sys.stderr)
            continue
        path = zoo.get_model(name)
        import onnx

        n_in = len(onnx.load(str(path), load_external_data=False).graph.node)
        times: dict[str, list[float]] = {t: [] for t in tools}
        info: dict[str, dict] = {}
        for r in range(rounds):
            order = list(tools) if r % 2 == 0 else list(reversed(tools))
            for tool in order:
                if "error" in info.get(tool, {}):
                    continue
                res = run_tool(tool, path, timeout)
                info[tool] = res
                if "error" not in res:
                    times[tool].append(res["seconds"])
                print(f"{name} {tool} round {r}: {res}", file=sys.stderr)
        row = {"model": name, "nodes_in": n_in, "mb": path.stat().st_size / 1e6}
        for tool in tools:
            res = info.get(tool, {})
            if "error" in res or not times[tool]:
                row[tool] = {"error": res.get("error", "not run")}
            else:
                row[tool] = {"nodes": res["nodes"], "seconds": statistics.median(times[tool])}
        rows.append(row)
    return rows


def _cell(row: dict, tool: str) -> str:
    r = row.get(tool, {"error": "not run"})
    if "error" in r:
        return r["error"]
    return f"{r['nodes']} / {r['seconds']:.2f}"


def _ratio(row: dict, tool: str) -> str:
    k, p = row.get("kiln", {}), row.get(tool, {})
    if "seconds" not in k or "seconds" not in p or p["seconds"] == 0:
        return "—"
    return f"{k['seconds'] / p['seconds']:.2f}"


def to_markdown(rows: list[dict], command: str) -> str:
    lines = [
        "## ONNX optimization: kiln O2 vs onnxslim, onnxsim (load -> optimize -> save)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} cores; medians of interleaved rounds; each tool in its own process.",
        "Cells are `nodes out / seconds`. `kiln / X` is kiln's time divided by X's (below 1: kiln faster).",
        "",
        "| model | MB | nodes in | floor (load+save) | kiln O2 | onnxslim | onnxsim | kiln / onnxslim | kiln / onnxsim | kiln / floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['mb']:.1f} | {row['nodes_in']} | {_cell(row, 'floor')} | {_cell(row, 'kiln')} | "
            f"{_cell(row, 'onnxslim')} | {_cell(row, 'onnxsim')} | {_ratio(row, 'onnxslim')} | "
            f"{_ratio(row, 'onnxsim')} | {_ratio(row, 'floor')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per tool run")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--json", type=Path, help="also write the raw rows as JSON")
    parser.add_argument("--write", type=Path, help="write the markdown table to this file")
    args = parser.parse_args(argv)
    command = "python benchmarks/bench_onnx.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = bench(args.models, args.rounds, args.timeout, tuple(args.tools.split(",")))
    table = to_markdown(rows, command.strip())
    print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.write:
        args.write.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
