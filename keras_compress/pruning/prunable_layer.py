"""`PrunableLayer`: how a custom layer says which of its weights to prune."""

import abc


class PrunableLayer(abc.ABC):
    """Base class for a custom layer that names the weights pruning masks.

    Mix it into a custom `keras.layers.Layer` and implement
    `get_prunable_weights()`; `prune_low_magnitude` and `PruneWrapper` then
    prune exactly the variables it returns (tfmot's
    `tfmot.sparsity.keras.PrunableLayer`, same method). A layer that returns
    `[]` is left unpruned by `prune_low_magnitude` on a model. Subclassing is
    optional: any layer with a `get_prunable_weights()` method is treated the
    same way; the base class makes the promise explicit and is checked by
    `isinstance`.

    Example:

    ```python
    @keras.saving.register_keras_serializable()
    class Scale(keras.layers.Layer, kc.pruning.PrunableLayer):
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], 8))
            self.offset = self.add_weight(shape=(8,), initializer="zeros")

        def call(self, x):
            return x @ self.kernel + self.offset

        def get_prunable_weights(self):
            return [self.kernel]  # the offset stays dense

    model = keras.Sequential([keras.Input((16,)), Scale()])
    pruned = kc.pruning.prune_low_magnitude(model)
    ```
    """

    @abc.abstractmethod
    def get_prunable_weights(self):
        """The variables of the built layer to prune (a list, possibly empty)."""
        raise NotImplementedError
