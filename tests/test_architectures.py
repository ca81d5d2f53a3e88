"""The architecture matrix: every model family goes prune -> strip -> QAT ->
int8 `.tflite`, with PTQ int8 of the same weights beside it.

Checks, per family: zeros kept in every pruned weight through QAT; the op
dtypes of the int8 file (every compute op int8, or a warning naming what
stays float); Keras-vs-TFLite argmax agreement (QAT at least 99.5% wherever
PTQ reaches 99.5% on the same weights); output order, names and shapes.
`benchmarks/architecture_matrix.py` prints the same measurements as a table.
"""

import keras
import pytest
from architectures import FAMILIES, compress_pipeline, synthetic_data, train_briefly

# Keras 3's recurrent layers have no int8 path without representative data:
# a quantization-aware model leaves them float (named in a warning).
LEFT_FLOAT = {"lstm": "lstm", "gru": "gru"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def measured(request):
    keras.utils.set_random_seed(0)
    model = FAMILIES[request.param]()
    x, y = synthetic_data(model, n=256, seed=0)
    train_briefly(model, x, y)
    x_test, _ = synthetic_data(model, n=1000, seed=1)
    return request.param, compress_pipeline(model, x, y, x_test)


@pytest.mark.slow
def test_int8_file_is_integer_or_says_what_stays_float(measured):
    family, row = measured
    if family in LEFT_FLOAT:
        assert row["qat_float_ops"], "a recurrent layer cannot be int8 without calibration"
        assert any(f"'{LEFT_FLOAT[family]}'" in w for w in row["warnings"]), row["warnings"]
    else:
        assert row["qat_float_ops"] == [], row["qat_float_ops"]


@pytest.mark.slow
def test_zeros_survive_quantization_aware_training(measured):
    family, row = measured
    assert row["pruned_weights"] > 0
    assert row["zeros_kept"], f"{family}: zeros lost in {row['zeros_lost_at']}"


@pytest.mark.slow
def test_qat_file_agrees_with_its_keras_model_where_ptq_does(measured):
    family, row = measured
    for qat, ptq in zip(row["qat_agreement"], row["ptq_agreement"]):
        if ptq >= 0.995 and family not in LEFT_FLOAT:
            assert qat >= 0.995, (family, row["qat_agreement"], row["ptq_agreement"])


@pytest.mark.slow
def test_outputs_keep_their_order_names_and_shapes(measured):
    family, row = measured
    assert row["output_names"] == row["expected_output_names"]
    assert row["output_shapes"] == row["expected_output_shapes"]
