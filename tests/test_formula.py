"""Formula parsing and design construction (issue 2, point 2): lme4 syntax parsed by
``formulae`` into fixed, varying and fixed-only parts; rows sorted by group; group labels
of any type kept as labels; clear errors for unsupported or bad input; missing values."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel import ModelError
from multilevel.design import build_design
from multilevel.formula import parse_formula

SMALL = dict(chains=2, draws=100, warmup=100, progress=False, cores=1, seed=1)


def make_data(seed: int = 0, m: int = 6, n: int = 15, shuffle: bool = True) -> pd.DataFrame:
    """Columns y, x (positive), z, c (three string levels), g (int labels, unsorted rows),
    with a non-default string index so that row bookkeeping is tested too."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(m) * 7 + 3, n)  # labels 3, 10, 17, ...
    N = g.size
    df = pd.DataFrame({
        "y": rng.normal(size=N) + 0.3 * g,
        "x": rng.uniform(1.0, 3.0, size=N),
        "z": rng.normal(size=N),
        "c": rng.choice(["a", "b", "c"], size=N),
        "g": g,
    })
    if shuffle:
        df = df.iloc[rng.permutation(N)]
    df.index = [f"row{i}" for i in range(N)]
    return df


def design_of(formula: str, data: pd.DataFrame, **kw):
    return build_design(parse_formula(formula), data, **kw)


def column(design, name: str) -> np.ndarray:
    """The Z column of a fixed-only term, by name."""
    return design.Z[:, design.fixed_terms.index(name)]


# -- parse_formula -----------------------------------------------------------------

@pytest.mark.parametrize(
    "formula, common, varying",
    [
        ("y ~ x + (x | g)", ("Intercept", "x"), ("Intercept", "x")),
        ("y ~ (1 | g)", ("Intercept",), ("Intercept",)),
        ("y ~ 1 + (1 | g)", ("Intercept",), ("Intercept",)),
        ("y ~ 1 + (0 + x | g)", ("Intercept",), ("x",)),
        ("y ~ x + (0 + x | g)", ("Intercept", "x"), ("x",)),
        ("y ~ x + z + (x | g)", ("Intercept", "x", "z"), ("Intercept", "x")),
        ("y ~ z + (1 + x | g)", ("Intercept", "z"), ("Intercept", "x")),
        ("y ~ 0 + x + (1 | g)", ("x",), ("Intercept",)),
    ],
)
def test_parse_formula_parts(formula, common, varying):
    spec = parse_formula(formula)
    assert spec.formula == formula
    assert spec.response == "y"
    assert spec.group == "g"
    assert tuple(spec.common) == common
    assert tuple(spec.varying) == varying
    assert set(spec.variables) <= {"y", "x", "z", "g"}
    assert {"y", "g"} <= set(spec.variables)


def test_parse_formula_interaction_and_transformations():
    spec = parse_formula("y ~ x*c + (1 | g)")
    assert spec.common[0] == "Intercept"
    assert {"x", "c", "x:c"} <= set(spec.common)
    assert set(spec.variables) == {"y", "x", "c", "g"}
    spec = parse_formula("y ~ np.log(x) + I(x**2) + center(x) + (1 | g)")
    assert len(spec.common) == 4
    assert set(spec.variables) == {"y", "x", "g"}


# -- build_design: varying, fixed-only, theta_free ------------------------------------

def test_design_varying_intercept_and_slope():
    df = make_data()
    d = design_of("y ~ x + (x | g)", df)
    assert d.varying_terms == ["Intercept", "x"]
    assert d.fixed_terms == []
    assert d.theta_free.tolist() == [True, True]
    assert d.X.shape == (len(df), 2) and d.Z.shape == (len(df), 0)
    np.testing.assert_array_equal(d.X[:, 0], 1.0)
    np.testing.assert_allclose(d.X[:, 1], df.loc[d.row_labels, "x"].to_numpy())
    np.testing.assert_allclose(d.y, df.loc[d.row_labels, "y"].to_numpy())


def test_design_random_intercept_only():
    d = design_of("y ~ (1 | g)", make_data())
    assert d.varying_terms == ["Intercept"]
    assert d.fixed_terms == []
    assert d.theta_free.tolist() == [True]
    assert d.X.shape[1] == 1 and d.Z.shape[1] == 0


def test_design_zero_intercept_slope_without_fixed_slope_has_zero_mean():
    """(0 + x | g) without x in the fixed part: the slope's mean is fixed at 0 (lme4)."""
    df = make_data()
    d = design_of("y ~ 1 + (0 + x | g)", df)
    assert d.varying_terms == ["x"]
    assert d.theta_free.tolist() == [False]
    # the fixed intercept is not varying, so it is a fixed-only (Z) column
    assert d.fixed_terms == ["Intercept"]
    np.testing.assert_array_equal(column(d, "Intercept"), 1.0)


def test_design_zero_intercept_slope_with_fixed_slope_has_free_mean():
    d = design_of("y ~ x + (0 + x | g)", make_data())
    assert d.varying_terms == ["x"]
    assert d.theta_free.tolist() == [True]
    assert d.fixed_terms == ["Intercept"]


def test_design_varying_slope_not_in_fixed_part():
    d = design_of("y ~ z + (1 + x | g)", make_data())
    assert d.varying_terms == ["Intercept", "x"]
    assert d.theta_free.tolist() == [True, False]
    assert d.fixed_terms == ["z"]


def test_design_fixed_only_predictor_beside_varying():
    df = make_data()
    d = design_of("y ~ x + z + (x | g)", df)
    assert d.varying_terms == ["Intercept", "x"]
    assert d.theta_free.tolist() == [True, True]
    assert d.fixed_terms == ["z"]
    assert d.Z.shape == (len(df), 1)
    np.testing.assert_allclose(column(d, "z"), df.loc[d.row_labels, "z"].to_numpy())


def test_design_categorical_predictor_in_fixed_part():
    df = make_data()
    d = design_of("y ~ c + (1 | g)", df)
    assert d.varying_terms == ["Intercept"]
    assert len(d.fixed_terms) == 2  # treatment coding: levels b and c against a
    c = df.loc[d.row_labels, "c"].to_numpy()
    for level in ("b", "c"):
        (name,) = [t for t in d.fixed_terms if level in t.split("[")[-1]]
        np.testing.assert_array_equal(column(d, name), (c == level).astype(float))


def test_design_interaction():
    df = make_data()
    d = design_of("y ~ x*c + (1 | g)", df)
    assert d.varying_terms == ["Intercept"]
    assert len(d.fixed_terms) == 5  # x, c[b], c[c], x:c[b], x:c[c]
    rows = df.loc[d.row_labels]
    np.testing.assert_allclose(column(d, "x"), rows["x"].to_numpy())
    inter = [t for t in d.fixed_terms if ":" in t]
    assert len(inter) == 2
    for name in inter:
        level = name.split("[")[-1].rstrip("]")
        expect = rows["x"].to_numpy() * (rows["c"].to_numpy() == level)
        np.testing.assert_allclose(column(d, name), expect)


def test_design_transformations():
    df = make_data()
    d = design_of("y ~ np.log(x) + I(x**2) + center(x) + (1 | g)", df)
    assert len(d.fixed_terms) == 3
    x = df.loc[d.row_labels, "x"].to_numpy()
    log_name = next(t for t in d.fixed_terms if t.startswith("np.log"))
    sq_name = next(t for t in d.fixed_terms if t.startswith("I("))
    c_name = next(t for t in d.fixed_terms if t.startswith("center"))
    np.testing.assert_allclose(column(d, log_name), np.log(x))
    np.testing.assert_allclose(column(d, sq_name), x**2)
    np.testing.assert_allclose(column(d, c_name), x - x.mean())


def test_fit_terms_use_real_names_for_transformations_and_categories():
    df = make_data()
    fit = multilevel.fit("y ~ np.log(x) + c + (1 | g)", df, **SMALL)
    fixed = list(fit.idata.posterior["alpha"].coords["fixed_term"].values)
    assert any(t.startswith("np.log(x)") for t in fixed)
    assert sum(t.startswith("c[") for t in fixed) == 2
    index = fit.summary().index.tolist()
    assert "theta[Intercept]" in index
    assert any(i.startswith("alpha[np.log(x)") for i in index)


# -- rows sorted by group ---------------------------------------------------------------

def test_rows_sorted_by_group_with_correct_starts():
    df = make_data(m=5)
    # unequal group sizes: drop some rows of two groups
    df = df.drop(df.index[df["g"] == 3][:4]).drop(df.index[df["g"] == 17][:9])
    d = design_of("y ~ x + (x | g)", df)
    assert np.all(np.diff(d.group) >= 0)
    assert d.starts[0] == 0 and d.starts[-1] == len(df) == d.n_obs
    assert d.n_groups == df["g"].nunique() == len(d.group_labels)
    counts = df["g"].value_counts()
    for j, label in enumerate(d.group_labels):
        rows = d.row_labels[d.starts[j]:d.starts[j + 1]]
        assert (df.loc[rows, "g"] == label).all()
        assert len(rows) == counts[label]
        assert np.all(d.group[d.starts[j]:d.starts[j + 1]] == j)
    # every data row used exactly once
    assert sorted(d.row_labels) == sorted(df.index)


# -- group labels of any type ---------------------------------------------------------

def labelled_data(labels: list, kind: str) -> pd.DataFrame:
    """Groups with well-separated means (10 * rank of the label in ``labels``), rows
    shuffled, so that a label mix-up shows in the posterior of beta."""
    rng = np.random.default_rng(3)
    n = 12
    g = np.repeat(np.arange(len(labels)), n)
    y = 10.0 * g + rng.normal(scale=0.3, size=g.size)
    col = np.array(labels, dtype=object)[g]
    df = pd.DataFrame({"y": y, "x": rng.normal(size=g.size), "grp": col})
    if kind == "int":
        df["grp"] = df["grp"].astype(np.int64)
    elif kind == "str":
        df["grp"] = df["grp"].astype(str)
    elif kind == "category":
        cats = list(reversed(labels)) + ["unused"]
        df["grp"] = pd.Categorical(df["grp"].astype(str), categories=cats)
    return df.iloc[rng.permutation(len(df))].reset_index(drop=True)


@pytest.mark.parametrize(
    "labels, kind",
    [
        ([30, 10, 20, 0], "int"),
        (["school-b", "school-a", "10", "9"], "str"),
        (["beta", "alpha", "delta", "gamma"], "category"),
    ],
)
def test_group_labels_kept_in_output(labels, kind):
    df = labelled_data(labels, kind)
    fit = multilevel.fit("y ~ x + (1 | grp)", df, **SMALL)
    coords = fit.idata.posterior["beta"].coords["group"].values
    assert fit.idata.posterior["beta"].dims == ("chain", "draw", "group", "term")
    assert sorted(map(str, coords)) == sorted(map(str, labels))  # observed labels only
    assert coords.dtype.kind == "U"  # as strings whatever the column held, as R's factor levels
    assert set(coords.tolist()) == {str(v) for v in labels}
    # each label's coefficients belong to that label's rows
    means = fit.idata.posterior["beta"].sel(term="Intercept").mean(("chain", "draw"))
    for rank, label in enumerate(labels):
        assert abs(float(means.sel(group=str(label))) - 10.0 * rank) < 1.5, label


# -- errors ------------------------------------------------------------------------------

def test_model_error_is_value_error():
    assert issubclass(ModelError, ValueError)


@pytest.mark.parametrize(
    "formula, kwargs, pattern",
    [
        ("y ~ x + (1 | g) + (1 | c)", {"family": "poisson", "sampler": "polya-gamma"},
         r"sampler 'polya-gamma' fits binomial, bernoulli and negbinomial models"),
        ("y ~ x + (1 | g) + (x | g)", {}, r"varies by .g. in two terms"),
        ("y x + (1 | g)", {}, r"~"),
        ("y ~ x + z", {}, r"group-specific"),
        ("y ~ x + w + (1 | g)", {}, r"'w'"),
        ("y ~ x + (1 | h)", {}, r"'h'"),
        ("y ~ x + (1 | g)", {"family": "no-such-family"}, r"no-such-family"),
        ("y ~ x + (1 | ", {}, r"formula"),
    ],
    ids=["two-factors-glm", "one-expression-twice", "no-tilde", "no-group-part", "missing-column",
         "missing-group-column", "unknown-family", "unparsable"],
)
def test_bad_input_raises_model_error(formula, kwargs, pattern):
    df = make_data()
    with pytest.raises(ModelError, match=pattern):
        multilevel.Model(formula, df, **kwargs)
    with pytest.raises(ValueError):
        multilevel.fit(formula, df, progress=False, **kwargs)


def test_unknown_family_message_lists_available():
    with pytest.raises(ModelError, match="gaussian"):
        multilevel.Model("y ~ x + (1 | g)", make_data(), family="no-such-family")


def test_single_group_refused():
    df = make_data()
    df["g"] = 1
    with pytest.raises(ModelError, match="group"):
        multilevel.Model("y ~ x + (1 | g)", df)


def test_separate_terms_of_one_factor_are_uncorrelated_or_refused():
    """(1 | g) + (0 + x | g) is lme4's uncorrelated model: fit Sigma block-diagonal or refuse
    the formula, never merge the terms silently into a full correlated Sigma."""
    df = make_data()
    try:
        fit = multilevel.fit("y ~ x + (1 | g) + (0 + x | g)", df, **SMALL)
    except ModelError:
        return
    off = fit.idata.posterior["Sigma"].sel(term="x", term_="Intercept").values
    np.testing.assert_array_equal(off, 0.0)


# -- missing values ------------------------------------------------------------------------

def data_with_missing() -> tuple[pd.DataFrame, int]:
    df = make_data()
    df.loc[df.index[[1, 5, 7]], "x"] = np.nan
    df.loc[df.index[9], "y"] = np.nan
    df["g"] = df["g"].astype(float)
    df.loc[df.index[11], "g"] = np.nan
    df.loc[df.index[12], "z"] = np.nan  # column not in the formula: row kept
    return df, 5


def test_missing_values_dropped_with_warning_giving_count():
    df, n_bad = data_with_missing()
    with pytest.warns(UserWarning) as record:
        model = multilevel.Model("y ~ x + (1 | g)", df)
    messages = [str(w.message) for w in record]
    assert any(f" {n_bad} " in f" {m} " for m in messages), messages
    assert model.design.n_obs == len(df) - n_bad
    kept = set(model.design.row_labels)
    assert df.index[12] in kept
    assert not kept & set(df.index[[1, 5, 7, 9, 11]])


def test_missing_values_in_unused_column_are_ignored():
    df = make_data()
    df.loc[df.index[:3], "z"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = multilevel.Model("y ~ x + (1 | g)", df)
    assert model.design.n_obs == len(df)


def test_na_action_raise_refuses():
    df, n_bad = data_with_missing()
    with pytest.raises(ModelError, match=str(n_bad)):
        multilevel.Model("y ~ x + (1 | g)", df, na_action="raise")
    with pytest.raises(ModelError):
        multilevel.fit("y ~ x + (1 | g)", df, na_action="raise", progress=False)


def test_fit_with_missing_values_uses_remaining_rows():
    df, n_bad = data_with_missing()
    with pytest.warns(UserWarning):
        fit = multilevel.fit("y ~ x + (1 | g)", df, **SMALL)
    assert fit.idata.observed_data["y"].size == len(df) - n_bad
