"""float16 weight storage with float32 islands: the fewest most sensitive weights kept in float32.

Rounding a weight to float16 costs ~5e-4 relative, which most models shrug off; a few
layers amplify it into a wrong output (PP-OCRv4 det: early depthwise convolutions whose
outputs later cancel).  The targets that store weights in float16 (NCNN's fp16 storage,
TFLite's float16 mode) keep those few in float32.  :func:`fewest_sensitive` is the
search; each target measures with what runs its format (ncnn's runtime for NCNN, and
onnxruntime on the IR, :func:`onnxruntime_islands`, for TFLite, whose float16 weights
are dequantized at load so the IR with rounded weights computes the same numbers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

BUDGET = 1e-3
"""Max relative output error of float16 weights against float32 ones, on deterministic random inputs."""


def output_error(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """The largest max |a - b| / max |a| over the outputs."""
    return max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(reference, actual))


def fewest_sensitive(candidates: Sequence[int], error_with_fp16: Callable[[set[int]], float],
                     budget: float = BUDGET, sensitivity: Callable[[int], float] | None = None,
                     guess: Callable[[list[int], int, float], int] | None = None) -> set[int]:
    """The candidates to keep in float32: none when all of them in float16 stay within ``budget``, else the
    fewest most sensitive ones that bring the error within budget (all of them, at worst).

    A candidate's sensitivity is the error with only it in float16 (``sensitivity(i)``, by default
    ``error_with_fp16({i})``).  The search is on how many of the most sensitive stay float32, in the bracket of
    counts known to fail and to pass: each step tries the count ``guess(order, count, error)`` proposes (given
    the candidates from the most sensitive down, and the largest count known to fail with its error, 0 being
    all of them in float16; by default twice that count), a step inside the bracket from the end it names when
    it names one (doubling while that repeats), and bisection once the guesses have had their turns.  A good
    guess settles it in a few measurements; the answer is the same whatever the guess, wherever the error
    shrinks as more candidates stay float32.
    """
    everything = set(candidates)
    error_of_all = error_with_fp16(everything) if everything else 0.0
    if not everything or error_of_all <= budget:
        return set()
    alone = sensitivity if sensitivity is not None else (lambda i: error_with_fp16({i}))
    order = [i for _, i in sorted(((alone(i), i) for i in candidates), key=lambda t: (-t[0], t[1]))]
    propose = guess if guess is not None else (lambda order, count, error: max(1, 2 * count))
    low, low_error, high = 0, error_of_all, len(order)  # low fails (with low_error), high passes
    guesses = max(2, len(order).bit_length())  # then bisection: never much worse than bisecting throughout
    step = 1
    while high - low > 1:
        count = propose(order, low, low_error) if guesses > 0 else (low + high) // 2
        guesses -= 1
        if low < count < high:
            step = 1
        else:  # a guess on or past an end of the bracket: step inside from that end, further each time in a row
            count = low + step if count <= low else high - step
            count = min(max(count, low + 1), high - 1)
            step *= 2
        error = error_with_fp16(set(order[count:]))
        if error <= budget:
            high = count
        else:
            low, low_error = count, error
    return set(order[:high])


def onnxruntime_islands(graph: object, budget: float = BUDGET, names: Iterable[str] | None = None,
                        inputs: dict[str, np.ndarray] | None = None) -> set[str]:
    """Names of the graph's float32 constants (more than one element) to keep in float32, measured with
    onnxruntime on the exported IR: one session with the weights as graph inputs, one run per trial."""
    import onnx
    import onnxruntime as ort
    from kiln.exporter import to_onnx
    from onnx import numpy_helper

    model = to_onnx(graph)  # type: ignore[arg-type]
    allowed = set(names) if names is not None else None
    weights: dict[str, np.ndarray] = {}
    keep = []
    for init in model.graph.initializer:
        data = numpy_helper.to_array(init)
        if data.dtype == np.float32 and data.size > 1 and (allowed is None or init.name in allowed):
            weights[init.name] = data
        else:
            keep.append(init)
    if not weights:
        return set()
    fed = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(data.shape))
           for name, data in weights.items()]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    model.graph.input.extend(fed)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in weights:
            continue
        if inputs is not None and value.name in inputs:
            feed[value.name] = np.asarray(inputs[value.name])
            continue
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feed[value.name] = rng.standard_normal(dims).astype(dtype)
    names_in_order = sorted(weights)
    half = {name: weights[name].astype(np.float16).astype(np.float32) for name in names_in_order}

    def run(rounded: set[int]) -> list[np.ndarray]:
        trial = dict(feed)
        for i, name in enumerate(names_in_order):
            trial[name] = half[name] if i in rounded else weights[name]
        return session.run(None, trial)

    reference = run(set())
    islands = fewest_sensitive(range(len(names_in_order)), lambda s: output_error(reference, run(s)), budget)
    report_islands([weights[names_in_order[i]].nbytes for i in islands],
                   [w.nbytes for w in weights.values()], budget)
    return {names_in_order[i] for i in islands}


def report_islands(kept_bytes: Sequence[int], all_bytes: Sequence[int], budget: float) -> None:
    """One warning line when float16 storage keeps weights in float32: the user asked for float16 and gets a
    file that is partly float32, and should know how much."""
    if kept_bytes:
        logger.warning("fp16: %d of %d weight tensors (%.0f%% of the weight bytes) stay float32: float16 would "
                       "move the output by more than %.0e (relative) on random inputs",
                       len(kept_bytes), len(all_bytes), 100.0 * sum(kept_bytes) / max(sum(all_bytes), 1), budget)
