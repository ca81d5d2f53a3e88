"""The base of the package's layer wrappers."""

import keras


class Wrapper(keras.layers.Wrapper):
    """`keras.layers.Wrapper` whose `from_config` leaves the config it is given
    as it was (Keras's pops its `"layer"` entry, so a config could not be
    compared or used twice)."""

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"), custom_objects=custom_objects)
        return cls(layer, **config)
