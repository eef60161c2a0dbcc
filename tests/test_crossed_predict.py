"""Predictions at levels never seen in fitting, for fits with several grouping factors
(:mod:`multilevel.predict_crossed`; issue 13).

``y ~ x + (x | a) + (1 | b)`` is fitted to simulated data (12 levels of a crossed with 8 of b)
as a Gaussian, a Poisson (Metropolis kernel) and a Bernoulli (Polya-Gamma) model. New rows
copy four fitted rows and replace the level of a, of b, or of both with unseen ones. On the
linear-predictor scale, for each posterior draw s, an unseen level's effect is a fresh draw
from MVN(0, Sigma_k^(s)), so

    w = (eta_new - f'a) / sqrt(z_a' Sigma_a z_a [a new] + Sigma_b [b new])  ~  N(0, 1)

independently over draws (z_a = (1, x), f'a the fixed part computed here from theta, and
eta_new minus the seen factor's effect where only one factor is new). The tests check, for
every row with a new level: finite predictions; mean(w) within Z_MAX / sqrt(N) of 0 and
var(w) within Z_MAX sqrt(2 / N) of 1 (N draws); distinct new levels uncorrelated and rows of
one new level sharing its draw; 90 % intervals wider than the seen row's; and the seen rows'
predictions identical with and without new rows (and any seed); the population-level
prediction (``re_form="~0"``) equal to f'a.

Checked by editing :func:`multilevel.predict_crossed.predict_crossed` by hand (not kept as
tests): new levels given seen level 0's effect (mean(w) 0.64 against the bound 0.13), a zero
effect (var(w) 0 against 1 +- 0.18), Sigma in place of its Cholesky factor (var(w) off by 0.78),
one draw shared by all new levels of a factor (correlation 0.996) and a NaN effect each fail.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel

from test_crossed import Z_MAX

FORMULA = "y ~ x + (x | a) + (1 | b)"
FIT = dict(chains=2, warmup=300, draws=600, seed=21, cores=1, progress=False)


def frame(family: str, seed: int = 5, n: int = 240) -> pd.DataFrame:
    """12 levels of a crossed with 8 of b at random (each at least once), x ~ N(0, 1),
    eta = 0.3 + 0.5 x + (x | a) + (1 | b); y Gaussian (sd 0.5), Poisson or Bernoulli."""
    rng = np.random.default_rng(seed)
    ia = rng.permutation(np.concatenate([np.arange(12), rng.integers(0, 12, n - 12)]))
    ib = rng.permutation(np.concatenate([np.arange(8), rng.integers(0, 8, n - 8)]))
    x = rng.standard_normal(n)
    ba = rng.multivariate_normal([0.0, 0.0], [[0.5, 0.1], [0.1, 0.2]], 12)[ia]
    eta = 0.3 + 0.5 * x + ba[:, 0] + ba[:, 1] * x + rng.normal(0.0, 0.6, 8)[ib]
    y = {"gaussian": lambda: eta + rng.normal(0.0, 0.5, n), "poisson": lambda: rng.poisson(np.exp(eta)),
         "bernoulli": lambda: rng.binomial(1, 1.0 / (1.0 + np.exp(-eta)))}[family]()
    return pd.DataFrame({"a": [f"a{j:02d}" for j in ia], "b": [f"b{j}" for j in ib], "x": x, "y": y})


@pytest.fixture(scope="module", params=["gaussian", "poisson", "bernoulli"])
def case(request):
    family = request.param
    df = frame(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = multilevel.fit(FORMULA, df, family=family, **FIT)
    assert fit.attrs["sampler_name"] == {"gaussian": "collapsed", "poisson": "metropolis",
                                         "bernoulli": "polya-gamma"}[family]
    return family, df, fit


def new_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Four fitted rows (seen), and copies of them: rows 0-3 with a new level of a (two rows
    of ``new_a1``, one each of ``new_a2``, ``new_a3``), rows 4-7 with a new b (all ``new_b``),
    rows 8-11 with both new (``both_a``, ``both_b`` for all four)."""
    seen = df.iloc[[0, 1, 2, 3]][["a", "b", "x"]].reset_index(drop=True)
    new_a = seen.assign(a=["new_a1", "new_a1", "new_a2", "new_a3"])
    new_b = seen.assign(b="new_b")
    both = seen.assign(a="both_a", b="both_b")
    return seen, pd.concat([new_a, new_b, both], ignore_index=True)


def fixed_part(fit, x: np.ndarray) -> np.ndarray:
    theta = fit.posterior["theta"]
    return theta.sel(term="Intercept").values[..., None] + theta.sel(term="x").values[..., None] * x


def test_new_levels_predict_the_population_with_the_factors_spread(case):
    family, df, fit = case
    seen, new = new_rows(df)
    both = pd.concat([seen, new], ignore_index=True)
    pred = fit.predict(both, kind="linear", seed=3)
    values = pred.values
    assert np.isfinite(values).all()
    n_seen = len(seen)
    np.testing.assert_array_equal(pred["a_new"].values, [False] * 4 + [True] * 4 + [False] * 4 + [True] * 4)
    np.testing.assert_array_equal(pred["b_new"].values, [False] * 8 + [True] * 8)

    # seen rows: the same draws with or without new rows beside them, whatever the seed
    alone = fit.predict(seen, kind="linear", seed=99).values
    np.testing.assert_array_equal(values[..., :n_seen], alone)

    x = both["x"].to_numpy()
    post = fit.posterior
    Sa, Sb = post["Sigma_a"].values, post["Sigma_b"].values[..., 0, 0]
    za = np.stack([np.ones_like(x), x], axis=-1)
    var_a = np.einsum("ik,cdkl,il->cdi", za, Sa, za)
    fixed = fixed_part(fit, x)
    # the seen factor's part of a row with one new level, from the seen row (re_form: one factor)
    seen_a = fit.predict(seen, kind="linear", re_form="~(x | a)").values - fixed[..., :n_seen]
    seen_b = fit.predict(seen, kind="linear", re_form="~(1 | b)").values - fixed[..., :n_seen]
    np.testing.assert_allclose(seen_a + seen_b, values[..., :n_seen] - fixed[..., :n_seen], atol=1e-9)
    own = values[..., n_seen:] - fixed[..., n_seen:]  # the new levels' part
    own[..., :4] -= seen_b
    own[..., 4:8] -= seen_a
    rows = np.arange(n_seen, len(both))
    new_a, new_b = pred["a_new"].values[rows], pred["b_new"].values[rows]
    w = (own / np.sqrt(var_a[..., rows] * new_a + Sb[..., None] * new_b)).reshape(-1, len(rows))
    N = w.shape[0]
    assert np.abs(w.mean(axis=0)).max() < Z_MAX / np.sqrt(N), (family, w.mean(axis=0))
    assert np.abs(w.var(axis=0) - 1.0).max() < Z_MAX * np.sqrt(2.0 / N), (family, w.var(axis=0))

    # rows of one new level share its draw (the four rows of new_b); distinct new levels
    # (new_a1, new_a2, new_a3) are independent
    b_new = own[..., 4:8]
    np.testing.assert_allclose(b_new, np.broadcast_to(b_new[..., :1], b_new.shape), atol=1e-12)
    r = np.corrcoef(w[:, [0, 2, 3]].T)[np.triu_indices(3, 1)]
    assert np.abs(r).max() < Z_MAX / np.sqrt(N), r

    # intervals: every new row's 90 % interval is wider than its seen row's
    lo, hi = np.quantile(values.reshape(-1, len(both)), [0.05, 0.95], axis=0)
    width = hi - lo
    for block in range(3):
        assert np.all(width[n_seen + 4 * block:n_seen + 4 * (block + 1)] > width[:n_seen]), (family, width)

    # the population-level prediction is the fixed part computed here
    np.testing.assert_allclose(fit.predict(both, kind="linear", re_form="~0").values, fixed, rtol=1e-10, atol=1e-10)
