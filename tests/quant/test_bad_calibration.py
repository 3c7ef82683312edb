"""Bad calibration input through ``kiln compile --int8 --calib X``: one line naming the file and the problem,
exit 2, and nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from calib_models import conv_net, samples, save
from kiln.driver.cli import main

pytest.importorskip("PIL")


@pytest.fixture
def model(tmp_path):
    return save(conv_net(), tmp_path / "net.onnx")  # input x: [N, 3, 8, 8] float32


def _image(path, size=(8, 8)):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _fails(tmp_path, model, capsys, calib, *extra):
    """Runs the compile; returns its one error line after checking exit 2 and an untouched output folder."""
    out = tmp_path / "out"
    code = main(["compile", str(model), "-t", "onnx", "-o", str(out), "--int8", "--calib", str(calib), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    return err.strip()


def test_npz_with_wrong_input_names(tmp_path, model, capsys):
    path = tmp_path / "calib.npz"
    np.savez(path, image=samples(4), extra=samples(4))
    err = _fails(tmp_path, model, capsys, path)
    assert str(path) in err and "no array for input 'x'" in err and "image, extra" in err


@pytest.mark.parametrize("shape,expected", [
    ((4, 3, 16, 16), "has shape [3, 16, 16]; the model takes [3, 8, 8] per sample"),
    ((4, 1, 8, 8), "has shape [1, 8, 8]"),
    ((4, 3, 8), "has shape [4, 3, 8]"),  # rank 3: one sample
    ((2, 4, 3, 8, 8), "input 'x' has rank 4"),
])
def test_npy_of_the_wrong_shape(tmp_path, model, capsys, shape, expected):
    path = tmp_path / "calib.npy"
    np.save(path, np.zeros(shape, dtype=np.float32))
    err = _fails(tmp_path, model, capsys, path)
    assert str(path) in err and expected in err and "'x'" in err


@pytest.mark.parametrize("dtype", ["int64", "uint8", "bool", "complex64", "<U3"])
def test_npy_of_the_wrong_dtype(tmp_path, model, capsys, dtype):
    path = tmp_path / "calib.npy"
    np.save(path, np.ones((4, 3, 8, 8)).astype(dtype))
    err = _fails(tmp_path, model, capsys, path)
    assert str(path) in err and "takes float32 values" in err and str(np.dtype(dtype)) in err


def test_npy_of_objects_is_never_unpickled(tmp_path, model, capsys):
    path = tmp_path / "calib.npy"
    np.save(path, np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    err = _fails(tmp_path, model, capsys, path)
    assert str(path) in err


@pytest.mark.parametrize("value,what", [(np.nan, "1 NaN or inf value"), (np.inf, "1 NaN or inf value"),
                                        (-np.inf, "1 NaN or inf value")])
def test_nan_and_inf_in_data(tmp_path, model, capsys, value, what):
    data = samples(6)
    data[4, 1, 2, 3] = value
    path = tmp_path / "calib.npy"
    np.save(path, data)
    err = _fails(tmp_path, model, capsys, path)
    assert str(path) in err and f"sample 4 of input 'x' holds {what}" in err


def test_nan_in_one_file_of_a_folder_names_that_file(tmp_path, model, capsys):
    folder = tmp_path / "calib"
    folder.mkdir()
    np.save(folder / "a.npy", samples(3))
    bad = samples(3)
    bad[2, 0, 0, :] = np.nan
    np.save(folder / "b.npy", bad)
    err = _fails(tmp_path, model, capsys, folder)
    assert f"{folder / 'b.npy'}, sample 2" in err and "holds 8 NaN or inf values" in err


def test_empty_folder(tmp_path, model, capsys):
    folder = tmp_path / "calib"
    folder.mkdir()
    (folder / "notes.txt").write_text("not data")
    err = _fails(tmp_path, model, capsys, folder)
    assert str(folder) in err and "holds no .npy, .npz or image files" in err


def test_unreadable_image(tmp_path, model, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    _image(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    err = _fails(tmp_path, model, capsys, folder)
    assert str(folder / "b.png") in err and "cannot read it" in err


def test_folder_mixing_arrays_and_images(tmp_path, model, capsys):
    folder = tmp_path / "calib"
    folder.mkdir()
    np.save(folder / "a.npy", samples(2))
    _image(folder / "b.png")
    err = _fails(tmp_path, model, capsys, folder)
    assert str(folder) in err and "mixes arrays and images" in err


def test_calib_count_larger_than_the_data(tmp_path, model, capsys):
    path = tmp_path / "calib.npy"
    np.save(path, samples(5))
    err = _fails(tmp_path, model, capsys, path, "--calib-count", "6")
    assert "--calib-count 6" in err and str(path) in err and "holds only 5 samples" in err


def test_table_for_another_model(tmp_path, model, capsys):
    other = save(conv_net(seed=1), tmp_path / "other.onnx")
    np.save(tmp_path / "calib.npy", samples(4))
    assert main(["compile", str(other), "-o", str(tmp_path / "first"), "--int8", "--calib",
                 str(tmp_path / "calib.npy"), "-q"]) == 0
    table = tmp_path / "first" / "other.calib.json"
    doc = json.loads(table.read_text())
    doc["activations"] = {f"renamed_{k}": v for k, v in doc["activations"].items()}
    bad = tmp_path / "bad.calib.json"
    bad.write_text(json.dumps(doc))
    capsys.readouterr()
    err = _fails(tmp_path, model, capsys, bad)
    assert str(bad) in err and "has no range for tensor" in err


@pytest.mark.parametrize("text,problem", [("{", "not a readable calibration table"),
                                          ('{"format": "other"}', "not a kiln calibration table")])
def test_table_that_is_not_a_table(tmp_path, model, capsys, text, problem):
    bad = tmp_path / "t.calib.json"
    bad.write_text(text)
    err = _fails(tmp_path, model, capsys, bad)
    assert str(bad) in err and problem in err
