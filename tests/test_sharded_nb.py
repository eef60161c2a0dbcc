"""The negative binomial (NB2) on the sharded GLM sampler (multilevel.samplers.sharded), in memory
and on Dask.

1. The compiled NB row terms (code 2, n carrying phi) against NumPy and against the derivatives
   of the full log-likelihood; the level move with them against the NumPy reference of
   tests/test_sharded.py; the shards' phi sums against the in-memory sampler's arithmetic.
2. Shards, engines, workers: 1 and 3 shards give the same draws (one factor and two); the Dask
   engine on a Dask DataFrame (no distributed client) gives the in-memory ``sampler="sharded"``
   draws, and its log-likelihood (with phi); 1 and 2 workers of a LocalCluster give identical
   draws and LOO (in tests/test_sharded.py's cluster test, whose clusters it shares).
3. Simulation-based calibration (tests/sbc.py) of a small NB model, phi included, and a control
   that drops the phi move's log-scale Jacobian; a full-size run under ``make validate``.
4. Posterior means (theta, Sigma, phi) agree with the in-memory Polya-Gamma NB sampler's within
   their MCSE; what reads phi after the fit (summary, predict(kind="response"), loo) works.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy.special import gammaln

import multilevel
from multilevel.blockstats import factor_layout
from multilevel.families import NEGBINOMIAL_CODE, fitting_family, negbinomial_loglik
from multilevel.run import run_chains
from multilevel.samplers import sharded
from multilevel.samplers.crossed_metropolis import fixed_terms, level_terms
from multilevel.samplers.negbinomial import distinct_counts, nb_phi_loglik
from multilevel.samplers.shard import level_rotation
from multilevel.samplers.sharded import ShardedMetropolis, ShardSource, factor_order, local_shards

import sbc
from test_crossed_sbc import draw_truth, scalars
from test_sharded import assert_means_agree, assert_shard_count_free, reference_level_move

dd = pytest.importorskip("dask.dataframe")
NB = NEGBINOMIAL_CODE


# -- 1. the row terms, the level move, the phi sums --------------------------------------------------

def nb_case(q: int, rows: int = 4, J: int = 30, phi: float = 2.5, seed: int = 5):
    rng = np.random.default_rng(seed)
    index = np.repeat(np.arange(J), rows).astype(np.int32)
    N = index.size
    Z = np.column_stack([np.ones(N)] + [rng.standard_normal(N) for _ in range(q - 1)])
    eta = 0.5 + 0.3 * rng.standard_normal(N)
    b = 0.4 * rng.standard_normal((J, q))
    mu = np.exp(eta + np.einsum("ic,ic->i", Z, b[index]))
    y = rng.poisson(mu * rng.gamma(phi, 1 / phi, N)).astype(float)
    S = np.array([[0.5, 0.1], [0.1, 0.3]])[:q, :q]
    return y, np.full(N, phi), eta, Z, index, J, np.linalg.inv(S), rng.standard_normal((J, q)), rng.uniform(size=J) ** 0.05


def test_nb_row_terms_match_numpy_and_the_full_loglik_derivatives():
    y, n, eta, Z, index, J, *_ = nb_case(2)
    phi = n[0]
    F = np.column_stack([np.ones_like(eta), Z[:, 1]])
    ll, g, H = fixed_terms(NB, y, n, eta, F, np.zeros(2))
    mu = np.exp(eta)
    part = y * eta - (y + phi) * np.log(phi + mu)
    assert ll == pytest.approx(part.sum(), rel=1e-12)
    # the eta-free rest is the full log-likelihood's: the terms differ from it by a constant in eta
    full = negbinomial_loglik(y, eta, phi)
    rest = gammaln(y + phi) - gammaln(phi) - gammaln(y + 1) + phi * np.log(phi)
    np.testing.assert_allclose(part + rest, full, rtol=1e-12, atol=1e-12)
    h = 1e-5
    score = (negbinomial_loglik(y, eta + h, phi) - negbinomial_loglik(y, eta - h, phi)) / (2 * h)
    np.testing.assert_allclose(g, F.T @ score, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(H, F.T @ (F * (phi * mu / (phi + mu))[:, None]), rtol=1e-12)
    # the Fisher weight (dmu/deta)^2 / Var(y) = mu^2 / (mu + mu^2 / phi)
    np.testing.assert_allclose(phi * mu / (phi + mu), mu**2 / (mu + mu**2 / phi), rtol=1e-12)
    ll_j, g_j, H_j = level_terms(NB, y, n, eta, Z, 0, 2, index, J, np.zeros((J, 2)))
    np.testing.assert_allclose(ll_j, np.bincount(index, part, J), rtol=1e-12)
    np.testing.assert_allclose(g_j[:, 1], np.bincount(index, Z[:, 1] * phi * (y - mu) / (phi + mu), J), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize("hastings", [True, False])
def test_nb_level_move_matches_numpy_reference(q, hastings):
    y, n, eta, Z, index, J, Sinv, z, u = nb_case(q, rows=3, J=30)
    b = 0.2 * np.ones((J, q))
    ref, D_ref = reference_level_move(NB, y, n, eta, Z, index, J, b, Sinv, 1.1, hastings, z, u)
    ll0, g0, H0 = level_terms(NB, y, n, eta, Z, 0, q, index, J, np.zeros((J, q)))
    got, D = b.copy(), np.zeros((J, q))
    accepted = level_rotation(NB, y, n, eta, Z, index, J, got, Sinv, 1.1, hastings, z, u, False, ll0, g0, H0, D)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(D, D_ref, rtol=1e-10, atol=1e-12)
    assert 0 < accepted < J


def nb_frame(seed: int, J: int = 30, rows: int = 8, phi: float = 3.0) -> pd.DataFrame:
    """y ~ NB(mu, phi) (a gamma-Poisson mixture), log mu = 0.3 + 0.4 x + log(expo) + b_g + b_g,x x + c_h."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), rows)
    h = rng.integers(0, 5, g.size)
    x, expo = rng.standard_normal(g.size), rng.uniform(0.5, 2.0, g.size)
    b = rng.multivariate_normal([0, 0], [[0.3, 0.05], [0.05, 0.1]], J)
    eta = 0.3 + 0.4 * x + np.log(expo) + b[g, 0] + b[g, 1] * x + 0.3 * rng.standard_normal(5)[h]
    y = rng.poisson(np.exp(eta) * rng.gamma(phi, 1 / phi, g.size))
    return pd.DataFrame({"g": [f"g{k:03d}" for k in g], "h": h, "x": x, "expo": expo, "y": y}).sample(
        frac=1, random_state=seed)


def nb_kernel(model: multilevel.Model, n_shards: int, design=None) -> ShardedMetropolis:
    d = model.design if design is None else design
    shards = local_shards(d, NB, n_shards)
    a_start = ShardSource(shards, factor_order(d)).pooled_glm(fitting_family(model.family))[0]
    return ShardedMetropolis(shards, d, factor_layout(d, small_columns=0), model.priors, a_start, d.n_obs, NB)


def test_shards_phi_sums_are_the_in_memory_samplers():
    df = nb_frame(1)
    model = multilevel.Model("y ~ x + offset(log(expo)) + (x | g)", df, family="negbinomial", sampler="sharded")
    kernel = nb_kernel(model, 3)
    state = kernel.init(np.random.default_rng(1))
    kernel.sweep(state, np.random.default_rng(2), True, False)  # the shards' eta at the sweep's state
    d = model.design
    a = 0.1 * np.ones(d.F.shape[1])
    points = np.array([0.2, 0.9, -1.5])
    (got,) = sharded._summed(kernel.shards.call("dispersion_terms", state.key, a, 0, -1, 0.0, points))
    eta = np.concatenate([s.eta + s.rows.F @ a for s in kernel.shards.shards])
    y = np.concatenate([s.rows.y for s in kernel.shards.shards])
    want = nb_phi_loglik(y, eta, *distinct_counts(y), points)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    full = [negbinomial_loglik(y, eta, np.exp(v)).sum() + gammaln(y + 1).sum() for v in points]
    np.testing.assert_allclose(got, full, rtol=1e-10)


def test_the_phi_steps_of_one_round_are_those_of_one_round_each():
    """The points the steps can reach: entry m is log phi plus the steps of m's bits. Taking the
    steps from those points' log-likelihoods is the chain of PHI_STEPS one-step rounds: checked
    against that chain, step by step, on a stand-in target."""
    steps = np.array([0.3, -0.7, 0.11])
    points = sharded.reachable_points(1.0, steps)
    assert points.size == 8 and points[0] == 1.0 and points[0b101] == pytest.approx(1.0 + 0.3 + 0.11, abs=1e-15)
    target = lambda v: -0.5 * (v - 0.4) ** 2 / 0.09  # noqa: E731
    for seed in range(50):
        log_u = np.log(np.random.default_rng(seed).random(3))
        at = 0
        for t in range(3):
            to = at | (1 << t)
            at = to if log_u[t] < target(points[to]) - target(points[at]) else at
        here = 1.0  # one step a round
        for t in range(3):
            there = here + steps[t]
            here = there if log_u[t] < target(there) - target(here) else here
        assert points[at] == pytest.approx(here, abs=1e-15)


def test_priors_from_shards_equal_the_in_memory_ones():
    """The NB defaults (Poisson fits, NB2's unit information) from the shards equal the in-memory
    sampler's from the rows: both samplers target the same posterior."""
    df = nb_frame(7)
    for formula in ("y ~ x + offset(log(expo)) + (x | g)", "y ~ x + (1 | h) + (1 | g)"):
        shard, rows = (multilevel.Model(formula, df, family="negbinomial", sampler=s).priors for s in ("sharded", None))
        np.testing.assert_allclose(shard.mu0, rows.mu0, rtol=1e-8)
        np.testing.assert_allclose(shard.Lambda0, rows.Lambda0, rtol=1e-8)
        for name in rows.S0:
            np.testing.assert_allclose(shard.S0[name], rows.S0[name], rtol=1e-7)
        assert shard.phi_rate == rows.phi_rate == 1.0


# -- 2. shards, engines and workers ------------------------------------------------------------------

@pytest.mark.parametrize("formula,shapes", [
    ("y ~ x + offset(log(expo)) + (x | g)", {"beta": (30, 2)}),
    ("y ~ x + (1 | h) + (1 | g)", {"beta_g": (30, 1), "beta_h": (5, 1)})], ids=["one factor", "two factors"])
def test_one_shard_and_three_give_the_same_draws(formula, shapes):
    model = multilevel.Model(formula, nb_frame(2), family="negbinomial", sampler="sharded")
    draws = assert_shard_count_free(lambda n_shards: nb_kernel(model, n_shards), shapes)
    assert np.std(draws["phi"]) > 0 and 0 < draws["accept_phi"].mean() < 1


def test_rounds_per_sweep():
    """3 rounds with one factor (sweep, evaluate, phi), 5 with two (sweep, the other factor's
    proposals, the fixed move's terms, evaluate, phi)."""
    for formula, rounds in [("y ~ x + (x | g)", 3), ("y ~ x + (1 | h) + (1 | g)", 5)]:
        model = multilevel.Model(formula, nb_frame(3), family="negbinomial", sampler="sharded")
        kernel = nb_kernel(model, 2)
        state = kernel.init(np.random.default_rng(0))
        calls = []
        call = kernel.shards.call
        kernel.shards.call = lambda name, *args: (calls.append(name), call(name, *args))[1]
        for _ in range(4):
            state = kernel.sweep(state, np.random.default_rng(len(calls)), True, True)[0]
        assert len(calls) == 4 * rounds and calls.count("dispersion_terms") == 4, (formula, calls)  # 3 steps each


@pytest.mark.parametrize("formula", ["y ~ x + offset(log(expo)) + (x | g)", "y ~ x + (1 | h) + (1 | g)"])
def test_dask_engine_equals_in_memory_sharded(formula):
    df = nb_frame(4)
    mem = multilevel.fit(formula, df, family="negbinomial", sampler="sharded", chains=2, warmup=30, draws=40, seed=4,
                         progress=False)
    dsk = multilevel.fit(formula, dd.from_pandas(df, npartitions=3), family="negbinomial", engine="dask", chains=2,
                         warmup=30, draws=40, seed=4, progress=False)
    assert dsk.attrs["sampler_name"] == "sharded" and dsk.attrs["engine"] == "dask"
    assert "phi" in dsk.posterior and "phi" in mem.posterior
    for name, v in mem.posterior.data_vars.items():
        np.testing.assert_allclose(dsk.posterior[name].values, v.values, rtol=1e-9, atol=1e-11, err_msg=name)


def test_dask_fit_log_likelihood_and_loo_read_phi():
    """The Dask fit's pointwise log-likelihood (partition by partition, with phi) equals the
    in-memory fit's, and its LOO is ArviZ's on it (1 and 2 workers of a LocalCluster:
    test_sharded.py's cluster test)."""
    import arviz as az

    from multilevel.comparison import _reff, population_dataset

    df = nb_frame(5, J=20, rows=6)
    formula = "y ~ x + offset(log(expo)) + (1 | g)"
    run = dict(family="negbinomial", chains=2, warmup=20, draws=30, seed=6, progress=False)
    dsk = multilevel.fit(formula, dd.from_pandas(df, npartitions=3), engine="dask", **run)
    mem = multilevel.fit(formula, df, sampler="sharded", log_likelihood=True, **run)
    ll = dsk.log_likelihood()
    np.testing.assert_allclose(ll.values, mem.log_likelihood().values[:, :, np.argsort(df.index.to_numpy())],
                               rtol=1e-11, atol=1e-11)
    ref = az.loo(az.InferenceData(posterior=population_dataset(dsk), log_likelihood=ll.to_dataset(name="y")),
                 reff=_reff(dsk))
    assert dsk.loo().elpd_loo == pytest.approx(ref.elpd_loo, rel=1e-10)


# -- 3. simulation-based calibration ---------------------------------------------------------------

#: a small NB model: 12 groups of 6 rows, proper priors; phi_rate 2 keeps phi's prior mostly in
#: [0.4, 100] (1 / sqrt(phi) ~ Exponential(2))
SBC_MODEL = ("y ~ x + (1 | g)", 12, 6,
             dict(mu0=[0.5], Lambda0=[[0.3]], alpha_mean=[0.3], alpha_cov=[[0.2]], eta0=4.0, S0=[[1.0]], phi_rate=2.0))


def sbc_model() -> multilevel.Model:
    formula, J, rows, priors = SBC_MODEL
    rng = np.random.default_rng(43)
    g = np.repeat(np.arange(J), rows)
    df = pd.DataFrame({"g": [f"g{k:02d}" for k in g], "x": rng.standard_normal(g.size), "y": rng.integers(0, 4, g.size)})
    return multilevel.Model(formula, df, family="negbinomial", priors=priors, sampler="sharded")


def run_nb_sbc(n_reps: int, L: int, thin: int, warmup: int, bins: int, seed: int, n_shards: int
               ) -> sbc.SBCResult:
    """Per replication: a, Sigma, b and phi (1 / sqrt(phi) ~ Exponential(phi_rate)) from the
    priors, y ~ NB, one chain of the kernel on ``n_shards`` shards, the truth's ranks among L
    thinned draws."""
    model = sbc_model()
    d, rate = model.design, model.priors.phi_rate
    all_ranks = []
    for rep in range(n_reps):
        rng = np.random.default_rng([seed, rep])
        a, Sigma, b, _ = draw_truth(rng, model)
        phi = rng.exponential(1.0 / rate) ** -2.0
        eta = d.F @ a + sum(np.einsum("ic,ic->i", f.Z, b[f.name][f.index]) for f in d.factors)
        y = rng.poisson(np.exp(np.minimum(eta, 10.0)) * rng.gamma(phi, 1.0 / phi, eta.shape[0]))
        kernel = nb_kernel(model, n_shards, replace(d, y=y.astype(float)))
        res = run_chains(kernel, chains=1, draws=L * thin, warmup=warmup, seed=int(rng.integers(2**32)),
                         progress=False)
        kernel.collect(res)
        draws = {k: sbc.thin(v[0], L) for k, v in res.draws.items()}
        f = d.factors[0]
        mean = np.where(f.mean_index >= 0, a[np.maximum(f.mean_index, 0)], 0.0)
        truth = scalars(kernel.inner, model, mean, a[d.alpha_index], {kernel.sigma_names[0]: Sigma[f.name]},
                        {kernel.beta_names[0]: mean + b[f.name]}, None)
        truth["phi"] = np.asarray(phi)
        got = scalars(kernel.inner, model, draws["theta"], draws["alpha"], draws, draws, None)
        got["phi"] = draws["phi"]
        all_ranks.append(sbc.ranks(truth, got))
    return sbc.collect(all_ranks, L, bins)


#: one shard (the shards' count changes the draws only by the rounding of the sums: part 2); the
#: control's phi is rejected at p ~ 1e-9 with these settings
SBC_SMALL = dict(n_reps=100, L=19, thin=2, warmup=60, bins=5, seed=1501, n_shards=1)


def test_nb_sbc_small():
    result = run_nb_sbc(**SBC_SMALL)
    assert "phi" in result.report()
    assert result.rejected == [], result.report()


def test_nb_sbc_catches_a_phi_move_without_its_jacobian(monkeypatch):
    """The prior density of phi taken for that of log phi (log p(phi) = log p(log phi) - log phi:
    the log-scale Jacobian dropped), a plausible coding error, which SBC must see in phi's ranks."""
    right = sharded.log_prior_phi
    monkeypatch.setattr(sharded, "log_prior_phi", lambda log_phi, rate: right(log_phi, rate) - log_phi)
    result = run_nb_sbc(**SBC_SMALL)
    assert "phi" in result.rejected, result.report()


@pytest.mark.validate
def test_nb_sbc_full():
    result = run_nb_sbc(n_reps=600, L=49, thin=6, warmup=200, bins=10, seed=1502, n_shards=3)
    print(result.report())
    assert result.rejected == [], result.report()


# -- 4. agreement with the in-memory NB sampler, and what reads phi ------------------------------------

def test_sharded_agrees_with_the_polya_gamma_nb_sampler():
    df = nb_frame(6, J=25, rows=8)
    formula = "y ~ x + offset(log(expo)) + (x | g)"
    fits = [multilevel.fit(formula, df, family="negbinomial", sampler=s, chains=2, warmup=300, draws=1000, seed=9,
                           progress=False, cores=1) for s in ("sharded", None)]
    assert fits[0].attrs["sampler_name"] == "sharded" and fits[1].attrs["sampler_name"] == "polya-gamma"
    assert_means_agree(fits, ("theta", "Sigma", "phi"))
    fit = fits[0]
    assert fit.residual().shape[0] == 1 and "Dispersion" in fit.report()
    pred = fit.predict(df.head(4), kind="response", summary=True)
    assert np.all(np.isfinite(pred["mean"].to_numpy()))
    assert np.isfinite(fit.loo().elpd_loo)
