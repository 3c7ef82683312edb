"""The fusion passes are registered built-ins; O2 runs the exact ones, not fuse-act."""

from __future__ import annotations

from kiln.passmanager import PRESETS, Pipeline, lookup_pass


def test_fusion_passes_are_registered_with_summaries() -> None:
    for name in ("fuse-bn", "fuse-bias", "fuse-pad", "fuse-act"):
        info = lookup_pass(name)
        assert info.kind == "pass" and info.summary and info.cls is not None
        assert info.cls.__module__.startswith("kiln.passes.fusion.")
        assert info.provider.startswith("entry point 'kiln-builtin'") or info.provider.startswith("module ")


def test_o2_runs_the_exact_fusions_but_not_activation_fusion() -> None:
    expanded = str(Pipeline.parse("O2").expand())
    for name in ("fuse-bn", "fuse-bias", "fuse-pad"):
        assert name in expanded
    assert "fuse-act" not in expanded
    o3 = str(Pipeline.parse("O3").expand())
    assert o3.startswith(expanded) and "fuse-global-pool" in o3 and "fuse-act" in o3
    assert PRESETS["O3"][0] == "O2,fuse-global-pool,target-fusions"


def test_fuse_bn_option_round_trips() -> None:
    assert str(Pipeline.parse("fuse-bn{standalone=keep}")) == "fuse-bn{standalone=keep}"
    assert [o.key for o in lookup_pass("fuse-bn").options()] == ["max-rewrites-per-node", "standalone"]
