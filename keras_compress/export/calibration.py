"""Reading `to_tflite`'s `representative_data` into calibration samples, one
array per model input, checked against the inputs before the slow conversion.

The forms and checks are the shared data adapter's, `keras_compress._data`."""

from keras_compress import _data

REPRESENTATIVE_DATA_FORMS = _data.INPUT_FORMS


def calibration_samples(model_name, inputs, quantization, data, steps):
    """Up to `steps` validated samples of `data`, one array per input, each
    cast to its input's dtype.

    Read up front, so that bad data fails before the slow conversion and a
    one-shot generator can be used.

    Args:
        model_name: the model's name, for messages.
        inputs: the model's inputs, a list of `signature.ModelInput`.
        quantization: the mode, for messages.
        data: the `representative_data` argument (see
            `REPRESENTATIVE_DATA_FORMS`).
        steps: how many samples to read at most.

    Returns:
        A list of arrays with the same number of samples, one per input.

    Raises:
        ValueError: `data` is missing, empty, or does not fit an input.
        TypeError: `data` has none of the accepted forms.
    """
    if data is None:
        raise ValueError(
            f"to_tflite: quantization={quantization!r} needs representative_data to "
            f"calibrate activations: {REPRESENTATIVE_DATA_FORMS}."
        )
    return _data.read_inputs(
        data, inputs, api="to_tflite", argument="representative_data", model_name=model_name, max_samples=steps
    )
