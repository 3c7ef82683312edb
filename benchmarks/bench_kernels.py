"""Calibration kernels: the Cython build (kiln._kernels) against its numpy twins (kiln.kernels._numpy_*).

On a 1M-element float32 activation (ReLU of a standard normal: 50% exact zeros, as after a ReLU; and a
Laplace, a heavy-tailed signed one), per kernel:

* histogram accumulation: a batch into a histogram of 2**14 stored bins that earlier batches gave its width,
  what :meth:`kiln.calib.histogram.TensorHistogram.observe` runs per tensor and batch after the first: native,
  ``hist_observe``, one pass of cached blocks (SIMD statistics, counting); the twin, ``array_stats`` (numpy's
  SIMD min/max) then ``hist_add`` over the whole array;
* KL search: TensorRT's divergence curve over the 2048-bin analysis histogram (1921 candidates, 128 levels);
* MSE search: the expected quantization error at every one of the 2048 candidate thresholds;
* and the issue's figure of merit, histogram collection plus KL search for the tensor.

Times are CPU seconds of this thread (``time.thread_time``, so other processes on a shared machine do not
inflate them), best of ``--repeat``.  The numpy twins run in the same process (``kiln.kernels._numpy_*``).

    python benchmarks/bench_kernels.py            # writes benchmarks/results/kernels.md + .json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
N = 1_000_000
NUM_BINS = 1 << 14


def best(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm: first-touch of scratch memory, lazy imports
    out = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        fn()
        out = min(out, time.thread_time() - start)
    return out


def data(kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind == "relu":
        return np.maximum(rng.standard_normal(N), 0).astype(np.float32)
    return rng.laplace(size=N).astype(np.float32)


def measure(kind: str, repeat: int) -> dict[str, float]:
    from kiln import kernels
    from kiln.calib.histogram import ANALYSIS_BINS, MIN_EXPONENT, TensorHistogram, exponent_for

    native = kernels._native
    assert native is not None, "kiln._kernels is not built (python setup.py build_ext --inplace)"
    x = data(kind)
    scratch = kernels._scratch(NUM_BINS)
    width = exponent_for(kernels.array_stats(x)[2], NUM_BINS)  # as a first batch leaves it

    # What TensorHistogram.observe runs with each build on a batch after the first.
    def collect_native() -> np.ndarray:
        hist = np.zeros(NUM_BINS, dtype=np.int64)
        native.hist_observe(hist, x, width, MIN_EXPONENT, scratch)
        return hist

    def collect_numpy() -> np.ndarray:
        hist = np.zeros(NUM_BINS, dtype=np.int64)
        lo, hi, absmax, _, _ = kernels.array_stats(x)
        exponent = exponent_for(absmax, NUM_BINS)
        used = min(NUM_BINS, int(np.ldexp(absmax, -exponent)) + 1)
        kernels._numpy_hist_add(hist, x, exponent, used)
        return hist

    assert np.array_equal(collect_native(), collect_numpy())
    h = TensorHistogram(NUM_BINS)
    h.observe(x)
    hist, width = h.analysis(ANALYSIS_BINS)
    hist[0] = hist[1]  # as kiln.calib.kl.kl_threshold does
    a, b = native.kl_divergences(hist, 128, 128), kernels._numpy_kl_divergences(hist, 128, 128)
    assert int(np.argmin(a)) == int(np.argmin(b))
    out = {
        "hist_cython_s": best(collect_native, repeat),
        "hist_numpy_s": best(collect_numpy, repeat),
        "kl_cython_s": best(lambda: native.kl_divergences(hist, 128, 128), repeat),
        "kl_numpy_s": best(lambda: kernels._numpy_kl_divergences(hist, 128, 128), max(1, repeat // 4)),
        "mse_cython_s": best(lambda: native.mse_errors(hist, width, 127, 1), repeat),
        "mse_numpy_s": best(lambda: kernels._numpy_mse_errors(hist, width, 127, 1), max(1, repeat // 4)),
    }
    out["both_cython_s"] = out["hist_cython_s"] + out["kl_cython_s"]
    out["both_numpy_s"] = out["hist_numpy_s"] + out["kl_numpy_s"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=8)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "kernels"))
    args = p.parse_args()
    results = {kind: measure(kind, args.repeat) for kind in ("relu", "laplace")}
    rows = [("histogram accumulation (hist_observe, 2**14 bins)", "hist"),
            ("KL threshold search (2048 bins, 1921 candidates, 128 levels)", "kl"),
            ("MSE threshold search (2048 candidates)", "mse"),
            ("histogram collection + KL search (the issue's measure)", "both")]
    lines = [
        "# Calibration kernels: Cython (kiln._kernels) vs the numpy twins",
        "",
        (f"`python benchmarks/bench_kernels.py --repeat {args.repeat}`; a 1M-element float32 tensor; CPU time of "
         f"the calling thread, best of {args.repeat} (numpy KL/MSE: best of {max(1, args.repeat // 4)}); "
         f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}."),
        "",
        "| kernel | data | Cython ms | numpy ms | speed-up |",
        "|---|---|---|---|---|",
    ]
    for label, key in rows:
        for kind, r in results.items():
            c, n = r[f"{key}_cython_s"], r[f"{key}_numpy_s"]
            lines.append(f"| {label} | {kind} | {c * 1e3:.2f} | {n * 1e3:.1f} | {n / c:.0f}x |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
