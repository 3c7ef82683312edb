"""Measurements over the test zoo (slow): arena against bound and naive sum, scheduler gains, planning time.

Run with ``python -m pytest tests/memory/test_zoo_memory.py -m slow``; the tables print to the terminal.
Every model is optimized with ``-O2`` first (static shapes: the PP-OCR models get the zoo's input shapes),
then planned with the default options (alignment 64, in-place reuse, the scheduler).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import kiln
import pytest
import zoo
from kiln.memory import MemoryPlan, plan_memory
from kiln.passmanager.manager import PassManager
from memory_helpers import check_plan, inception_ir, write_fanout

pytestmark = pytest.mark.slow

BRANCHY = ("light_inception_v1", "light_inception_v2", "light_densenet121", "ppocr_det", "branchy", "fanout")
"""Models the scheduler is measured on ("fanout": tests/memory/memory_helpers.py, built to need it)."""


def _load(name: str, tmp: Path) -> kiln.ir.Graph:
    if name == "fanout":
        path = write_fanout(tmp / "fanout.onnx")
        graph = kiln.load(str(path), input_shapes={"input": (1, 16, 32, 32)})
    elif name in zoo.PPOCR:
        graph = kiln.load(str(zoo.get_model(name)), input_shapes={"x": zoo.PPOCR[name][1]})
    else:
        graph = kiln.load(str(zoo.get_model(name)))
    PassManager("O2").run(graph)
    return graph


def _mib(n: int) -> str:
    return f"{n / (1 << 20):9.3f}"


def _pct(new: int, old: int) -> str:
    return f"{(old - new) / old * 100:5.1f}%" if old else "   - "


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MemoryPlan]:
    tmp = tmp_path_factory.mktemp("zoo_memory")
    out: dict[str, MemoryPlan] = {}
    for name in [n for n in zoo.list_models() if n not in zoo.list_models("chain")] + ["chain_1k", "fanout"]:
        if name != "fanout":
            ok, _ = zoo.available(name, build=False)
            if not ok:
                continue
        out[name] = plan_memory(_load(name, tmp))
    return out


def test_arena_is_within_five_percent_of_the_bound(plans, capsys):
    head = (
        f"{'model':36} {'nodes':>6} {'arena MiB':>9} {'bound MiB':>9} {'naive MiB':>9} {'arena/bound':>11} "
        f"{'arena/naive':>11} {'ONNX bound':>10} {'ONNX arena':>10}  algorithm"
    )
    rows = [head]
    for name, plan in plans.items():
        check_plan(plan)
        rows.append(
            f"{name:36} {len(plan.schedule):6} {_mib(plan.arena_bytes)} {_mib(plan.lower_bound_bytes)} "
            f"{_mib(plan.naive_bytes)} {plan.ratio:11.4f} {plan.arena_bytes / plan.naive_bytes:11.4f} "
            f"{_mib(plan.input_lower_bound_bytes):>10} {_mib(plan.input_arena_bytes):>10}  {plan.algorithm}"
        )
    with capsys.disabled():
        print("\n\nmemory plans at -O2 (alignment 64 B, in-place reuse, kiln's order)\n" + "\n".join(rows))
    worst = max(plans.items(), key=lambda kv: kv[1].ratio)
    assert worst[1].ratio <= 1.05, worst[0]
    for name, plan in plans.items():  # the ONNX order's own plan holds to the same standard
        assert plan.input_arena_bytes <= 1.05 * plan.input_lower_bound_bytes, name
    assert len(plans) >= 12


def test_scheduler_gains_on_branchy_graphs(plans, capsys):
    head = (
        f"{'model':22} {'ONNX bound':>10} {'kiln bound':>10} {'gain':>6} {'at cuts':>9}   "
        f"{'best region (nodes): ONNX -> kiln':>40}"
        f" {'gain':>6}  {'regions':>7} {'exact':>5} {'width':>5}"
    )
    rows = [head]
    for name in BRANCHY:
        plan = plans.get(name)
        if plan is None:
            continue
        s = plan.scheduler
        assert s is not None
        best = s.gains[0] if s.gains else None
        region = (
            f"{best.first[:18]:>18} ({best.nodes:3}): {_mib(best.input_bytes)} ->{_mib(best.bytes)}"
            if best
            else f"{'none':>40}"
        )
        rows.append(
            f"{name:22} {_mib(plan.input_lower_bound_bytes):>10} {_mib(plan.lower_bound_bytes):>10} "
            f"{_pct(plan.lower_bound_bytes, plan.input_lower_bound_bytes):>6} {_mib(s.fixed_bytes)}   {region} "
            f"{_pct(best.bytes, best.input_bytes) if best else '   - ':>6}  {s.regions:7} {s.exact:5} "
            f"{plan.streams.width if plan.streams else 0:5}"
        )
        assert plan.lower_bound_bytes <= plan.input_lower_bound_bytes
        assert plan.lower_bound_bytes == max(s.fixed_bytes, s.branchy_bytes)
    with capsys.disabled():
        print(
            "\n\nscheduler: peak (most bytes live at once, MiB) in the ONNX order and in kiln's; the peak at the cut"
            " nodes, which no order changes; the region whose peak fell most\n" + "\n".join(rows)
        )
    fan = plans["fanout"]
    assert fan.lower_bound_bytes < 0.3 * fan.input_lower_bound_bytes
    for name in ("light_inception_v1", "light_inception_v2", "ppocr_det", "branchy"):
        if name in plans:
            assert plans[name].scheduler.gains, name  # some region's peak fell


def _best_time(graph: kiln.ir.Graph, runs: int = 2) -> float:
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        plan_memory(graph)
        best = min(best, time.perf_counter() - start)
    return best


def test_planning_time_grows_near_linearly(capsys):
    rows = []
    times: dict[str, float] = {}
    cases = [("chain_10k", None), ("chain_100k", None), ("inception_10k", 560), ("inception_100k", 5600)]
    for label, blocks in cases:
        if blocks is None:
            ok, why = zoo.available(label)
            if not ok:
                pytest.skip(why)
            graph = kiln.load(str(zoo.get_model(label)))  # as loaded: static, every node kept
        else:
            graph = inception_ir(blocks)
        times[label] = _best_time(graph)
        rows.append(
            f"{label:16} {len(graph):7} nodes  {times[label]:7.2f} s  {times[label] / len(graph) * 1e6:6.1f} us/node"
        )
        del graph
    with capsys.disabled():
        print("\n\nplanning time (schedule + arena + streams; best of 2)\n" + "\n".join(rows))
        for kind in ("chain", "inception"):
            print(f"{kind}: 100k / 10k = {times[kind + '_100k'] / times[kind + '_10k']:.1f}x")
    for kind in ("chain", "inception"):
        assert times[f"{kind}_100k"] < 10.0
        assert times[f"{kind}_100k"] / times[f"{kind}_10k"] < 25  # 10x the nodes
