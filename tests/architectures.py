"""Small models of the families people ship, for the architecture matrix.

Each builder returns a built, uncompiled model; `synthetic_data(model)` gives
inputs and labels that carry a learnable rule, so that a couple of epochs
give weights that behave like trained ones (activations in range, argmaxes
that mean something), and `train_briefly` fits them. Every model is kept
small so that the whole matrix runs in a few minutes on 2 cores.
"""

import warnings

import keras
import numpy as np

L = keras.layers


def transformer_block(vocab=64, length=16, dim=32, heads=2, classes=4):
    """Embedding, one post-norm encoder block (MultiHeadAttention, residual
    Adds, LayerNormalization, Dense FFN), pooling and a classifier."""
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    x = L.Embedding(vocab, dim, name="embedding")(tokens)
    attention = L.MultiHeadAttention(num_heads=heads, key_dim=dim // heads, name="attention")(x, x)
    x = L.Add(name="attention_residual")([x, attention])
    x = L.LayerNormalization(name="attention_norm")(x)
    ffn = L.Dense(2 * dim, activation="relu", name="ffn_in")(x)
    ffn = L.Dense(dim, name="ffn_out")(ffn)
    x = L.Add(name="ffn_residual")([x, ffn])
    x = L.LayerNormalization(name="ffn_norm")(x)
    x = L.GlobalAveragePooling1D(name="pool")(x)
    outputs = L.Dense(classes, name="logits")(x)
    return keras.Model(tokens, outputs, name="transformer")


def _recurrent_classifier(cell, name, steps=12, features=8, units=16, classes=3):
    inputs = keras.Input((steps, features), name="sequence")
    x = cell(units, name=name.lower())(inputs)
    x = L.Dense(16, activation="relu", name="hidden")(x)
    outputs = L.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"{name.lower()}_classifier")


def lstm_classifier(**kwargs):
    return _recurrent_classifier(L.LSTM, "LSTM", **kwargs)


def gru_classifier(**kwargs):
    return _recurrent_classifier(L.GRU, "GRU", **kwargs)


def embedding_text_classifier(vocab=200, length=20, dim=16, classes=3):
    """Embedding, a SeparableConv1D over the tokens, pooling, Dense."""
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    x = L.Embedding(vocab, dim, name="embedding")(tokens)
    x = L.SeparableConv1D(16, 3, activation="relu", name="separable")(x)
    x = L.GlobalAveragePooling1D(name="pool")(x)
    outputs = L.Dense(classes, name="logits")(x)
    return keras.Model(tokens, outputs, name="text_classifier")


def conv1d_keyword_spotter(frames=49, coefficients=10, classes=4):
    """A DS-CNN-like keyword spotter on MFCC frames: Conv1D, BN, ReLU, pooling."""
    inputs = keras.Input((frames, coefficients), name="mfcc")
    x = L.Conv1D(16, 5, strides=2, use_bias=False, name="conv_1")(inputs)
    x = L.BatchNormalization(name="bn_1")(x)
    x = L.ReLU(name="relu_1")(x)
    x = L.Conv1D(16, 3, padding="same", activation="relu", name="conv_2")(x)
    x = L.MaxPooling1D(name="pool_1")(x)
    x = L.GlobalAveragePooling1D(name="pool")(x)
    outputs = L.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="keyword_spotter")


def unet(size=16, channels=1, classes=2):
    """A two-level U-Net: SeparableConv2D encoder, Conv2DTranspose and
    UpSampling2D decoder, skip Concatenates; per-pixel class logits."""
    inputs = keras.Input((size, size, channels), name="image")
    e1 = L.SeparableConv2D(8, 3, padding="same", activation="relu", name="enc_1")(inputs)
    x = L.MaxPooling2D(name="down_1")(e1)
    e2 = L.SeparableConv2D(16, 3, padding="same", activation="relu", name="enc_2")(x)
    x = L.MaxPooling2D(name="down_2")(e2)
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="bottleneck")(x)
    x = L.Conv2DTranspose(16, 2, strides=2, name="up_2")(x)
    x = L.Concatenate(name="skip_2")([x, e2])
    x = L.SeparableConv2D(16, 3, padding="same", activation="relu", name="dec_2")(x)
    x = L.UpSampling2D(name="up_1")(x)
    x = L.Concatenate(name="skip_1")([x, e1])
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="dec_1")(x)
    outputs = L.Conv2D(classes, 1, name="mask_logits")(x)
    return keras.Model(inputs, outputs, name="unet")


def two_in_two_out(features=8, size=8, classes=3):
    """Numeric features and an image in; class logits and a regression out.

    The outputs are named so that alphabetical order ('alpha...' < 'zeta...')
    is the reverse of `model.outputs`' order: a file that sorts them would
    swap them.
    """
    numbers = keras.Input((features,), name="numbers")
    image = keras.Input((size, size, 1), name="image")
    h = L.Dense(16, activation="relu", name="numbers_dense")(numbers)
    g = L.Conv2D(4, 3, activation="relu", name="image_conv")(image)
    g = L.GlobalAveragePooling2D(name="image_pool")(g)
    x = L.Concatenate(name="joined")([h, g])
    x = L.Dense(16, activation="relu", name="shared")(x)
    label = L.Dense(classes, name="zeta_class")(x)
    score = L.Dense(1, name="alpha_score")(x)
    return keras.Model([numbers, image], [label, score], name="two_in_two_out")


def frozen_backbone(size=32, classes=5, alpha=0.35):
    """Transfer learning: a frozen MobileNetV2 base called with
    `training=False`, `preprocess_input`, pooling, Dropout and a Dense head."""
    base = keras.applications.MobileNetV2(
        include_top=False, weights=None, alpha=alpha, input_shape=(size, size, 3)
    )
    # weights=None leaves moving statistics (mean 0, variance 1) that do not
    # match the activations; pretrained bases have matching ones.
    images = np.random.default_rng(0).uniform(0, 255, (32, size, size, 3)).astype("float32")
    recalibrate_batch_norms(base, keras.applications.mobilenet_v2.preprocess_input(images))
    base.trainable = False
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.applications.mobilenet_v2.preprocess_input(inputs)
    x = base(x, training=False)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    x = L.Dropout(0.2, name="dropout")(x)
    outputs = L.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="transfer")


def raw_ops_model(size=8, classes=3):
    """Keras ops used directly in the graph, and GELU / swish activations."""
    inputs = keras.Input((size, size, 3), name="image")
    x = L.Conv2D(8, 3, name="conv_1")(inputs)
    x = keras.ops.relu(x)
    x = x / 6.0
    x = L.Conv2D(8, 3, activation="gelu", name="conv_gelu")(x)
    x = L.Conv2D(8, 3, padding="same", activation="swish", name="conv_swish")(x)
    x = x * keras.ops.sigmoid(x)
    x = keras.ops.mean(x, axis=(1, 2))
    outputs = L.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="raw_ops")


def recalibrate_batch_norms(model, x):
    """Sets every BatchNormalization's moving statistics from one batch `x`.

    `weights=None` models have statistics (mean 0, variance 1) that do not
    match their activations, which then shrink or grow layer after layer. A
    trained model's statistics match; one batch of recalibration imitates that.
    """
    norms = [l for l in model.layers if isinstance(l, L.BatchNormalization)]
    momenta = [l.momentum for l in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


FAMILIES = {
    "transformer": transformer_block,
    "lstm": lstm_classifier,
    "gru": gru_classifier,
    "embedding_text": embedding_text_classifier,
    "conv1d": conv1d_keyword_spotter,
    "unet": unet,
    "two_in_two_out": two_in_two_out,
    "frozen_backbone": frozen_backbone,
    "raw_ops": raw_ops_model,
}


# -- data -------------------------------------------------------------------


def _input_array(tensor, n, rng, vocab):
    shape = (n, *tensor.shape[1:])
    if "int" in str(tensor.dtype):
        return rng.integers(0, vocab, shape).astype("int32")
    if tensor.shape[-1] == 3 and len(shape) == 4:  # images in [0, 255], as preprocess_input expects
        return rng.uniform(0, 255, shape).astype("float32")
    return rng.normal(size=shape).astype("float32")


def _vocabulary(model):
    sizes = [l.input_dim for l in model.layers if isinstance(l, L.Embedding)]
    return sizes[0] if sizes else 2


def _labels(output, xs, rng):
    """Targets for one output from a fixed random rule of the inputs."""
    n = len(xs[0])
    summary = np.concatenate(
        [x.reshape(n, -1).astype("float32") for x in xs], axis=1
    )
    summary = (summary - summary.mean(0)) / (summary.std(0) + 1e-6)
    units = output.shape[-1]
    if len(output.shape) == 4:  # segmentation: a per-pixel rule of the first channel
        image = xs[0][..., 0]
        return (image > np.median(image)).astype("int32")
    projection = rng.normal(size=(summary.shape[1], max(units, 1)))
    scores = summary @ projection
    if units == 1:
        return scores[:, :1].astype("float32")
    return scores.argmax(-1).astype("int32")


def synthetic_data(model, n=256, seed=0):
    """`(x, y)`: inputs (an array, or a list for several inputs) and targets
    (an array, or a list for several outputs) with a learnable rule."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(model)
    xs = [_input_array(t, n, rng, vocab) for t in model.inputs]
    ys = [_labels(o, xs, rng) for o in model.outputs]
    unpack = lambda v: v[0] if len(v) == 1 else v  # noqa: E731
    return unpack(xs), unpack(ys)


def compile_for(model, optimizer="adam"):
    """Compiles with a loss per output: class logits get sparse categorical
    cross-entropy, single units mean squared error."""
    losses = [
        "mse" if o.shape[-1] == 1 else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        for o in model.outputs
    ]
    model.compile(optimizer=optimizer, loss=losses[0] if len(losses) == 1 else losses)
    return model


def train_briefly(model, x, y, epochs=2, batch_size=32):
    """A short fit, so the weights and statistics behave like trained ones."""
    compile_for(model)
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return model


def argmax_agreement(a, b):
    """Share of equal argmaxes over the last axis (a class or pixel agreement);
    for single-unit outputs, the share within 5% of the reference's spread."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape[-1] == 1:
        return float(np.mean(np.abs(a - b) <= 0.05 * (np.std(a) + 1e-6)))
    return float(np.mean(a.argmax(-1) == b.argmax(-1)))


# -- the pipeline every model goes through -----------------------------------


def zero_masks(model):
    """`[(path, zeros)]` for the weights of rank >= 2 that hold zeros."""
    found = []
    for w in model.weights:
        if len(w.shape) >= 2:
            values = keras.ops.convert_to_numpy(w)
            if (values == 0).any():
                found.append((w.path, values == 0))
    return found


def zeros_kept(before, after_model):
    """Whether every zero of `before` (from `zero_masks`) is still zero in
    some weight of `after_model` of the same shape, each weight used once;
    and the first weight that lost zeros, if any."""
    candidates = [
        (w.path, keras.ops.convert_to_numpy(w) == 0) for w in after_model.weights if len(w.shape) >= 2
    ]
    for path, zeros in before:
        match = next(
            (c for c in candidates if c[1].shape == zeros.shape and c[1][zeros].all()), None
        )
        if match is None:
            return False, path
        candidates.remove(match)
    return True, None


def as_list(values):
    return list(values) if isinstance(values, (list, tuple)) else [values]


def compress_pipeline(model, x, y, x_test, *, sparsity=0.5, qat_epochs=1):
    """prune -> strip -> QAT -> int8 `.tflite`, and PTQ int8 of the stripped
    model for comparison. Returns a dict of what was measured."""
    import keras_compress as kc
    from keras_compress import pruning, quantization

    pruned = pruning.prune_low_magnitude(model, pruning.ConstantSparsity(sparsity, 0, frequency=1))
    compile_for(pruned)
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    stripped = pruning.strip_pruning(pruned)
    zeros = zero_masks(stripped)

    qat = quantization.quantize_model(stripped)
    compile_for(qat)
    qat.fit(x, y, epochs=qat_epochs, batch_size=32, verbose=0)
    kept, lost_at = zeros_kept(zeros, qat)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qat_file = kc.to_tflite(qat, quantization="int8")
        ptq_file = kc.to_tflite(stripped, quantization="int8", representative_data=x)
    qat_info = kc.inspect_tflite(qat_file)
    keras_qat = as_list(qat.predict(x_test, verbose=0))
    keras_float = as_list(stripped.predict(x_test, verbose=0))
    tflite_qat = as_list(kc.predict_tflite(qat_file, x_test))
    tflite_ptq = as_list(kc.predict_tflite(ptq_file, x_test))
    return {
        "qat_float_ops": sorted({op.type for op in qat_info.float_compute_ops()}),
        "ptq_float_ops": sorted({op.type for op in kc.inspect_tflite(ptq_file).float_compute_ops()}),
        "qat_agreement": [argmax_agreement(a, b) for a, b in zip(keras_qat, tflite_qat)],
        "ptq_agreement": [argmax_agreement(a, b) for a, b in zip(keras_float, tflite_ptq)],
        "output_names": [t.name for t in qat_info.outputs],
        "expected_output_names": list(model.output_names),
        "output_shapes": [t.shape[1:] for t in qat_info.outputs],
        "expected_output_shapes": [tuple(o.shape[1:]) for o in model.outputs],
        "pruned_weights": len(zeros),
        "zeros_kept": kept,
        "zeros_lost_at": lost_at,
        "warnings": [str(w.message) for w in caught],
    }
