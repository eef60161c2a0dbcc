"""The compiled PSIS-LOO (multilevel.psis) gives ArviZ's numbers: the pointwise elpd_loo,
lppd and Pareto k of ``az.loo`` (``psislw`` and its log-sum-exps), row by row, on rows that
take the compiled path and on those it hands to ArviZ (ties, short tails, weights beyond the
float range), with any number of threads."""

from __future__ import annotations

import numpy as np
import pytest
from arviz import psislw
from arviz.stats.stats_utils import logsumexp

from multilevel.psis import kth_smallest, loo_rows, pointwise_loo, tail_length


def arviz_pointwise(ll: np.ndarray, reff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``az.loo``'s pointwise values of each row of ``ll`` (rows, draws)."""
    log_weights, k = psislw(-ll, reff)
    return logsumexp(log_weights + ll, axis=-1), logsumexp(ll, b_inv=ll.shape[1], axis=-1), k


def rows_of(case: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    return {
        "normal": lambda: rng.normal(-3, 1, size=(120, 2000)),
        "heavy tails": lambda: 3 * rng.standard_t(2, size=(120, 2000)),  # many k above 0.7
        "ties": lambda: np.round(rng.normal(size=(40, 400)), 1),
        "mixed": lambda: np.concatenate([rng.normal(size=(30, 1000)), np.round(rng.normal(size=(10, 1000)), 1),
                                         np.zeros((2, 1000))]),
        "beyond floats": lambda: 800 * rng.normal(size=(20, 1000)),
        "short tail": lambda: rng.normal(size=(20, 20)),  # M = 4: no fit, k = inf
    }[case]()


@pytest.mark.parametrize("reff", [1.0, 0.3])
@pytest.mark.parametrize("case", ["normal", "heavy tails", "ties", "mixed", "beyond floats", "short tail"])
def test_pointwise_loo_is_arviz(case, reff):
    ll = rows_of(case)
    want = arviz_pointwise(ll.copy(), reff)
    got = pointwise_loo(ll, reff)
    for name, a, b in zip(("elpd_loo_i", "lppd_i", "k"), want, got):
        assert np.array_equal(np.isfinite(a), np.isfinite(b)), name
        fin = np.isfinite(a)
        np.testing.assert_allclose(b[fin], a[fin], rtol=1e-12, atol=1e-12, err_msg=name)


def test_the_compiled_path_takes_the_regular_rows_and_hands_over_the_others():
    rng = np.random.default_rng(3)
    ll = rng.normal(size=(6, 1000))
    ll[1, :] = np.round(ll[1, :], 1)       # ties in the tail
    ll[2, :] = 0.0                         # all tied
    ll[3, :] *= 800                        # weights beyond the float range
    rows, n = ll.shape
    out = [np.empty(rows), np.empty(rows), np.full(rows, np.inf)]
    done = np.zeros(rows, dtype=bool)
    loo_rows(ll, tail_length(n, 1.0), *out, done)
    assert done.tolist() == [True, False, False, False, True, True]
    assert np.all(np.isfinite(out[2][done])) and np.all(out[2][done] < 0.7)
    np.testing.assert_allclose(out[0][done], arviz_pointwise(ll[done], 1.0)[0], rtol=1e-12)


def test_threads_share_the_rows_and_change_nothing():
    ll = rows_of("heavy tails")
    one = pointwise_loo(ll, 0.8)
    for threads in (2, 3, 500):
        for a, b in zip(one, pointwise_loo(ll, 0.8, threads=threads)):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("seed", range(5))
def test_kth_smallest_is_numpys_partition(seed):
    rng = np.random.default_rng(seed)
    a = np.round(rng.normal(size=int(rng.integers(1, 300))), int(seed % 3))  # duplicates too
    for kth in {0, a.shape[0] // 3, a.shape[0] - 1}:
        assert kth_smallest(a.copy(), kth) == np.partition(a, kth)[kth]
