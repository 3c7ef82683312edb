"""Instruments: timing, printing, dumping, stopping, reproducers, hook order."""

from __future__ import annotations

import importlib.util
import io

import pytest
from kiln.errors import PassFailure, PipelineError
from kiln.passmanager import (
    DumpIRDir,
    PassInstrument,
    PassManager,
    PrintIRAfter,
    PrintIRAfterChange,
    StopAfter,
    TimePasses,
    read_reproducer,
)
from pm_toys import chain_graph, ops


def test_time_passes_writes_a_table(registry, graph):
    out = io.StringIO()
    report = PassManager("strip-identity,noop,strip-identity", instruments=[TimePasses(out)]).run(graph)
    text = out.getvalue()
    assert text == report.timing_table()
    lines = text.splitlines()
    assert lines[0].startswith("kiln pass timing: 3 runs in ")
    assert lines[1].split() == ["seconds", "share", "runs", "changed", "pass"]
    assert lines[2].split()[2:] == ["2", "1", "strip-identity"]
    assert lines[3].split()[2:] == ["1", "0", "noop"]
    assert lines[4].split()[-1] == "(verify)"
    assert lines[5].split()[1:] == ["100.0%", "total"]


def test_print_ir_after_named_passes(registry, graph, printer):
    out = io.StringIO()
    PassManager(
        "strip-identity,noop,countdown", instruments=[PrintIRAfter("noop,countdown", out, printer)]
    ).run(graph)
    text = out.getvalue()
    assert "# IR after strip-identity" not in text
    assert "# IR after noop (pass 2, unchanged)\n" in text
    assert "# IR after countdown (pass 3, changed)\n" in text
    assert text.count("Relu") == 2


@pytest.mark.parametrize("passes", ["all", ["all"], ["noop", "all"], "strip-identity,noop", ["strip-identity,noop"]])
def test_print_ir_after_all(registry, graph, printer, passes):
    out = io.StringIO()
    PassManager("strip-identity,noop", instruments=[PrintIRAfter(passes, out, printer)]).run(graph)
    assert out.getvalue().count("# IR after") == 2


def test_print_ir_after_unknown_name_is_an_error(registry, graph, printer):
    with pytest.raises(
        PipelineError, match="print-ir-after: no pass 'strip-identiy' in the pipeline 'strip-identity,noop'"
    ) as info:
        PassManager(
            "strip-identity,noop", instruments=[PrintIRAfter(["strip-identiy"], io.StringIO(), printer)]
        ).run(graph)
    assert "did you mean 'strip-identity'?" in str(info.value)
    assert ops(graph) == ["Identity", "Relu", "Identity"]


def test_print_ir_after_change(registry, graph, printer):
    out = io.StringIO()
    PassManager("noop,strip-identity,noop", instruments=[PrintIRAfterChange(out, printer)]).run(graph)
    text = out.getvalue()
    assert text.count("# IR after") == 1
    assert text.startswith("# IR after strip-identity (pass 2, changed)\n")
    assert text.count("Identity") == 1


def test_default_printer_is_kiln_print_ir(registry, graph):
    if importlib.util.find_spec("kiln.ir.printer") is None:
        pytest.skip("kiln.ir.printer is not written yet")
    from kiln.ir import print_ir

    out = io.StringIO()
    PassManager("strip-identity", instruments=[PrintIRAfter("all", out)]).run(graph)
    assert (
        out.getvalue()
        == "# IR after strip-identity (pass 1, changed)\n" + print_ir(graph).rstrip("\n") + "\n"
    )


def test_dump_ir_dir(registry, graph, printer, tmp_path):
    dump = tmp_path / "dump" / "nested"
    PassManager(
        "strip-identity,noop,repeat{max=3}(countdown{times=1})", instruments=[DumpIRDir(dump, printer)]
    ).run(graph)
    names = sorted(p.name for p in dump.iterdir())
    assert names == [
        "00-input.kir",
        "01-strip-identity.kir",
        "02-noop.kir",
        "03-countdown.kir",
        "04-countdown.kir",
    ]
    assert (dump / "00-input.kir").read_text().count("Identity") == 2
    assert (dump / "01-strip-identity.kir").read_text() == printer(graph)
    assert (dump / "02-noop.kir").read_text() == printer(graph)


def test_dump_ir_dir_pads_to_the_most_runs(registry, graph, printer, tmp_path):
    PassManager("repeat{max=200}(countdown{times=1})", instruments=[DumpIRDir(tmp_path, printer)]).run(graph)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000-input.kir",
        "001-countdown.kir",
        "002-countdown.kir",
    ]


def test_stop_after(registry, graph):
    report = PassManager(
        "noop,strip-identity,countdown,strip-identity", instruments=[StopAfter("strip-identity")]
    ).run(graph)
    assert report.ran == ["noop", "strip-identity"]
    assert report.stopped_after == "strip-identity"
    assert str(report).endswith("stopped after strip-identity")


def test_stop_after_inside_repeat(registry, graph):
    report = PassManager(
        "repeat{max=5}(countdown{times=9},noop),strip-identity", instruments=[StopAfter("countdown")]
    ).run(graph)
    assert report.ran == ["countdown"]


def test_stop_after_unknown_name(registry, graph):
    with pytest.raises(PipelineError, match="stop-after: no pass 'dce' in the pipeline 'noop'"):
        PassManager("noop", instruments=[StopAfter("dce")]).run(graph)


def test_reproducer_has_the_ir_before_the_failing_pass_and_the_rest(registry, graph, printer, tmp_path):
    with pytest.raises(PassFailure) as info:
        PassManager(
            "strip-identity,noop,explode,countdown{times=1}", instruments=[DumpIRDir(tmp_path, printer)]
        ).run(graph)
    path = tmp_path / "reproducer.kir"
    assert f"reproducer written to {path}" in str(info.value)
    pipeline, ir_text = read_reproducer(path)
    assert pipeline == "explode,countdown{times=1}"
    assert ir_text == printer(graph)  # after strip-identity, before explode
    assert ir_text.count("Identity") == 1
    header = path.read_text().split("\n\n")[0].splitlines()
    assert header == [
        "# kiln reproducer",
        "# pass 'explode' failed: RuntimeError: boom",
        "# pipeline: explode,countdown{times=1}",
    ]


def test_reproducer_for_broken_ir_keeps_the_valid_ir(registry, printer, tmp_path):
    graph = chain_graph()
    before = printer(graph)
    with pytest.raises(PassFailure, match="pass 'break-ir' left invalid IR"):
        PassManager("noop,break-ir", instruments=[DumpIRDir(tmp_path, printer)]).run(graph)
    pipeline, ir_text = read_reproducer(tmp_path / "reproducer.kir")
    assert pipeline == "break-ir"
    assert ir_text == before
    assert "ghost" not in ir_text


def test_reproducer_inside_repeat_keeps_the_remaining_iterations(registry, graph, printer, tmp_path):
    pipeline = (
        "noop,repeat{max=4}(countdown{times=9},repeat{max=3}(countdown{times=9},explode),noop),strip-identity"
    )
    with pytest.raises(PassFailure):
        PassManager(pipeline, instruments=[DumpIRDir(tmp_path, printer)]).run(graph)
    rest, _ = read_reproducer(tmp_path / "reproducer.kir")
    assert rest == (
        "explode,repeat{max=2}(countdown{times=9},explode),noop,"
        "repeat{max=3}(countdown{times=9},repeat{max=3}(countdown{times=9},explode),noop),strip-identity"
    )


def test_read_reproducer_rejects_other_files(tmp_path):
    path = tmp_path / "x.kir"
    path.write_text("graph main\n")
    with pytest.raises(PipelineError, match="is not a kiln reproducer file"):
        read_reproducer(path)


class Recorder(PassInstrument):
    def __init__(self, log: list[str], tag: str) -> None:
        self.log = log
        self.tag = tag

    def before_pipeline(self, graph, run):
        self.log.append(f"{self.tag} start")

    def before_pass(self, pass_, graph, run):
        self.log.append(f"{self.tag} before {pass_.name}")

    def check(self, pass_, graph, record, run):
        self.log.append(f"{self.tag} check {record.name}")

    def after_pass(self, pass_, graph, record, run):
        self.log.append(f"{self.tag} after {record.name} {record.changed}")

    def pass_failed(self, pass_, graph, error, run):
        self.log.append(f"{self.tag} failed {pass_.name} after {[r.name for r in run.records]}")
        return f"{self.tag} saw it"

    def after_pipeline(self, graph, report):
        self.log.append(f"{self.tag} end {report.ran}")


def test_hook_order(registry, graph):
    log: list[str] = []
    PassManager("noop,strip-identity", instruments=[Recorder(log, "a"), Recorder(log, "b")]).run(graph)
    assert log == [
        "a start",
        "b start",
        "a before noop",
        "b before noop",
        "a check noop",
        "b check noop",
        "a after noop False",
        "b after noop False",
        "a before strip-identity",
        "b before strip-identity",
        "a check strip-identity",
        "b check strip-identity",
        "a after strip-identity True",
        "b after strip-identity True",
        "a end ['noop', 'strip-identity']",
        "b end ['noop', 'strip-identity']",
    ]


def test_failed_hook_and_its_note(registry, graph):
    log: list[str] = []

    class Broken(PassInstrument):
        def pass_failed(self, pass_, graph, error, run):
            raise OSError("disk full")

    with pytest.raises(PassFailure) as info:
        PassManager("noop,explode", instruments=[Broken(), Recorder(log, "a")]).run(graph)
    assert log[-1] == "a failed explode after ['noop']"
    assert "a saw it" in str(info.value)
