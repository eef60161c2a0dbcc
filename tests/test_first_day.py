"""Regression tests of the defects a new user met on a first day: saving a fit made without
a seed, ArviZ's default plots, rounding, and group labels however the data were read."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel.convert import az
from multilevel.diagnostics import summary as summarize

from clitools import run_main

SMALL = dict(chains=2, draws=150, warmup=100, progress=False, cores=1)


@pytest.fixture(scope="module")
def hsb():
    return multilevel.load_dataset("hsb82")


@pytest.fixture(scope="module")
def unseeded(hsb):
    """The README's model fitted without a seed (a 128-bit entropy is drawn)."""
    return multilevel.fit("mAch ~ ses + (ses | school)", hsb, **SMALL)


@pytest.fixture(scope="module")
def with_fixed_only(hsb):
    return multilevel.fit("mAch ~ ses + meanses + (ses | school)", hsb, seed=3, **SMALL)


# -- 1: a fit without a seed saves, loads and can be reproduced ------------------------------

def test_fit_without_seed_saves_loads_and_reproduces(unseeded, hsb, tmp_path):
    seed = unseeded.attrs["seed"]
    assert isinstance(seed, str) and int(seed) > 2**64  # the drawn entropy, too big for a NetCDF integer
    path = unseeded.save(tmp_path / "fit.nc")
    back = multilevel.load(path)
    assert back.attrs["seed"] == seed
    np.testing.assert_array_equal(back.posterior["beta"].values, unseeded.posterior["beta"].values)
    again = multilevel.fit("mAch ~ ses + (ses | school)", hsb, seed=int(seed), **SMALL)
    np.testing.assert_array_equal(again.posterior["beta"].values, unseeded.posterior["beta"].values)


def test_resume_of_unseeded_fit_from_file(unseeded, tmp_path):
    path = unseeded.save(tmp_path / "fit.nc")
    more = multilevel.resume(path, draws=20, cores=1, progress=False)
    assert more.posterior.sizes["draw"] == 170
    np.testing.assert_array_equal(more.posterior["beta"].values[:, :150], unseeded.posterior["beta"].values)


def test_cli_fit_without_seed_writes_its_file(tmp_path):
    out = tmp_path / "f.nc"
    code, _, err = run_main(["fit", "sleepstudy", "--formula", "Reaction ~ Days + (Days | Subject)", "--chains", "2",
                             "--draws", "50", "--warmup", "50", "--cores", "1", "--out", out])
    assert code == 0, err
    assert int(multilevel.load(out).attrs["seed"]) > 0


def test_failed_save_keeps_the_fit_and_leaves_no_file(unseeded, tmp_path):
    fit = multilevel.load(unseeded.save(tmp_path / "ok.nc"))
    fit.group("sampler_state").attrs["bad"] = 2**100  # an attribute HDF5 cannot hold
    target = tmp_path / "fit.nc"
    with pytest.raises(multilevel.ModelError, match="sampler_state.*unchanged in memory"):
        fit.save(target)
    assert not target.exists() and not list(tmp_path.glob(".fit.nc.*"))
    assert fit.posterior["beta"].shape == unseeded.posterior["beta"].shape  # still all there
    del fit.group("sampler_state").attrs["bad"]
    assert multilevel.load(fit.save(target)).posterior["beta"].shape == unseeded.posterior["beta"].shape


def test_partial_save_writes_what_it_can(unseeded, tmp_path):
    fit = multilevel.load(unseeded.save(tmp_path / "ok.nc"))
    fit.group("sampler_state").attrs["bad"] = 2**100
    target = tmp_path / "partial.nc"
    with pytest.raises(multilevel.ModelError, match="without sampler_state"):
        fit.save(target, partial=True)
    back = multilevel.load(target)
    assert back.group("sampler_state") is None
    np.testing.assert_array_equal(back.posterior["beta"].values, unseeded.posterior["beta"].values)


def test_cli_save_failure_writes_the_draws_and_says_so(tmp_path, monkeypatch):
    import multilevel.api

    original = multilevel.api.sampler_state_to_dataset

    def unsaveable(*args, **kwargs):
        ds = original(*args, **kwargs)
        ds.attrs["bad"] = 2**100
        return ds

    monkeypatch.setattr(multilevel.api, "sampler_state_to_dataset", unsaveable)
    out = tmp_path / "f.nc"
    code, _, err = run_main(["fit", "sleepstudy", "--formula", "Reaction ~ Days + (Days | Subject)", "--chains", "2",
                             "--draws", "50", "--warmup", "50", "--cores", "1", "--seed", "1", "--out", out])
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("error: saved the fit") and "sampler_state" in err
    assert multilevel.load(out).posterior["beta"].shape == (2, 50, 18, 2)


def test_save_without_group_draws(with_fixed_only, tmp_path):
    full = with_fixed_only.save(tmp_path / "full.nc")
    small = with_fixed_only.save(tmp_path / "small.nc", group_draws=False)
    assert full.stat().st_size - small.stat().st_size >= 0.9 * with_fixed_only.posterior["beta"].nbytes
    back = multilevel.load(small)
    assert "beta" not in back.posterior
    pd.testing.assert_frame_equal(back.summary(), with_fixed_only.summary())
    with pytest.raises(multilevel.ModelError, match="group_draws=False"):
        multilevel.resume(small, draws=10, progress=False)
    assert "beta" in with_fixed_only.posterior  # the fit in memory keeps them


# -- 2: ArviZ's defaults work with and without fixed-only terms --------------------------------

@pytest.mark.parametrize("which", ["unseeded", "with_fixed_only"])
def test_arviz_defaults(which, request):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fit = request.getfixturevalue(which)
    assert ("alpha" in fit.posterior) == (which == "with_fixed_only")  # an empty alpha is left out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = az.summary(fit.idata)
        assert "theta[ses]" in table.index and table["r_hat"].notna().any()
        az.plot_trace(fit.idata)
        az.plot_forest(fit.idata, var_names=["theta", "Sigma"] + (["alpha"] if "alpha" in fit.posterior else []))
    plt.close("all")


# -- 4: precision ---------------------------------------------------------------------------

def test_summary_full_precision_equals_arviz(with_fixed_only):
    table = with_fixed_only.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = az.summary(with_fixed_only.idata, var_names=["theta", "alpha", "Sigma", "sigma2"], round_to="none")
    ref = ref.loc[table.index, table.columns]
    np.testing.assert_allclose(table.to_numpy(), ref.to_numpy(), rtol=1e-9, atol=1e-12)
    assert (table["mean"] != table["mean"].round(3)).any()  # not rounded
    rounded = with_fixed_only.summary(round_to=2)
    np.testing.assert_array_equal(rounded["mean"], table["mean"].round(2))
    with pytest.raises(multilevel.ModelError, match="round_to"):
        with_fixed_only.summary(round_to="two")


def test_diagnostics_match_arviz_on_awkward_draws():
    rng = np.random.default_rng(5)
    draws = {
        "autocorrelated": np.cumsum(rng.normal(size=(4, 400)), axis=1) * 0.1 + rng.normal(size=(4, 400)),
        "ties": rng.poisson(1.0, size=(4, 400)).astype(float),
        "constant": np.full((4, 400), 2.5),
        "tiny": rng.normal(scale=1e-5, size=(4, 400)),
    }
    ours = summarize(draws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = az.summary(draws, round_to="none").loc[ours.index, ours.columns]
    np.testing.assert_allclose(ours.to_numpy(), ref.to_numpy(), rtol=1e-9, atol=1e-14, equal_nan=True)
    one_chain = summarize({"x": rng.normal(size=(1, 100))})
    assert np.isnan(one_chain.loc["x", "r_hat"]) and one_chain.loc["x", "ess_bulk"] > 0


def test_report_digits_follow_each_rows_scale():
    from multilevel.result import format_table, row_decimals

    assert row_decimals(12.666, 0.192) == 2
    assert row_decimals(-0.00449, 0.0005) == 5  # -0.00449 +/- 0.00050; three decimals showed -0.004
    assert row_decimals(2.0e-5, 3.0e-6) == 7
    assert row_decimals(36.8, 0.63) == 2
    assert row_decimals(1500.0, 120.0) == 0
    rows = pd.DataFrame({"mean": [2.0e-5, 12.666], "sd": [3.0e-6, 0.192], "hdi_3%": [1.5e-5, 12.3],
                         "hdi_97%": [2.6e-5, 13.0], "r_hat": [1.0, 1.0], "ess_bulk": [900.0, 800.0],
                         "ess_tail": [700.0, 600.0]}, index=["Sigma[x, x]", "theta[Intercept]"])
    text = format_table(rows)
    assert "0.0000200" in text and "0.0000030" in text and "12.67" in text and "0.000" not in text.split()


def test_report_shows_residual_sd(unseeded):
    text = unseeded.report()
    sigma2 = unseeded.posterior["sigma2"].values
    line = next(ln for ln in text.splitlines() if ln.startswith("sigma "))
    assert abs(float(line.split()[1]) - np.sqrt(sigma2).mean()) < 0.01


def test_summary_json_full_precision(with_fixed_only, tmp_path):
    path = with_fixed_only.save(tmp_path / "f.nc")
    code, out, err = run_main(["summary", path, "--json"])
    assert code == 0, err
    rows = {r["param"]: r for r in json.loads(out)}
    table = with_fixed_only.summary()
    for name in table.index:
        assert rows[name]["mean"] == pytest.approx(table.loc[name, "mean"], rel=1e-12)
    assert any(round(r["mean"], 3) != r["mean"] for r in rows.values())


# -- 5: group labels are strings however the data were read -----------------------------------

def test_group_labels_are_strings_whatever_the_column_held(tmp_path):
    csv = tmp_path / "hsb.csv"
    multilevel.load_dataset("hsb82").to_csv(csv, index=False)
    data = pd.read_csv(csv)
    assert data["school"].dtype.kind == "i"
    fit = multilevel.fit("mAch ~ ses + (ses | school)", data, seed=1, **SMALL)
    one = fit.idata.posterior.beta.sel(group="1224")  # as the README shows
    assert one.shape == (2, 150, 2)
    new = pd.DataFrame({"ses": [0.0, 0.0], "school": [1224, "1224"]})
    pred = fit.predict(new, summary=True)
    assert pred["mean"].iloc[0] == pred["mean"].iloc[1]


def test_a_polars_frame_fits_as_its_pandas_twin_in_both_engines(hsb):
    pl = pytest.importorskip("polars")
    run = dict(chains=1, draws=40, warmup=40, seed=3, progress=False, cores=1)
    formula = "mAch ~ scale(ses) + sector + (1 | school)"
    for engine in ("pandas", "dask"):
        kwargs = dict(run, engine=engine) if engine == "dask" else dict(run, sampler="blocked")
        a = multilevel.fit(formula, hsb, **kwargs)
        b = multilevel.fit(formula, pl.from_pandas(hsb), **kwargs)
        for v in ("theta", "alpha", "sigma2"):
            np.testing.assert_array_equal(a.posterior[v].values, b.posterior[v].values)
        assert list(b.fixef().index) == ["Intercept", "scale(ses)", "sector[Public]"]


def test_binomial_with_a_binary_response_is_bernoulli_as_in_glmer():
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"g": rng.integers(0, 15, 300), "x": rng.normal(size=300)})
    df["y"] = rng.binomial(1, 0.4, 300)
    df["answer"] = np.where(df.y == 1, "yes", "no")
    run = dict(chains=1, draws=40, warmup=40, seed=2, progress=False, cores=1)
    bern = multilevel.fit("y ~ x + (1 | g)", df, family="bernoulli", **run)
    for formula in ("y ~ x + (1 | g)", "answer ~ x + (1 | g)"):
        fit = multilevel.fit(formula, df, family="binomial", **run)
        assert fit.attrs["family"] == "bernoulli"
        np.testing.assert_array_equal(fit.posterior["theta"].values, bern.posterior["theta"].values)
    with pytest.raises(multilevel.ModelError, match=r"p\(successes, trials\)") as info:
        multilevel.fit("count ~ x + (1 | g)", df.assign(count=rng.integers(0, 5, 300)), family="binomial", **run)
    assert "\n" not in str(info.value)


# -- lme4's fitting functions ------------------------------------------------------------------

def test_lmer_glmer_and_glmer_nb_are_fit_with_lme4s_families():
    small = dict(chains=1, draws=30, warmup=30, seed=4, progress=False, cores=1)
    pairs = [(multilevel.lmer("Reaction ~ Days + (Days | Subject)", "sleepstudy", **small),
              multilevel.fit("Reaction ~ Days + (Days | Subject)", "sleepstudy", **small)),
             (multilevel.glmer("y ~ lbase + (1 | subject)", "epil", family='poisson(link = "log")', **small),
              multilevel.fit("y ~ lbase + (1 | subject)", "epil", family="poisson", **small)),
             (multilevel.glmer_nb("y ~ lbase + (1 | subject)", "epil", **small),
              multilevel.fit("y ~ lbase + (1 | subject)", "epil", family="negbinomial", **small))]
    for ours, want in pairs:
        assert ours.family == want.family
        np.testing.assert_array_equal(ours.posterior["theta"].values, want.posterior["theta"].values)
    for call, message in [(lambda: multilevel.lmer("y ~ 1 + (1 | g)", "hsb82", REML=False), "lmer(REML=...) is lme4's"),
                          (lambda: multilevel.lmer("y ~ 1 + (1 | g)", "hsb82", family="poisson"), "use glmer"),
                          (lambda: multilevel.glmer("y ~ 1 + (1 | g)", "hsb82", nAGQ=0), "glmer(nAGQ=...)")]:
        with pytest.raises(multilevel.ModelError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
            call()
        assert "\n" not in str(err.value)
