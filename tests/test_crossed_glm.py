"""Binomial and Bernoulli models with several grouping factors: the Polya-Gamma sampler of
:mod:`multilevel.samplers.polya_gamma` (issue 13).

1. Conditional exactness. Given the Polya-Gamma weights omega (drawn once, then fixed) and
   the variances (priors pinning Sigma_k: eta0_k = 1e7, S0_k = (eta0_k - q_k - 1) Sigma_k, as
   test_crossed.py pins them), the location effects u = (t, b) have the Gaussian conditional

       u | omega, Sigma ~ N(Q^-1 l, Q^-1),   Q = K + D'ΩD,   l = K m + D'(kappa - Ω offset),

   D the dense row design in the kernel's coordinates (built here from the factors' raw
   levels and covariates), K and m the prior precision and mean (Pi_a on the fixed effects,
   Sigma_k^-1 per level), kappa = y - n / 2. Chains of the crossed sweep with sigma2 = 1 on the
   statistics refreshed for that omega are compared with it: means within Z_MAX Monte Carlo
   standard errors, covariances on the correlation scale within Z_MAX sqrt(2 / ESS) (the
   criterion of test_crossed.py), on a layout with both factors large (a Gibbs scan over
   the factors) and one with the small factor in the dense block. A closed form with the
   offset or the prior left out must fail the same criterion.

2. Refreshed statistics: for random weights, :func:`weighted_stats`'s G, linear terms, A
   blocks and the values of W and C on the fixed patterns equal (densely) those
   :func:`multilevel.blockstats.block_stats` computes from scratch for the weighted model with
   response kappa / omega - offset and precision weights omega, on three layouts of a model
   with a correlated two-term factor, two intercept factors and an offset. The linear
   predictor and the log-likelihood the kernel keeps equal those of the rows.

3. Agreement with lme4 ``glmer`` (Laplace) on tests/data/nested_bernoulli.csv
   (tests/lme4_crossed.py, default priors, 4 chains x 1000 draws): fixed effects' posterior
   means within 0.5 lme4 standard errors and posterior sds within 15 % of them; each
   variance's posterior median within 0.5 posterior sd of glmer's estimate (the Laplace
   estimate is a mode-like point estimate of a right-skewed posterior on 30 and 121 levels;
   measured: fixed effects |z| <= 0.04, sd/se within 1 %; variances within 0.16 posterior sd).

4. Simulation-based calibration (tests/sbc.py) of ``y ~ x + (x | s) + (1 | i)``, Bernoulli,
   12 subjects crossed with 10 items: truth from proper priors, one chain per replication;
   200 replications in the default suite (both factors large: the inverse-Wishart draw of the
   correlated Sigma_s, the slice move of Sigma_i, the collapsed draws of t), 800 under the
   ``validate`` marker on that layout and the default one (both factors in the dense block).
   The same small run with untilted weights, omega ~ PG(n, 0), must be rejected.

5. Determinism (same seed, same draws on one core and two), the one-term option
   (``sampler="polya-gamma"`` with one grouping factor agrees with the Metropolis kernel),
   the fit's outputs (names, log-likelihood and LOO, posterior predictive, predictions with
   ``re_form`` on the response scale, offsets and trials, saving and loading), and one-line
   errors.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import multilevel
from multilevel.blockstats import block_stats, factor_layout
from multilevel.glmfit import pooled_glm
from multilevel.run import run_chains
from multilevel.samplers.polya_gamma import PolyaGammaGibbs, PolyaGammaState

import sbc
from lme4_crossed import DATA_DIR, LME4_CROSSED, assert_agrees_with_glmer
from test_crossed import Z_MAX, ess, mcse_of_means
from test_crossed_sbc import draw_truth, scalars


LEVELS = {"a": 12, "b": 8, "c": 5}
SIGMA = {"a": np.array([[0.6, 0.15], [0.15, 0.3]]), "b": np.array([[0.4]]), "c": np.array([[0.5]])}
KNOWN = 1e7


def logistic(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def glm_frame(seed: int, n: int = 120, trials: bool = False) -> pd.DataFrame:
    """``n`` rows with levels of a, b and c at random (every level at least once; labels sort
    as their index ``ia``, ``ib``, ``ic``), covariates x and z, an offset ``off``, and a
    response from ``logit p = off + 0.3 + 0.8 x - 0.5 z + (x | a) + (1 | b) + (1 | c)``:
    Bernoulli ``y``, and with ``trials`` successes ``k`` of ``n_trials`` in 1..6."""
    rng = np.random.default_rng(seed)
    cols = {}
    for f, J in LEVELS.items():
        index = rng.permutation(np.concatenate([np.arange(J), rng.integers(0, J, n - J)]))
        cols[f], cols[f"i{f}"] = [f"{f}{j:02d}" for j in index], index
    df = pd.DataFrame(cols).assign(x=rng.standard_normal(n), z=rng.standard_normal(n), off=rng.uniform(-0.5, 0.5, n))
    b_a = rng.multivariate_normal(np.zeros(2), SIGMA["a"], LEVELS["a"])[df["ia"]]
    eta = (df["off"] + 0.3 + 0.8 * df["x"] - 0.5 * df["z"] + b_a[:, 0] + b_a[:, 1] * df["x"]
           + rng.normal(0, np.sqrt(SIGMA["b"][0, 0]), LEVELS["b"])[df["ib"]]
           + rng.normal(0, np.sqrt(SIGMA["c"][0, 0]), LEVELS["c"])[df["ic"]])
    df["y"] = rng.binomial(1, logistic(eta.to_numpy()))
    df["n_trials"] = rng.integers(1, 7, n)
    df["k"] = rng.binomial(df["n_trials"], logistic(eta.to_numpy()))
    return df


def pg_kernel(model: multilevel.Model, small_columns: int | None = None, design=None) -> PolyaGammaGibbs:
    """The Polya-Gamma kernel of ``model`` (its design unless ``design``) on a chosen layout."""
    d = model.design if design is None else design
    layout = factor_layout(d) if small_columns is None else factor_layout(d, small_columns=small_columns)
    a_start = pooled_glm(model.family, d.F, np.asarray(d.y, dtype=float), d.trials, d.offset)[0]
    return PolyaGammaGibbs(d, layout, model.priors, a_start)


def dense_design(kernel: PolyaGammaGibbs, design) -> np.ndarray:
    """The rows' design in the kernel's coordinates u = (t, b), from the raw factor levels and
    covariates: F in the first columns, then per factor its level columns at the layout's
    offset (within t for a small factor, after t for a large one)."""
    L, st = kernel.layout, kernel.inner.stats
    P, nb = st.G.shape[0], st.Xty_b.shape[0]
    n = design.n_obs
    D = np.zeros((n, P + nb))
    D[:, :design.F.shape[1]] = design.F
    for k, f in enumerate(design.factors):
        first = L.off[k] + (P if L.large[k] else 0)
        for c in range(f.q):
            D[np.arange(n), first + f.index * f.q + c] = f.Z[:, c]
    return D


def prior_precision(kernel: PolyaGammaGibbs, design, Sigma: dict) -> tuple[np.ndarray, np.ndarray]:
    """(K, K m): the prior precision of u and its linear term (fixed effects from the resolved
    priors, Sigma_k^-1 per level)."""
    L, st, pr = kernel.layout, kernel.inner.stats, kernel.priors
    P, nb, p = st.G.shape[0], st.Xty_b.shape[0], design.F.shape[1]
    K, h = np.zeros((P + nb, P + nb)), np.zeros(P + nb)
    for idx, m0, cov in ((design.theta_index, pr.mu0, pr.Lambda0), (design.alpha_index, pr.alpha_mean, pr.alpha_cov)):
        if len(idx):
            inv = np.linalg.inv(cov)
            K[np.ix_(idx, idx)], h[idx] = inv, inv @ m0
    for k, f in enumerate(design.factors):
        first = L.off[k] + (P if L.large[k] else 0)
        inv = np.linalg.inv(Sigma[f.name])
        for j in range(f.n_levels):
            sl = slice(first + j * f.q, first + (j + 1) * f.q)
            K[sl, sl] = inv
    assert p == len(design.theta_index) + len(design.alpha_index)
    return K, h


# -- 1. conditional exactness -------------------------------------------------------------------

EXACT_FORMULA = "y ~ x + z + (x | a) + (1 | b)"


def exact_priors() -> dict:
    return dict(mu0=[0.2, 0.5], Lambda0=[[0.8, 0.2], [0.2, 0.6]], alpha_mean=[-0.2], alpha_cov=[[0.5]],
                eta0={f: KNOWN for f in "ab"}, S0={f: (KNOWN - SIGMA[f].shape[0] - 1) * SIGMA[f] for f in "ab"})


class FixedWeights:
    """A kernel of the crossed sweep with sigma2 = 1 on the statistics of fixed weights omega:
    its chain targets u, Sigma | omega."""

    def __init__(self, kernel: PolyaGammaGibbs, omega: np.ndarray):
        self.kernel, (self.stats, self.groups) = kernel, kernel.statistics(omega)

    def init(self, rng):
        return self.kernel.init(rng)

    def step(self, state, rng):
        t, b, Sigma, sigma2, _ = self.kernel.inner.sweep(rng, self.stats, self.groups, state.t, state.b, state.Sigma)
        assert sigma2 == 1.0
        return PolyaGammaState(t, b, Sigma)

    def record(self, state):
        return {"u": np.concatenate([state.t, state.b]), "Sigma": state.Sigma.copy()}


def conditional(kernel, design, omega, with_offset=True, with_prior=True):
    """Mean and covariance of u | omega, Sigma (module docstring), dense."""
    D = dense_design(kernel, design)
    K, h = prior_precision(kernel, design, SIGMA)
    if not with_prior:
        K, h = 0 * K + np.diag(np.diag(K)) * (np.arange(K.shape[0]) >= design.F.shape[1]), 0 * h
    kappa = design.y - 0.5 * design.trials
    off = design.offset if with_offset else 0.0
    Q = K + D.T @ (omega[:, None] * D)
    cov = np.linalg.inv(Q)
    return cov @ (h + D.T @ (kappa - omega * off)), cov


@pytest.fixture(scope="module", params=[0, 10], ids=["all large", "mixed"])
def exact_case(request):
    df = glm_frame(5)
    model = multilevel.Model(EXACT_FORMULA, df, family="bernoulli", priors=exact_priors(), offset="off",
                             sampler="polya-gamma")
    d = model.design
    assert [list(f.labels) for f in d.factors] == [[f"{f}{j:02d}" for j in range(LEVELS[f])] for f in "ab"]
    kernel = pg_kernel(model, request.param)
    assert kernel.layout.large.tolist() == {0: [True, True], 10: [True, False]}[request.param]
    eta = np.random.default_rng(1).normal(0.0, 1.5, d.n_obs)
    omega = kernel.draw_omega(eta, np.random.default_rng(2))
    chains, draws = 4, 4000
    out = run_chains(FixedWeights(kernel, omega), chains=chains, draws=draws, warmup=200, seed=3, cores=1,
                     progress=False).draws
    return kernel, d, omega, out


def draw_errors(u: np.ndarray, mean: np.ndarray, cov: np.ndarray, subset: np.ndarray):
    """z-scores of the means; covariance errors of ``subset`` on the correlation scale, and delta."""
    z = (u.mean(axis=(0, 1)) - mean) / mcse_of_means(u)
    c = u[..., subset] - u[..., subset].mean(axis=(0, 1))
    ia, ib = np.tril_indices(len(subset))
    prod = c[..., ia] * c[..., ib]
    n = min(float(ess(prod).min()), float(prod.shape[0] * prod.shape[1]))
    sub = cov[np.ix_(subset, subset)]
    sd = np.sqrt(np.diag(sub))
    return z, (prod.mean(axis=(0, 1)) - sub[ia, ib]) / (sd[ia] * sd[ib]), Z_MAX * np.sqrt(2.0 / n)


def test_location_draws_match_the_weighted_gaussian_conditional(exact_case):
    kernel, d, omega, out = exact_case
    np.testing.assert_allclose(out["Sigma"], np.broadcast_to(out["Sigma"][0, 0], out["Sigma"].shape), rtol=5e-3)
    mean, cov = conditional(kernel, d, omega)
    subset = np.r_[0:7, kernel.inner.stats.G.shape[0]:kernel.inner.stats.G.shape[0] + 3]
    z, err, delta = draw_errors(out["u"], mean, cov, subset)
    assert np.abs(z).max() < Z_MAX, f"means off: z = {np.round(z, 2)}"
    assert np.abs(err).max() < delta, f"covariances off: {np.abs(err).max():.3f} > {delta:.3f}"
    np.testing.assert_allclose(out["u"].std(axis=(0, 1)), np.sqrt(np.diag(cov)), rtol=0.05)


@pytest.mark.parametrize("wrong", ["offset left out", "fixed-effect prior left out"])
def test_exact_criterion_rejects_a_wrong_conditional(exact_case, wrong):
    kernel, d, omega, out = exact_case
    mean, cov = conditional(kernel, d, omega, with_offset=wrong != "offset left out",
                            with_prior=wrong != "fixed-effect prior left out")
    subset = np.r_[0:7, kernel.inner.stats.G.shape[0]:kernel.inner.stats.G.shape[0] + 3]
    z, err, delta = draw_errors(out["u"], mean, cov, subset)
    assert np.abs(z).max() > Z_MAX or np.abs(err).max() > delta


# -- 2. refreshed statistics ----------------------------------------------------------------------

STATS_FORMULA = "y ~ x + z + (x | a) + (1 | b) + (1 | c)"


def dense(ptr: np.ndarray, col: np.ndarray, val: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape)
    for row in range(shape[0]):
        np.add.at(out[row], col[ptr[row]:ptr[row + 1]], val[ptr[row]:ptr[row + 1]])
    return out


@pytest.mark.parametrize("small", [0, 6, 10**6], ids=["all large", "b and c small", "all small"])
def test_refreshed_statistics_equal_block_stats_from_scratch(small):
    df = glm_frame(8)
    model = multilevel.Model(STATS_FORMULA, df, family="bernoulli", offset="off")
    d = model.design
    kernel = pg_kernel(model, small)
    L = kernel.layout
    assert L.large.tolist() == {0: [True] * 3, 6: [True, True, False], 10**6: [False] * 3}[small]
    rng = np.random.default_rng(9)
    for _ in range(2):
        omega = rng.uniform(0.02, 1.5, d.n_obs)
        got, groups = kernel.statistics(omega)
        z = (d.y - 0.5 * d.trials) / omega - d.offset
        want = block_stats(replace(d, y=z, weights=omega), L)
        P, nb = want.G.shape[0], want.Xty_b.shape[0]
        for name in ("G", "Xty_t", "Xty_b", "A"):
            np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-10, atol=1e-10, err_msg=name)
        for name in ("W", "C"):
            shape = (nb, P) if name == "W" else (nb, nb)
            parts = [(getattr(s, f"{name}_ptr"), getattr(s, f"{name}_col"), getattr(s, f"{name}_val")) for s in (got, want)]
            np.testing.assert_allclose(dense(*parts[0], shape), dense(*parts[1], shape), rtol=1e-10, atol=1e-10,
                                       err_msg=name)
        # the one-term large factors' groups are single levels, with their A
        for k in np.flatnonzero(L.large & (L.q == 1)):
            g0, g1 = groups[1][k], groups[1][k + 1]
            np.testing.assert_array_equal(groups[3][g0:g1], got.A[L.A_off[k]:L.A_off[k] + L.J[k]])


def test_linear_predictor_and_loglik_from_the_rows():
    df = glm_frame(8)
    model = multilevel.Model(STATS_FORMULA, df, family="bernoulli", offset="off")
    kernel = pg_kernel(model, 6)
    state = kernel.init(np.random.default_rng(1))
    state = kernel.step(state, np.random.default_rng(2))
    D = dense_design(kernel, model.design)
    eta = df["off"].to_numpy() + D @ np.concatenate([state.t, state.b])
    np.testing.assert_allclose(kernel.eta(state.t, state.b), eta, rtol=1e-12, atol=1e-12)
    y = df["y"].to_numpy()
    assert kernel.record(state)["loglik"] == pytest.approx(float(np.sum(y * eta - np.logaddexp(0.0, eta))), rel=1e-12)


# -- 3. agreement with lme4 glmer -----------------------------------------------------------------

@pytest.fixture(scope="module")
def nested_bernoulli_fit():
    ref = LME4_CROSSED["nested_bernoulli"]
    df = pd.read_csv(DATA_DIR / ref["file"])
    return ref, multilevel.fit(ref["formula"], df, family="bernoulli", chains=4, warmup=500, draws=1000, seed=13,
                               cores=1, progress=False)


def test_nested_bernoulli_agrees_with_glmer(nested_bernoulli_fit):
    ref, fit = nested_bernoulli_fit
    post = fit.posterior
    assert fit.attrs["sampler_name"] == "polya-gamma"
    assert sorted(post.data_vars) == ["Sigma_district", "Sigma_district:village", "alpha", "beta_district",
                                      "beta_district:village", "theta"]
    assert {f: post.sizes[f] for f in ref["groups"]} == ref["groups"]
    assert_agrees_with_glmer(post, ref)
    assert fit.summary()["r_hat"].max() < 1.01


# -- 4. simulation-based calibration ----------------------------------------------------------------

SBC_FORMULA = "y ~ x + (x | s) + (1 | i)"
#: E[Sigma_s] = S0 / (eta0 - 3) = [[0.5, 0.1], [0.1, 0.3]], E[Sigma_i] = 2 / (6 - 2) = 0.5
SBC_PRIORS = dict(mu0=[0.2, 0.5], Lambda0=[[0.5, 0.1], [0.1, 0.3]], eta0={"s": 7.0, "i": 6.0},
                  S0={"s": [[2.0, 0.4], [0.4, 1.2]], "i": [[2.0]]})


def sbc_model() -> tuple[multilevel.Model, np.ndarray]:
    """12 subjects crossed with 10 items, one Bernoulli row per cell, x at random."""
    rng = np.random.default_rng(21)
    s, i = np.meshgrid(np.arange(12), np.arange(10), indexing="ij")
    df = pd.DataFrame({"s": [f"s{k:02d}" for k in s.ravel()], "i": [f"i{k}" for k in i.ravel()],
                       "x": rng.standard_normal(s.size), "y": rng.integers(0, 2, s.size)})
    model = multilevel.Model(SBC_FORMULA, df, family="bernoulli", priors=SBC_PRIORS)
    return model, np.column_stack([np.ones(s.size), df["x"]])


def run_glm_sbc(n_reps: int, L: int, thin: int, warmup: int, bins: int, seed: int, small_columns: int = 0
                ) -> sbc.SBCResult:
    """Per replication: truth from the priors (scipy's samplers), y ~ Bernoulli(logistic(eta)),
    one chain of ``warmup`` + L x thin sweeps, the truth's ranks among L thinned draws."""
    model, F = sbc_model()
    d = model.design
    assert model.priors.nu0 is None
    all_ranks = []
    for rep in range(n_reps):
        rng = np.random.default_rng([seed, rep])
        a, Sigma, b, _ = draw_truth(rng, model)
        eta = F @ a + sum(np.einsum("ic,ic->i", f.Z, b[f.name][f.index]) for f in d.factors)
        design = replace(d, y=rng.binomial(1, logistic(eta)).astype(float))
        truth, post, _ = truth_and_draws(pg_kernel(model, small_columns, design), model, a, Sigma, b, rng, L, thin,
                                         warmup)
        all_ranks.append(sbc.ranks(truth, post))
    return sbc.collect(all_ranks, L, bins)


def truth_and_draws(kernel, model: multilevel.Model, a, Sigma, b, rng: np.random.Generator, L: int, thin: int,
                    warmup: int) -> tuple[dict, dict, dict]:
    """One SBC replication of a several-factor kernel: one chain of ``warmup`` + L x thin sweeps
    (seeded from ``rng``); the true scalars (:func:`test_crossed_sbc.scalars`) of (a, Sigma, b),
    their L thinned draws, and all L thinned records."""
    d = model.design
    res = run_chains(kernel, chains=1, draws=L * thin, warmup=warmup, seed=int(rng.integers(2**32)), cores=1,
                     progress=False)
    draws = {k: sbc.thin(v[0], L) for k, v in res.draws.items()}
    beta_true = {bet: a[np.maximum(f.mean_index, 0)] * (f.mean_index >= 0) + b[f.name]
                 for f, bet in zip(d.factors, kernel.beta_names)}
    truth = scalars(kernel.inner, model, a[d.theta_index], a[d.alpha_index],
                    dict(zip(kernel.sigma_names, Sigma.values())), beta_true, None)
    return truth, scalars(kernel.inner, model, draws["theta"], draws["alpha"], draws, draws, None), draws


SMALL = dict(n_reps=200, L=19, thin=4, warmup=100, bins=5, seed=1301)


def test_crossed_bernoulli_sbc_small():
    result = run_glm_sbc(**SMALL)
    assert result.rejected == [], result.report()


class Untilted(PolyaGammaGibbs):
    """The kernel with omega ~ PG(n, 0) instead of PG(n, eta): the weights of the prior's
    augmentation, not the conditional's."""

    def draw_omega(self, eta, rng):
        return super().draw_omega(np.zeros_like(eta), rng)


def test_crossed_bernoulli_sbc_catches_untilted_weights(monkeypatch):
    """The small run with omega drawn without its tilting must be rejected (measured: theta[x],
    Sigma_s and beta_s[s00, x] at p = 2e-8 to 7e-6 against the threshold 1.1e-3)."""
    build = pg_kernel

    def untilted(*args, **kwargs):
        kernel = build(*args, **kwargs)
        kernel.__class__ = Untilted
        return kernel

    monkeypatch.setattr(__import__(__name__), "pg_kernel", untilted)
    result = run_glm_sbc(**SMALL)
    assert "theta[x]" in result.rejected, result.report()


@pytest.mark.validate
@pytest.mark.parametrize("small_columns", [0, None], ids=["all large", "default layout"])
def test_crossed_bernoulli_sbc_full(small_columns):
    result = run_glm_sbc(n_reps=800, L=49, thin=10, warmup=200, bins=10, seed=1302, small_columns=small_columns)
    print(result.report())
    assert result.rejected == [], result.report()


# -- 5. determinism, one term, outputs, errors -------------------------------------------------------

def test_same_seed_same_draws_on_one_core_and_two():
    df = glm_frame(11)
    model = multilevel.Model("y ~ x + (1 | a) + (1 | b)", df, family="bernoulli")
    one = model.fit(chains=2, warmup=20, draws=30, seed=5, cores=1, progress=False)
    two = model.fit(chains=2, warmup=20, draws=30, seed=5, cores=2, progress=False)
    for name, v in one.posterior.data_vars.items():
        np.testing.assert_array_equal(v.values, two.posterior[name].values, err_msg=name)
    np.testing.assert_array_equal(one.group("sample_stats")["loglik"].values,
                                  two.group("sample_stats")["loglik"].values)
    again = model.fit(chains=2, warmup=20, draws=30, seed=6, cores=1, progress=False)
    assert not np.array_equal(again.posterior["theta"].values, one.posterior["theta"].values)


ONE_TERM_PRIORS = dict(mu0=[0.3], Lambda0=[[1.0]], alpha_mean=[0.5], alpha_cov=[[1.0]], eta0=3.0, S0=[[0.5]])


def test_one_term_polya_gamma_agrees_with_the_metropolis_kernel():
    """``sampler="polya-gamma"`` with one grouping factor runs the crossed kernel on one factor
    (output as one-term fits: theta, alpha, Sigma, beta); with the same priors its posterior
    means agree with the default Metropolis kernel's within Monte Carlo error (measured:
    |z| <= 1.8 over theta, alpha, Sigma and three groups' beta)."""
    df = glm_frame(14, n=400)
    fits = {}
    for sampler in ("polya-gamma", None):
        model = multilevel.Model("y ~ x + (1 | a)", df, family="bernoulli", priors=ONE_TERM_PRIORS, sampler=sampler)
        fits[sampler] = model.fit(chains=4, warmup=300, draws=1000, seed=4, cores=1, progress=False)
    pg, mh = fits["polya-gamma"], fits[None]
    assert pg.attrs["sampler"] == "polya-gamma augmented collapsed blocked gibbs"
    assert mh.attrs["sampler_name"] == "auto"
    assert "Data: 400 rows, 12 groups of a" in pg.report()
    assert sorted(pg.posterior.data_vars) == sorted(mh.posterior.data_vars) == ["Sigma", "alpha", "beta", "theta"]
    assert pg.posterior["beta"].dims == mh.posterior["beta"].dims == ("chain", "draw", "group", "term")
    for name, sel in [("theta", {}), ("alpha", {}), ("Sigma", {}), ("beta", {"group": ["a00", "a05", "a11"]})]:
        a, b = pg.posterior[name].sel(**sel).values, mh.posterior[name].sel(**sel).values
        flat = [x.reshape(x.shape[0], x.shape[1], -1) for x in (a, b)]
        z = (flat[0].mean(axis=(0, 1)) - flat[1].mean(axis=(0, 1))) / np.hypot(mcse_of_means(flat[0]),
                                                                                mcse_of_means(flat[1]))
        assert np.abs(z).max() < Z_MAX, (name, z)


@pytest.fixture(scope="module")
def binomial_fit():
    """A crossed binomial fit with trials and an offset= argument."""
    df = glm_frame(17, n=300)
    model = multilevel.Model("p(k, n_trials) ~ x + z + (1 | a) + (1 | b)", df, family="binomial", offset="off")
    return df, model.fit(chains=2, warmup=200, draws=200, seed=8, cores=1, progress=False, posterior_predictive=True)


def test_binomial_fit_outputs(binomial_fit):
    df, fit = binomial_fit
    post, cd = fit.posterior, fit.group("constant_data")
    assert sorted(post.data_vars) == ["Sigma_a", "Sigma_b", "alpha", "beta_a", "beta_b", "theta"]
    assert "sigma2" not in post and list(post["fixed_term"].values) == ["x", "z"]
    np.testing.assert_array_equal(cd["trials"].values, df["n_trials"])
    np.testing.assert_array_equal(cd["offset"].values, df["off"])
    assert set(fit.priors.S0) == {"a", "b"} and fit.priors.nu0 is None
    # eta by hand from the draws: offset + F a + each factor's deviation
    a = np.concatenate([post["theta"].values, post["alpha"].values], axis=-1)
    eta = df["off"].to_numpy() + np.einsum("cdk,ik->cdi", a, np.column_stack([np.ones(len(df)), df["x"], df["z"]]))
    for f in "ab":
        eta += post[f"beta_{f}"].values[:, :, df[f"i{f}"], 0] - post["theta"].values[..., :1]
    np.testing.assert_allclose(fit.linear_predictor(), eta, atol=1e-10)
    ll = fit.log_likelihood().values
    np.testing.assert_allclose(ll, stats.binom.logpmf(df["k"], df["n_trials"], logistic(eta)), atol=1e-8)
    const = np.sum(stats.binom.logpmf(df["k"], df["n_trials"], 0.5) + df["n_trials"] * np.log(2.0))
    np.testing.assert_allclose(fit.group("sample_stats")["loglik"].values, ll.sum(axis=-1) - const, rtol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isfinite(fit.loo().elpd_loo)
    rep = fit.group("posterior_predictive")["y"].values
    assert rep.shape == ll.shape and rep.min() >= 0 and np.all(rep <= df["n_trials"].to_numpy())
    report = fit.report()
    assert "Family: binomial (logit link)" in report and "Residual" not in report
    assert "Residual" not in fit.VarCorr().index.get_level_values(0)
    assert set(fit.ranef().index.get_level_values(0)) == {"a", "b"}


def test_binomial_predictions_on_the_response_scale(binomial_fit, tmp_path):
    df, fit = binomial_fit
    new = df.head(6)
    post = fit.posterior
    a = np.concatenate([post["theta"].values, post["alpha"].values], axis=-1)
    F = np.column_stack([np.ones(6), new["x"], new["z"]])
    population = new["off"].to_numpy() + np.einsum("cdk,ik->cdi", a, F)
    mean = fit.predict(new, re_form="~0", offset="off")
    np.testing.assert_allclose(mean.values, logistic(population), rtol=1e-12)
    with_a = population + post["beta_a"].values[:, :, new["ia"], 0] - post["theta"].values[..., :1]
    np.testing.assert_allclose(fit.predict(new, re_form="~(1 | a)", offset="off").values, logistic(with_a),
                               rtol=1e-12)
    draws = fit.predict(new, kind="response", offset="off", seed=1).values
    assert draws.min() >= 0 and np.all(draws <= new["n_trials"].to_numpy()) and draws.max() > 1
    fitted = fit.predict(kind="mean")
    np.testing.assert_allclose(fitted.values, logistic(fit.linear_predictor()), rtol=1e-12)
    with pytest.raises(multilevel.ModelError, match="pass offset= for the new rows"):
        fit.predict(new)
    with pytest.raises(multilevel.ModelError, match="needs the new rows' trials") as err:
        fit.predict(new.drop(columns="n_trials"), kind="response", offset="off")
    assert "\n" not in str(err.value)
    path = fit.save(tmp_path / "fit.nc")
    loaded = multilevel.load(path)
    np.testing.assert_allclose(loaded.predict(new, re_form="~(1 | a)", offset="off").values, logistic(with_a),
                               rtol=1e-12)
    np.testing.assert_allclose(loaded.log_likelihood().values, fit.log_likelihood().values)


def test_plots_of_a_crossed_binomial_fit(binomial_fit):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, fit = binomial_fit
    for kind in ("ppc", "shrinkage", "caterpillar", "trace"):
        plt.close(fit.plot(kind))


@pytest.mark.parametrize("formula, family, options, problem, fix", [
    ("y ~ x + (1 | a) + (1 | b)", "poisson", {"sampler": "polya-gamma"}, r"sampler 'polya-gamma' fits binomial, "
     r"bernoulli and negbinomial models, not poisson", r"use one of metropolis"),
    ("y ~ x + (1 | a)", "poisson", {"sampler": "polya-gamma"}, r"sampler 'polya-gamma' fits binomial, bernoulli and "
     r"negbinomial models, not poisson", r"use one of auto, interweaving, centred"),
    ("y ~ x + (1 | a) + (1 | b)", "gaussian", {"sampler": "polya-gamma"}, r"sampler 'polya-gamma' fits binomial, "
     r"bernoulli and negbinomial models, not gaussian", r"leave sampler unset or use one of collapsed"),
    ("y ~ x + (1 | a) + (1 | b)", "bernoulli", {"sampler": "centred"}, r"sampler 'centred' fits one random-effects "
     r"term", r"use one of polya-gamma"),
    ("y ~ x + (1 | a) + (1 | b)", "bernoulli", {"priors": {"nu0": "x"}}, None, None),
], ids=["poisson crossed", "polya-gamma poisson", "polya-gamma gaussian", "centred crossed bernoulli",
        "GLM priors ignore nu0"])
def test_errors_in_one_line(formula, family, options, problem, fix):
    df = glm_frame(3)
    if problem is None:  # GLMs have no sigma2: its prior is not read
        assert multilevel.Model(formula, df, family=family, **options).priors.nu0 is None
        return
    with pytest.raises(multilevel.ModelError) as err:
        multilevel.Model(formula, df, family=family, **options)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(problem, message) and re.search(fix, message), message


def test_cli_fits_a_crossed_binomial_model_and_resumes_it(tmp_path):
    """cbpp with herds crossed with periods (as lme4 users write it), from the command line;
    the saved fit resumes to the draws of one uninterrupted run."""
    from clitools import run_main

    out = tmp_path / "fit.nc"
    args = ["fit", "cbpp", "-f", "p(incidence, size) ~ 1 + (1 | herd) + (1 | period)", "--family", "binomial",
            "--chains", "2", "--warmup", "50", "--seed", "3", "--cores", "1", "--no-progress"]
    code, text, err = run_main([*args, "--draws", "40", "--out", out])
    assert code == 0, err
    assert "polya-gamma" in text and "Group-level effects (period)" in text and "Residual" not in text
    code, _, err = run_main(["resume", out, "--draws", "20", "--out", tmp_path / "more.nc", "--cores", "1",
                             "--no-progress"])
    assert code == 0, err
    code, _, err = run_main([*args, "--draws", "60", "--out", tmp_path / "once.nc"])
    assert code == 0, err
    more, once = multilevel.load(tmp_path / "more.nc"), multilevel.load(tmp_path / "once.nc")
    for name in once.posterior.data_vars:
        np.testing.assert_array_equal(more.posterior[name].values, once.posterior[name].values, err_msg=name)
