"""``kiln inspect --memory``: the summary, the table, --json, --plot, and its errors."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
from kiln.driver.cli import main
from memory_helpers import write_fanout

SHAPE = ["--input-shape", "input:1,16,32,32"]
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@dataclass
class Run:
    rc: int
    out: str
    err: str


@pytest.fixture
def kiln(capsys: pytest.CaptureFixture[str]):
    def run(*args: object) -> Run:
        rc = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Run(rc, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fanout(tmp_path_factory.mktemp("cli") / "fanout.onnx")


def test_json_gives_everything_needed_to_check_the_plan(kiln, model):
    run = kiln("inspect", model, "--memory", "--json", *SHAPE)
    assert run.rc == 0, run.err
    info = json.loads(run.out)
    mem = info["memory"]
    assert {"arena_bytes", "lower_bound_bytes", "naive_bytes", "tensors"} <= set(mem)
    assert mem["level"] == 2 and mem["alignment"] == 64
    assert mem["input_order"]["lower_bound_bytes"] == 2424832 and mem["lower_bound_bytes"] == 622592
    tensors = mem["tensors"]
    assert tensors and all({"name", "offset", "size", "first", "last"} <= set(t) for t in tensors)
    # the check anyone can do from the JSON alone: no two tensors live at once share bytes (bar in-place pairs)
    for i, a in enumerate(tensors):
        for b in tensors[i + 1 :]:
            together = a["first"] <= b["last"] and b["first"] <= a["last"]
            overlap = a["offset"] < b["offset"] + b["size"] and b["offset"] < a["offset"] + a["size"]
            inplace = (b["shares"] == a["name"] and a["last"] == b["first"]) or (
                a["shares"] == b["name"] and b["last"] == a["first"]
            )
            assert not (together and overlap) or inplace, (a, b)
        assert a["offset"] + a["size"] <= mem["arena_bytes"]
    steps = mem["steps"]
    live = [0] * steps
    for t in tensors:
        if t["shares"] is None:
            end = t["last"]
            name = t["name"]
            for u in tensors:  # follow the in-place chain to its last step
                if u["shares"] == name:
                    end, name = max(end, u["last"]), u["name"]
            for s in range(t["first"], end + 1):
                live[s] += t["size"]
    assert max(live) == mem["lower_bound_bytes"] <= mem["arena_bytes"] <= mem["naive_bytes"]
    assert mem["streams"]["width"] == 6 and mem["streams"]["aux_streams"] == 5


def test_text_summary_and_table(kiln, model):
    run = kiln("inspect", model, "--memory", *SHAPE)
    assert run.rc == 0, run.err
    for needle in (
        "memory plan at -O2",
        "arena",
        "lower bound",
        "naive sum",
        "arena / bound",
        "ONNX order",
        "scheduler",
        "widest point",
        "streams",
        "tensors (",
    ):
        assert needle in run.out, needle
    assert "s0b0_wide" in run.out


def test_ir_of_the_planned_graph_shows_offsets(kiln, model):
    run = kiln("inspect", model, "--memory", "--ir", *SHAPE)
    assert run.rc == 0, run.err
    assert " offset=" in run.out


def test_no_reorder_and_level(kiln, model):
    run = kiln(
        "inspect", model, "--memory", "--json", "--no-reorder", "-O", "0", "--alignment", "128", *SHAPE
    )
    assert run.rc == 0, run.err
    mem = json.loads(run.out)["memory"]
    assert mem["reordered"] is False and mem["level"] == 0 and mem["alignment"] == 128
    assert "scheduler" not in mem and mem["lower_bound_bytes"] == mem["input_order"]["lower_bound_bytes"]


def test_unknown_size_names_the_value_and_exits_2(kiln, model):
    run = kiln("inspect", model, "--memory")
    assert run.rc == 2
    line = run.err.strip()
    assert line.startswith("kiln: error:") and "\n" not in line
    assert "s0b0_wide" in line and "N" in line and "--input-shape" in line


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
def test_plot_writes_a_png(kiln, model, tmp_path):
    out = tmp_path / "plots" / "plan.png"
    run = kiln("inspect", model, "--plot", out, *SHAPE)
    assert run.rc == 0, run.err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "memory plan" in run.out and "tensors (" not in run.out  # --plot alone: the summary, no table
    assert [p.name for p in out.parent.iterdir()] == ["plan.png"]  # no temporary left behind


def test_plot_without_matplotlib_is_a_clear_error(kiln, model, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "plan.png"
    run = kiln("inspect", model, "--plot", out, *SHAPE)
    assert run.rc == 2
    assert "matplotlib" in run.err and "kiln[plot]" in run.err and "Traceback" not in run.err
    assert not out.exists()


def test_memory_of_a_model_without_branches(kiln, tmp_path):
    model = onnx.parser.parse_model(
        """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 64] x) => (float[1, 64] y) {
    a = Exp(x)
    b = Relu(a)
    y = Sigmoid(b)
}
"""
    )
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    run = kiln("inspect", path, "--memory", "--json", "-O", "0")
    assert run.rc == 0, run.err
    mem = json.loads(run.out)["memory"]
    assert [t["name"] for t in mem["tensors"]] == ["a", "b"]
    assert mem["tensors"][1]["shares"] == "a" and mem["arena_bytes"] == 256
