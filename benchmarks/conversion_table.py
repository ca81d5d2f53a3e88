"""What converts to what: each Keras layer kind through PTQ int8, int16x8 and
QAT int8, with the TFLite ops it becomes and their dtypes.

For every row, a small model `input -> [Dense or Conv] -> LAYER -> output`
is converted three ways: post-training int8 and int16x8 with 64 calibration
samples, and quantization-aware (`quantize_model`, ranges set by one
training-mode call) to int8 without representative data. The table lists
the TFLite ops of the layer (those outside the scaffold) and says "int8" /
"int16" when all of them compute in it, else which stay float and why
(`to_tflite`'s warning, or the error).

Usage:

    python benchmarks/conversion_table.py [--only Embedding,LSTM]
"""

import argparse
import os
import warnings


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="comma-separated row names")
    return p.parse_args()


def rows():
    """`{name: (input shape, input dtype, build(x) -> y)}` for each layer kind."""
    import keras

    L = keras.layers
    seq = (12, 8)
    image = (8, 8, 4)
    return {
        "Dense": (seq, "float32", lambda x: L.Dense(8)(x)),
        "EinsumDense": (seq, "float32", lambda x: L.EinsumDense("abc,cd->abd", (12, 8))(x)),
        "Conv1D": (seq, "float32", lambda x: L.Conv1D(8, 3)(x)),
        "Conv2D + BatchNormalization + ReLU": (
            image, "float32", lambda x: L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3)(x)))),
        "DepthwiseConv2D": (image, "float32", lambda x: L.DepthwiseConv2D(3)(x)),
        "SeparableConv1D": (seq, "float32", lambda x: L.SeparableConv1D(8, 3)(x)),
        "SeparableConv2D": (image, "float32", lambda x: L.SeparableConv2D(8, 3)(x)),
        "Conv2DTranspose": (image, "float32", lambda x: L.Conv2DTranspose(4, 3, strides=2)(x)),
        "Conv3D": ((4, 6, 6, 2), "float32", lambda x: L.Conv3D(4, 3)(x)),
        "Embedding": ((12,), "int32", lambda x: L.Embedding(32, 8)(x)),
        "MultiHeadAttention": (seq, "float32", lambda x: L.MultiHeadAttention(2, 4)(x, x)),
        "MultiHeadAttention, causal mask": (
            seq, "float32", lambda x: L.MultiHeadAttention(2, 4)(x, x, use_causal_mask=True)),
        "LayerNormalization": (seq, "float32", lambda x: L.LayerNormalization()(x)),
        "BatchNormalization (after a ReLU)": (
            seq, "float32", lambda x: L.BatchNormalization()(L.ReLU()(x))),
        "LSTM": (seq, "float32", lambda x: L.LSTM(8)(x)),
        "GRU": (seq, "float32", lambda x: L.GRU(8)(x)),
        "Bidirectional(LSTM)": (seq, "float32", lambda x: L.Bidirectional(L.LSTM(4))(x)),
        "Add / Multiply / Concatenate": (
            seq, "float32", lambda x: L.Concatenate()([L.Add()([x, x]), L.Multiply()([x, x])])),
        "MaxPooling2D / AveragePooling2D": (
            image, "float32", lambda x: L.AveragePooling2D(2)(L.MaxPooling2D(2, 1)(x))),
        "GlobalAveragePooling1D": (seq, "float32", lambda x: L.GlobalAveragePooling1D()(x)),
        "UpSampling2D": (image, "float32", lambda x: L.UpSampling2D()(x)),
        "Rescaling (x / 127.5 - 1)": (seq, "float32", lambda x: L.Rescaling(1 / 127.5, -1)(x)),
        "relu / relu6": (seq, "float32", lambda x: L.ReLU(6.0)(L.Activation("relu")(x))),
        "gelu": (seq, "float32", lambda x: L.Activation("gelu")(x)),
        "swish": (seq, "float32", lambda x: L.Activation("swish")(x)),
        "hard_swish": (seq, "float32", lambda x: L.Activation("hard_swish")(x)),
        "sigmoid / tanh": (seq, "float32", lambda x: L.Activation("tanh")(L.Activation("sigmoid")(x))),
        "softmax": (seq, "float32", lambda x: L.Softmax()(x)),
        "leaky_relu": (seq, "float32", lambda x: L.LeakyReLU()(x)),
        "elu": (seq, "float32", lambda x: L.Activation("elu")(x)),
        "keras.ops: x / 6, mean, relu": (
            seq, "float32", lambda x: keras.ops.relu(keras.ops.mean(x / 6.0, axis=1, keepdims=True))),
        "keras.ops: negative, square": (
            seq, "float32", lambda x: keras.ops.square(keras.ops.negative(x))),
    }


def scaffold(shape, dtype, build):
    """`input -> (Dense / Conv) -> LAYER -> output`; the first layer gives
    float inputs a range of their own."""
    import keras

    inputs = keras.Input(shape, dtype=dtype, name="inputs")
    x = inputs
    if dtype.startswith("float"):
        x = keras.layers.Dense(shape[-1], name="scaffold_in")(x)
    return keras.Model(inputs, build(x), name="probe")


def ops_of(flatbuffer, model):
    """The TFLite ops outside the scaffold and its I/O: `[(type, dtype)]`."""
    import keras_compress as kc
    from keras_compress.export import layer_candidates

    found = []
    for op in kc.inspect_tflite(flatbuffer).ops:
        if op.type in ("QUANTIZE", "DEQUANTIZE") or any(
            "scaffold_in" in name for name in layer_candidates(op.name, model)
        ):
            continue
        found.append((op.type, op.dtype))
    return found


def describe(ops, integer):
    types = sorted({t for t, _ in ops})
    left = sorted({t for t, d in ops if d and d.startswith("float")})
    if not left:
        return f"{integer}: {', '.join(types)}"
    return f"float {', '.join(left)} (of {', '.join(types)})"


def convert(model, x, mode):
    import keras_compress as kc

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode == "qat":
                from keras_compress.quantization import quantize_model

                qat = quantize_model(model)
                qat(x, training=True)
                return describe(ops_of(kc.to_tflite(qat, quantization="int8"), qat), "int8")
            flatbuffer = kc.to_tflite(model, quantization=mode, representative_data=x)
            return describe(ops_of(flatbuffer, model), "int16" if mode == "int16x8" else "int8")
    except Exception as error:  # the table reports refusals as they are
        return f"refused: {str(error).split('.')[0][:90]}"


def main():
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    table = rows()
    names = args.only.split(",") if args.only else list(table)
    print("| layer | PTQ int8 | PTQ int16x8 | QAT int8 (no calibration data) |")
    print("|---|---|---|---|")
    for name in names:
        shape, dtype, build = table[name]
        keras.utils.set_random_seed(0)
        model = scaffold(shape, dtype, build)
        rng = np.random.default_rng(0)
        if dtype == "int32":
            x = rng.integers(0, 32, (64, *shape)).astype("int32")
        else:
            x = rng.normal(size=(64, *shape)).astype("float32")
        cells = [convert(model, x, mode) for mode in ("int8", "int16x8", "qat")]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
