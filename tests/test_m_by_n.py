"""N:M (2:4) structured sparsity: the criterion against hand-worked blocks,
and every 4-block along the input channels holding at most 2 non-zeros in
the stripped Keras kernels, in the float `.tflite` and after QAT in the int8
one."""

import keras
import numpy as np
import pytest

from conftest import file_kernels, value
from keras_compress import to_tflite
from keras_compress.pruning import ConstantSparsity, PruneWrapper, UpdatePruningStep, prune_low_magnitude, strip_pruning
from keras_compress.pruning.criteria import m_by_n
from keras_compress.quantization import quantize_model


def blocks_ok(kernel, n, m, axis):
    """Whether every block of m along `axis` has at most n non-zeros."""
    moved = np.moveaxis(np.asarray(kernel), axis, -1)
    length = moved.shape[-1]
    return all(np.count_nonzero(moved[..., i:i + m], axis=-1).max() <= n for i in range(0, length, m))


def test_criterion_keeps_the_n_largest_of_each_block_by_hand():
    column = np.array([[1.0], [-5.0], [3.0], [0.5], [2.0], [2.0], [-1.0], [7.0]])
    # Block 1 keeps -5 and 3; block 2 keeps 7 and the first of the tied 2s.
    np.testing.assert_array_equal(m_by_n(column, 2, 4).ravel(), [0, 1, 1, 0, 1, 0, 0, 1])
    # A conv kernel (3, 3, in=10, out=4): blocks run along the input channels;
    # the last block has 2 channels and keeps both.
    kernel = np.random.default_rng(0).normal(size=(3, 3, 10, 4))
    mask = m_by_n(kernel, 2, 4)
    assert mask.shape == kernel.shape and blocks_ok(mask, 2, 4, axis=-2)
    assert mask.sum() == 3 * 3 * 4 * (2 + 2 + 2)
    # 1:4 of a block keeps its largest magnitude.
    assert m_by_n(np.array([[0.1], [-0.9], [0.3], [0.2]]), 1, 4).ravel().tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize("pair", [(4, 2), (2, 2), (0, 4), "2:4", (2.0, 4), (True, 4), (1, 2, 3)])
def test_bad_n_m_pairs_are_refused(pair):
    with pytest.raises(ValueError, match="sparsity_m_by_n"):
        prune_low_magnitude(keras.layers.Dense(3), sparsity_m_by_n=pair)


def test_the_criterion_refuses_what_has_no_blocks():
    with pytest.raises(ValueError, match=r"1 <= N < M"):
        m_by_n(np.ones((4, 4)), 4, 2)
    with pytest.raises(ValueError, match="rank >= 2"):
        m_by_n(np.ones(8), 2, 4)


def small_model():
    return keras.Sequential([
        keras.Input((12, 12, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(3, name="logits"),
    ])


def data(n=64):
    rng = np.random.default_rng(0)
    return rng.random((n, 12, 12, 1), dtype="float32"), rng.integers(0, 3, n)


def test_two_of_four_in_keras_in_the_float_file_and_after_qat_in_the_int8_file():
    x, y = data()
    model = small_model()
    pruned = prune_low_magnitude(model, ConstantSparsity(0.5, begin_step=0, frequency=4), sparsity_m_by_n=(2, 4))
    pruned.compile(optimizer=keras.optimizers.Adam(1e-2),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[UpdatePruningStep()])
    wrappers = [l for l in pruned.layers if isinstance(l, PruneWrapper)]
    assert [w.sparsity_m_by_n for w in wrappers] == [(2, 4)] * 4
    stripped = strip_pruning(pruned)
    for name in ("conv", "conv2", "hidden", "logits"):
        kernel = value(stripped.get_layer(name).kernel)
        assert blocks_ok(kernel, 2, 4, axis=-2), name
        # Full blocks keep exactly 2 (the input channels are multiples of 4
        # except conv's single channel, whose one-weight blocks keep it).
        in_channels = kernel.shape[-2]
        expected = kernel.size * (0.5 if in_channels % 4 == 0 else 1.0)
        assert np.count_nonzero(kernel) == expected, name
    kernels = file_kernels(to_tflite(stripped, sparse=False))
    assert len(kernels) == 4 and all(blocks_ok(k, 2, 4, axis=-1) for k in kernels)
    # Quantization-aware training keeps the zeros; the int8 file keeps 2:4.
    qat = quantize_model(stripped)
    qat.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, batch_size=16, epochs=1, verbose=0)
    int8 = file_kernels(to_tflite(qat, quantization="int8", sparse=False))
    assert len(int8) == 4 and all(k.dtype == np.int8 and blocks_ok(k, 2, 4, axis=-1) for k in int8)


def test_wrapper_config_and_keras_file_keep_n_m(tmp_path):
    wrapper = PruneWrapper(keras.layers.Dense(4), ConstantSparsity(0.5, 0), sparsity_m_by_n=(2, 4))
    config = wrapper.get_config()
    assert config["sparsity_m_by_n"] == [2, 4]
    assert PruneWrapper.from_config(config).sparsity_m_by_n == (2, 4)
    model = keras.Sequential([keras.Input((8,)), wrapper])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.layers[0].sparsity_m_by_n == (2, 4)


def test_layers_without_input_channels_are_named():
    tokens = keras.Input((5,), dtype="int32")
    x = keras.layers.Flatten()(keras.layers.Embedding(20, 8, name="table")(tokens))
    model = keras.Model(tokens, keras.layers.Dense(3, name="head")(x))
    with pytest.warns(UserWarning, match=r"table.*unpruned: sparsity_m_by_n"):
        pruned = prune_low_magnitude(model, sparsity_m_by_n=(2, 4))
    assert [l.name for l in pruned.layers if isinstance(l, PruneWrapper)] == ["prune_low_magnitude_head"]
    with pytest.raises(ValueError, match=r"cannot apply sparsity_m_by_n to layer .*table.*Embedding"):
        prune_low_magnitude(model, layers=["table"], sparsity_m_by_n=(2, 4))
    with pytest.raises(ValueError, match="global_pruning"):
        prune_low_magnitude(model, layers=["head"], global_pruning=True, sparsity_m_by_n=(2, 4))
    with pytest.raises(ValueError, match=r"layer 'd'.*input channels.*Embedding"):
        PruneWrapper(keras.layers.Embedding(4, 4, name="d"), sparsity_m_by_n=(2, 4))
