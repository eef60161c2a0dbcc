"""Poisson models with several grouping factors: the Metropolis-within-Gibbs kernel of
:mod:`multilevel.samplers.crossed_metropolis` (issue 13).

1. Conditional exactness of the moves that are not exact draws. With everything else fixed,
   the per-level rotation move (one-term factor, and a correlated two-term factor) and the
   joint fixed-effects move leave their exact conditionals invariant: long runs of the move
   alone are compared with the conditional computed by quadrature on a grid (1-D: mean, sd and
   the CDF at five quantiles; 2-D: means and covariance), within Z_MAX Monte Carlo standard
   errors, at angles from 0.6 to pi / 2 (below pi / 2 the reverse proposal's cos(phi) term of the
   Hastings correction is exercised); the same checks with the level's prior covariance
   misstated to the quadrature must fail.
2. Simulation-based calibration (tests/sbc.py), truth from proper priors, one chain per
   replication: ``y ~ x + (1 | s) + (1 | i)`` (10 subjects crossed with 8 items),
   ``y ~ x + (1 | g) + (1 | obs)`` (an observation-level effect, 12 groups of 5 rows),
   ``y ~ x + (1 | b) + (1 | loc)`` (21 broods of 1-4 rows nested in 10 locations),
   ``y ~ x + (x | s) + (1 | i)`` (a correlated intercept and slope, 10 x 8) and the same
   correlated model as a Bernoulli one with ``sampler="metropolis"`` (12 x 10, the logit
   log-likelihood); 300 replications (150 for the correlated two) each in the default suite,
   600 under ``validate``. The correlated runs with the rotation moves' Hastings correction
   dropped must be rejected, and so must the nested run with the nested variance moves'
   Jacobian dropped (step 7 of the kernel; the observation-level case takes it too).
3. Agreement with lme4 ``glmer`` (Laplace) on tests/data/crossed_poisson.csv (tests/lme4_crossed.py):
   fixed effects' posterior means within 0.5 lme4 standard errors and sds within 15 %; the
   variances' posterior medians within 0.5 posterior sd of glmer's estimates.
4. Determinism (same seed, same draws with cores 1 and 2), the kernel's row order and linear
   predictor, the scale moves' switch after warm-up, the binomial/Bernoulli option (Polya-Gamma
   stays their default), one-line errors (an observation-level factor in a Gaussian model among them).
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import multilevel
from multilevel.blockstats import factor_layout
from multilevel.families import CODES
from multilevel.samplers.crossed_metropolis import (CrossedMetropolis, factor_rows, fixed_move, level_move,
                                                    linear_predictor)

import sbc
from lme4_crossed import DATA_DIR, LME4_CROSSED, assert_agrees_with_glmer
from test_crossed import Z_MAX, ess
from test_crossed_glm import truth_and_draws
from test_crossed_sbc import draw_truth


def poisson_frame(seed: int, n: int = 200, levels: tuple[int, int] = (10, 8)) -> pd.DataFrame:
    """``n`` rows, levels of s and i at random (each at least once), x ~ N(0, 1), and counts from
    log mu = 0.5 + 0.4 x + (x | s) + (1 | i)."""
    rng = np.random.default_rng(seed)
    cols = {}
    for f, J in zip("si", levels):
        cols[f] = rng.permutation(np.concatenate([np.arange(J), rng.integers(0, J, n - J)]))
    df = pd.DataFrame(cols).assign(x=rng.standard_normal(n))
    bs = rng.multivariate_normal([0, 0], [[0.4, 0.1], [0.1, 0.2]], levels[0])[df["s"]]
    eta = 0.5 + 0.4 * df["x"] + bs[:, 0] + bs[:, 1] * df["x"] + rng.normal(0, 0.5, levels[1])[df["i"]]
    df["y"] = rng.poisson(np.exp(eta))
    df["s"], df["i"] = [f"s{j:02d}" for j in df["s"]], [f"i{j:02d}" for j in df["i"]]
    return df


# -- 1. conditional exactness -----------------------------------------------------------------------

def quadrature_1d(logdens, lo: float, hi: float, n: int = 20001) -> tuple[np.ndarray, np.ndarray]:
    """Grid and normalised CDF of exp(logdens) on [lo, hi]."""
    x = np.linspace(lo, hi, n)
    ld = logdens(x)
    w = np.exp(ld - ld.max())
    cdf = np.cumsum(w)
    return x, cdf / cdf[-1]


def mcse(draws: np.ndarray) -> float:
    return float(np.std(draws) / np.sqrt(ess(draws[None, :])))


@pytest.fixture(scope="module")
def level_case():
    """A kernel on ``y ~ x + (x | s) + (1 | i)`` with a fixed state: a, b and Sigma."""
    df = poisson_frame(3)
    model = multilevel.Model("y ~ x + (x | s) + (1 | i)", df, family="poisson")
    k = model.kernel
    rng = np.random.default_rng(1)
    state = k.init(rng)
    b = rng.normal(0, 0.3, state.b.shape[0])
    Sigma = state.Sigma.copy()
    L = k.layout
    Sigma[L.sig_off[0]:L.sig_off[0] + 4] = [0.4, 0.1, 0.1, 0.2]
    Sigma[L.sig_off[1]] = 0.25
    return model, k, state._replace(b=b, Sigma=Sigma, t=np.array([0.5, 0.4]))


def run_level_move(k: CrossedMetropolis, state, factor: int, phi: float, n: int, seed: int) -> np.ndarray:
    """``n`` level moves of one factor with everything else fixed; the draws of level 0 (n, q)."""
    L, r = k.layout, k.rows
    qk, Jk, o = int(L.q[factor]), int(L.J[factor]), int(L.off[factor])
    S = state.Sigma[L.sig_off[factor]:L.sig_off[factor] + qk * qk].reshape(qk, qk)
    Sinv = np.linalg.inv(S)
    b = state.b.copy()
    eta = k.eta(state.t, b)
    rng = np.random.default_rng(seed)
    out = np.empty((n, qk))
    for it in range(-200, n):  # 200 greedy moves (no Hastings correction) reach the bulk first
        level_move(rng, k.code, k.y, k.trials, eta, r.Z, r.z_off[factor], qk, r.index[factor], Jk, b, o, Sinv, phi,
                   it >= 0)
        if it < 0:
            continue
        out[it] = b[o:o + qk]
    np.testing.assert_allclose(eta, k.eta(state.t, b), atol=1e-9)  # eta kept up to date
    return out


def level_logdens(k: CrossedMetropolis, state, factor: int, S: np.ndarray):
    """The exact log conditional density of level 0 of ``factor`` (q-vectors along the last axis)."""
    L, d = k.layout, k.rows
    qk, o = int(L.q[factor]), int(L.off[factor])
    rows = np.flatnonzero(d.index[factor] == 0)
    Z = d.Z[rows, d.z_off[factor]:d.z_off[factor] + qk]
    base = k.eta(state.t, state.b)[rows] - Z @ state.b[o:o + qk]
    y = k.y[rows]
    Sinv = np.linalg.inv(S)

    def logdens(B):
        eta = base + B @ Z.T
        return (y * eta - np.exp(eta)).sum(-1) - 0.5 * np.einsum("...i,ij,...j->...", B, Sinv, B)
    return logdens


def check_1d(draws: np.ndarray, logdens) -> float:
    """Largest |z| over mean, sd and the CDF at the quadrature's 10/30/50/70/90 % quantiles."""
    x, cdf = quadrature_1d(lambda v: logdens(v[:, None]), draws.min() - 1.0, draws.max() + 1.0)
    dens = np.diff(cdf, prepend=0.0)
    mean = float(np.sum(x * dens))
    sd = float(np.sqrt(np.sum((x - mean) ** 2 * dens)))
    z = [(draws.mean() - mean) / mcse(draws), (draws.std() - sd) / mcse((draws - draws.mean()) ** 2) * 2 * sd]
    for p in (0.1, 0.3, 0.5, 0.7, 0.9):
        ind = (draws <= x[np.searchsorted(cdf, p)]).astype(float)
        z.append((ind.mean() - p) / max(mcse(ind), 1e-9))
    return float(np.max(np.abs(z)))


@pytest.mark.parametrize("phi", [0.6, np.pi / 2])
def test_level_move_leaves_the_one_term_conditional_invariant(level_case, phi):
    model, k, state = level_case
    draws = run_level_move(k, state, 1, phi, 40_000, 5)[:, 0]
    z = check_1d(draws, level_logdens(k, state, 1, np.array([[0.25]])))
    assert z < Z_MAX, z


def test_level_check_fails_with_a_wrong_variance(level_case):
    _, k, state = level_case
    draws = run_level_move(k, state, 1, 0.6, 40_000, 5)[:, 0]
    assert check_1d(draws, level_logdens(k, state, 1, np.array([[0.5]]))) > Z_MAX


def moments_2d(logdens, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of exp(logdens) on a 2-D grid covering the draws."""
    lo, hi = draws.min(0) - 0.5, draws.max(0) + 0.5
    g = [np.linspace(lo[c], hi[c], 401) for c in range(2)]
    X, Y = np.meshgrid(*g, indexing="ij")
    B = np.stack([X, Y], axis=-1)
    ld = logdens(B)
    w = np.exp(ld - ld.max())
    w /= w.sum()
    mean = np.einsum("ij,ijc->c", w, B)
    d = B - mean
    return mean, np.einsum("ij,ijc,ijd->cd", w, d, d)


def check_2d(draws: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    """Largest |z| over the means and the covariance entries (products' Monte Carlo errors)."""
    z = [(draws[:, c].mean() - mean[c]) / mcse(draws[:, c]) for c in range(2)]
    for c, e in ((0, 0), (1, 1), (0, 1)):
        prod = (draws[:, c] - mean[c]) * (draws[:, e] - mean[e])
        z.append((prod.mean() - cov[c, e]) / mcse(prod))
    return float(np.max(np.abs(z)))


def test_level_move_leaves_the_correlated_conditional_invariant(level_case):
    _, k, state = level_case
    draws = run_level_move(k, state, 0, 0.8, 40_000, 6)
    S = np.array([[0.4, 0.1], [0.1, 0.2]])
    z = check_2d(draws, *moments_2d(level_logdens(k, state, 0, S), draws))
    assert z < Z_MAX, z
    assert check_2d(draws, *moments_2d(level_logdens(k, state, 0, S / 4), draws)) > Z_MAX


def test_fixed_move_leaves_its_conditional_invariant(level_case):
    _, k, state = level_case
    g = k.inner
    eta = k.eta(state.t, state.b)
    a = state.t.copy()
    rng = np.random.default_rng(7)
    draws = np.empty((30_000, 2))
    for it in range(draws.shape[0]):
        a, _ = fixed_move(rng, k.code, k.y, k.trials, eta, k.F, g._Pi_fixed, g._Pim_fixed, a, 0.7)
        draws[it] = a
    base = eta - k.F @ a

    def logdens(A):
        e = base + A @ k.F.T
        d = A - np.linalg.solve(g._Pi_fixed, g._Pim_fixed)
        return (k.y * e - np.exp(e)).sum(-1) - 0.5 * np.einsum("...i,ij,...j->...", d, g._Pi_fixed, d)
    lo, hi = draws.min(0) - 0.05, draws.max(0) + 0.05
    X, Y = np.meshgrid(np.linspace(lo[0], hi[0], 161), np.linspace(lo[1], hi[1], 161), indexing="ij")
    B = np.stack([X, Y], axis=-1)
    ld = np.array([logdens(row) for row in B])
    w = np.exp(ld - ld.max())
    w /= w.sum()
    mean = np.einsum("ij,ijc->c", w, B)
    cov = np.einsum("ij,ijc,ijd->cd", w, B - mean, B - mean)
    z = check_2d(draws, mean, cov)
    assert z < Z_MAX, z


# -- 2. simulation-based calibration ----------------------------------------------------------------

SBC_CASES = {
    "crossed": ("poisson", "y ~ x + (1 | s) + (1 | i)",
                dict(mu0=[0.5], Lambda0=[[0.3]], alpha_mean=[0.3], alpha_cov=[[0.2]], eta0={"s": 6.0, "i": 6.0},
                     S0={"s": [[1.6]], "i": [[1.2]]})),
    "obs": ("poisson", "y ~ x + (1 | g) + (1 | obs)",
            dict(mu0=[0.5], Lambda0=[[0.3]], alpha_mean=[0.3], alpha_cov=[[0.2]], eta0={"g": 6.0, "obs": 8.0},
                 S0={"g": [[1.6]], "obs": [[1.5]]})),
    # broods of 1-4 rows nested in locations of 1-3 broods (grouseticks' shape, small): step 7's variance moves
    "nested": ("poisson", "y ~ x + (1 | b) + (1 | loc)",
               dict(mu0=[0.5], Lambda0=[[0.3]], alpha_mean=[0.3], alpha_cov=[[0.2]], eta0={"b": 6.0, "loc": 6.0},
                    S0={"b": [[1.5]], "loc": [[1.2]]})),
    # a correlated intercept and slope of s crossed with i; E[Sigma_s] = S0 / (eta0 - 3) = [[0.4, 0.1], [0.1, 0.25]]
    "correlated": ("poisson", "y ~ x + (x | s) + (1 | i)",
                   dict(mu0=[0.5, 0.3], Lambda0=[[0.3, 0.05], [0.05, 0.2]], eta0={"s": 7.0, "i": 6.0},
                        S0={"s": [[1.6, 0.4], [0.4, 1.0]], "i": [[1.2]]})),
    # the Bernoulli option (sampler="metropolis") on the same correlated crossed model, logit scale
    "bernoulli": ("bernoulli", "y ~ x + (x | s) + (1 | i)",
                  dict(mu0=[0.2, 0.5], Lambda0=[[0.5, 0.1], [0.1, 0.3]], eta0={"s": 7.0, "i": 6.0},
                       S0={"s": [[2.0, 0.4], [0.4, 1.2]], "i": [[2.0]]})),
}


def sbc_model(case: str) -> multilevel.Model:
    """10 subjects crossed with 8 items, one row per cell (12 x 10 for the Bernoulli case), 12
    groups of 5 rows with an observation-level factor, or 21 broods of 1-4 rows in 10 locations of
    1-3 broods (x then per brood); x at random."""
    family, formula, priors = SBC_CASES[case]
    rng = np.random.default_rng(31)
    if case == "nested":
        loc = np.repeat(np.arange(10), [1, 2, 3, 1, 2, 3, 1, 2, 3, 3])
        rows = np.tile([1, 2, 3, 4], 6)[:loc.size]
        brood = np.repeat(np.arange(loc.size), rows)
        df = pd.DataFrame({"b": [f"b{k:02d}" for k in brood], "loc": [f"l{k}" for k in loc[brood]]})
    elif case == "obs":
        g = np.repeat(np.arange(12), 5)
        df = pd.DataFrame({"g": [f"g{k:02d}" for k in g], "obs": np.arange(g.size)})
    else:
        s, i = np.meshgrid(*map(np.arange, (12, 10) if family == "bernoulli" else (10, 8)), indexing="ij")
        df = pd.DataFrame({"s": [f"s{k:02d}" for k in s.ravel()], "i": [f"i{k}" for k in i.ravel()]})
    df["x"] = rng.standard_normal(len(df))
    if case == "nested":  # a brood-level predictor, as grouseticks' YEAR: a shift move of the broods' (step 5)
        df["x"] = rng.standard_normal(brood.max() + 1)[brood]
    df["y"] = rng.poisson(2.0, len(df)) if family == "poisson" else rng.integers(0, 2, len(df))
    options = {"sampler": "metropolis"} if family == "bernoulli" else {}
    return multilevel.Model(formula, df, family=family, priors=priors, **options)


def run_poisson_sbc(case: str, n_reps: int, L: int, thin: int, warmup: int, bins: int, seed: int,
                    kernel_factory=lambda kernel: kernel) -> sbc.SBCResult:
    """Per replication: truth from the priors (scipy's samplers), y from the model (Poisson, or
    Bernoulli for the ``bernoulli`` case), one chain of the Metropolis kernel (``kernel_factory``
    of it: a mutation), the truth's ranks among L thinned draws."""
    model = sbc_model(case)
    d = model.design
    family = SBC_CASES[case][0]
    all_ranks = []
    for rep in range(n_reps):
        rng = np.random.default_rng([seed, rep])
        a, Sigma, b, _ = draw_truth(rng, model)
        eta = d.F @ a + sum(np.einsum("ic,ic->i", f.Z, b[f.name][f.index]) for f in d.factors)
        y = (rng.poisson(np.exp(np.minimum(eta, 12.0))) if family == "poisson"
             else rng.binomial(1, 0.5 * (1.0 + np.tanh(0.5 * eta))))
        design = replace(d, y=y.astype(float))
        kernel = kernel_factory(CrossedMetropolis(design, factor_layout(design, 0), model.priors, a + 0.0,
                                                  CODES[family]))
        truth, post, _ = truth_and_draws(kernel, model, a, Sigma, b, rng, L, thin, warmup)
        all_ranks.append(sbc.ranks(truth, post))
    return sbc.collect(all_ranks, L, bins)


SBC_SMALL = {"crossed": dict(n_reps=300, L=19, thin=3, warmup=100, bins=5, seed=1331),
             "obs": dict(n_reps=300, L=19, thin=3, warmup=100, bins=5, seed=1331),
             "nested": dict(n_reps=300, L=19, thin=3, warmup=100, bins=5, seed=1331),
             "correlated": dict(n_reps=150, L=19, thin=3, warmup=100, bins=5, seed=1331),
             "bernoulli": dict(n_reps=150, L=19, thin=3, warmup=100, bins=5, seed=1331)}


@pytest.mark.parametrize("case", list(SBC_CASES))
def test_poisson_sbc_small(case):
    result = run_poisson_sbc(case, **SBC_SMALL[case])
    assert result.rejected == [], result.report()


def without_hastings(kernel: CrossedMetropolis) -> CrossedMetropolis:
    """The kernel whose kept sweeps accept the rotation moves (fixed effects, every factor's
    levels) by the target's ratio alone, the reverse proposal's density left out of the ratio
    (warm-up's greedy sweeps, kept on): a plausible coding error."""
    wrong = copy.copy(kernel)
    wrong.step = lambda state, rng: CrossedMetropolis.sweep(wrong, state, rng, hastings=False)[0]
    return wrong


@pytest.mark.parametrize("case", ["correlated", "bernoulli"])
def test_poisson_sbc_catches_rotation_moves_without_their_hastings_correction(case):
    """The small runs of the correlated cases (same seed and replications as their
    test_poisson_sbc_small, which pass) with the Hastings correction dropped must be rejected
    (measured, threshold 1.1e-3: Sigma_s[x,x] at p = 5e-8 for the Poisson case; for the Bernoulli
    case Sigma_s at 4e-44 to 5e-8 and beta_s[s00, *] at 6e-5 and 1e-7)."""
    result = run_poisson_sbc(case, kernel_factory=without_hastings, **SBC_SMALL[case])
    assert "Sigma_s[x,x]" in result.rejected, result.report()


def without_jacobian(kernel: CrossedMetropolis) -> CrossedMetropolis:
    """The kernel whose kept sweeps make step 7 (the nested factors' variance moves) without the
    Jacobian prod_l (S_l / S*_l)^{1/2} prod_j (P_j / P*_j)^{1/2} of the effects' map: a plausible
    coding error."""
    wrong = copy.copy(kernel)
    wrong.step = lambda state, rng: CrossedMetropolis.sweep(wrong, state, rng, jacobian=False)[0]
    return wrong


def test_nested_case_takes_the_nested_variance_moves():
    """Step 7 is made on the nested case (broods in locations) and the observation-level one
    (rows in groups), not on crossed factors, nor when switched off; where it is not made, the
    kernel's tuning has one scale step per block, as before; a state whose tuning lacks step 7's
    two steps takes them at their starting value."""
    for case, expected in (("nested", 0), ("obs", 0), ("crossed", -1)):
        k = sbc_model(case).kernel
        assert k.joint == expected, case
        assert k.init(np.random.default_rng(0)).log_step.shape == (k.layout.block_start.shape[0] + 2 * (expected >= 0),)
    d = sbc_model("nested").design
    off = CrossedMetropolis(d, factor_layout(d, 0), sbc_model("nested").priors, np.zeros(d.F.shape[1]), CODES["poisson"],
                            nested_scale_moves=False)
    assert off.joint == -1
    k = sbc_model("nested").kernel  # a state without step 7's steps (an earlier version's) is padded
    rng = np.random.default_rng(1)
    state = k.init(rng)
    nb = k.layout.block_start.shape[0]
    state = k.step(state._replace(log_step=state.log_step[:nb]), rng)
    assert state.log_step.shape == (nb + 2,) and np.all(np.isfinite(state.Sigma))


def test_poisson_sbc_catches_nested_variance_moves_without_their_jacobian():
    """The small run of the nested case (same seed and replications as its test_poisson_sbc_small,
    which passes) with step 7's Jacobian dropped must be rejected (measured, threshold 1.7e-3:
    Sigma_b at p = 1e-153, Sigma_loc at 2e-23; the passing run's smallest p is 0.035, and 0.15 with
    1,500 replications at another seed)."""
    result = run_poisson_sbc("nested", kernel_factory=without_jacobian, **SBC_SMALL["nested"])
    assert "Sigma_b[Intercept,Intercept]" in result.rejected, result.report()


@pytest.mark.validate
@pytest.mark.parametrize("case", list(SBC_CASES))
def test_poisson_sbc_full(case):
    result = run_poisson_sbc(case, n_reps=600, L=49, thin=6, warmup=200, bins=10, seed=1332)
    print(result.report())
    assert result.rejected == [], result.report()


# -- 3. agreement with lme4 glmer ---------------------------------------------------------------------

def test_crossed_poisson_agrees_with_glmer():
    """Measured: fixed effects |z| <= 0.08, sd / se within 1 %; variances within 0.13 posterior sd.
    The kept log-likelihood is sum_i [y_i eta_i - exp(eta_i)] (no log y_i!), the pointwise one
    scipy's Poisson log-pmf."""
    ref = LME4_CROSSED["crossed_poisson"]
    df = pd.read_csv(DATA_DIR / ref["file"])
    fit = multilevel.fit(ref["formula"], df, family="poisson", chains=4, warmup=500, draws=1000, seed=13, cores=1,
                         progress=False)
    post = fit.posterior
    assert fit.attrs["sampler_name"] == "metropolis"
    assert sorted(post.data_vars) == ["Sigma_item", "Sigma_subj", "alpha", "beta_item", "beta_subj", "theta"]
    assert {f: post.sizes[f] for f in ref["groups"]} == ref["groups"]
    assert_agrees_with_glmer(post, ref)
    assert fit.summary()["r_hat"].max() < 1.01
    ll = fit.log_likelihood().values
    eta = fit.linear_predictor()
    np.testing.assert_allclose(ll, stats.poisson.logpmf(df["y"], np.exp(eta)), rtol=1e-9, atol=1e-9)
    const = float(np.sum(stats.poisson.logpmf(df["y"], 1.0)) + len(df))
    np.testing.assert_allclose(fit.group("sample_stats")["loglik"].values, ll.sum(axis=-1) - const, rtol=1e-9)


# -- 4. determinism, outputs, errors ------------------------------------------------------------------

def test_same_seed_same_draws_on_one_core_and_two():
    df = poisson_frame(11, n=150).assign(obs=lambda d: np.arange(len(d)))
    model = multilevel.Model("y ~ x + (1 | s) + (1 | i) + (1 | obs)", df, family="poisson")
    one = model.fit(chains=2, warmup=20, draws=30, seed=5, cores=1, progress=False)
    two = model.fit(chains=2, warmup=20, draws=30, seed=5, cores=2, progress=False)
    for name, v in one.posterior.data_vars.items():
        np.testing.assert_array_equal(v.values, two.posterior[name].values, err_msg=name)
    again = model.fit(chains=2, warmup=20, draws=30, seed=6, cores=1, progress=False)
    assert not np.array_equal(again.posterior["theta"].values, one.posterior["theta"].values)


def test_row_order_and_linear_predictor():
    """The kernel's rows are sorted by the factor with the most levels (here the
    observation-level one: the data's order), and eta from the flat arrays equals eta from the
    factors in that order."""
    df = poisson_frame(12, n=90).assign(obs=lambda d: np.random.default_rng(0).permutation(len(d)))
    model = multilevel.Model("y ~ x + (x | s) + (1 | obs)", df, family="poisson")
    d, k = model.design, model.kernel
    np.testing.assert_array_equal(k.order, np.argsort(d.factors[1].index))
    assert np.all(np.diff(k.rows.index[1]) >= 0)
    r = factor_rows(d, k.order)
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(2), rng.standard_normal(sum(f.n_levels * f.q for f in d.factors))
    eta = d.offset + d.F @ a
    for f, o in zip(d.factors, k.layout.off):
        eta = eta + np.einsum("ic,ic->i", f.Z, b[o:o + f.n_levels * f.q].reshape(f.n_levels, f.q)[f.index])
    L = k.layout
    np.testing.assert_allclose(linear_predictor(k.offset, k.F, a, r.Z, r.index, r.z_off, L.q, L.off, b), eta[k.order])
    np.testing.assert_allclose(k.eta(a, b), eta[k.order])


@pytest.mark.parametrize("formula, family, options, problem, fix", [
    ("y ~ x + (1 | s) + (1 | obs)", "gaussian", {}, r"grouping factor 'obs' has 120 levels for 120 rows",
     r"use a GLM family"),
    ("y ~ x + (1 | s) + (1 | i)", "poisson", {"sampler": "polya-gamma"}, r"sampler 'polya-gamma' fits binomial, "
     r"bernoulli and negbinomial models, not poisson", r"leave sampler unset or use one of metropolis"),
    ("y ~ x + (1 | s) + (1 | i)", "gaussian", {"sampler": "metropolis"}, r"sampler 'metropolis' fits poisson, binomial "
     r"and bernoulli models, not gaussian", r"leave sampler unset or use one of collapsed"),
], ids=["obs-level gaussian", "polya-gamma poisson", "metropolis gaussian"])
def test_errors_in_one_line(formula, family, options, problem, fix):
    df = poisson_frame(3, n=120).assign(obs=lambda d: np.arange(len(d)))
    with pytest.raises(multilevel.ModelError) as err:
        multilevel.Model(formula, df, family=family, **options)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(problem, message) and re.search(fix, message), message


def test_bernoulli_option_runs_and_defaults_stay():
    """binomial and Bernoulli keep Polya-Gamma as their default; ``sampler="metropolis"`` runs
    the same kernel with the logit log-likelihood."""
    df = poisson_frame(4).assign(yb=lambda d: (d["y"] > 2).astype(int))
    assert multilevel.Model("yb ~ x + (1 | s) + (1 | i)", df, family="bernoulli").sampler_name == "polya-gamma"
    model = multilevel.Model("yb ~ x + (1 | s) + (1 | i)", df, family="bernoulli", sampler="metropolis")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit(chains=2, warmup=100, draws=100, seed=1, cores=1, progress=False)
    assert fit.attrs["sampler_name"] == "metropolis"
    assert np.isfinite(fit.posterior["theta"].values).all()


def test_scale_moves_stay_where_levels_say_little_and_go_where_they_pin_effects():
    """After warm-up a block's scale move is off (log h = SCALE_OFF) when its levels leave under
    SCALE_SHARE of the variance to the prior: many large counts per level; on with one small
    count per level (an observation-level factor)."""
    from multilevel.samplers.crossed_metropolis import SCALE_OFF, SCALE_SHARE

    rng = np.random.default_rng(8)
    df = poisson_frame(8, n=3000)  # about 300 and 375 rows per level
    k = multilevel.Model("y ~ x + (1 | s) + (1 | i)", df, family="poisson").kernel
    state = k.init(rng)
    for i in range(40):
        state = k.warmup_step(state, rng, i, 40)
    assert np.all(k.prior_shares(state) < SCALE_SHARE) and np.all(state.log_step == SCALE_OFF)
    model = sbc_model("obs")
    k = model.kernel
    state = k.init(rng)
    for i in range(40):
        state = k.warmup_step(state, rng, i, 40)
    shares = k.prior_shares(state)
    assert shares[1] > SCALE_SHARE and state.log_step[1] > SCALE_OFF, shares
