"""Reading `to_tflite`'s `representative_data` into calibration samples, one
array per model input, checked against the inputs before the slow conversion."""

from collections.abc import Iterable, Mapping

import numpy as np

from tflite_bench.interpreter import key_problems

REPRESENTATIVE_DATA_FORMS = (
    "a numpy array of samples (batch first); for several inputs a dict of arrays by "
    "input name or a list with one array per input, in the model's order; an (x, y) or "
    "(x, y, sample_weight) tuple of those; a tf.data.Dataset; or an iterable, generator "
    "or callable returning an iterator, yielding samples or batches in any of these forms"
)


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
    reader = _Reader(model_name, inputs)
    top = reader.top_level(data)
    if top is not None:
        chunks = [[a[:steps] for a in reader.batches(top)]]
    else:
        chunks, count = [], 0
        for element in _elements(data):
            batch = reader.batches(reader.element(element), element=True)
            chunks.append([a[: steps - count] for a in batch])
            count += len(chunks[-1][0])
            if count >= steps:
                break
    if not sum(len(c[0]) for c in chunks):
        raise ValueError("to_tflite: representative_data is empty.")
    return [
        np.concatenate([c[i] for c in chunks]).astype(spec.dtype) for i, spec in enumerate(inputs)
    ]


class _Reader:
    """Turns the forms of `representative_data` into one array per input."""

    def __init__(self, model_name, inputs):
        self.model_name = model_name
        self.inputs = inputs
        self.names = [i.name for i in inputs]

    def top_level(self, data):
        """The arrays of `data` when it holds them all at once, else `None`
        (an iterable to read element by element)."""
        if isinstance(data, Mapping):
            return self.from_dict(data)
        if _is_array(data):
            return self.from_arrays([data], single=True)
        if isinstance(data, tuple):
            return self.element(data)
        if isinstance(data, list) and len(self.inputs) > 1 and self.is_input_list(data):
            return self.from_arrays(data)
        return None

    def element(self, element):
        """One yielded element, or the whole data, as one array per input."""
        if isinstance(element, Mapping):
            return self.from_dict(element)
        if _is_array(element):
            return self.from_arrays([element], single=True)
        if isinstance(element, (tuple, list)):
            if len(self.inputs) > 1 and self.is_input_list(element):
                return self.from_arrays(element)
            # (x, y) / (x, y, sample_weight), or TFLite's own [x] convention.
            if not 1 <= len(element) <= 3:
                raise TypeError(self.tuple_error(element))
            x = element[0]
            if isinstance(x, Mapping):
                return self.from_dict(x)
            if isinstance(x, (tuple, list)) and self.is_input_list(x):
                return self.from_arrays(x)
            if _is_array(x):
                return self.from_arrays([x], single=True)
            raise TypeError(self.tuple_error(element))
        raise TypeError(
            f"to_tflite: representative_data must be {REPRESENTATIVE_DATA_FORMS}; "
            f"got an element of type {type(element).__name__}."
        )

    def is_input_list(self, values):
        return len(values) == len(self.inputs) and all(_is_array(v) for v in values)

    def tuple_error(self, value):
        if len(self.inputs) == 1:
            return (
                "to_tflite: a representative_data tuple must be (x,), (x, y) or "
                f"(x, y, sample_weight); got a tuple of {len(value)} items."
            )
        return (
            f"to_tflite: model '{self.model_name}' has {len(self.inputs)} inputs "
            f"({self.quoted()}); a representative_data tuple or list must hold one array per "
            "input in that order, or be (x, y) or (x, y, sample_weight) with x a dict by input "
            f"name or a list of one array per input; got {_describe(value)}."
        )

    def quoted(self):
        return ", ".join(f"'{n}'" for n in self.names)

    def from_dict(self, values):
        missing = [n for n in self.names if n not in values]
        unknown = [str(k) for k in values if k not in self.names]
        if missing or unknown:
            raise ValueError(
                f"to_tflite: representative_data as a dict needs one entry per input of "
                f"model '{self.model_name}', keyed by input name: {self.quoted()}; "
                f"{key_problems(missing, unknown)}."
            )
        return self.from_arrays([values[n] for n in self.names])

    def from_arrays(self, values, single=False):
        if len(values) != len(self.inputs):
            got = f"a single array of shape {np.shape(values[0])}" if single else _describe(values)
            raise ValueError(
                f"to_tflite: model '{self.model_name}' has {len(self.inputs)} inputs "
                f"({self.quoted()}); representative_data must give one array per input, as a "
                f"dict by input name or a list in that order; got {got}."
            )
        return [np.asarray(v) for v in values]

    def batches(self, arrays, element=False):
        """`arrays` as batches: single samples get a batch axis. Each is
        checked against its input; all must have the same number of samples."""
        batches = [self.batch(a, spec, element) for a, spec in zip(arrays, self.inputs)]
        sizes = {spec.name: len(b) for spec, b in zip(self.inputs, batches)}
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"to_tflite: representative_data gives a different number of samples per "
                f"input of model '{self.model_name}': {sizes}."
            )
        return batches

    def batch(self, array, spec, element):
        expected = spec.shape
        single = element and array.ndim == len(expected)
        batch = array[None] if single else array
        received = "yielded an element of" if element else "has"
        for_input = f" for input '{spec.name}'" if len(self.inputs) > 1 else ""
        wanted = f"(batch, {', '.join(map(str, expected))})"
        samples = f" or single samples {expected}" if element else ""
        if batch.ndim != len(expected) + 1 or any(
            e is not None and e != s for e, s in zip(expected, batch.shape[1:])
        ):
            raise ValueError(
                f"to_tflite: representative_data {received} shape {array.shape}{for_input}, but "
                f"model '{self.model_name}' expects {wanted}{samples} for its input '{spec.name}'."
            )
        if batch.dtype.kind not in "biuf":
            raise ValueError(
                f"to_tflite: representative_data {received} dtype {batch.dtype}{for_input}, but "
                f"model '{self.model_name}' expects numbers for its input '{spec.name}' "
                f"(shape {wanted}, dtype {spec.dtype})."
            )
        if np.dtype(spec.dtype).kind in "iu" and batch.dtype.kind == "f" and np.any(batch != np.round(batch)):
            raise ValueError(
                f"to_tflite: representative_data {received} fractional values{for_input}, but "
                f"input '{spec.name}' of model '{self.model_name}' is {spec.dtype} (such as token ids)."
            )
        return batch


def _is_array(data):
    # np.ndarray and the tensors numpy converts whole (tf, jax, torch), rather
    # than row by row as an iterable; a tf.data.Dataset has no __array__.
    return isinstance(data, np.ndarray) or hasattr(data, "__array__")


def _describe(value):
    kinds = ", ".join(
        f"array {np.shape(v)}" if _is_array(v) else type(v).__name__ for v in value
    )
    return f"a {type(value).__name__} of {len(value)} items ({kinds})"


def _elements(data):
    """An iterator over the items of a dataset, iterable or generator function."""
    if callable(data):
        data = data()
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes, Mapping)):
        raise TypeError(
            f"to_tflite: representative_data must be {REPRESENTATIVE_DATA_FORMS}; "
            f"got {type(data).__name__}."
        )
    return iter(data)
