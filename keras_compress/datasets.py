"""The bundled offline dataset: the real MNIST test set (10,000 images).

The package ships the MNIST test set in its original IDX format so that the
demo, the tutorials, the benchmarks and the tests run with no network. The
agreed split is the first 8,000 images for training and the last 2,000 for
testing; the file order is the canonical MNIST order, so the split is
reproducible.
"""

import gzip
import os

import numpy as np

TRAIN_SIZE = 8000
"""Number of images in the training part of the bundled split."""

_DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
_IMAGES = "t10k-images-idx3-ubyte"
_LABELS = "t10k-labels-idx1-ubyte"
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


def load_mnist(path=None):
    """Loads MNIST as `(x_train, y_train), (x_test, y_test)`.

    With no `path`, the bundled MNIST test set is split into its first 8,000
    images (train) and its last 2,000 (test). Images are float32 in [0, 1]
    with shape `(n, 28, 28, 1)`; labels are int64 class indices in [0, 9].

    Args:
        path: `None` for the bundled data; a folder holding the MNIST IDX files
            (`t10k-images-idx3-ubyte[.gz]` and `t10k-labels-idx1-ubyte[.gz]`,
            split as the bundled data); or a Keras `mnist.npz` file (its own
            60,000 / 10,000 train / test split is kept).

    Returns:
        `((x_train, y_train), (x_test, y_test))` as numpy arrays.

    Example:

    ```python
    (x_train, y_train), (x_test, y_test) = keras_compress.datasets.load_mnist()
    x_train.shape  # (8000, 28, 28, 1)
    ```
    """
    if path is None:
        path = _DATA_DIR
    path = os.fspath(path)
    if os.path.isdir(path):
        images = _read_idx(_find_idx(path, _IMAGES), _IMAGES_MAGIC)
        labels = _read_idx(_find_idx(path, _LABELS), _LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(
                f"MNIST folder {path!r} holds {len(images)} images but "
                f"{len(labels)} labels; they must match."
            )
        if len(images) <= TRAIN_SIZE:
            raise ValueError(
                f"MNIST folder {path!r} holds {len(images)} images; the "
                f"split needs more than {TRAIN_SIZE}."
            )
        x, y = _normalize(images), labels.astype(np.int64)
        return (x[:TRAIN_SIZE], y[:TRAIN_SIZE]), (x[TRAIN_SIZE:], y[TRAIN_SIZE:])
    if path.endswith(".npz") and os.path.isfile(path):
        with np.load(path) as f:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
            if missing:
                raise ValueError(
                    f"{path!r} is not a Keras mnist.npz: it lacks the arrays "
                    f"{sorted(missing)} (expected x_train, y_train, x_test, "
                    "y_test)."
                )
            return (
                (_normalize(f["x_train"]), f["y_train"].astype(np.int64)),
                (_normalize(f["x_test"]), f["y_test"].astype(np.int64)),
            )
    raise ValueError(
        f"path={path!r} is neither a folder of MNIST IDX files nor a Keras "
        "mnist.npz file. Pass None for the bundled data."
    )


def _find_idx(folder, stem):
    for name in (stem + ".gz", stem):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    raise ValueError(
        f"MNIST folder {folder!r} has no {stem}.gz or {stem} file."
    )


def _read_idx(filename, magic):
    """Reads an IDX file of unsigned bytes (optionally gzipped)."""
    opener = gzip.open if filename.endswith(".gz") else open
    with opener(filename, "rb") as f:
        data = f.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(
            f"{filename!r} is not an MNIST IDX file: magic number {found}, "
            f"expected {magic}."
        )
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(
            f"{filename!r} is truncated: header says {dims}, which needs "
            f"{expected} bytes, but {len(data) - offset} follow."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _normalize(images):
    images = np.asarray(images, dtype=np.float32) / 255.0
    if images.ndim == 3:
        images = images[..., None]
    return images
