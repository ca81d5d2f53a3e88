"""Coverage: quantize_model and int8 conversion on keras.applications models.

Slow. CI runs MobileNet, MobileNetV2 and MobileNetV3Small (about 1.5 minutes
on 2 cores); KC_ALL_APPLICATIONS=1 adds ResNet50 and EfficientNetB0 (another
1.6 minutes; their layers, Conv/BN/ReLU/Add and swish/squeeze-excite, are the
ones the MobileNets already exercise), which the CI time budget leaves out.
"""

import os
import warnings

import keras
import numpy as np
import pytest
from architectures import recalibrate_batch_norms

import keras_compress as kc
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
