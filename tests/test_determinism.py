"""Seeding: the same seed gives bit-identical draws whether the chains run in this process
(cores=1) or in worker processes (cores=2); different seeds, and different chains of
one fit, give different draws."""

from __future__ import annotations

import numpy as np
import pytest

import multilevel

FORMULA = "mAch ~ ses + (ses | school)"
VARS = ("theta", "Sigma", "sigma2", "beta")


@pytest.fixture(scope="module")
def fits(hsb82):
    def run(seed, cores):
        return multilevel.fit(FORMULA, hsb82, chains=2, draws=60, warmup=20, seed=seed, cores=cores,
                              progress=False, log_likelihood=False)

    return {(seed, cores): run(seed, cores) for seed, cores in [(42, 1), (42, 2), (43, 1)]}


def test_same_seed_same_draws_any_cores(fits):
    a, b = fits[(42, 1)].posterior, fits[(42, 2)].posterior
    for v in VARS:
        assert np.array_equal(a[v].values, b[v].values), v
    assert fits[(42, 1)].attrs["seed"] == fits[(42, 2)].attrs["seed"] == 42


def test_different_seeds_differ(fits):
    a, c = fits[(42, 1)].posterior, fits[(43, 1)].posterior
    for v in VARS:
        assert not np.any(a[v].values == c[v].values), v


def test_chains_differ(fits):
    post = fits[(42, 1)].posterior
    for v in VARS:
        assert not np.any(post[v].values[0] == post[v].values[1]), v
