"""The sharded GLM sampler (multilevel.samplers.sharded), in memory and on Dask.

1. Keyed random numbers: a level's numbers do not depend on the range they are drawn in.
2. The compiled level move against a NumPy reference on the same random inputs; the closed
   form of a Poisson intercept against the general path; the level sums a Poisson intercept's
   shards carry between sweeps against the sums of their rows.
3. Shards: 1 and 3 shards in memory give the same draws up to the rounding of the sums; the
   Dask engine (local scheduler, and LocalCluster with 1 and 2 workers) gives the in-memory
   draws exactly; with one grouping factor and with two (the rest of the several-factor
   tests: tests/test_sharded_crossed.py), and the negative binomial on the LocalCluster (the
   rest of its tests: tests/test_sharded_nb.py).
4. Simulation-based calibration (tests/sbc.py), truth from proper priors: a correlated Poisson
   model with a group-level predictor (shift moves), a Poisson intercept (the level sums the
   shards carry from sweep to sweep) and a Bernoulli model of small groups (scale moves), with
   a control that drops the Hastings correction; long runs under ``make validate``.
5. Agreement with the one-term Metropolis kernel's posterior; LOO and the log-likelihood of a
   Dask GLM fit; one-line refusals.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel.blockstats import factor_layout
from multilevel.errors import ModelError
from multilevel.families import CODES
from multilevel.run import run_chains
from multilevel.samplers.keyed import level_draws, level_uniforms
from multilevel.samplers.shard import level_rotation
from multilevel.samplers.sharded import ShardedMetropolis, ShardSource, factor_order, level_cuts, local_shards

import sbc
from clitools import run_main
from test_exact_posterior import Z_MAX, mcse_of_means
from test_crossed_sbc import draw_truth, scalars

dd = pytest.importorskip("dask.dataframe")


# -- 1. keyed random numbers --------------------------------------------------------------------

def test_a_levels_numbers_do_not_depend_on_the_range_drawn():
    key = np.array([3, 11], dtype=np.uint64)
    whole = level_uniforms(key, 7, 0, 0, 50, 3)
    parts = np.vstack([level_uniforms(key, 7, 0, lo, hi, 3) for lo, hi in [(0, 1), (1, 17), (17, 50)]])
    np.testing.assert_array_equal(whole, parts)
    assert np.all((whole > 0) & (whole < 1))
    assert not np.array_equal(whole, level_uniforms(key, 8, 0, 0, 50, 3))
    assert not np.array_equal(whole, level_uniforms(np.array([3, 12], dtype=np.uint64), 7, 0, 0, 50, 3))
    z, u = level_draws(key, 1, 0, 20000, 2)
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03 and abs(u.mean() - 0.5) < 0.01


def test_level_cuts_keep_levels_whole_and_rows_balanced():
    counts = np.array([5, 1, 1, 1, 8, 2, 2, 4])
    cuts = level_cuts(counts, 3)
    assert cuts[0] == 0 and cuts[-1] == 8 and np.all(np.diff(cuts) > 0)
    assert cuts.tolist() == [0, 4, 5, 8]  # 8 rows each
    many = level_cuts(counts, 20)
    assert many[0] == 0 and many[-1] == 8 and np.all(np.diff(many) > 0)
    assert level_cuts(counts, 1).tolist() == [0, 8]


# -- 2. the level move against a NumPy reference ------------------------------------------------------

def reference_level_move(code, y, n, eta, Z, index, J, b, Sinv, phi, hastings, z, u):
    """The rotation move of every level (multilevel.samplers.crossed_metropolis, step 2) in NumPy."""
    q = b.shape[1]

    def terms(delta):
        e = eta + np.einsum("ic,ic->i", Z, delta[index])
        if code == 0:
            mu = np.exp(e)
            ll, r, w = y * e - mu, y - mu, mu
        elif code == 2:  # the negative binomial given phi = n (tests/test_sharded_nb.py)
            mu = np.exp(e)
            ll, r, w = y * e - (y + n) * np.log(n + mu), n * (y - mu) / (n + mu), n * mu / (n + mu)
        else:
            p = 1 / (1 + np.exp(-e))
            ll, r, w = y * e - n * np.logaddexp(0, e), y - n * p, n * p * (1 - p)
        ll_j = np.bincount(index, ll, J)
        g_j = np.stack([np.bincount(index, Z[:, c] * r, J) for c in range(q)], 1)
        H_j = np.stack([np.stack([np.bincount(index, w * Z[:, c] * Z[:, d], J) for d in range(q)], 1)
                        for c in range(q)], 1)
        return ll_j, g_j, H_j

    def point(x, g, H):
        P = Sinv + H
        grad = g - Sinv @ x
        L = np.linalg.cholesky(P)
        return -0.5 * x @ Sinv @ x, x + np.linalg.solve(P, grad), L

    def logq(to, x, m, L):
        r = to - m - np.cos(phi) * (x - m)
        return -0.5 * np.sum((L.T @ r) ** 2) / np.sin(phi) ** 2 + np.sum(np.log(np.diag(L)))

    ll0, g0, H0 = terms(np.zeros((J, q)))
    prop = np.zeros((J, q))
    for j in range(J):
        _, m, L = point(b[j], g0[j], H0[j])
        prop[j] = m + np.cos(phi) * (b[j] - m) + np.sin(phi) * np.linalg.solve(L.T, z[j]) - b[j]
    ll1, g1, H1 = terms(prop)
    out, D = b.copy(), np.zeros((J, q))
    for j in range(J):
        x, xs = b[j], b[j] + prop[j]
        lp0, m0, L0 = point(x, g0[j], H0[j])
        lp1, m1, L1 = point(xs, g1[j], H1[j])
        ratio = ll1[j] - ll0[j] + lp1 - lp0
        if hastings:
            ratio += logq(x, xs, m1, L1) - logq(xs, x, m0, L0)
        if np.log(u[j]) < ratio:
            out[j], D[j] = xs, prop[j]
    return out, D


def level_case(code: int, q: int, rows: int = 6, J: int = 9, seed: int = 4):
    rng = np.random.default_rng(seed)
    index = np.repeat(np.arange(J), rows).astype(np.int32)
    N = index.size
    Z = np.column_stack([np.ones(N)] + [rng.standard_normal(N) for _ in range(q - 1)])
    n = np.ones(N) if code == 0 else rng.integers(1, 5, N).astype(float)
    eta = 0.3 * rng.standard_normal(N)
    b = 0.4 * rng.standard_normal((J, q))
    true = eta + np.einsum("ic,ic->i", Z, b[index])
    y = rng.poisson(np.exp(true)).astype(float) if code == 0 else rng.binomial(n.astype(int), 1 / (1 + np.exp(-true))).astype(float)
    S = np.array([[0.5, 0.1], [0.1, 0.3]])[:q, :q]
    return y, n, eta, Z, index, J, np.linalg.inv(S), rng.standard_normal((J, q)), rng.uniform(size=J) ** 0.05  # u near 1: some rejected


@pytest.mark.parametrize("code,q", [(0, 2), (1, 2), (1, 1)], ids=["poisson slope", "logit slope", "logit intercept"])
@pytest.mark.parametrize("hastings", [True, False])
def test_level_move_matches_numpy_reference(code, q, hastings):
    y, n, eta, Z, index, J, Sinv, z, u = level_case(code, q, rows=3, J=30)
    b = 0.2 * np.ones((J, q))
    ref, D_ref = reference_level_move(code, y, n, eta, Z, index, J, b, Sinv, 1.1, hastings, z, u)
    from multilevel.samplers.crossed_metropolis import level_terms

    ll0, g0, H0 = level_terms(code, y, n, eta, Z, 0, q, index, J, np.zeros((J, q)))
    got, D = b.copy(), np.zeros((J, q))
    accepted = level_rotation(code, y, n, eta, Z, index, J, got, Sinv, 1.1, hastings, z, u, False, ll0, g0, H0, D)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(D, D_ref, rtol=1e-10, atol=1e-12)
    assert accepted == int(np.sum(np.any(D_ref != 0, axis=1)))
    assert 0 < accepted < J  # both branches are exercised


def test_poisson_intercept_closed_form_equals_the_passes():
    from multilevel.samplers.crossed_metropolis import level_terms

    y, n, eta, Z, index, J, Sinv, z, u = level_case(0, 1, rows=4, J=40)
    b = 0.1 * np.ones((J, 1))
    out = []
    for ones in (True, False):
        ll0, g0, H0 = level_terms(0, y, n, eta, Z, 0, 1, index, J, np.zeros((J, 1)), None, ones)
        got, D = b.copy(), np.zeros((J, 1))
        level_rotation(0, y, n, eta, Z, index, J, got, Sinv, 1.2, True, z, u, ones, ll0, g0, H0, D)
        out.append(got)
    np.testing.assert_allclose(out[0], out[1], rtol=1e-9, atol=1e-12)


def level_sums_reference(y, offset, F, a, b, index, J):
    """NumPy reference of :func:`multilevel.samplers.shard.intercept_pass`: per level the sums of
    y eta, y, mu, F y, F mu and F F' mu (lower triangle) at eta = offset + F a + b_j, row by row."""
    eta = offset + F @ a + b[index, 0]
    mu = np.exp(eta)
    p = F.shape[1]

    def per_level(w):
        return np.bincount(index, weights=w, minlength=J)

    FF = np.tril(F[:, :, None] * F[:, None, :])
    return (per_level(y * eta), per_level(y), per_level(mu), np.stack([per_level(F[:, c] * y) for c in range(p)], 1),
            np.stack([per_level(F[:, c] * mu) for c in range(p)], 1),
            np.stack([np.stack([per_level(FF[:, c, d] * mu) for d in range(p)], 1) for c in range(p)], 1))


def test_intercept_pass_equals_its_numpy_reference():
    """The sums of y come from the shard's constant per-level sums (y offset, y, F y) and those of
    mu from one pass; together they equal the row-by-row sums, with levels in any row order."""
    from multilevel.samplers.shard import intercept_pass, response_level_sums

    rng = np.random.default_rng(5)
    N, J, p = 400, 13, 3
    index = rng.integers(0, J, N).astype(np.int32)
    F = np.column_stack([np.ones(N), rng.normal(size=(N, p - 1))])
    offset, a, b = rng.normal(0, 0.5, N), rng.normal(0, 0.3, p), rng.normal(0, 1, (J, 1))
    y = rng.poisson(np.exp(offset + F @ a + b[index, 0])).astype(float)
    got = intercept_pass(y, offset, F, a, b, index, J, *response_level_sums(y, offset, F, index, J))
    for g, w in zip(got, level_sums_reference(y, offset, F, a, b, index, J)):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-9)


def test_carried_level_sums_equal_the_rows_sums_at_every_sweep():
    """Poisson with one factor and its intercept alone: each shard carries its level sums from
    sweep to sweep (the fixed move's proposal's when accepted, closed forms for the level, scale
    and shift moves' changes). At every sweep the sums it moves its levels with, taken to after
    the levels' moves, equal the sums recomputed from its rows at a and b then; the run makes
    fixed moves accepted and rejected, scale moves (warm-up) and shift moves (w is a
    group-level predictor)."""
    from multilevel.samplers.shard import LevelShard

    model = multilevel.Model("y ~ x + w + offset(log(expo)) + (1 | g)", glm_frame(3), family="poisson",
                             sampler="sharded")
    kernel = sharded_kernel(model, 3)
    assert all(s.carries for s in kernel.shards.shards) and kernel.shift_groups
    seen = {"moved": set(), "scaled": 0, "checked": 0}
    sweep = LevelShard.sweep

    def checked(shard, m):
        seen["moved"].add(m.moved)
        seen["scaled"] += bool(np.any(m.scale != 1.0))
        out = sweep(shard, m)
        slot, r = shard.chains[bytes(m.key)], shard.rows
        fresh = level_sums_reference(r.y, r.offset, r.F, m.a, slot.b, r.index[0], r.J)
        for got, want in zip(shard.carried.at, fresh):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
        seen["checked"] += 1
        return out

    for shard in kernel.shards.shards:
        shard.sweep = checked.__get__(shard)
    run_chains(kernel, chains=2, draws=20, warmup=40, seed=3, progress=False)
    assert seen["moved"] == {True, False} and seen["scaled"] > 0 and seen["checked"] == 3 * 2 * 60


# -- 3. shards, engines and workers -------------------------------------------------------------------------

def glm_frame(seed: int, J: int = 40, rows: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), rows)
    x, w = rng.standard_normal(g.size), rng.standard_normal(J)[g]
    expo = rng.uniform(0.5, 2.0, g.size)
    b = rng.multivariate_normal([0, 0], [[0.3, 0.05], [0.05, 0.1]], J)
    eta = 0.2 + 0.4 * x + 0.3 * w + np.log(expo) + b[g, 0] + b[g, 1] * x
    trials = rng.integers(1, 6, g.size)
    return pd.DataFrame({"g": [f"g{k:03d}" for k in g], "x": x, "w": w, "expo": expo,
                         "y": rng.poisson(np.exp(eta)), "s": rng.binomial(trials, 1 / (1 + np.exp(-eta + np.log(expo)))),
                         "n": trials, "yes": rng.integers(0, 2, g.size), "h": rng.integers(0, 5, g.size)}).sample(frac=1, random_state=seed)


def sharded_kernel(model: multilevel.Model, n_shards: int, design=None) -> ShardedMetropolis:
    d = model.design if design is None else design
    shards = local_shards(d, CODES[model.family.name], n_shards)
    a_start = ShardSource(shards, factor_order(d)).pooled_glm(model.family)[0]
    return ShardedMetropolis(shards, d, factor_layout(d, small_columns=0), model.priors, a_start, d.n_obs)


@pytest.mark.parametrize("formula,family,shapes", [
    ("y ~ x + w + offset(log(expo)) + (x | g)", "poisson", {"beta": (40, 2)}),
    # Poisson's intercept alone: the shards carry their level sums between sweeps
    ("y ~ x + w + offset(log(expo)) + (1 | g)", "poisson", {"beta": (40, 1)}),
    # several factors (tests/test_sharded_crossed.py): sharded on g, h's closed form / h's proposals evaluated
    ("y ~ x + offset(log(expo)) + (1 | h) + (1 | g)", "poisson", {"beta_g": (40, 1), "beta_h": (5, 1)}),
    ("p(s, n) ~ x + w + (x | g) + (1 | h)", "binomial", {"beta_g": (40, 2), "beta_h": (5, 1)})])
def test_one_shard_and_three_give_the_same_draws(formula, family, shapes):
    df = glm_frame(1)
    model = multilevel.Model(formula, df, family=family, sampler="sharded")
    assert_shard_count_free(lambda n_shards: sharded_kernel(model, n_shards), shapes)


def assert_shard_count_free(kernel_of, shapes: dict) -> dict:
    """The same seed's draws with the rows in 1 and in 3 shards (``kernel_of(n_shards)``) agree
    to 1e-8, and the group draws have ``shapes`` and move; returns the 1-shard draws."""
    runs = []
    for n_shards in (1, 3):
        kernel = kernel_of(n_shards)
        res = run_chains(kernel, chains=2, draws=40, warmup=30, seed=8, progress=False)
        kernel.collect(res)
        runs.append(res.draws)
    for name in runs[0]:
        np.testing.assert_allclose(runs[0][name], runs[1][name], rtol=1e-8, atol=1e-10, err_msg=name)
    for name, shape in shapes.items():
        assert runs[0][name].shape == (2, 40, *shape) and np.std(runs[0][name][0, :, 0, 0]) > 0
    return runs[0]


@pytest.mark.parametrize("formula,family", [("y ~ x + w + offset(log(expo)) + (x | g)", "poisson"),
                                            ("y ~ x + w + offset(log(expo)) + (1 | g)", "poisson"),
                                            ("p(s, n) ~ x + (1 | g)", "binomial"),
                                            ("yes ~ x + (x || g)", "bernoulli"),
                                            ("y ~ x + offset(log(expo)) + (1 | h) + (1 | g)", "poisson"),
                                            ("yes ~ x + (x | g) + (1 | h)", "bernoulli"),
                                            # h:g nested in h: the nested variance moves' rounds
                                            ("y ~ x + (1 | h/g)", "poisson")])
def test_dask_engine_equals_in_memory_sharded(formula, family):
    df = glm_frame(2)
    mem = multilevel.fit(formula, df, family=family, sampler="sharded", chains=2, warmup=30, draws=40, seed=4,
                         progress=False)
    dsk = multilevel.fit(formula, dd.from_pandas(df, npartitions=3), family=family, engine="dask", chains=2,
                         warmup=30, draws=40, seed=4, progress=False)
    assert dsk.attrs["sampler_name"] == "sharded" and dsk.attrs["engine"] == "dask"
    for name, v in mem.posterior.data_vars.items():
        np.testing.assert_allclose(dsk.posterior[name].values, v.values, rtol=1e-9, atol=1e-11, err_msg=name)


@pytest.mark.long
def test_one_worker_and_two_give_identical_draws_and_loo():
    from distributed import Client, LocalCluster

    df = glm_frame(3)
    ddf = dd.from_pandas(df, npartitions=4)
    formula = "y ~ x + w + offset(log(expo)) + (1 | g)"
    fits, crossed, nb, nested = [], [], [], []
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as c, \
                Client(c):
            fit = multilevel.fit(formula, ddf, family="poisson", engine="dask", chains=2, warmup=30, draws=40,
                                 seed=6, progress=False)
            fits.append((fit, fit.loo()))
            # several factors: the rows sharded on g, h's effects kept by the kernel
            crossed.append(multilevel.fit("p(s, n) ~ x + (x | g) + (1 | h)", ddf, family="binomial", engine="dask",
                                          chains=1, warmup=20, draws=20, seed=6, progress=False))
            # the negative binomial: its phi move's round, LOO with phi (tests/test_sharded_nb.py)
            fit_nb = multilevel.fit(formula, ddf, family="negbinomial", engine="dask", chains=1, warmup=20, draws=20,
                                    seed=6, progress=False)
            nb.append((fit_nb, fit_nb.loo().elpd_loo))
            # h:g nested in h: the nested variance moves' rounds to the workers' actors
            nested.append(multilevel.fit("y ~ x + (1 | h/g)", ddf, family="poisson", engine="dask", chains=1, warmup=20,
                                         draws=20, seed=6, progress=False))
    (one, loo1), (two, loo2) = fits
    for name, v in one.posterior.data_vars.items():
        np.testing.assert_array_equal(v.values, two.posterior[name].values, err_msg=name)
    assert {"beta_g", "beta_h"} <= set(crossed[0].posterior.data_vars)
    for name, v in crossed[0].posterior.data_vars.items():
        np.testing.assert_array_equal(v.values, crossed[1].posterior[name].values, err_msg=name)
    for name, v in nested[0].posterior.data_vars.items():
        np.testing.assert_array_equal(v.values, nested[1].posterior[name].values, err_msg=name)
    assert "phi" in nb[0][0].posterior and nb[0][1] == nb[1][1]
    for name, v in nb[0][0].posterior.data_vars.items():
        np.testing.assert_array_equal(v.values, nb[1][0].posterior[name].values, err_msg=name)
    assert loo1.elpd_loo == loo2.elpd_loo
    # the rows' log-likelihood equals the in-memory fit's (a Dask frame from pandas is in index order)
    mem = multilevel.fit(formula, df, family="poisson", sampler="sharded", chains=2, warmup=30, draws=40, seed=6,
                         progress=False, log_likelihood=True)
    ll = one.log_likelihood()
    np.testing.assert_allclose(ll.values, mem.log_likelihood().values[:, :, np.argsort(df.index.to_numpy())],
                               rtol=1e-11, atol=1e-11)
    # and LOO partition by partition is ArviZ's on it (the same reff; exact: Metropolis draws repeat, and
    # PSIS's tail fit orders tied values by their rounding)
    import arviz as az

    from multilevel.comparison import _reff, population_dataset

    ref = az.loo(az.InferenceData(posterior=population_dataset(one), log_likelihood=ll.to_dataset(name="y")),
                 reff=_reff(one))
    assert loo1.elpd_loo == pytest.approx(ref.elpd_loo, rel=1e-10)
    assert loo1.p_loo == pytest.approx(ref.p_loo, rel=1e-8)


# -- 4. simulation-based calibration ---------------------------------------------------------------------

SBC_CASES = {
    # a correlated slope and a group-level predictor w (the shift move moves w's coefficient)
    "poisson": ("poisson", "y ~ x + w + (x | g)", 16, 5,
                dict(mu0=[0.3, 0.2], Lambda0=[[0.3, 0.0], [0.0, 0.2]], alpha_mean=[0.2], alpha_cov=[[0.2]],
                     eta0=6.0, S0=[[1.2, 0.2], [0.2, 0.8]])),
    # Poisson's intercept alone: the level sums carried between sweeps, shift and scale moves on them
    "poisson_intercept": ("poisson", "y ~ x + w + (1 | g)", 16, 5,
                          dict(mu0=[0.3], Lambda0=[[0.3]], alpha_mean=[0.2, 0.1], alpha_cov=[[0.2, 0.0], [0.0, 0.2]],
                               eta0=4.0, S0=[[1.0]])),
    # small groups of binary rows: the levels say little, the scale moves carry Sigma
    "bernoulli": ("bernoulli", "y ~ x + (1 | g)", 20, 4,
                  dict(mu0=[0.0], Lambda0=[[0.5]], alpha_mean=[0.3], alpha_cov=[[0.3]], eta0=4.0, S0=[[2.0]])),
}


def sbc_model(case: str) -> multilevel.Model:
    family, formula, J, rows, priors = SBC_CASES[case]
    rng = np.random.default_rng(41)
    g = np.repeat(np.arange(J), rows)
    df = pd.DataFrame({"g": [f"g{k:02d}" for k in g], "x": rng.standard_normal(g.size),
                       "w": rng.standard_normal(J)[g], "y": rng.integers(0, 2, g.size)})
    return multilevel.Model(formula, df, family=family, priors=priors, sampler="sharded")


def sharded_sbc(model: multilevel.Model, n_shards: int, n_reps: int, L: int, thin: int, warmup: int, bins: int,
                seed: int, kernel_factory=lambda kernel: kernel) -> sbc.SBCResult:
    """Per replication: truth from the model's priors, y from the model, one chain of the sharded
    kernel on ``n_shards`` shards (``kernel_factory`` of it: a mutation), the truth's ranks among
    L thinned draws (every factor's Sigma and the first level's beta)."""
    d, family = model.design, model.family.name
    all_ranks = []
    for rep in range(n_reps):
        rng = np.random.default_rng([seed, rep])
        a, Sigma, b, _ = draw_truth(rng, model)
        eta = d.F @ a + sum(np.einsum("ic,ic->i", f.Z, b[f.name][f.index]) for f in d.factors)
        y = (rng.poisson(np.exp(np.minimum(eta, 12.0))) if family == "poisson"
             else rng.binomial(1, 0.5 * (1.0 + np.tanh(0.5 * eta))))
        kernel = kernel_factory(sharded_kernel(model, n_shards, replace(d, y=y.astype(float))))
        res = run_chains(kernel, chains=1, draws=L * thin, warmup=warmup, seed=int(rng.integers(2**32)),
                         progress=False)
        kernel.collect(res)
        draws = {k: sbc.thin(v[0], L) for k, v in res.draws.items()}
        means = [np.where(f.mean_index >= 0, a[np.maximum(f.mean_index, 0)], 0.0) for f in d.factors]
        beta_true = {kernel.beta_names[k]: means[k] + b[f.name] for k, f in enumerate(d.factors)}
        sigma_true = {kernel.sigma_names[k]: Sigma[f.name] for k, f in enumerate(d.factors)}
        theta = a[d.theta_index] if len(d.factors) > 1 else means[0]  # one factor: theta spans its terms
        truth = scalars(kernel.inner, model, theta, a[d.alpha_index], sigma_true, beta_true, None)
        all_ranks.append(sbc.ranks(truth, scalars(kernel.inner, model, draws["theta"], draws["alpha"], draws, draws,
                                                  None)))
    return sbc.collect(all_ranks, L, bins)


def run_sharded_sbc(case: str, n_reps: int, L: int, thin: int, warmup: int, bins: int, seed: int,
                    kernel_factory=lambda kernel: kernel) -> sbc.SBCResult:
    """:func:`sharded_sbc` of case ``case`` on 3 shards."""
    return sharded_sbc(sbc_model(case), 3, n_reps, L, thin, warmup, bins, seed, kernel_factory)


#: the correct sampler's small runs; the control below keeps 200 replications for its power
SBC_SMALL = dict(n_reps=140, L=19, thin=3, warmup=100, bins=5, seed=1401)


@pytest.mark.long
@pytest.mark.parametrize("case", list(SBC_CASES))
def test_sharded_sbc_small(case):
    result = run_sharded_sbc(case, **SBC_SMALL)
    assert result.rejected == [], result.report()


def without_hastings(kernel: ShardedMetropolis) -> ShardedMetropolis:
    """The kernel whose kept sweeps leave the reverse proposal's density out of the rotation moves'
    ratio (warm-up's greedy sweeps, kept on): a plausible coding error."""
    wrong = copy.copy(kernel)
    wrong.step = lambda state, rng: ShardedMetropolis.sweep(wrong, state, rng, False, True)[0]
    return wrong


@pytest.mark.long
def test_sharded_sbc_catches_moves_without_their_hastings_correction():
    result = run_sharded_sbc("poisson", kernel_factory=without_hastings, **{**SBC_SMALL, "n_reps": 200})
    assert result.rejected, result.report()


@pytest.mark.validate
@pytest.mark.parametrize("case", list(SBC_CASES))
def test_sharded_sbc_full(case):
    result = run_sharded_sbc(case, n_reps=600, L=49, thin=6, warmup=200, bins=10, seed=1402)
    print(result.report())
    assert result.rejected == [], result.report()


# -- 5. agreement, outputs, errors -------------------------------------------------------------------------

def assert_means_agree(fits: list, names: tuple[str, ...]) -> None:
    """The two fits' posterior means of ``names`` within Z_MAX of their difference's MCSE."""
    for name in names:
        a, b = (f.posterior[name] for f in fits)
        diff = (a.mean(("chain", "draw")) - b.mean(("chain", "draw"))).values.ravel()
        flat = [x.values.reshape(*x.shape[:2], -1) for x in (a, b)]
        se = np.hypot(mcse_of_means(flat[0]), mcse_of_means(flat[1])).ravel()
        assert np.all(np.abs(diff) < Z_MAX * se), (name, diff, se)


def test_sharded_agrees_with_the_one_term_metropolis_kernel():
    df = glm_frame(5, J=30, rows=10)
    formula = "y ~ x + w + offset(log(expo)) + (x | g)"
    fits = [multilevel.fit(formula, df, family="poisson", sampler=s, chains=4, warmup=500, draws=1000, seed=9,
                           progress=False, cores=1) for s in ("sharded", None)]
    assert_means_agree(fits, ("theta", "alpha", "Sigma"))
    assert fits[0].summary()["r_hat"].max() < 1.01
    assert fits[0].ranef().shape[0] == 60


@pytest.mark.parametrize("call,problem", [
    (lambda df: multilevel.fit("y ~ x + (1 | g)", dd.from_pandas(df, npartitions=2), family="negbinomial",
                               engine="dask", sampler="polya-gamma"), "fits this model with sampler 'sharded'"),
    (lambda df: multilevel.fit("y ~ x + (1 | g)", dd.from_pandas(df, npartitions=2), family="poisson",
                               engine="dask", offset="expo"), "offset(log(exposure))"),
    (lambda df: multilevel.Model("y ~ x + (1 | g)", df, family="poisson", sampler="sharded").fit(
        checkpoint=10, checkpoint_path="x.nc"), "keeps no checkpoints"),
])
def test_refusals_in_one_line(call, problem):
    with pytest.raises(ModelError) as err:
        call(glm_frame(7))
    message = str(err.value)
    assert problem in message and "\n" not in message


def test_cli_fits_a_glm_on_a_local_cluster(tmp_path):
    df = glm_frame(8)
    folder = tmp_path / "parts"
    folder.mkdir()
    for k in range(3):
        df.iloc[k::3].to_parquet(folder / f"part{k}.parquet")
    out = tmp_path / "fit.nc"
    code, _, err = run_main(["fit", folder, "-f", "y ~ x + offset(log(expo)) + (1 | g)", "--family", "poisson", "--engine",
                             "dask", "--workers", "2", "--chains", "1", "--warmup", "20", "--draws", "20", "--out", out])
    assert code == 0, err
    fit = multilevel.load(out)
    assert fit.attrs["sampler_name"] == "sharded" and fit.posterior.sizes["draw"] == 20
    new = df.head(5)
    mean = fit.predict(new, summary=True)["mean"].to_numpy()
    doubled = fit.predict(new.assign(expo=2 * new["expo"]), summary=True)["mean"].to_numpy()
    assert mean.shape == (5,) and np.all(np.isfinite(mean))
    np.testing.assert_allclose(doubled, 2 * mean, rtol=1e-10)  # the offset is coded as in fitting
    # in memory, the CLI offers the same sampler by name, with the same draws for the same seed
    mem_out = tmp_path / "mem.nc"
    code, _, err = run_main(["fit", folder, "-f", "y ~ x + offset(log(expo)) + (1 | g)", "--family", "poisson",
                             "--sampler", "sharded", "--seed", fit.attrs["seed"], "--chains", "1", "--warmup", "20",
                             "--draws", "20", "--out", mem_out])
    assert code == 0, err
    np.testing.assert_allclose(multilevel.load(mem_out).posterior["theta"].values, fit.posterior["theta"].values,
                               rtol=1e-9)
