"""The pass manager: running, repeat, analyses, failures, optimize()."""

from __future__ import annotations

import pytest
from kiln.api import optimize
from kiln.errors import PassFailure, PipelineError, UnsupportedOpError, UsageError, VerificationError
from kiln.ir import Value
from kiln.passmanager import PassContext, PassManager, Pipeline, VerifyEach
from pm_toys import Countdown, StripIdentity, chain_graph, ops


def test_run_reports_each_pass(registry, graph):
    report = PassManager("strip-identity,noop,strip-identity").run(graph)
    assert ops(graph) == ["Relu", "Identity"]
    assert report.ran == ["strip-identity", "noop", "strip-identity"]
    assert [r.changed for r in report.records] == [True, False, False]
    assert [r.index for r in report.records] == [1, 2, 3]
    assert all(r.seconds >= 0 for r in report.records)
    assert report.changed
    assert report.records[0].stats == {"strip-identity.removed": 1}
    assert report.records[1].stats == {}
    assert report.stats == {"strip-identity.removed": 1}
    assert report.pipeline == "strip-identity,noop,strip-identity"
    assert "verify" in report.overhead
    assert str(report).startswith("3 pass runs (1 changed the graph) in ")


def test_pipeline_from_instances_and_given_context(registry, graph):
    ctx = PassContext(target="ncnn")
    report = PassManager([StripIdentity(), "noop"]).run(graph, ctx)
    assert report.ran == ["strip-identity", "noop"]
    assert ctx.stats == {"strip-identity.removed": 1}


def test_empty_pipeline(registry, graph):
    report = PassManager("").run(graph)
    assert report.records == [] and not report.changed


def test_repeat_runs_to_a_fixed_point(registry, graph):
    report = PassManager("repeat{max=5}(countdown{times=2},noop)").run(graph)
    assert report.ran == ["countdown", "noop"] * 3
    assert [r.iteration for r in report.records] == [1, 1, 2, 2, 3, 3]
    assert [r.changed for r in report.records] == [True, False, True, False, False, False]


def test_repeat_stops_at_max(registry, graph):
    report = PassManager("repeat{max=2}(countdown{times=9}),noop").run(graph)
    assert report.ran == ["countdown", "countdown", "noop"]


def test_nested_repeat(registry, graph):
    report = PassManager("repeat{max=3}(repeat{max=2}(countdown{times=3}),noop)").run(graph)
    # outer 1: inner runs 2 (both change); outer 2: inner changes once then stops; outer 3: nothing changes
    assert report.ran == [
        "countdown",
        "countdown",
        "noop",
        "countdown",
        "countdown",
        "noop",
        "countdown",
        "noop",
    ]
    assert [r.iteration for r in report.records] == [1, 2, 1, 1, 2, 2, 1, 3]


def test_analyses_are_dropped_only_on_change(registry, graph):
    ctx = PassContext()
    PassManager("use-counts,noop,use-counts,strip-identity,use-counts,use-counts").run(graph, ctx)
    assert ctx.extra["computed"] == [True, False, True, False]


def test_bundles_expand_when_run(registry, graph):
    registry.add_bundle("clean", "repeat{max=2}(strip-identity)", provider="test")
    report = PassManager("clean,noop").run(graph)
    assert report.pipeline == "repeat{max=2}(strip-identity),noop"
    assert report.ran == ["strip-identity", "strip-identity", "noop"]


def test_preset_with_missing_pass_fails_before_any_pass(registry, graph):
    pm = PassManager("strip-identity,O2")  # parses: O2 is only a name here
    with pytest.raises(PipelineError, match="unknown pass 'remove-noops' at column 15 of bundle 'O2'"):
        pm.run(graph)
    assert ops(graph) == ["Identity", "Relu", "Identity"]
    assert PassManager("O0").run(graph).records == []


# --------------------------------------------------------------------------- verification and failures


def test_verify_failure_names_the_pass_that_broke_the_ir(registry, graph):
    with pytest.raises(PassFailure) as info:
        PassManager("strip-identity,noop,break-ir,noop").run(graph)
    err = info.value
    text = str(err)
    assert "pass 'break-ir' left invalid IR: input 0 %ghost is not defined" in text
    assert "passes already run: strip-identity, noop" in text
    assert "(onnx.Relu)" in text  # the node the verifier blamed
    assert err.pass_name == "break-ir"
    assert err.passes_run == ["strip-identity", "noop"]
    assert isinstance(err.__cause__, VerificationError)


def test_verify_each_can_be_turned_off(registry, graph):
    report = PassManager("break-ir", verify_each=False).run(graph)
    assert report.ran == ["break-ir"]


def test_invalid_input_is_blamed_on_the_input(registry, graph):
    graph.create_node("Relu", [Value("ghost")])
    with pytest.raises(VerificationError) as info:
        PassManager("noop").run(graph)
    assert "the input IR is invalid, before any pass ran" in str(info.value)


def test_explicit_verify_instrument_is_not_doubled(registry, graph):
    verify = VerifyEach(check_schemas=False)
    pm = PassManager("noop", instruments=[verify])
    assert [type(i) for i in pm.instruments] == [VerifyEach]
    assert pm.instruments[0] is verify


def test_python_error_becomes_pass_failure(registry, graph):
    with pytest.raises(PassFailure) as info:
        PassManager("strip-identity,explode,noop").run(graph)
    err = info.value
    assert str(err) == "pass 'explode' failed: RuntimeError: boom (passes already run: strip-identity)"
    assert isinstance(err.__cause__, RuntimeError)


def test_kiln_error_passes_through_with_context(registry, graph):
    with pytest.raises(UnsupportedOpError) as info:
        PassManager("noop,raise-kiln").run(graph)
    assert (
        str(info.value)
        == "(onnx.Identity): cannot handle this op (in pass 'raise-kiln'; passes already run: noop)"
    )
    assert info.value.pass_name == "raise-kiln"


def test_first_pass_failure_says_nothing_ran(registry, graph):
    with pytest.raises(PassFailure, match=r"passes already run: none"):
        PassManager("explode").run(graph)


def test_missing_return_is_a_pass_failure(registry, graph):
    with pytest.raises(
        PassFailure,
        match="pass 'forgets-return' failed: TypeError: run\\(\\) returned None; it must return a bool",
    ):
        PassManager("forgets-return").run(graph)


def test_long_history_is_shortened(registry, graph):
    with pytest.raises(PassFailure) as info:
        PassManager("repeat{max=30}(countdown{times=99}),explode").run(graph)
    assert "30 runs, the last 20: countdown" in str(info.value)
    assert len(info.value.passes_run) == 30


# --------------------------------------------------------------------------- optimize()


def test_optimize_runs_a_pipeline_in_place(registry):
    graph = chain_graph()
    assert optimize(graph, pipeline="strip-identity") is graph
    assert ops(graph) == ["Relu", "Identity"]
    assert optimize(graph, pipeline=Pipeline([Countdown(times=1)]), ctx=PassContext()) is graph


def test_optimize_levels(registry):
    graph = chain_graph()
    assert optimize(graph, 0) is graph
    assert ops(graph) == ["Identity", "Relu", "Identity"]
    with pytest.raises(UsageError, match="optimization level must be one of 0, 1, 2, 3, not 7"):
        optimize(graph, 7)
    with pytest.raises(UsageError):
        optimize(graph, True)  # type: ignore[arg-type]
