"""lme4-style accessors (issue 11, point 9): fixef, ranef, coef and VarCorr equal hand
computations from the draws and are labelled like lme4's; predict() without new data gives
the fitted values of the data used, in the data's order; an observation-level effect is
identified in a GLM and fits (issue 11, point 6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel import ModelError
from multilevel.predict import hdi

FORMULA = "y ~ z + c + x + (x | g)"
SMALL = dict(chains=2, draws=200, warmup=200, seed=5, cores=1, progress=False)
COLUMNS = ["mean", "sd", "hdi_3%", "hdi_97%"]


def make_frame(seed: int = 4, m: int = 10, n: int = 12) -> pd.DataFrame:
    """Rows shuffled, index labels 100, 101, ... in the shuffled order (so the design's sort
    by group must be undone), with a fixed-only numeric z and categorical c."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), n)
    x, z = rng.normal(size=g.size), rng.normal(size=g.size)
    c = rng.choice(["a", "b", "d"], size=g.size)
    b0, b1 = 2 + rng.normal(size=m), 1 + 0.5 * rng.normal(size=m)
    y = b0[g] + b1[g] * x + 0.7 * z + (c == "b") + rng.normal(size=g.size)
    frame = pd.DataFrame({"y": y, "x": x, "z": z, "c": c, "g": g}).iloc[rng.permutation(g.size)]
    return frame.set_axis(np.arange(100, 100 + g.size))


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture(scope="module")
def fit(frame):
    return multilevel.fit(FORMULA, frame, **SMALL)


def flat(values: np.ndarray) -> np.ndarray:
    """(chain, draw, ...) -> (chain * draw, ...)."""
    return values.reshape(-1, *values.shape[2:])


def assert_summary(row: pd.Series, draws: np.ndarray) -> None:
    """``row`` holds mean, sd and the 94% HDI of the 1-d ``draws``."""
    lo, hi = hdi(draws[:, None], 0.94)
    np.testing.assert_allclose(row[COLUMNS].to_numpy(dtype=float), [draws.mean(), draws.std(ddof=1), lo[0], hi[0]],
                               rtol=1e-10, atol=1e-12)


# -- fixef ----------------------------------------------------------------------------------

def test_fixef_terms_in_formula_order_with_hand_summaries(fit):
    table = fit.fixef()
    assert table.index.name == "term"
    assert list(table.index) == ["Intercept", "z", "c[b]", "c[d]", "x"]
    assert list(table.columns) == COLUMNS
    post = fit.posterior
    assert_summary(table.loc["x"], flat(post["theta"].sel(term="x").values))
    assert_summary(table.loc["c[b]"], flat(post["alpha"].sel(fixed_term="c[b]").values))


def test_hdi_prob_names_the_interval_columns(fit):
    table = fit.fixef(hdi_prob=0.9)
    assert list(table.columns) == ["mean", "sd", "hdi_5%", "hdi_95%"]
    assert (table["hdi_95%"] <= fit.fixef()["hdi_97%"] + 1e-12).all()
    with pytest.raises(ModelError, match="hdi_prob"):
        fit.VarCorr(hdi_prob=1.5)


# -- ranef and coef -------------------------------------------------------------------------

def test_ranef_is_beta_minus_theta_per_group(fit):
    table = fit.ranef()
    assert table.index.names == ["factor", "group", "term"]
    assert len(table) == 10 * 2
    assert set(table.index.get_level_values("factor")) == {"g"}
    assert list(table.index[:4]) == [("g", "0", "Intercept"), ("g", "0", "x"), ("g", "1", "Intercept"), ("g", "1", "x")]
    post = fit.posterior
    b = post["beta"].sel(group="7", term="x") - post["theta"].sel(term="x")
    assert_summary(table.loc[("g", "7", "x")], flat(b.values))


def test_coef_has_every_fixed_term_per_group(fit):
    table = fit.coef()
    assert table.index.names == ["factor", "group", "term"]
    assert list(table.loc[("g", "3")].index) == ["Intercept", "z", "c[b]", "c[d]", "x"]
    assert_summary(table.loc[("g", "3", "Intercept")], flat(fit.posterior["beta"].sel(group="3", term="Intercept").values))
    # a fixed-only term is the population effect, the same in every group
    fixed = fit.fixef()
    z_rows = table.xs("z", level="term")
    assert len(z_rows) == 10
    np.testing.assert_allclose(z_rows.to_numpy(dtype=float), np.tile(fixed.loc["z"].to_numpy(dtype=float), (10, 1)))
    # coef = fixef + ranef for the varying terms (in the mean)
    np.testing.assert_allclose(table.xs("x", level="term")["mean"], fixed.loc["x", "mean"]
                               + fit.ranef().xs("x", level="term")["mean"], rtol=1e-10)


def test_zero_mean_term_deviation_is_beta_and_is_listed_last_in_coef(frame):
    fit = multilevel.fit("y ~ x + (1 + z | g)", frame, **SMALL)
    assert fit.zero_mean_terms == ["z"]
    assert list(fit.fixef().index) == ["Intercept", "x"]
    assert list(fit.coef().loc[("g", "0")].index) == ["Intercept", "x", "z"]
    ranef = fit.ranef()
    assert_summary(ranef.loc[("g", "2", "z")], flat(fit.posterior["beta"].sel(group="2", term="z").values))
    np.testing.assert_allclose(ranef.xs("z", level="term")["mean"], fit.coef().xs("z", level="term")["mean"])


# -- VarCorr --------------------------------------------------------------------------------

def test_varcorr_sds_correlation_and_residual(fit):
    table = fit.VarCorr()
    assert table.index.names == ["factor", "kind", "term", "term2"]
    assert list(table.index) == [("g", "sd", "Intercept", ""), ("g", "sd", "x", ""), ("g", "cor", "Intercept", "x"),
                                 ("Residual", "sd", "", "")]
    S = flat(fit.posterior["Sigma"].values)
    sd = np.sqrt(np.diagonal(S, axis1=1, axis2=2))
    assert_summary(table.loc[("g", "sd", "x", "")], sd[:, 1])
    assert_summary(table.loc[("g", "cor", "Intercept", "x")], S[:, 0, 1] / (sd[:, 0] * sd[:, 1]))
    assert_summary(table.loc[("Residual", "sd", "", "")], np.sqrt(flat(fit.posterior["sigma2"].values)))


# -- predict() without new data ----------------------------------------------------------------

def test_fitted_values_equal_predictions_for_the_same_rows_in_data_order(fit, frame):
    for group_effects in (True, False):
        fitted = fit.predict(kind="linear", include_group_effects=group_effects)
        assert fitted.dims == ("chain", "draw", "obs") and fitted.shape == (2, 200, len(frame))
        # rows in the order of the index labels, here the data's order once sorted
        assert fitted["row"].values.tolist() == sorted(frame.index)
        again = fit.predict(frame.sort_index(), kind="linear", include_group_effects=group_effects)
        np.testing.assert_allclose(fitted.values, again.values, rtol=1e-10, atol=1e-10)
        assert ("group" in fitted.coords) == group_effects
    grouped = fit.predict()
    assert grouped["group"].values.tolist() == [str(v) for v in frame.sort_index()["g"]]


def test_fitted_summary_indexed_by_row_labels(fit, frame):
    table = fit.predict(summary=True)
    assert list(table.columns) == COLUMNS
    assert table.index.name == "row" and list(table.index) == sorted(frame.index)
    mean = fit.linear_predictor().mean(axis=(0, 1))  # design order, sorted by group
    labels = fit.idata.constant_data["row_label"].values
    np.testing.assert_allclose(table.loc[labels, "mean"].to_numpy(), mean, rtol=1e-10)


def test_fitted_responses_are_seeded_and_extra_arguments_refused(fit):
    a = fit.predict(kind="response", seed=3, draws=20)
    b = fit.predict(kind="response", seed=3, draws=20)
    assert a.shape == (2, 20, 120)
    np.testing.assert_array_equal(a.values, b.values)
    with pytest.raises(ModelError, match="new rows"):
        fit.predict(offset=0.5)


# -- GLMs: an observation-level effect -----------------------------------------------------------

@pytest.fixture(scope="module")
def poisson_obs_fit():
    rng = np.random.default_rng(2)
    n = 60
    x = rng.normal(size=n)
    y = rng.poisson(np.exp(0.5 + 0.4 * x + 0.6 * rng.normal(size=n)))
    frame = pd.DataFrame({"y": y, "x": x, "obs": np.arange(n)})
    return multilevel.fit("y ~ x + (1 | obs)", frame, family="poisson", **SMALL)


def test_poisson_observation_level_effect_fits(poisson_obs_fit):
    fit = poisson_obs_fit
    assert fit.posterior.sizes["group"] == 60
    assert np.all(np.isfinite(fit.posterior["Sigma"].values))
    assert list(fit.ranef().index[:2]) == [("obs", "0", "Intercept"), ("obs", "1", "Intercept")]


def test_glm_varcorr_has_no_residual_row(poisson_obs_fit):
    table = poisson_obs_fit.VarCorr()
    assert list(table.index) == [("obs", "sd", "Intercept", "")]
    assert list(poisson_obs_fit.fixef().index) == ["Intercept", "x"]


# -- lme4's other accessors: confint, fitted, residuals, nobs, ngrps, sigma ----------------------

def test_confint_has_lme4s_rows_and_columns_and_the_posteriors_quantiles(fit):
    table = multilevel.confint(fit)
    assert list(table.columns) == ["2.5 %", "97.5 %"] and table.index.name == "parameter"
    assert list(table.index) == ["sd_Intercept|g", "sd_x|g", "cor_x.Intercept|g", "sigma", "Intercept", "z", "c[b]",
                                 "c[d]", "x"]
    sd_x = np.sqrt(flat(fit.posterior["Sigma"].values)[:, 1, 1])
    np.testing.assert_allclose(table.loc["sd_x|g"], np.quantile(sd_x, [0.025, 0.975]), rtol=1e-12)
    # method="hdi" gives fixef's HDI at the same probability
    hdi90 = fit.confint(0.9, method="hdi")
    assert list(hdi90.columns) == ["5 %", "95 %"]
    np.testing.assert_allclose(hdi90.loc[["Intercept", "x"]].to_numpy(),
                               fit.fixef(hdi_prob=0.9).loc[["Intercept", "x"], ["hdi_5%", "hdi_95%"]].to_numpy())
    for bad in (dict(level=95), dict(method="profile")):
        with pytest.raises(ModelError) as info:
            fit.confint(**bad)
        assert "\n" not in str(info.value)


def test_fitted_and_residuals_are_lme4s_at_the_posterior_mean(fit, frame):
    mu = multilevel.fitted(fit)
    assert mu.index.tolist() == sorted(frame.index)
    np.testing.assert_allclose(mu.to_numpy(), fit.predict(summary=True)["mean"].to_numpy())
    r = fit.residuals()
    np.testing.assert_allclose(r.to_numpy(), (frame.y.loc[mu.index] - mu).to_numpy(), rtol=1e-12)
    pearson = fit.residuals("pearson")
    np.testing.assert_allclose(pearson.to_numpy(), r.to_numpy() / fit.sigma(), rtol=1e-12)
    with pytest.raises(ModelError, match="type must be one of"):
        fit.residuals("deviance")


def test_counts_and_sigma(fit, poisson_obs_fit):
    assert multilevel.nobs(fit) == fit.nobs() == 120
    assert fit.ngrps().to_dict() == {"g": 10} and poisson_obs_fit.ngrps().to_dict() == {"obs": 60}
    assert fit.sigma() == pytest.approx(np.sqrt(fit.posterior["sigma2"].values).mean(), rel=1e-12)
    assert poisson_obs_fit.sigma() == 1.0
    # a Poisson's Pearson residuals divide by sqrt(mu)
    mu = poisson_obs_fit.fitted()
    np.testing.assert_allclose(poisson_obs_fit.residuals("pearson").to_numpy(),
                               (poisson_obs_fit.residuals() / np.sqrt(mu)).to_numpy(), rtol=1e-12)


def test_binomial_residuals_are_proportions_and_crossed_fits_count_each_factor():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"g": rng.integers(0, 8, 200), "h": rng.integers(0, 5, 200), "n": rng.integers(1, 9, 200)})
    df["s"] = rng.binomial(df.n, 0.4)
    fit = multilevel.fit("p(s, n) ~ 1 + (1 | g) + (1 | h)", df, family="binomial", **SMALL)
    p = fit.fitted()
    np.testing.assert_allclose(fit.residuals().to_numpy(), (df.s / df.n - p).to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(fit.residuals("pearson").to_numpy(),
                               ((df.s / df.n - p) / np.sqrt(p * (1 - p) / df.n)).to_numpy(), rtol=1e-12)
    assert fit.ngrps().to_dict() == {"g": 8, "h": 5}
    assert list(fit.confint().index) == ["sd_Intercept|g", "sd_Intercept|h", "Intercept"]


def test_formula_order_reads_rs_scale_as_written():
    from multilevel.accessors import formula_order

    labels = ["Intercept", "sector[Public]", "scale(ses)", "np.log(x)"]
    assert formula_order("y ~ scale(ses) + np.log(x) + sector + (1 | g)", labels) == [
        "Intercept", "scale(ses)", "np.log(x)", "sector[Public]"]
