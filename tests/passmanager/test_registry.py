"""The pass registry: names, duplicates, suggestions, entry points, pass files."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from kiln.errors import PipelineError, UsageError
from kiln.ir import Graph
from kiln.passmanager import (
    ENTRY_POINT_GROUP,
    PRESETS,
    DuplicatePassError,
    Pass,
    PassContext,
    PassManager,
    PassRegistry,
    Pipeline,
    default_registry,
    load_pass_file,
    lookup_pass,
    register_bundle,
    register_pass,
    use_registry,
)
from pm_toys import Noop, StripIdentity, chain_graph, ops, toy_registry


@dataclass(frozen=True)
class OtherNoop(Pass):
    """A second pass that wants the name noop."""

    name: ClassVar[str] = "noop"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return False


def test_lookup_gives_class_summary_and_provider():
    registry = toy_registry()
    info = registry.lookup("strip-identity")
    assert info.cls is StripIdentity
    assert info.kind == "pass"
    assert info.summary == "Removes Identity nodes (except those that name a graph output)."
    assert info.provider == f"module {StripIdentity.__module__}"
    bundle = registry.lookup("O2")
    assert bundle.kind == "bundle" and bundle.pipeline.startswith("repeat{max=4}")
    assert registry.lookup("repeat").kind == "structural"
    assert "repeat" in registry.names() and "O1" in registry.names()
    assert "noop" in registry and "nope" not in registry


def test_duplicate_name_names_both_providers():
    registry = toy_registry()
    with pytest.raises(DuplicatePassError) as info:
        registry.add_pass(OtherNoop, provider="plugin other-plugin")
    text = str(info.value)
    assert "pass name 'noop' is defined twice" in text
    assert f"{Noop.__module__}.Noop (module {Noop.__module__})" in text
    assert "test_registry.OtherNoop (plugin other-plugin)" in text
    assert isinstance(info.value, PipelineError)


def test_same_class_twice_is_harmless():
    registry = toy_registry()
    assert registry.add_pass(Noop) is Noop
    assert registry.lookup("noop").cls is Noop


def test_bundle_and_pass_share_one_namespace():
    registry = toy_registry()
    with pytest.raises(DuplicatePassError, match="bundle name 'noop' is defined twice"):
        registry.add_bundle("noop", "strip-identity", provider="test")
    with pytest.raises(
        DuplicatePassError, match="bundle name 'O1' is defined twice: by kiln.passmanager.presets and by test"
    ):
        registry.add_bundle("O1", "noop", provider="test")
    registry.add_bundle("O1", PRESETS["O1"][0], provider="kiln.passmanager.presets")  # the same again: fine


@pytest.mark.parametrize("bad", ["Fold", "fold_consts", "fold--x", "-fold", "", "fold!"])
def test_pass_names_are_kebab_case(bad):
    cls = type("Bad", (Noop,), {"name": bad, "__module__": __name__})
    with pytest.raises(PipelineError, match="kebab-case"):
        PassRegistry(entry_point_group=None).add_pass(cls)


def test_repeat_is_reserved():
    cls = type("Repeat", (Noop,), {"name": "repeat", "__module__": __name__})
    with pytest.raises(DuplicatePassError, match="reserved"):
        PassRegistry(entry_point_group=None).add_pass(cls)


def test_only_passes_register():
    with pytest.raises(PipelineError, match="not a kiln Pass subclass"):
        PassRegistry(entry_point_group=None).add_pass(dict)  # type: ignore[arg-type]


def test_option_types_are_checked_at_registration():
    @dataclass(frozen=True)
    class TakesArray(Pass):
        name: ClassVar[str] = "takes-array"
        table: dict = None  # type: ignore[assignment]

    with pytest.raises(
        PipelineError, match="option 'table' of pass 'takes-array' has type <class 'dict'>.*PassContext"
    ):
        PassRegistry(entry_point_group=None).add_pass(TakesArray)


def test_unknown_lookup_suggests():
    registry = toy_registry()
    with pytest.raises(PipelineError) as info:
        registry.lookup("strip-identiy")
    assert str(info.value) == "unknown pass 'strip-identiy' (did you mean 'strip-identity'?)"


def test_decorator_registers_in_the_default_registry():
    with use_registry(toy_registry()) as registry:

        @register_pass
        @dataclass(frozen=True)
        class Decorated(Pass):
            """Decorated in a test."""

            name: ClassVar[str] = "decorated"

            def run(self, graph: Graph, ctx: PassContext) -> bool:
                return False

        register_bundle("decorated-twice", "decorated,decorated", summary="twice")
        assert lookup_pass("decorated").cls is Decorated
        assert registry.lookup("decorated-twice").provider == f"module {__name__}"
        assert default_registry() is registry
    assert default_registry() is not registry


# --------------------------------------------------------------------------- entry points


def _ep(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


@pytest.fixture
def plugin_modules(tmp_path, monkeypatch):
    """Two importable plugin packages written to a temporary folder."""
    (tmp_path / "pm_plugin_a").mkdir()
    (tmp_path / "pm_plugin_a" / "__init__.py").write_text("from pm_plugin_a import passes\n")
    (tmp_path / "pm_plugin_a" / "passes.py").write_text(
        textwrap.dedent(
            '''
            from dataclasses import dataclass
            from typing import ClassVar
            from kiln.passmanager import Pass, register_pass

            @register_pass
            @dataclass(frozen=True)
            class Alpha(Pass):
                """Plugin pass alpha."""
                name: ClassVar[str] = "alpha"
                def run(self, graph, ctx):
                    return False

            @dataclass(frozen=True)
            class Beta(Pass):
                """Plugin pass beta, named by its entry point."""
                name: ClassVar[str] = "beta"
                def run(self, graph, ctx):
                    return False

            def provide():
                return [Beta]
            '''
        )
    )
    (tmp_path / "pm_plugin_clash.py").write_text(
        textwrap.dedent(
            '''
            from dataclasses import dataclass
            from typing import ClassVar
            from kiln.passmanager import Pass

            @dataclass(frozen=True)
            class Alpha(Pass):
                """Another alpha."""
                name: ClassVar[str] = "alpha"
                def run(self, graph, ctx):
                    return False
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith(("pm_plugin_a", "pm_plugin_clash"))]:
        del sys.modules[name]


def test_entry_points_are_read_lazily(plugin_modules):
    calls = []

    def entry_points() -> list[Any]:
        calls.append(1)
        return [_ep("a", "pm_plugin_a"), _ep("b", "pm_plugin_a.passes:Beta")]

    with use_registry(toy_registry()):
        registry = PassRegistry(entry_points=entry_points)
        assert calls == []
        assert registry.lookup("alpha").provider == "entry point 'a' (pm_plugin_a)"
        assert registry.lookup("beta").provider == "entry point 'b' (pm_plugin_a.passes:Beta)"
        registry.lookup("beta")
        assert calls == [1]


def test_function_entry_point_is_called(plugin_modules):
    with use_registry(toy_registry()):
        registry = PassRegistry(entry_points=lambda: [_ep("f", "pm_plugin_a.passes:provide")])
        assert registry.lookup("beta").summary == "Plugin pass beta, named by its entry point."
        # the function's package's @register_pass classes come along
        assert registry.lookup("alpha").cls.__module__ == "pm_plugin_a.passes"


def test_duplicate_across_entry_points_names_both(plugin_modules):
    with use_registry(toy_registry()):
        registry = PassRegistry(
            entry_points=lambda: [_ep("a", "pm_plugin_a"), _ep("clash", "pm_plugin_clash:Alpha")]
        )
        with pytest.raises(DuplicatePassError) as info:
            registry.lookup("noop")
        text = str(info.value)
        assert "pass name 'alpha' is defined twice" in text
        assert "pm_plugin_a.passes.Alpha (entry point 'a' (pm_plugin_a))" in text
        assert "pm_plugin_clash.Alpha (entry point 'clash' (pm_plugin_clash:Alpha))" in text
        with pytest.raises(DuplicatePassError):  # and again: the conflict cannot be missed
            registry.names()


def test_broken_plugin_is_logged_and_named_in_unknown_errors(plugin_modules, caplog):
    registry = PassRegistry(
        entry_points=lambda: [_ep("broken", "pm_no_such_module"), _ep("b", "pm_plugin_a.passes:Beta")]
    )
    with caplog.at_level(logging.WARNING, logger="kiln.passmanager.registry"):
        assert registry.lookup("beta").name == "beta"
    assert "entry point 'broken' (pm_no_such_module) failed to load" in caplog.text
    with pytest.raises(PipelineError) as info:
        registry.lookup("gamma")
    assert "entry point 'broken' (pm_no_such_module) failed to load: ModuleNotFoundError" in str(info.value)


def test_entry_point_naming_something_else_is_a_failure(plugin_modules):
    registry = PassRegistry(entry_points=lambda: [_ep("odd", "pm_plugin_a.passes:ClassVar")])
    registry.names()
    assert registry.failures and "odd" in registry.failures[0][0]


def test_kiln_declares_its_builtins_through_the_same_group():
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    builtin = [ep for ep in eps if ep.dist is not None and ep.dist.metadata["Name"] == "kiln"]
    assert [(ep.name, ep.value) for ep in builtin] == [("kiln-builtin", "kiln.passes:register_builtins")], (
        "setup.py's kiln.passes entry point is missing from the installed metadata: run `pip install -e .`"
    )
    import kiln.passes

    assert callable(kiln.passes.register_builtins)


# --------------------------------------------------------------------------- pass files


PASS_FILE = '''
"""A pass defined in a file, as --load-pass FILE.py loads it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from kiln.ir import Graph
from kiln.passmanager import Pass, PassContext


@dataclass(frozen=True)
class DropRelu(Pass):
    """Removes Relu nodes (for testing only: it changes the result)."""

    name: ClassVar[str] = "drop-relu"
    mode: Literal["all", "none"] = field(default="all", metadata={"doc": "which Relus"})

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        changed = False
        for node in graph:
            if node.is_op("Relu") and self.mode == "all" and not graph.is_output(node.outputs[0]):
                node.outputs[0].replace_all_uses_with(node.inputs[0])
                graph.remove_node(node)
                changed = True
        return changed


class Helper:  # not a pass: ignored
    pass
'''


def test_load_pass_file_registers_and_runs(tmp_path):
    path = tmp_path / "drop_relu.py"
    path.write_text(PASS_FILE)
    registry = toy_registry()
    assert load_pass_file(path, registry) == ["drop-relu"]
    assert load_pass_file(str(path), registry) == ["drop-relu"]  # a second load does nothing
    info = registry.lookup("drop-relu")
    assert info.provider == f"file {path.resolve()}"
    graph = chain_graph()
    PassManager("strip-identity,drop-relu{mode=all}", registry=registry).run(graph)
    assert ops(graph) == ["Identity"]
    assert str(Pipeline.parse("drop-relu{mode=none}", registry=registry)) == "drop-relu{mode=none}"


def test_load_pass_file_errors(tmp_path):
    registry = toy_registry()
    with pytest.raises(UsageError, match="no such file"):
        load_pass_file(tmp_path / "missing.py", registry)
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('not today')\n")
    with pytest.raises(UsageError, match="bad.py: the file raised RuntimeError: not today"):
        load_pass_file(bad, registry)
    clash = tmp_path / "clash.py"
    clash.write_text(PASS_FILE.replace('"drop-relu"', '"noop"'))
    with pytest.raises(
        DuplicatePassError, match=r"'noop' is defined twice: .*Noop .* and by .*DropRelu \(file .*clash.py\)"
    ):
        load_pass_file(clash, registry)


def test_load_pass_file_with_decorator_goes_to_the_default_registry(tmp_path):
    path = tmp_path / "decorated_file.py"
    path.write_text(
        PASS_FILE.replace(
            "@dataclass(frozen=True)\nclass DropRelu",
            "@register_pass\n@dataclass(frozen=True)\nclass DropRelu",
        ).replace(
            "from kiln.passmanager import Pass, PassContext",
            "from kiln.passmanager import Pass, PassContext, register_pass",
        )
    )
    with use_registry(toy_registry()) as registry:
        assert load_pass_file(path) == ["drop-relu"]
        assert registry.lookup("drop-relu").provider == f"file {path.resolve()}"
