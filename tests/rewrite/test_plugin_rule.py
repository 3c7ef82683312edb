"""The example plugin's rule (tests/plugins/kiln_example_plugin/.../hardswish.py), written in the pattern API."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import kiln
import pytest
from kiln.passmanager import PassContext, PassManager, PassRegistry, use_registry
from rewrite_helpers import check_rewrite, model_text, parse_model

PLUGIN_ROOT = Path(__file__).resolve().parent.parent / "plugins" / "kiln_example_plugin"

HARD_SWISH = model_text(
    "(float[2,5] x) => (float[2,5] y)",
    ["float three = {3.0}", "float zero = {0.0}", "float six = {6.0}"],
    "a = Add(x, three)\nr = Clip(a, zero, six)\nm = Mul(x, r)\ny = Div(m, six)",
    opset=14,
)


@pytest.fixture(scope="module")
def plugin():
    """The plugin's rule module, imported from the source tree into a private registry."""
    fresh = "kiln_example_plugin.hardswish" not in sys.modules
    sys.path.insert(0, str(PLUGIN_ROOT))
    try:
        with use_registry(PassRegistry(entry_point_group=None)) as registry:
            module = importlib.import_module("kiln_example_plugin.hardswish")
            if fresh:  # importing it registered the pass (one line: register_pass(RULES.as_pass(...)))
                assert registry.lookup("example-fuse-hardswish").cls is module.FuseHardSwish
            yield module
    finally:
        sys.path.remove(str(PLUGIN_ROOT))


def test_plugin_rule_fuses_hardswish(plugin) -> None:
    module = plugin
    check_rewrite(HARD_SWISH, module.HARDSWISH_RULES, fired_exactly={"example-fuse-hardswish": 1}, ops=["onnx.HardSwish"])


def test_plugin_rule_is_a_pass(plugin) -> None:
    module = plugin
    cls = module.FuseHardSwish
    assert cls.name == "example-fuse-hardswish" and cls.__module__ == "kiln_example_plugin.hardswish"
    assert cls.summary().startswith("Fuses x * relu6(x + 3) / 6")
    g = kiln.load(parse_model(HARD_SWISH))
    ctx = PassContext()
    PassManager([cls()]).run(g, ctx)
    assert [n.op for n in g] == ["HardSwish"] and ctx.stats["rules.example-fuse-hardswish"] == 1


def test_plugin_rule_refuses_below_opset_14(plugin, caplog: pytest.LogCaptureFixture) -> None:
    module = plugin
    old = HARD_SWISH.replace('"" : 14', '"" : 13')
    with caplog.at_level("INFO", logger="kiln.rewrite"):
        check_rewrite(old, module.HARDSWISH_RULES, fired_exactly={}, ctx=PassContext(debug_rules=True))
    assert "rule example-fuse-hardswish refused: HardSwish needs ONNX opset 14" in caplog.text
