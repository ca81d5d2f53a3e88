"""The base of the package's layer wrappers (pruning and quantization alike).

`Wrapper` holds what every wrapper of a technique needs and nothing of any
technique: the check of the wrapped layer, the default name, mask support,
building a layer that takes several call arguments, running the wrapped layer
on substitute values of its variables (a `keras.StatelessScope` whose losses
reach the wrapper), the forwarding of shapes, specs and masks, the wrapper's
own non-trainable state, and the config of nested Keras objects.
"""

import keras

from keras_compress._backend import check_backend


class Wrapper(keras.layers.Wrapper):
    """`keras.layers.Wrapper` with the package's common wrapper behaviour.

    Subclasses set:
        `name_prefix`: the default name is `name_prefix + layer.name`.
        `nested_config`: the constructor arguments (attribute names) that
            hold Keras objects (a BatchNormalization, a schedule) or `None`;
            `get_config` serializes them and `from_config` deserializes them.

    `from_config` leaves the config it is given as it was (Keras's pops its
    `"layer"` entry, so a config could not be compared or used twice).
    """

    name_prefix = ""
    nested_config = ()

    @classmethod
    def expect_layer(cls, layer, why_not=None):
        """Raises a TypeError unless `layer` is a Keras layer, then a
        ValueError if `why_not(layer)` gives a reason. Subclasses call it
        first, before their own checks read the layer."""
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                f"{cls.__name__} expects a keras layer, got {type(layer).__name__}: {layer!r}."
            )
        reason = None if why_not is None else why_not(layer)
        if reason:
            raise ValueError(f"{cls.__name__} cannot wrap layer '{layer.name}': {reason}.")

    def __init__(self, layer, **kwargs):
        check_backend(type(self).__name__)
        self.expect_layer(layer)
        if self.name_prefix:
            kwargs.setdefault("name", f"{self.name_prefix}{layer.name}")
        super().__init__(layer, **kwargs)
        self.supports_masking = layer.supports_masking
        # tfmot's form `Sequential([prune_low_magnitude(Dense(20, input_shape=(784,))), ...])`:
        # the input shape given to the wrapped layer is the Sequential's input.
        if getattr(layer, "_input_shape_arg", None) is not None:
            self._input_shape_arg = layer._input_shape_arg

    def __call__(self, *args, **kwargs):
        if not self.layer.built:
            # Layers with several call arguments (MultiHeadAttention's query
            # and value) cannot be built from the first input's shape, which
            # is all Keras passes to a wrapper's build(): build the inner
            # layer from every argument first, by calling it symbolically.
            self.layer(*_symbolic(args), **_symbolic(kwargs))
        return super().__call__(*args, **kwargs)

    def call_layer(self, mapping, *args, **kwargs):
        """Calls the wrapped layer with `mapping`'s values in place of its
        variables (`[(variable, value), ...]`, every variable it reads) and
        returns `(outputs, scope)`. The losses the layer adds become the
        wrapper's; the scope records the assignments the layer made."""
        with keras.StatelessScope(mapping, collect_losses=True) as scope:
            outputs = self.layer(*args, **kwargs)
        for loss in scope.losses:
            self.add_loss(loss)
        return outputs, scope

    def keep_state(self, mapping, scope):
        """Writes back the state the wrapped layer updated inside
        `call_layer(mapping, ...)` (moving statistics, RNN states): a
        stateless scope records assignments instead of making them."""
        given = {id(v): value for v, value in mapping}
        for variable in self.layer.non_trainable_variables:
            value = scope.get_current_value(variable)
            if value is not None and value is not given.get(id(variable)):
                variable.assign(value)

    def add_state(self, name, shape=(), dtype="float32", initializer="zeros", aggregation="mean"):
        """A non-trainable float32 (or `dtype`) variable of the wrapper that
        mixed precision leaves alone."""
        fixed = {"trainable": False, "autocast": False, "aggregation": aggregation}
        return self.add_weight(name=name, shape=shape, dtype=dtype, initializer=initializer, **fixed)

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def get_config(self):
        config = super().get_config()
        for key in self.nested_config:
            value = getattr(self, key)
            config[key] = None if value is None else keras.saving.serialize_keras_object(value)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"), custom_objects=custom_objects)
        for key in cls.nested_config:
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        return cls(layer, **config)


def _symbolic(structure):
    """`structure` with every tensor or array replaced by a KerasTensor of
    its shape and dtype (other values, such as flags, kept)."""

    def spec(x):
        if isinstance(x, keras.KerasTensor):
            return x
        if keras.ops.is_tensor(x) or hasattr(x, "__array__"):
            return keras.KerasTensor(tuple(x.shape), keras.backend.standardize_dtype(x.dtype))
        return x

    return keras.tree.map_structure(spec, structure)
