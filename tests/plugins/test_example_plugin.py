"""Plugins end to end: a real package installed with pip, and a pass loaded from a file."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kiln.passmanager import PassManager, PassRegistry, Pipeline, load_pass_file, use_registry

HERE = Path(__file__).parent
PLUGIN = HERE / "kiln_example_plugin"
DIST = "kiln-example-plugin"


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], check=False, capture_output=True, text=True, timeout=300
    )


def _installed() -> bool:
    try:
        importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture
def installed_plugin(tmp_path):
    """kiln-example-plugin pip-installed into this environment (removed again unless it was there)."""
    if _pip("--version").returncode != 0:
        pytest.skip("pip is not available")
    was_installed = _installed()
    source = tmp_path / "src"
    shutil.copytree(PLUGIN, source)  # pip builds in the source folder: keep the repository clean
    result = _pip("install", "--no-build-isolation", "--no-deps", "--no-index", "-q", str(source))
    if result.returncode != 0:
        pytest.fail(f"pip could not install the example plugin:\n{result.stdout}\n{result.stderr}")
    yield
    if not was_installed:
        _pip("uninstall", "-y", "-q", DIST)


FRESH_PROCESS = textwrap.dedent(
    """
    import json
    from kiln.ir import DType, Graph, TensorType
    from kiln.passmanager import PassContext, PassManager, lookup_pass

    info = lookup_pass("count-ops")
    g = Graph()
    g.opsets = {"": 17}
    x = g.add_input("x", TensorType(DType.FLOAT, (2, 3)))
    a = g.create_node("Relu", [x])
    b = g.create_node("Relu", [a.outputs[0]])
    c = g.create_node("Neg", [b.outputs[0]])
    g.outputs.append(c.outputs[0])
    ctx = PassContext()
    report = PassManager("count-ops{prefix=before}").run(g, ctx)
    print(json.dumps({"provider": info.provider, "summary": info.summary, "module": info.cls.__module__,
                      "stats": ctx.stats, "changed": report.changed}))
    """
)


def test_installed_plugin_is_found_by_name_in_a_fresh_process(installed_plugin):
    command = [sys.executable, "-c", FRESH_PROCESS]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["provider"].startswith(
        "entry point 'kiln-example-plugin' (kiln_example_plugin) of kiln-example-plugin 0.1.0"
    )
    assert found["module"] == "kiln_example_plugin.count_ops"
    assert (
        found["summary"] == "Records how many nodes of each op the graph has in ctx.stats (changes nothing)."
    )
    assert found["stats"] == {"before.onnx.Neg": 1, "before.onnx.Relu": 2}
    assert found["changed"] is False


def test_plugin_declares_the_kiln_passes_entry_point(installed_plugin):
    eps = [
        ep
        for ep in importlib.metadata.entry_points(group="kiln.passes")
        if ep.dist and ep.dist.metadata["Name"] == DIST
    ]
    assert [(ep.name, ep.value) for ep in eps] == [("kiln-example-plugin", "kiln_example_plugin")]


def test_load_pass_file(tmp_path):
    from kiln.ir import DType, Graph, TensorType

    registry = PassRegistry(entry_point_group=None)
    with use_registry(registry):
        assert load_pass_file(HERE / "example_pass_file.py") == ["name-nodes"]
        g = Graph()
        g.opsets = {"": 17}
        x = g.add_input("x", TensorType(DType.FLOAT, (2,)))
        g.outputs.append(g.create_node("Relu", [x]).outputs[0])
        report = PassManager("name-nodes{prefix=relu_}").run(g)
        assert report.ran == ["name-nodes"] and report.changed
        assert [n.name for n in g] == ["relu_0"]
        assert str(Pipeline.parse("name-nodes{prefix=x}")) == "name-nodes{prefix=x}"
        assert registry.lookup("name-nodes").provider == f"file {(HERE / 'example_pass_file.py').resolve()}"
