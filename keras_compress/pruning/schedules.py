"""Pruning schedules: when to prune, and to which sparsity.

The semantics are tfmot's (`begin_step`, `end_step`, `frequency`, `power`), so a
schedule written for `tfmot.sparsity.keras` prunes at the same steps to the same
sparsity here. A schedule is plain Python: it is evaluated by the
`UpdatePruningStep` callback between batches, never inside the training graph.
"""


import keras

from tflite_bench.checks import check_fraction, check_int, check_number


class PruningSchedule:
    """Base class: maps a training step to `(should_prune, target_sparsity)`.

    A subclass implements `sparsity(step)` and `get_config()`. Pruning happens
    at `begin_step`, then every `frequency` steps, up to and including
    `end_step` (`end_step=-1` means forever).
    """

    final_sparsity = 0.0

    def __init__(self, begin_step=0, end_step=-1, frequency=100):
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency

    def should_prune(self, step):
        """True when masks are recomputed before training step `step`."""
        in_range = step >= self.begin_step and (
            self.end_step == -1 or step <= self.end_step
        )
        return in_range and (step - self.begin_step) % self.frequency == 0

    def sparsity(self, step):
        """Target sparsity at `step` (a float in [0, 1))."""
        raise NotImplementedError

    def __call__(self, step):
        return self.should_prune(step), self.sparsity(step)

    def pruning_steps(self, first_step, last_step):
        """The steps in `[first_step, last_step]` at which masks are updated."""
        start = max(first_step, self.begin_step)
        offset = (start - self.begin_step) % self.frequency
        if offset:
            start += self.frequency - offset
        stop = last_step if self.end_step == -1 else min(last_step, self.end_step)
        return range(start, stop + 1, self.frequency)

    def get_config(self):
        return {
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _check_sparsity(where, name, value):
    check_fraction(where, name, value)


def _check_steps(where, begin_step, end_step, frequency, allow_forever):
    check_int(where, "begin_step", begin_step, minimum=0)
    check_int(where, "frequency", frequency, minimum=1)
    if allow_forever and end_step == -1:
        return
    check_int(where, "end_step", end_step, minimum=0)
    if end_step <= begin_step:
        accepted = "-1 (forever) or " if allow_forever else ""
        raise ValueError(
            f"{where}: end_step must be {accepted}greater than begin_step; got "
            f"begin_step={begin_step}, end_step={end_step}."
        )


@keras.saving.register_keras_serializable(package="keras_compress")
class ConstantSparsity(PruningSchedule):
    """Prunes to a constant `target_sparsity` at every pruning step.

    Args:
        target_sparsity: fraction of weights set to zero, in [0, 1).
        begin_step: first step at which to prune (>= 0). Default 0.
        end_step: last step at which pruning may happen, or -1 (the default)
            to keep pruning until training ends; otherwise > `begin_step`.
        frequency: prune every `frequency` steps after `begin_step` (>= 1).
            Default 100, as in tfmot.

    Example:

    ```python
    schedule = ConstantSparsity(0.8, begin_step=0, frequency=100)
    schedule(0)    # (True, 0.8)
    schedule(50)   # (False, 0.8)
    ```
    """

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100):
        _check_sparsity("ConstantSparsity", "target_sparsity", target_sparsity)
        _check_steps("ConstantSparsity", begin_step, end_step, frequency, allow_forever=True)
        super().__init__(begin_step, end_step, frequency)
        self.target_sparsity = float(target_sparsity)
        self.final_sparsity = self.target_sparsity

    def sparsity(self, step):
        return self.target_sparsity

    def get_config(self):
        return {"target_sparsity": self.target_sparsity, **super().get_config()}


@keras.saving.register_keras_serializable(package="keras_compress")
class PolynomialDecay(PruningSchedule):
    """Raises sparsity from `initial_sparsity` to `final_sparsity` polynomially.

    With `p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`:

        s(step) = final_sparsity + (initial_sparsity - final_sparsity) * (1 - p) ** power

    Masks are updated at `begin_step` and every `frequency` steps up to and
    including `end_step`, as in tfmot. Choose `end_step - begin_step` as a
    multiple of `frequency` so that the last update reaches `final_sparsity`;
    `UpdatePruningStep` warns when it will not.

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
        final_sparsity: sparsity from `end_step` on, in [0, 1).
        begin_step: first pruning step (>= 0).
        end_step: step at which `final_sparsity` is reached (> `begin_step`).
        power: exponent of the decay (> 0). Default 3, as in tfmot and in
            Zhu & Gupta (2017).
        frequency: prune every `frequency` steps (>= 1). Default 100.

    Example:

    ```python
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000)
    schedule(500)   # (True, 0.8 - 0.8 * 0.5 ** 3) == (True, 0.7)
    ```
    """

    def __init__(
        self,
        initial_sparsity,
        final_sparsity,
        begin_step,
        end_step,
        power=3,
        frequency=100,
    ):
        _check_sparsity("PolynomialDecay", "initial_sparsity", initial_sparsity)
        _check_sparsity("PolynomialDecay", "final_sparsity", final_sparsity)
        _check_steps("PolynomialDecay", begin_step, end_step, frequency, allow_forever=False)
        check_number("PolynomialDecay", "power", power, minimum=0, inclusive=(False, True))
        super().__init__(begin_step, end_step, frequency)
        self.initial_sparsity = float(initial_sparsity)
        self.final_sparsity = float(final_sparsity)
        self.power = power

    def sparsity(self, step):
        p = (step - self.begin_step) / (self.end_step - self.begin_step)
        p = min(1.0, max(0.0, p))
        return self.final_sparsity + (
            self.initial_sparsity - self.final_sparsity
        ) * (1.0 - p) ** self.power

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }
