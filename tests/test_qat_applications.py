"""Coverage: pruning, quantize_model and int8 conversion on keras.applications models.

Slow. CI runs MobileNet, MobileNetV2 and MobileNetV3Small whole (with their
top, at 96x96), and MobileNetV3Small through prune -> strip -> QAT -> int8;
KC_ALL_APPLICATIONS=1 adds ResNet50 and EfficientNetB0 to the first test
and every family Keras 3 ships to the second (about 15 minutes more on 2
cores), which the CI time budget leaves out.
"""

import os
import warnings

import keras
import numpy as np
import pytest
from architectures import compile_for, recalibrate_batch_norms, zero_masks, zeros_kept

import keras_compress as kc
from keras_compress import pruning
from keras_compress.quantization import quantize_model

APPLICATIONS = ["MobileNet", "MobileNetV2", "MobileNetV3Small"]
if os.environ.get("KC_ALL_APPLICATIONS") == "1":
    APPLICATIONS += ["ResNet50", "EfficientNetB0"]


@pytest.mark.slow
@pytest.mark.parametrize("name", APPLICATIONS)
def test_application_quantizes_to_an_all_int8_tflite(name):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(96, 96, 3), classes=10)
    x = np.random.default_rng(0).uniform(0, 255, (8, 96, 96, 3)).astype("float32")
    recalibrate_batch_norms(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer has an int8 rule: no "stays float" warning
        qat = quantize_model(model)
    qat(x, training=True)  # sets the activation ranges, as the first QAT step would
    flatbuffer = kc.to_tflite(qat, quantization="int8")
    info = kc.inspect_tflite(flatbuffer)
    assert info.float_compute_ops() == []
    types = [op.type for op in info.ops]
    assert types[0] == "QUANTIZE" and types[-1] == "DEQUANTIZE"
    assert types.count("QUANTIZE") + types.count("DEQUANTIZE") <= 4  # only requantizations between
    # BatchNormalization is folded away: no standalone MUL/ADD pair per conv.
    convs = sum(t in ("CONV_2D", "DEPTHWISE_CONV_2D") for t in types)
    assert convs >= sum(
        isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) for l in model.layers
    )
    assert len(flatbuffer) < 0.3 * 4 * model.count_params()  # int8 weights, not float
    # The interpreter runs it and gives a distribution over the 10 classes.
    probabilities = kc.predict_tflite(flatbuffer, x[:2])
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=0.05)


# The smallest member of every keras.applications family, at its smallest
# input. CI runs MobileNetV3 (the family with the most layer kinds: hard
# swish, squeeze-excite, Rescaling); KC_ALL_APPLICATIONS=1 runs them all
# (about 15 minutes on 2 cores).
FAMILIES = {
    "ConvNeXt": ("ConvNeXtTiny", 32),  # LayerNormalization, grouped Conv2D, LayerScale, gelu
    "DenseNet": ("DenseNet121", 32),
    "EfficientNet": ("EfficientNetB0", 32),
    "EfficientNetV2": ("EfficientNetV2B0", 32),  # Rescaling and Normalization in the graph
    "InceptionResNetV2": ("InceptionResNetV2", 75),  # CustomScaleLayer
    "InceptionV3": ("InceptionV3", 75),
    "MobileNet": ("MobileNet", 32),
    "MobileNetV2": ("MobileNetV2", 32),
    "MobileNetV3": ("MobileNetV3Small", 32),
    "NASNet": ("NASNetMobile", 32),  # SeparableConv2D everywhere
    "ResNet": ("ResNet50", 32),
    "ResNetV2": ("ResNet50V2", 32),
    "VGG": ("VGG16", 32),
    "Xception": ("Xception", 71),
}
PIPELINE = list(FAMILIES) if os.environ.get("KC_ALL_APPLICATIONS") == "1" else ["MobileNetV3"]


@pytest.mark.slow
@pytest.mark.parametrize("family", PIPELINE)
def test_application_family_prunes_trains_quantization_aware_and_converts_all_int8(family):
    name, size = FAMILIES[family]
    keras.utils.set_random_seed(0)
    base = getattr(keras.applications, name)(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg"
    )
    images = keras.Input((size, size, 3), name="images")
    model = keras.Model(images, keras.layers.Dense(10, name="scores")(base(images)), name=family)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, 8)
    recalibrate_batch_norms(base, x)  # the families that preprocess inside take x as it is

    pruned = compile_for(pruning.prune_low_magnitude(model, pruning.ConstantSparsity(0.5, 0, frequency=1)))
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    stripped = pruning.strip_pruning(pruned)
    zeros = zero_masks(stripped)
    assert len(zeros) >= 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer has an int8 rule: no "stay float" warning
        qat = compile_for(quantize_model(stripped))
    qat.fit(x, y, batch_size=8, epochs=1, verbose=0)
    kept, lost_at = zeros_kept(zeros, qat)
    assert kept, f"zeros lost in {lost_at}"

    flatbuffer = kc.to_tflite(qat, strict=True)  # int8 by default; raises if any op stays float
    info = kc.inspect_tflite(flatbuffer)
    assert info.float_compute_ops() == []
    assert [t.name for t in info.outputs] == ["scores"] and info.inputs[0].name == "images"
    assert set(info.constant_bytes) <= {"int8", "int32"}  # int8 weights, int32 biases: no float
    # The file computes what the Keras model does, to int8 rounding: deep
    # random-weight networks amplify that rounding (see the README), so the
    # bar is the direction of the scores, not their values.
    scores, expected = kc.predict_tflite(flatbuffer, x), qat.predict(x, verbose=0)
    cosine = np.sum(scores * expected, -1) / (np.linalg.norm(scores, axis=-1) * np.linalg.norm(expected, axis=-1))
    assert cosine.min() > 0.9, cosine
