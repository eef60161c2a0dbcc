"""Shared fixtures of the test suite: a simulator of the Gaussian hierarchical model and
the bundled data sets."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, settings

# The default run is deterministic (the same examples every time, so CI never turns red on
# a draw); HYPOTHESIS_PROFILE=explore searches widely with fresh examples each run.
settings.register_profile("default", max_examples=30, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", max_examples=1000, derandomize=False, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked ``long`` first, in their order, then the others in theirs: with the
    test processes stealing each other's queued tests (``--dist worksteal``), a long test
    then never starts near the end while the other process has nothing left to do."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def simulate_gaussian(
    rng: np.random.Generator,
    m: int,
    n_per_group: int | np.ndarray,
    theta: np.ndarray,
    Sigma: np.ndarray,
    sigma2: float,
    alpha: np.ndarray | None = None,
) -> pd.DataFrame:
    """Simulate the Gaussian hierarchical model with columns ``y, x, z, g``.

    ``p = len(theta)`` varying terms: the intercept (p >= 1) and the slope of ``x``
    (p == 2). ``alpha`` (length 0 or 1) is the coefficient of the fixed-only
    predictor ``z``; without it ``z`` is simulated but does not enter ``y``.
    ``n_per_group`` is one size for all groups or one size per group. Groups are the
    integers 0..m-1 (so the package's sorted group order is j), rows sorted by group.

    y_ij = beta_j[0] + beta_j[1] x_ij + alpha z_ij + e_ij,  beta_j ~ MVN(theta, Sigma),
    e_ij ~ N(0, sigma2), x, z ~ N(0, 1).

    The true group effects are in ``df.attrs["beta"]`` (m, p).
    """
    theta = np.atleast_1d(np.asarray(theta, dtype=float))
    Sigma = np.atleast_2d(np.asarray(Sigma, dtype=float))
    p = theta.shape[0]
    if p not in (1, 2) or Sigma.shape != (p, p):
        raise ValueError("theta must have 1 or 2 entries and Sigma be p x p")
    sizes = np.broadcast_to(np.asarray(n_per_group, dtype=int), (m,))
    g = np.repeat(np.arange(m), sizes)
    N = g.shape[0]
    x = rng.standard_normal(N)
    z = rng.standard_normal(N)
    beta = theta + rng.standard_normal((m, p)) @ np.linalg.cholesky(Sigma).T
    X = np.column_stack([np.ones(N), x])[:, :p]
    y = np.einsum("ik,ik->i", X, beta[g]) + np.sqrt(sigma2) * rng.standard_normal(N)
    if alpha is not None and np.size(alpha):
        y = y + float(np.atleast_1d(alpha)[0]) * z
    df = pd.DataFrame({"y": y, "x": x, "z": z, "g": g})
    df.attrs["beta"] = beta
    return df


@pytest.fixture(scope="session")
def simulate():
    """The simulator :func:`simulate_gaussian` (a fixture, so tests need not import conftest)."""
    return simulate_gaussian


@pytest.fixture(scope="session")
def hsb82() -> pd.DataFrame:
    import multilevel

    return multilevel.load_dataset("hsb82")


@pytest.fixture(scope="session")
def sleepstudy() -> pd.DataFrame:
    import multilevel

    return multilevel.load_dataset("sleepstudy")
