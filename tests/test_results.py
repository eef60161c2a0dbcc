"""Results (issue 2, points 4, 6, 7): the InferenceData of a fit, its summary and report,
the pointwise log-likelihood, NetCDF round trips, and the validation and recording of
priors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import multilevel
from multilevel import ModelError, Priors

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

SUMMARY_COLUMNS = ["mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]
HSB_FORMULA = "mAch ~ ses + (ses | school)"
SIM_FORMULA = "y ~ x + z + (x | g)"
SMALL = dict(chains=2, draws=200, warmup=100, progress=False, cores=1, seed=1)


def sim_data(seed: int = 11, m: int = 12, n: int = 10) -> pd.DataFrame:
    """y = b0_j + b1_j x + 0.7 z + e with int group labels and continuous (unique) y."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m) * 5 + 100, n)
    beta = np.array([2.0, -1.0]) + rng.normal(scale=[1.0, 0.5], size=(m, 2))
    x = rng.normal(size=g.size)
    z = rng.normal(size=g.size)
    j = (g - 100) // 5
    y = beta[j, 0] + beta[j, 1] * x + 0.7 * z + rng.normal(scale=0.8, size=g.size)
    df = pd.DataFrame({"y": y, "x": x, "z": z, "g": g})
    return df.iloc[rng.permutation(len(df))].reset_index(drop=True)


@pytest.fixture(scope="module")
def hsb():
    return multilevel.load_dataset("hsb82")


@pytest.fixture(scope="module")
def hsb_fit(hsb):
    return multilevel.fit(HSB_FORMULA, hsb, log_likelihood=True, **SMALL)


@pytest.fixture(scope="module")
def sim():
    return sim_data()


@pytest.fixture(scope="module")
def sim_fit(sim):
    return multilevel.fit(SIM_FORMULA, sim, log_likelihood=True, **SMALL)


def ll_var(idata) -> str:
    names = list(idata.log_likelihood.data_vars)
    assert len(names) == 1
    return names[0]


# -- InferenceData ------------------------------------------------------------------------

def test_posterior_variables_and_dims(hsb_fit, hsb):
    post = hsb_fit.idata.posterior
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 200
    assert post["theta"].dims == ("chain", "draw", "term")
    assert post["Sigma"].dims == ("chain", "draw", "term", "term_")
    assert post["sigma2"].dims == ("chain", "draw")
    assert post["beta"].dims == ("chain", "draw", "group", "term")
    assert list(post["term"].values) == ["Intercept", "ses"]
    assert list(post["term_"].values) == ["Intercept", "ses"]
    groups = post["group"].values
    assert len(groups) == 160
    assert set(map(str, groups)) == set(hsb["school"].astype(str))
    assert "1224" in set(groups.tolist())  # school labels kept as labels
    assert post["beta"].sel(group="1224", term="ses").shape == (2, 200)
    # Sigma draws are symmetric positive definite covariance matrices
    S = post["Sigma"].values
    np.testing.assert_allclose(S, np.swapaxes(S, -1, -2))
    assert np.all(np.linalg.eigvalsh(S) > 0)
    assert np.all(post["sigma2"].values > 0)


def test_fixed_only_effects_in_their_own_variable(sim_fit):
    post = sim_fit.idata.posterior
    assert post["alpha"].dims == ("chain", "draw", "fixed_term")
    assert list(post["fixed_term"].values) == ["z"]
    assert list(post["term"].values) == ["Intercept", "x"]
    # group labels are strings whatever the column held (here integers), as R's factor levels
    assert post["group"].values.dtype.kind == "U"
    assert post["group"].values[0] == "100"
    # z's true coefficient is 0.7 (sd of its posterior about 0.07 here)
    assert abs(float(post["alpha"].mean()) - 0.7) < 0.35


def test_observed_data(hsb_fit, hsb):
    obs = hsb_fit.idata.observed_data
    y = next(iter(obs.data_vars.values())).values
    assert y.shape == (len(hsb),)
    np.testing.assert_allclose(np.sort(y), np.sort(hsb["mAch"].to_numpy()))


def test_sample_stats(hsb_fit):
    ss = hsb_fit.idata.sample_stats
    assert len(ss.data_vars) >= 1
    for var in ss.data_vars.values():
        assert var.dims[:2] == ("chain", "draw")


def test_attributes(hsb_fit):
    attrs = hsb_fit.idata.posterior.attrs
    assert attrs["formula"] == HSB_FORMULA
    assert attrs["multilevel_version"] == multilevel.__version__
    priors = json.loads(attrs["priors"])
    for name in ("mu0", "Lambda0", "eta0", "S0", "nu0", "sigma0_sq"):
        assert name in priors
    # default priors of the specification: eta0 = p + 2, nu0 = 1
    assert priors["eta0"] == 4
    assert priors["nu0"] == 1
    assert np.asarray(priors["S0"]).shape == (2, 2)
    assert hsb_fit.formula == HSB_FORMULA


# -- log-likelihood -------------------------------------------------------------------------

def hand_loglik(fit, row: pd.Series) -> np.ndarray:
    """log N(y | beta_g0 + beta_g1 x + alpha z, sigma2) for one data row, per draw."""
    post = fit.idata.posterior
    beta = post["beta"].sel(group=str(int(row["g"])))
    mu = beta.sel(term="Intercept").values + beta.sel(term="x").values * row["x"]
    mu = mu + post["alpha"].sel(fixed_term="z").values * row["z"]
    return stats.norm.logpdf(row["y"], loc=mu, scale=np.sqrt(post["sigma2"].values))


def test_log_likelihood_stored_for_small_fit_and_matches_hand_computation(sim_fit, sim):
    idata = sim_fit.idata
    assert "log_likelihood" in idata.groups()
    stored = idata.log_likelihood[ll_var(idata)]
    assert stored.dims == ("chain", "draw", stored.dims[2])
    assert stored.shape == (2, 200, len(sim))
    computed = sim_fit.log_likelihood()
    np.testing.assert_allclose(np.asarray(computed), np.asarray(stored), rtol=1e-10)
    obs_y = next(iter(idata.observed_data.data_vars.values())).values
    for i in (0, 17, 63, len(sim) - 1):
        row = sim.iloc[i]
        (k,) = np.flatnonzero(obs_y == row["y"])
        expect = hand_loglik(sim_fit, row)
        np.testing.assert_allclose(np.asarray(stored)[:, :, k], expect, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(computed)[:, :, k], expect, rtol=1e-9, atol=1e-12)


def test_log_likelihood_on_demand_equals_stored(sim_fit, sim):
    lazy = multilevel.fit(SIM_FORMULA, sim, log_likelihood=False, **SMALL)
    assert "log_likelihood" not in lazy.idata.groups()
    # same seed, same draws
    np.testing.assert_array_equal(lazy.idata.posterior["beta"].values, sim_fit.idata.posterior["beta"].values)
    stored = np.asarray(sim_fit.log_likelihood())
    np.testing.assert_allclose(np.asarray(lazy.log_likelihood()), stored, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(lazy.log_likelihood(chunk=7)), stored, rtol=1e-10)


def test_log_likelihood_stored_only_on_request(sim):
    fit = multilevel.fit(SIM_FORMULA, sim, **SMALL)
    assert "log_likelihood" not in fit.idata.groups()
    on_demand = np.asarray(fit.log_likelihood())
    assert on_demand.shape == (2, 200, len(sim))
    assert fit.add_log_likelihood() is fit
    assert "log_likelihood" in fit.idata.groups()
    np.testing.assert_array_equal(fit.idata.log_likelihood["y"].values, on_demand)
    assert np.isfinite(float(az.loo(fit.idata).elpd_loo))


# -- ArviZ works on the fit ------------------------------------------------------------------

def test_arviz_summary(hsb_fit):
    table = az.summary(hsb_fit.idata)
    assert "theta[Intercept]" in table.index
    assert "sigma2" in table.index
    assert np.isfinite(table.loc["theta[ses]", "mean"])


def test_arviz_plot_trace(hsb_fit):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        axes = az.plot_trace(hsb_fit.idata, var_names=["theta"])
        assert np.asarray(axes).size >= 2
    finally:
        plt.close("all")


def test_arviz_loo(sim_fit):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(sim_fit.idata)
    assert np.isfinite(loo["elpd_loo"])
    assert loo["elpd_loo"] < 0


# -- summary and report ------------------------------------------------------------------------

def test_summary_columns_and_names(hsb_fit):
    table = hsb_fit.summary()
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == SUMMARY_COLUMNS
    assert set(table.index) == {
        "theta[Intercept]", "theta[ses]",
        "Sigma[Intercept, Intercept]", "Sigma[ses, Intercept]", "Sigma[ses, ses]",
        "sigma2",
    }
    assert table.index[0] == "theta[Intercept]"
    assert 12.0 < table.loc["theta[Intercept]", "mean"] < 13.3
    assert 1.9 < table.loc["theta[ses]", "mean"] < 2.9
    assert table.loc["theta[Intercept]", "hdi_3%"] < table.loc["theta[Intercept]", "hdi_97%"]


def test_summary_includes_fixed_only_and_omits_zero_mean_terms(sim):
    fit = multilevel.fit("y ~ z + (1 + x | g)", sim, **SMALL)
    index = fit.summary().index.tolist()
    assert "theta[Intercept]" in index
    assert "alpha[z]" in index
    assert "theta[x]" not in index  # its mean is fixed at 0
    assert "Sigma[x, x]" in index
    np.testing.assert_array_equal(fit.idata.posterior["theta"].sel(term="x").values, 0.0)


def test_report_shows_formula(hsb_fit):
    text = str(hsb_fit)
    assert HSB_FORMULA in text
    assert "Intercept" in text and "ses" in text and "sigma2" in text
    assert HSB_FORMULA in repr(hsb_fit)


def test_report_warns_when_ess_is_low(sim):
    fit = multilevel.fit(SIM_FORMULA, sim, chains=2, draws=20, warmup=100, progress=False, cores=1, seed=2)
    assert (fit.summary()["ess_bulk"] < 400).any()
    text = str(fit)
    assert SIM_FORMULA in text
    warning_lines = [line for line in text.splitlines() if "warning" in line.lower()]
    assert any("ess" in line.lower() for line in warning_lines), text


# -- save / load --------------------------------------------------------------------------------

def assert_same_fit(a, b):
    pa, pb = a.idata.posterior, b.idata.posterior
    assert set(pa.data_vars) == set(pb.data_vars)
    for name in pa.data_vars:
        np.testing.assert_array_equal(pa[name].values, pb[name].values)
        assert pa[name].dims == pb[name].dims
    for coord in ("term", "term_", "group"):
        assert pa[coord].values.tolist() == pb[coord].values.tolist()
    pd.testing.assert_frame_equal(a.summary(), b.summary())
    assert b.formula == a.formula
    assert json.loads(pb.attrs["priors"]) == json.loads(pa.attrs["priors"])
    assert pb.attrs["multilevel_version"] == pa.attrs["multilevel_version"]


def test_save_load_round_trip_string_labels(hsb_fit, tmp_path):
    path = tmp_path / "hsb.nc"
    hsb_fit.save(path)
    assert path.exists()
    back = multilevel.load(path)
    assert_same_fit(hsb_fit, back)
    assert "1224" in back.idata.posterior["group"].values.tolist()
    assert HSB_FORMULA in str(back)
    np.testing.assert_allclose(
        np.asarray(back.idata.observed_data[next(iter(back.idata.observed_data.data_vars))]),
        np.asarray(hsb_fit.idata.observed_data[next(iter(hsb_fit.idata.observed_data.data_vars))]),
    )


def test_save_load_round_trip_int_labels_and_log_likelihood(sim_fit, tmp_path):
    path = tmp_path / "sim.nc"
    sim_fit.save(str(path))
    back = multilevel.load(str(path))
    assert_same_fit(sim_fit, back)
    assert "log_likelihood" in back.group_names()
    assert [str(v) for v in back.idata.posterior["group"].values] == list(sim_fit.posterior["group"].values)
    np.testing.assert_allclose(np.asarray(back.log_likelihood()), np.asarray(sim_fit.log_likelihood()))


def test_save_load_on_demand_log_likelihood(sim, tmp_path):
    fit = multilevel.fit(SIM_FORMULA, sim, log_likelihood=False, **SMALL)
    fit.save(tmp_path / "lazy.nc")
    back = multilevel.load(tmp_path / "lazy.nc")
    np.testing.assert_allclose(np.asarray(back.log_likelihood()), np.asarray(fit.log_likelihood()), rtol=1e-12)


def test_save_refuses_to_overwrite(sim_fit, tmp_path):
    path = tmp_path / "fit.nc"
    path.write_bytes(b"precious")
    with pytest.raises(ModelError, match="exists"):
        sim_fit.save(path)
    assert path.read_bytes() == b"precious"
    sim_fit.save(path, overwrite=True)
    assert_same_fit(sim_fit, multilevel.load(path))
    assert not [p for p in tmp_path.iterdir() if p.name != "fit.nc"]  # no temporary left


def test_save_into_missing_folder_refused(sim_fit, tmp_path):
    with pytest.raises(ModelError):
        sim_fit.save(tmp_path / "no-such-dir" / "fit.nc")


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        multilevel.load(tmp_path / "missing.nc")
    bad = tmp_path / "bad.nc"
    bad.write_text("y,x\n1,2\n")
    with pytest.raises(ModelError):
        multilevel.load(bad)


# -- priors --------------------------------------------------------------------------------------

# sim formula: p = 2 varying terms (both with a mean), r = 1 fixed-only term
BAD_PRIORS = [
    ({"mu0": [0.0, 0.0, 0.0]}, "mu0"),
    ({"mu0": [np.nan, 0.0]}, "mu0"),
    ({"Lambda0": np.eye(3)}, "Lambda0"),
    ({"Lambda0": [[1.0, 0.5], [0.2, 1.0]]}, "Lambda0"),
    ({"Lambda0": [[1.0, 2.0], [2.0, 1.0]]}, "Lambda0"),
    ({"S0": np.eye(3)}, "S0"),
    ({"S0": [[1.0, 0.5], [0.2, 1.0]]}, "S0"),
    ({"S0": [[1.0, 2.0], [2.0, 1.0]]}, "S0"),
    ({"S0": -np.eye(2)}, "S0"),
    ({"eta0": 1.0}, "eta0"),  # p - 1 = 1
    ({"eta0": 0.5}, "eta0"),
    ({"eta0": -3.0}, "eta0"),
    ({"nu0": 0.0}, "nu0"),
    ({"nu0": -1.0}, "nu0"),
    ({"sigma0_sq": 0.0}, "sigma0_sq"),
    ({"sigma0_sq": -2.0}, "sigma0_sq"),
    ({"alpha_mean": [0.0, 1.0]}, "alpha_mean"),
    ({"alpha_cov": [[-1.0]]}, "alpha_cov"),
]


@pytest.mark.parametrize("as_object", [True, False], ids=["Priors", "dict"])
@pytest.mark.parametrize("prior, name", BAD_PRIORS, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_PRIORS)])
def test_invalid_priors_raise_model_error_naming_the_prior(sim, prior, name, as_object):
    priors = Priors(**prior) if as_object else prior
    with pytest.raises(ModelError, match=name):
        multilevel.Model(SIM_FORMULA, sim, priors=priors)


def test_unknown_prior_name_refused(sim):
    with pytest.raises(ModelError, match="sigma_sq"):
        multilevel.Model(SIM_FORMULA, sim, priors={"sigma_sq": 1.0})


def test_eta0_just_above_p_minus_1_accepted(sim):
    model = multilevel.Model(SIM_FORMULA, sim, priors=Priors(eta0=1.01))
    assert model.priors.eta0 == pytest.approx(1.01)


def test_user_priors_recorded_in_output(sim, tmp_path):
    user = dict(
        mu0=[1.0, -2.0],
        Lambda0=[[4.0, 0.5], [0.5, 3.0]],
        eta0=7.0,
        S0=[[2.0, 0.0], [0.0, 3.0]],
        nu0=3.0,
        sigma0_sq=0.5,
        alpha_mean=[0.25],
        alpha_cov=[[9.0]],
    )
    fit = multilevel.fit(SIM_FORMULA, sim, priors=Priors(**user), chains=2, draws=50, warmup=50,
                         progress=False, cores=1, seed=3)
    recorded = json.loads(fit.idata.posterior.attrs["priors"])
    for name, value in user.items():
        np.testing.assert_allclose(np.asarray(recorded[name], dtype=float), np.asarray(value), err_msg=name)
    np.testing.assert_allclose(fit.priors.S0, user["S0"])
    assert fit.priors.eta0 == 7.0
    fit.save(tmp_path / "p.nc")
    back = json.loads(multilevel.load(tmp_path / "p.nc").idata.posterior.attrs["priors"])
    for name, value in user.items():
        np.testing.assert_allclose(np.asarray(back[name], dtype=float), np.asarray(value), err_msg=name)


def test_partial_user_priors_keep_defaults(sim):
    default = multilevel.Model(SIM_FORMULA, sim).priors
    model = multilevel.Model(SIM_FORMULA, sim, priors={"nu0": 5.0})
    assert model.priors.nu0 == 5.0
    np.testing.assert_allclose(model.priors.S0, default.S0)
    np.testing.assert_allclose(model.priors.mu0, default.mu0)
    assert model.priors.eta0 == default.eta0 == 4.0
