"""The bundled offline dataset: the real MNIST test set (10,000 images).

The package ships the MNIST test set in its original IDX format so that the
demo, the tutorials, the benchmarks and the tests run with no network. The
agreed split is the first 8,000 images for training and the last 2,000 for
testing; the file order is the canonical MNIST order, so the split is
reproducible.
"""

import os

from tflite_bench.mnist import TRAIN_SIZE, is_mnist, read_mnist

__all__ = ["TRAIN_SIZE", "load_mnist"]

_DATA_DIR = os.path.join(os.path.dirname(__file__), "data")


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
    if not is_mnist(path):
        raise ValueError(
            f"path={os.fspath(path)!r} is neither a folder of MNIST IDX files nor a Keras "
            "mnist.npz file. Pass None for the bundled data."
        )
    return read_mnist(path)
