"""Models with several grouping factors (issue 12): the sampler of
:mod:`multilevel.samplers.crossed` on the statistics of :mod:`multilevel.blockstats`.

1. Exact posterior. With every variance known (priors concentrated on fixed values:
   nu0 = eta0_k = 1e7, sigma0_sq = sigma2, S0_k = (eta0_k - q_k - 1) Sigma_k, so that
   sigma2 and each Sigma_k stay within about 0.05 % of them), the location effects
   u = (a, b_1, b_2) of ``y ~ x + z + (x | a) + (1 | b)`` have a Gaussian posterior,
   computed here densely from the raw columns with plain numpy:

       log p(u | y) = -1/2 [ (a - m0)' Pi0 (a - m0) + sum_kj b_kj' Sigma_k^-1 b_kj
                             + (y - D u)' W (y - D u) / sigma2 ] + const,

   D the dense row design (F, then each factor's level columns), Pi0 the prior precision of
   the fixed effects (Lambda0^-1 on theta = (Intercept, x), alpha_cov^-1 on alpha = z), W the
   precision weights. The sampler's draws of theta, alpha and every level's beta (= population
   mean + b_kj, a linear map of u) are compared with it on four kernels, built directly with
   ``CrossedGibbs(block_stats(d, layout), layout, priors, d)``: both factors large (collapsed
   draws of t, per-level draws, the slice move), a mixed layout (a large, b in the dense
   block beside the fixed effects), the default layout (both factors small here: one dense
   draw of t; it is the "all small" layout), and both large with precision weights (whose
   unequal A_j = Z_j'WZ_j take the per-level collapsed precision of t, where the unweighted
   intercept factor b sums it by groups of levels with equal A_j).

   Tolerances, from the effective sample sizes (ESS) of the draws:

   * means: |mean - exact| < Z_MAX = 4.5 Monte Carlo standard errors (sd / sqrt(ESS)); with
     35 means, P(any |z| > 4.5) ~ 35 x 7e-6 under a correct sampler;
   * covariances, on the correlation scale: |C_hat_ab - C_ab| < delta sqrt(C_aa C_bb), with
     delta = Z_MAX sqrt(2 / n), n the smallest ESS of the product series
     (u_a - mean_a)(u_b - mean_b). The sample covariance of n independent Gaussian draws has
     sd sqrt((C_aa C_bb + C_ab^2) / n) <= sqrt(2 C_aa C_bb / n), so delta is at least Z_MAX
     standard errors for every entry (4 x 5000 draws: ESS ~ 14,000-20,000, delta ~ 0.05).

   ``test_exact_criterion_rejects_wrong_posteriors`` shows these tolerances reject a closed
   form 10-20 % off.

2. Block statistics: the residual sum of squares from the statistics
   (:func:`multilevel.samplers.crossed.residual_ssr`) and the one the sweep carries in its
   state equal the SSR computed from the rows, for random (t, b), with and without precision
   weights, and with y of mean 1e6 (where the expansion around the reference point matters:
   the plain expansion y'Wy - 2 u'X'Wy + u'Mu loses 1e-4 to 1e-3 of the SSR to cancellation,
   the statistics' about 1e-11).

3. Agreement with lme4 on tests/data's crossed, nested and uncorrelated data
   (tests/lme4_crossed.py; default priors, 4 chains x 1000 draws):

   * fixed effects: posterior mean within 0.5 lme4 standard errors and posterior sd within
     15 % of the standard error (as in test_reference.py: with 40-116 levels per factor and the
     default priors' unit-information fixed-effect prior, the posterior mean is the GLS
     estimate up to a small fraction of its standard error; measured |z| <= 0.02, sd/se within
     1 %);
   * variance components: posterior median within 0.5 posterior sd of the REML estimate. Each
     rests on 25-116 levels: the posterior is right-skewed like a scaled inverse-chi-square
     with as many degrees of freedom, whose median sits some 0.1-0.3 sd from the REML-like mode
     and mean, and the default prior (eta0 = q + 2) adds a small pull (measured: at most 0.19
     sd);
   * sigma2: posterior mean within 3 % of REML (1000-2000 rows: posterior sd 3-5 %, the
     Monte Carlo error of the mean under 0.1 %; measured at most 0.5 %).

4. Determinism: the same seed gives identical draws on one core and on two.

5. One-line errors: degenerate factors, bad per-factor priors, unsupported samplers and
   families, each refused in one line that names the problem and the fix.

Simulation-based calibration is in test_crossed_sbc.py.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel.blockstats import block_stats, expanded_design, factor_layout
from multilevel.run import run_chains
from multilevel.samplers.crossed import CrossedGibbs, CrossedState, level_groups, residual_ssr

from lme4_crossed import DATA_DIR, LME4_CROSSED
from test_exact_posterior import Z_MAX, mcse_of_means

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import arviz as az

FORMULA = "y ~ x + z + (x | a) + (1 | b)"
LEVELS = {"a": 12, "b": 8, "c": 5}  # c only in the statistics test's three-factor formula
SIGMA = {"a": np.array([[0.6, 0.15], [0.15, 0.3]]), "b": np.array([[0.4]])}
SIGMA2 = 0.8
#: the degrees of freedom of the priors that pin the variances
KNOWN = 1e7


def crossed_frame(seed: int, n: int = 80) -> pd.DataFrame:
    """``n`` rows with levels of a, b and c at random (every level at least once), labels
    "a00".."a11" (so that the package's sorted levels are in this order, index column
    ``ia``), covariates x and z, precision weights w in [0.5, 2], and y from the model
    ``FORMULA`` with the true values above (fixed effects 1, 0.5, 0.7)."""
    rng = np.random.default_rng(seed)
    cols = {}
    for f, J in LEVELS.items():
        index = rng.permutation(np.concatenate([np.arange(J), rng.integers(0, J, n - J)]))
        cols[f], cols[f"i{f}"] = [f"{f}{j:02d}" for j in index], index
    df = pd.DataFrame(cols).assign(x=rng.standard_normal(n), z=rng.standard_normal(n), w=rng.uniform(0.5, 2.0, n))
    b_a = rng.multivariate_normal(np.zeros(2), SIGMA["a"], LEVELS["a"])[df["ia"]]
    b_b = rng.normal(0.0, np.sqrt(SIGMA["b"][0, 0]), LEVELS["b"])[df["ib"]]
    mean = 1.0 + 0.5 * df["x"] + 0.7 * df["z"] + b_a[:, 0] + b_a[:, 1] * df["x"] + b_b
    return df.assign(y=mean + rng.normal(0.0, np.sqrt(SIGMA2), n))


def known_priors() -> dict:
    """Fixed-effect priors that matter (a few tens of rows per effect), variances pinned."""
    return dict(mu0=[0.5, -0.3], Lambda0=[[0.8, 0.2], [0.2, 0.6]], alpha_mean=[0.2], alpha_cov=[[0.5]],
                nu0=KNOWN, sigma0_sq=SIGMA2, eta0={f: KNOWN for f in SIGMA},
                S0={f: (KNOWN - S.shape[0] - 1) * S for f, S in SIGMA.items()})


def closed_form(df: pd.DataFrame, priors: dict, Sigma: dict, sigma2: float, weighted: bool):
    """Mean and covariance of (theta, alpha, beta_a level-major, beta_b) | Sigma, sigma2, y by
    dense algebra on the raw columns (module docstring)."""
    n, JA, JB = len(df), LEVELS["a"], LEVELS["b"]
    rows = np.arange(n)
    d = 3 + 2 * JA + JB
    D = np.zeros((n, d))
    D[:, :3] = np.column_stack([np.ones(n), df["x"], df["z"]])
    D[rows, 3 + 2 * df["ia"]] = 1.0
    D[rows, 4 + 2 * df["ia"]] = df["x"]
    D[rows, 3 + 2 * JA + df["ib"]] = 1.0
    K, h = np.zeros((d, d)), np.zeros(d)
    L0i, A0i = np.linalg.inv(priors["Lambda0"]), np.linalg.inv(priors["alpha_cov"])
    K[:2, :2], h[:2] = L0i, L0i @ priors["mu0"]
    K[2:3, 2:3], h[2:3] = A0i, A0i @ priors["alpha_mean"]
    for j in range(JA):
        K[3 + 2 * j:5 + 2 * j, 3 + 2 * j:5 + 2 * j] = np.linalg.inv(Sigma["a"])
    for j in range(JB):
        K[3 + 2 * JA + j, 3 + 2 * JA + j] = 1.0 / Sigma["b"][0, 0]
    w = df["w"].to_numpy() if weighted else np.ones(n)
    Q = K + D.T @ (w[:, None] * D) / sigma2
    cov = np.linalg.inv(Q)
    mean = cov @ (h + D.T @ (w * df["y"].to_numpy()) / sigma2)
    T = np.eye(d)  # u -> (theta, alpha, beta): beta_a[j] = theta + b_a[j], beta_b[j] = theta[Intercept] + b_b[j]
    for j in range(JA):
        T[3 + 2 * j, 0] = T[4 + 2 * j, 1] = 1.0
    for j in range(JB):
        T[3 + 2 * JA + j, 0] = 1.0
    return T @ mean, T @ cov @ T.T


def ess(series: np.ndarray) -> np.ndarray:
    """Bulk ESS of each series (chain, draw, k)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.ess(az.convert_to_dataset({"s": series}))["s"].values


#: the coordinates of (theta, alpha, beta_a, beta_b) whose covariances are compared: theta,
#: alpha, and levels 0 and 1 of each factor (all 35 means are compared)
COVARIANCE_SUBSET = [0, 1, 2, 3, 4, 5, 6, 3 + 2 * LEVELS["a"], 4 + 2 * LEVELS["a"]]


class DrawSummary:
    """What the exact comparison needs of the draws u (chain, draw, d): means and their MCSE,
    the sample covariances of :data:`COVARIANCE_SUBSET` and delta (module docstring)."""

    def __init__(self, u: np.ndarray):
        self.mean, self.mcse = u.mean(axis=(0, 1)), mcse_of_means(u)
        c = u[..., COVARIANCE_SUBSET] - self.mean[COVARIANCE_SUBSET]
        self.ia, self.ib = np.tril_indices(len(COVARIANCE_SUBSET))
        prod = c[..., self.ia] * c[..., self.ib]
        self.cov = prod.mean(axis=(0, 1))
        n = min(float(ess(prod).min()), float(prod.shape[0] * prod.shape[1]))
        self.delta = Z_MAX * np.sqrt(2.0 / n)

    def errors(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z-scores of the means, and the covariance errors on the correlation scale."""
        z_mean = (self.mean - mean) / self.mcse
        sub = cov[np.ix_(COVARIANCE_SUBSET, COVARIANCE_SUBSET)]
        sd = np.sqrt(np.diag(sub))
        return z_mean, (self.cov - sub[self.ia, self.ib]) / (sd[self.ia] * sd[self.ib])


CHAINS, DRAWS, WARMUP = 4, 5000, 300
#: layout (small_columns; None: the default) and precision weights
EXACT_CASES = {"all large": (0, False), "mixed": (10, False), "default": (None, False),
               "weighted, all large": (0, True)}
EXPECTED_LARGE = {"all large": [True, True], "mixed": [True, False], "default": [False, False],
                  "weighted, all large": [True, True]}
#: which factors' collapsed precision of t sums per group of equal A_j (b's 8 levels have 7
#: distinct row counts) rather than per level (the weighted A_j all differ)
EXPECTED_GROUPED = {"all large": [False, True], "mixed": [False, False], "default": [False, False],
                    "weighted, all large": [False, False]}


@pytest.fixture(scope="module", params=list(EXACT_CASES))
def exact_case(request):
    small, weighted = EXACT_CASES[request.param]
    df = crossed_frame(7)
    model = multilevel.Model(FORMULA, df, priors=known_priors(), weights="w" if weighted else None)
    d = model.design
    assert [f.name for f in d.factors] == ["a", "b"] and d.fixed_names == ["Intercept", "x", "z"]
    assert [list(f.labels) for f in d.factors] == [[f"{f}{j:02d}" for j in range(LEVELS[f])] for f in "ab"]
    layout = factor_layout(d) if small is None else factor_layout(d, small_columns=small)
    assert layout.large.tolist() == EXPECTED_LARGE[request.param]
    stats = block_stats(d, layout)
    assert level_groups(stats, layout)[4].tolist() == EXPECTED_GROUPED[request.param]
    kernel = CrossedGibbs(stats, layout, model.priors, d)
    draws = run_chains(kernel, chains=CHAINS, draws=DRAWS, warmup=WARMUP, seed=12, cores=1, progress=False).draws
    u = np.concatenate([draws["theta"], draws["alpha"], draws["beta_a"].reshape(CHAINS, DRAWS, -1),
                        draws["beta_b"].reshape(CHAINS, DRAWS, -1)], axis=-1)
    return df, weighted, draws, u, DrawSummary(u)


def test_variances_held_at_their_values(exact_case):
    _, _, draws, _, _ = exact_case
    np.testing.assert_allclose(draws["sigma2"], SIGMA2, rtol=5e-3)
    for f, S in SIGMA.items():
        np.testing.assert_allclose(draws[f"Sigma_{f}"], np.broadcast_to(S, draws[f"Sigma_{f}"].shape), rtol=5e-3)


def test_location_effects_match_exact_posterior(exact_case):
    df, weighted, _, u, summary = exact_case
    mean, cov = closed_form(df, known_priors(), SIGMA, SIGMA2, weighted)
    z_mean, err = summary.errors(mean, cov)
    assert np.abs(z_mean).max() < Z_MAX, f"means off: z = {np.round(z_mean, 2)}"
    assert np.abs(err).max() < summary.delta, (f"covariances off: max error {np.abs(err).max():.3f} > "
                                               f"{summary.delta:.3f}")
    # a readable summary of the covariance check: the posterior sds agree to a few per cent
    np.testing.assert_allclose(u.std(axis=(0, 1)), np.sqrt(np.diag(cov)), rtol=0.04)


WRONG = {
    "sigma2 x 1.1": lambda p, S, s2, w: (p, S, 1.1 * s2, w),
    "Sigma_a x 1.2": lambda p, S, s2, w: (p, {**S, "a": 1.2 * S["a"]}, s2, w),
    "Sigma_b x 1.2": lambda p, S, s2, w: (p, {**S, "b": 1.2 * S["b"]}, s2, w),
    "fixed-effect prior ignored": lambda p, S, s2, w: (
        {**p, "Lambda0": 1e6 * np.asarray(p["Lambda0"]), "alpha_cov": 1e6 * np.asarray(p["alpha_cov"])}, S, s2, w),
    "weights flipped": lambda p, S, s2, w: (p, S, s2, not w),
}


@pytest.mark.parametrize("wrong", list(WRONG))
def test_exact_criterion_rejects_wrong_posteriors(exact_case, wrong):
    """The tolerances must reject a closed form that is slightly wrong, or the test above
    proves nothing."""
    df, weighted, _, _, summary = exact_case
    z_mean, err = summary.errors(*closed_form(df, *WRONG[wrong](known_priors(), SIGMA, SIGMA2, weighted)))
    assert np.abs(z_mean).max() > Z_MAX or np.abs(err).max() > summary.delta


# -- 2. block statistics ---------------------------------------------------------------------------

THREE_FACTORS = "y ~ x + z + (x | a) + (1 | b) + (1 | c)"


def rows_ssr(kernel: CrossedGibbs, df: pd.DataFrame, t: np.ndarray, b: np.ndarray, weighted: bool) -> float:
    """sum_i w_i (y_i - F_i a - sum_k Z_ki b_k[level of row i])^2 from the raw columns; each
    factor's effects read from (t, b) by the kernel's layout (:meth:`CrossedGibbs.effects`)."""
    state = CrossedState(t=t, b=b, Sigma=None, sigma2=None, ssr=None)
    one, x = np.ones(len(df)), df["x"].to_numpy()
    fit = np.column_stack([one, x, df["z"]]) @ t[:3]
    for k, (f, Z) in enumerate([("a", np.column_stack([one, x])), ("b", one[:, None]), ("c", one[:, None])]):
        fit += np.einsum("ic,ic->i", Z, kernel.effects(state, k)[df[f"i{f}"]])
    w = df["w"].to_numpy() if weighted else 1.0
    return float(np.sum(w * (df["y"].to_numpy() - fit) ** 2))


@pytest.mark.parametrize("shift", [0.0, 1e6], ids=["y", "y+1e6"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("small", [0, 6, 10**6], ids=["all large", "b and c small", "all small"])
def test_block_statistics_give_the_rows_ssr(small, weighted, shift):
    df = crossed_frame(3)
    df["y"] += shift
    model = multilevel.Model(THREE_FACTORS, df, weights="w" if weighted else None)
    d = model.design
    layout = factor_layout(d, small_columns=small)
    assert layout.large.tolist() == {0: [True, True, True], 6: [True, True, False], 10**6: [False] * 3}[small]
    st = block_stats(d, layout)
    kernel = CrossedGibbs(st, layout, model.priors, d)
    rng = np.random.default_rng(4)
    for _ in range(5):  # near the reference point, where the residuals are O(1) whatever y's mean
        t = st.u_ref_t + 0.3 * rng.standard_normal(st.u_ref_t.shape)
        b = 0.3 * rng.standard_normal(st.Xty_b.shape)
        ssr = residual_ssr(t, b, st.G, st.A, st.W_ptr, st.W_col, st.W_val, st.C_ptr, st.C_col, st.C_val, st.u_ref_t,
                           st.rtr, st.Xtr_t, st.Xtr_b, layout.q, layout.J, layout.large, layout.off, layout.A_off)
        exact = rows_ssr(kernel, df, t, b, weighted)
        assert ssr == pytest.approx(exact, rel=1e-9)
        if shift:  # the plain expansion would not pass: y of mean 1e6 tests the reference point
            X, _ = expanded_design(d, layout)  # rows scaled by sqrt(w)
            yw, u = d.y * (np.sqrt(d.weights) if weighted else 1.0), np.concatenate([t, b])
            plain = float(yw @ yw - 2 * u @ (X.T @ yw) + np.sum((X @ u) ** 2))
            assert abs(plain / exact - 1) > 1e-8  # at least 10x the tolerance the statistics meet
    # the sweep's own SSR (gathered during the sweep) is that of the state it returns
    state = kernel.init(rng)
    assert state.ssr == pytest.approx(rows_ssr(kernel, df, state.t, state.b, weighted), rel=1e-9)
    for _ in range(5):
        state = kernel.step(state, rng)
        assert state.ssr == pytest.approx(rows_ssr(kernel, df, state.t, state.b, weighted), rel=1e-9)


# -- 3. agreement with lme4 ---------------------------------------------------------------------------

LME4_GAUSSIAN = ["crossed", "nested", "uncorrelated"]


def read_lme4_data(name: str) -> pd.DataFrame:
    """The data set's CSV, its grouping columns as strings (as R reads them: factors)."""
    ref = LME4_CROSSED[name]
    columns = {c for factor in ref["groups"] for c in factor.split(":")}
    return pd.read_csv(DATA_DIR / ref["file"], dtype={c: str for c in columns})


@pytest.fixture(scope="module")
def lme4_fit():
    """``lme4_fit(name)``: the fit of data set ``name`` by lme4's formula, made once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = multilevel.fit(LME4_CROSSED[name]["formula"], read_lme4_data(name), chains=4, draws=1000,
                                         warmup=300, seed=2024, cores=1, progress=False)
        return cache[name]

    return get


def fixed_draws(fit, term: str) -> np.ndarray:
    post = fit.posterior
    if term in post["term"].values:
        return post["theta"].sel(term=term).values.ravel()
    return post["alpha"].sel(fixed_term=term).values.ravel()


@pytest.mark.parametrize("name", LME4_GAUSSIAN)
def test_crossed_fixed_effects_match_lme4(lme4_fit, name):
    ref, fit = LME4_CROSSED[name], lme4_fit(name)
    assert fit.attrs["n_obs"] == ref["nobs"]
    for term, (est, se) in ref["fixef"].items():
        draws = fixed_draws(fit, term)
        assert abs(draws.mean() - est) < 0.5 * se, (f"{name} {term}: mean {draws.mean():.4f}, lme4 {est:.4f} "
                                                    f"(se {se:.4f})")
        assert draws.std() == pytest.approx(se, rel=0.15), f"{name} {term}: sd {draws.std():.4f}, lme4 se {se:.4f}"


@pytest.mark.parametrize("name", LME4_GAUSSIAN)
def test_crossed_variance_components_match_lme4(lme4_fit, name):
    ref, fit = LME4_CROSSED[name], lme4_fit(name)
    post = fit.posterior
    one = len(ref["varcorr"]) == 1
    for factor, vc in ref["varcorr"].items():
        Sigma = post["Sigma" if one else f"Sigma_{factor}"]
        level_dim, term_dim = ("group", "term") if one else (factor, f"{factor}_term")
        assert post.sizes[level_dim] == ref["groups"][factor]
        assert list(post[term_dim].values) == vc["terms"]
        reml = np.asarray(vc["cov"])
        blocks = fit.design.factors[[f.name for f in fit.design.factors].index(factor)].block_mask()
        for r, c in zip(*np.tril_indices(len(vc["terms"]))):
            draws = Sigma.values[..., r, c].ravel()
            if not blocks[r, c]:  # (x || g): the covariance is 0 by the model
                assert np.all(draws == 0.0)
                continue
            med, sd = np.median(draws), draws.std()
            assert abs(med - reml[r, c]) < 0.5 * sd, (f"{name} Sigma_{factor}[{r},{c}]: median {med:.4g}, sd {sd:.4g}, "
                                                      f"REML {reml[r, c]:.4g}")
    assert post["sigma2"].values.mean() == pytest.approx(ref["sigma2"], rel=0.03)


# -- 4. determinism ---------------------------------------------------------------------------------


def test_crossed_same_seed_same_draws_any_cores():
    """nested.csv's default layout has a large factor (116 classes), so the draws include the
    slice moves' random numbers as well as the dense and per-level Gaussian draws."""
    model = multilevel.Model(LME4_CROSSED["nested"]["formula"], read_lme4_data("nested"))
    assert model.kernel.layout.large.tolist() == [False, True]
    fits = {(seed, cores): model.fit(chains=2, draws=30, warmup=10, seed=seed, cores=cores, progress=False)
            for seed, cores in [(42, 1), (42, 2), (43, 1)]}
    names = ["theta", "alpha", "sigma2", "Sigma_school", "Sigma_school:class", "beta_school", "beta_school:class"]
    assert set(names) == set(fits[(42, 1)].posterior.data_vars)
    for v in names:
        a, b, c = (fits[key].posterior[v].values for key in [(42, 1), (42, 2), (43, 1)])
        assert np.array_equal(a, b), v
        assert not np.array_equal(a, c), v
        assert not np.array_equal(a[0], a[1]), v  # the chains differ


# -- 5. one-line errors -----------------------------------------------------------------------------


def error_frame() -> pd.DataFrame:
    """40 rows: a (5 levels) crossed with b (4), c one level per a, ``one`` a single level,
    ``row`` a level per row, a count response ``n``."""
    rng = np.random.default_rng(0)
    a = np.arange(40) % 5
    return pd.DataFrame({"a": [f"a{k}" for k in a], "b": [f"b{k}" for k in rng.permutation(np.arange(40) % 4)],
                         "c": [f"c{k}" for k in a], "one": "k", "row": [f"r{k}" for k in range(40)],
                         "x": rng.standard_normal(40), "y": rng.standard_normal(40), "n": rng.poisson(2.0, 40)})


TWO = "y ~ x + (x | a) + (1 | b)"


@pytest.mark.parametrize("formula, options, problem, fix", [
    ("y ~ x + (1 | one) + (1 | b)", {}, r"grouping factor 'one' has 1 level",
     r"remove its terms or move 'one' to the fixed"),
    ("y ~ x + (1 | a/c)", {}, r"grouping factors 'a' and 'a:c' group the rows identically",
     r"remove the terms of one of them"),
    ("y ~ x + (1 | a) + (1 | c)", {}, r"grouping factors 'a' and 'c' group the rows identically",
     r"remove the terms of one of them"),
    ("y ~ x + (1 | a) + (1 | row)", {}, r"'row' has 40 levels for 40 rows .* confounded with the residual variance",
     r"remove its terms, or use a GLM family"),
    (TWO, {"priors": {"S0": [[1.0, 0.0], [0.0, 1.0]]}}, r"prior S0 of a model with several grouping factors is one "
     r"per factor", r"give a dict keyed by factor, e.g. S0=\{'a': ...\} \(factors: a, b\)"),
    (TWO, {"priors": {"S0": {"a": np.eye(2), "g": [[1.0]]}}}, r"prior S0 names factor 'g', which the formula does not "
     r"have", r"\(factors: a, b\)"),
    (TWO, {"priors": {"eta0": {"zz": 3.0}}}, r"prior eta0 names factor 'zz'", r"\(factors: a, b\)"),
    (TWO, {"priors": {"S0": {"a": [[1.0, 2.0], [2.0, 1.0]]}}}, r"prior S0\['a'\]", r"must be positive definite"),
    (TWO, {"priors": {"eta0": {"a": 1.0}}}, r"prior eta0\['a'\]", r"must exceed q - 1 = 1 \(2 terms\), got 1.0"),
    ("y ~ x + (x || a)", {"priors": {"S0": {"a": [[1.0, 0.5], [0.5, 1.0]]}}},
     r"prior S0\['a'\] is non-zero between uncorrelated terms of 'a'", r"set those entries to 0"),
    (TWO, {"sampler": "centred"}, r"sampler 'centred' fits one random-effects term; formula .* has several",
     r"leave sampler unset"),
    ("y ~ x + (x || a)", {"sampler": "interweaving"}, r"sampler 'interweaving' fits one random-effects term",
     r"leave sampler unset"),
    ("n ~ x + (1 | a) + (1 | b)", {"family": "poisson", "sampler": "centred"}, r"sampler 'centred' fits one "
     r"random-effects term; formula .* has several \(\(1 \| a\), \(1 \| b\)\)", r"use one of metropolis"),
    ("n ~ x + (x || a)", {"family": "poisson", "sampler": "polya-gamma"}, r"sampler 'polya-gamma' fits binomial, "
     r"bernoulli and negbinomial models, not poisson", r"use one of metropolis"),
], ids=["one level", "nested same grouping", "crossed same grouping", "level per row", "S0 not a dict",
        "S0 unknown factor", "eta0 unknown factor", "S0 not positive definite", "eta0 too small", "S0 across || terms", "centred sampler",
        "interweaving sampler", "poisson crossed", "poisson ||"])
def test_crossed_errors_in_one_line(formula, options, problem, fix):
    with pytest.raises(multilevel.ModelError) as err:
        multilevel.Model(formula, error_frame(), **options)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(problem, message) and re.search(fix, message), message


@pytest.mark.parametrize("re_form, expected", [
    (None, ["a", "b"]), ("~0", []), ("~ 1", []), ("NA", []), ("~(1 | a)", ["a"]), ("~ (x | a) + (1 | b)", ["a", "b"]),
    (["b"], ["b"]), ("~ 1 + (1 | b)", ["b"]), (float("nan"), []), (pd.NA, []),
])
def test_re_form_chooses_factors(two_factor_fit, re_form, expected):
    from multilevel.predict_crossed import resolve_re_form

    assert resolve_re_form(two_factor_fit, re_form) == expected


@pytest.mark.parametrize("re_form, message", [
    ("~(1 |", "names no grouping factor"), ("~ a", "names no grouping factor"), ("~ x + (1 | a)", "names no grouping"),
    ("(1 | a)", "is not a formula"), ("~(1 | g)", "names factor 'g', which the fit does not have"),
])
def test_re_form_malformed_is_refused(two_factor_fit, re_form, message):
    with pytest.raises(multilevel.ModelError, match=re.escape(message)) as err:
        two_factor_fit.predict(re_form=re_form)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def two_factor_fit():
    return multilevel.Model(TWO, error_frame()).fit(chains=1, warmup=50, draws=20, seed=3, progress=False)
