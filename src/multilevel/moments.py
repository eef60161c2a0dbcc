"""Count, mean and centred sum of squares of a batch of rows, combined batch by batch.

Chan, Golub and LeVeque's pairwise update: for batches a and b with counts n_a, n_b, means
m_a, m_b and centred sums of squares S_a, S_b (per column),

    n = n_a + n_b,   d = m_b - m_a,   m = m_a + d n_b / n,   S = S_a + S_b + d^2 n_a n_b / n,

so a variance S / n over many partitions never subtracts two large sums (no cancellation when
the mean is large against the spread), and combining the partitions in a fixed order gives
the same numbers whatever computed each partition.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Moments(NamedTuple):
    """Per column: ``count`` rows, their ``mean`` and centred sum of squares ``m2``."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @property
    def variance(self) -> np.ndarray:
        """The population variance m2 / count (``np.var``'s, ddof = 0)."""
        return self.m2 / max(self.count, 1)


def moments_of(x: np.ndarray) -> Moments:
    """The :class:`Moments` of the rows of ``x`` ((N,) or (N, k))."""
    x = np.asarray(x, dtype=float)
    if x.shape[0] == 0:
        return Moments(0, np.zeros(x.shape[1:]), np.zeros(x.shape[1:]))
    mean = x.mean(axis=0)
    return Moments(int(x.shape[0]), mean, ((x - mean) ** 2).sum(axis=0))


def combine_moments(a: Moments, b: Moments) -> Moments:
    """The :class:`Moments` of the rows of ``a`` followed by those of ``b`` (module doc)."""
    if b.count == 0:
        return a
    if a.count == 0:
        return b
    n = a.count + b.count
    d = b.mean - a.mean
    return Moments(n, a.mean + d * (b.count / n), a.m2 + b.m2 + d * d * (a.count * b.count / n))


__all__ = ["Moments", "combine_moments", "moments_of"]
