"""Dependency groups: which units of a model must be removed together.

One walk over the model's graph gives every channel position of every tensor
(its last axis) a *slot*. A layer with units of its own (Dense, Conv) creates
new slots; layers that keep channels apart (BatchNormalization, activations,
pooling, DepthwiseConv) pass them on; a Flatten repeats them once per spatial
position; Concatenate places them side by side; and an element-wise merge
(Add, Multiply, ...) ties slot i of each input into one unit. Tied slots form
the unit; layers whose units are tied form a dependency group (the DepGraph
idea of Fang et al., CVPR 2023). A unit that reaches a model output, a model
input or a layer without a rule cannot be removed, nor can any unit of its
group.

What each layer does to the channels is its row in the layer table
(`layers`). Criteria only score the units of a group; `plan` then says, for
every layer, which input channels and which units survive.
"""

import dataclasses
import math

import keras
import numpy as np
from keras import layers as L

from keras_compress import _models
from keras_compress.pruning.structured.layers import MIXING, layer_kind, supported_layers

# Activations that mix the channels they are applied to.
_CROSS_CHANNEL = ("softmax", "log_softmax")

# What a subclassed-model user can do instead, for check_graph_model's message.
LAYER_API = "keras_compress.pruning.structured.l1_norm (to rank units, then build narrower layers)"


@dataclasses.dataclass(frozen=True)
class DependencyGroup:
    """Units of a model that structured pruning removes together.

    Attributes:
        producers: names of the layers whose units these are (one Dense or
            Conv, or several tied by Add / Multiply / shared consumers).
        layers: names of every layer whose weights change when a unit of the
            group is removed: the producers, the channel-wise layers after
            them (BatchNormalization, DepthwiseConv) and their consumers.
        size: number of units.
        reason: why the group cannot be pruned, or `None`.
    """

    producers: tuple
    layers: tuple
    size: int
    reason: str = None

    @property
    def prunable(self):
        return self.reason is None


def dependency_groups(model):
    """The dependency groups of a Sequential or Functional model.

    Args:
        model: a built Sequential or Functional model (nested models too).

    Returns:
        A list of `DependencyGroup`, in graph order.

    Example:

    ```python
    for group in kc.pruning.dependency_groups(model):
        print(group.producers, group.size, group.reason or "prunable")
    ```
    """
    _models.check_graph_model(model, "dependency_groups", LAYER_API)
    analysis = Analysis(model)
    return [analysis.describe(g) for g in analysis.groups]


class _Slots:
    """Union-find over channel slots, with the reasons that block them."""

    def __init__(self):
        self.parent = []
        self.blocks = []  # (slot array, reason)

    def new(self, count):
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count)

    def find(self, slot):
        root = slot
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[slot] != root:
            self.parent[slot], slot = root, self.parent[slot]
        return root

    def tie(self, a, b):
        """Ties slot a[i] to slot b[i] for every position i."""
        for x, y in zip(a.tolist(), b.tolist()):
            x, y = self.find(x), self.find(y)
            if x != y:
                self.parent[max(x, y)] = min(x, y)

    def block(self, slots, reason):
        self.blocks.append((slots, reason))


@dataclasses.dataclass
class Group:
    """A dependency group as the analysis sees it: live layers and unit roots."""

    producers: list
    units: list  # root slot of each unit, in order
    reason: str = None

    def __post_init__(self):
        self.index = {root: i for i, root in enumerate(self.units)}

    @property
    def size(self):
        return len(self.units)


def _channels(tensor):
    shape = tensor.shape
    return shape[-1] if len(shape) >= 2 and shape[-1] is not None else None


def _name(layer):
    return f"'{layer.name}' ({type(layer).__name__})"


def kind_of(op, node):
    """`(row, None)`: `op`'s row of the layer table, or `(None, reason)`
    when `op` cannot be pruned through."""
    kind = layer_kind(op)
    if kind is None:
        if not isinstance(op, L.Layer):
            return None, f"op {_name(op)} has no structured-pruning rule"
        return None, (
            f"layer {_name(op)} has no structured-pruning rule (supported: "
            f"{supported_layers()}, and nested Sequential or Functional models)"
        )
    if not isinstance(op, L.Layer):
        return kind, None
    if getattr(op, "quantization_mode", None):
        return None, f"layer {_name(op)} is quantized; shrink before quantizing"
    if getattr(op, "lora_enabled", False):
        return None, f"layer {_name(op)} has LoRA enabled"
    if getattr(op, "data_format", "channels_last") != "channels_last":
        return None, f"layer {_name(op)} has data_format='{op.data_format}' (channels_last only)"
    if getattr(op, "groups", 1) != 1:
        return None, f"layer {_name(op)} has groups={op.groups} (grouped convolutions are not supported)"
    reason = kind.check(op, len(node.outputs[0].shape)) if kind.check else None
    if reason is not None:
        return None, f"layer {_name(op)} {reason}"
    if kind.role == "pass" and op.get_config().get("activation") in _CROSS_CHANNEL:
        return MIXING, None
    unknown = {w.name for w in op.weights} - set(kind.weights)
    if unknown:
        return None, f"layer {_name(op)} has weights {sorted(unknown)} without a slicing rule"
    return kind, None


class Analysis:
    """One walk over a model's graph: slots, units, groups and slicing."""

    def __init__(self, model):
        self.model = model
        self.slots = _Slots()
        self.units = {}  # id(layer) -> slots of its units
        self.inputs = {}  # id(layer) -> slots of its input channels (units, channelwise)
        self.layers = {}  # id(layer) -> layer, in graph order
        self.calls = {}  # id(layer) -> [(graph owner, node)]
        graph = _models.graph_of(model)
        maps = [
            self._fixed(t, f"it is a channel of the model input '{t._keras_history.operation.name}'")
            for t in graph.inputs
        ]
        for t, slots in zip(keras.tree.flatten(graph.outputs), self._walk(model, maps)):
            if slots is not None:
                layer = t._keras_history.operation
                self.slots.block(
                    slots, f"its units reach the model output (layer '{layer.name}'); "
                    "output units are never removed"
                )
        self._form_groups()

    # -- the walk ------------------------------------------------------------

    def _fixed(self, tensor, reason):
        """New slots that never belong to a removable unit."""
        count = _channels(tensor)
        if count is None:
            return None
        slots = self.slots.new(count)
        self.slots.block(slots, reason)
        return slots

    def _walk(self, model, maps):
        graph = _models.graph_of(model)
        known = {id(t): m for t, m in zip(graph.inputs, maps)}
        for node in _models.graph_nodes(model):
            ins = [known.get(id(t)) for t in node.input_tensors]
            for t, m in zip(node.outputs, self._call(model, node, ins)):
                known[id(t)] = m
        return [known.get(id(t)) for t in keras.tree.flatten(graph.outputs)]

    def _unknown(self, node, ins, reason):
        for slots in ins:
            if slots is not None:
                self.slots.block(slots, reason)
        return [self._fixed(t, reason) for t in node.outputs]

    def _bind(self, layer, slots, owner, node):
        """Records the input channels of a sliced layer; a shared layer ties
        the channels of all its calls."""
        lid = id(layer)
        if lid in self.inputs:
            self.slots.tie(self.inputs[lid], slots)
        else:
            self.inputs[lid] = slots
        self.layers.setdefault(lid, layer)
        self.calls.setdefault(lid, []).append((owner, node))

    def _call(self, owner, node, ins):
        op = node.operation
        if isinstance(op, keras.Model):
            if isinstance(op, (keras.Sequential, _models.Functional)):
                return self._walk(op, ins)
            return self._unknown(node, ins, f"model {_name(op)} is subclassed")
        kind, reason = kind_of(op, node)
        if reason is None and any(m is None for m in ins):
            reason = f"layer {_name(op)} reads a tensor of unknown channel count"
        if reason is not None:
            return self._unknown(node, ins, reason)
        x = ins[0] if ins else None
        out = node.outputs[0]
        role = kind.role
        if role == "units":
            self._bind(op, x, owner, node)
            if id(op) not in self.units:
                self.units[id(op)] = self.slots.new(out.shape[-1])
                activation = op.get_config().get("activation")
                if activation in _CROSS_CHANNEL:
                    self.slots.block(
                        self.units[id(op)], f"layer {_name(op)} applies {activation} across its units"
                    )
            return [self.units[id(op)]]
        if role == "channelwise":
            self._bind(op, x, owner, node)
            count = kind.channels_out(op)
            return [x if count == 1 else np.repeat(x, count)]
        if role == "pass":
            return [x]
        if role == "mixing":
            self.slots.block(x, f"layer {_name(op)} mixes the channels it normalizes")
            return [x]
        if role == "flatten":
            spatial = node.input_tensors[0].shape[1:-1]
            if any(d is None for d in spatial):
                return self._unknown(node, ins, f"layer {_name(op)} flattens an input of unknown shape")
            return [np.tile(x, math.prod(spatial))]
        if role == "reshape":
            if _channels(out) != len(x):
                return self._unknown(node, ins, f"layer {_name(op)} reshapes the channel axis")
            return [x]
        if role == "concat":
            axis = op.axis % len(out.shape)
            if axis == len(out.shape) - 1:
                return [np.concatenate(ins)]
        # An element-wise merge (or a concatenation along another axis): each
        # full-width input's channel i is one unit; width-1 inputs broadcast.
        full = [m for m in ins if len(m) == _channels(out)]
        if not full:
            return self._unknown(node, ins, f"{_name(op)} broadcasts its inputs to more channels")
        for m in full[1:]:
            self.slots.tie(full[0], m)
        return [full[0]]

    # -- groups --------------------------------------------------------------

    def root(self, slots):
        return np.array([self.slots.find(int(s)) for s in slots], dtype=np.int64)

    def _form_groups(self):
        reasons = {}
        for slots, reason in self.slots.blocks:
            for r in {self.slots.find(int(s)) for s in slots}:
                reasons.setdefault(r, []).append(reason)
        self.unit_roots = {lid: self.root(s) for lid, s in self.units.items()}
        self.input_roots = {lid: self.root(s) for lid, s in self.inputs.items()}
        # Producers sharing a unit are one group (union-find over producers).
        leader, owner = {}, {}

        def find(lid):
            while leader[lid] != lid:
                lid = leader[lid]
            return lid

        for lid in self.units:
            leader[lid] = lid
            for r in set(self.unit_roots[lid].tolist()):
                if r in owner:
                    a, b = find(lid), find(owner[r])
                    leader[a] = b
                else:
                    owner[r] = lid
        members = {}
        for lid in self.units:  # dicts keep graph order
            members.setdefault(find(lid), []).append(lid)
        self.groups, self.group_of = [], {}
        for lids in members.values():
            units = list(dict.fromkeys(r for lid in lids for r in self.unit_roots[lid].tolist()))
            why = list(dict.fromkeys(x for r in units for x in reasons.get(r, ())))
            group = Group([self.layers[lid] for lid in lids], units, "; ".join(why) or None)
            self.groups.append(group)
            for lid in lids:
                self.group_of[lid] = group

    def describe(self, group):
        """The public `DependencyGroup` of an analysis group."""
        units = set(group.units)
        touched = [
            layer.name for lid, layer in self.layers.items()
            if units & set(self.input_roots[lid].tolist())
            or units & set(self.unit_roots.get(lid, np.zeros(0)).tolist())
        ]
        return DependencyGroup(
            producers=tuple(l.name for l in group.producers),
            layers=tuple(touched),
            size=group.size,
            reason=group.reason,
        )

    def positions(self, layer, group, inputs=False):
        """`(positions, unit indices)`: where the units of `group` sit along
        `layer`'s units (or input channels), and which unit each one is."""
        roots = (self.input_roots if inputs else self.unit_roots)[id(layer)]
        index = [group.index.get(r, -1) for r in roots.tolist()]
        positions = np.array([i for i, u in enumerate(index) if u >= 0], dtype=np.int64)
        return positions, np.array([u for u in index if u >= 0], dtype=np.int64)

    # -- slicing -------------------------------------------------------------

    def plan(self, removed):
        """`{id(layer): (layer, kept inputs, kept units)}` for every layer that
        changes when the units with root slots in `removed` are removed; a
        `None` entry keeps that axis whole."""

        def kept(roots):
            if roots is None:
                return None
            keep = np.array([r not in removed for r in roots.tolist()])
            return None if keep.all() else np.flatnonzero(keep)

        changes = {}
        for lid, layer in self.layers.items():
            keep_in = kept(self.input_roots.get(lid))
            keep_out = kept(self.unit_roots.get(lid))
            if keep_in is not None or keep_out is not None:
                changes[lid] = (layer, keep_in, keep_out)
        return changes
