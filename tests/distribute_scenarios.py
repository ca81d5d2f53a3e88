"""Trains each compression scenario on one device and under a MirroredStrategy
over two logical CPUs, in one process, and prints the results as JSON.

Run by tests/test_distribute.py in a subprocess: the two logical CPUs must be
configured before TensorFlow initializes its devices, which a pytest process
(having run other tests) is past.

    python tests/distribute_scenarios.py [scenario ...]   # default: all

The last line of stdout is `{scenario: {"one": {...}, "two": {...}}}`.
"""

import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

# Before anything runs an op: split the CPU into two logical devices (not
# when tests/multiworker_scenarios.py imports the scenarios: there each
# worker process is one device).
if os.environ.get("KC_SPLIT_CPU", "1") == "1" and os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_compress as kc  # noqa: E402
from keras_compress import _models, examples  # noqa: E402
from keras_compress.pruning import PruneWrapper  # noqa: E402
from keras_compress.quantization import ActivationQuantizer  # noqa: E402

TRAIN, TEST = 2048, 1000
BATCH = 64  # the global batch: each of two replicas gets 32
EPOCHS = 2
STEPS = EPOCHS * TRAIN // BATCH


def _data():
    (x_train, y_train), (x_test, y_test) = kc.datasets.load_mnist()
    return (x_train[:TRAIN], y_train[:TRAIN]), (x_test[:TEST], y_test[:TEST])


(X, Y), (X_TEST, Y_TEST) = _data()


def _initial_weights(build):
    """The weights every run of a scenario starts from (drawn once, seeded)."""
    keras.utils.set_random_seed(0)
    return build().get_weights()


# Multi-process JAX (tests/multiworker_scenarios.py) needs a tf.data.Dataset,
# which Keras shards across the processes; elsewhere arrays, in order.
AS_DATASET = os.environ.get("KC_DATASET") == "1"


def _fit_data(x, y, batch):
    if AS_DATASET:
        return (tf.data.Dataset.from_tensor_slices((x, y)).batch(batch),), {}
    return (x, y), {"batch_size": batch, "shuffle": False}


def _fit(model, callbacks=()):
    keras.utils.set_random_seed(1)
    data, options = _fit_data(X, Y, BATCH)
    history = model.fit(*data, epochs=EPOCHS, verbose=0, callbacks=list(callbacks), **options)
    return history.history


def _accuracy(model):
    logits = np.concatenate([keras.ops.convert_to_numpy(model(X_TEST[i:i + 250], training=False))
                             for i in range(0, len(X_TEST), 250)])
    return float(np.mean(np.argmax(logits, -1) == Y_TEST))


def _sparsity(model):
    zeros = total = 0
    for layer in _models.walk_layers(model):
        if isinstance(layer, PruneWrapper):
            for w, m in zip(layer.pruned_weights, layer.masks):
                w, m = keras.ops.convert_to_numpy(w), keras.ops.convert_to_numpy(m)
                assert np.all(w[m == 0] == 0), f"{layer.name}: a pruned weight is not zero"
                zeros, total = zeros + int(np.sum(m == 0)), total + m.size
    return zeros / total


def _pruning_state(model):
    wrappers = [l for l in _models.walk_layers(model) if isinstance(l, PruneWrapper)]
    return {
        "sparsity": _sparsity(model),
        "steps": sorted({int(keras.ops.convert_to_numpy(w.pruning_step)) for w in wrappers}),
        "mask_dtypes": sorted({w.masks[0].dtype for w in wrappers}),
    }


# -- scenarios: each builds, trains and measures, inside whatever scope is active --


def pruning(weights):
    model = examples.build_cnn()
    model.set_weights(weights)
    schedule = kc.pruning.PolynomialDecay(0.5, 0.8, begin_step=0, end_step=STEPS // 2, frequency=8)
    pruned = examples.compile_classifier(kc.pruning.prune_low_magnitude(model, schedule))
    _fit(pruned, [kc.pruning.UpdatePruningStep()])
    return {"accuracy": _accuracy(pruned), **_pruning_state(pruned)}


def l1_threshold(weights):
    model = examples.build_cnn()
    model.set_weights(weights)
    pruned = examples.compile_classifier(kc.pruning.prune_low_magnitude(model, None))
    history = _fit(
        pruned,
        [
            kc.pruning.L1Regularization(1e-4, end_epoch=1),
            kc.pruning.ThresholdPruning(relative_threshold=0.1, epochs=1),
        ],
    )
    return {
        "accuracy": _accuracy(pruned),
        "l1_strength": history["l1_strength"],
        **_pruning_state(pruned),
    }


def qat(weights):
    model = examples.build_cnn()
    model.set_weights(weights)
    quantized = examples.compile_classifier(kc.quantization.quantize_model(model))
    _fit(quantized)
    learned = [
        l for l in _models.walk_layers(quantized)
        if isinstance(l, ActivationQuantizer) and l.fixed_range is None
    ]
    number = keras.ops.convert_to_numpy
    return {
        "accuracy": _accuracy(quantized),
        "ranges": {l.name: [float(number(l.range_min)), float(number(l.range_max))] for l in learned},
        "updates": sorted({int(number(l.updates)) for l in learned}),
    }


def distillation(weights):
    teacher_weights, student_weights = weights
    teacher = examples.build_cnn()
    teacher.set_weights(teacher_weights)
    student = examples.build_student()
    student.set_weights(student_weights)
    distiller = kc.distillation.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        alpha=0.3,
        temperature=3.0,
    )
    history = _fit(distiller)
    return {
        "accuracy": _accuracy(student),
        "loss": history["loss"][-1],
        "student_loss": history["student_loss"][-1],
        "distillation_loss": history["distillation_loss"][-1],
    }


def first_batch_range(_):
    """One step on a batch whose two halves (one per replica) have different
    extremes: the first step sets each learned range to its batch's min and max."""
    model = keras.Sequential([keras.Input((4,), name="features"), keras.layers.Dense(2, name="dense")])
    model.set_weights([np.full((4, 2), 0.5, "float32"), np.zeros(2, "float32")])
    quantized = kc.quantization.quantize_model(model)
    quantized.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1, 1, (4, 4)), rng.uniform(-3, 5, (4, 4))]).astype("float32")
    x[0, 0], x[5, 1], x[6, 2] = 0.25, -3.0, 5.0
    data, options = _fit_data(x, np.zeros((8, 2), "float32"), 8)
    quantized.fit(*data, epochs=1, verbose=0, **options)
    ranges = [
        [float(keras.ops.convert_to_numpy(q.range_min)), float(keras.ops.convert_to_numpy(q.range_max))]
        for q in quantized.layers
        if isinstance(q, ActivationQuantizer)
    ]
    # The input quantizer's range is the batch's; the Dense output's follows
    # from it (it sees the quantized input) and must agree across devices.
    return {"ranges": ranges, "input_range": [float(x.min()), float(x.max())]}


def plain_keras(_):
    """A plain Keras model, no keras_compress: whether the engine itself trains."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.set_weights([np.full((4, 2), 0.1, "float32"), np.zeros(2, "float32")])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    data, options = _fit_data(x, 2 * x[:, :2], 16)
    history = model.fit(*data, epochs=2, verbose=0, **options)
    return {"loss": [float(v) for v in history.history["loss"]]}


def _trained_teacher():
    keras.utils.set_random_seed(2)
    teacher = examples.compile_classifier(examples.build_cnn())
    data, options = _fit_data(X, Y, BATCH)
    teacher.fit(*data, epochs=EPOCHS, verbose=0, **options)
    return teacher.get_weights()


SCENARIOS = {
    "pruning": (pruning, lambda: _initial_weights(examples.build_cnn)),
    "l1_threshold": (l1_threshold, lambda: _initial_weights(examples.build_cnn)),
    "qat": (qat, lambda: _initial_weights(examples.build_cnn)),
    "distillation": (distillation, lambda: (_trained_teacher(), _initial_weights(examples.build_student))),
    "first_batch_range": (first_batch_range, lambda: None),
    "plain_keras": (plain_keras, lambda: None),
}


def _run(scenario, weights, strategy=None):
    """The scenario's results, or the traceback that stopped it."""
    try:
        if strategy is None:
            return scenario(weights)
        with strategy.scope():
            return scenario(weights)
    except Exception:
        return {"error": traceback.format_exc()}


def main(names):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    strategy = tf.distribute.MirroredStrategy(devices)
    assert strategy.num_replicas_in_sync == 2
    results = {}
    for name in names:
        scenario, initial = SCENARIOS[name]
        weights = initial()
        results[name] = {"one": _run(scenario, weights), "two": _run(scenario, weights, strategy)}
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:] or [name for name in SCENARIOS if name != "plain_keras"])
