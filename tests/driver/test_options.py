"""Option parsing: --input-shape, sizes, files."""

from __future__ import annotations

import pytest

from kiln.driver.options import format_size, parse_input_shape, parse_input_shapes, parse_size, require_file
from kiln.errors import UsageError


@pytest.mark.parametrize(
    "text,expected",
    [
        ("x:1,3,224,224", ("x", (1, 3, 224, 224))),
        ("x:N,3,H,W", ("x", ("N", 3, "H", "W"))),
        ("input:0:1, 3", ("input:0", (1, 3))),  # names with ':' split at the last one
        ("ids:batch_size,seq", ("ids", ("batch_size", "seq"))),
        ("x:0", ("x", (0,))),
    ],
)
def test_input_shape(text, expected):
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["x", ":1,2", "x:", "x:1,,2", "x:-1", "x:1.5", "x:3a", "x:1 2"])
def test_bad_input_shape_names_the_flag(text):
    with pytest.raises(UsageError) as info:
        parse_input_shape(text)
    assert "--input-shape" in str(info.value)
    assert text in str(info.value)


def test_input_shape_twice():
    with pytest.raises(UsageError, match="given twice"):
        parse_input_shapes(["x:1", "x:2"])
    assert parse_input_shapes(["x:1", "y:N,2"]) == {"x": (1,), "y": ("N", 2)}
    assert parse_input_shapes(None) == {}


@pytest.mark.parametrize(
    "text,expected",
    [("1024", 1024), ("64K", 64 << 10), ("64M", 64 << 20), ("64m", 64 << 20), ("1G", 1 << 30), ("1GiB", 1 << 30), ("2gb", 2 << 30), ("0", 0)],
)
def test_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "1.5G", "-1", "12X", "64 MBB"])
def test_bad_size(text):
    with pytest.raises(UsageError, match="--fold-limit"):
        parse_size(text)


def test_format_size():
    assert format_size(512) == "512 B"
    assert format_size(2048) == "2.0 KB"
    assert format_size(int(97.8 * (1 << 20))) == "97.8 MB"
    assert format_size(3 << 40) == "3072.0 GB"


def test_require_file(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        require_file(tmp_path / "nope.onnx")
    with pytest.raises(UsageError, match="is a directory"):
        require_file(tmp_path)
    with pytest.raises(UsageError, match="--inputs"):
        require_file(tmp_path / "nope.npz", "--inputs")
    f = tmp_path / "f.onnx"
    f.write_bytes(b"x")
    assert require_file(f) == f
