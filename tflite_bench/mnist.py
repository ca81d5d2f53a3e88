"""MNIST files as labelled data: a folder of IDX files or a Keras `mnist.npz`.

`tflite-bench run --data` reads them, and `keras_compress.datasets.load_mnist`
reads its bundled copy through them. numpy and the standard library only.
"""

import gzip
import os

import numpy as np

TRAIN_SIZE = 8000
"""Number of images in the training part of an IDX folder's split."""

IMAGES = "t10k-images-idx3-ubyte"
LABELS = "t10k-labels-idx1-ubyte"
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


def is_mnist(path):
    """Whether `path` is a folder (of IDX files) or an `.npz` file, the two forms `read_mnist` takes."""
    path = os.fspath(path)
    return os.path.isdir(path) or (path.endswith(".npz") and os.path.isfile(path))


def read_mnist(path):
    """`(x_train, y_train), (x_test, y_test)` from an MNIST IDX folder (split
    into its first `TRAIN_SIZE` images and the rest) or a Keras `mnist.npz`
    (its own split). Images float32 in [0, 1], shape `(n, 28, 28, 1)`;
    labels int64.

    Raises:
        ValueError: the files are missing, damaged or too few to split.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        images = _read_idx(_find_idx(path, IMAGES), _IMAGES_MAGIC)
        labels = _read_idx(_find_idx(path, LABELS), _LABELS_MAGIC)
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
    raise ValueError(f"path={path!r} is neither a folder of MNIST IDX files nor a Keras mnist.npz file.")


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
