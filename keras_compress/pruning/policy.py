"""Pruning policies: which layers of a model `prune_low_magnitude` wraps.

`PruningPolicy` is tfmot's interface (same two methods), so a policy written
for `tfmot.sparsity.keras` ports by changing its base class.
`PruneForLatencyOnXNNPack` is tfmot's policy of the same name, written
against Keras 3's layer classes and graph.
"""

import abc

import keras
from keras import layers as L

from keras_compress import _models
from keras_compress.pruning.wrapper import PruneWrapper, describe


class PruningPolicy(abc.ABC):
    """Decides which layers of a model are pruned, and which models qualify.

    Pass one to `prune_low_magnitude(model, pruning_policy=...)`: it first
    calls `ensure_model_supports_pruning(model)` (which raises for a model
    the policy does not fit), then wraps only the prunable layers for which
    `allow_pruning(layer)` is true (and, if given, selected by `layers=`).

    Example:

    ```python
    class PruneDenseOnly(kc.pruning.PruningPolicy):
        def allow_pruning(self, layer):
            return isinstance(layer, keras.layers.Dense)

        def ensure_model_supports_pruning(self, model):
            pass  # every model qualifies

    pruned = kc.pruning.prune_low_magnitude(model, pruning_policy=PruneDenseOnly())
    ```
    """

    @abc.abstractmethod
    def allow_pruning(self, layer):
        """Whether `layer` (a layer of the model, unwrapped) is pruned."""
        raise NotImplementedError

    @abc.abstractmethod
    def ensure_model_supports_pruning(self, model):
        """Raises a `ValueError` naming the offending layer if the policy
        does not fit the Sequential or Functional `model`."""
        raise NotImplementedError


# XNNPACK's sparse inference runs a CNN in NCHW layout from an entry
# convolution to a global average pooling, and only if every op in between
# has an NCHW kernel. These are tfmot's copies of XNNPACK's rules
# (`xnn_check_nchw_compatibility` in XNNPACK's subgraph.c), on Keras 3 classes.
_ALWAYS_SUPPORTED = (L.Add, L.Multiply, L.ZeroPadding2D, L.ReLU, L.LeakyReLU, L.ELU, L.Dropout, L.Identity)
# Keras 3 records `a + b` on symbolic tensors as these ops (tf_keras's TFOpLambda).
_SUPPORTED_OPS = ("Add", "Subtract", "Multiply")
_SUPPORTED_ACTIVATIONS = ("relu", "relu6", "leaky_relu", "elu", "sigmoid")
_ENTRY = ("Conv2D with a 3x3 kernel, 3 input channels, strides=2 and padding='valid', "
          "right after a ZeroPadding2D(padding=1)")


class PruneForLatencyOnXNNPack(PruningPolicy):
    """Prunes only the layers XNNPACK's sparse inference speeds up: 1x1 Conv2D.

    LiteRT's XNNPACK delegate runs sparse 1x1 convolutions with sparse
    kernels (Elsen et al., "Fast Sparse ConvNets", 2019) inside a subgraph of
    a CNN that it can run in NCHW layout. This policy (tfmot's, same rules)
    checks that the model has such a subgraph and wraps only the Conv2D
    layers with a 1x1 kernel. The model must have:

    - on every input branch, an entry: a Conv2D with a 3x3 kernel, 3 input
      channels (an RGB image), `strides=2` and `padding="valid"`, right
      after a `ZeroPadding2D(padding=1)`;
    - on every output branch, a `GlobalAveragePooling2D` that ends it;
    - in between, only layers XNNPACK runs in NCHW: 1x1 stride-1 Conv2D
      (no dilation, `groups=1`); DepthwiseConv2D 3x3 or 5x5 with
      `depth_multiplier=1` and no dilation, either `padding="same"` and
      stride 1, or `padding="valid"` (stride 1 or 2) after a ZeroPadding2D
      of 1 (3x3) or 2 (5x5) on each side; BatchNormalization on the
      channels axis; `GlobalAveragePooling2D(keepdims=True)`; bilinear
      UpSampling2D; Add, Multiply, `+`, `-`, `*`; ReLU, LeakyReLU, ELU,
      Dropout, Identity; Activation relu, relu6, leaky_relu, elu, sigmoid.

    Only the 1x1 Conv2D layers inside that subgraph are wrapped. tfmot wraps
    every 1x1 Conv2D of the model, including one after the
    GlobalAveragePooling2D (a classifier head such as
    keras.applications.MobileNet's `conv_preds`), which XNNPACK's sparse
    path does not run: pruning it would lose accuracy for no speed, so it is
    left dense here. Keras's
    own MobileNet models use `padding="same"` in their strided convolutions,
    which XNNPACK's sparse path does not take, so this policy refuses them,
    as tfmot refuses tf_keras's.

    Example:

    ```python
    pruned = kc.pruning.prune_low_magnitude(
        model, kc.pruning.PolynomialDecay(0.0, 0.8, 0, 1000),
        pruning_policy=kc.pruning.PruneForLatencyOnXNNPack())
    ```
    """

    def __init__(self):
        # ids of the layers of the sparse subgraph found by the last
        # ensure_model_supports_pruning (None before any).
        self._subgraph = None

    def allow_pruning(self, layer):
        """A 1x1 Conv2D in the sparse subgraph of the model last checked by
        `ensure_model_supports_pruning` (any 1x1 Conv2D before a check)."""
        if not (isinstance(layer, L.Conv2D) and tuple(layer.kernel_size) == (1, 1)):
            return False
        return self._subgraph is None or id(layer) in self._subgraph

    def ensure_model_supports_pruning(self, model):
        name = type(self).__name__
        self._subgraph = None
        _models.check_graph_model(model, name, "another pruning_policy")
        graph = _Graph(model)
        entries = graph.search(graph.input_consumers(), graph.is_entry, graph.consumers)
        if entries is None:
            convs = [n for n in graph.nodes if isinstance(_layer(n), L.Conv2D)]
            found = (f"its first Conv2D, {describe(_layer(convs[0]))}, {graph.entry_mismatch(convs[0])}"
                     if convs else "it has no Conv2D")
            raise ValueError(f"{name}: model '{model.name}' has no XNNPACK sparse-inference entry on every input "
                             f"branch. It must start with a {_ENTRY}; {found}.")
        ends = graph.search(graph.output_producers(), _is_end, graph.producers)
        if ends is None:
            raise ValueError(f"{name}: model '{model.name}' needs a GlobalAveragePooling2D on every output branch, "
                             "where XNNPACK's sparse-inference subgraph ends.")

        inside = {id(_layer(n)) for n in entries.values()}

        def stop(node):
            inside.add(id(_layer(node)))
            reason = None if id(node) in ends else graph.unsupported(node)
            if reason:
                raise ValueError(f"{name}: model '{model.name}' cannot use XNNPACK's sparse inference: its layer "
                                 f"{_describe_node(node)} lies between the entry and the GlobalAveragePooling2D "
                                 f"and {reason}.")
            return id(node) in ends

        graph.search([c for n in entries.values() for c in graph.consumers(n)], stop, graph.consumers)
        self._subgraph = inside


def _layer(node):
    """The layer (or op) a graph node calls, seen through a pruning wrapper."""
    op = node.operation
    return op.layer if isinstance(op, PruneWrapper) else op


def _describe_node(node):
    op = _layer(node)
    return describe(op) if isinstance(op, keras.layers.Layer) else f"'{op.name}' (keras op {type(op).__name__})"


def _is_end(node):
    return isinstance(_layer(node), L.GlobalAveragePooling2D)


class _Graph:
    """The call nodes of a Sequential or Functional model with their
    producers and consumers. `None` stands for the model's inputs (as a
    producer) and outputs (as a consumer)."""

    def __init__(self, model):
        self.graph = _models.graph_of(model)
        self.nodes = list(_models.graph_nodes(model))
        self._producer = {id(t): n for n in self.nodes for t in n.outputs}
        self._consumers = _models.consumers_of(model)

    def producers(self, node):
        return [self._producer.get(id(t)) for t in node.input_tensors]

    def consumers(self, node):
        return [c for t in node.outputs for c in self._consumers.get(id(t), [])]

    def input_consumers(self):
        return [c for t in self.graph.inputs for c in self._consumers.get(id(t), [])]

    def output_producers(self):
        return [self._producer.get(id(t)) for t in keras.tree.flatten(self.graph.outputs)]

    @staticmethod
    def search(start, stop, step):
        """`{id: node}` of the nodes where `stop(node)` holds, reached from
        `start` through `step` without passing them; `None` if some path
        reaches the model's inputs or outputs first (tfmot's `_lookup_layers`)."""
        todo, seen, found = list(start), set(), {}
        while todo:
            node = todo.pop()
            if node is None:
                return None
            if id(node) in seen:
                continue
            seen.add(id(node))
            if stop(node):
                found[id(node)] = node
                continue
            following = step(node)
            if not following:
                return None
            todo.extend(following)
        return found

    def _zero_padding(self, node):
        """The padding of the ZeroPadding2D that alone feeds `node`, or None."""
        producers = self.producers(node)
        if len(producers) == 1 and producers[0] is not None and isinstance(_layer(producers[0]), L.ZeroPadding2D):
            return tuple(map(tuple, _layer(producers[0]).padding))
        return None

    def entry_mismatch(self, node):
        """Why a Conv2D `node` is not the sparse-inference entry, or None."""
        layer = _layer(node)
        kernel = tuple(layer.kernel.shape[:3]) if layer.built else None
        problems = []
        if kernel != (3, 3, 3):
            problems.append(f"its kernel is {kernel[0]}x{kernel[1]} over {kernel[2]} input channels" if kernel
                            else "it is not built")
        if tuple(layer.strides) != (2, 2):
            problems.append(f"strides={tuple(layer.strides)}")
        if layer.padding != "valid":
            problems.append(f"padding='{layer.padding}'")
        if self._zero_padding(node) != ((1, 1), (1, 1)):
            problems.append("it does not follow a ZeroPadding2D(padding=1)")
        return ("has " + ", ".join(problems)) if problems else None

    def is_entry(self, node):
        return isinstance(_layer(node), L.Conv2D) and self.entry_mismatch(node) is None

    def unsupported(self, node):
        """Why XNNPACK cannot run `node` in its sparse (NCHW) subgraph, or None."""
        layer = _layer(node)
        if isinstance(layer, _ALWAYS_SUPPORTED):
            return None
        if not isinstance(layer, keras.layers.Layer):
            if type(layer).__name__ in _SUPPORTED_OPS:
                return None
            return f"XNNPACK has no sparse-inference kernel for keras op {type(layer).__name__}"
        if isinstance(layer, L.DepthwiseConv2D):
            size, strides, pad = tuple(layer.kernel_size), tuple(layer.strides), self._zero_padding(node)
            side = {(3, 3): 1, (5, 5): 2}.get(size)
            fits = side is not None and (
                (layer.padding == "same" and strides == (1, 1))
                or (layer.padding == "valid" and strides in ((1, 1), (2, 2)) and pad == ((side, side), (side, side)))
            )
            if fits and layer.depth_multiplier == 1 and tuple(layer.dilation_rate) == (1, 1):
                return None
            return ("is not a 3x3 or 5x5 DepthwiseConv2D with depth_multiplier=1, no dilation, and either "
                    "padding='same' at stride 1 or padding='valid' (stride 1 or 2) after a ZeroPadding2D of "
                    "1 (3x3) or 2 (5x5) on each side")
        if isinstance(layer, L.Conv2D):
            if (tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (1, 1)
                    and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1):
                return None
            return "is not a 1x1 Conv2D with strides 1, no dilation and groups=1 (the only Conv2D it runs sparse)"
        if isinstance(layer, L.GlobalAveragePooling2D):
            return None if layer.keepdims else "needs keepdims=True there"
        if isinstance(layer, L.BatchNormalization):
            return None if layer.axis in (3, -1) else f"normalizes axis {layer.axis}, not the channels axis"
        if isinstance(layer, L.UpSampling2D):
            return None if layer.interpolation == "bilinear" else "is not bilinear"
        if isinstance(layer, L.Activation):
            activation = keras.activations.serialize(layer.activation)
            if activation in _SUPPORTED_ACTIVATIONS:
                return None
            return f"its activation {activation!r} is not one of {', '.join(_SUPPORTED_ACTIVATIONS)}"
        return "XNNPACK has no sparse-inference kernel for it"
