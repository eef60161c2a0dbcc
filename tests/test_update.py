"""lme4's ``update()`` (:func:`multilevel.api.update`, :mod:`multilevel.formula_update`).

* R's formula rules: ``.`` on either side, terms added and removed as written (random-effects
  terms too), the intercept removed and restored, numbers such as ``1e-3`` kept whole, a
  term that is not there refused in one line that lists the terms;
* an updated fit equals the fit of the new formula made directly, draw for draw: from the
  rows the fit keeps (with its precision weights), from new data (weights by column
  name), and on Dask from the fit's Parquet source read again;
* a new formula naming a column the fit does not keep asks for ``data=``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel.errors import ModelError
from multilevel.formula_update import update_formula

RUN = dict(chains=2, draws=60, warmup=60, seed=4, progress=False)
OLD = "mAch ~ ses + sector + (1 + ses | school)"


@pytest.mark.parametrize("new, expected", [
    (". ~ . + meanses", "mAch ~ ses + sector + (1 + ses | school) + meanses"),
    (". ~ . - sector", "mAch ~ ses + (1 + ses | school)"),
    ("~ . - (1+ses|school) + (1 | school)", "mAch ~ ses + sector + (1 | school)"),
    ("log(.) ~ .", "log(mAch) ~ ses + sector + (1 + ses | school)"),
    (". ~ . - 1", "mAch ~ ses + sector + (1 + ses | school) - 1"),
    (". ~ . + ses", OLD),
    (". ~ . + I(ses - 1e-3)", "mAch ~ ses + sector + (1 + ses | school) + I(ses - 1e-3)"),
    ("y ~ x", "y ~ x"),
])
def test_formula_update_follows_rs_rules(new, expected):
    assert update_formula(OLD, new) == expected


def test_intercept_removed_and_restored():
    assert update_formula("y ~ 0 + x + (1 | g)", ". ~ . + 1") == "y ~ x + (1 | g)"
    assert update_formula("y ~ x - 1 + (1 | g)", ". ~ . + z") == "y ~ x + (1 | g) + z - 1"
    assert update_formula("y ~ x", ". ~ . - x") == "y ~ 1"


def test_removing_a_term_that_is_not_there_is_refused_in_one_line():
    with pytest.raises(ModelError, match=r"cannot remove 'ses:sector' .* its terms are ses, sector, \(1 \+ ses \| school\)") as info:
        update_formula(OLD, ". ~ . - ses:sector")
    assert "\n" not in str(info.value)


def same_draws(a, b) -> None:
    assert a.attrs["formula"] == b.attrs["formula"]
    for name in a.posterior.data_vars:
        np.testing.assert_array_equal(a.posterior[name].values, b.posterior[name].values)


def test_an_updated_fit_is_the_direct_fit_of_the_new_formula():
    hsb = multilevel.load_dataset("hsb82")
    hsb["w"] = np.linspace(0.5, 2.0, len(hsb))
    old = multilevel.fit(OLD, hsb, weights="w", **RUN)
    same_draws(old.update(". ~ . - sector"), multilevel.fit("mAch ~ ses + (1 + ses | school)", hsb, weights="w", **RUN))
    # other data, other settings; the weights column by name
    half = hsb.iloc[: len(hsb) // 2]
    got = multilevel.update(old, ". ~ . + meanses", data=half, draws=30)
    same_draws(got, multilevel.fit(OLD + " + meanses", half, weights="w", **{**RUN, "draws": 30}))
    with pytest.raises(ModelError, match=r"column 'meanses' .* not among the columns the fit keeps .* data=") as info:
        old.update(". ~ . + meanses")
    assert "\n" not in str(info.value)


def test_a_dask_fit_is_updated_from_its_source(tmp_path):
    pytest.importorskip("dask.dataframe")
    hsb = multilevel.load_dataset("hsb82")
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, start in enumerate(range(0, len(hsb), 2500)):
        hsb.iloc[start:start + 2500].to_parquet(parts / f"part-{i}.parquet")
    old = multilevel.fit("mAch ~ ses + sector + (1 | school)", str(parts), engine="dask", **RUN)
    same_draws(old.update(". ~ . - sector"), multilevel.fit("mAch ~ ses + (1 | school)", str(parts), engine="dask", **RUN))
