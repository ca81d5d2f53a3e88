"""`FactorizationReport`: per layer, the rank chosen, the parameters before
and after, and the energy kept (or why the layer was left alone)."""

from typing import NamedTuple, Optional


class LayerFactorization(NamedTuple):
    """One row of a `FactorizationReport`.

    Attributes:
        name: the layer's name.
        type: its class name (`"Dense"`, `"Conv2D"`).
        shape: the kernel read as a matrix, `(inputs, outputs)`; a Conv2D's
            inputs are `kh * kw * in_channels`.
        rank: the rank of the factorization, or the rank that was asked for
            when the layer was skipped.
        parameters: the layer's parameters (kernel and bias).
        factorized_parameters: the two new layers' parameters; equal to
            `parameters` when the layer was skipped.
        retained_energy: `sum(S[:rank]**2) / sum(S**2)` of the kernel's
            singular values `S`.
        skipped: why the layer was left as it is, or None.
    """

    name: str
    type: str
    shape: tuple
    rank: int
    parameters: int
    factorized_parameters: int
    retained_energy: float
    skipped: Optional[str] = None


class FactorizationReport(list):
    """A list of `LayerFactorization` rows that prints as a table."""

    @property
    def factorized(self):
        """The rows of the layers that were factorized."""
        return [r for r in self if r.skipped is None]

    @property
    def parameters(self):
        """`(before, after)` summed over the rows."""
        return sum(r.parameters for r in self), sum(r.factorized_parameters for r in self)

    def as_dicts(self):
        """The rows as plain dicts, for JSON or pandas."""
        return [r._asdict() for r in self]

    def __str__(self):
        width = max(len("layer"), *(len(r.name) for r in self)) if self else len("layer")
        lines = [f"{'layer':<{width}}  {'type':<6}  {'matrix':>11}  {'rank':>5}  {'params':>9}  "
                 f"{'after':>9}  energy  note"]
        for r in self:
            shape = f"{r.shape[0]}x{r.shape[1]}"
            lines.append(
                f"{r.name:<{width}}  {r.type:<6}  {shape:>11}  {r.rank:>5}  {r.parameters:>9,}  "
                f"{r.factorized_parameters:>9,}  {r.retained_energy:6.4f}  {r.skipped or ''}"
            )
        before, after = self.parameters
        lines.append(f"{'total':<{width}}  {'':<6}  {'':>11}  {'':>5}  {before:>9,}  {after:>9,}")
        return "\n".join(lines)

    def __repr__(self):
        before, after = self.parameters
        return (f"FactorizationReport(factorized={len(self.factorized)} of {len(self)} layers, "
                f"parameters {before} -> {after})")
