"""Per-tensor statistics and histograms of ``|x|`` that merge exactly.

A :class:`TensorHistogram` holds, for one tensor, the min, max and count of
its finite values and a histogram of ``|x|`` with a fixed number of bins
(``NUM_BINS = 2**14`` by default) whose bin width is always a power of two,
``2**e``.  Bin ``j`` covers ``[j * 2**e, (j + 1) * 2**e)``.

Range growth.  When the data holds a value at or above ``num_bins * 2**e``,
the exponent grows to the smallest ``e'`` that covers its largest ``|x|``
and every ``2**(e' - e)`` consecutive old bins are summed into one new bin;
then the data is counted.  The native kernel does this in one pass, a block
of a few thousand values at a time (statistics, growth, counting while the
block is in cache), so a width can grow in the middle of a batch.

Why this is exact.  A value ``x`` counted at exponent ``e`` sits in bin
``floor(|x| / 2**e)``; after growing by ``d`` it is in bin
``floor(floor(|x| / 2**e) / 2**d)``, which equals ``floor(|x| / 2**(e + d))``
(for ``a >= 0`` and a positive integer ``n``, ``floor(floor(a) / n) ==
floor(a / n)``).  ``|x| / 2**e`` is computed exactly in double precision
(a power-of-two scale of a float), so every value ends in the bin it would
have had if the whole data set had been histogrammed at once at the final
exponent.  The final exponent is the smallest one covering the largest
``|x|`` seen, which does not depend on the order of the batches.  Two
histograms merge by coarsening the finer one to the coarser exponent and
adding counts, under the same argument.  So the result is bit-for-bit the
same whatever the batch size, the order, or the way a data set was split
over worker processes (``tests/calib/test_histogram.py`` checks this).

The threshold searches run on an *analysis* histogram of 2048 bins
(:meth:`TensorHistogram.analysis`): the stored bins merged by the smallest
integer factor ``g`` that brings the used range under 2048 bins, so the 2048
bins span ``[0, 2048 * g * 2**e)``, at least 80% of which (for the default
``2**14`` stored bins) lies below the largest ``|x|``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kiln import kernels

NUM_BINS = 1 << 14
"""Stored bins per tensor (int64 counts: 128 KiB)."""

ANALYSIS_BINS = 2048
"""Bins of the histogram the threshold searches read (TensorRT's 2048)."""

MIN_EXPONENT = -160
"""The exponent of an empty histogram: below any float32 magnitude's bin width."""


def exponent_for(absmax: float, num_bins: int = NUM_BINS) -> int:
    """The smallest ``e`` with ``absmax < num_bins * 2**e`` (at least :data:`MIN_EXPONENT`)."""
    return kernels.exponent_for(absmax, num_bins, MIN_EXPONENT)


class TensorHistogram:
    """Streaming statistics of one tensor: min, max, counts, and a histogram of ``|x|``.

    Args:
        num_bins: stored bins, a power of two (every histogram that is merged
            with this one must have the same number).
    """

    __slots__ = ("bins", "count", "exponent", "max", "min", "nonfinite")

    def __init__(self, num_bins: int = NUM_BINS) -> None:
        if num_bins < 1 or num_bins & (num_bins - 1):
            raise ValueError(f"num_bins must be a power of two, not {num_bins}")
        self.bins = np.zeros(num_bins, dtype=np.int64)
        self.exponent = MIN_EXPONENT
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.nonfinite = 0

    # ---- facts

    @property
    def num_bins(self) -> int:
        return int(self.bins.shape[0])

    @property
    def absmax(self) -> float:
        """The largest finite ``|x|`` seen (0.0 when nothing was)."""
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    @property
    def bin_width(self) -> float:
        return math.ldexp(1.0, self.exponent)

    def used_bins(self) -> int:
        """One past the last non-empty bin (0 for an empty histogram)."""
        nz = np.flatnonzero(self.bins)
        return int(nz[-1]) + 1 if nz.size else 0

    # ---- accumulation

    def observe(self, x: np.ndarray) -> None:
        """Adds every value of ``x`` (any shape, any float dtype); non-finite values are only counted."""
        flat = kernels._flat_real(x)
        if flat.size == 0:
            return
        # One pass: the kernel grows the bin width (coarsening the bins, exactly) as the data needs it.
        self.exponent, lo, hi, finite, bad = kernels.hist_observe(self.bins, flat, self.exponent, MIN_EXPONENT)
        self.nonfinite += bad
        if finite == 0:
            return
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += finite

    def observe_range(self, x: np.ndarray) -> None:
        """Adds ``x`` to the min, max and counts only (for ``minmax``, which reads nothing else)."""
        flat = kernels._flat_real(x)
        if flat.size == 0:
            return
        lo, hi, _, finite, bad = kernels.array_stats(flat)
        self.nonfinite += bad
        if finite == 0:
            return
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += finite

    def grow(self, exponent: int) -> None:
        """Coarsens the bins to ``exponent`` when it is larger than the current one (exact)."""
        if exponent > self.exponent:
            kernels.hist_coarsen(self.bins, exponent - self.exponent)
            self.exponent = exponent

    def merge(self, other: TensorHistogram) -> TensorHistogram:
        """Adds ``other``'s data to this histogram (exactly, see the module doc); returns self."""
        if other.num_bins != self.num_bins:
            raise ValueError(f"cannot merge histograms of {self.num_bins} and {other.num_bins} bins")
        if other.count == 0:
            self.nonfinite += other.nonfinite
            return self
        self.grow(other.exponent)
        theirs = other.bins
        if other.exponent < self.exponent:
            theirs = other.bins.copy()
            kernels.hist_coarsen(theirs, self.exponent - other.exponent)
        self.bins += theirs
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.nonfinite += other.nonfinite
        return self

    def copy(self) -> TensorHistogram:
        h = TensorHistogram(self.num_bins)
        h.bins[:] = self.bins
        h.exponent, h.min, h.max, h.count, h.nonfinite = self.exponent, self.min, self.max, self.count, self.nonfinite
        return h

    # ---- analysis

    def analysis(self, num_bins: int = ANALYSIS_BINS) -> tuple[np.ndarray, float]:
        """The histogram the threshold searches read: ``num_bins`` float64 bins and their width.

        Stored bins are merged by the smallest integer factor that brings the
        used range under ``num_bins`` bins (exact: each analysis bin is a sum
        of whole stored bins).
        """
        used = self.used_bins()
        group = max(1, -(-used // num_bins))
        padded = np.zeros(num_bins * group, dtype=np.float64)
        take = min(self.num_bins, padded.size)
        padded[:take] = self.bins[:take]
        return padded.reshape(num_bins, group).sum(axis=1), self.bin_width * group

    # ---- serialization (plain arrays: no pickle)

    def state(self) -> dict[str, Any]:
        """A compact, picklable-free description (trailing empty bins dropped)."""
        used = self.used_bins()
        return {
            "bins": self.bins[:used].copy(),
            "num_bins": self.num_bins,
            "exponent": self.exponent,
            "min": self.min,
            "max": self.max,
            "count": self.count,
            "nonfinite": self.nonfinite,
        }

    @staticmethod
    def from_state(state: Mapping[str, Any]) -> TensorHistogram:
        h = TensorHistogram(int(state["num_bins"]))
        bins = np.asarray(state["bins"], dtype=np.int64)
        h.bins[: bins.size] = bins
        h.exponent = int(state["exponent"])
        h.min, h.max = float(state["min"]), float(state["max"])
        h.count, h.nonfinite = int(state["count"]), int(state["nonfinite"])
        return h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorHistogram):
            return NotImplemented
        return (
            self.exponent == other.exponent
            and self.count == other.count
            and self.nonfinite == other.nonfinite
            and (self.min == other.min or (self.count == 0))
            and (self.max == other.max or (self.count == 0))
            and np.array_equal(self.bins, other.bins)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"TensorHistogram(count={self.count}, min={self.min:g}, max={self.max:g}, "
            f"bin_width=2**{self.exponent}, used_bins={self.used_bins()})"
        )


@dataclass
class CalibrationStats:
    """Histograms of many tensors, by value name, and the number of samples behind them.

    ``histograms=False`` keeps only each tensor's min, max and counts (all that
    ``minmax`` reads; the bins stay empty and the other calibrators refuse them).
    """

    tensors: dict[str, TensorHistogram] = field(default_factory=dict)
    samples: int = 0
    num_bins: int = NUM_BINS
    histograms: bool = True

    def observe(self, name: str, x: np.ndarray) -> None:
        h = self.tensors.get(name)
        if h is None:
            h = self.tensors[name] = TensorHistogram(self.num_bins)
        if self.histograms:
            h.observe(x)
        else:
            h.observe_range(x)

    def merge(self, other: CalibrationStats) -> CalibrationStats:
        """Adds ``other`` (exactly); returns self."""
        self.histograms = self.histograms and other.histograms
        for name, h in other.tensors.items():
            mine = self.tensors.get(name)
            if mine is None:
                self.tensors[name] = h.copy()
            else:
                mine.merge(h)
        self.samples += other.samples
        return self

    def __getitem__(self, name: str) -> TensorHistogram:
        return self.tensors[name]

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def state(self) -> dict[str, Any]:
        return {"samples": self.samples, "num_bins": self.num_bins, "histograms": self.histograms,
                "tensors": {k: v.state() for k, v in self.tensors.items()}}

    @staticmethod
    def from_state(state: Mapping[str, Any]) -> CalibrationStats:
        stats = CalibrationStats(samples=int(state["samples"]), num_bins=int(state["num_bins"]),
                                 histograms=bool(state.get("histograms", True)))
        stats.tensors = {k: TensorHistogram.from_state(v) for k, v in state["tensors"].items()}
        return stats

    def save(self, path: str) -> None:
        """Writes the histograms to an ``.npz`` (plain arrays; read back with :meth:`load`)."""
        arrays: dict[str, np.ndarray] = {
            "__samples__": np.array([self.samples, self.num_bins, int(self.histograms)], dtype=np.int64)}
        names = sorted(self.tensors)
        arrays["__names__"] = np.array(names, dtype=np.str_)
        for i, name in enumerate(names):
            h = self.tensors[name]
            arrays[f"b{i}"] = h.bins[: h.used_bins()]
            arrays[f"m{i}"] = np.array([h.min, h.max], dtype=np.float64)
            arrays[f"c{i}"] = np.array([h.exponent, h.count, h.nonfinite], dtype=np.int64)
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]

    @staticmethod
    def load(path: str) -> CalibrationStats:
        with np.load(path, allow_pickle=False) as data:
            head = [int(v) for v in data["__samples__"]]
            samples, num_bins = head[:2]
            stats = CalibrationStats(samples=samples, num_bins=num_bins, histograms=bool(head[2]) if len(head) > 2 else True)
            for i, name in enumerate(data["__names__"].tolist()):
                lo, hi = data[f"m{i}"].tolist()
                exponent, count, bad = data[f"c{i}"].tolist()
                stats.tensors[name] = TensorHistogram.from_state(
                    {"bins": data[f"b{i}"], "num_bins": num_bins, "exponent": exponent, "min": lo, "max": hi,
                     "count": count, "nonfinite": bad}
                )
        return stats


def merge_all(parts: Iterable[CalibrationStats]) -> CalibrationStats:
    """The exact merge of several statistics (an empty one if there are none)."""
    out: CalibrationStats | None = None
    for part in parts:
        if out is None:
            out = CalibrationStats(num_bins=part.num_bins)
        out.merge(part)
    return out if out is not None else CalibrationStats()
