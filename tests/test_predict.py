"""Predictions and posterior predictive draws (issue 4, points 1, 2, 5 and 7): predictions
equal a hand computation from the stored draws for seen groups, new groups and the
population level; new-group effects have the moments of MVN(theta, Sigma); new data go
through the fitted transformations; bad new data give clear errors; the CLI round-trips."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel import ModelError

FORMULA = "y ~ x + z + c + (x | g)"
SMALL = dict(chains=2, draws=150, warmup=100, seed=11, cores=1, progress=False)
LEVELS = ["a", "b", "d"]


def make_frame(seed: int = 3, m: int = 10, n: int = 15) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), n)
    x = rng.normal(size=g.size)
    z = rng.normal(size=g.size)
    c = rng.choice(LEVELS, size=g.size)
    b0 = 2.0 + rng.normal(size=m)
    b1 = 1.0 + 0.5 * rng.normal(size=m)
    y = b0[g] + b1[g] * x + 0.7 * z + np.where(c == "b", 1.0, 0.0) - np.where(c == "d", 0.5, 0.0) + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "z": z, "c": c, "g": g})


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture(scope="module")
def fit(frame):
    return multilevel.fit(FORMULA, frame, **SMALL)


def new_rows() -> pd.DataFrame:
    return pd.DataFrame({
        "x": [0.5, -1.0, 2.0, 0.3, 0.0, 1.0],
        "z": [1.0, 0.0, -0.5, 2.0, 0.0, 0.0],
        "c": ["a", "b", "d", "b", "a", "a"],
        "g": [3, 0, 7, 99, 99, 123],
    }, index=[10, 11, 12, 13, 14, 15])


def fixed_part(fit, rows: pd.DataFrame) -> np.ndarray:
    """z'alpha (chain, draw, row) built by hand from the dummy coding c[b], c[d]."""
    alpha = fit.posterior["alpha"]
    out = np.einsum("i,cd->cdi", rows["z"].to_numpy(), alpha.sel(fixed_term="z").values)
    for level in ("b", "d"):
        out += np.einsum("i,cd->cdi", (rows["c"] == level).to_numpy(float), alpha.sel(fixed_term=f"c[{level}]").values)
    return out


def test_design_terms(fit):
    assert list(fit.posterior["term"].values) == ["Intercept", "x"]
    assert sorted(fit.posterior["fixed_term"].values) == ["c[b]", "c[d]", "z"]


def test_seen_groups_equal_hand_computation(fit):
    rows = new_rows().iloc[:3]
    pred = fit.predict(rows, kind="linear")
    assert pred.dims == ("chain", "draw", "obs")
    assert pred.shape == (2, 150, 3)
    assert pred["row"].values.tolist() == [10, 11, 12]
    assert pred["group"].values.tolist() == ["3", "0", "7"]
    assert not pred["new_group"].values.any()
    beta = fit.posterior["beta"]
    expected = fixed_part(fit, rows)
    for i, (gi, xi) in enumerate(zip(rows["g"], rows["x"])):
        b = beta.sel(group=str(gi))
        expected[:, :, i] += b.sel(term="Intercept").values + xi * b.sel(term="x").values
    np.testing.assert_allclose(pred.values, expected, rtol=1e-12, atol=1e-12)
    # gaussian: the mean is the linear predictor
    np.testing.assert_allclose(fit.predict(rows, kind="mean").values, expected, rtol=1e-12, atol=1e-12)


def test_population_level_equals_hand_computation(fit):
    rows = new_rows().drop(columns="g")  # no group column needed
    pred = fit.predict(rows, kind="linear", include_group_effects=False)
    theta = fit.posterior["theta"]
    expected = fixed_part(fit, rows) + theta.sel(term="Intercept").values[..., None] \
        + np.einsum("i,cd->cdi", rows["x"].to_numpy(), theta.sel(term="x").values)
    np.testing.assert_allclose(pred.values, expected, rtol=1e-12, atol=1e-12)
    assert "group" not in pred.coords


@pytest.mark.parametrize("re_form", ["~0", "NA", float("nan"), "~ 1"])
def test_lme4_re_form_na_of_a_one_factor_fit_is_the_population_level(fit, re_form):
    """lme4's predict(fit, newdata, re.form = NA) habit: no group effects, no group column needed."""
    rows = new_rows()
    want = fit.predict(rows, kind="linear", include_group_effects=False)
    np.testing.assert_array_equal(fit.predict(rows.drop(columns="g"), kind="linear", re_form=re_form).values,
                                  want.values)
    np.testing.assert_array_equal(fit.predict(kind="linear", re_form=re_form).values,
                                  fit.predict(kind="linear", include_group_effects=False).values)


def test_re_form_naming_the_one_factor_keeps_its_effects_and_another_is_refused(fit):
    rows = new_rows()
    want = fit.predict(rows, kind="linear", seed=5).values
    for re_form in ("~(x | g)", "~ (1 | g)", ["g"]):
        np.testing.assert_array_equal(fit.predict(rows, kind="linear", seed=5, re_form=re_form).values, want)
    with pytest.raises(ModelError, match="names factor 'h', which the fit does not have") as err:
        fit.predict(rows, re_form="~(1 | h)")
    assert "\n" not in str(err.value)


def test_lme4_type_and_allow_new_levels(fit):
    """lme4's predict(type = "link" / "response") and allow.new.levels = FALSE."""
    rows = new_rows()
    np.testing.assert_array_equal(fit.predict(rows, type="link", seed=2).values,
                                  fit.predict(rows, kind="linear", seed=2).values)
    np.testing.assert_array_equal(fit.predict(rows, type="response", seed=2).values,
                                  fit.predict(rows, kind="mean", seed=2).values)
    seen = rows[~fit.predict(rows, seed=2)["new_group"].values]
    pd.testing.assert_frame_equal(fit.predict(seen, allow_new_levels=False, summary=True, seed=2),
                                  fit.predict(seen, summary=True, seed=2))
    for kwargs, message in [(dict(allow_new_levels=False), "levels of 'g' not seen in fitting"),
                            (dict(type="probability"), "type is lme4's 'link' or 'response'"),
                            (dict(type="link", kind="linear"), "give kind= or lme4's type=, not both")]:
        with pytest.raises(ModelError, match=message) as err:
            fit.predict(rows, **kwargs)
        assert "\n" not in str(err.value)


def test_new_groups_equal_hand_computation_with_seed(fit):
    rows = new_rows()
    pred = fit.predict(rows, kind="linear", seed=123)
    assert pred["new_group"].values.tolist() == [False, False, False, True, True, True]
    post = fit.posterior
    theta, Sigma = post["theta"].values, post["Sigma"].values
    # documented: u = default_rng(seed).standard_normal((chains, draws, k, p)), unseen
    # groups in order of first appearance (99, then 123); beta = theta + chol(Sigma) u
    u = np.random.default_rng(123).standard_normal((2, 150, 2, 2))
    b_new = theta[:, :, None, :] + np.einsum("cdkl,cdul->cduk", np.linalg.cholesky(Sigma), u)
    expected = fixed_part(fit, rows)
    for i, k in ((3, 0), (4, 0), (5, 1)):
        xi = rows["x"].iloc[i]
        expected[:, :, i] += b_new[:, :, k, 0] + xi * b_new[:, :, k, 1]
    np.testing.assert_allclose(pred.values[:, :, 3:], expected[:, :, 3:], rtol=1e-10, atol=1e-10)
    # the same seed gives the same draws, another seed others; seen groups are unaffected
    np.testing.assert_array_equal(fit.predict(rows, kind="linear", seed=123).values, pred.values)
    other = fit.predict(rows, kind="linear", seed=124).values
    assert not np.allclose(other[:, :, 3:], pred.values[:, :, 3:])
    np.testing.assert_array_equal(other[:, :, :3], pred.values[:, :, :3])


def test_new_group_effects_have_the_group_distribution(fit):
    """Rows at x = 0 and x = 1 of k unseen groups recover beta_new = (eta0, eta1 - eta0)
    per draw; standardised by theta and chol(Sigma) of the same draw they must be iid
    N(0, I): means, variances and correlation within Monte Carlo error."""
    k = 60
    labels = [f"new{i}" for i in range(k)]
    rows = pd.DataFrame({"x": np.tile([0.0, 1.0], k), "z": 0.0, "c": "a", "g": np.repeat(labels, 2)})
    pred = fit.predict(rows, kind="linear", seed=7).values  # (2, 150, 2k)
    b0 = pred[:, :, 0::2]
    b1 = pred[:, :, 1::2] - b0
    beta = np.stack([b0, b1], axis=-1)  # (c, d, k, 2)
    post = fit.posterior
    L = np.linalg.cholesky(post["Sigma"].values)
    resid = beta - post["theta"].values[:, :, None, :]
    w = np.linalg.solve(L[:, :, None], resid[..., None])[..., 0].reshape(-1, 2)
    n = w.shape[0]
    assert n == 2 * 150 * k
    se_mean, se_var = 1 / np.sqrt(n), np.sqrt(2 / n)
    assert np.all(np.abs(w.mean(axis=0)) < 4.5 * se_mean)
    assert np.all(np.abs(w.var(axis=0) - 1) < 4.5 * se_var)
    assert abs(np.corrcoef(w.T)[0, 1]) < 4.5 * se_mean
    # unstandardised: the draws' mean and covariance match E[theta] and E[Sigma] + Var[theta]
    flat = beta.reshape(-1, 2)
    th = post["theta"].values.reshape(-1, 2)
    cov_expected = post["Sigma"].values.reshape(-1, 2, 2).mean(axis=0) + np.cov(th.T)
    sd = np.sqrt(np.diag(cov_expected))
    assert np.all(np.abs(flat.mean(axis=0) - th.mean(axis=0)) < 5 * sd / np.sqrt(2 * 150 * 4))
    np.testing.assert_allclose(np.cov(flat.T), cov_expected, rtol=0.25, atol=0.05 * sd.max() ** 2)


def test_rows_of_one_new_group_share_its_draw(fit):
    rows = pd.DataFrame({"x": [0.4, 0.4, 0.4], "z": 0.0, "c": "a", "g": ["u", "u", "v"]})
    pred = fit.predict(rows, kind="linear", seed=1).values
    np.testing.assert_array_equal(pred[:, :, 0], pred[:, :, 1])
    assert not np.allclose(pred[:, :, 0], pred[:, :, 2])


def test_group_labels_match_across_types(fit):
    """Groups fitted as integers are found from strings and floats (a CSV read back)."""
    rows = new_rows().iloc[:3]
    as_str = rows.assign(g=rows["g"].astype(str))
    as_float = rows.assign(g=rows["g"].astype(float))
    base = fit.predict(rows, kind="linear").values
    for other in (as_str, as_float):
        pred = fit.predict(other, kind="linear")
        assert not pred["new_group"].values.any()
        np.testing.assert_array_equal(pred.values, base)


def test_response_draws(fit):
    rows = new_rows().iloc[:3]
    lin = fit.predict(rows, kind="linear").values
    resp = fit.predict(rows, kind="response", seed=5)
    assert resp.shape == lin.shape
    np.testing.assert_array_equal(fit.predict(rows, kind="response", seed=5).values, resp.values)
    noise = (resp.values - lin).reshape(-1, 3)
    sigma2 = float(fit.posterior["sigma2"].mean())
    n = noise.shape[0]
    assert np.all(np.abs(noise.mean(axis=0)) < 4.5 * np.sqrt(sigma2 / n))
    assert np.all(np.abs(noise.var(axis=0) / sigma2 - 1) < 4.5 * np.sqrt(2 / n) + 0.05)


def test_summary_and_draws_subset(fit):
    rows = new_rows().iloc[:3]
    table = fit.predict(rows, kind="linear", summary=True)
    assert list(table.columns) == ["mean", "sd", "hdi_3%", "hdi_97%"]
    assert table.index.tolist() == [10, 11, 12]
    draws = fit.predict(rows, kind="linear").values.reshape(-1, 3)
    np.testing.assert_allclose(table["mean"], draws.mean(axis=0))
    np.testing.assert_allclose(table["sd"], draws.std(axis=0, ddof=1))
    assert np.all(table["hdi_3%"] < table["mean"]) and np.all(table["mean"] < table["hdi_97%"])
    inside = ((draws >= table["hdi_3%"].to_numpy()) & (draws <= table["hdi_97%"].to_numpy())).mean(axis=0)
    assert np.all(np.abs(inside - 0.94) < 0.01)
    wide = fit.predict(rows, kind="linear", summary=True, hdi_prob=0.5)
    assert list(wide.columns) == ["mean", "sd", "hdi_25%", "hdi_75%"]
    sub = fit.predict(rows, kind="linear", draws=10)
    assert sub.shape == (2, 10, 3)
    np.testing.assert_array_equal(sub.values, fit.predict(rows, kind="linear").values[:, sub["draw"].values])
    with pytest.raises(ModelError, match="draws"):
        fit.predict(rows, draws=0)
    with pytest.raises(ModelError, match="kind must be one of linear, mean, response .or lme4's 'link'"):
        fit.predict(rows, kind="probability")
    # lme4's type = "link" is the linear predictor
    np.testing.assert_array_equal(fit.predict(rows, kind="link").values, fit.predict(rows, kind="linear").values)
    np.testing.assert_array_equal(fit.predict(kind="link").values, fit.predict(kind="linear").values)


def test_saved_fit_predicts_the_same(fit, tmp_path):
    path = fit.save(tmp_path / "fit.nc")
    loaded = multilevel.load(path)
    rows = new_rows()
    np.testing.assert_allclose(loaded.predict(rows, kind="linear", seed=3).values,
                               fit.predict(rows, kind="linear", seed=3).values, rtol=1e-12)


def test_new_data_use_the_fitted_transformations():
    """center(x) is centred at the *fitted* data's mean, not the new rows' mean."""
    frame = make_frame(seed=4)
    frame["x"] = frame["x"] + 3.0
    fit = multilevel.fit("y ~ center(x) + (center(x) | g)", frame, **SMALL)
    rows = pd.DataFrame({"x": [3.5, 10.0], "g": [2, 2]})
    pred = fit.predict(rows, kind="linear").values
    b = fit.posterior["beta"].sel(group="2")
    xc = rows["x"].to_numpy() - frame["x"].mean()
    expected = b.sel(term="Intercept").values[..., None] + np.einsum("i,cd->cdi", xc, b.sel(term="center(x)").values)
    np.testing.assert_allclose(pred, expected, rtol=1e-10, atol=1e-10)


def test_bad_new_data(fit):
    rows = new_rows()
    with pytest.raises(ModelError, match=r"column 'c'.*level 'e' not seen"):
        fit.predict(rows.assign(c=["a", "e", "a", "a", "a", "a"]))
    with pytest.raises(ModelError, match=r"column 'z' needed by the formula is not in the new data"):
        fit.predict(rows.drop(columns="z"))
    with pytest.raises(ModelError, match=r"column 'g'.*include_group_effects=False"):
        fit.predict(rows.drop(columns="g"))
    with pytest.raises(ModelError, match="missing"):
        fit.predict(rows.assign(x=[np.nan, 1, 1, 1, 1, 1]))
    with pytest.raises(ModelError, match="numeric"):
        fit.predict(rows.assign(x=["high", "1", "1", "1", "1", "1"]))
    with pytest.raises(ModelError, match="no rows"):
        fit.predict(rows.iloc[:0])
    with pytest.raises(ModelError, match="not found"):
        fit.predict("no-such-file.csv")


# -- posterior predictive ----------------------------------------------------------------------

def test_posterior_predictive_group(fit, frame):
    y_rep = fit.posterior_predictive(seed=2)
    assert y_rep.dims == ("chain", "draw", "obs")
    assert y_rep.shape == (2, 150, len(frame))
    assert "posterior_predictive" in fit.idata.groups()
    np.testing.assert_array_equal(fit.idata.posterior_predictive["y"].values, y_rep.values)
    # replicates scatter around the linear predictor with variance sigma2
    eta = fit.linear_predictor()
    noise = (y_rep.values - eta).ravel()
    assert abs(noise.var() / float(fit.posterior["sigma2"].mean()) - 1) < 0.05
    # asking again replaces the group
    again = fit.posterior_predictive(seed=3)
    assert fit.idata.groups().count("posterior_predictive") == 1
    assert not np.allclose(again.values, y_rep.values)


def test_fit_time_posterior_predictive_and_glm(frame):
    f = multilevel.fit(FORMULA, frame, posterior_predictive=True, **SMALL)
    assert f.idata.posterior_predictive["y"].shape == (2, 150, len(frame))
    counts = multilevel.fit("y ~ lbase * trt + (1 | subject)", multilevel.load_dataset("epil"), family="poisson",
                            posterior_predictive=True, **SMALL)
    rep = counts.idata.posterior_predictive["y"].values
    assert rep.shape == (2, 150, 236)
    assert rep.dtype.kind == "i" and rep.min() >= 0
    y = counts.idata.observed_data["y"].values
    assert abs(rep.mean() / y.mean() - 1) < 0.15


def test_binomial_predictions():
    cbpp = multilevel.load_dataset("cbpp")
    fit = multilevel.fit("p(incidence, size) ~ period + (1 | herd)", cbpp, family="binomial", **SMALL)
    rows = cbpp.head(4)
    prob = fit.predict(rows, kind="mean")
    lin = fit.predict(rows, kind="linear")
    np.testing.assert_allclose(prob.values, 1 / (1 + np.exp(-lin.values)), rtol=1e-12)
    resp = fit.predict(rows, kind="response", seed=1).values
    assert np.all((resp >= 0) & (resp <= rows["size"].to_numpy()))
    resp10 = fit.predict(rows.drop(columns="size"), kind="response", seed=1, trials=10).values
    assert resp10.max() <= 10
    with pytest.raises(ModelError, match="trials"):
        fit.predict(rows.drop(columns="size"), kind="response")
    # period was a string column; numbers from a CSV are matched to its levels
    num = rows.assign(period=rows["period"].astype(int))
    np.testing.assert_array_equal(fit.predict(num, kind="linear").values, lin.values)



def test_binomial_predictions_after_cbind():
    """Fitted with lme4's cbind(successes, failures), the new rows' trials are their successes plus
    failures when the new data have both columns; otherwise trials= is asked for."""
    cbpp = multilevel.load_dataset("cbpp").assign(healthy=lambda d: d["size"] - d["incidence"])
    fit = multilevel.fit("cbind(incidence, healthy) ~ period + (1 | herd)", cbpp, family="binomial", **SMALL)
    rows = cbpp.head(4)
    resp = fit.predict(rows, kind="response", seed=1).values
    assert np.all((resp >= 0) & (resp <= rows["size"].to_numpy()))
    assert np.any(resp > 0)
    with pytest.raises(ModelError, match=r"the columns of 'incidence \+ healthy' or trials="):
        fit.predict(rows.drop(columns="healthy"), kind="response")
    assert fit.predict(rows.drop(columns="healthy"), kind="response", seed=1, trials=10).values.max() <= 10

# -- command line ----------------------------------------------------------------------------

from clitools import run_main


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), lines[0]


def test_cli_predict_round_trip(fit, tmp_path):
    fit_path = fit.save(tmp_path / "fit.nc")
    rows = new_rows().iloc[:3].reset_index(drop=True)
    new_csv = tmp_path / "new.csv"
    rows.to_csv(new_csv, index=False)
    out = tmp_path / "pred.csv"
    code, _, err = run_main(["predict", fit_path, new_csv, "--out", out, "--kind", "linear"])
    assert code == 0, err
    table = pd.read_csv(out)
    assert len(table) == len(rows)
    assert list(table.columns) == [*rows.columns, "mean", "sd", "hdi_3%", "hdi_97%"]
    expected = fit.predict(rows, kind="linear", summary=True)
    np.testing.assert_allclose(table["mean"], expected["mean"], rtol=1e-9)
    np.testing.assert_allclose(table["hdi_97%"], expected["hdi_97%"], rtol=1e-9)
    pd.testing.assert_frame_equal(table[rows.columns], rows, check_dtype=False)
    # --no-group-effects needs no group column; output goes to stdout without --out
    code, stdout, err = run_main(["predict", fit_path, new_csv, "--no-group-effects"])
    assert code == 0, err
    printed = pd.read_csv(io.StringIO(stdout))
    pop = fit.predict(rows, kind="mean", include_group_effects=False, summary=True)
    np.testing.assert_allclose(printed["mean"], pop["mean"], rtol=1e-9)


def test_cli_predict_without_new_data_gives_fitted_values(fit, tmp_path):
    fit_path = fit.save(tmp_path / "fit.nc")
    code, stdout, err = run_main(["predict", fit_path, "--kind", "linear"])
    assert code == 0, err
    printed = pd.read_csv(io.StringIO(stdout))
    expected = fit.predict(kind="linear", summary=True)
    assert list(printed.columns) == ["row", "mean", "sd", "hdi_3%", "hdi_97%"]
    np.testing.assert_array_equal(printed["row"], expected.index)
    np.testing.assert_allclose(printed["mean"], expected["mean"], rtol=1e-9)
    code, _, err = run_main(["predict", fit_path, "--offset", "x"])
    assert_one_line_error(code, err, "NEW.csv")


def test_cli_predict_errors(fit, tmp_path):
    fit_path = fit.save(tmp_path / "fit.nc")
    rows = new_rows().iloc[:3]
    good = tmp_path / "new.csv"
    rows.to_csv(good, index=False)
    bad_level = tmp_path / "level.csv"
    rows.assign(c=["a", "zz", "b"]).to_csv(bad_level, index=False)
    no_col = tmp_path / "nocol.csv"
    rows.drop(columns="x").to_csv(no_col, index=False)
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\x00\x01\x02\xff\xfe")
    exists = tmp_path / "exists.csv"
    exists.write_text("old")
    cases = [
        (["predict", fit_path, bad_level], ["zz"]),
        (["predict", fit_path, no_col], ["'x'"]),
        (["predict", fit_path, tmp_path / "missing.csv"], ["missing.csv"]),
        (["predict", fit_path, garbage], ["garbage.csv"]),
        (["predict", tmp_path / "nofit.nc", good], ["nofit.nc"]),
        (["predict", good, good], ["new.csv"]),
        (["predict", fit_path, good, "--out", exists], ["exists", "--overwrite"]),
        (["predict", fit_path, good, "--kind", "median"], ["median"]),
        (["predict", fit_path, good, "--out", tmp_path / "p.xlsx"], ["xlsx"]),
    ]
    for argv, fragments in cases:
        code, _, err = run_main(argv)
        assert_one_line_error(code, err, *fragments)
    assert exists.read_text() == "old"
    code, _, err = run_main(["predict", fit_path, good, "--out", exists, "--overwrite"])
    assert code == 0, err
    assert len(pd.read_csv(exists)) == 3
