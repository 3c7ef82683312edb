"""Constant payloads: in-memory arrays and lazily mapped external data.

A constant Value holds a :class:`Tensor`.  Its bytes are not read until
``numpy()`` is called: external data is memory-mapped from the file then, and
raw bytes from an ONNX file are viewed in place.  That keeps ``kiln.load`` on
a multi-gigabyte model close to the cost of parsing the protobuf.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kiln.ir.dtypes import DType


@dataclass(frozen=True, slots=True)
class ExternalLocation:
    """Where an external-data tensor lives: an already validated file path."""

    path: str
    offset: int
    length: int | None


class Tensor:
    """A constant's data: a numpy array, or a recipe that produces one on demand."""

    __slots__ = ("dtype", "shape", "_array", "_loader", "external", "_checksum")

    def __init__(
        self,
        dtype: DType,
        shape: tuple[int, ...],
        array: np.ndarray | None = None,
        loader: Callable[[], np.ndarray] | None = None,
        external: ExternalLocation | None = None,
        checksum: str | None = None,
    ) -> None:
        self.dtype = dtype
        self.shape = tuple(int(d) for d in shape)
        self._array = array
        self._loader = loader
        self.external = external
        self._checksum = checksum  # cached by checksum(); a constant's data never changes

    @staticmethod
    def from_numpy(array: np.ndarray | np.generic | int | float | bool) -> "Tensor":
        arr = np.asarray(array)
        return Tensor(DType.from_numpy(arr.dtype), arr.shape, array=arr)

    @staticmethod
    def from_external(dtype: DType, shape: tuple[int, ...], location: ExternalLocation) -> "Tensor":
        def load() -> np.ndarray:
            count = math.prod(shape)
            np_dtype = dtype.numpy
            if dtype.itemsize_bits < 8:
                raise NotImplementedError(f"external data of packed {dtype.name} is not supported")
            if count == 0:
                return np.zeros(shape, dtype=np_dtype)
            mapped = np.memmap(location.path, dtype=np_dtype, mode="r", offset=location.offset, shape=(count,))
            return mapped.reshape(shape)

        return Tensor(dtype, shape, loader=load, external=location)

    @property
    def loaded(self) -> bool:
        return self._array is not None

    def numpy(self) -> np.ndarray:
        """The data as a (possibly read-only, memory-mapped) numpy array."""
        if self._array is None:
            assert self._loader is not None
            self._array = self._loader()
            self._loader = None
        return self._array

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return (self.numel * self.dtype.itemsize_bits + 7) // 8

    def checksum(self) -> str:
        """A short content hash for the text IR (first 8 hex digits of SHA-1).

        Computed once and cached: constants are never mutated in place, and
        printing a large model twice must not read its weights twice.
        """
        if self._checksum is not None:
            return self._checksum
        arr = np.ascontiguousarray(self.numpy())
        h = hashlib.sha1()
        if arr.dtype == object:
            for item in arr.reshape(-1):
                h.update(item if isinstance(item, bytes) else str(item).encode())
                h.update(b"\0")
        else:
            h.update(arr.reshape(-1).view(np.uint8).data)  # the same bytes as tobytes(), without a copy
        self._checksum = h.hexdigest()[:8]
        return self._checksum

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else ("external" if self.external else "lazy")
        return f"Tensor({self.dtype.short}{list(self.shape)}, {state})"


def safe_external_path(model_dir: str, location: str) -> str:
    """Resolves an external-data location, refusing anything outside ``model_dir``.

    Absolute paths, ``..`` components and symlinks that leave the folder are
    refused with ``ValueError``; names from a model never become paths elsewhere.
    """
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location[:3]:
        raise ValueError(f"external data location {location!r} is not a relative path")
    parts = location.replace("\\", "/").split("/")
    if any(p == ".." for p in parts):
        raise ValueError(f"external data location {location!r} leaves the model's folder")
    root = os.path.realpath(model_dir)
    full = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, full]) != root:
        raise ValueError(f"external data location {location!r} resolves outside the model's folder")
    return full
