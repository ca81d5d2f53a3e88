"""The arithmetic of low-rank factorization: a truncated SVD and the rank
that keeps a given fraction of a matrix's energy (numpy, no Keras)."""

import numpy as np


def singular_values(matrix):
    """The singular values of a 2-D array, largest first, as float64."""
    return np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)


def truncated_svd(matrix, rank):
    """Factors `matrix` (m x n) as `a @ b` with `a` m x rank and `b` rank x n.

    `a = U_r * sqrt(S_r)` and `b = sqrt(S_r) * V_r^T` from the SVD
    `matrix = U S V^T`: the best rank-`rank` approximation in the Frobenius
    and spectral norms (Eckart-Young), its error the discarded singular
    values, `||matrix - a @ b||_F^2 = sum(S[rank:]**2)`. Splitting `sqrt(S)`
    between the factors gives both the same scale, which suits fine-tuning
    and int8 quantization alike.
    """
    u, s, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def retained_energy(values, rank):
    """`sum(values[:rank]**2) / sum(values**2)`: the fraction of the squared
    singular values a rank-`rank` factorization keeps (1.0 for a zero matrix)."""
    squares = np.square(np.asarray(values, dtype=np.float64))
    total = squares.sum()
    return 1.0 if total == 0 else float(squares[:rank].sum() / total)


# Cumulative sums of squares carry rounding; without the slack, energy=1.0
# could ask for one more singular value than the matrix has.
_SLACK = 1e-12


def rank_for_energy(values, energy):
    """The smallest rank whose `retained_energy` is at least `energy`
    (at least 1)."""
    squares = np.square(np.asarray(values, dtype=np.float64))
    total = squares.sum()
    if total == 0:
        return 1
    kept = np.cumsum(squares) / total
    return int(np.argmax(kept >= energy - _SLACK)) + 1
