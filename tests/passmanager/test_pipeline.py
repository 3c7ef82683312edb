"""Pipeline strings: parse/print round trips, typed options, errors with positions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kiln.errors import PipelineError
from kiln.passmanager import BundleStep, PassStep, Pipeline, PipelineParseError, RepeatStep
from kiln.passmanager.pipeline import MAX_DEPTH
from kiln.passmanager.presets import PRESETS
from pm_toys import Countdown, Layout, Level, NeedsLimit, Noop, Opts, StripIdentity, toy_registry

CANONICAL = [
    "",
    "noop",
    "strip-identity,noop",
    "countdown{times=5}",
    "repeat{max=3}(countdown,noop)",
    "repeat(noop)",
    "noop,repeat{max=2}(strip-identity,repeat{max=4}(countdown{times=1},noop)),noop",
    "O1",
    "O2,strip-identity",
    (
        "opts{count=7 scale=0.25 per-channel=true label=hello calibrator=entropy ops=Relu,Clip axes=1,2,3 "
        "limit=1024 tag=t layout=nhwc level=high}"
    ),
    "opts{count=-2 scale=1e-05}",
    "opts{scale=inf}",
    'opts{label="two words"}',
    'opts{label="a,b"}',
    'opts{label="say \\"hi\\""}',
    'opts{label="back\\\\slash"}',
    'opts{label="{braces}"}',
    'opts{label=""}',
    'opts{tag="none"}',
    "opts{tag=none-ish}",
    "opts{axes=}",
    'opts{ops=""}',
    'opts{ops="a,b",c}',
    "opts{ops=x.y/z:1}",
    "needs-limit{limit=3}",
    "needs-limit{limit=3 ratio=0.5}",
]


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_round_trip(registry, text):
    pipeline = Pipeline.parse(text)
    assert str(pipeline) == text
    assert Pipeline.parse(str(pipeline)) == pipeline


def test_every_option_type_is_typed(registry):
    text = CANONICAL[9]
    (step,) = Pipeline.parse(text).steps
    assert isinstance(step, PassStep)
    assert step.pass_ == Opts(
        count=7,
        scale=0.25,
        per_channel=True,
        label="hello",
        calibrator="entropy",
        ops=["Relu", "Clip"],
        axes=(1, 2, 3),
        limit=1024,
        tag="t",
        layout=Layout.NHWC,
        level=Level.HIGH,
    )


@pytest.mark.parametrize(
    "text, canonical",
    [
        (" noop , strip-identity ", "noop,strip-identity"),
        ("repeat { max=3 } ( noop , noop )", "repeat{max=3}(noop,noop)"),
        ("opts{per-channel=1}", "opts{per-channel=true}"),
        ("opts{per-channel=false}", "opts"),
        ("opts{count=3 scale=0.5}", "opts"),
        ("opts{count=0x10}", "opts{count=16}"),
        ("opts{count=010}", "opts{count=10}"),
        ("opts{scale=2}", "opts{scale=2.0}"),
        ("opts{ label=b   count=4 }", "opts{count=4 label=b}"),
        ('opts{label="plain"}', "opts{label=plain}"),
        ("opts{label=}", 'opts{label=""}'),
        ("opts{limit=none}", "opts"),
        ("opts{level=2 layout=NHWC}", "opts{layout=nhwc level=high}"),
        ("opts{axes=0}", "opts"),
        ("repeat{max=10}(noop)", "repeat(noop)"),
        ("opts{}", "opts"),
    ],
)
def test_parse_normalizes(registry, text, canonical):
    assert str(Pipeline.parse(text)) == canonical


def test_pipeline_from_list_equals_parsed(registry):
    built = Pipeline(
        [
            StripIdentity(),
            "noop,countdown{times=4}",
            Countdown,
            RepeatStep(Pipeline([Noop()]), max=2),
            Pipeline.parse("O1"),
            Opts(ops=["a b", "c"], layout=Layout.NHWC),
        ]
    )
    text = 'strip-identity,noop,countdown{times=4},countdown,repeat{max=2}(noop),O1,opts{ops="a b",c layout=nhwc}'
    assert str(built) == text
    assert Pipeline.parse(text) == built
    assert [p.name for p in built.passes()] == [
        "strip-identity",
        "noop",
        "countdown",
        "countdown",
        "noop",
        "opts",
    ]
    assert BundleStep("O1") in built.steps


def test_pipeline_equality_compares_options(registry):
    assert Pipeline([Countdown(times=2)]) == Pipeline.parse("countdown")
    assert Pipeline([Countdown(times=3)]) != Pipeline.parse("countdown")
    assert Pipeline.parse("countdown") != Pipeline.parse("noop")
    assert hash(Pipeline.parse("countdown{times=3}")) == hash(Pipeline([Countdown(times=3)]))


def test_pipeline_rejects_other_items(registry):
    with pytest.raises(PipelineError, match="not int"):
        Pipeline([3])


_HYPOTHESIS_REGISTRY = toy_registry()


@settings(database=None)
@given(st.text(max_size=12))
def test_any_str_option_round_trips(text):
    pipeline = Pipeline([Opts(label=text, ops=[text, "b"])])
    again = Pipeline.parse(str(pipeline), registry=_HYPOTHESIS_REGISTRY)
    assert again == pipeline
    assert str(again) == str(pipeline)


@settings(database=None)
@given(
    count=st.integers(-(2**70), 2**70),
    scale=st.floats(allow_nan=False),
    flag=st.booleans(),
    axes=st.lists(st.integers(-5, 5), max_size=4),
    limit=st.none() | st.integers(0, 99),
)
def test_any_option_values_round_trip(count, scale, flag, axes, limit):
    pipeline = Pipeline([Opts(count=count, scale=scale, per_channel=flag, axes=tuple(axes), limit=limit)])
    assert Pipeline.parse(str(pipeline), registry=_HYPOTHESIS_REGISTRY) == pipeline


# --------------------------------------------------------------------------- errors


def _error(text: str) -> PipelineParseError:
    with pytest.raises(PipelineParseError) as info:
        Pipeline.parse(text)
    return info.value


def test_unknown_pass_suggests_and_points(registry):
    err = _error("noop,strip-identty,noop")
    assert err.position == 5
    assert err.column == 6
    assert "unknown pass 'strip-identty' at column 6 of pipeline 'noop,strip-identty,noop'" in str(err)
    assert "did you mean 'strip-identity'?" in str(err)
    assert err.caret() == "noop,strip-identty,noop\n     ^"
    assert isinstance(err, PipelineError)


@pytest.mark.parametrize(
    "name, suggestion", [("strip_identity", "strip-identity"), ("o2", "O2"), ("count-down", "countdown")]
)
def test_unknown_pass_suggestions_ignore_case_and_underscores(registry, name, suggestion):
    assert f"did you mean '{suggestion}'" in str(_error(name))


def test_unknown_pass_without_close_match(registry):
    assert "`kiln passes` lists them" in str(_error("zzzzzz"))


def test_unknown_option_names_pass_and_suggests(registry):
    err = _error("noop,countdown{tims=3}")
    assert "pass 'countdown' has no option 'tims' at column 16" in str(err)
    assert "did you mean 'times'?" in str(err)
    assert "its options: times (int)" in str(err)


def test_option_of_pass_without_options(registry):
    assert "it takes no options" in str(_error("noop{x=1}"))


def test_python_style_option_name_suggests_kebab(registry):
    assert "did you mean 'per-channel'?" in str(_error("opts{per_channel=true}"))


@pytest.mark.parametrize(
    "text, message, column",
    [
        ("countdown{times=abc}", "pass 'countdown' option 'times' expects int, got abc", 17),
        ("countdown{times=1.5}", "expects int, got 1.5", 17),
        ("opts{scale=fast}", "option 'scale' expects float, got fast", 12),
        ("opts{per-channel=yes}", "option 'per-channel' expects bool, got yes", 18),
        ("opts{calibrator=kl}", "option 'calibrator' expects one of minmax|entropy|percentile, got kl", 17),
        ("opts{axes=1,x,3}", "option 'axes' expects list of int (a,b,c), got x", 13),
        ("opts{axes=1,,3}", "expects list of int (a,b,c), got an empty item", 13),
        ("opts{limit=many}", "option 'limit' expects int or none, got many", 12),
        ("opts{layout=chw}", "option 'layout' expects one of nchw|nhwc, got chw", 13),
        ("opts{level=3}", "option 'level' expects one of low|high, got 3", 12),
        ("opts{count=}", "option 'count' expects int, got an empty value", 12),
        ("opts{label=a,b}", 'quote a value that contains commas: "a,b"', 14),
    ],
)
def test_wrong_type_names_pass_option_type_and_column(registry, text, message, column):
    err = _error(text)
    assert message in str(err)
    assert err.column == column


@pytest.mark.parametrize(
    "text, message, column",
    [
        ("opts{count=1,scale=2.0}", "options are separated by spaces, not commas: {a=1 b=2}", 14),
        (
            "countdown(times=3)",
            "pass 'countdown' takes no nested pipeline; options go in braces: countdown{key=value",
            10,
        ),
        ("noop,countdown{times=3", "unclosed '{' in the options of 'countdown'", 15),
        ('opts{label="abc}', "unclosed '\"' in an option value", 12),
        ("noop,", "expected a pass name, found the end", 6),
        ("noop,,noop", "expected a pass name, found ','", 6),
        ("noop noop", "expected ',' between passes, found 'n'", 6),
        ("noop)", "unbalanced ')'", 5),
        ("repeat(noop", "expected ',' or ')' in the nested pipeline of 'repeat', found the end", 12),
        ("repeat{max=2}", "repeat needs a nested pipeline: repeat{max=3}(fold,dce)", 14),
        ("repeat{max=0}(noop)", "repeat option 'max' must be at least 1", 12),
        ("repeat{times=2}(noop)", "pass 'repeat' has no option 'times'", 8),
        ("O1{x=1}", "bundle 'O1' takes no options", 3),
        ("O1(noop)", "bundle 'O1' takes no nested pipeline", 3),
        ("countdown{times}", "option 'times' of 'countdown' needs a value: times=VALUE", 16),
        ("countdown{times=1 times=2}", "option 'times' of pass 'countdown' is given twice", 19),
        ("countdown{=1}", "expected an option name in the options of 'countdown', found '='", 11),
        ('opts{label=a"b"}', "unexpected '\"' in an option value (quote the value)", 13),
        ("needs-limit", "pass 'needs-limit' requires option 'limit' (int)", 12),
        (
            "needs-limit{limit=1 ratio=2.0}",
            "invalid options for pass 'needs-limit': ratio must be in (0, 1], not 2.0",
            1,
        ),
        ("3fold", "expected a pass name, found '3'", 1),
    ],
)
def test_syntax_errors(registry, text, message, column):
    err = _error(text)
    assert message in str(err)
    assert err.column == column


def test_nesting_is_capped(registry):
    deep = "repeat(" * (MAX_DEPTH + 1) + "noop" + ")" * (MAX_DEPTH + 1)
    assert f"nests deeper than {MAX_DEPTH}" in str(_error(deep))
    ok = "repeat(" * MAX_DEPTH + "noop" + ")" * MAX_DEPTH
    assert str(Pipeline.parse(ok)) == ok


def test_pipeline_must_be_text(registry):
    with pytest.raises(PipelineError, match="must be a string"):
        Pipeline.parse(None)  # type: ignore[arg-type]


def test_unregistered_instance_still_prints(registry):
    assert str(Pipeline([NeedsLimit(limit=4)])) == "needs-limit{limit=4}"


# --------------------------------------------------------------------------- bundles and presets


def test_presets_are_the_documented_strings():
    assert PRESETS["O0"][0] == ""
    assert PRESETS["O1"][0] == "remove-noops,fold-shapes,fold,dce"
    assert PRESETS["O2"][0] == (
        "repeat{max=4}(remove-noops,fold-shapes,fold,fold-if,raise-patterns{onnx-only=true},fuse-bn,fuse-bias,"
        "fuse-pad,fold-elementwise,merge-slices,fuse-concat-split,cse,dce)"
    )
    assert PRESETS["O3"][0] == "O2,fuse-global-pool,target-fusions"


def test_preset_naming_a_missing_pass_fails_only_when_expanded(registry):
    # The toy registry has none of the built-in passes: every preset still parses.
    for name in ("O0", "O1", "O2", "O3"):
        assert str(Pipeline.parse(name)) == name
    assert str(Pipeline.parse("O0").expand()) == ""
    with pytest.raises(PipelineParseError) as info:
        Pipeline.parse("O2").expand()
    text = str(info.value)
    assert "unknown pass 'remove-noops' at column 15 of bundle 'O2'" in text
    assert "bundle 'O2' is defined by kiln.passmanager.presets" in text


def test_bundles_expand_recursively(registry):
    registry.add_bundle("cleanup", "strip-identity,noop", provider="test")
    registry.add_bundle("twice", "repeat{max=2}(cleanup),countdown{times=1}", provider="test")
    pipeline = Pipeline.parse("twice,noop")
    assert str(pipeline) == "twice,noop"
    assert str(pipeline.expand()) == "repeat{max=2}(strip-identity,noop),countdown{times=1},noop"
    assert pipeline.expand().max_runs() == 6


def test_bundle_cycle_is_an_error(registry):
    registry.add_bundle("ping", "noop,pong", provider="test")
    registry.add_bundle("pong", "ping", provider="test")
    with pytest.raises(PipelineError, match="bundle 'ping' includes itself: ping -> pong -> ping"):
        Pipeline.parse("ping").expand()


def test_repeat_step_validates_max():
    with pytest.raises(ValueError):
        RepeatStep(Pipeline(), max=0)
