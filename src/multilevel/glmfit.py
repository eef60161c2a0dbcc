"""Maximum-likelihood GLM fits: pooled and per group, the GLM priors' data-informed source.

Newton-Raphson (IRLS) with the canonical links of :mod:`multilevel.families`, all groups
at once: the per-group gradient X_j'(y_j - mu_j) and information X_j'W_jX_j are segment
sums over rows sorted by group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np

from .families import Family, mean_and_weight
from .suffstats import segment_sum

if TYPE_CHECKING:
    from .design import Design

#: a group's own estimate is refused when it lies further than this from the pooled one
#: on the link scale: the sign of (quasi-)separation, where the MLE does not exist
SEPARATION_LIMIT = 10.0


class GLMEstimates(NamedTuple):
    """Pooled and per-group fits; ``b_group[j]`` is group j's own fit where ``own[j]``."""

    b_pool: np.ndarray  # (p,)
    a_pool: np.ndarray  # (r,)
    b_group: np.ndarray  # (m, p)
    own: np.ndarray  # (m,) bool
    info_pool: np.ndarray  # (p + r, p + r) Fisher information of the pooled fit
    converged: bool


#: sd of the weakly-informative normal penalty of a pooled fit that does not converge, per
#: standard deviation of the predictor (Gelman, Jakulin, Pittau and Su 2008 use 2.5), and for
#: a constant column (the intercept)
PENALTY_SD, PENALTY_SD_CONSTANT = 2.5, 10.0


def weak_penalty(D: np.ndarray) -> np.ndarray:
    """Precisions of N(0, (2.5 / sd(d_k))^2) for each column d_k of D (N(c, 10^2 / d^2) for a constant column d)."""
    return penalty_of_columns(D.std(axis=0), np.abs(D).max(axis=0), D[0])


def penalty_of_columns(sd: np.ndarray, max_abs: np.ndarray, first: np.ndarray) -> np.ndarray:
    """:func:`weak_penalty` from the columns' (population) sds, largest absolute values and first
    row, however they were gathered."""
    const = sd <= 1e-12 * np.maximum(max_abs, 1e-300)
    scale = np.where(const, PENALTY_SD_CONSTANT / np.maximum(np.abs(first), 1e-300),
                     PENALTY_SD / np.where(const, 1.0, sd))
    return 1.0 / scale**2


def pooled_start(family: Family, y_sum: float, n_sum: float, rows: int, const: np.ndarray,
                 first: np.ndarray) -> np.ndarray:
    """Where the pooled fit starts: 0, but the first constant non-zero column (``const``, its
    value ``first``) at the overall rate on the link scale."""
    coef = np.zeros(const.shape[0])
    if family.name == "poisson":
        coef_int = np.log(max(y_sum / max(rows, 1), 1e-3))
    else:
        rate = np.clip(y_sum / n_sum, 1e-3, 1 - 1e-3)
        coef_int = np.log(rate / (1 - rate))
    where = np.flatnonzero(const & (first != 0))
    if where.size:
        coef[where[0]] = coef_int / first[where[0]]
    return coef


def newton_fit(terms: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], start: np.ndarray,
               iterations: int = 50, ridge: float = 1e-8, penalty: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Newton-Raphson (IRLS for a canonical link) on the log-likelihood whose gradient and
    information at coef are ``terms(coef)`` = (D'(y - mu), D'WD), with ``penalty`` the
    precisions of independent normal priors centred at ``start``; returns (coefficients,
    information (with the penalty), converged)."""
    k = start.shape[0]
    coef, centre = start.copy(), start.copy()
    prec = np.zeros(k) if penalty is None else penalty
    converged = False
    for _ in range(iterations):
        grad, info = terms(coef)
        try:
            step = np.linalg.solve(info + np.diag(prec) + ridge * np.eye(k), grad - prec * (coef - centre))
        except np.linalg.LinAlgError:  # no information left (separated data drove every weight to 0)
            break
        if not np.all(np.isfinite(step)):
            break
        coef = coef + step
        if np.max(np.abs(step)) < 1e-9 * (1 + np.max(np.abs(coef))):
            converged = True
            break
    return coef, terms(coef)[1] + np.diag(prec), converged


def pooled_fit(family: Family, D: np.ndarray, y: np.ndarray, n: np.ndarray, offset: np.ndarray,
               iterations: int = 50, ridge: float = 1e-8, penalty: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, bool]:
    """ML fit of one GLM on the design D (N x k), or with ``penalty`` (k,) the mode under independent
    normal priors of those precisions centred at the start (the intercept at the overall rate, the
    rest at 0); returns (coefficients, information (with the penalty), converged)."""

    def terms(coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, w = mean_and_weight(family, n, D @ coef + offset)
        return D.T @ (y - mu), D.T @ (D * w[:, None])

    const = np.all(D == D[:1], axis=0)
    start = pooled_start(family, float(y.sum()), float(n.sum()), len(y), const, D[0] if len(D) else np.zeros(D.shape[1]))
    return newton_fit(terms, start, iterations, ridge, penalty)


def pooled_glm(family: Family, D: np.ndarray, y: np.ndarray, n: np.ndarray, offset: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, bool]:
    """:func:`pooled_fit` of y on D; when it does not converge ((quasi-)separation: the MLE does
    not exist and the fit drifts), the mode under :func:`weak_penalty` instead. Returns
    (coefficients, information, whether the unpenalised fit converged)."""
    coef, info, converged = pooled_fit(family, D, y, n, offset)
    if not converged:
        coef, info, _ = pooled_fit(family, D, y, n, offset, penalty=weak_penalty(D))
    return coef, info, converged


def level_fits(family: Family, Z: np.ndarray, index: np.ndarray, n_levels: int, y: np.ndarray, n: np.ndarray,
               base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`group_fits` of rows in any order, level ``index[i]`` of row i (0..n_levels-1, every
    level with rows), from 0: each level's own fit of y on Z given the known part ``base`` of the
    linear predictor (a level's deviation from it). Returns (fits (n_levels, q), own (n_levels,))."""
    order = np.argsort(index, kind="stable")
    starts = np.searchsorted(index[order], np.arange(n_levels + 1)).astype(np.int64)
    return group_fits(family, Z[order], y[order], n[order], base[order], starts, np.zeros(Z.shape[1]))


def glm_estimates(design: Design, family: Family, iterations: int = 30) -> GLMEstimates:
    """Pooled fit of y on [X Z], then each group's own fit on X_j with alpha at the pooled value."""
    X, Z, y, n = design.X, design.Z, np.asarray(design.y, float), design.trials
    p = X.shape[1]
    coef, info, converged = pooled_glm(family, np.hstack([X, Z]), y, n, design.offset)
    b_pool, a_pool = coef[:p], coef[p:]
    b, own = group_fits(family, X, y, n, design.offset + Z @ a_pool, design.starts, b_pool, iterations)
    return GLMEstimates(b_pool, a_pool, np.where(own[:, None], b, b_pool), own, info, converged)


def group_fits(family: Family, X: np.ndarray, y: np.ndarray, n: np.ndarray, base: np.ndarray, starts: np.ndarray,
               start: np.ndarray, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Each group's own ML fit of y on X_j with the known part ``base`` of the linear predictor
    (rows sorted by group, group j = rows ``starts[j]:starts[j+1]``), all groups at once by
    damped Newton from ``start`` (p,) (:func:`newton_levels`). Returns the fits (m, p) and
    ``own`` (m,): whether group j's fit counts."""
    m = starts.shape[0] - 1
    g = np.repeat(np.arange(m), np.diff(starts))

    def terms(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        eta = np.einsum("ik,ik->i", X, b[g]) + base
        mu, w = mean_and_weight(family, n, eta)
        return (segment_sum(X * (y - mu)[:, None], starts),
                segment_sum(X[:, :, None] * X[:, None, :] * w[:, None, None], starts))

    return newton_levels(terms, np.diff(starts), start, iterations)


def newton_levels(terms: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], counts: np.ndarray,
                  start: np.ndarray, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Damped Newton for m levels' own fits at once from ``start`` (p,): ``terms(b)`` gives per
    level the score X_j'(y - mu) (m, p) and information X_j'WX_j (m, p, p) at b (m, p) (from the
    rows, or summed over shards); ``counts`` (m,) the levels' rows. Returns the fits and ``own``:
    whether level j's fit counts, i.e. it has more rows than terms, converged, stays within
    :data:`SEPARATION_LIMIT` of ``start`` and has a well-conditioned information."""
    p = start.shape[0]
    m = counts.shape[0]
    b = np.tile(start, (m, 1))
    done = np.zeros(m, dtype=bool)
    eye = np.eye(p)
    for _ in range(iterations):
        grad, H = terms(b)
        scale = np.trace(H, axis1=1, axis2=2)[:, None, None] / p
        H = H + (1e-8 * scale + 1e-12) * eye  # a ridge relative to the group's information
        try:
            step = np.linalg.solve(H, grad[..., None])[..., 0]
        except np.linalg.LinAlgError:  # singular even so (rounding): least squares per group
            step = (np.linalg.pinv(H) @ grad[..., None])[..., 0]
        step = np.where(np.isfinite(step), step, 0.0)
        step = np.clip(step, -5.0, 5.0)  # damped Newton: separated groups drift, the rest converge
        b = b + step
        done = np.max(np.abs(step), axis=1) < 1e-8
        if done.all():
            break
    H = terms(b)[1]
    eig = np.linalg.eigvalsh(H)
    own = (
        (counts > p)
        & done
        & np.all(np.isfinite(b), axis=1)
        & (np.max(np.abs(b - start), axis=1) < SEPARATION_LIMIT)
        & (eig[:, 0] > 1e-8 * np.maximum(eig[:, -1], 1e-300))
    )
    return b, own
