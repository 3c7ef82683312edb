"""Fixtures for the frontend/exporter tests."""

from __future__ import annotations

import pytest
from frontend_helpers import register_test_op


@pytest.fixture(scope="session")
def kiln_test_op() -> str:
    """The name of a registered kiln op, ``kiln.FrontendTestScaleAdd(x, [y]) = x * alpha (+ y)``."""
    return register_test_op()


@pytest.fixture(scope="session")
def broken_kiln_op() -> str:
    """The name of a registered kiln op whose decomposition raises."""
    from frontend_helpers import register_broken_op

    return register_broken_op()
