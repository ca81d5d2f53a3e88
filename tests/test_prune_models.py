"""Pruning on the models people ship: attention, recurrent layers, wrappers
of layers, masking, and frozen backbones."""

import warnings

import keras
import numpy as np
import pytest
from architectures import (
    compile_for,
    frozen_backbone,
    gru_classifier,
    lstm_classifier,
    synthetic_data,
    transformer_block,
)
from conftest import assert_unchanged, snapshot, value

from keras_compress import pruning
from keras_compress.pruning import ConstantSparsity, PruneWrapper, UpdatePruningStep

L = keras.layers


def prune_and_fit(model, sparsity=0.6, **kwargs):
    """One epoch under a constant schedule that prunes at every step."""
    x, y = synthetic_data(model, n=64)
    pruned = pruning.prune_low_magnitude(model, ConstantSparsity(sparsity, 0, frequency=1), **kwargs)
    compile_for(pruned)
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[UpdatePruningStep()])
    return pruned, x


def wrappers(model):
    return {l.layer.name: l for l in model.layers if isinstance(l, PruneWrapper)}


def test_attention_projections_are_pruned_and_stripping_keeps_outputs():
    model = transformer_block()
    pruned, x = prune_and_fit(model)
    attention = wrappers(pruned)["attention"]
    # The four EinsumDense kernels, each to 60% within one weight.
    assert [w.path.split("/")[-2] for w in attention.pruned_weights] == [
        "query", "key", "value", "attention_output"
    ]
    for w in attention.pruned_weights:
        zeros = np.count_nonzero(value(w) == 0)
        assert abs(zeros - round(0.6 * np.prod(w.shape))) <= 1, w.path
    stripped = pruning.strip_pruning(pruned)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)
    rows = {r.name: r for r in pruning.sparsity_report(stripped)}
    assert rows["attention"].type == "MultiHeadAttention"
    assert rows["attention"].parameters == sum(int(np.prod(w.shape)) for w in attention.pruned_weights)
    assert abs(rows["attention"].sparsity - 0.6) < 0.01


def test_selecting_einsum_dense_by_type_selects_the_attention_layer():
    model = transformer_block()
    pruned = pruning.prune_low_magnitude(model, layers=L.EinsumDense)
    assert sorted(wrappers(pruned)) == ["attention"]


@pytest.mark.parametrize("build", [lstm_classifier, gru_classifier])
def test_recurrent_kernels_are_pruned(build):
    model = build()
    pruned, x = prune_and_fit(model)
    cell_weights = wrappers(pruned)[model.layers[1].name].pruned_weights
    assert [w.path.split("/")[-1] for w in cell_weights] == ["kernel", "recurrent_kernel"]
    for w in cell_weights:
        assert abs(np.count_nonzero(value(w) == 0) - round(0.6 * np.prod(w.shape))) <= 1
    stripped = pruning.strip_pruning(pruned)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)


def test_bidirectional_and_time_distributed_prune_their_inner_layers():
    inputs = keras.Input((6, 5))
    x = L.Bidirectional(L.GRU(4, return_sequences=True), name="bidi")(inputs)
    x = L.TimeDistributed(L.Dense(3), name="per_step")(x)
    model = keras.Model(inputs, L.Flatten()(x))
    pruned = pruning.prune_low_magnitude(model)
    paths = {name: [w.path for w in wr.pruned_weights] for name, wr in wrappers(pruned).items()}
    assert len(paths["bidi"]) == 4  # forward and backward cells, kernel and recurrent kernel
    assert {p.split("/")[-1] for p in paths["bidi"]} == {"kernel", "recurrent_kernel"}
    assert [p.split("/")[-1] for p in paths["per_step"]] == ["kernel"]


def test_masks_from_embedding_still_reach_the_wrapped_recurrent_layer():
    tokens = keras.Input((6,), dtype="int32")
    x = L.Embedding(10, 4, mask_zero=True, name="embedding")(tokens)
    model = keras.Model(tokens, L.LSTM(3, name="lstm")(x))
    pruned = pruning.prune_low_magnitude(model, layers="lstm")
    padded = np.array([[1, 2, 3, 0, 0, 0]])
    table, lstm = value(model.layers[1].embeddings), model.layers[-1]
    # Masked steps are skipped, so the padding changes nothing ...
    expected = value(lstm(table[padded[:, :3]]))
    np.testing.assert_allclose(pruned.predict(padded, verbose=0), expected, atol=1e-6)
    # ... which it would without the mask.
    assert np.abs(value(lstm(table[padded])) - expected).max() > 1e-4


def test_a_wrapped_attention_layer_round_trips_with_its_masks(tmp_path):
    model = transformer_block()
    pruned, x = prune_and_fit(model)
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(wrappers(pruned)["attention"].masks, wrappers(loaded)["attention"].masks):
        np.testing.assert_array_equal(value(a), value(b))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)


def test_frozen_backbone_is_left_unpruned_with_a_warning():
    model = frozen_backbone()
    base = [l for l in model.layers if isinstance(l, keras.Model)][0]
    frozen_convs = [l for l in base.layers if isinstance(l, (L.Conv2D, L.DepthwiseConv2D))]
    before = snapshot(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = pruning.prune_low_magnitude(model)
    assert sorted(wrappers(pruned)) == ["logits"]  # the trainable head only
    message = " ".join(str(w.message) for w in caught)
    assert f"leaves {len(frozen_convs)} frozen (trainable=False) layer(s)" in message
    assert "'Conv1' (Conv2D)" in message and "include_frozen=True" in message

    with_frozen = pruning.prune_low_magnitude(model, include_frozen=True)
    nested = [l for l in with_frozen.layers if isinstance(l, keras.Model)][0]
    assert sum(isinstance(l, PruneWrapper) for l in nested.layers) == len(frozen_convs)
    with pytest.raises(ValueError, match="layer 'Conv1' \\(Conv2D\\) named in layers is frozen"):
        pruning.prune_low_magnitude(model, layers="Conv1")
    with pytest.raises(TypeError, match="include_frozen must be True or False"):
        pruning.prune_low_magnitude(model, include_frozen="yes")
    assert_unchanged(model, before)


def test_unprunable_layer_is_named_in_a_sentence():
    model = transformer_block()
    with pytest.raises(
        ValueError,
        match="cannot prune layer 'attention_norm' \\(LayerNormalization\\): it has no pruning rule\\.",
    ):
        pruning.prune_low_magnitude(model, layers="attention_norm")
    with pytest.raises(ValueError, match="cannot wrap layer 'norm' \\(LayerNormalization\\): it has no pruning rule"):
        PruneWrapper(L.LayerNormalization(name="norm"))
