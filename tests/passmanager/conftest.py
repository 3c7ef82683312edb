"""Fixtures for the pass-manager tests: a registry of toy passes and a small graph."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
from kiln.ir import Graph
from kiln.passmanager import PassRegistry, use_registry
from pm_toys import chain_graph, toy_print, toy_registry


@pytest.fixture
def registry() -> PassRegistry:
    """The toy passes and presets; also the default registry while the test runs."""
    reg = toy_registry()
    with use_registry(reg):
        yield reg


@pytest.fixture
def graph() -> Graph:
    return chain_graph()


@pytest.fixture
def printer() -> Callable[[Graph], str]:
    """kiln.ir.print_ir once the text printer exists, a stand-in before that."""
    if importlib.util.find_spec("kiln.ir.printer") is not None:
        from kiln.ir import print_ir

        return print_ir
    return toy_print
