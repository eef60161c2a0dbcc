"""A large offset added to y changes nothing but the intercept.

With the same seed, fits of y and of y + 1e6 use the same random numbers, and every
draw must agree except theta[Intercept] (and the beta_j intercepts), shifted by 1e6.
The residual sum of squares expanded naively around zero, y'y - 2 b'X'y + b'X'Xb,
would lose about eps * y'y / SSR ~ 1e-4 of its value here (shown below), so this fails
at the 1e-6 level unless the sufficient statistics avoid the cancellation.
"""

from __future__ import annotations

import numpy as np
import pytest

import multilevel
from multilevel.suffstats import residual_sum_of_squares

FORMULA = "y ~ x + z + (x | g)"
SHIFT = 1e6
RTOL = 1e-6


@pytest.fixture(scope="module")
def data(simulate):
    rng = np.random.default_rng(7)
    df = simulate(rng, 50, 20, [3.0, 1.0], [[1.0, 0.2], [0.2, 0.3]], 0.5, alpha=0.7)
    shifted = df.copy()
    shifted["y"] = df["y"] + SHIFT
    return df, shifted


@pytest.fixture(scope="module")
def fits(data):
    kw = dict(chains=2, draws=300, warmup=100, seed=9, cores=1, progress=False, log_likelihood=False)
    return tuple(multilevel.fit(FORMULA, d, **kw).posterior for d in data)


def rel_diff(a, b):
    return np.abs(a - b).max() / np.abs(a).max()


def test_offset_changes_only_the_intercept(fits):
    base, shifted = fits
    for v in ("sigma2", "Sigma", "alpha"):
        assert rel_diff(base[v].values, shifted[v].values) < RTOL, v
        assert rel_diff(base[v].values.mean(axis=(0, 1)), shifted[v].values.mean(axis=(0, 1))) < RTOL, v
    t0, t1 = base["theta"].values, shifted["theta"].values
    assert rel_diff(t0[..., 1], t1[..., 1]) < RTOL
    # the intercept: shifted by 1e6 in every draw, to the precision of numbers of that size
    assert np.abs(t1[..., 0] - t0[..., 0] - SHIFT).max() < RTOL * np.abs(t0[..., 0]).max()
    b0, b1 = base["beta"].values, shifted["beta"].values
    assert rel_diff(b0[..., 1], b1[..., 1]) < RTOL
    assert np.abs(b1[..., 0] - b0[..., 0] - SHIFT).max() < RTOL * np.abs(b0[..., 0]).max()


def direct_ssr(df, beta, alpha):
    g = df["g"].to_numpy()
    resid = df["y"].to_numpy() - beta[g, 0] - beta[g, 1] * df["x"].to_numpy() - alpha[0] * df["z"].to_numpy()
    return float(resid @ resid)


def naive_ssr(df, beta, alpha):
    """y'y - 2 u'D'y + u'D'Du over the rows' (1, x, z) design, per group: the cancelling expansion."""
    total = 0.0
    for j, rows in df.groupby("g"):
        D = np.column_stack([np.ones(len(rows)), rows["x"], rows["z"]])
        y = rows["y"].to_numpy()
        u = np.concatenate([beta[j], alpha])
        total += y @ y - 2 * u @ (D.T @ y) + u @ (D.T @ D) @ u
    return total


def test_ssr_expansion_is_exact_under_offset(data, fits):
    """The package's SSR from its statistics matches the row-by-row SSR on the shifted data
    (at a posterior draw), where the naive expansion is off by far more than RTOL."""
    _, shifted_df = data
    post = fits[1]
    beta = post["beta"].values[0, -1]
    alpha = post["alpha"].values[0, -1]
    model = multilevel.Model(FORMULA, shifted_df)
    exact = direct_ssr(shifted_df, beta, alpha)
    assert residual_sum_of_squares(model.stats, beta, alpha) == pytest.approx(exact, rel=1e-9)
    # measured: the naive expansion is off by ~1e-4 relative, 100 times RTOL
    assert abs(naive_ssr(shifted_df, beta, alpha) - exact) > 10 * RTOL * exact
