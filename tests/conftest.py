import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


def small_cnn(name="cnn"):
    """The benchmark architecture at a glance: 2 conv + 2 dense (smaller input)."""
    return keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv_a"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv_b"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(16, activation="relu", name="dense_a"),
            keras.layers.Dense(3, name="logits"),
        ],
        name=name,
    )


def toy_data(n=64, shape=(12, 12, 1), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = rng.integers(0, classes, n)
    return x, y


def trained_small_cnn(seed, samples, epochs=3):
    """`small_cnn` fitted on `toy_data(samples)` for `epochs` after seeding
    with `seed`, so its logits are not near ties: `(model, x, y)`."""
    keras.utils.set_random_seed(seed)
    x, y = toy_data(samples)
    model = compile_for_test(small_cnn())
    model.fit(x, y, epochs=epochs, verbose=0)
    return model, x, y


def compile_for_test(model, optimizer="adam"):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def value(x):
    """A variable or tensor as a numpy array."""
    return keras.ops.convert_to_numpy(x)


def snapshot(model):
    """Structure and weights of a model, to prove an API left it untouched."""
    return (
        [(l.name, type(l).__name__) for l in model.layers],
        [np.array(w) for w in model.get_weights()],
    )


def assert_unchanged(model, before):
    names, weights = snapshot(model)
    assert names == before[0]
    assert len(weights) == len(before[1])
    for a, b in zip(weights, before[1]):
        np.testing.assert_array_equal(a, b)


def file_kernels(flatbuffer):
    """The weight tensors (input 1) of every CONV_2D and FULLY_CONNECTED op,
    as arrays in TFLite's layout (output channels first, input channels last)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(flatbuffer)
    graph = model.subgraphs[0]
    names = {i: flatbuffer_utils.get_builtin_code_from_operator_code(c) for i, c in enumerate(model.operatorCodes)}
    wanted = {schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.FULLY_CONNECTED}
    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8}
    kernels = []
    for op in graph.operators:
        if names[op.opcodeIndex] in wanted:
            tensor = graph.tensors[op.inputs[1]]
            raw = bytes(model.buffers[tensor.buffer].data)
            kernels.append(np.frombuffer(raw, dtypes[tensor.type]).reshape(list(tensor.shape)))
    return kernels


def assert_same_ranges(one, two):
    """QAT activation ranges `{name: (low, high)}` of two runs agree within
    5% of each range, matched in model order (layers are numbered per
    process, so names differ)."""
    assert len(one) == len(two)
    for (low1, high1), (low2, high2) in zip(one.values(), two.values()):
        assert low2 == pytest.approx(low1, abs=0.05 * (high1 - low1))
        assert high2 == pytest.approx(high1, abs=0.05 * (high1 - low1))
