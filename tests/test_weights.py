"""Precision weights of the Gaussian family (lme4's ``weights``): y_i ~ N(eta_i, sigma2 / w_i).

* the weighted statistics are the unweighted statistics of the rows scaled by sqrt(w_i),
  n_j still counting rows, and the SSR from them is sum_i w_i r_i^2;
* exact posterior: with Sigma and sigma2 held, the sampler of (theta, beta, alpha) matches
  the Gaussian posterior computed densely with W, and is told apart from the unweighted one;
  with everything else held, sigma2 matches IG((nu0 + N) / 2, (nu0 sigma0^2 + sum w r^2) / 2);
* weights all 1 give the draws of no weights; weights all 4 (sqrt(4) = 2 scales exactly in
  floating point) give the draws of no weights with sigma2 times 4, for every sampler;
* pointwise log-likelihood and posterior predictive replicates use sigma2 / w_i;
* bad weights are one-line errors (CLI: exit status 2); a weighted fit saves, loads and
  resumes to the same model.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import multilevel
from clitools import run_main
from multilevel.api import model_of
from multilevel.run import run_chains
from multilevel.samplers.gibbs import GaussianGibbs
from multilevel.suffstats import gaussian_stats, residual_sum_of_squares

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import arviz as az

Z_MAX = 4.5  # as in test_exact_posterior: at most ~100 z-scores per comparison
SIGMA = np.array([[1.0, 0.3], [0.3, 0.5]])
SIGMA2 = 1.5
FORMULA = "y ~ x + z + (x | g)"
SMALL = dict(chains=2, draws=60, warmup=40, cores=1, progress=False)


def weighted_data(seed: int, sizes, sigma2: float = SIGMA2) -> pd.DataFrame:
    """y_i = beta_j0 + beta_j1 x_i + 0.7 z_i + e_i, e_i ~ N(0, sigma2 / w_i), w_i in (0.2, 5),
    rows shuffled (so the design's sort by group must carry the weights along)."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(sizes)
    g = np.repeat(np.arange(sizes.shape[0]), sizes)
    N = g.shape[0]
    x, z = rng.standard_normal(N), rng.standard_normal(N)
    w = np.exp(rng.uniform(np.log(0.2), np.log(5.0), N))
    beta = np.array([1.0, 2.0]) + rng.standard_normal((sizes.shape[0], 2)) @ np.linalg.cholesky(SIGMA).T
    y = beta[g, 0] + beta[g, 1] * x + 0.7 * z + np.sqrt(sigma2 / w) * rng.standard_normal(N)
    df = pd.DataFrame({"y": y, "x": x, "z": z, "g": g, "w": w})
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return weighted_data(5, [6, 9, 4, 12, 7, 10, 5, 8])


@pytest.fixture(scope="module")
def weighted_fit(data):
    return multilevel.fit(FORMULA, data, weights="w", seed=3, **SMALL)


# -- design and statistics --------------------------------------------------------------------

def test_weights_follow_dropped_and_sorted_rows(data):
    df = data.copy()
    df.loc[3, "x"] = np.nan
    with pytest.warns(UserWarning, match="dropped 1 rows"):
        model = multilevel.Model(FORMULA, df, weights="w")
    d = model.design
    kept = df.drop(index=3)
    np.testing.assert_array_equal(d.weights, kept.loc[d.row_labels, "w"].to_numpy())
    # values instead of a column name: the same design
    with pytest.warns(UserWarning, match="dropped 1 rows"):
        by_values = multilevel.Model(FORMULA, df, weights=df["w"].to_numpy())
    np.testing.assert_array_equal(by_values.design.weights, d.weights)
    assert multilevel.Model(FORMULA, data).design.weights is None


def test_weighted_stats_are_scaled_rows_stats(data):
    model = multilevel.Model(FORMULA, data, weights="w")
    d = model.design
    root = np.sqrt(d.weights)
    scaled = replace(d, y=d.y * root, X=d.X * root[:, None], Z=d.Z * root[:, None], weights=None)
    st, ls = model.stats, model.estimates
    st0, ls0 = gaussian_stats(scaled)
    for name in st._fields:
        if name != "logw":
            np.testing.assert_allclose(getattr(st, name), getattr(st0, name), rtol=1e-10, atol=1e-12, err_msg=name)
    for name in ls._fields:
        np.testing.assert_allclose(getattr(ls, name), getattr(ls0, name), rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(st.n, d.group_sizes)  # still counts of rows
    assert st.logw == pytest.approx(np.log(d.weights).sum())
    # against the definitions, row by row
    w, g = d.weights, d.group
    for j in range(d.n_groups):
        rows = g == j
        Xj, wj = d.X[rows], w[rows]
        np.testing.assert_allclose(st.XtX[j], Xj.T @ (wj[:, None] * Xj), rtol=1e-10)
        np.testing.assert_allclose(st.Xty[j], Xj.T @ (wj * d.y[rows]), rtol=1e-10)
    np.testing.assert_allclose(st.ZtZ, d.Z.T @ (w[:, None] * d.Z), rtol=1e-10)
    rng = np.random.default_rng(0)
    beta, alpha = rng.standard_normal((d.n_groups, 2)), rng.standard_normal(1)
    resid = d.y - np.einsum("ik,ik->i", d.X, beta[g]) - d.Z @ alpha
    assert residual_sum_of_squares(st, beta, alpha) == pytest.approx(float(w @ resid**2), rel=1e-10)
    # default priors from weighted least squares: alpha_cov = N sigma0_sq (Z'WZ)^-1
    pr = model.priors
    np.testing.assert_allclose(pr.alpha_cov, d.n_obs * pr.sigma0_sq * np.linalg.inv(st.ZtZ), rtol=1e-8)


# -- exact posteriors ---------------------------------------------------------------------------

PRIORS = multilevel.Priors(mu0=[0.5, -0.3], Lambda0=[[0.8, 0.2], [0.2, 0.6]], eta0=5.0, S0=np.eye(2), nu0=2.0,
                           sigma0_sq=1.0, alpha_mean=[0.2], alpha_cov=[[0.5]])


def weighted_closed_form(design, weights, priors, Sigma, sigma2):
    """Mean and covariance of (theta, beta_1..beta_m, alpha) | Sigma, sigma2, y by dense algebra:
    precision K_prior + D'WD / sigma2, mean its inverse times (h_prior + D'Wy / sigma2)."""
    X, Z, y, g = design.X, design.Z, np.asarray(design.y), design.group
    N, p, r, m = X.shape[0], 2, Z.shape[1], design.n_groups
    d = p + m * p + r
    D = np.zeros((N, d))
    for i in range(N):
        D[i, p + g[i] * p: p + (g[i] + 1) * p] = X[i]
    D[:, p + m * p:] = Z
    Si, L0i, A0i = np.linalg.inv(Sigma), np.linalg.inv(priors.Lambda0), np.linalg.inv(priors.alpha_cov)
    K, h = np.zeros((d, d)), np.zeros(d)
    K[:p, :p], h[:p] = L0i + m * Si, L0i @ priors.mu0
    for j in range(m):
        b = slice(p + j * p, p + (j + 1) * p)
        K[b, b], K[:p, b], K[b, :p] = Si, -Si, -Si
    K[p + m * p:, p + m * p:], h[p + m * p:] = A0i, A0i @ priors.alpha_mean
    W = np.diag(weights)
    cov = np.linalg.inv(K + D.T @ W @ D / sigma2)
    return cov @ (h + D.T @ W @ y / sigma2), cov


def mcse(series: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.mcse(az.convert_to_dataset({"s": series}), method="mean")["s"].values


def z_scores(u, mean, cov):
    ubar = u.mean(axis=(0, 1))
    c = u - ubar
    ia, ib = np.tril_indices(u.shape[-1])
    prod = c[..., ia] * c[..., ib]
    return np.concatenate([(ubar - mean) / mcse(u), (prod.mean(axis=(0, 1)) - cov[ia, ib]) / mcse(prod)])


@pytest.fixture(scope="module")
def exact_draws():
    df = weighted_data(11, [2, 3, 4, 5, 7, 9])
    model = multilevel.Model(FORMULA, df, priors=PRIORS, weights="w")
    kernel = GaussianGibbs(model.stats, model.priors, model.design.theta_free,
                           update=frozenset({"beta", "theta", "alpha"}), start={"Sigma": SIGMA, "sigma2": SIGMA2})
    res = run_chains(kernel, chains=4, draws=4000, warmup=300, seed=11, cores=1, progress=False)
    dr = res.draws
    u = np.concatenate([dr["theta"], dr["beta"].reshape(4, 4000, -1), dr["alpha"]], axis=-1)
    return model, u


def test_weighted_sampler_matches_dense_closed_form(exact_draws):
    model, u = exact_draws
    mean, cov = weighted_closed_form(model.design, model.design.weights, model.priors, SIGMA, SIGMA2)
    z = z_scores(u, mean, cov)
    assert np.abs(z).max() < Z_MAX, np.round(z, 2)
    np.testing.assert_allclose(u.std(axis=(0, 1)), np.sqrt(np.diag(cov)), rtol=0.03)
    # the criterion tells the weighted posterior from the unweighted one
    mean1, cov1 = weighted_closed_form(model.design, np.ones(model.design.n_obs), model.priors, SIGMA, SIGMA2)
    assert np.abs(z_scores(u, mean1, cov1)).max() > Z_MAX


def test_sigma2_conditional_counts_rows_and_weighs_residuals(data):
    """sigma2 | beta, alpha ~ IG((nu0 + N) / 2, (nu0 sigma0^2 + sum_i w_i r_i^2) / 2): N rows, not sum w."""
    model = multilevel.Model(FORMULA, data, priors=PRIORS, weights="w")
    d = model.design
    beta = np.tile([1.0, 2.0], (d.n_groups, 1))
    start = {"beta": beta, "alpha": np.array([0.7]), "theta": np.array([1.0, 2.0]), "Sigma": SIGMA}
    kernel = GaussianGibbs(model.stats, model.priors, d.theta_free, update=frozenset({"sigma2"}), start=start)
    s2 = run_chains(kernel, chains=1, draws=20000, warmup=0, seed=4, cores=1, progress=False).draws["sigma2"][0]
    resid = d.y - np.einsum("ik,ik->i", d.X, beta[d.group]) - 0.7 * d.Z[:, 0]
    exact = stats.invgamma((PRIORS.nu0 + d.n_obs) / 2, scale=(PRIORS.nu0 * PRIORS.sigma0_sq + d.weights @ resid**2) / 2)
    se = exact.std() / np.sqrt(s2.size)  # independent draws
    assert abs(s2.mean() - exact.mean()) < Z_MAX * se
    assert abs(np.median(s2) - exact.median()) < Z_MAX * 1.3 * se
    wrong = stats.invgamma((PRIORS.nu0 + d.weights.sum()) / 2, scale=exact.kwds["scale"])  # counting sum w
    assert abs(s2.mean() - wrong.mean()) > Z_MAX * se


# -- equivalences with the unweighted model -----------------------------------------------------

def test_unit_weights_give_the_unweighted_draws(data):
    a = multilevel.fit(FORMULA, data, seed=8, **SMALL)
    b = multilevel.fit(FORMULA, data, weights=np.ones(len(data)), seed=8, **SMALL)
    for var in ("theta", "Sigma", "sigma2", "beta", "alpha"):
        np.testing.assert_array_equal(a.posterior[var].values, b.posterior[var].values)
    np.testing.assert_array_equal(a.idata.sample_stats["loglik"].values, b.idata.sample_stats["loglik"].values)
    assert "weights" not in a.attrs and b.attrs["weights"] == "given"


@pytest.mark.parametrize("sampler", ["collapsed", "interweaving", "centred"])
def test_weights_four_equal_unweighted_with_sigma2_times_four(data, sampler):
    """Weight c on every row is the unweighted model with sigma2 / c; the default priors follow
    (sigma0_sq from weighted residuals is c times larger). c = 4 scales rows by 2 exactly."""
    a = multilevel.fit(FORMULA, data, seed=2, sampler=sampler, **SMALL)
    b = multilevel.fit(FORMULA, data, weights=np.full(len(data), 4.0), seed=2, sampler=sampler, **SMALL)
    assert b.priors.sigma0_sq == pytest.approx(4 * a.priors.sigma0_sq, rel=1e-12)
    for var in ("theta", "Sigma", "beta", "alpha"):
        np.testing.assert_allclose(b.posterior[var].values, a.posterior[var].values, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.posterior["sigma2"].values, 4 * a.posterior["sigma2"].values, rtol=1e-9)
    # the same likelihood, pointwise and in total
    np.testing.assert_allclose(b.log_likelihood().values, a.log_likelihood().values, rtol=1e-9)
    np.testing.assert_allclose(b.idata.sample_stats["loglik"].values, a.idata.sample_stats["loglik"].values, rtol=1e-9)


# -- log-likelihood and predictions -------------------------------------------------------------

def test_pointwise_loglik_is_normal_with_variance_sigma2_over_w(weighted_fit):
    fit = weighted_fit
    d, post = fit.design, fit.posterior
    beta, alpha, s2 = post["beta"].values, post["alpha"].values, post["sigma2"].values
    eta = np.einsum("ik,cdik->cdi", d.X, beta[:, :, d.group]) + np.einsum("ir,cdr->cdi", d.Z, alpha)
    expected = stats.norm.logpdf(d.y, eta, np.sqrt(s2[..., None] / d.weights))
    np.testing.assert_allclose(fit.log_likelihood().values, expected, rtol=1e-10)
    np.testing.assert_allclose(fit.log_likelihood(chunk=7).values, expected, rtol=1e-10)  # computed on demand
    # the sampler's total log-likelihood is the sum of the pointwise ones
    np.testing.assert_allclose(fit.idata.sample_stats["loglik"].values, expected.sum(-1), rtol=1e-10)


def standardized_sd(noise, s2, w):
    """sd of noise * sqrt(w / sigma2) for the low- and the high-weight half of the rows."""
    zs = noise * np.sqrt(w / s2[..., None])
    low = w < np.median(w)
    return zs[..., low].std(), zs[..., ~low].std()


def test_replicates_and_response_predictions_use_the_weights(weighted_fit, data):
    fit = weighted_fit
    s2 = fit.posterior["sigma2"].values
    y_rep = fit.posterior_predictive(seed=1).values
    noise = y_rep - fit.linear_predictor()
    for sd in standardized_sd(noise, s2, fit.design.weights):
        assert sd == pytest.approx(1.0, abs=0.04)
    new = data.iloc[:40]
    lin = fit.predict(new, kind="linear").values
    resp = fit.predict(new, kind="response", seed=2, weights="w").values
    for sd in standardized_sd(resp - lin, s2, new["w"].to_numpy()):
        assert sd == pytest.approx(1.0, abs=0.06)
    default = fit.predict(new, kind="response", seed=2).values  # weight 1: variance sigma2
    assert ((default - lin) / np.sqrt(s2[..., None])).std() == pytest.approx(1.0, abs=0.04)
    with pytest.raises(multilevel.ModelError, match="weights column 'nope' is not in the new data"):
        fit.predict(new, kind="response", weights="nope")
    with pytest.raises(multilevel.ModelError, match="positive"):
        fit.predict(new, kind="response", weights=-1.0)


# -- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights, message", [
    ("nope", "weights column 'nope' is not in the data"),
    ("neg", "weights must be positive; 1 rows have weight <= 0"),
    ("zero", "weights must be positive"),
    ("nan", "weights must be finite numbers"),
    ("text", "weights must be finite numbers"),
    ([1.0, 2.0], r"weights must have one value per row \(61\)"),
])
def test_bad_weights_are_one_line_errors(data, weights, message):
    df = data.assign(neg=data["w"].where(data.index != 5, -1.0), zero=data["w"].where(data.index != 5, 0.0),
                     nan=data["w"].where(data.index != 5, np.nan), text="a")
    with pytest.raises(multilevel.ModelError, match=message) as info:
        multilevel.Model(FORMULA, df, weights=weights)
    assert "\n" not in str(info.value)


def test_weights_refused_for_other_families():
    with pytest.raises(multilevel.ModelError, match=r"weights apply to the gaussian family \(precision weights\) and to a binomial proportion \(its trials\), not to poisson"):
        multilevel.Model("y ~ Base + (1 | subject)", "epil", family="poisson", weights="Age")


def test_cli_bad_weights_exit_2(data, tmp_path):
    path = tmp_path / "d.csv"
    data.assign(neg=-data["w"]).to_csv(path, index=False)
    for extra, message in ((["--weights", "nope"], "weights column 'nope'"), (["--weights", "neg"], "positive")):
        code, out, err = run_main(["fit", path, "-f", FORMULA, *extra, "--no-progress"])
        assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    code, out, err = run_main(["fit", "epil", "-f", "y ~ Base + (1 | subject)", "--family", "poisson",
                               "--weights", "Age", "--no-progress"])
    assert code == 2 and "weights apply to the gaussian family" in err and err.count("\n") == 1, err


# -- saving, loading, resuming ------------------------------------------------------------------

def test_saved_weighted_fit_rebuilds_the_same_model_and_resumes_exactly(weighted_fit, data, tmp_path):
    path = weighted_fit.save(tmp_path / "w.nc")
    loaded = multilevel.load(path)
    assert loaded.attrs["weights"] == "w"
    np.testing.assert_array_equal(loaded.design.weights, weighted_fit.design.weights)
    np.testing.assert_allclose(loaded.log_likelihood().values, weighted_fit.log_likelihood().values)
    rebuilt = model_of(loaded)
    original = multilevel.Model(FORMULA, data, weights="w")
    for name in original.stats._fields:
        np.testing.assert_array_equal(getattr(rebuilt.stats, name), getattr(original.stats, name), err_msg=name)
    longer = multilevel.resume(path, draws=20, progress=False, cores=1)
    assert longer.attrs["weights"] == "w"
    direct = multilevel.fit(FORMULA, data, weights="w", seed=3, **{**SMALL, "draws": 80})
    for var in ("theta", "Sigma", "sigma2", "beta"):
        np.testing.assert_array_equal(longer.posterior[var].values, direct.posterior[var].values)
    assert "precision weights w" in longer.report()


def test_cli_fit_with_weights(data, tmp_path):
    path, out = tmp_path / "d.csv", tmp_path / "fit.nc"
    data.to_csv(path, index=False)
    code, stdout, err = run_main(["fit", path, "-f", FORMULA, "--weights", "w", "--chains", "2", "--draws", "60",
                                  "--warmup", "40", "--seed", "3", "--cores", "1", "--out", out, "--no-progress"])
    assert code == 0, err
    assert "precision weights w" in stdout
    saved = multilevel.load(out)
    api = multilevel.fit(FORMULA, pd.read_csv(path), weights="w", seed=3, **SMALL)
    np.testing.assert_array_equal(saved.posterior["beta"].values, api.posterior["beta"].values)
    new = tmp_path / "new.csv"
    data.iloc[:5].to_csv(new, index=False)
    code, stdout, err = run_main(["predict", out, new, "--kind", "response", "--weights", "w", "--seed", "1"])
    assert code == 0 and len(stdout.strip().splitlines()) == 6, err
