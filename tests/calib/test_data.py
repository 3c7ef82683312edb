"""Calibration data sources: .npy/.npz/folders/images/iterables/random, subsampling and batching."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
from kiln.calib.data import (
    ArrayFileSource,
    InputSpec,
    batch_size_for,
    iter_batches,
    iter_samples,
    open_source,
    select,
)
from kiln.calib.images import ImageOptions, load_image
from kiln.errors import UsageError

X = InputSpec("x", np.dtype(np.float32), ("N", 3, 4, 5))
Y = InputSpec("y", np.dtype(np.int64), ("N", 2))


def test_npy_splits_along_the_first_axis(tmp_path):
    data = np.arange(6 * 3 * 4 * 5, dtype=np.float32).reshape(6, 3, 4, 5)
    np.save(tmp_path / "d.npy", data)
    src = open_source(str(tmp_path / "d.npy"), [X])
    assert src.length == 6
    np.testing.assert_array_equal(src.sample(4)["x"], data[4])
    np.save(tmp_path / "one.npy", data[0])  # one sample: rank of the input minus one
    assert open_source(tmp_path / "one.npy", [X]).length == 1
    np.save(tmp_path / "bad.npy", data[0, 0])
    with pytest.raises(UsageError, match="rank 4"):
        _ = open_source(tmp_path / "bad.npy", [X]).length


def test_npy_is_memory_mapped_and_pickles_without_data(tmp_path):
    data = np.zeros((50, 3, 4, 5), dtype=np.float32)
    np.save(tmp_path / "d.npy", data)
    src = open_source(tmp_path / "d.npy", [X])
    assert isinstance(src, ArrayFileSource)
    assert isinstance(src._open()["x"], np.memmap)
    assert len(pickle.dumps(src)) < 2000
    assert pickle.loads(pickle.dumps(src)).sample(3)["x"].shape == (3, 4, 5)


def test_npz_by_input_name(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 3, 4, 5)).astype(np.float32)
    y = np.arange(8).reshape(4, 2)
    np.savez(tmp_path / "stored.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "packed.npz", x=x, y=y)
    for name in ("stored.npz", "packed.npz"):
        src = open_source(tmp_path / name, [X, Y])
        s = src.sample(2)
        np.testing.assert_array_equal(s["x"], x[2])
        np.testing.assert_array_equal(s["y"], y[2])
    assert isinstance(open_source(tmp_path / "stored.npz", [X, Y])._open()["x"], np.memmap)
    np.savez(tmp_path / "partial.npz", x=x)
    with pytest.raises(UsageError, match="no array for input 'y'"):
        _ = open_source(tmp_path / "partial.npz", [X, Y]).length
    with pytest.raises(UsageError, match="single-input"):
        np.save(tmp_path / "x.npy", x)
        _ = open_source(tmp_path / "x.npy", [X, Y]).length


def test_npz_never_unpickles(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UsageError):
        open_source(tmp_path / "obj.npz", [InputSpec("x", np.dtype(np.float32), ("N",))]).sample(0)


def test_folder_of_arrays(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"part{i}.npy", np.full((i + 1, 3, 4, 5), i, dtype=np.float32))
    src = open_source(tmp_path, [X])
    assert src.length == 6
    assert [float(src.sample(k)["x"].flat[0]) for k in range(6)] == [0, 1, 1, 2, 2, 2]


def test_subsample_is_seeded_and_sorted(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((100, 3, 4, 5), dtype=np.float32))
    src = open_source(tmp_path / "d.npy", [X])
    a, b = select(src, 10, seed=3), select(src, 10, seed=3)
    assert a == b == sorted(a) and len(set(a)) == 10
    assert select(src, 10, seed=4) != a
    assert select(src, None) == list(range(100))
    with pytest.raises(UsageError):
        select(src, 0)


def test_random_source_warns(caplog):
    with caplog.at_level(logging.WARNING):
        src = open_source("random:5", [X, Y])
    assert "smoke runs only" in caplog.text
    assert src.length == 5
    s = src.sample(0)
    assert s["x"].shape == (3, 4, 5) and s["y"].dtype == np.int64
    np.testing.assert_array_equal(open_source("random:5", [X, Y]).sample(1)["x"], src.sample(1)["x"])


def test_iterable_items_of_every_form():
    x = np.ones((2, 3, 4, 5), dtype=np.float32)
    items = [{"x": x[0]}, x, [x[1]]]
    src = open_source(iter(items), [X])
    assert src.length is None and select(src, None) is None
    got = list(iter_samples(src, None))
    assert len(got) == 4
    assert len(list(iter_samples(open_source(iter(items), [X]), None, count=2))) == 2
    with pytest.raises(UsageError, match="cannot use an item"):
        list(open_source(iter([3]), [X]))


def test_batching_stacks_and_splits_on_shape_change():
    samples = [{"x": np.zeros((3, 4, 5), np.float64)} for _ in range(5)] + [{"x": np.zeros((3, 4, 6))}]
    batches = list(iter_batches(samples, [X], 2))
    assert [n for _, n in batches] == [2, 2, 1, 1]
    assert batches[0][0]["x"].dtype == np.float32 and batches[0][0]["x"].shape == (2, 3, 4, 5)


def test_static_batch(caplog):
    fixed = InputSpec("x", np.dtype(np.float32), (4, 3))
    assert batch_size_for([fixed], None) == 4
    assert batch_size_for([X], None) == 1 and batch_size_for([X], 8) == 8
    samples = [{"x": np.zeros(3, np.float32)} for _ in range(10)]
    with caplog.at_level(logging.WARNING):
        batches = list(iter_batches(samples, [fixed], 4, static_batch=True))
    assert [n for _, n in batches] == [4, 4] and "dropping the last 2" in caplog.text


@pytest.fixture
def image_folder(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(20, 60), (30, 30), (50, 20)]):
        pil.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_image_preprocessing_modes(image_folder):
    path = image_folder / "img0.png"  # 20 x 60
    shape = ("N", 3, 16, 32)
    stretch = load_image(path, ImageOptions(), shape)
    assert stretch.shape == (3, 16, 32) and stretch.dtype == np.float32 and 0 <= stretch.min() <= stretch.max() <= 1
    height = load_image(path, ImageOptions(mode="height", pad=-5.0), shape)
    assert height.shape == (3, 16, 32) and (height[:, :, 32:] == -5).all()  # 60 * 16 / 20 = 48 > 32: fills it
    tall = load_image(image_folder / "img2.png", ImageOptions(mode="height", pad=-5.0), shape)  # 50 x 20 -> 16 x 7
    assert (tall[:, :, 7:] == -5).all() and (tall[:, :, :7] != -5).all()
    fit = load_image(image_folder / "img1.png", ImageOptions(mode="fit", pad=-1.0), shape)  # 30x30 -> 16x16
    assert (fit[:, :, 16:] == -1).all() and (fit[:, :, :16] >= 0).all()
    crop = load_image(path, ImageOptions(size=(20, 40), mode="shorter", crop=(16, 32)), shape)
    assert crop.shape == (3, 16, 32)
    nhwc = load_image(path, ImageOptions(layout="nhwc"), ("N", 16, 32, 3))
    np.testing.assert_allclose(nhwc.transpose(2, 0, 1), stretch)
    bgr = load_image(path, ImageOptions(channels="bgr", mean=(0.5, 0.4, 0.3), std=(0.2,)), shape)
    np.testing.assert_allclose(bgr[::-1], (stretch - np.array([0.5, 0.4, 0.3], np.float32)[:, None, None]) / 0.2,
                               rtol=1e-5, atol=1e-5)
    gray = load_image(path, ImageOptions(), ("N", 1, 16, 32))
    assert gray.shape == (1, 16, 32)


def test_image_folder_source(image_folder):
    spec = InputSpec("x", np.dtype(np.float32), ("N", 3, 16, 32))
    src = open_source(image_folder, [spec], image_options=ImageOptions(scale=1.0))
    assert src.length == 3 and "3 images" in src.describe()
    assert src.sample(1)["x"].max() > 1
    (image_folder / "broken.png").write_bytes(b"not an image")
    src = open_source(image_folder, [spec])
    with pytest.raises(UsageError, match="cannot read it"):
        [src.sample(i) for i in range(src.length)]


def test_bad_paths(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        open_source(tmp_path / "missing.npy", [X])
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(UsageError, match="expected .npy"):
        open_source(tmp_path / "a.txt", [X])
    with pytest.raises(UsageError, match="holds no"):
        open_source(tmp_path, [X])
    with pytest.raises(UsageError):
        ImageOptions(mode="squash")
