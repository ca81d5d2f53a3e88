"""One data adapter: the forms users pass as data, read into batches of model inputs.

Used by `to_tflite(representative_data=)` (calibration) and
`Distiller.cache_teacher`; any API that takes data for a model's inputs
should call `read_inputs` (everything at once, checked up front) or
`iter_batches` (batch by batch) rather than parse it itself, so that every
API accepts the same forms and words its errors the same way:

    from keras_compress import _data

    inputs = _data.input_specs(model)
    arrays, labels = _data.read_inputs(
        data, inputs, api="shrink", argument="data", model_name=model.name,
        max_samples=512, labels=True,
    )
    # arrays: one numpy array per model input, same number of samples each.

Accepted forms (`INPUT_FORMS`): a numpy array (or anything with `__array__`,
such as a tensor) of samples, batch first; for several inputs a dict of
arrays by input name or a list with one array per input, in the model's
order; an `(x, y)` or `(x, y, sample_weight)` tuple of those; a
`tf.data.Dataset`; or an iterable, generator or callable returning an
iterator, yielding samples or batches in any of these forms. Every array is
checked against its input (rank, static dimensions, numbers, no fractional
values for an integer input) before anything is computed.

This module imports only numpy and the standard library.
"""

import collections
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["INPUT_FORMS", "InputSpec", "input_specs", "iter_batches", "read_inputs"]

INPUT_FORMS = (
    "a numpy array of samples (batch first); for several inputs a dict of arrays by "
    "input name or a list with one array per input, in the model's order; an (x, y) or "
    "(x, y, sample_weight) tuple of those; a tf.data.Dataset; or an iterable, generator "
    "or callable returning an iterator, yielding samples or batches in any of these forms"
)

InputSpec = collections.namedtuple("InputSpec", ["name", "shape", "dtype"])
InputSpec.__doc__ = """One model input: its name, its shape without the batch
axis (None for a dynamic dimension) and its dtype. `export.signature.ModelInput`
has the same fields and is accepted wherever an `InputSpec` is."""


def input_specs(model):
    """The `InputSpec`s of a built Keras model's inputs, in the model's order.

    Raises:
        ValueError: the model has no known inputs (not built on a `keras.Input`).
    """
    tensors = getattr(model, "inputs", None)
    if not tensors:
        raise ValueError(
            f"model '{getattr(model, 'name', model)}' has no known inputs; build it on a keras.Input."
        )
    return [
        InputSpec(_tensor_name(t, i), tuple(t.shape[1:]), _dtype_name(t.dtype)) for i, t in enumerate(tensors)
    ]


def read_inputs(data, inputs, *, api, argument, model_name="model", max_samples=None, labels=False):
    """All of `data` (or its first `max_samples` samples), checked, as one
    array per input, each cast to its input's dtype.

    Read up front, so that bad data fails before slow work starts and a
    one-shot generator can be used.

    Args:
        data: the user's data, in one of the `INPUT_FORMS`.
        inputs: the model's inputs, a list of `InputSpec` (or `ModelInput`).
        api: the public function, for messages (`"to_tflite"`).
        argument: the argument's name, for messages (`"representative_data"`).
        model_name: the model's name, for messages.
        max_samples: read at most this many samples; `None`: all (the data
            must then be finite).
        labels: also return the labels (`y` of `(x, y)` tuples) or `None`
            where `data` has none.

    Returns:
        A list of arrays with the same number of samples, one per input; with
        `labels=True`, `(arrays, y)`.

    Raises:
        ValueError: `data` is empty or does not fit an input, or has labels
            for some batches only.
        TypeError: `data` has none of the accepted forms.
    """
    chunks, ys = [], []
    for batch, y in iter_batches(
        data, inputs, api=api, argument=argument, model_name=model_name, max_samples=max_samples, labels=True
    ):
        chunks.append(batch)
        ys.append(y)
    if not chunks or not sum(len(c[0]) for c in chunks):
        raise ValueError(f"{api}: {argument} is empty.")
    arrays = [np.concatenate([c[i] for c in chunks]).astype(spec.dtype) for i, spec in enumerate(inputs)]
    if not labels:
        return arrays
    if all(y is None for y in ys):
        return arrays, None
    if any(y is None for y in ys):
        raise ValueError(f"{api}: {argument} gives labels for some batches and not for others.")
    return arrays, np.concatenate([np.asarray(y)[: len(c[0])] for y, c in zip(ys, chunks)])


def iter_batches(data, inputs, *, api, argument, model_name="model", max_samples=None, labels=False):
    """Yields `data` batch by batch, each a checked list of arrays, one per input.

    Data held at once (an array, a dict or list of arrays, an `(x, y)` tuple)
    is one batch; a dataset, iterable or generator gives one batch per
    element (single samples get a batch axis). Arguments as in `read_inputs`;
    with `labels=True` each item is `(arrays, y or None)`.
    """
    reader = _Reader(api, argument, model_name, inputs)
    count = 0
    top = reader.top_level(data)
    elements = [top] if top is not None else None
    if elements is None:
        elements = (reader.element(e) for e in _elements(api, argument, data))
        is_element = True
    else:
        is_element = False
    for arrays, y in elements:
        batch = reader.batches(arrays, element=is_element)
        if max_samples is not None:
            batch = [a[: max_samples - count] for a in batch]
        count += len(batch[0])
        yield (batch, y) if labels else batch
        if max_samples is not None and count >= max_samples:
            return


class _Reader:
    """Turns the accepted forms into one array per input (and the labels)."""

    def __init__(self, api, argument, model_name, inputs):
        self.api, self.argument = api, argument
        self.model_name = model_name
        self.inputs = list(inputs)
        self.names = [i.name for i in self.inputs]

    def top_level(self, data):
        """`(arrays, y)` when `data` holds everything at once, else `None`
        (an iterable to read element by element)."""
        if isinstance(data, Mapping):
            return self.from_dict(data), None
        if _is_array(data):
            return self.from_arrays([data], single=True), None
        if isinstance(data, tuple):
            return self.element(data)
        if isinstance(data, list) and len(self.inputs) > 1 and self.is_input_list(data):
            return self.from_arrays(data), None
        return None

    def element(self, element):
        """One yielded element, or the whole data, as `(arrays, y)`."""
        if isinstance(element, Mapping):
            return self.from_dict(element), None
        if _is_array(element):
            return self.from_arrays([element], single=True), None
        if isinstance(element, (tuple, list)):
            if len(self.inputs) > 1 and self.is_input_list(element):
                return self.from_arrays(element), None
            # (x, y) / (x, y, sample_weight), or TFLite's own [x] convention.
            if not 1 <= len(element) <= 3:
                raise TypeError(self.tuple_error(element))
            x = element[0]
            y = element[1] if len(element) > 1 else None
            if isinstance(x, Mapping):
                return self.from_dict(x), y
            if isinstance(x, (tuple, list)) and self.is_input_list(x):
                return self.from_arrays(x), y
            if _is_array(x):
                return self.from_arrays([x], single=True), y
            raise TypeError(self.tuple_error(element))
        raise TypeError(
            f"{self.api}: {self.argument} must be {INPUT_FORMS}; "
            f"got an element of type {type(element).__name__}."
        )

    def is_input_list(self, values):
        return len(values) == len(self.inputs) and all(_is_array(v) for v in values)

    def tuple_error(self, value):
        if len(self.inputs) == 1:
            return (
                f"{self.api}: a {self.argument} tuple must be (x,), (x, y) or "
                f"(x, y, sample_weight); got a tuple of {len(value)} items."
            )
        return (
            f"{self.api}: model '{self.model_name}' has {len(self.inputs)} inputs "
            f"({self.quoted()}); a {self.argument} tuple or list must hold one array per "
            "input in that order, or be (x, y) or (x, y, sample_weight) with x a dict by input "
            f"name or a list of one array per input; got {_describe(value)}."
        )

    def quoted(self):
        return ", ".join(f"'{n}'" for n in self.names)

    def from_dict(self, values):
        missing = [n for n in self.names if n not in values]
        unknown = [str(k) for k in values if k not in self.names]
        if missing or unknown:
            problems = "; ".join(
                ([f"missing {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])
            )
            raise ValueError(
                f"{self.api}: {self.argument} as a dict needs one entry per input of "
                f"model '{self.model_name}', keyed by input name: {self.quoted()}; {problems}."
            )
        return self.from_arrays([values[n] for n in self.names])

    def from_arrays(self, values, single=False):
        if len(values) != len(self.inputs):
            got = f"a single array of shape {np.shape(values[0])}" if single else _describe(values)
            raise ValueError(
                f"{self.api}: model '{self.model_name}' has {len(self.inputs)} inputs "
                f"({self.quoted()}); {self.argument} must give one array per input, as a "
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
                f"{self.api}: {self.argument} gives a different number of samples per "
                f"input of model '{self.model_name}': {sizes}."
            )
        return batches

    def batch(self, array, spec, element):
        expected = tuple(spec.shape)
        single = element and array.ndim == len(expected)
        batch = array[None] if single else array
        received = "yielded an element of" if element else "has"
        for_input = f" for input '{spec.name}'" if len(self.inputs) > 1 else ""
        wanted = f"(batch, {', '.join(map(str, expected))})"
        samples = f" or single samples {expected}" if element else ""
        start = f"{self.api}: {self.argument} {received}"
        if batch.ndim != len(expected) + 1 or any(
            e is not None and e != s for e, s in zip(expected, batch.shape[1:])
        ):
            raise ValueError(
                f"{start} shape {array.shape}{for_input}, but "
                f"model '{self.model_name}' expects {wanted}{samples} for its input '{spec.name}'."
            )
        if batch.dtype.kind not in "biuf":
            raise ValueError(
                f"{start} dtype {batch.dtype}{for_input}, but "
                f"model '{self.model_name}' expects numbers for its input '{spec.name}' "
                f"(shape {wanted}, dtype {spec.dtype})."
            )
        if np.dtype(spec.dtype).kind in "iu" and batch.dtype.kind == "f" and np.any(batch != np.round(batch)):
            raise ValueError(
                f"{start} fractional values{for_input}, but "
                f"input '{spec.name}' of model '{self.model_name}' is {spec.dtype} (such as token ids)."
            )
        return batch


def _is_array(data):
    # np.ndarray and the tensors numpy converts whole (tf, jax, torch), rather
    # than row by row as an iterable; a tf.data.Dataset has no __array__.
    return isinstance(data, np.ndarray) or hasattr(data, "__array__")


def _describe(value):
    kinds = ", ".join(f"array {np.shape(v)}" if _is_array(v) else type(v).__name__ for v in value)
    return f"a {type(value).__name__} of {len(value)} items ({kinds})"


def _elements(api, argument, data):
    """An iterator over the items of a dataset, iterable or generator function."""
    if callable(data):
        data = data()
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes, Mapping)):
        raise TypeError(f"{api}: {argument} must be {INPUT_FORMS}; got {type(data).__name__}.")
    return iter(data)


def _tensor_name(tensor, index):
    name = getattr(tensor, "name", None) or f"input_{index}"
    return name.split(":")[0]


def _dtype_name(dtype):
    return getattr(dtype, "name", None) or str(dtype)
