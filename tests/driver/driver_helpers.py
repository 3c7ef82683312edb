"""Helpers for the driver tests: tiny models, running ``kiln``, checking errors.

(A module of its own, not ``conftest``: other test folders have conftests too.)
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx.parser
import pytest

TINY = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[N, 4] x) => (float[N, 4] y) {
    w = Constant <value = float[4] {1.0, 2.0, 3.0, 4.0}> ()
    two = Constant <value = float[1] {2.0}> ()
    w2 = Mul(w, two)
    a = Add(x, w2)
    b = Identity(a)
    y = Relu(b)
}
"""

# The same function with a different constant: verify must see the difference.
TINY_OFF = TINY.replace("{2.0}", "{2.5}")


def _missing(spec: str) -> str | None:
    """Why ``module[:attr]`` is not usable yet, or ``None`` when it is."""
    module, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - absent or still being written
        return f"{module} ({type(exc).__name__})"
    if attr and not hasattr(mod, attr):
        return f"{module}.{attr}"
    return None


def requires(*specs: str) -> pytest.MarkDecorator:
    """Skips a test until the kiln modules it needs (``module[:attr]``, written by others) work."""
    missing = [m for m in (_missing(s) for s in specs) if m]
    return pytest.mark.skipif(bool(missing), reason=f"not available yet: {', '.join(missing)}")


# What a full `kiln compile` needs besides the driver.
COMPILE_STACK = (
    "kiln.frontend:load",
    "kiln.exporter:save",
    "kiln.passmanager.pipeline:Pipeline",
    "kiln.passmanager.manager:PassManager",
)
INSPECT_STACK = ("kiln.frontend:load",)
PASSES_STACK = ("kiln.passmanager.registry:available_passes",)


def write_model(path: Path, text: str = TINY) -> Path:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@dataclass
class Run:
    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def kiln_subprocess(*args: str, cwd: Path | None = None) -> Run:
    """``python -m kiln ARGS`` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-m", "kiln", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_clean_error(run: Run, *needles: str) -> None:
    """Exit 2, exactly one ``kiln: error:`` line on stderr, no traceback, nothing on stdout."""
    assert run.rc == 2, (run.rc, run.err)
    assert "Traceback" not in run.err
    assert len(run.err_lines) == 1, run.err
    assert run.err_lines[0].startswith("kiln: error: "), run.err
    assert run.out == ""
    for needle in needles:
        assert needle in run.err, (needle, run.err)
