"""R's natural splines ``ns()`` and B-splines ``bs()`` (:mod:`multilevel.rsplines`) against R itself.

* the basis of the fitted values and of new values (some beyond the boundary knots) equals
  R's ``splines::ns`` and its ``predict()``, for df, df with intercept, given knots, no
  knots and boundary knots narrower than the data: ``tests/data/r_ns_basis.csv``; and R's
  ``splines::bs`` for df, df with degree 2 and intercept, given knots, neither, and given
  boundary knots wider and narrower than the data: ``tests/data/r_bs_basis.csv``;
  both written by ``Rscript benchmarks/reference/r_splines_reference.R`` (R 4.2.2, splines 4.2.2);
* R's type-7 quantile, so the knots, to the last bit on ties and odd sizes; coinciding knots
  of heavily tied x as R: ``tests/data/r_tied_knots_basis.csv``;
* in a formula: the design's columns are R's, labelled 1..df as R does, new rows coded with
  the fitted knots, the positional ``ns(x, 3)`` as R users write it;
* a fit of ``mAch ~ ns(ses, df = 3) + (1 | school)`` on hsb82 agrees with lme4's REML fit
  (``benchmarks/reference/r_splines_reference.txt``) when the priors are vague;
* bad arguments are refused in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel.design import build_crossed_design
from multilevel.errors import ModelError
from multilevel.formula import parse_formula
from multilevel.rsplines import RBSpline, RNaturalSpline, r_quantile

R_BASIS = Path(__file__).parent / "data" / "r_ns_basis.csv"
R_BS_BASIS = Path(__file__).parent / "data" / "r_bs_basis.csv"
CASES = {"df3": dict(df=3), "df4_intercept": dict(df=4, intercept=True), "knots": dict(knots=[2, 5, 9]), "df1": {},
         "boundary": dict(df=3, Boundary_knots=[10, 2])}  # R sorts them; df's knots from the rows inside
BS_CASES = {"df5": dict(df=5), "df6_degree2_intercept": dict(df=6, degree=2, intercept=True),
            "knots": dict(knots=[2, 5, 9]), "df_null": {}, "boundary": dict(df=4, Boundary_knots=[0, 20]),
            "boundary_inside": dict(df=5, Boundary_knots=[2, 10])}

# lme4 1.1-31, REML, lmer(mAch ~ ns(ses, df = 3) + (1 | school), hsb82): (estimate, standard error)
LME4_NS = {"Intercept": (2.698230745, 1.6044923250), "ns(ses, df=3)[1]": (9.390950552, 0.7829394344),
           "ns(ses, df=3)[2]": (20.782506666, 3.5327629112), "ns(ses, df=3)[3]": (12.476881633, 1.4936052729)}


def r_basis(case: str, which: str, path: Path = R_BASIS) -> tuple[np.ndarray, np.ndarray]:
    """R's x and basis (rows x columns) of one case and set (``fit`` or ``new``)."""
    rows = pd.read_csv(path).query("case == @case and set == @which")
    wide = rows.pivot(index="row", columns="column", values="value")
    return rows.drop_duplicates("row").sort_values("row")["x"].to_numpy(), wide.to_numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_basis_equals_rs_ns_for_fitted_and_new_values(case):
    x, fitted = r_basis(case, "fit")
    new, predicted = r_basis(case, "new")
    spline = RNaturalSpline()
    assert np.allclose(spline(x, **CASES[case]), fitted, rtol=0, atol=1e-13)
    assert np.allclose(spline.basis(new), predicted, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", list(BS_CASES))
def test_basis_equals_rs_bs_for_fitted_and_new_values(case):
    x, fitted = r_basis(case, "fit", R_BS_BASIS)
    new, predicted = r_basis(case, "new", R_BS_BASIS)
    spline = RBSpline()
    assert np.allclose(spline(x, **BS_CASES[case]), fitted, rtol=0, atol=1e-13)
    assert np.allclose(spline.basis(new), predicted, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case, spline, options", [("ns_tied", RNaturalSpline, dict(df=4)),
                                                   ("bs_tied", RBSpline, dict(df=6))])
def test_coinciding_knots_of_tied_values_give_rs_basis(case, spline, options):
    """Heavily tied x puts df's interior knots on one value; R's splineDesign takes repeated
    knots (its derivatives by de Boor's recursion), and so does this basis."""
    path = Path(__file__).parent / "data" / "r_tied_knots_basis.csv"
    x, fitted = r_basis(case, "fit", path)
    new, predicted = r_basis(case, "new", path)
    s = spline()
    assert np.allclose(s(x, **options), fitted, rtol=0, atol=1e-13)
    assert np.unique(s.knots).size == 1 and s.knots.size > 1
    assert np.allclose(s.basis(new), predicted, rtol=0, atol=1e-12)


def test_bs_in_a_formula_has_rs_columns_and_codes_new_rows_with_the_fitted_knots():
    x, fitted = r_basis("df5", "fit", R_BS_BASIS)
    new, predicted = r_basis("df5", "new", R_BS_BASIS)
    df = pd.DataFrame({"x": x, "g": np.arange(x.size) % 6, "y": np.sin(x)})
    for formula in ("y ~ bs(x, df = 5) + (1 | g)", "y ~ bs(x, 5) + (1 | g)"):
        design = build_crossed_design(parse_formula(formula), df, "raise")
        assert [n.split(")")[-1] for n in design.fixed_names] == ["Intercept", "[1]", "[2]", "[3]", "[4]", "[5]"]
        assert design.fixed_names[1].startswith("bs(x")
        assert np.allclose(design.F[:, 1:], fitted, rtol=0, atol=1e-13)
        coded = design.formulae_fixed.common.evaluate_new_data(pd.DataFrame({"x": new}))
        assert np.allclose(np.asarray(coded)[:, 1:], predicted, rtol=0, atol=1e-12)


def test_a_fit_saved_when_bs_was_formulaes_is_refused_new_data(tmp_path):
    df = pd.DataFrame({"x": np.linspace(0, 9, 60), "g": np.arange(60) % 6, "y": np.sin(np.linspace(0, 9, 60))})
    fit = multilevel.fit("y ~ bs(x, df = 4) + (1 | g)", df, chains=1, draws=20, warmup=20, seed=1, progress=False)
    assert fit.attrs["bs_basis"] == "R"
    del fit.posterior.attrs["bs_basis"]  # as fits saved before bs() became R's
    path = fit.save(tmp_path / "old.nc")
    old = multilevel.load(path)
    assert old.summary().shape[0] > 0
    with pytest.raises(ModelError, match="saved when bs\\(\\) was formulae's") as info:
        old.predict(df.head(3))
    assert "\n" not in str(info.value)
    again = multilevel.fit("y ~ bs(x, df = 4) + (1 | g)", df, chains=1, draws=20, warmup=20, seed=1, progress=False)
    np.testing.assert_allclose(multilevel.load(again.save(tmp_path / "r.nc")).predict(df.head(3)).values,
                               again.predict(df.head(3)).values)


@pytest.mark.parametrize("n", [1, 2, 5, 60, 61, 1000])
def test_r_type_7_quantile(n):
    x = np.round(np.random.default_rng(n).lognormal(size=n), 1)  # ties
    p = np.arange(1, 8) / 8
    assert np.allclose(r_quantile(x, p), np.quantile(x, p), rtol=1e-15, atol=0)
    s = np.sort(x)  # R: (1 - h) x_(lo) + h x_(lo + 1), lo = floor(1 + (n - 1) p), 1-based
    index = 1 + (n - 1) * p
    lo = np.floor(index).astype(int)
    h = index - lo
    expected = np.where(h > 0, (1 - h) * s[lo - 1] + h * s[np.minimum(lo, n - 1)], s[lo - 1])
    assert np.array_equal(r_quantile(x, p), expected)


def test_ns_in_a_formula_has_rs_columns_and_codes_new_rows_with_the_fitted_knots():
    x, fitted = r_basis("df3", "fit")
    new, predicted = r_basis("df3", "new")
    df = pd.DataFrame({"x": x, "g": np.arange(x.size) % 6, "y": np.sin(x)})
    for formula in ("y ~ ns(x, df = 3) + (1 | g)", "y ~ ns(x, 3) + (1 | g)"):
        design = build_crossed_design(parse_formula(formula), df, "raise")
        assert [n.split(")")[-1] for n in design.fixed_names] == ["Intercept", "[1]", "[2]", "[3]"]
        assert np.allclose(design.F[:, 1:], fitted, rtol=0, atol=1e-13)
        coded = design.formulae_fixed.common.evaluate_new_data(pd.DataFrame({"x": new}))
        assert np.allclose(np.asarray(coded)[:, 1:], predicted, rtol=0, atol=1e-12)


def test_a_fit_with_ns_agrees_with_lme4_under_vague_priors():
    """The data-informed default priors centre theta on the groups' own fits; with an
    intercept as poorly determined as this one (the basis is not centred: sd 1.6) they pull
    it by about one standard error, so the comparison with REML uses vague priors."""
    hsb = multilevel.load_dataset("hsb82")
    vague = dict(mu0=[0.0], Lambda0=[[1e4]], alpha_mean=[0.0] * 3, alpha_cov=np.eye(3) * 1e4)
    fit = multilevel.fit("mAch ~ ns(ses, df = 3) + (1 | school)", hsb, seed=1, progress=False, priors=vague)
    table = multilevel.fixef(fit)
    for term, (estimate, se) in LME4_NS.items():
        assert abs(table.loc[term, "mean"] - estimate) < 0.2 * se, term
        assert table.loc[term, "sd"] == pytest.approx(se, rel=0.1), term


@pytest.mark.parametrize("call, message", [
    ("ns(x, df = 0)", r"ns\(\): df = 0 must be a whole number of at least 1"),
    ("ns(x, knots = np.linspace(0, 100, 3))", r"ns\(\): the interior knots .* strictly between the boundary knots"),
    ("bs(x, df = 2)", r"bs\(\): df = 2 must be a whole number of at least 3"),
    ("bs(x, df = 4, center = True)", r"bs\(\) is R's B-spline basis, whose columns are not centred"),
    ("bs(x, knots = np.linspace(20, 30, 2))", r"bs\(\): the interior knots \[20.0, 30.0\] must lie between the boundary knots"),
    ("bs(x, df = 4, degree = 0)", r"bs\(\): degree = 0 must be a whole number of at least 1"),
])
def test_bad_arguments_are_refused_in_one_line(call, message):
    df = pd.DataFrame({"x": np.linspace(1, 9, 40), "g": np.arange(40) % 4, "y": np.arange(40.0)})
    with pytest.raises(ModelError, match=message) as info:
        build_crossed_design(parse_formula(f"y ~ {call} + (1 | g)"), df, "raise")
    assert "\n" not in str(info.value)
