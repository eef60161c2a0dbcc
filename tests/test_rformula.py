"""R spellings in formulas (issue 11, point 8): ``log(x)``, ``factor(x)``, ``as.factor(x)``,
``I(x^2)``, ``poly(x, 2)``, ``scale(x)``, ... read as lme4 users mean them, giving the design
(and so the draws) of the Python spelling, on new data and after loading too; unknown
functions name the Python spelling; the report says how each predictor was read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel import ModelError
from multilevel.design import Predictor, build_crossed_design, build_design, predictor_lines
from multilevel.formula import parse_formula
from multilevel.rformula import python_spelling

SMALL = dict(chains=2, draws=200, warmup=200, progress=False, cores=1, seed=5)


def make_data(seed: int = 0, m: int = 6, n: int = 12) -> pd.DataFrame:
    """y, x (positive), z, c (levels a, b, c), YEAR (95, 96, 97), g (m groups), rows shuffled."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m), n)
    N = g.size
    df = pd.DataFrame({
        "y": rng.normal(size=N) + 0.2 * g,
        "x": rng.uniform(0.5, 3.0, size=N),
        "z": rng.normal(size=N),
        "c": rng.choice(["a", "b", "c"], size=N),
        "YEAR": rng.choice([95, 96, 97], size=N),
        "g": g,
    })
    return df.iloc[rng.permutation(N)]


def design_of(formula: str, data: pd.DataFrame):
    return build_design(parse_formula(formula), data)


@pytest.mark.parametrize(
    "r, python",
    [
        ("log(x)", "np.log(x)"),
        ("log10(x) + log2(x) + log1p(x)", "np.log10(x) + np.log2(x) + np.log1p(x)"),
        ("exp(x) + sqrt(x) + abs(z)", "np.exp(x) + np.sqrt(x) + np.abs(z)"),
        ("log(x, base = 10)", "np.log10(x)"),
        ("factor(c)", "C(c)"),
        ("as.factor(c)", "C(c)"),
        ("factor(YEAR)", "C(YEAR)"),
        ("relevel(c, ref = 'b')", "C(c, Treatment('b'))"),
        ("relevel(factor(YEAR), ref = '96')", "C(YEAR, Treatment(96))"),
        ("I(x^2)", "I(x**2)"),
        ("(x + z)^2", "(x + z)**2"),
        ("x + I(x ^ 3) + qlogis(plogis(z))", "x + I(x**3) + z"),
        ("poly(x, 2, raw = TRUE)", "x + I(x**2)"),
    ],
)
def test_r_spelling_gives_the_design_of_the_python_spelling(r, python):
    df = make_data()
    a = design_of(f"y ~ {r} + (1 | g)", df)
    b = design_of(f"y ~ {python} + (1 | g)", df)
    assert len(a.fixed_terms) == len(b.fixed_terms) > 0
    np.testing.assert_allclose(a.Z, b.Z, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(a.row_labels, b.row_labels)


def test_r_spelling_in_the_varying_part_and_response():
    df = make_data()
    a = design_of("exp(y) ~ log(x) + (log(x) | g)", df)
    b = design_of("np.exp(y) ~ np.log(x) + (np.log(x) | g)", df)
    np.testing.assert_allclose(a.X, b.X)
    np.testing.assert_allclose(a.y, b.y)
    assert a.varying_terms == ["Intercept", "log(x)"] and a.theta_free.all()


def test_terms_keep_the_users_spelling():
    d = design_of("y ~ log(x) + factor(YEAR) + I(x^2) + scale(z) + (1 | g)", make_data())
    assert d.fixed_terms == ["log(x)", "factor(YEAR)[96]", "factor(YEAR)[97]", "I(x ** 2)", "scale(z)"]
    assert parse_formula("y ~ I(x^2) + (1 | g)").formula == "y ~ I(x^2) + (1 | g)"


def test_poly_is_r_orthogonal_polynomials_numbered_by_degree():
    """R: poly(1:5, 2) is (-0.632, -0.316, 0, 0.316, 0.632) and (0.535, -0.267, -0.535, -0.267, 0.535)."""
    df = pd.DataFrame({"y": np.arange(5.0), "x": np.arange(1.0, 6.0), "g": [1, 1, 1, 2, 2]})
    d = design_of("y ~ poly(x, 2) + (1 | g)", df)
    assert d.fixed_terms == ["poly(x, 2)[1]", "poly(x, 2)[2]"]
    expect = np.array([[-0.6324555, 0.5345225], [-0.3162278, -0.2672612], [0.0, -0.5345225],
                       [0.3162278, -0.2672612], [0.6324555, 0.5345225]])
    np.testing.assert_allclose(d.Z, expect, atol=1e-7)
    # new data get the fitted basis (R's predict with poly's coefs), not one of their own
    new = d.formulae_fixed.common.evaluate_new_data(pd.DataFrame({"x": [3.0, 6.0]}))
    np.testing.assert_allclose(np.asarray(new.design_matrix)[:, 1:], [[0.0, -0.5345225], [0.9486833, 1.8708287]], atol=1e-7)


def test_scale_is_r_scale_with_the_sample_sd_kept_for_new_data():
    df = make_data()
    d = design_of("y ~ scale(x) + (1 | g)", df)
    x = df.loc[d.row_labels, "x"]
    np.testing.assert_allclose(d.Z[:, 0], (x - x.mean()) / x.std(ddof=1))
    new = d.formulae_fixed.common.evaluate_new_data(pd.DataFrame({"x": [1.0, 2.0]}))
    np.testing.assert_allclose(np.asarray(new.design_matrix)[:, 1], (np.array([1.0, 2.0]) - x.mean()) / x.std(ddof=1))


def test_r_c_gives_spline_knots_as_r_users_type_them_beside_a_column_named_c():
    x = np.linspace(0, 9, 60)
    df = pd.DataFrame({"x": x, "c": x ** 2, "g": np.arange(60) % 6, "y": np.sin(x)})
    typed = build_crossed_design(parse_formula("y ~ ns(x, knots = c(2, 4.5, 7)) + c + bs(x, knots = c(3), Boundary.knots = c(-1, 10)) + (1 | g)"), df, "raise")
    python = build_crossed_design(parse_formula("y ~ ns(x, knots = np.linspace(2, 7, 3)) + c + "
                       "bs(x, knots = np.linspace(3, 3, 1), lower_bound = -1, upper_bound = 10) + (1 | g)"), df, "raise")
    assert typed.F.shape == python.F.shape == (60, 10)
    np.testing.assert_array_equal(typed.F, python.F)
    assert "c" in typed.fixed_names and typed.fixed_names[-1].startswith("bs(x, knots=c(3), Boundary_knots=c(-1, 10))")


def test_rewriting_leaves_quoted_text_alone():
    assert python_spelling("y ~ I(x^2) + C(c, Treatment('a^TRUE')) + poly(x, 2, raw = TRUE)") == \
        "y ~ I(x**2) + C(c, Treatment('a^TRUE')) + poly(x, 2, raw = True)"
    assert python_spelling("y ~ np.scale(x) + scale(x) + xTRUE") == "y ~ np.scale(x) + r_scale(x) + xTRUE"


@pytest.mark.parametrize(
    "call, pattern",
    [
        ("logit(x)", r"function 'logit' .* unknown; write qlogis\(x\)"),
        ("cbrt(x)", r"function 'cbrt' .* unknown; use NumPy's spelling np\.cbrt\(x\)"),
        ("np.logg(x)", r"function 'np\.logg' .* unknown"),
        ("invlogit(x)", r"write plogis\(x\)"),
        ("s(x)", r"write ns\(x, df=4\) .R.s natural spline., bs\(x, df=4\) or cr"),
        ("frobnicate(x)", r"unknown; use NumPy's functions as np\.<name>\(x\).* R's log"),
    ],
)
def test_unknown_function_names_the_python_spelling(call, pattern):
    with pytest.raises(ModelError, match=pattern):
        multilevel.Model(f"y ~ {call} + (1 | g)", make_data())


def test_transformed_column_that_is_not_finite_is_refused():
    df = make_data()
    df.loc[df.index[:3], "x"] = 0.0
    with pytest.raises(ModelError, match=r"term 'log\(x\)' .* not finite in 3 rows"):
        multilevel.Model("y ~ log(x) + (1 | g)", df)


def test_r_spelling_gives_the_same_draws_as_the_python_spelling():
    df = make_data()
    a = multilevel.fit("y ~ log(x) + factor(c) + I(x^2) + (1 | g)", df, **SMALL)
    b = multilevel.fit("y ~ np.log(x) + C(c) + I(x**2) + (1 | g)", df, **SMALL)
    np.testing.assert_array_equal(a.posterior["alpha"].values, b.posterior["alpha"].values)
    np.testing.assert_array_equal(a.posterior["beta"].values, b.posterior["beta"].values)
    assert a.formula == "y ~ log(x) + factor(c) + I(x^2) + (1 | g)"
    assert list(a.posterior["fixed_term"].values) == ["log(x)", "factor(c)[b]", "factor(c)[c]", "I(x ** 2)"]


@pytest.fixture(scope="module")
def r_fit():
    return multilevel.fit("y ~ poly(x, 2) + factor(YEAR) + scale(z) + (log(x) | g)", make_data(), **SMALL)


def test_predict_with_poly_and_factor_uses_the_fitted_transformations(r_fit):
    """Predicting a few training rows gives their fitted linear predictor: poly's basis and
    scale's mean and sd are the training data's, not the few new rows'."""
    df = make_data()
    rows = df.iloc[[0, 5, 9, 20]]
    pred = r_fit.predict(rows, kind="linear")
    obs = [list(r_fit.design.row_labels).index(i) for i in rows.index]
    np.testing.assert_allclose(pred.values, r_fit.linear_predictor()[:, :, obs], rtol=1e-10, atol=1e-10)


def test_saved_fit_with_r_spellings_predicts_the_same(r_fit, tmp_path):
    loaded = multilevel.load(r_fit.save(tmp_path / "fit.nc"))
    new = pd.DataFrame({"x": [0.7, 2.9], "z": [0.1, -1.0], "YEAR": [97, 95], "g": [2, 4]})
    np.testing.assert_allclose(loaded.predict(new, kind="linear").values, r_fit.predict(new, kind="linear").values)
    assert "Predictors: poly(x, 2), scale(z), log(x) numeric; factor(YEAR) categorical" in loaded.report()


# -- how each predictor was read -------------------------------------------------------

def test_design_says_how_each_predictor_was_read():
    d = design_of("y ~ x + YEAR + c + factor(YEAR) + C(c, Sum) + (0 + c | g)", make_data())
    by_name = {p.name: p for p in d.predictors}
    assert list(by_name) == ["x", "YEAR", "c", "factor(YEAR)", "C(c, Sum)"]
    assert by_name["x"] == Predictor("x", "numeric")
    assert by_name["YEAR"] == Predictor("YEAR", "numeric", integer_values=(95, 96, 97))
    assert by_name["c"] == Predictor("c", "categorical", ("a", "b", "c"), "treatment", "a")
    assert by_name["factor(YEAR)"] == Predictor("factor(YEAR)", "categorical", (95, 96, 97), "treatment", 95)
    assert (by_name["C(c, Sum)"].coding, by_name["C(c, Sum)"].reference) == ("sum", "c")
    full = design_of("y ~ 0 + c + (1 | g)", make_data()).predictors
    assert (full[0].coding, full[0].reference) == ("full", None)
    ref = design_of("y ~ relevel(c, ref = 'b') + (1 | g)", make_data()).predictors
    assert (ref[0].coding, ref[0].reference) == ("treatment", "b")


def test_predictor_lines_render_briefly():
    d = design_of("y ~ x + YEAR + c + (1 | g)", make_data())
    assert " ".join(predictor_lines(d, width=1000)) == (
        "Predictors: x numeric; YEAR numeric (3 distinct integer values: 95, 96, 97; write factor(YEAR) "
        "to treat it as a category); c categorical (3 levels: 'a', 'b', 'c'; reference 'a')")
    assert max(map(len, predictor_lines(d, width=60))) <= 60
    assert predictor_lines(None) == []
    df = make_data()
    rng = np.random.default_rng(1)
    wide = df.assign(**{f"v{i}": rng.normal(size=len(df)) for i in range(11)},
                     many=np.arange(len(df)) % 9, pair=np.arange(len(df)) % 2)
    d = design_of("y ~ " + " + ".join(f"v{i}" for i in range(11)) + " + C(many) + pair + (1 | g)", wide)
    text = " ".join(predictor_lines(d, width=1000))
    assert "v0, v1, v2, v3, v4, v5, v6, v7 and 4 more numeric" in text  # pair (0/1) is plain numeric
    assert "C(many) categorical (9 levels; reference 0)" in text


def test_report_shows_how_predictors_were_read(r_fit):
    lines = r_fit.report().splitlines()
    assert lines[2].startswith("   Data:")
    assert lines[3].startswith("Predictors: poly(x, 2), scale(z), log(x) numeric; factor(YEAR) categorical (3 levels:")
