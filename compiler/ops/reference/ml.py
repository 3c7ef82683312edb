"""Numpy references of ``ai.onnx.ml`` ops: LabelEncoder, TreeEnsemble,
Binarizer, ArrayFeatureExtractor.

They register under the ``ai.onnx.ml`` domain and take the node's version
of that domain in ``ctx.version``.  String tensors are ``object`` arrays of
``str``, as in :mod:`kiln.ops.reference.text`.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
from kiln.ops.reference._registry import RefContext, reference

Inputs = list["np.ndarray | None"]
Attrs = dict[str, Any]

ML = "ai.onnx.ml"


def _req(inputs: Inputs, i: int) -> np.ndarray:
    a = inputs[i] if i < len(inputs) else None
    if a is None:
        raise ValueError(f"required input {i} is missing")
    return a


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _is_string(a: np.ndarray) -> bool:
    return a.dtype == object or a.dtype.kind in "SU"


# --------------------------------------------------------------------------- LabelEncoder


def _table(attrs: Attrs, kind: str) -> np.ndarray | None:
    """The ``keys``/``values`` attribute that is set, as an array."""
    if attrs.get(f"{kind}_tensor") is not None:
        t = np.asarray(attrs[f"{kind}_tensor"]).reshape(-1)
        return np.array([_text(v) for v in t], dtype=object) if _is_string(t) else t
    if attrs.get(f"{kind}_strings") is not None:
        return np.array([_text(v) for v in attrs[f"{kind}_strings"]], dtype=object)
    if attrs.get(f"{kind}_int64s") is not None:
        return np.asarray(attrs[f"{kind}_int64s"], dtype=np.int64)
    if attrs.get(f"{kind}_floats") is not None:
        return np.asarray(attrs[f"{kind}_floats"], dtype=np.float32)
    return None


def _default(attrs: Attrs, values: np.ndarray) -> Any:
    if attrs.get("default_tensor") is not None:
        d = np.asarray(attrs["default_tensor"]).reshape(-1)[0]
        return _text(d) if _is_string(values) else d
    if _is_string(values):
        return _text(attrs.get("default_string", "_Unused"))
    if values.dtype.kind == "f":
        return float(attrs.get("default_float", -0.0))
    return int(attrs.get("default_int64", -1))


def _lookup(x: np.ndarray, keys: np.ndarray, values: np.ndarray, default: Any) -> np.ndarray:
    """Maps each element of ``x`` through ``keys -> values``; a NaN key matches
    every NaN; a repeated key keeps its last value."""
    strings = _is_string(keys)
    mapping: dict[Any, Any] = {}
    nan_value = None
    for k, v in zip(keys.tolist(), values.tolist()):
        if not strings and isinstance(k, float) and math.isnan(k):
            nan_value = v
        else:
            mapping[_text(k) if strings else k] = v
    out = np.empty(x.shape, dtype=values.dtype)
    flat = out.reshape(-1)
    for i, e in enumerate(np.asarray(x).reshape(-1).tolist()):
        if strings:
            flat[i] = mapping.get(_text(e), default)
        elif isinstance(e, float) and math.isnan(e):
            flat[i] = default if nan_value is None else nan_value
        else:
            flat[i] = mapping.get(e, default)
    return out


@reference("LabelEncoder", domain=ML)
def label_encoder_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Maps each element through the parallel ``keys_*``/``values_*`` attributes.

    Opset 1 instead maps strings to their index in ``classes_strings`` (or
    ``default_int64``) and integers back to ``classes_strings`` (or
    ``default_string``).
    """
    x = _req(inputs, 0)
    if "classes_strings" in attrs:
        classes = np.array([_text(c) for c in attrs["classes_strings"]], dtype=object)
        if _is_string(x):
            index = np.arange(len(classes), dtype=np.int64)
            return [_lookup(x, classes, index, int(attrs.get("default_int64", -1)))]
        index = np.arange(len(classes), dtype=np.int64)
        return [_lookup(x.astype(np.int64), index, classes, _text(attrs.get("default_string", "_Unused")))]
    keys, values = _table(attrs, "keys"), _table(attrs, "values")
    if keys is None or values is None or len(keys) != len(values):
        raise ValueError("LabelEncoder needs one keys_* and one values_* attribute of the same length")
    if not _is_string(keys):
        x = np.asarray(x).astype(keys.dtype, copy=False)
    return [_lookup(x, keys, values, _default(attrs, values))]


# --------------------------------------------------------------------------- TreeEnsemble


def _branch(mode: int, x: float, split: float, members: set[float] | None) -> bool:
    if mode == 0:
        return x <= split
    if mode == 1:
        return x < split
    if mode == 2:
        return x >= split
    if mode == 3:
        return x > split
    if mode == 4:
        return x == split
    if mode == 5:
        return x != split
    if mode == 6:
        assert members is not None
        return x in members
    raise ValueError(f"TreeEnsemble: unknown node mode {mode}")


def _probit(p: float) -> float:
    if p <= 0 or p >= 1:
        return -math.inf if p == 0 else math.inf if p == 1 else math.nan
    return NormalDist().inv_cdf(p)


def _post_transform(scores: np.ndarray, how: int) -> np.ndarray:
    if how == 0:
        return scores
    if how in (1, 3):  # SOFTMAX, SOFTMAX_ZERO (zeros stay zero)
        s = scores - scores.max(axis=1, keepdims=True)
        e = np.exp(s)
        if how == 3:
            e = np.where(scores == 0, 0, e)
        total = e.sum(axis=1, keepdims=True)
        return np.divide(e, total, out=np.zeros_like(e), where=total != 0)
    if how == 2:  # LOGISTIC
        return 1 / (1 + np.exp(-scores))
    if how == 4:  # PROBIT: sqrt(2) * erfinv(2p - 1), the standard normal quantile
        return np.vectorize(_probit, otypes=[np.float64])(scores)
    raise ValueError(f"TreeEnsemble: unknown post_transform {how}")


@reference("TreeEnsemble", domain=ML)
def tree_ensemble_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Walks every tree for every row, then aggregates the reached leaves per target.

    A NaN feature follows the true branch where ``nodes_missing_value_tracks_true``
    says so, else the false branch.  ``BRANCH_MEMBER`` nodes take their sets,
    in order, from ``membership_values`` (sets separated by NaN).  A target no
    leaf reached is 0 (also for MIN/MAX aggregation).
    """
    x = _req(inputs, 0)
    xs = np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)
    modes = [int(m) for m in np.asarray(attrs["nodes_modes"]).reshape(-1)]
    splits = np.asarray(attrs["nodes_splits"], dtype=np.float64).reshape(-1)
    features = [int(f) for f in attrs["nodes_featureids"]]
    true_ids, false_ids = list(attrs["nodes_truenodeids"]), list(attrs["nodes_falsenodeids"])
    true_leaf, false_leaf = list(attrs["nodes_trueleafs"]), list(attrs["nodes_falseleafs"])
    missing_true = list(attrs.get("nodes_missing_value_tracks_true") or [0] * len(modes))
    leaf_targets = [int(t) for t in attrs["leaf_targetids"]]
    leaf_weights = np.asarray(attrs["leaf_weights"], dtype=np.float64).reshape(-1)
    n_targets = int(attrs.get("n_targets") or max(leaf_targets) + 1)
    aggregate = int(attrs.get("aggregate_function", 1))
    members: dict[int, set[float]] = {}
    if 6 in modes:
        values = np.asarray(attrs["membership_values"], dtype=np.float64).reshape(-1).tolist()
        sets: list[set[float]] = [set()]
        for v in values:
            if math.isnan(v):
                sets.append(set())
            else:
                sets[-1].add(v)
        member_nodes = [i for i, m in enumerate(modes) if m == 6]
        members = {node: sets[k] for k, node in enumerate(member_nodes)}

    rows = xs.shape[0]
    total = np.zeros((rows, n_targets))
    low = np.full((rows, n_targets), np.inf)
    high = np.full((rows, n_targets), -np.inf)
    hits = np.zeros((rows, n_targets), dtype=bool)
    for root in attrs["tree_roots"]:
        for r in range(rows):
            node, is_leaf = int(root), False
            while not is_leaf:
                value = xs[r, features[node]]
                if math.isnan(value):
                    go_true = bool(missing_true[node])
                else:
                    go_true = bool(_branch(modes[node], float(value), float(splits[node]), members.get(node)))
                node, is_leaf = (
                    (true_ids[node], true_leaf[node]) if go_true else (false_ids[node], false_leaf[node])
                )
                node = int(node)
            t, w = leaf_targets[node], leaf_weights[node]
            total[r, t] += w
            low[r, t] = min(low[r, t], w)
            high[r, t] = max(high[r, t], w)
            hits[r, t] = True
    if aggregate == 0:
        scores = total / len(attrs["tree_roots"])
    elif aggregate == 1:
        scores = total
    elif aggregate == 2:
        scores = np.where(hits, low, 0)
    elif aggregate == 3:
        scores = np.where(hits, high, 0)
    else:
        raise ValueError(f"TreeEnsemble: unknown aggregate_function {aggregate}")
    return [_post_transform(scores, int(attrs.get("post_transform", 0))).astype(x.dtype)]


# --------------------------------------------------------------------------- small ops


@reference("Binarizer", domain=ML)
def binarizer_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """1 where ``x > threshold``, else 0, in the input's dtype."""
    x = _req(inputs, 0)
    return [(x > float(attrs.get("threshold", 0.0))).astype(x.dtype)]


@reference("ArrayFeatureExtractor", domain=ML)
def array_feature_extractor_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Picks the given indices along the last axis; a 1-D input gives ``[1, k]``."""
    x, indices = _req(inputs, 0), _req(inputs, 1)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    last = x.shape[-1]
    if np.any((idx < -last) | (idx >= last)):
        raise IndexError(f"ArrayFeatureExtractor: index out of [0, {last})")
    y = np.take(x, idx, axis=-1)
    return [y.reshape(1, -1) if x.ndim == 1 else y]
