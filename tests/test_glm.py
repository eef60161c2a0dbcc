"""Hierarchical GLMs (issue 3, points 4-7): recovery of the truth, offsets, response
codings, same-seed determinism, numerics and input errors, acceptance rates in
sample_stats and in the report, pointwise log-likelihood against scipy, LOO,
save/load and the command line.

The simulated data sets use fixed seeds, so every check is deterministic; tolerances
are stated where they are used.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats
from scipy.special import expit

import multilevel
from multilevel.families import check_family, pointwise_loglik
from multilevel.glmlik import group_information, group_loglik, group_loglik_grad

# -- simulated data -------------------------------------------------------------------------

M = 300  # groups in the recovery data sets


def _groups(rng, m, lo, hi):
    sizes = rng.integers(lo, hi + 1, size=m)
    g = np.repeat(np.arange(m), sizes)
    return g, g.shape[0]


def poisson_data(seed=1, m=M):
    """y ~ Poisson(exposure exp(b0_j + b1_j x + alpha z)), (b0, b1)_j ~ MVN(theta, Sigma);
    the exposure spans a factor 25, so a model that ignored the offset would be far off."""
    rng = np.random.default_rng(seed)
    theta, Sigma, alpha = np.array([0.5, 0.3]), np.array([[0.3, 0.05], [0.05, 0.1]]), np.array([-0.4])
    g, N = _groups(rng, m, 3, 12)
    beta = theta + rng.standard_normal((m, 2)) @ np.linalg.cholesky(Sigma).T
    x, z = rng.standard_normal(N), rng.standard_normal(N)
    exposure = rng.uniform(0.2, 5.0, size=N)
    y = rng.poisson(exposure * np.exp(beta[g, 0] + beta[g, 1] * x + alpha[0] * z))
    df = pd.DataFrame({"y": y, "x": x, "z": z, "exposure": exposure, "g": g})
    return df, dict(theta=theta, Sigma=Sigma, alpha=alpha, beta=beta)


def bernoulli_data(seed=2, m=M):
    """Varying intercept, fixed-only slope of x; the response as bool and as 'no'/'yes'."""
    rng = np.random.default_rng(seed)
    theta, Sigma, alpha = np.array([-0.3]), np.array([[0.8]]), np.array([0.9])
    g, N = _groups(rng, m, 6, 16)
    beta = theta + np.sqrt(Sigma[0, 0]) * rng.standard_normal((m, 1))
    x = rng.standard_normal(N)
    yb = rng.uniform(size=N) < expit(beta[g, 0] + alpha[0] * x)
    df = pd.DataFrame({"yb": yb, "ys": np.where(yb, "yes", "no"), "x": x, "g": g})
    return df, dict(theta=theta, Sigma=Sigma, alpha=alpha, beta=beta)


def binomial_data(seed=3, m=M):
    rng = np.random.default_rng(seed)
    theta, Sigma = np.array([-0.8, 0.5]), np.array([[0.5, -0.1], [-0.1, 0.2]])
    g, N = _groups(rng, m, 3, 10)
    beta = theta + rng.standard_normal((m, 2)) @ np.linalg.cholesky(Sigma).T
    x = rng.standard_normal(N)
    trials = rng.integers(1, 31, size=N)
    s = rng.binomial(trials, expit(beta[g, 0] + beta[g, 1] * x))
    df = pd.DataFrame({"s": s, "n": trials, "x": x, "g": g})
    return df, dict(theta=theta, Sigma=Sigma, alpha=np.zeros(0), beta=beta)


RECOVERY_RUN = dict(chains=2, draws=500, warmup=300, seed=11, cores=1, progress=False)


@pytest.fixture(scope="module")
def poisson_fits():
    df, truth = poisson_data()
    in_formula = multilevel.fit("y ~ x + z + offset(np.log(exposure)) + (x | g)", df, family="poisson", **RECOVERY_RUN)
    as_argument = multilevel.fit("y ~ x + z + (x | g)", df, family="poisson", offset=np.log(df["exposure"].to_numpy()),
                                 **RECOVERY_RUN)
    return df, truth, in_formula, as_argument


@pytest.fixture(scope="module")
def bernoulli_fits():
    df, truth = bernoulli_data()
    fits = {f: multilevel.fit(f, df, family="bernoulli", **RECOVERY_RUN)
            for f in ("yb ~ x + (1 | g)", "ys ~ x + (1 | g)")}
    return df, truth, fits


@pytest.fixture(scope="module")
def binomial_fit():
    df, truth = binomial_data()
    return df, truth, multilevel.fit("p(s, n) ~ x + (x | g)", df, family="binomial", **RECOVERY_RUN)


def check_recovery(fit, truth, label):
    """The truth is inside the posterior, for every population parameter and for the group
    effects as a whole.

    * theta, alpha and the diagonal of Sigma: |posterior mean - truth| < 4 posterior sd. With
      300 groups the posteriors are narrow (sd of theta ~0.03) and close to normal, so a
      correct sampler passes with overwhelming probability while a bias of a few
      posterior sds (a lost offset, a wrong link, a Sigma step with wrong degrees of
      freedom) fails.
    * beta_j: the central 90% intervals of the 300 x p group effects cover the truth at a
      rate between 0.83 and 0.96 (binomial sd of the rate ~0.012 for 600 coefficients),
      and the posterior means correlate with the truth.
    """
    post = fit.posterior
    draws = lambda v: post[v].values.reshape(-1, *post[v].shape[2:])  # noqa: E731
    for name in ("theta", "alpha"):
        if name not in post:  # alpha is left out of a model without fixed-only terms
            continue
        d = draws(name)
        for k in range(d.shape[1]):
            mean, sd = d[:, k].mean(), d[:, k].std()
            assert abs(mean - truth[name][k]) < 4 * sd, f"{label} {name}[{k}]: {mean:.3f} +- {sd:.3f}, truth {truth[name][k]}"
    S = draws("Sigma")
    for k in range(S.shape[1]):
        mean, sd = S[:, k, k].mean(), S[:, k, k].std()
        assert abs(mean - truth["Sigma"][k, k]) < 4 * sd, f"{label} Sigma[{k},{k}]: {mean:.3f} +- {sd:.3f}, truth {truth['Sigma'][k, k]}"
    assert list(post["group"].values) == [str(j) for j in range(truth["beta"].shape[0])]  # labels as strings
    B = draws("beta")
    lo, hi = np.quantile(B, [0.05, 0.95], axis=0)
    coverage = np.mean((lo <= truth["beta"]) & (truth["beta"] <= hi))
    assert 0.83 < coverage < 0.96, f"{label}: 90% intervals of beta_j cover the truth at {coverage:.3f}"
    for k in range(B.shape[2]):
        r = np.corrcoef(B[:, :, k].mean(axis=0), truth["beta"][:, k])[0, 1]
        assert r > 0.6, f"{label}: corr(posterior mean, truth) of beta[:, {k}] = {r:.2f}"


# -- (a) recovery, offsets and response codings ---------------------------------------------

def test_poisson_recovery_with_offset(poisson_fits):
    df, truth, fit, _ = poisson_fits
    assert fit.family == "poisson"
    check_recovery(fit, truth, "poisson")


def test_poisson_offset_in_formula_equals_offset_argument(poisson_fits):
    """offset(np.log(exposure)) in the formula and offset=np.log(exposure): the same model,
    so the same seed gives the same draws, bit for bit."""
    _, _, a, b = poisson_fits
    for v in a.posterior.data_vars:
        assert np.array_equal(a.posterior[v].values, b.posterior[v].values), v
    assert np.array_equal(a.idata.sample_stats["accept_beta"].values, b.idata.sample_stats["accept_beta"].values)
    assert np.allclose(a.log_likelihood().values, b.log_likelihood().values, rtol=0, atol=1e-12)


def test_poisson_offset_column_name_argument(poisson_fits):
    """offset= may also name a column; the offset then enters as given (here log exposure)."""
    df, _, a, _ = poisson_fits
    m = multilevel.Model("y ~ x + z + (x | g)", df.assign(logexp=np.log(df["exposure"])), family="poisson", offset="logexp")
    ref = multilevel.Model("y ~ x + z + offset(np.log(exposure)) + (x | g)", df, family="poisson")
    assert np.array_equal(m.design.offset, ref.design.offset)


def test_bernoulli_recovery_boolean_response(bernoulli_fits):
    df, truth, fits = bernoulli_fits
    assert df["yb"].dtype == bool
    check_recovery(fits["yb ~ x + (1 | g)"], truth, "bernoulli (bool)")


def test_bernoulli_two_level_string_response(bernoulli_fits):
    """'no'/'yes': success is the second level in sorted order ('yes'), whatever the order of
    appearance; the model is then the boolean one and the same seed gives the same draws."""
    df, truth, fits = bernoulli_fits
    # the first row is 'no' or 'yes' at random; make sure sorted order, not appearance, decides
    m = multilevel.Model("ys ~ x + (1 | g)", df.iloc[np.argsort(~df["yb"].to_numpy(), kind="stable")], family="bernoulli")
    assert m.design.response_levels == ["no", "yes"]
    y_sorted = m.design.y
    expected = df["yb"].to_numpy()[m.design.row_labels]
    assert np.array_equal(y_sorted, expected.astype(float))
    a, b = fits["yb ~ x + (1 | g)"], fits["ys ~ x + (1 | g)"]
    for v in a.posterior.data_vars:
        assert np.array_equal(a.posterior[v].values, b.posterior[v].values), v


def test_bernoulli_level_syntax_picks_success_level(bernoulli_fits):
    """ys[no] ~ ... counts 'no' as the success: y is flipped, and so are the signs of the
    linear predictor's coefficients."""
    df, _, fits = bernoulli_fits
    m = multilevel.Model("ys[no] ~ x + (1 | g)", df, family="bernoulli")
    expected = (df["ys"].to_numpy() == "no")[m.design.row_labels]
    assert np.array_equal(m.design.y, expected.astype(float))
    m_yes = multilevel.Model("ys[yes] ~ x + (1 | g)", df, family="bernoulli")
    assert np.array_equal(m_yes.design.y, 1.0 - m.design.y)
    flipped = m.fit(**RECOVERY_RUN)
    ref = fits["yb ~ x + (1 | g)"].posterior
    for v in ("theta", "alpha"):
        # the mirrored data give mirrored default priors, so the posteriors are exact mirror
        # images: means equal and opposite up to Monte Carlo error (posterior sds 0.04-0.07,
        # bulk ESS >= ~250: MCSE ~0.004, a tenth of the tolerance)
        assert np.allclose(flipped.posterior[v].mean(("chain", "draw")).values,
                           -ref[v].mean(("chain", "draw")).values, atol=0.05), v


def test_bernoulli_level_syntax_on_three_level_response():
    """A three-level response is refused for bernoulli, and c[b] ~ ... (the error message's
    advice) makes level b the success."""
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"c": rng.choice(["a", "b", "c"], 60), "x": rng.standard_normal(60), "g": np.repeat(np.arange(6), 10)})
    with pytest.raises(multilevel.ModelError, match="3 levels"):
        multilevel.Model("c ~ x + (1 | g)", df, family="bernoulli")
    m = multilevel.Model("c[b] ~ x + (1 | g)", df, family="bernoulli")
    assert np.array_equal(m.design.y, (df["c"].to_numpy() == "b")[m.design.row_labels].astype(float))


def test_binomial_recovery_with_trials(binomial_fit):
    df, truth, fit = binomial_fit
    assert fit.family == "binomial"
    assert np.array_equal(fit.idata.constant_data["trials"].values, df["n"].to_numpy()[fit.idata.constant_data["row_label"].values])
    check_recovery(fit, truth, "binomial")


# -- (b) same seed, same draws, any number of processes ------------------------------------

@pytest.mark.parametrize("proposal", ["laplace", "textbook"])
def test_same_seed_same_draws_any_cores(proposal):
    df, _ = poisson_data(seed=21, m=40)
    model = multilevel.Model("y ~ x + z + offset(np.log(exposure)) + (x | g)", df, family="poisson", proposal=proposal)
    run = dict(chains=2, draws=60, warmup=60, progress=False, log_likelihood=False)
    a = model.fit(seed=5, cores=1, **run)
    b = model.fit(seed=5, cores=2, **run)
    c = model.fit(seed=6, cores=1, **run)
    for v in ("theta", "Sigma", "beta", "alpha"):
        assert np.array_equal(a.posterior[v].values, b.posterior[v].values), v
        assert not np.array_equal(a.posterior[v].values, c.posterior[v].values), v
        assert not np.array_equal(a.posterior[v].values[0], a.posterior[v].values[1]), v
    for v in ("accept_beta", "accept_alpha", "loglik"):
        assert np.array_equal(a.idata.sample_stats[v].values, b.idata.sample_stats[v].values), v


# -- (c) numerics and input errors ----------------------------------------------------------

def assert_finite_fit(fit):
    for v in fit.posterior.data_vars:
        assert np.all(np.isfinite(fit.posterior[v].values)), v
    acc = fit.acceptance()
    assert np.all(np.isfinite(acc.values)) and np.all((acc.values >= 0) & (acc.values <= 1))
    assert np.isfinite(float(fit.idata.sample_stats["accept_alpha"].mean()))
    assert np.all(np.isfinite(fit.idata.sample_stats["loglik"].values))
    assert np.all(np.isfinite(fit.log_likelihood().values))


@pytest.mark.parametrize("proposal", ["laplace", "textbook"])
def test_poisson_counts_up_to_a_million(proposal):
    """Group log-means from 0 to ~14: counts from 0 to ~1e6 and linear predictors whose
    exp() is huge. Draws, acceptance and log-likelihood stay finite, and the largest group's
    intercept is pinned at the log of its mean count."""
    rng = np.random.default_rng(8)
    m, n = 15, 8
    g = np.repeat(np.arange(m), n)
    b = np.linspace(0.0, 13.8, m)
    x = rng.standard_normal(m * n)
    y = rng.poisson(np.exp(b[g] + 0.1 * x))
    assert y.max() > 8e5
    df = pd.DataFrame({"y": y, "x": x, "g": g})
    fit = multilevel.fit("y ~ x + (1 | g)", df, family="poisson", proposal=proposal, chains=2, draws=200, warmup=200,
                         seed=3, cores=1, progress=False)
    assert_finite_fit(fit)
    top = fit.posterior["beta"].sel(group=str(m - 1), term="Intercept").values
    assert abs(top.mean() - 13.8) < 0.01


def test_logistic_near_separation():
    """Groups whose responses are all 0, all 1, or perfectly separated by x (the per-group MLE
    does not exist), and a covariate on a large scale (|eta| up to ~100): finite draws."""
    rng = np.random.default_rng(9)
    m, n = 20, 10
    g = np.repeat(np.arange(m), n)
    x = rng.standard_normal(m * n) * np.where(g == 5, 30.0, 1.0)
    y = (rng.uniform(size=m * n) < expit(0.5 * x)).astype(int)
    y[g == 0], y[g == 1], y[g == 2] = 1, 0, 1
    y[g == 3] = (x[g == 3] > 0).astype(int)
    y[g == 4] = (x[g == 4] < 0).astype(int)
    df = pd.DataFrame({"y": y, "x": x, "g": g})
    for proposal in ("laplace", "textbook"):
        fit = multilevel.fit("y ~ x + (x | g)", df, family="bernoulli", proposal=proposal, chains=2, draws=200,
                             warmup=200, seed=4, cores=1, progress=False)
        assert_finite_fit(fit)


def test_loglik_kernels_at_extreme_linear_predictors():
    """The compiled kernels at eta = +-800 and the pointwise log-likelihood: never NaN; an
    overflowing Poisson mean gives -inf (which a Metropolis step rejects)."""
    eta = np.array([-800.0, -40.0, 0.0, 40.0, 800.0])
    X = np.ones((5, 1))
    starts = np.array([0, 1, 2, 3, 4, 5])
    beta = eta[:, None]
    base = np.zeros(5)
    y01, n1 = np.array([1.0, 0.0, 1.0, 1.0, 0.0]), np.ones(5)
    ll = group_loglik(1, X, base, y01, n1, starts, beta)
    assert np.all(np.isfinite(ll))
    assert np.allclose(ll, y01 * eta - np.logaddexp(0.0, eta), rtol=1e-12, atol=0)  # -800, ~-4e-18, log 1/2, ~-4e-18, -800
    ll, grad = group_loglik_grad(1, X, np.zeros((5, 0)), base, np.zeros(0), y01, n1, starts, beta)
    assert np.all(np.isfinite(ll)) and np.all(np.isfinite(grad))
    info = group_information(1, X, np.zeros((5, 0)), base, np.zeros(0), n1, starts, beta)
    assert np.all(np.isfinite(info)) and np.all(info >= 0)
    counts = np.array([0.0, 3.0, 5.0, 1e6, 1e6])
    ll = group_loglik(0, X, base, counts, n1, starts, beta)
    assert not np.any(np.isnan(ll))
    assert ll[-1] == -np.inf and np.all(np.isfinite(ll[:-1]))
    info = group_information(0, X, np.zeros((5, 0)), base, np.zeros(0), n1, starts, beta)
    assert np.all(np.isfinite(info))
    for fam, y in (("poisson", counts), ("binomial", y01), ("bernoulli", y01)):
        lp = pointwise_loglik(check_family(fam), y, n1, eta)
        assert not np.any(np.isnan(lp)), fam


def _frame(**cols):
    n = len(next(iter(cols.values())))
    return pd.DataFrame({**cols, "x": np.linspace(-1, 1, n), "g": np.arange(n) % 4})


BAD_INPUTS = [
    # (formula, data, family, extra arguments, fragments the message must contain)
    ("y ~ x + (1 | g)", _frame(y=[1, 2, -1, 0, 3, 4, 0, 1]), "poisson", {}, ["negative"]),
    ("y ~ x + (1 | g)", _frame(y=[1, 2, 1.5, 0, 3, 4, 0, 1]), "poisson", {}, ["non-integer"]),
    ("p(s, n) ~ x + (1 | g)", _frame(s=[1, 2, 6, 0, 3, 4, 0, 1], n=[5] * 8), "binomial", {}, ["successes", "trials"]),
    ("p(s, n) ~ x + (1 | g)", _frame(s=[1, 2, 1.5, 0, 3, 4, 0, 1], n=[5] * 8), "binomial", {}, ["successes", "integer"]),
    ("p(s, n) ~ x + (1 | g)", _frame(s=[1, 2, 1, 0, 3, 4, 0, 0], n=[5, 5, 5, 5, 5, 5, 5, 0]), "binomial", {}, ["zero trials"]),
    ("s ~ x + (1 | g)", _frame(s=[1, 2, 1, 0, 3, 4, 0, 1]), "binomial", {}, ["p(successes, trials)"]),
    ("p(s, n) ~ x + (1 | g)", _frame(s=[-1, 2, 1, 0, 3, 4, 0, 1], n=[5] * 8), "binomial", {}, ["successes", "negative"]),
    ("y ~ x + (1 | g)", _frame(y=[0, 1, 2, 0, 1, 0, 1, 1]), "bernoulli", {}, ["not binary"]),
    ("y ~ x + (1 | g)", _frame(y=[0, 1, 0.5, 0, 1, 0, 1, 1]), "bernoulli", {}, ["not binary"]),
    ("y ~ x + (1 | g)", _frame(y=list("abcabcab")), "bernoulli", {}, ["3 levels"]),
    ("y ~ x + (1 | g)", _frame(y=list("abababab")), "poisson", {}, ["categorical"]),
    ("y ~ x + (1 | g)", _frame(y=[1, 2, 1, 0, 3, 4, 0, 1]), "gamma", {}, ["unknown family", "gamma"]),
    ("y ~ x + (1 | g)", _frame(y=[1.0, 2, 1, 0, 3, 4, 0, 1]), "gaussian", {"offset": np.zeros(8)}, ["offset", "gaussian"]),
    ("y ~ x + (1 | g)", _frame(y=[1, 2, 1, 0, 3, 4, 0, 1]), "poisson", {"offset": np.zeros(7)}, ["offset", "one value per row"]),
    ("y ~ x + (1 | g)", _frame(y=[1, 2, 1, 0, 3, 4, 0, 1]), "poisson", {"offset": "nope"}, ["offset", "nope"]),
    ("y ~ x + (1 | g)", _frame(y=[1, 2, 1, 0, 3, 4, 0, 1]), "poisson", {"proposal": "gibbs"}, ["proposal"]),
]


@pytest.mark.parametrize("formula, data, family, kwargs, fragments", BAD_INPUTS,
                         ids=["negative-count", "non-integer-count", "successes>trials", "non-integer-successes",
                              "zero-trials", "binomial-without-p", "negative-successes", "bernoulli-0-1-2", "bernoulli-0-0.5-1",
                              "bernoulli-3-levels", "poisson-categorical", "unknown-family", "gaussian-offset",
                              "offset-length", "offset-column-missing", "unknown-proposal"])
def test_bad_input_raises_model_error(formula, data, family, kwargs, fragments):
    with pytest.raises(multilevel.ModelError) as info:
        multilevel.Model(formula, data, family=family, **kwargs)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment.lower() in msg.lower(), msg


# -- (d) acceptance rates ---------------------------------------------------------------------

def acceptance_data():
    """30 groups of 60 Poisson rows with means ~33 (posterior sd of an intercept ~0.02), one
    'heavy' group of 20 rows with exposure 3e4 (counts ~5e5 to 8e5, posterior sd ~3e-4) and
    one 'single' group of one row with exposure 1e-3 (its count is 0: the posterior is about
    the prior, sd ~0.3). The textbook proposal's one scale, delta Sigma, tuned for the typical
    group, is far too wide for 'heavy' (measured acceptance ~0.01) and far too narrow for
    'single' (~0.95); the default proposal scales each group by its own information
    (measured 0.95 to 1 for every group and chain: each group's angle reaches pi / 2)."""
    rng = np.random.default_rng(3)
    m = 30
    sizes = np.r_[np.full(m, 60), 20, 1]
    g = np.repeat(np.arange(m + 2), sizes)
    x = rng.standard_normal(g.shape[0])
    b = 3.5 + 0.3 * rng.standard_normal(m + 2)
    exposure = np.where(g == m, 3e4, np.where(g == m + 1, 1e-3, 1.0))
    y = rng.poisson(exposure * np.exp(b[g] + 0.2 * x))
    labels = np.array([f"g{j:02d}" for j in range(m)] + ["heavy", "single"])
    return pd.DataFrame({"y": y, "x": x, "exposure": exposure, "g": labels[g]})


ACCEPT_RUN = dict(chains=2, draws=300, warmup=300, seed=4, cores=1, progress=False)
ACCEPT_FORMULA = "y ~ x + offset(np.log(exposure)) + (1 | g)"


@pytest.fixture(scope="module")
def acceptance_fits():
    df = acceptance_data()
    return {p: multilevel.fit(ACCEPT_FORMULA, df, family="poisson", proposal=p, **ACCEPT_RUN) for p in ("laplace", "textbook")}


def test_sample_stats_acceptance(acceptance_fits):
    fit = acceptance_fits["laplace"]
    ss = fit.idata.sample_stats
    assert ss["accept_beta"].dims == ("chain", "draw", "group")
    assert ss["accept_beta"].shape == (2, 300, 32) and ss["accept_beta"].dtype == bool
    assert ss["accept_alpha"].dims == ("chain", "draw") and ss["accept_alpha"].dtype == float  # share of the moves
    assert np.all((ss["accept_alpha"].values >= 0) & (ss["accept_alpha"].values <= 1))
    table = fit.acceptance()
    assert list(table.columns) == ["chain 0", "chain 1"]
    assert list(table.index) == sorted(acceptance_data()["g"].unique())
    assert np.allclose(table.values, ss["accept_beta"].mean("draw").values.T)
    # the default proposal scales each group by its own information: with counts this large every
    # group's conditional is nearly Gaussian, each angle grows past pi / 2 (an independent draw from the
    # group's widened Laplace approximation) and acceptance is that of the widening alone (measured
    # 0.78 to 0.87), 'heavy' and 'single' included, where the textbook proposal fails (next test)
    assert table.values.min() > 0.6 and table.values.max() < 0.95, table
    assert fit._widest_beta_proposal().all()


def test_report_shows_acceptance_without_warning_when_fine(acceptance_fits):
    text = str(acceptance_fits["laplace"])
    assert "Metropolis acceptance of beta_j" in text
    assert "Metropolis acceptance of alpha" in text
    assert "acceptance below 5%" not in text and "acceptance above 90%" not in text


def test_report_does_not_warn_of_high_acceptance_at_the_widest_step(acceptance_fits):
    """Above 90% acceptance is a warning for a step too small to explore; a group whose Laplace
    proposal reached pi / 2 draws independently from its approximation, where high acceptance means
    the approximation is close. The same fit with every proposal marked accepted:"""
    fit = acceptance_fits["laplace"]
    idata = fit.idata.copy()
    idata.sample_stats["accept_beta"] = xr.ones_like(idata.sample_stats["accept_beta"])
    text = "\n".join(multilevel.Fit(idata).acceptance_lines())
    assert "Warning" not in text
    assert ("Acceptance above 90% in groups g00, g01, g02, g03, g04, g05, g06, g07, g08, g09 and 22 more: "
            "they draw beta_j independently from their (widened) Laplace approximation") in text
    # an older fit, whose scales are not angles, is warned about as before
    idata.posterior.attrs.pop("proposal_scale")
    text = "\n".join(multilevel.Fit(idata).acceptance_lines())
    assert "Warning: acceptance above 90% in groups g00" in text


def test_laplace_angle_adapts_towards_target_where_approximation_is_rough():
    """Bernoulli groups of 8 rows: in groups far from Gaussian the widest step is refused too often,
    so their angle settles below its largest value with acceptance near the target."""
    from multilevel.samplers.metropolis import BETA_TARGET, PHI_MAX

    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(40), 8)
    x = rng.standard_normal(g.shape[0])
    b = rng.normal(0.0, 1.5, 40)
    y = rng.uniform(size=g.shape[0]) < 1 / (1 + np.exp(-(b[g] + x)))
    fit = multilevel.fit("y ~ x + (1 | g)", pd.DataFrame({"y": y, "x": x, "g": g}), family="bernoulli",
                         chains=2, draws=400, warmup=400, seed=2, cores=1, progress=False)
    phi = np.exp(fit.idata.sampler_state["log_scale"].values).T  # (group, chain)
    assert np.all(phi <= PHI_MAX + 1e-12)
    below = phi < 0.9 * PHI_MAX  # settled clearly below the cap
    assert below.mean() > 0.05, phi  # measured 0.11 of the (group, chain) pairs
    rate = fit.acceptance().values
    assert abs(rate[below].mean() - BETA_TARGET) < 0.1, rate[below]  # there: near the target (measured 0.63)
    assert rate[~below].mean() > BETA_TARGET + 0.1, rate[~below]  # at the cap: above it (measured 0.82)
    assert rate.min() > 0.3, rate.min()


def test_report_warns_naming_groups_with_extreme_acceptance(acceptance_fits):
    fit = acceptance_fits["textbook"]
    rate = fit.acceptance().mean(axis=1)
    assert rate["heavy"] < 0.05 and rate["single"] > 0.90, rate[["heavy", "single"]]
    assert ((rate >= 0.05) & (rate <= 0.90)).sum() == 30
    lines = str(fit).splitlines()
    low = [line for line in lines if "acceptance below 5%" in line]
    high = [line for line in lines if "acceptance above 90%" in line]
    assert len(low) == 1 and "heavy" in low[0] and "single" not in low[0] and "g0" not in low[0], low
    assert len(high) == 1 and "single" in high[0] and "heavy" not in high[0] and "g0" not in high[0], high


def test_gaussian_fit_has_no_acceptance(hsb82):
    fit = multilevel.fit("mAch ~ ses + (1 | school)", hsb82, chains=1, draws=20, warmup=20, seed=1, progress=False)
    assert fit.acceptance() is None
    assert "acceptance" not in str(fit)


# -- (e) log-likelihood, LOO, save/load, command line -----------------------------------------

def hand_eta(fit, df, terms):
    """The linear predictor (chain, draw, obs) from the draws and the data's own columns, in
    the fit's row order: sum over terms of beta_j[term] * column (+ alpha, + offset)."""
    rows = fit.idata.constant_data["row_label"].values
    d = df.loc[rows]
    post = fit.posterior
    beta = post["beta"].sel(group=xr_index(d["g"].to_numpy()))
    eta = np.zeros((post.sizes["chain"], post.sizes["draw"], len(d)))
    for term, col in terms["varying"].items():
        eta += beta.sel(term=term).values * (1.0 if col is None else d[col].to_numpy())
    for term, col in terms.get("fixed", {}).items():
        eta += post["alpha"].sel(fixed_term=term).values[..., None] * d[col].to_numpy()
    if "offset" in terms:
        eta += np.log(d[terms["offset"]].to_numpy())
    return eta, d


def xr_index(values):
    import xarray as xr

    return xr.DataArray([str(v) for v in values], dims="obs")  # group labels are strings


@pytest.fixture(scope="module")
def small_fits():
    """One small fit per family (200 draws x 2 chains, log-likelihood stored)."""
    run = dict(chains=2, draws=200, warmup=200, seed=2, cores=1, progress=False, log_likelihood=True)
    pois, _ = poisson_data(seed=31, m=25)
    bern, _ = bernoulli_data(seed=32, m=25)
    binom, _ = binomial_data(seed=33, m=25)
    return {
        "poisson": (multilevel.fit("y ~ x + z + offset(np.log(exposure)) + (x | g)", pois, family="poisson", **run), pois,
                    dict(varying={"Intercept": None, "x": "x"}, fixed={"z": "z"}, offset="exposure")),
        "bernoulli": (multilevel.fit("yb ~ x + (1 | g)", bern, family="bernoulli", **run), bern,
                      dict(varying={"Intercept": None}, fixed={"x": "x"})),
        "binomial": (multilevel.fit("p(s, n) ~ x + (x | g)", binom, family="binomial", **run), binom,
                     dict(varying={"Intercept": None, "x": "x"})),
    }


@pytest.mark.parametrize("family", ["poisson", "bernoulli", "binomial"])
def test_pointwise_loglik_equals_scipy(small_fits, family):
    fit, df, terms = small_fits[family]
    assert "log_likelihood" in fit.idata.groups()
    eta, d = hand_eta(fit, df, terms)
    if family == "poisson":
        expected = stats.poisson.logpmf(d["y"].to_numpy(), np.exp(eta))
    elif family == "bernoulli":
        expected = stats.bernoulli.logpmf(d["yb"].to_numpy().astype(int), expit(eta))
    else:
        expected = stats.binom.logpmf(d["s"].to_numpy(), d["n"].to_numpy(), expit(eta))
    stored = fit.idata.log_likelihood["y"].values
    assert stored.shape == expected.shape
    assert np.allclose(stored, expected, rtol=1e-9, atol=1e-9)
    # and the on-demand computation (from the draws, in chunks) agrees with the stored one
    idata = fit.idata.copy()
    del idata["log_likelihood"]
    on_demand = multilevel.Fit(idata).log_likelihood(chunk=37).values
    assert np.allclose(on_demand, stored, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", ["poisson", "bernoulli", "binomial"])
def test_loo(small_fits, family):
    import arviz as az

    fit = small_fits[family][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto-k warnings of a short run are not the point
        res = az.loo(fit.idata)
        # Fit.loo estimates PSIS's relative ESS from the population parameters, az.loo from
        # every posterior variable; with the same reff they agree exactly
        own = fit.loo(reff=0.7)
        same = az.loo(fit.idata, reff=0.7)
    assert np.isfinite(res.elpd_loo) and np.isfinite(res.p_loo) and res.p_loo > 0
    assert own.elpd_loo == pytest.approx(same.elpd_loo, rel=1e-12)
    assert own.elpd_loo == pytest.approx(res.elpd_loo, abs=0.5)
    # elpd_loo cannot exceed the log pointwise predictive density of the data
    lppd = np.sum(np.log(np.mean(np.exp(fit.log_likelihood().values), axis=(0, 1))))
    assert res.elpd_loo <= lppd + 1e-9


@pytest.mark.parametrize("family", ["poisson", "bernoulli", "binomial"])
def test_save_load_round_trip(small_fits, family, tmp_path):
    fit = small_fits[family][0]
    path = fit.save(tmp_path / f"{family}.nc")
    back = multilevel.load(path)
    assert back.family == family and back.formula == fit.formula
    assert back.attrs["proposal"] == "laplace"
    assert set(back.posterior.data_vars) == set(fit.posterior.data_vars)
    for v in fit.posterior.data_vars:
        assert np.array_equal(back.posterior[v].values, fit.posterior[v].values), v
    for v in ("accept_beta", "accept_alpha", "loglik"):
        assert np.array_equal(back.idata.sample_stats[v].values, fit.idata.sample_stats[v].values), v
    pd.testing.assert_frame_equal(back.acceptance(), fit.acceptance())
    assert np.allclose(back.log_likelihood().values, fit.log_likelihood().values)
    for v in ("trials", "offset"):  # stored unless all ones (trials) or all zeros (offset)
        assert (v in back.idata.constant_data) == (v in fit.idata.constant_data), v
        if v in fit.idata.constant_data:
            assert np.array_equal(back.idata.constant_data[v].values, fit.idata.constant_data[v].values), v
    assert ("trials" in fit.idata.constant_data) == (family == "binomial")
    assert ("offset" in fit.idata.constant_data) == (family == "poisson")
    assert "Metropolis acceptance of beta_j" in str(back)
    assert str(back).splitlines()[0] == str(fit).splitlines()[0]


from clitools import run_main as run_cli


CLI_RUN = ["--chains", "2", "--draws", "200", "--warmup", "200", "--seed", "1", "--cores", "1", "--no-progress"]


def test_cli_fit_binomial_cbpp(tmp_path):
    out = tmp_path / "cbpp.nc"
    code, stdout, stderr = run_cli(["fit", "cbpp", "--formula", "p(incidence, size) ~ period + (1 | herd)",
                                    "--family", "binomial", *CLI_RUN, "--out", out])
    assert code == 0, stderr
    assert "Family: binomial (logit link)" in stdout
    assert "period[2]" in stdout and "Metropolis acceptance of beta_j" in stdout
    fit = multilevel.load(out)
    assert fit.family == "binomial" and fit.posterior.sizes["group"] == 15
    code, stdout2, stderr = run_cli(["summary", out])
    assert code == 0, stderr
    assert "Metropolis acceptance of beta_j" in stdout2


def test_lme4_cbind_response_is_the_same_binomial_model():
    """lme4 writes a binomial response cbind(successes, failures): the same model, and with the
    same seed the same draws, as p(successes, trials)."""
    run = dict(chains=1, draws=50, warmup=50, seed=3, cores=1, progress=False)
    a = multilevel.fit("p(incidence, size) ~ period + (1 | herd)", "cbpp", family="binomial", **run)
    b = multilevel.fit("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp", family="binomial", **run)
    assert b.formula == "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    for name in ("theta", "alpha", "Sigma", "beta"):
        np.testing.assert_array_equal(a.posterior[name].values, b.posterior[name].values)


def test_lme4_proportion_with_trials_as_weights_is_the_same_binomial_model(tmp_path):
    """lme4's glmer(incidence/size ~ ..., weights = size, family = binomial), and a column of
    proportions with its trials as weights: the same draws as p(successes, trials), the fit
    recording the p() form it was read as (so a saved fit loads without the weights). A
    proportion without trials, or weights that are not the trials, are refused in one line."""
    run = dict(chains=1, draws=50, warmup=50, seed=3, cores=1, progress=False)
    cbpp = multilevel.load_dataset("cbpp").assign(prop=lambda d: d.incidence / d["size"])
    a = multilevel.fit("p(incidence, size) ~ period + (1 | herd)", cbpp, family="binomial", **run)
    b = multilevel.fit("incidence/size ~ period + (1 | herd)", cbpp, family="binomial", weights="size", **run)
    c = multilevel.fit("prop ~ period + (1 | herd)", cbpp, family="binomial", weights="size", **run)
    assert b.formula == "p(incidence, size) ~ period + (1 | herd)"
    for fit in (b, c):
        for name in ("theta", "alpha", "Sigma", "beta"):
            np.testing.assert_array_equal(a.posterior[name].values, fit.posterior[name].values)
    back = multilevel.load(c.save(tmp_path / "prop.nc"))
    pd.testing.assert_frame_equal(back.predict(cbpp.iloc[:5], summary=True), c.predict(cbpp.iloc[:5], summary=True))
    for formula, weights, message in [
        ("incidence/size ~ period + (1 | herd)", None, r"is a proportion: .*weights='size'.*p\(incidence, size\)"),
        ("prop ~ period + (1 | herd)", "incidence", "whole numbers of successes"),
        ("p(incidence, size) ~ period + (1 | herd)", "size", "already names them"),
    ]:
        with pytest.raises(multilevel.ModelError, match=message) as info:
            multilevel.Model(formula, cbpp, family="binomial", weights=weights)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("formula", ["cbind(incidence) ~ period + (1 | herd)",
                                     "cbind(incidence, size, size) ~ period + (1 | herd)"])
def test_cbind_needs_two_columns(formula):
    with pytest.raises(multilevel.ModelError, match=r"cbind\(successes, failures\)"):
        multilevel.Model(formula, "cbpp", family="binomial")


@pytest.mark.parametrize("data, formula, fragment", [
    ("hsb82", "mAch ~ ses + (1 | school)", "negative"),  # mAch: real-valued, some negative
    ("sleepstudy", "Reaction ~ Days + (1 | Subject)", "non-integer"),
])
def test_cli_poisson_with_non_count_response_exits_2(data, formula, fragment):
    code, stdout, stderr = run_cli(["fit", data, "--formula", formula, "--family", "poisson", *CLI_RUN])
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert fragment in lines[0] and "count" in lines[0], lines[0]


def test_cli_unknown_family_exits_2():
    code, _, stderr = run_cli(["fit", "cbpp", "--formula", "p(incidence, size) ~ period + (1 | herd)",
                               "--family", "negbin", *CLI_RUN])
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown family" in lines[0], stderr
