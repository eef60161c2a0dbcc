"""The shrinkage plot's own estimates of a Dask fit's levels, partition by partition: each
level's own fit from its rows alone, everything else at its posterior mean, as in memory
(:func:`multilevel.plots.partial_residual_estimates`), without the rows leaving their
partitions.

Each partition gives per level of the plotted factor its rows n_j and the sums of its normal
equations (:func:`partition_level_sums`): Gaussian, Z_j'W_jZ_j and Z_j'W_j r_j of the partial
residuals r = y - F a_hat - sum_{k != factor} Z_k b_hat_k, one pass; GLMs, the score Z_j'(y - mu)
and information Z_j'WZ_j at the levels' current fits, one pass per damped Newton iteration
(:func:`multilevel.glmfit.newton_levels`, as the in-memory fits and the sharded sampler's
starting values take it). The partitions' sums are combined in a fixed tree, so the estimates do
not depend on the workers. Dense per-level arrays: (1 + q + q^2) numbers a level per partial sum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..families import check_family, fitting_family, mean_and_weight
from .plan import PartitionPlan, partition_design
from .posterior import partitioned_design_of
from .reduce import tree_reduce

if TYPE_CHECKING:
    from ..result import Fit


def partition_level_sums(frame: Any, plan: PartitionPlan, factor: str, m: int, fixed: np.ndarray,
                         b_hats: dict[str, np.ndarray], b: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """One partition's (n (m,), information (m, q, q), score (m, q)) of the levels of
    ``factor`` (module doc); ``b`` (m, q) the GLM levels' current fits (None: Gaussian)."""
    from ..plots import known_part, level_normal_sums

    d = partition_design(frame, plan)
    fd = next(f for f in d.factors if f.name == factor)
    Z, level = np.asarray(fd.Z, dtype=float), np.asarray(fd.index)
    known = known_part(d, fixed, b_hats, factor)
    if b is None:
        w = np.ones(len(d.y)) if d.weights is None else np.asarray(d.weights, dtype=float)
        return level_normal_sums(Z, level, m, w, np.asarray(d.y, dtype=float) - known)
    family = fitting_family(check_family(plan.family))
    mu, w = mean_and_weight(family, np.asarray(d.trials, dtype=float),
                            np.asarray(d.offset, dtype=float) + known + np.einsum("ik,ik->i", Z, b[level]))
    n, info, _ = level_normal_sums(Z, level, m, w, np.zeros(len(level)))
    score = np.stack([np.bincount(level, weights=Z[:, a] * (d.y - mu), minlength=m) for a in range(Z.shape[1])], axis=1)
    return n, info, score


def add_sums(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    return tuple(x + y for x, y in zip(a, b))


def own_estimates(fit: Fit, factor: str, m: int, fixed: np.ndarray, b_hats: dict[str, np.ndarray],
                  start: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(deviations (m, q), own (m,), rows (m,)) of the levels of ``factor`` of a Dask fit
    (module doc): Gaussian least squares, or GLM fits by damped Newton from ``start`` (q,)."""
    from dask import delayed

    from ..glmfit import newton_levels
    from ..plots import own_least_squares

    design = partitioned_design_of(fit, "the shrinkage plot", "plot it in the session that made the fit")
    parts = design.ddf.to_delayed()
    shared = (delayed(design.plan, pure=True), factor, m, delayed(fixed, pure=True), delayed(b_hats, pure=True))

    def sums(b: np.ndarray | None) -> tuple[np.ndarray, ...]:
        level_b = None if b is None else delayed(b, pure=True)
        (total,) = design.compute([tree_reduce([delayed(partition_level_sums)(p, *shared, level_b) for p in parts],
                                               add_sums)])
        return total

    if check_family(fit.family).is_gaussian:
        n, info, score = sums(None)
        return (*own_least_squares(n, info, score), n)
    first = sums(np.tile(start, (m, 1)))  # Newton's first iteration's sums, and the levels' rows
    cache = [first]

    def terms(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, info, score = cache.pop() if cache else sums(b)
        return score, info

    dev, own = newton_levels(terms, first[0], start)
    return dev, own, first[0]


__all__ = ["own_estimates", "partition_level_sums"]
