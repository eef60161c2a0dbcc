"""Recovery: on simulated data with many groups, the posterior (default, data-informed
priors) concentrates around the true theta, alpha, Sigma and sigma2, and the group
effects' posterior sds are calibrated against the true beta_j."""

from __future__ import annotations

import numpy as np
import pytest

import multilevel

M, N_PER_GROUP = 400, 25
THETA = np.array([2.0, -1.0])
SIGMA = np.array([[1.0, -0.3], [-0.3, 0.5]])  # correlation -0.42
SIGMA2 = 2.0
ALPHA = 0.8


@pytest.fixture(scope="module")
def recovery(simulate):
    rng = np.random.default_rng(20240601)
    df = simulate(rng, M, N_PER_GROUP, THETA, SIGMA, SIGMA2, alpha=ALPHA)
    fit = multilevel.fit(
        "y ~ x + z + (x | g)", df, chains=2, draws=500, warmup=300, seed=5, progress=False, log_likelihood=False
    )
    return df, fit


def test_population_parameters_recovered(recovery):
    _, fit = recovery
    table = fit.summary()
    truth = {
        "theta[Intercept]": THETA[0],
        "theta[x]": THETA[1],
        "alpha[z]": ALPHA,
        "Sigma[Intercept, Intercept]": SIGMA[0, 0],
        "Sigma[x, Intercept]": SIGMA[1, 0],
        "Sigma[x, x]": SIGMA[1, 1],
        "sigma2": SIGMA2,
    }
    assert set(truth) <= set(table.index), table.index
    for name, true in truth.items():
        row = table.loc[name]
        # the data set is one draw: its posterior mean is off the truth by about one posterior
        # sd; add the Monte Carlo error of the mean
        tol = 4.0 * np.hypot(row["sd"], row["mcse_mean"])
        assert abs(row["mean"] - true) < tol, f"{name}: mean {row['mean']:.4f} sd {row['sd']:.4f}, truth {true}"
        assert row["r_hat"] < 1.05, f"{name} r_hat {row['r_hat']}"
    # with 400 groups the posterior is tight: the tolerance above is meaningful
    assert table.loc["Sigma[x, x]", "sd"] < 0.15 * SIGMA[1, 1]
    assert table.loc["sigma2", "sd"] < 0.03 * SIGMA2


def test_group_effects_calibrated(recovery):
    """The true beta_j sit about one posterior sd from their posterior means: the mean squared
    z-score over 800 effects is chi-square / 800 with sd about 0.05 around 1 (a sampler with
    the wrong beta_j variance, e.g. sigma2 applied twice, would miss this band)."""
    df, fit = recovery
    beta = fit.posterior["beta"].values.reshape(-1, M, 2)
    z = (beta.mean(axis=0) - df.attrs["beta"]) / beta.std(axis=0)
    msz = float(np.mean(z**2))
    assert 0.8 < msz < 1.25, msz
    # and the posterior means track the truth closely (shrinkage does not swamp the data)
    for k in range(2):
        assert np.corrcoef(beta.mean(axis=0)[:, k], df.attrs["beta"][:, k])[0, 1] > 0.8
