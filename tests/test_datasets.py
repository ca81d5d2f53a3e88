import gzip
import hashlib
import os

import numpy as np
import pytest

from keras_compress import datasets

DATA = os.path.join(os.path.dirname(datasets.__file__), "data")


@pytest.mark.parametrize(
    "name, md5",
    [  # uncompressed MD5s published with the MNIST files
        ("t10k-images-idx3-ubyte.gz", "2646ac647ad5339dbf082846283269ea"),
        ("t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637"),
    ],
)
def test_bundled_files_are_the_real_mnist_test_set(name, md5):
    with gzip.open(os.path.join(DATA, name), "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == md5


def test_split_shapes_types_and_range():
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist()
    assert x_train.shape == (8000, 28, 28, 1) and x_test.shape == (2000, 28, 28, 1)
    assert y_train.shape == (8000,) and y_test.shape == (2000,)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert set(np.unique(y_test)) == set(range(10))


def test_split_follows_file_order():
    with gzip.open(os.path.join(DATA, "t10k-labels-idx1-ubyte.gz"), "rb") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=8)
    (_, y_train), (_, y_test) = datasets.load_mnist()
    np.testing.assert_array_equal(y_train, raw[:8000])
    np.testing.assert_array_equal(y_test, raw[8000:])
    # The canonical MNIST test set starts 7, 2, 1, 0, 4.
    assert list(y_train[:5]) == [7, 2, 1, 0, 4]


def test_pixel_scaling_matches_raw_bytes():
    with gzip.open(os.path.join(DATA, "t10k-images-idx3-ubyte.gz"), "rb") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(10000, 28, 28)
    (x_train, _), (x_test, _) = datasets.load_mnist()
    np.testing.assert_allclose(x_train[3, ..., 0], raw[3] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x_test[-1, ..., 0], raw[-1] / 255.0, rtol=1e-6)


def test_loads_an_uncompressed_folder(tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(os.path.join(DATA, name + ".gz"), "rb") as f:
            (tmp_path / name).write_bytes(f.read())
    (a, b), (c, d) = datasets.load_mnist(tmp_path)
    (a2, b2), (c2, d2) = datasets.load_mnist()
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(d, d2)


def test_loads_a_keras_npz(tmp_path):
    path = tmp_path / "mnist.npz"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.arange(5), x_test=x[:2], y_test=np.arange(2))
    (xt, yt), (xs, ys) = datasets.load_mnist(path)
    assert xt.shape == (5, 28, 28, 1) and xs.shape == (2, 28, 28, 1)
    np.testing.assert_allclose(xt[..., 0], x / 255.0, rtol=1e-6)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="neither a folder"):
        datasets.load_mnist(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="has no t10k-images"):
        datasets.load_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 8)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01")
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        datasets.load_mnist(tmp_path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros(1))
    with pytest.raises(ValueError, match="lacks the arrays"):
        datasets.load_mnist(bad)
