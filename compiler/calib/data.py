"""Calibration data: where samples come from, how they are subsampled and batched.

A *sample* is one input of the model without its batch axis, as a dict
``input name -> array``.  Sources:

* ``.npy`` of shape ``[N, ...]``: N samples of a single-input model, split
  along the first axis (an array of the input's rank minus one is one sample).
  Memory-mapped, so only the samples in use are read.
* ``.npz`` keyed by input name, each ``[N, ...]`` with the same N.  Members
  stored uncompressed (``numpy.savez``) are memory-mapped too; compressed
  members are read whole when first used.
* a folder of ``.npy``/``.npz`` files (sorted by name, samples concatenated),
  or a folder of images (``.png``, ``.jpg`` ...) with
  :class:`~kiln.calib.images.ImageOptions` preprocessing;
* a Python iterable (API only): each item is a dict by input name, an array
  (single-input models) or a sequence of arrays in input order; an item of
  the input's full rank holds several samples along its first axis;
* ``random`` (or ``random:N``): standard-normal floats, for smoke runs only
  (a warning says so).

:func:`open_source` turns any of these into a :class:`Source`; :func:`select`
picks a seeded subsample (``--calib-count``); :func:`iter_batches` stacks
samples into the model's batch.  File and image sources pickle as their
paths and options (never their data), so worker processes reopen them.
Nothing is ever unpickled from a calibration file (``allow_pickle=False``).
"""

from __future__ import annotations

import bisect
import logging
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kiln.calib.images import ImageOptions, is_image, load_image
from kiln.errors import UsageError

logger = logging.getLogger(__name__)

Sample = dict[str, np.ndarray]

DEFAULT_RANDOM_COUNT = 8


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype and dims (ints, symbols or ``None``; dim 0 is the batch)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def batch(self) -> int | None:
        """The static batch size, or ``None`` when dim 0 is dynamic."""
        if not self.shape:
            return None
        d = self.shape[0]
        return d if isinstance(d, int) and d > 0 else None


def input_specs(graph: Any) -> list[InputSpec]:
    """The :class:`InputSpec` of every input of a kiln graph."""
    specs: list[InputSpec] = []
    for value in graph.inputs:
        t = value.tensor_type
        if t is None:
            raise UsageError(f"input {value.name!r} is not a tensor; it cannot be calibrated")
        try:
            dtype = np.dtype(t.dtype.numpy)
        except (TypeError, ValueError, AttributeError):
            raise UsageError(f"input {value.name!r} has element type {t.dtype}, which calibration cannot feed") from None
        specs.append(InputSpec(value.name, dtype, None if t.shape is None else tuple(t.shape)))
    return specs


# --------------------------------------------------------------------------- sources


class Source:
    """A sequence of samples; ``length`` is ``None`` for a one-shot iterable."""

    indexable = True

    @property
    def length(self) -> int | None:
        raise NotImplementedError

    def sample(self, index: int) -> Sample:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Sample]:
        n = self.length
        assert n is not None
        for i in range(n):
            yield self.sample(i)

    def describe(self) -> str:
        return type(self).__name__

    def locate(self, index: int) -> str:
        """Where sample ``index`` comes from, for error messages (a file, where there is one)."""
        return self.describe()


def _split(name: str, array: np.ndarray, spec: InputSpec | None, where: str) -> np.ndarray:
    """``array`` as ``[N, ...]`` samples of input ``spec``."""
    rank = spec.rank if spec is not None else None
    if rank is not None:
        if array.ndim == rank:
            return array
        if array.ndim == rank - 1:
            return array[None]
        raise UsageError(
            f"{where}: array {name!r} has shape {tuple(array.shape)}; input {name!r} has rank {rank}, so "
            f"expected [N, ...] of rank {rank} (N samples) or one sample of rank {rank - 1}"
        )
    if array.ndim == 0:
        raise UsageError(f"{where}: array {name!r} is a scalar; expected [N, ...] samples")
    return array


def _npz_member(path: Path, key: str) -> np.ndarray:
    """Member ``key`` of an ``.npz``: memory-mapped when stored uncompressed, else read."""
    member = key + ".npy"
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                header = f.read(30)
                name_len = int.from_bytes(header[26:28], "little")
                extra_len = int.from_bytes(header[28:30], "little")
                start = info.header_offset + 30 + name_len + extra_len
                f.seek(start)
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                offset = f.tell()
            if dtype.hasobject:
                raise UsageError(f"{path}: member {key!r} holds Python objects, which kiln never loads")
            return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset)
    with np.load(path, allow_pickle=False) as data:
        return data[key]


class ArrayFileSource(Source):
    """One ``.npy`` or ``.npz`` file (see the module doc)."""

    def __init__(self, path: str | os.PathLike[str], specs: Sequence[InputSpec]) -> None:
        self.path = Path(path)
        self.specs = list(specs)
        self._arrays: dict[str, np.ndarray] | None = None
        self._n: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "specs": self.specs, "_arrays": None, "_n": self._n}

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is not None:
            return self._arrays
        where = os.fspath(self.path)
        by_name = {s.name: s for s in self.specs}
        try:
            if self.path.suffix.lower() == ".npy":
                if len(self.specs) != 1:
                    names = ", ".join(by_name)
                    raise UsageError(f"{where}: an .npy feeds a single-input model; this one has inputs {names} "
                                     "(use an .npz keyed by input name)")
                arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
                arrays = {self.specs[0].name: arr}
            else:
                with zipfile.ZipFile(self.path) as zf:
                    keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                missing = [n for n in by_name if n not in keys]
                if missing:
                    raise UsageError(f"{where}: no array for input {missing[0]!r} (the .npz has {', '.join(keys) or 'none'})")
                arrays = {name: _npz_member(self.path, name) for name in by_name}
        except UsageError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
            raise UsageError(f"{where}: cannot read calibration data ({exc})") from None
        arrays = {k: _split(k, v, by_name.get(k), where) for k, v in arrays.items()}
        counts = {k: v.shape[0] for k, v in arrays.items()}
        if len(set(counts.values())) > 1:
            raise UsageError(f"{where}: inputs hold different sample counts: {counts}")
        self._arrays = arrays
        self._n = next(iter(counts.values()), 0)
        return arrays

    @property
    def length(self) -> int:
        if self._n is None:
            self._open()
        assert self._n is not None
        return self._n

    def sample(self, index: int) -> Sample:
        return {k: np.asarray(v[index]) for k, v in self._open().items()}

    def describe(self) -> str:
        return os.fspath(self.path)

    def locate(self, index: int) -> str:
        return os.fspath(self.path)


class ConcatSource(Source):
    """Several sources one after the other (a folder of ``.npy``/``.npz`` files)."""

    def __init__(self, parts: Sequence[Source], label: str) -> None:
        self.parts = list(parts)
        self.label = label
        self._starts: list[int] | None = None

    def _offsets(self) -> list[int]:
        if self._starts is None:
            starts, total = [], 0
            for p in self.parts:
                starts.append(total)
                total += p.length or 0
            starts.append(total)
            self._starts = starts
        return self._starts

    @property
    def length(self) -> int:
        return self._offsets()[-1]

    def _part(self, index: int) -> tuple[Source, int]:
        starts = self._offsets()
        k = bisect.bisect_right(starts, index) - 1
        return self.parts[k], index - starts[k]

    def sample(self, index: int) -> Sample:
        part, local = self._part(index)
        return part.sample(local)

    def describe(self) -> str:
        return self.label

    def locate(self, index: int) -> str:
        part, local = self._part(index)
        return f"{part.locate(local)}, sample {local}"


class ImageFolderSource(Source):
    """Image files, preprocessed by :func:`kiln.calib.images.load_image`."""

    def __init__(self, files: Sequence[Path], specs: Sequence[InputSpec], options: ImageOptions, label: str) -> None:
        if len(specs) != 1:
            raise UsageError(f"{label}: images feed a single-input model; this one has {len(specs)} inputs")
        self.files = list(files)
        self.spec = specs[0]
        self.options = options
        self.label = label

    @property
    def length(self) -> int:
        return len(self.files)

    def sample(self, index: int) -> Sample:
        arr = load_image(self.files[index], self.options, self.spec.shape)
        return {self.spec.name: arr.astype(self.spec.dtype, copy=False)}

    def describe(self) -> str:
        return f"{self.label} ({len(self.files)} images)"

    def locate(self, index: int) -> str:
        return os.fspath(self.files[index])


class ArraysSource(Source):
    """In-memory arrays by input name, each ``[N, ...]``."""

    def __init__(self, arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec]) -> None:
        by_name = {s.name: s for s in specs}
        self.arrays = {k: _split(k, np.asarray(v), by_name.get(k), "calibration arrays") for k, v in arrays.items()}
        missing = [n for n in by_name if n not in self.arrays]
        if missing:
            raise UsageError(f"calibration arrays: no array for input {missing[0]!r}")
        counts = {v.shape[0] for v in self.arrays.values()}
        if len(counts) > 1:
            raise UsageError("calibration arrays: inputs hold different sample counts")

    @property
    def length(self) -> int:
        return next(iter(self.arrays.values())).shape[0] if self.arrays else 0

    def sample(self, index: int) -> Sample:
        return {k: v[index] for k, v in self.arrays.items()}

    def describe(self) -> str:
        return f"arrays ({self.length} samples)"


class IterableSource(Source):
    """A Python iterable of samples (or of batches of samples); read once, in order."""

    indexable = False

    def __init__(self, items: Iterable[Any], specs: Sequence[InputSpec]) -> None:
        self.items = items
        self.specs = list(specs)

    @property
    def length(self) -> int | None:
        return len(self.items) if hasattr(self.items, "__len__") else None  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Sample]:
        by_name = {s.name: s for s in self.specs}
        names = [s.name for s in self.specs]
        for item in self.items:
            if isinstance(item, Mapping):
                arrays = {str(k): np.asarray(v) for k, v in item.items()}
            elif isinstance(item, np.ndarray):
                if len(names) != 1:
                    raise UsageError("calibration iterable: a bare array feeds a single-input model only; yield dicts")
                arrays = {names[0]: item}
            elif isinstance(item, (list, tuple)):
                if len(item) != len(names):
                    raise UsageError(f"calibration iterable: an item has {len(item)} arrays, the model {len(names)} inputs")
                arrays = {n: np.asarray(a) for n, a in zip(names, item)}
            else:
                raise UsageError(f"calibration iterable: cannot use an item of type {type(item).__name__}")
            missing = [n for n in names if n not in arrays]
            if missing:
                raise UsageError(f"calibration iterable: an item has no array for input {missing[0]!r}")
            split = {n: _split(n, arrays[n], by_name[n], "calibration iterable") for n in names}
            count = {v.shape[0] for v in split.values()}
            if len(count) > 1:
                raise UsageError("calibration iterable: an item's inputs hold different sample counts")
            for i in range(count.pop() if count else 0):
                yield {n: v[i] for n, v in split.items()}

    def describe(self) -> str:
        return "Python iterable"


class RandomSource(Source):
    """Standard-normal samples (integers in [0, 8)): a smoke test, not a calibration."""

    def __init__(self, specs: Sequence[InputSpec], count: int, seed: int = 0,
                 shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        self.specs = list(specs)
        self.count = count
        self.seed = seed
        self.shapes: dict[str, tuple[int, ...]] = {}
        for spec in self.specs:
            given = (shapes or {}).get(spec.name)
            dims = list(given) if given is not None else list(spec.shape or ())
            self.shapes[spec.name] = tuple(d if isinstance(d, int) and d > 0 else 1 for d in dims[1:])

    @property
    def length(self) -> int:
        return self.count

    def sample(self, index: int) -> Sample:
        rng = np.random.default_rng([self.seed, index])
        out: Sample = {}
        for spec in self.specs:
            shape = self.shapes[spec.name]
            if spec.dtype.kind in "iu":
                out[spec.name] = rng.integers(0, 8, size=shape).astype(spec.dtype)
            elif spec.dtype == np.bool_:
                out[spec.name] = rng.random(shape) < 0.5
            else:
                out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        return out

    def describe(self) -> str:
        return f"random ({self.count} samples)"


def open_source(data: Any, specs: Sequence[InputSpec], *, image_options: ImageOptions | None = None,
                random_shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0) -> Source:
    """Any supported form of calibration data as a :class:`Source` (see the module doc).

    Raises:
        UsageError: the data is missing, unreadable or does not fit the inputs.
    """
    if isinstance(data, Source):
        return data
    if isinstance(data, str) and (data == "random" or data.startswith("random:")):
        _, _, n = data.partition(":")
        if n and not n.isdigit():
            raise UsageError(f"--calib {data}: expected random or random:N")
        count = int(n) if n else DEFAULT_RANDOM_COUNT
        logger.warning(
            "calibrating on %d random inputs: the ranges will not match real data; use this for smoke runs only",
            count,
        )
        return RandomSource(specs, count, seed, random_shapes)
    if isinstance(data, (str, os.PathLike)):
        return _open_path(Path(data), specs, image_options)
    if isinstance(data, np.ndarray):
        if len(specs) != 1:
            raise UsageError("a bare calibration array feeds a single-input model only; pass a dict by input name")
        return ArraysSource({specs[0].name: data}, specs)
    if isinstance(data, Mapping):
        return ArraysSource(data, specs)
    if isinstance(data, Iterable):
        return IterableSource(data, specs)
    raise UsageError(f"cannot calibrate from a {type(data).__name__}")


def _open_path(path: Path, specs: Sequence[InputSpec], image_options: ImageOptions | None) -> Source:
    label = os.fspath(path)
    if not path.exists():
        raise UsageError(f"--calib {label}: no such file or folder")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".npy", ".npz"):
            return ArrayFileSource(path, specs)
        if is_image(path):
            return ImageFolderSource([path], specs, image_options or ImageOptions(), label)
        raise UsageError(f"--calib {label}: expected .npy, .npz, an image, or a folder of them")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    arrays = [p for p in files if p.suffix.lower() in (".npy", ".npz")]
    images = [p for p in files if is_image(p)]
    if arrays and images:
        raise UsageError(f"--calib {label}: the folder mixes arrays and images; use one kind")
    if images:
        return ImageFolderSource(images, specs, image_options or ImageOptions(), label)
    if arrays:
        return ConcatSource([ArrayFileSource(p, specs) for p in arrays], label)
    raise UsageError(f"--calib {label}: the folder holds no .npy, .npz or image files")


# --------------------------------------------------------------------------- subsampling and batching


def select(source: Source, count: int | None, seed: int = 0) -> list[int] | None:
    """The sample indices to use: all of them, or ``count`` drawn without replacement (seeded, sorted).

    Returns ``None`` for a source that cannot be indexed (an iterable: its
    first ``count`` items are used instead).
    """
    if count is not None and count < 1:
        raise UsageError(f"--calib-count {count}: must be at least 1")
    n = source.length if source.indexable else None
    if n is None:
        return None
    if n == 0:
        raise UsageError(f"calibration data {source.describe()} holds no samples")
    if count is not None and count > n:
        raise UsageError(f"--calib-count {count}: {source.describe()} holds only {n} samples")
    if count is None or count == n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=count, replace=False))


def iter_samples(source: Source, indices: Sequence[int] | None, count: int | None = None,
                 specs: Sequence[InputSpec] | None = None) -> Iterator[Sample]:
    """The selected samples (every one checked against ``specs`` when given: see :func:`check_sample`)."""
    if indices is not None:
        for i in indices:
            sample = source.sample(i)
            if specs is not None:
                check_sample(sample, specs, source.locate(i), i)
            yield sample
        return
    for k, sample in enumerate(source):
        if count is not None and k >= count:
            return
        if specs is not None:
            check_sample(sample, specs, source.locate(k), k)
        yield sample


def _dims(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in shape) + "]"


def check_sample(sample: Sample, specs: Sequence[InputSpec], where: str, index: int) -> None:
    """Refuses a sample whose arrays do not fit the inputs: element kind, per-sample shape, NaN/inf.

    Raises:
        UsageError: naming ``where`` (the file), the sample, the input and what was expected.
    """
    for spec in specs:
        arr = sample.get(spec.name)
        if arr is None:
            raise UsageError(f"{where}: sample {index} has no array for input {spec.name!r}")
        arr = np.asarray(arr)
        want, got = spec.dtype.kind, arr.dtype.kind
        fits = (got == "f" if want == "f" else got in "iu" if want in "iu" else got == want)
        if not fits:
            raise UsageError(f"{where}: input {spec.name!r} takes {spec.dtype} values; the data holds {arr.dtype}")
        if spec.shape is not None:
            expected = tuple(spec.shape[1:])
            bad = arr.ndim != len(expected) or any(
                isinstance(d, int) and d > 0 and d != a for d, a in zip(expected, arr.shape))
            if bad:
                raise UsageError(
                    f"{where}: sample {index} of input {spec.name!r} has shape {list(arr.shape)}; the model takes "
                    f"{_dims(expected)} per sample (input shape {_dims(spec.shape)})")
        if got == "f" and not np.isfinite(arr).all():
            n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise UsageError(f"{where}: sample {index} of input {spec.name!r} holds {n_bad} NaN or inf value"
                             f"{'s' if n_bad != 1 else ''}; calibration data must be finite")


def batch_size_for(specs: Sequence[InputSpec], requested: int | None) -> int:
    """The batch size: the model's static batch when it has one, else ``requested`` (default 1)."""
    static = {s.batch for s in specs if s.batch is not None and s.rank}
    if static:
        b = static.pop()
        if requested is not None and requested != b:
            logger.warning("the model's batch is fixed at %d; --calib-batch %d ignored", b, requested)
        return b
    if requested is not None and requested < 1:
        raise UsageError(f"--calib-batch {requested}: must be at least 1")
    return requested or 1


def iter_batches(samples: Iterable[Sample], specs: Sequence[InputSpec], batch_size: int,
                 *, static_batch: bool = False) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Stacks samples into feeds of ``batch_size`` (fewer when a sample's shape changes, or at the end).

    With ``static_batch`` a short batch is dropped (with a warning), since the
    model cannot take it.
    """
    names = [s.name for s in specs]
    dtypes = {s.name: s.dtype for s in specs}
    pending: list[Sample] = []
    key: tuple | None = None

    def flush() -> Iterator[tuple[dict[str, np.ndarray], int]]:
        if not pending:
            return
        if static_batch and len(pending) < batch_size:
            logger.warning("dropping the last %d samples: the model's batch is fixed at %d", len(pending), batch_size)
        else:
            yield {n: np.stack([p[n] for p in pending]).astype(dtypes[n], copy=False) for n in names}, len(pending)
        pending.clear()

    for sample in samples:
        missing = [n for n in names if n not in sample]
        if missing:
            raise UsageError(f"a calibration sample has no array for input {missing[0]!r}")
        shape_key = tuple(tuple(np.shape(sample[n])) for n in names)
        if key is not None and shape_key != key:
            yield from flush()
        key = shape_key
        pending.append(sample)
        if len(pending) == batch_size:
            yield from flush()
    yield from flush()
