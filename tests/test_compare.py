"""Model checking by LOO and WAIC, and model comparison (issue 4, point 3): Fit.loo and
Fit.waic through ArviZ from the pointwise log-likelihood; multilevel.compare of several
fits, including the README's random intercept against random slope on hsb82."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel import ModelError
from multilevel.comparison import _reff
from multilevel.convert import az

SMALL = dict(chains=2, draws=200, warmup=100, seed=1, cores=1, progress=False)
INTERCEPT = "mAch ~ ses + (1 | school)"
SLOPE = "mAch ~ ses + (ses | school)"


@pytest.fixture(scope="module")
def hsb_fits(hsb82):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"intercept": multilevel.fit(INTERCEPT, hsb82, **SMALL), "slope": multilevel.fit(SLOPE, hsb82, **SMALL)}


def test_loo_and_waic(hsb_fits):
    fit = hsb_fits["slope"]
    loo = fit.loo()
    assert loo["elpd_loo"] < 0 and np.isfinite(loo["se"]) and loo["se"] > 0
    assert loo["n_data_points"] == 7185 and loo["n_samples"] == 400
    assert 2 < loo["p_loo"] < 400  # about the number of effective parameters: 2 x 160 schools, shrunk
    assert loo["pareto_k"].shape == (7185,)
    assert "Computed from 400 posterior samples" in str(loo)
    waic = fit.waic()
    assert abs(waic["elpd_waic"] - loo["elpd_loo"]) < 5
    # the same numbers as ArviZ on the fit's own InferenceData, once the log-likelihood is added
    fit.add_log_likelihood()
    ref = az.waic(fit.idata)
    assert waic["elpd_waic"] == pytest.approx(ref["elpd_waic"], rel=1e-12)
    ref_loo = az.loo(fit.idata, reff=1.0)
    own = fit.loo(reff=1.0)
    for name in ("elpd_loo", "se", "p_loo"):
        assert own[name] == pytest.approx(ref_loo[name], rel=1e-12), name
    assert (own.n_samples, own.n_data_points, own.warning, own.good_k, own.scale) == (
        ref_loo.n_samples, ref_loo.n_data_points, ref_loo.warning, ref_loo.good_k, ref_loo.scale)
    np.testing.assert_allclose(own.loo_i.values, ref_loo.loo_i.values, rtol=1e-12)
    np.testing.assert_allclose(own.pareto_k.values, ref_loo.pareto_k.values, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(waic.waic_i.values, ref.waic_i.values, rtol=1e-12)
    assert waic["p_waic"] == pytest.approx(ref["p_waic"], rel=1e-12) and waic.se == pytest.approx(ref.se, rel=1e-12)
    # the pointwise elpd_loo sums to the total
    assert float(loo["loo_i"].sum()) == pytest.approx(loo["elpd_loo"])


def test_loo_from_loglik_computed_on_demand(hsb82):
    fit = multilevel.fit("mAch ~ ses + (1 | school)", hsb82.iloc[:2000], log_likelihood=False, **SMALL)
    assert "log_likelihood" not in fit.idata.groups()
    stored = multilevel.fit("mAch ~ ses + (1 | school)", hsb82.iloc[:2000], log_likelihood=True, **SMALL)
    assert fit.waic()["elpd_waic"] == pytest.approx(stored.waic()["elpd_waic"], rel=1e-12)
    assert np.isfinite(fit.loo()["elpd_loo"])


@pytest.mark.filterwarnings("ignore:Estimated shape parameter")
def test_loo_with_a_mean_fixed_at_zero(hsb82):
    """A term whose mean is fixed at 0 has constant theta draws (undefined ESS); LOO still works."""
    fit = multilevel.fit("mAch ~ 1 + (0 + ses | school)", hsb82.iloc[:1500], **SMALL)
    assert np.isfinite(fit.loo()["elpd_loo"])


def test_compare_random_intercept_and_slope(hsb_fits):
    """The README's comparison: the random-slope model predicts held-out rows better."""
    table = multilevel.compare(hsb_fits)
    assert isinstance(table, pd.DataFrame)
    assert set(table.index) == {"intercept", "slope"}
    for col in ("rank", "elpd_loo", "p_loo", "elpd_diff", "weight", "se", "dse", "warning"):
        assert col in table.columns
    best = table.index[0]
    assert table.loc[best, "rank"] == 0 and table.loc[best, "elpd_diff"] == 0
    assert table["weight"].sum() == pytest.approx(1.0)
    assert table["p_loo"]["slope"] > table["p_loo"]["intercept"]
    # the individual LOOs are the table's entries
    for name, fit in hsb_fits.items():
        assert table.loc[name, "elpd_loo"] == pytest.approx(fit.loo()["elpd_loo"], rel=1e-9)
    # ArviZ's own comparison of ArviZ's own LOOs (each with the fit's reff) gives the same table
    reffs = {name: _reff(fit) for name, fit in hsb_fits.items()}
    ref = az.compare({name: az.loo(az.InferenceData(log_likelihood=fit.log_likelihood().to_dataset(name="y")),
                                   reff=reffs[name], pointwise=True) for name, fit in hsb_fits.items()})
    pd.testing.assert_frame_equal(table, ref, rtol=1e-9)
    w = multilevel.compare(hsb_fits, ic="waic")
    assert "elpd_waic" in w.columns
    # scale= is honoured (ArviZ's compare keeps precomputed values on their own scale)
    dev = multilevel.compare(hsb_fits, scale="deviance")
    assert (dev["scale"] == "deviance").all()
    np.testing.assert_allclose(dev.loc[table.index, "elpd_loo"], -2 * table["elpd_loo"], rtol=1e-12)
    assert dev.index[0] == table.index[0]


def test_compare_aligns_rows_of_fits_sorted_differently(hsb82, hsb_fits):
    """Fits grouped by different factors store their rows in different orders; compare
    aligns them by row label, so the standard error of the difference is right."""
    by_sector = multilevel.fit("mAch ~ ses + (1 | sector)", hsb82, **SMALL)
    a, b = hsb_fits["intercept"], by_sector
    la = a.idata.constant_data["row_label"].values
    lb = b.idata.constant_data["row_label"].values
    assert not np.array_equal(la, lb)
    table = multilevel.compare({"school": a, "sector": b})
    loo_a = a.loo()["loo_i"].values
    loo_b = b.loo()["loo_i"].values
    pos = pd.Index(lb).get_indexer(la)
    diff = loo_a - loo_b[pos]
    dse = np.sqrt(len(diff) * np.var(diff))
    assert table["dse"].max() == pytest.approx(dse, rel=1e-6)
    assert table.loc["school", "rank"] == 0  # schools explain far more than sector


def test_compare_refuses_bad_input(hsb82, hsb_fits):
    with pytest.raises(ModelError, match="at least two"):
        multilevel.compare({"one": hsb_fits["slope"]})
    with pytest.raises(ModelError, match="at least two"):
        multilevel.compare([hsb_fits["slope"], hsb_fits["intercept"]])
    with pytest.raises(ModelError, match="not a multilevel Fit"):
        multilevel.compare({"a": hsb_fits["slope"], "b": "fit.nc"})
    with pytest.raises(ModelError, match="ic"):
        multilevel.compare(hsb_fits, ic="aic")
    other = multilevel.fit(INTERCEPT, hsb82.iloc[:3000], **SMALL)
    with pytest.raises(ModelError, match="different rows"):
        multilevel.compare({"all": hsb_fits["intercept"], "part": other})


def test_compare_is_exported_lazily_even_after_submodule_imports():
    import multilevel.comparison  # noqa: F401
    import multilevel.plots  # noqa: F401

    assert callable(multilevel.compare)
    assert "compare" in multilevel.__all__
