"""Per-group sufficient statistics of the Gaussian model, computed in one pass.

Every full conditional of the hierarchical linear model depends on the data only through

* per group j: n_j, X_j'X_j (p x p), X_j'y_j (p), X_j'Z_j (p x r);
* overall: Z'Z (r x r), Z'y (r);

so after this pass a Gibbs sweep costs O(m p^2 + p^3), whatever the number of rows.

The residual sum of squares SSR = sum_j ||y_j - X_j beta_j - Z_j alpha||^2 would lose
digits if expanded around zero (y'y - 2 b'X'y + b'X'Xb cancels when y is large against
its residuals). It is expanded instead around a reference point (b_ref_j, a_ref): each
group's own least-squares fit where it has one, the pooled fit otherwise. With the
reference residuals r = y - X_j b_ref_j - Z a_ref computed row by row once,

    SSR = r'r - 2 sum_j d_j'X_j'r_j - 2 c'Z'r + sum_j d_j'X_j'X_j d_j
          + 2 sum_j d_j'X_j'Z_j c + c'Z'Z c,      d_j = beta_j - b_ref_j, c = alpha - a_ref,

whose terms are all of the size of the residuals, not of y.

Precision weights (lme4's ``weights``: y_i ~ N(eta_i, sigma2 / w_i)) enter only here. The
log-likelihood is

    sum_i log N(y_i | eta_i, sigma2 / w_i)
        = -N log(2 pi sigma2) / 2 + sum_i log(w_i) / 2 - sum_i w_i (y_i - eta_i)^2 / (2 sigma2),

the unweighted one of the rows scaled by sqrt(w_i) (y_i, x_i and z_i alike) plus the constant
sum_i log(w_i) / 2 (``logw``). So every statistic above is computed on the scaled rows:
X_j'W_jX_j, X_j'W_jy_j, X_j'W_jZ_j, Z'WZ, Z'Wy and the weighted SSR sum_i w_i r_i^2, while
n_j and N stay counts of rows (sigma2 | . ~ IG((nu0 + N) / 2, (nu0 sigma0_sq + SSR_w) / 2)).
Every sampler reads the data only through these statistics, so this is the whole change for
sampling; in the collapsed sampler's marginal y_j ~ N(., sigma2 W_j^-1 + X_j Sigma X_j'),
log det(sigma2 W_j^-1 + X_j Sigma X_j') = n_j log sigma2 - sum_i log w_i + log det Sigma
+ log det P_j with P_j = Sigma^-1 + X_j'W_jX_j / sigma2: the weights add a constant that does
not involve Sigma, theta or alpha, which the collapsed steps (given sigma2) drop. The
least-squares fits below are weighted least squares for the same reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from typing import NamedTuple

import numpy as np

if TYPE_CHECKING:
    from .design import Design



class GaussianStats(NamedTuple):
    """Sufficient statistics of the Gaussian hierarchical model (shapes in comments)."""

    n: np.ndarray  # (m,) rows per group
    XtX: np.ndarray  # (m, p, p)
    Xty: np.ndarray  # (m, p)
    XtZ: np.ndarray  # (m, p, r)
    ZtZ: np.ndarray  # (r, r)
    Zty: np.ndarray  # (r,)
    b_ref: np.ndarray  # (m, p) reference point of beta_j for the SSR expansion
    a_ref: np.ndarray  # (r,) reference point of alpha
    rtr: float  # r'r of the reference residuals
    Xtr: np.ndarray  # (m, p)
    Ztr: np.ndarray  # (r,)
    logw: float = 0.0  # sum_i log w_i of the precision weights (0 unweighted)


class LeastSquares(NamedTuple):
    """Pooled and per-group least-squares fits, the reference point and default priors' source.

    ``b_group[j]`` is group j's own fit of y_j - Z_j a_pool on X_j where ``own[j]``
    (n_j > p and X_j'X_j well conditioned), else ``b_pool``. ``rss_group`` are the
    residual sums of squares about ``b_group``.
    """

    b_pool: np.ndarray  # (p,)
    a_pool: np.ndarray  # (r,)
    rss_pool: float
    b_group: np.ndarray  # (m, p)
    own: np.ndarray  # (m,) bool
    rss_group: np.ndarray  # (m,)


def segment_sum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sum ``values`` (rows sorted by group) over each group's rows ``starts[j]:starts[j+1]``.

    Every group has at least one row, so ``np.add.reduceat`` is exact here.
    """
    return np.add.reduceat(values, starts[:-1], axis=0)


def gaussian_stats(design: Design) -> tuple[GaussianStats, LeastSquares]:
    """One pass over the rows: the sufficient statistics and the least-squares fits.

    The pooled fit of y on [X Z] gives a_pool; each group with n_j > p and a well
    conditioned X_j'X_j gets its own fit of y_j - Z_j a_pool on X_j (from the statistics);
    the others take the pooled b. The reference residuals are then computed row by row.
    With precision weights, all of this runs on the rows scaled by sqrt(w_i) (module doc).
    """
    X, Z, y, starts = design.X, design.Z, np.asarray(design.y, dtype=float), design.starts
    logw = 0.0
    if design.weights is not None:
        root = np.sqrt(design.weights)
        X, Z, y = X * root[:, None], Z * root[:, None], y * root
        logw = float(np.sum(np.log(design.weights)))
    p = X.shape[1]
    coef, *_ = np.linalg.lstsq(np.hstack([X, Z]), y, rcond=None)
    b_pool, a_pool = coef[:p], coef[p:]
    pooled_resid = y - X @ b_pool - Z @ a_pool

    n = np.diff(starts)
    XtX = segment_sum(X[:, :, None] * X[:, None, :], starts)
    Xty = segment_sum(X * y[:, None], starts)
    XtZ = segment_sum(X[:, :, None] * Z[:, None, :], starts)
    eig = np.linalg.eigvalsh(XtX)
    own = (n > p) & (eig[:, 0] > 1e-10 * np.maximum(eig[:, -1], 1e-300))
    safe = np.where(own[:, None, None], XtX, np.eye(p))
    rhs = Xty - XtZ @ a_pool
    b_group = np.where(own[:, None], np.linalg.solve(safe, rhs[..., None])[..., 0], b_pool)

    resid = y - Z @ a_pool - np.einsum("ik,ik->i", X, b_group[design.group])
    stats = GaussianStats(
        n=n,
        XtX=XtX,
        Xty=Xty,
        XtZ=XtZ,
        ZtZ=Z.T @ Z,
        Zty=Z.T @ y,
        b_ref=b_group,
        a_ref=a_pool,
        rtr=float(resid @ resid),
        Xtr=segment_sum(X * resid[:, None], starts),
        Ztr=Z.T @ resid,
        logw=logw,
    )
    ls = LeastSquares(
        b_pool=b_pool,
        a_pool=a_pool,
        rss_pool=float(pooled_resid @ pooled_resid),
        b_group=b_group,
        own=own,
        rss_group=segment_sum(resid * resid, starts),
    )
    return stats, ls


def residual_sum_of_squares(stats: GaussianStats, beta: np.ndarray, alpha: np.ndarray) -> float:
    """SSR = sum_j ||y_j - X_j beta_j - Z_j alpha||^2 from the statistics (see module doc);
    with precision weights, the weighted sum_i w_i (y_i - x_i'beta_j - z_i'alpha)^2."""
    d = beta - stats.b_ref
    c = alpha - stats.a_ref
    XtXd = np.einsum("jkl,jl->jk", stats.XtX, d)
    total = stats.rtr + float(np.sum(d * (XtXd - 2.0 * stats.Xtr)))
    if c.shape[0]:
        total += float(2.0 * np.sum(d * (stats.XtZ @ c)) + c @ stats.ZtZ @ c - 2.0 * c @ stats.Ztr)
    return max(total, 0.0)
