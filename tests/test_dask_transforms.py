"""Stateful transforms learned over partitions (:mod:`multilevel.distributed.learn`, issue 14
point 2): the Dask engine codes ``scale(x)`` (R's, and with ``center = FALSE``),
``standardize``, ``bs``, ``ns``, ``cr``, ``cc`` and ``poly`` as the in-memory engine does.

* quantiles from two order statistics are NumPy's own numbers;
* the knots of ``bs`` are exactly ``np.percentile`` of all rows, found by bracketing passes
  (forced to take several with few bins), with ties and skewed data; those of R's ``ns``
  exactly R's ``quantile`` of all rows; those of ``cr`` and ``cc`` exactly ``np.quantile`` of
  the distinct values, de-duplicated across partitions in hash buckets (forced to several);
* positional arguments (``cr(x, 5)``, ``ns(k, 3)``) are read as in memory;
* every partition's design equals the in-memory one up to the rounding of sums;
* a saved and loaded Dask fit with splines and polynomials codes new rows as before;
* transforms not learned over partitions are refused in one line.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel.design import build_crossed_design
from multilevel.distributed import learn
from multilevel.distributed.design import build_partitioned_design
from multilevel.distributed.plan import design_stateful_calls, partition_design
from multilevel.errors import ModelError
from multilevel.formula import parse_formula
from multilevel.rsplines import RBSpline, RNaturalSpline

dd = pytest.importorskip("dask.dataframe")


def frame(n: int = 6000, seed: int = 3) -> pd.DataFrame:
    """A skewed x whose first rows are shifted (a partition alone would learn other states), a
    tied integer k, groups g."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x": rng.lognormal(size=n), "k": rng.integers(0, 5, n).astype(float),
                       "g": rng.integers(0, 40, n)})
    df.loc[: n // 3, "x"] += 3.0
    df["y"] = np.sin(df.x) + 0.2 * df.k + rng.normal(size=n) + rng.normal(size=40)[df.g]
    return df


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_quantiles_from_order_statistics_are_numpys(n):
    rng = np.random.default_rng(n)
    x = np.sort(np.round(rng.normal(size=n), 1))  # ties
    percents = 100 * np.linspace(0, 1, 9)[1:-1]
    for q, numpys in [(np.true_divide(percents, 100), np.percentile(x, percents)), (percents / 97, np.quantile(x, percents / 97))]:
        r = learn.quantile_ranks(n, q)
        assert np.array_equal(learn.quantile_of_order_statistics(n, q, x[r], x[np.minimum(r + 1, n - 1)]), numpys)


def knots_of(t) -> np.ndarray:
    """A spline transform's knots, boundary knots included."""
    return np.concatenate([t.boundary, t.knots]) if isinstance(t, (RNaturalSpline, RBSpline)) else t._knots


@pytest.mark.parametrize("call", ["bs(x, df=7)", "bs(k, df=7)", "bs(x, df=7, Boundary.knots=c(0.4, 3.7))",
                                  "ns(x, df=5, Boundary.knots=c(3.7, 0.4))",
                                  "bs(k, df=4, lower_bound=1, upper_bound=3)", "ns(x, df=6)", "ns(k, 3, intercept=True)", "cr(x, df=7)",
                                  "cr(k, df=3)", "cc(x, period=4, df=6)", "cr(x, 5, lower_bound=0.5, upper_bound=6, center=False)"])
def test_spline_knots_are_the_exact_quantiles_over_all_rows(call, monkeypatch):
    """bs and ns: R's quantiles of all rows; cr and cc: NumPy's of the distinct values,
    in a dozen buckets."""
    monkeypatch.setattr(learn, "BINS", 8)  # few bins and a small gather: several bracketing passes
    monkeypatch.setattr(learn, "GATHER", 40)
    monkeypatch.setattr(learn, "BUCKET", 500)  # x has about 6000 distinct values
    df = frame()
    formula = f"y ~ {call} + (1 | g)"
    mem = build_crossed_design(parse_formula(formula), df, "raise")
    par = build_partitioned_design(parse_formula(formula), dd.from_pandas(df, npartitions=5, sort=False), "raise")
    (m,), (p,) = design_stateful_calls(mem), design_stateful_calls(par.plan.prototype)
    assert np.array_equal(knots_of(p.transform), knots_of(m.transform))
    if getattr(m.transform, "_centering_matrix", None) is not None:
        assert np.allclose(p.transform._centering_matrix, m.transform._centering_matrix, rtol=0, atol=1e-13)
    if hasattr(m.transform, "penalty_matrix"):
        assert np.allclose(p.transform.penalty_matrix, m.transform.penalty_matrix, rtol=1e-12, atol=1e-12)
        assert np.allclose(p.transform._random_state["null"], m.transform._random_state["null"], rtol=0, atol=1e-12)


def test_distinct_values_split_into_disjoint_buckets_the_same_from_every_partition():
    split = learn.DistinctSplit(-np.inf, np.inf, None, 7)
    a, b = np.array([0.0, 1.5, 2.0, 2.0, 3.25]), np.array([-0.0, 2.0, 3.25, 9.0])
    buckets = [learn.merge_bucket([split(a), split(b)], i) for i in range(7)]
    assert np.array_equal(np.sort(np.concatenate(buckets)), np.unique(np.concatenate([a, b])))


def test_bracketing_takes_several_passes_when_brackets_are_crowded(monkeypatch):
    monkeypatch.setattr(learn, "BINS", 4)
    monkeypatch.setattr(learn, "GATHER", 10)
    x = np.random.default_rng(0).lognormal(size=5000)
    order = learn.OrderStatistics(np.array([0, 17, 2500, 4999]), float(x.min()), float(x.max()))
    passes = 0
    while not order.done:
        request = order.request()
        order.advance(request.combine(request.partial(x[:2000]), request.partial(x[2000:])))
        passes += 1
    assert np.array_equal(order.values, np.sort(x)[[0, 17, 2500, 4999]]) and passes > 3


@pytest.mark.parametrize("formula", [
    "y ~ scale(x) + (1 | g)",
    "y ~ scale(x, center = FALSE) + (1 | g)",
    "y ~ standardize(x) + k + (1 | g)",
    "y ~ bs(x, df = 6) + (1 | g)",
    "y ~ bs(x, df=5, degree=2, lower_bound=0, upper_bound=60) + (1 | g)",
    "y ~ bs(x, knots=np.linspace(1, 3, 3), degree=2, intercept=True, lower_bound=0.5, upper_bound=40) + (1 | g)",
    "y ~ poly(x, 3) + (poly(k, 2) | g)",
    "y ~ poly(x, 2, raw=True) + center(k) + (1 | g)",
    "y ~ cr(x, df=6) + (cr(k, df=3) | g)",
    "y ~ ns(x, df=4) + (ns(k, 2) | g)",
    "y ~ cc(x, period=8, knots=np.linspace(4, 6, 3), lower_bound=0.5) + cr(x, knots=np.linspace(4, 6, 3)) + (1 | g)",
    "y ~ cr(x, knots=np.linspace(0.5, 2, 3)) + (1 | g)",  # knots below the first rows' x (formulae checks the range)
    "y ~ ns(x, knots=c(1, 2.5)) + bs(k, df=4, Boundary.knots=c(-1, 6)) + (1 | g)",  # R's spellings
    # df's knots from the rows inside boundary knots narrower than the data (R's rule), the rest extrapolated
    "y ~ bs(x, df=6, Boundary.knots=c(0.5, 3.5)) + bs(k, df=4, degree=2, lower_bound=1) + (1 | g)",
    "y ~ ns(x, df=4, Boundary.knots=c(0.6, 3)) + (1 | g)",
])
def test_partition_designs_equal_the_in_memory_design(formula):
    df = frame()
    spec = parse_formula(formula)
    mem = build_crossed_design(spec, df, "raise")
    par = build_partitioned_design(spec, dd.from_pandas(df, npartitions=4, sort=False), "raise")
    assert par.fixed_names == mem.fixed_names
    parts = [partition_design(df.iloc[i:i + 1500], par.plan) for i in range(0, len(df), 1500)]
    assert np.allclose(np.vstack([d.F for d in parts]), mem.F, rtol=1e-12, atol=1e-12)
    assert np.allclose(np.vstack([d.factors[0].Z for d in parts]), mem.factors[0].Z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("formula", ["y ~ bs(x, df=5) + poly(k, 2) + (1 + scale(x) | g)",
                                     # the first rows lie above the boundary: the prototype's knots are placeholders
                                     "y ~ ns(x, df=4, Boundary.knots=c(0.6, 3)) + (1 | g)",
                                     "y ~ cr(x, df=4) + ns(k, 2) + (1 | g)", "y ~ cc(k, period=5, df=3) + (1 | g)"])
def test_a_saved_dask_fit_with_splines_codes_new_rows_as_before(formula, tmp_path):
    df = frame(3000)
    run = dict(chains=1, draws=30, warmup=30, seed=5, cores=1, progress=False)
    par = multilevel.fit(formula, dd.from_pandas(df, npartitions=3, sort=False), engine="dask", **run)
    mem = multilevel.fit(formula, df, sampler="blocked", **run)
    new = frame(50, seed=9)
    before = par.predict(new, kind="linear", seed=1, summary=True)
    back = multilevel.load(par.save(tmp_path / "fit.nc"))
    pd.testing.assert_frame_equal(back.predict(new, kind="linear", seed=1, summary=True), before)
    # the in-memory fit of the same rows codes them alike: the same predictions up to the sums' rounding
    assert np.allclose(mem.predict(new, kind="linear", seed=1, summary=True)["mean"], before["mean"], atol=1e-6)


def test_transforms_not_learned_over_partitions_are_refused_in_one_line():
    df = frame(500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ModelError, match=r"not tp\(\).*write cr\(x, df=...\)") as info:
            multilevel.Model("y ~ tp(x, df=4) + (1 | g)", dd.from_pandas(df, npartitions=2), engine="dask")
    assert "\n" not in str(info.value)
    # boundary knots that hold no row leave df nothing to place knots by, in memory and on Dask alike
    for data, engine in ((df, "pandas"), (dd.from_pandas(df, npartitions=2), "dask")):
        for spline in ("bs", "ns"):
            with pytest.raises(ModelError, match=rf"{spline}\(\): no value of x lies inside the boundary knots "
                                                 r"\[60.0, 70.0\]") as info:
                multilevel.Model(f"y ~ {spline}(x, df=5, Boundary.knots=c(60, 70)) + (1 | g)", data, engine=engine)
            assert "\n" not in str(info.value)
