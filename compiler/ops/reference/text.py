"""Numpy references of ONNX's string ops and of TfIdfVectorizer.

String tensors are numpy ``object`` arrays of Python ``str`` (``bytes``
elements are decoded as UTF-8 on the way in); every string output is an
``object`` array of ``str``.

RegexFullMatch uses Python's :mod:`re` on the subset of RE2 syntax both
engines share.  The pattern is checked and translated first so that the
differences cannot silently change a result: ``\\w \\d \\s \\b`` are ASCII as in
RE2, ``\\z`` becomes ``\\Z``, ``(?<name>`` becomes ``(?P<name>``, POSIX
classes (``[[:alpha:]]``) are expanded, and the constructs RE2 rejects or
Python lacks (backreferences, lookaround, atomic groups, possessive
quantifiers, ``\\p{...}`` classes, ``\\Q..\\E``, ``\\C``, case-insensitive
non-ASCII) raise, so a node using them is simply not folded.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np
from kiln.ops.reference._registry import RefContext, reference

Inputs = list["np.ndarray | None"]
Attrs = dict[str, Any]


def _req(inputs: Inputs, i: int) -> np.ndarray:
    a = inputs[i] if i < len(inputs) else None
    if a is None:
        raise ValueError(f"required input {i} is missing")
    return a


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _strings(x: np.ndarray) -> np.ndarray:
    """An ``object`` array of ``str`` with ``x``'s shape."""
    out = np.empty(np.shape(x), dtype=object)
    flat = np.asarray(x, dtype=object).reshape(-1)
    out.reshape(-1)[:] = [_text(v) for v in flat]
    return out


def _map_strings(fn: Any, x: np.ndarray, dtype: Any = object) -> np.ndarray:
    strings = _strings(x)
    out = np.empty(strings.shape, dtype=dtype)
    out.reshape(-1)[:] = [fn(s) for s in strings.reshape(-1)]
    return out


# --------------------------------------------------------------------------- simple string ops


@reference("StringConcat")
def string_concat_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Elementwise ``X + Y`` with numpy broadcasting."""
    a, b = np.broadcast_arrays(_strings(_req(inputs, 0)), _strings(_req(inputs, 1)))
    out = np.empty(a.shape, dtype=object)
    out.reshape(-1)[:] = [x + y for x, y in zip(a.reshape(-1), b.reshape(-1))]
    return [out]


@reference("StringSplit")
def string_split_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Splits each string on ``delimiter`` (runs of whitespace, ends trimmed, when
    it is unset or empty), at most ``maxsplit`` times.  ``Y`` gains a last axis
    as long as the longest split, padded with ``""``; ``Z`` counts the pieces."""
    x = _strings(_req(inputs, 0))
    delimiter = _text(attrs.get("delimiter", "")) or None
    maxsplit = attrs.get("maxsplit")
    limit = -1 if maxsplit is None else int(maxsplit)
    pieces = [s.split(delimiter, limit) for s in x.reshape(-1)]
    width = max((len(p) for p in pieces), default=0)
    y = np.full((len(pieces), width), "", dtype=object)
    for i, p in enumerate(pieces):
        y[i, : len(p)] = p
    counts = np.array([len(p) for p in pieces], dtype=np.int64)
    return [y.reshape(x.shape + (width,)), counts.reshape(x.shape)]


@reference("StringNormalizer")
def string_normalizer_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """Drops the stop words from a ``[C]`` or ``[1, C]`` tensor, then changes case.

    Stop words compare case-insensitively unless ``is_case_sensitive``; if
    nothing is left the output is ``[""]`` (``[[""]]`` for 2-D input).  Case
    changes use Unicode rules; ``locale`` is not consulted.
    """
    x = _strings(_req(inputs, 0))
    if x.ndim == 2 and x.shape[0] != 1 or x.ndim not in (1, 2):
        raise ValueError(f"StringNormalizer takes [C] or [1, C], got {list(x.shape)}")
    action = _text(attrs.get("case_change_action", "NONE")).upper()
    if action not in ("NONE", "LOWER", "UPPER"):
        raise ValueError(f"unknown case_change_action {action!r}")
    sensitive = bool(attrs.get("is_case_sensitive", 0))
    stop = [_text(s) for s in attrs.get("stopwords") or []]
    if sensitive:
        stopset = set(stop)
        kept = [s for s in x.reshape(-1) if s not in stopset]
    else:
        stopset = {s.casefold() for s in stop}
        kept = [s for s in x.reshape(-1) if s.casefold() not in stopset]
    if action == "LOWER":
        kept = [s.lower() for s in kept]
    elif action == "UPPER":
        kept = [s.upper() for s in kept]
    if not kept:
        kept = [""]
    out = np.empty(len(kept), dtype=object)
    out[:] = kept
    return [out.reshape(1, -1) if x.ndim == 2 else out]


# --------------------------------------------------------------------------- RegexFullMatch

_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_REJECTED_ESCAPES = set("pPCQEXRgGKhNZ123456789")


def _re2_to_python(pattern: str) -> str:
    """Translates an RE2 pattern to an equivalent Python one, or raises."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise ValueError("RegexFullMatch: pattern ends with a backslash")
            e = pattern[i + 1]
            if e in _REJECTED_ESCAPES:
                raise NotImplementedError(f"RegexFullMatch: \\{e} is not in the supported RE2 subset")
            if e == "s":  # RE2's \s has no \v
                out.append("\\t\\n\\f\\r " if in_class else "[\\t\\n\\f\\r ]")
            elif e == "S":
                if in_class:
                    raise NotImplementedError("RegexFullMatch: \\S inside a character class")
                out.append("[^\\t\\n\\f\\r ]")
            elif e == "z":
                out.append("\\Z")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "[" and pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                name = pattern[i + 2 : end] if end > 0 else ""
                negated = name.startswith("^")
                if end < 0 or name.lstrip("^") not in _POSIX_CLASSES or negated:
                    raise NotImplementedError(f"RegexFullMatch: POSIX class at {i} is not supported")
                out.append(_POSIX_CLASSES[name])
                i = end + 2
                continue
            if c == "]" and not (out and out[-1] in ("[", "[^")):
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            if pattern.startswith("[^", i):
                out.append("[^")
                i += 2
            else:
                out.append("[")
                i += 1
            if i < n and pattern[i] == "]":  # a leading ] is a literal
                out.append("\\]")
                i += 1
            continue
        if c == "(" and pattern.startswith("(?", i):
            rest = pattern[i + 2 : i + 4]
            if rest[:1] in ("=", "!", ">", "#", "|") or rest in ("<=", "<!") or pattern.startswith("(?P=", i):
                raise NotImplementedError(
                    "RegexFullMatch: lookaround/atomic/backreference groups are not RE2"
                )
            if rest[:1] == "<":  # (?<name>...) -> (?P<name>...)
                out.append("(?P<")
                i += 3
                continue
        if c in "*+?}" and i + 1 < n and pattern[i + 1] == "+":
            raise NotImplementedError("RegexFullMatch: possessive quantifiers are not RE2")
        out.append(c)
        i += 1
    return "".join(out)


def _compile(pattern: str) -> re.Pattern[str]:
    compiled = re.compile(_re2_to_python(pattern), re.ASCII)
    if compiled.flags & re.IGNORECASE and not pattern.isascii():
        raise NotImplementedError("RegexFullMatch: case-insensitive matching of non-ASCII text")
    return compiled


@reference("RegexFullMatch")
def regex_full_match_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """True where the whole string matches ``pattern`` (RE2 syntax, see the module doc)."""
    regex = _compile(_text(attrs.get("pattern", "")))
    return [_map_strings(lambda s: regex.fullmatch(s) is not None, _req(inputs, 0), dtype=bool)]


# --------------------------------------------------------------------------- TfIdfVectorizer


def _ngram_pool(attrs: Attrs, strings: bool) -> dict[tuple, int]:
    """``n-gram tuple -> output column`` from the pool, ``ngram_counts`` and ``ngram_indexes``."""
    pool = [_text(v) for v in attrs["pool_strings"]] if strings else [int(v) for v in attrs["pool_int64s"]]
    starts = [int(s) for s in attrs["ngram_counts"]] + [len(pool)]
    indexes = [int(i) for i in attrs["ngram_indexes"]]
    table: dict[tuple, int] = {}
    k = 0
    for level in range(len(starts) - 1):
        n = level + 1
        chunk = pool[starts[level] : starts[level + 1]]
        for j in range(0, len(chunk) - n + 1, n):
            table[tuple(chunk[j : j + n])] = k
            k += 1
    if k != len(indexes):
        raise ValueError(f"TfIdfVectorizer: the pool holds {k} n-grams but ngram_indexes has {len(indexes)}")
    return {gram: indexes[i] for gram, i in table.items()}


def _count_ngrams(row: list, lo: int, hi: int, skips: int) -> Counter:
    """Counts of every n-gram (``lo <= n <= hi``) whose items are ``skip + 1``
    apart, for each ``skip`` up to ``skips``; 1-grams are counted once."""
    counts: Counter = Counter()
    for n in range(max(lo, 1), hi + 1):
        for skip in range(skips + 1 if n > 1 else 1):
            step = skip + 1
            for start in range(len(row) - (n - 1) * step):
                counts[tuple(row[start : start + (n - 1) * step + 1 : step])] += 1
    return counts


@reference("TfIdfVectorizer")
def tfidf_vectorizer_ref(inputs: Inputs, attrs: Attrs, ctx: RefContext) -> list[np.ndarray]:
    """n-gram counts of each row (a 1-D input is one row) mapped onto the pool's
    columns; "TF" keeps the counts, "IDF" caps them at 1 and "TFIDF" keeps
    them, both then scaled by ``weights``.  float32 output."""
    x = _req(inputs, 0)
    mode = _text(attrs["mode"]).upper()
    if mode not in ("TF", "IDF", "TFIDF"):
        raise ValueError(f"TfIdfVectorizer: unknown mode {mode!r}")
    strings = bool(attrs.get("pool_strings"))
    table = _ngram_pool(attrs, strings)
    indexes = [int(i) for i in attrs["ngram_indexes"]]
    width = max(indexes) + 1 if indexes else 0
    weights = attrs.get("weights")
    column_weight = np.ones(width, np.float32)
    if weights is not None and mode != "TF":
        for i, w in zip(indexes, weights):
            column_weight[i] = w
    rows = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)
    out = np.zeros((rows.shape[0], width), np.float32)
    lo, hi, skips = int(attrs["min_gram_length"]), int(attrs["max_gram_length"]), int(attrs["max_skip_count"])
    for r, row in enumerate(rows):
        items = [_text(v) for v in row] if strings else [int(v) for v in row]
        for gram, count in _count_ngrams(items, lo, hi, skips).items():
            col = table.get(gram)
            if col is not None:
                out[r, col] += count
    if mode == "IDF":
        out = np.minimum(out, 1)
    if mode != "TF":
        out = out * column_weight
    return [out.reshape(width) if x.ndim == 1 else out]
