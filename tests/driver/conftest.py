"""Fixtures for the driver tests (the helpers live in ``driver_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from driver_helpers import Run, write_model


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_model(tmp_path / "tiny.onnx")


@pytest.fixture
def kiln_main(capsys: pytest.CaptureFixture[str]):
    """``kiln.driver.cli.main(argv)`` in this process, with its output captured."""
    from kiln.driver.cli import main

    def run(*args: str) -> Run:
        rc = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Run(rc, captured.out, captured.err)

    return run
