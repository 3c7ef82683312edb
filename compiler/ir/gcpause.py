"""Pausing Python's cyclic garbage collector while building or rewriting big graphs.

Loading a 100k-node model allocates millions of small objects; the cyclic
collector then scans the ever-growing heap again and again, which makes
load and optimize grow faster than the graph.  The IR creates no garbage
cycles it relies on the collector for, so kiln pauses it around its bulk
work.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Disables the cyclic GC inside the block (re-entrant); restores it after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
