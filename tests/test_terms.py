"""Random-effects terms (issue 12, first layer): lme4 formulas with any number of terms
``(expr | factor)`` parse into a list of terms, lme4's shorthands expanded as lme4 does
(``a/b``, ``||``); interaction factors get combined labels (:mod:`multilevel.factors`);
a model with several terms is refused with one line where it is built; a one-term
interaction factor is fitted and predicts on new data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel import ModelError
from multilevel.design import CrossedDesign, build_design, mean_is_free
from multilevel.factors import grouping_factor, label_key, row_labels
from multilevel.formula import parse_formula
from multilevel.terms import RandomTerm, find_bars

SMALL = dict(chains=1, draws=60, warmup=60, progress=False, cores=1, seed=2)


def terms_of(formula: str) -> list[str]:
    return [str(t) for t in parse_formula(formula).terms]


# -- expansions ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "formula, terms",
    [
        ("y ~ x + (x | g)", ["(1 + x | g)"]),
        ("y ~ (1 | g)", ["(1 | g)"]),
        ("y ~ (0 + x | g)", ["(0 + x | g)"]),
        ("y ~ (-1 + x | g)", ["(0 + x | g)"]),
        ("y ~ ((1 | g))", ["(1 | g)"]),
        ("y ~ (1 | s) + (1 | d)", ["(1 | s)", "(1 | d)"]),
        ("y ~ x + (1 | a/b)", ["(1 | a)", "(1 | a:b)"]),
        ("y ~ (1 | (a/b))", ["(1 | a)", "(1 | a:b)"]),
        ("y ~ x + (x | a/b)", ["(1 + x | a)", "(1 + x | a:b)"]),
        ("y ~ (1 | a/b/c)", ["(1 | a)", "(1 | a:b)", "(1 | a:b:c)"]),
        ("y ~ (1 | a:b/c)", ["(1 | a:b)", "(1 | a:b:c)"]),
        ("y ~ (1 | a:b)", ["(1 | a:b)"]),
        ("y ~ x + (x || g)", ["(1 | g)", "(0 + x | g)"]),
        ("y ~ x + (1 + x || g)", ["(1 | g)", "(0 + x | g)"]),
        ("y ~ (0 + x + z || g)", ["(0 + x | g)", "(0 + z | g)"]),
        ("y ~ (x*z || g)", ["(1 | g)", "(0 + x | g)", "(0 + z | g)", "(0 + x:z | g)"]),
        ("y ~ (x || a/b)", ["(1 | a)", "(1 | a:b)", "(0 + x | a)", "(0 + x | a:b)"]),
        ("y ~ c + (c || g)", ["(1 | g)", "(0 + c | g)"]),  # lme4: a term per expression, not per column
        ("y ~ x + (1 | g) + (0 + x | g)", ["(1 | g)", "(0 + x | g)"]),
        ("y ~ service + (1|s) + (1|d) + (1|dept:service)", ["(1 | s)", "(1 | d)", "(1 | dept:service)"]),
        ("y ~ (1 | g) + (0 + x || h)", ["(1 | g)", "(0 + x | h)"]),
        ("y ~ (I(x^2) | g)", ["(1 + I(x ** 2) | g)"]),
        ("y ~ (scale(x) || g)", ["(1 | g)", "(0 + scale(x) | g)"]),
        ("y ~ (0 + C(c, Sum) | g)", ["(0 + C(c, Sum) | g)"]),
    ],
)
def test_terms_expand_as_lme4(formula, terms):
    assert terms_of(formula) == terms


def test_term_fields():
    spec = parse_formula("y ~ x + (x || batch/cask)")
    assert spec.terms[0] == RandomTerm(("Intercept",), "batch", ("batch",))
    assert spec.terms[1] == RandomTerm(("Intercept",), "batch:cask", ("batch", "cask"))
    assert spec.terms[3] == RandomTerm(("x",), "batch:cask", ("batch", "cask"))
    assert spec.terms[3].rhs() == "0 + x" and not spec.terms[3].has_intercept
    assert parse_formula("y ~ (scale(x) | g)").terms[0].varying == ("Intercept", "r_scale(x)")  # formulae's spelling
    assert set(spec.variables) == {"y", "x", "batch", "cask"}


def test_one_term_spec_keeps_group_and_varying():
    spec = parse_formula("y ~ x + (x | g)")
    assert (spec.group, spec.varying, spec.group_columns) == ("g", ("Intercept", "x"), ("g",))
    assert spec.varying_rhs() == spec.terms[0].rhs() == "1 + x"
    spec = parse_formula("y ~ (1 | batch:cask)")
    assert (spec.group, spec.group_columns) == ("batch:cask", ("batch", "cask"))


def test_backticked_factor_column():
    (term,) = parse_formula("y ~ (1 | `my g`)").terms
    assert term.factor_columns == ("my g",)


def test_bar_inside_a_call_is_not_a_term():
    """``|`` inside a function's arguments is Python's "or", not a random-effects term."""
    text = "y ~ I(x > 1 | z) + (1 | g)"
    (bar,) = find_bars(text, text)
    assert (bar.lhs, bar.factor, bar.double) == ("1", "g", False)
    (bar,) = find_bars("y ~ (I(a | b) || g)", "")
    assert (bar.lhs, bar.factor, bar.double) == ("I(a | b)", "g", True)


@pytest.mark.parametrize("written, read", [
    ("y ~ x + (1 | factor(g))", "y ~ x + (1 | g)"), ("y ~ (x || as.factor(g))", "y ~ (x || g)"),
    ("y ~ (1 | factor(a)/as.character(b))", "y ~ (1 | a/b)"), ("y ~ (1 | factor(a):b)", "y ~ (1 | a:b)"),
])
def test_r_conversions_around_a_grouping_column_are_the_column(written, read):
    """lme4 users write (1 | factor(g)); a grouping factor is categorical in any case."""
    assert parse_formula(written).terms == parse_formula(read).terms


@pytest.mark.parametrize(
    "formula, pattern",
    [
        ("y ~ x + 1 | g", r"'\|' outside parentheses"),
        ("y ~ (1 | a*b)", r"grouping factor 'a\*b' .* not supported"),
        ("y ~ (1 | a + b)", r"grouping factor 'a \+ b' .* not supported"),
        ("y ~ (1 | log(g))", r"grouping factor 'log\(g\)' .* column of the data"),
        ("y ~ (1 | g | h)", r"more than one '\|'"),
        ("y ~ (1 | g) + (1 | g)", r"\(1 \| g\) appears twice"),
        ("y ~ (1 | a/b) + (1 | a)", r"\(1 \| a\) appears twice"),
        ("y ~ (1 | g) + (1 + x | g)", r"'1' varies by 'g' in two terms"),
        ("y ~ (1 | a:b) + (1 | b:a)", r"two terms"),
        ("y ~ (1 | a:a)", r"names a column twice"),
        ("y ~ (0 | g)", r"does not parse"),
    ],
)
def test_unsupported_terms_refused_in_one_line(formula, pattern):
    with pytest.raises(ModelError, match=pattern) as err:
        parse_formula(formula)
    assert "\n" not in str(err.value)


# -- refusal where the model is built ----------------------------------------------------------

def crossed_data(seed: int = 0) -> pd.DataFrame:
    """batch 1..4, casks 'a'..'c' reused in every batch, two rows per (batch, cask) and a
    crossed factor s; y with a batch:cask effect."""
    rng = np.random.default_rng(seed)
    batch = np.repeat([1, 2, 3, 4], 6)
    cask = np.tile(np.repeat(["a", "b", "c"], 2), 4)
    effect = rng.normal(scale=2.0, size=12)[np.repeat(np.arange(12), 2)]
    df = pd.DataFrame({"batch": batch, "cask": cask, "s": np.tile([0, 1, 2], 8),
                       "x": rng.normal(size=24)})
    df["y"] = 1.0 + effect + 0.5 * df["x"] + rng.normal(scale=0.3, size=24)
    return df.iloc[rng.permutation(24)].reset_index(drop=True)


@pytest.mark.parametrize(
    "formula, factors, blocks",
    [
        ("y ~ x + (1 | batch) + (1 | s)", ["batch", "s"], [((0,),), ((0,),)]),
        ("y ~ x + (1 | batch/cask)", ["batch", "batch:cask"], [((0,),), ((0,),)]),
        ("y ~ x + (x || batch)", ["batch"], [((0,), (1,))]),
        ("y ~ x + (1 | batch) + (0 + x | batch)", ["batch"], [((0,), (1,))]),
    ],
)
def test_several_terms_give_one_object_per_factor(formula, factors, blocks):
    """Several terms build a CrossedDesign: one FactorTerms per grouping factor, the terms of
    one factor as blocks of its covariance (uncorrelated)."""
    spec = parse_formula(formula)
    assert len(spec.terms) > 1
    design = build_design(spec, crossed_data())
    assert isinstance(design, CrossedDesign)
    assert [f.name for f in design.factors] == factors
    assert [f.blocks for f in design.factors] == blocks
    assert design.theta_terms == ["Intercept", "x"] if "x |" in formula or "x ||" in formula else ["Intercept"]


def test_several_terms_of_every_glm_family():
    """Poisson fits several terms by Metropolis-within-Gibbs (tests/test_crossed_poisson.py),
    binomial and bernoulli by Polya-Gamma (tests/test_crossed_glm.py), negbinomial by Polya-Gamma
    with a phi step (tests/test_negbinomial.py)."""
    df = crossed_data().assign(y=lambda d: (d["y"] > 1).astype(int))
    chosen = {family: multilevel.Model("y ~ x + (1 | batch) + (1 | s)", df, family=family).sampler_name
              for family in ("poisson", "bernoulli", "negbinomial")}
    assert chosen == {"poisson": "metropolis", "bernoulli": "polya-gamma", "negbinomial": "polya-gamma"}
    model = multilevel.Model("y ~ x + (1 | batch) + (1 | s)", df, family="bernoulli")
    assert model.sampler_name == "polya-gamma"


# -- grouping factors ---------------------------------------------------------------------------

def test_grouping_factor_of_one_column_sorted_as_the_column():
    frame = pd.DataFrame({"g": [10, 3, 10, 17, 3]})
    factor = grouping_factor(frame, RandomTerm(("Intercept",), "g", ("g",)))
    assert factor.n_levels == 3
    assert factor.labels.tolist() == ["3", "10", "17"]  # numbers in numeric order, labels as strings
    assert factor.levels.tolist() == [3, 10, 17] and factor.levels.name == "g"
    assert factor.index.tolist() == [1, 0, 1, 2, 0] and factor.index.dtype == np.int64


def test_interaction_factor_levels_are_distinct_per_batch():
    df = crossed_data()
    factor = grouping_factor(df, RandomTerm(("Intercept",), "batch:cask", ("batch", "cask")))
    assert factor.name == "batch:cask" and factor.columns == ("batch", "cask")
    assert factor.n_levels == 12  # casks a..c of each of 4 batches, not 3
    assert factor.labels.tolist()[:4] == ["1:a", "1:b", "1:c", "2:a"]
    rows = row_labels(df, ("batch", "cask"))
    assert [factor.labels[j] for j in factor.index] == rows
    assert rows[0] == f"{df['batch'][0]}:{df['cask'][0]}"


def test_interaction_factor_sorts_numbers_as_numbers():
    frame = pd.DataFrame({"a": [10, 2, 10, 2], "b": [1.0, 1.0, 2.0, 2.0]})
    factor = grouping_factor(frame, RandomTerm(("Intercept",), "a:b", ("a", "b")))
    assert factor.labels.tolist() == ["2:1", "2:2", "10:1", "10:2"]  # label_key: 1.0 reads "1"


def test_interaction_labels_that_collide_are_refused():
    frame = pd.DataFrame({"a": ["x:y", "x"], "b": ["z", "y:z"]})
    with pytest.raises(ModelError, match="two combinations of a, b labelled 'x:y:z'"):
        grouping_factor(frame, RandomTerm(("Intercept",), "a:b", ("a", "b")))


def test_label_key_still_in_convert():
    from multilevel.convert import label_key as from_convert

    assert from_convert is label_key and label_key(1224.0) == "1224"


def test_mean_is_free_by_column_label():
    assert mean_is_free(["Intercept", "x"], ["Intercept", "z"]).tolist() == [True, False]


# -- a one-term interaction factor is fitted ----------------------------------------------------

def test_design_of_interaction_factor():
    df = crossed_data()
    d = build_design(parse_formula("y ~ x + (1 | batch:cask)"), df)
    assert d.n_groups == 12
    assert d.group_labels.tolist()[:3] == ["1:a", "1:b", "1:c"]
    assert np.all(np.diff(d.group) >= 0)
    rows = df.loc[d.row_labels]
    np.testing.assert_array_equal(np.asarray(d.group_labels)[d.group],
                                  [f"{b}:{c}" for b, c in zip(rows["batch"], rows["cask"])])
    assert set(d.frame.columns) == {"y", "x", "batch", "cask"}


def test_interaction_factor_groups_dropped_with_missing_rows_are_named():
    df = crossed_data()
    df.loc[(df["batch"] == 2) & (df["cask"] == "b"), "x"] = np.nan
    with pytest.warns(UserWarning) as record:
        d = build_design(parse_formula("y ~ x + (1 | batch:cask)"), df)
    assert "1 groups of 'batch:cask' had no rows left and are dropped: 2:b" in [str(w.message) for w in record]
    assert d.n_groups == 11


def test_fit_and_predict_with_interaction_factor(tmp_path):
    df = crossed_data()
    fit = multilevel.fit("y ~ x + (1 | batch:cask)", df, **SMALL)
    groups = fit.posterior["beta"].coords["group"].values.tolist()
    assert len(groups) == 12 and "3:b" in groups
    assert fit.attrs["group_factor"] == "batch:cask"
    new = pd.DataFrame({"x": [0.0, 0.0, 0.0], "batch": [3, 3, 9], "cask": ["b", "c", "b"]})
    path = tmp_path / "fit.nc"
    fit.save(path)
    for model in (fit, multilevel.load(path)):  # a loaded fit rebuilds the factor from its training data
        pred = model.predict(new, kind="linear", seed=1)
        assert pred["group"].values.tolist() == ["3:b", "3:c", "9:b"]
        assert pred["new_group"].values.tolist() == [False, False, True]
        beta = fit.posterior["beta"].sel(term="Intercept")
        for i, label in enumerate(["3:b", "3:c"]):  # x = 0: the linear predictor is the group's intercept
            np.testing.assert_allclose(pred.values[..., i], beta.sel(group=label).values, rtol=1e-12)
    with pytest.raises(ModelError, match="'cask' needed by the formula is not in the new data"):
        fit.predict(new.drop(columns="cask"))
