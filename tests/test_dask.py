"""The Dask engine (issue 14, Gaussian models): the formula over partitions, the statistics
summed per partition, and the draws, against the in-memory engine on the same data and seed.

* the partitioned design's statistics equal the in-memory ones up to the rounding of sums
  (categorical levels seen only in a later partition, ``center()`` learned over all rows,
  precision weights, missing values dropped with the same warning);
* draws agree with the in-memory engine draw for draw (crossed; one term with sampler
  "blocked", which the Dask engine uses for one term) up to that rounding;
* a ``LocalCluster`` of 1 and of 2 workers give identical draws (the partition results are
  combined in a fixed tree, never in order of arrival);
* both engines read a directory or glob of Parquet files; bad inputs get one line (exit 2);
* after the fit, partition by partition: the pointwise log-likelihood and PSIS-LOO equal the
  in-memory fit's, new rows given as a Dask DataFrame get the pandas path's summaries, and a
  saved and loaded Dask fit codes and predicts new rows as before saving.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel.blockstats import crossed_statistics, factor_layout
from multilevel.design import build_crossed_design
from multilevel.distributed.design import build_partitioned_design
from multilevel.errors import ModelError
from multilevel.formula import parse_formula

from clitools import run_main

dd = pytest.importorskip("dask.dataframe")

CROSSED = "y ~ center(x) + c + (1 + center(x) | g) + (1 | h)"
RUN = dict(chains=2, draws=60, warmup=60, seed=11, cores=1, progress=False)


def frame(n: int = 3000, seed: int = 1) -> pd.DataFrame:
    """Crossed data whose mean is large (1e3) against its spread; level "z" of c only in the last rows."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"g": rng.integers(0, 150, n), "h": rng.choice(list("abcdefgh"), n), "x": rng.normal(2, 1, n),
                       "c": rng.choice(["lo", "mid", "hi"], n), "w": rng.uniform(0.5, 2.0, n)})
    df.loc[n - 40:, "c"] = "z"
    df["y"] = 1e3 + df.x + rng.normal(size=n) + rng.normal(size=150)[df.g] + 0.5 * (df.c == "hi")
    df.loc[[5, 2000], "x"] = np.nan
    return df


def partitioned(df: pd.DataFrame, n: int = 4):
    return dd.from_pandas(df, npartitions=n, sort=False)


def draws_of(fit) -> dict[str, np.ndarray]:
    return {v: fit.posterior[v].values for v in fit.posterior.data_vars}


def test_partitioned_statistics_equal_the_in_memory_ones():
    df = frame()
    spec = parse_formula(CROSSED)
    with pytest.warns(UserWarning, match="dropped 2 rows with missing or infinite values in x"):
        mem = build_crossed_design(spec, df, "drop", weights="w")
    with pytest.warns(UserWarning, match="dropped 2 rows with missing or infinite values in x"):
        par = build_partitioned_design(spec, partitioned(df), "drop", weights="w")
    assert par.fixed_names == mem.fixed_names == ["Intercept", "center(x)", "c[lo]", "c[mid]", "c[z]"]
    assert par.n_obs == mem.n_obs == len(df) - 2
    for f, g in zip(par.factors, mem.factors):
        assert f.labels.tolist() == g.labels.tolist() and f.names == g.names
    want = crossed_statistics(mem, factor_layout(mem))
    got = par.statistics(factor_layout(par))
    for name, a in want.stats._asdict().items():
        b = getattr(got.stats, name)
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            scale = max(np.abs(a).max(), 1.0) if a.size else 1.0  # sums of n terms: rounding ~ n eps scale
            assert np.allclose(a, b, rtol=1e-9, atol=1e-12 * par.n_obs * scale), name
        else:
            assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == pytest.approx(b, rel=1e-10), name


def test_center_is_learned_over_all_rows_not_the_first_partition():
    df = frame()
    df.loc[: len(df) // 2, "x"] += 5.0  # the first partitions' mean of x is far from the whole data's
    par = build_partitioned_design(parse_formula(CROSSED), partitioned(df.dropna()), "drop")
    center = _centers(par)[0]
    assert center.mean == pytest.approx(df.x.mean(), rel=1e-12)


def _centers(design):
    from multilevel.distributed.plan import stateful_calls

    return [c.transform for c in stateful_calls(design.formulae_fixed.common)]


def test_draws_agree_with_the_in_memory_engine():
    df = frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mem = multilevel.fit(CROSSED, df, weights="w", **RUN)
        par = multilevel.fit(CROSSED, partitioned(df), weights="w", engine="dask", **RUN)
    for name, a in draws_of(mem).items():
        assert np.allclose(a, draws_of(par)[name], rtol=1e-7, atol=1e-7), name
    assert par.attrs["engine"] == "dask" and par.attrs["partitions"] == 4
    assert {"observed_data", "training_data"}.isdisjoint(par.group_names())


def test_one_term_runs_the_blocked_sampler_in_both_engines():
    df = frame().dropna()
    mem = multilevel.fit("y ~ x + (1 | g)", df, sampler="blocked", **RUN)
    par = multilevel.fit("y ~ x + (1 | g)", partitioned(df, 3), engine="dask", **RUN)
    assert par.attrs["sampler"] == mem.attrs["sampler"] == "collapsed blocked gibbs"
    for name, a in draws_of(mem).items():
        assert np.allclose(a, draws_of(par)[name], rtol=1e-7, atol=1e-7), name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        want, got = mem.loo(pointwise=False), par.loo(pointwise=False)
    names = ("elpd_loo", "se", "p_loo")
    assert [got[k] for k in names] == pytest.approx([want[k] for k in names], rel=1e-9)


@pytest.fixture(scope="module")
def clusters():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as one, \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as two:
        yield one, two


def test_one_and_two_workers_give_identical_draws(clusters):
    from distributed import Client

    df = frame(seed=3)
    fits = []
    for cluster in clusters:
        with Client(cluster), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fits.append(multilevel.fit(CROSSED, partitioned(df, 6), engine="dask", **RUN))
    one, two = (draws_of(f) for f in fits)
    for name in one:
        assert np.array_equal(one[name], two[name]), name


def test_both_engines_read_a_directory_or_glob_of_parquet(tmp_path):
    df = frame().dropna()
    for i, part in enumerate([df.iloc[:1000], df.iloc[1000:2000], df.iloc[2000:]]):
        part.to_parquet(tmp_path / f"part-{i}.parquet")
    mem = multilevel.fit("y ~ x + (1 | g)", str(tmp_path), sampler="blocked", **RUN)
    par = multilevel.fit("y ~ x + (1 | g)", str(tmp_path / "part-*.parquet"), engine="dask", **RUN)
    assert mem.attrs["n_obs"] == par.attrs["n_obs"] == len(df)
    for name, a in draws_of(mem).items():
        assert np.allclose(a, draws_of(par)[name], rtol=1e-7, atol=1e-7), name


@pytest.mark.parametrize("kwargs, message", [
    (dict(family="negbinomial", sampler="polya-gamma"), "engine='dask' fits this model with sampler 'sharded'"),
    (dict(sampler="interweaving"), "engine='dask' fits this model with sampler 'blocked'"),
    (dict(engine="spark"), "engine must be one of"),
    (dict(data="/nonexistent/*.parquet"), "no files match"),
])
def test_bad_dask_inputs_get_one_line(kwargs, message):
    df = frame().dropna()
    args = dict(formula="y ~ x + (1 | g)", data=partitioned(df), engine="dask", family="gaussian")
    args.update(kwargs)
    if args["family"] == "negbinomial":
        args["data"] = partitioned(df.assign(y=1))
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        multilevel.Model(args.pop("formula"), args.pop("data"), **args)
    assert "\n" not in str(info.value)


def test_cli_refuses_cluster_options_without_the_dask_engine(tmp_path):
    path = tmp_path / "d.csv"
    frame().dropna().to_csv(path, index=False)
    code, _, err = run_main(["fit", path, "-f", "y ~ x + (1 | g)", "--workers", "2"])
    assert code == 2 and "apply to --engine dask" in err and "Traceback" not in err
    code, _, err = run_main(["fit", path, "-f", "y ~ x + (1 | g)", "--engine", "dask", "--worker-memory", "lots"])
    assert code == 2 and "--worker-memory must be a size" in err


def test_predictions_of_new_rows_agree_and_draws_of_the_fitted_rows_are_refused_in_one_line():
    df = frame().dropna()
    mem = multilevel.fit(CROSSED, df, **RUN)
    par = multilevel.fit(CROSSED, partitioned(df), engine="dask", **RUN)
    new = pd.DataFrame({"g": [0, 7, 10_000], "h": ["a", "zz", "b"], "x": [1.0, 2.0, 3.0], "c": ["lo", "z", "hi"]})
    a = mem.predict(new, seed=3, summary=True)
    b = par.predict(new, seed=3, summary=True)
    assert np.allclose(a["mean"], b["mean"], rtol=1e-7) and np.isfinite(b["mean"]).all()
    for call in (par.predict, par.linear_predictor):  # chains x draws x rows numbers (tests/test_dask_post.py)
        with pytest.raises(ModelError, match="summary=True|engine='dask'") as info:
            call()
        assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def weighted_fits():
    """The in-memory fit and the Dask fit (4 partitions) of the same rows, with precision weights."""
    df = frame().dropna()
    mem = multilevel.fit(CROSSED, df, weights="w", **RUN)
    par = multilevel.fit(CROSSED, partitioned(df), weights="w", engine="dask", **RUN)
    return df, mem, par


NEW = pd.DataFrame({"g": [0, 7, 10_000, 3, 7, 10_000], "h": ["a", "zz", "b", "c", "h", "a"],
                    "x": [1.0, 2.0, 3.0, 0.5, -1.0, 2.5], "c": ["lo", "z", "hi", "mid", "z", "lo"]},
                   index=[10, 11, 12, 13, 14, 15])


def test_log_likelihood_and_loo_are_the_in_memory_ones_partition_by_partition(weighted_fits, monkeypatch):
    from multilevel import elpd

    _, mem, par = weighted_fits
    a, b = mem.log_likelihood(), par.log_likelihood()
    assert a.shape == b.shape and np.allclose(a.values, b.values, rtol=1e-9, atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        want, got = mem.loo(), par.loo()
        summary = par.loo(pointwise=False)
    for name in ("elpd_loo", "se", "p_loo"):
        assert got[name] == pytest.approx(want[name], rel=1e-9) and summary[name] == got[name], name
    assert (got.n_data_points, got.n_samples, got.warning, got.good_k) == (want.n_data_points, want.n_samples,
                                                                          want.warning, want.good_k)
    assert np.allclose(got.loo_i.values, want.loo_i.values, rtol=1e-9)
    assert np.allclose(got.pareto_k.values, want.pareto_k.values, atol=1e-6)
    bins = [-np.inf, got.good_k, 1.0, np.inf]
    assert np.array_equal(np.histogram(got.pareto_k, bins)[0], np.histogram(want.pareto_k, bins)[0])
    assert "pareto_k" not in summary and "\n" not in str(pytest.raises(ModelError, par.loo, var_name="y").value)
    monkeypatch.setattr(elpd, "LOO_VALUES", 7 * 120)  # a partition's rows in blocks of 7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        blocks = par.loo()
    names = ("elpd_loo", "se", "p_loo")
    assert [blocks[k] for k in names] == pytest.approx([got[k] for k in names], rel=1e-12)
    assert np.array_equal(blocks.pareto_k.values, got.pareto_k.values)
    with pytest.raises(ModelError, match="fit them with the same engine") as info:
        multilevel.compare({"memory": mem, "dask": par})
    assert "\n" not in str(info.value)


def test_dask_newdata_is_predicted_partition_by_partition(weighted_fits):
    _, mem, par = weighted_fits
    seen = NEW[NEW.g != 10_000].assign(h="a")
    for fit in (mem, par):
        got = fit.predict(dd.from_pandas(seen, npartitions=2, sort=False), summary=True)
        assert isinstance(got, dd.DataFrame)
        pd.testing.assert_frame_equal(got.compute(), fit.predict(seen, summary=True))  # no random numbers
    got = par.predict(dd.from_pandas(NEW, npartitions=3, sort=False), kind="response", seed=5, summary=True)
    again = par.predict(dd.from_pandas(NEW, npartitions=3, sort=False), kind="response", seed=5, summary=True)
    want = par.predict(NEW, kind="response", seed=5, summary=True)
    assert list(got.columns) == list(want.columns) and list(got.compute().index) == list(NEW.index)
    pd.testing.assert_frame_equal(got.compute(), again.compute())
    # other random numbers than the pandas path's: the means agree to a few Monte Carlo errors
    assert np.allclose(got.compute()["mean"], want["mean"], atol=6 * want["sd"].max() / np.sqrt(120))
    with pytest.raises(ModelError, match="summary=True") as info:
        par.predict(dd.from_pandas(NEW, npartitions=2))
    assert "\n" not in str(info.value)


def test_a_saved_dask_fit_predicts_new_rows_as_before(weighted_fits, tmp_path):
    df, _, par = weighted_fits
    before = par.predict(NEW, kind="response", seed=2, summary=True)
    back = multilevel.load(par.save(tmp_path / "dask.nc"))
    assert back._design is None and back.attrs["engine"] == "dask"
    pd.testing.assert_frame_equal(back.predict(NEW, kind="response", seed=2, summary=True), before)
    # the coding is the one learned over all rows: center() of all rows, level "z" of the last rows only
    assert _centers(back.design)[0].mean == _centers(par.design)[0].mean == pytest.approx(df.x.mean(), rel=1e-12)
    assert _centers(back.design)[0].mean != pytest.approx(df.x.iloc[:2000].mean(), rel=1e-6)
    assert list(back.design.frame["c"].cat.categories) == ["hi", "lo", "mid", "z"]
    got = back.predict(dd.from_pandas(NEW, npartitions=2, sort=False), seed=4, summary=True).compute()
    pd.testing.assert_frame_equal(got, par.predict(dd.from_pandas(NEW, npartitions=2, sort=False), seed=4,
                                                   summary=True).compute())
    with pytest.raises(ModelError, match="loaded from a file") as info:
        back.loo()
    assert "\n" not in str(info.value)


def test_loo_and_predictions_on_two_workers_equal_the_threaded_ones(weighted_fits, clusters):
    from distributed import Client

    _, _, par = weighted_fits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        threaded = par.loo(pointwise=False)
        new = dd.from_pandas(NEW, npartitions=3, sort=False)
        want = par.predict(new, seed=9, summary=True).compute()
        with Client(clusters[1]):
            on_cluster = par.loo(pointwise=False)
            got = par.predict(new, seed=9, summary=True).compute()
    assert [on_cluster[k] for k in ("elpd_loo", "se", "p_loo")] == [threaded[k] for k in ("elpd_loo", "se", "p_loo")]
    pd.testing.assert_frame_equal(got, want)


def test_nested_and_uncorrelated_terms_agree_with_the_in_memory_engine():
    df = frame().dropna()
    formula = "y ~ x + (1 | h/c) + (x || g)"
    mem = multilevel.fit(formula, df, **RUN)
    par = multilevel.fit(formula, partitioned(df, 5), engine="dask", **RUN)
    assert list(mem.posterior["beta_h:c"].coords["h:c"].values) == list(par.posterior["beta_h:c"].coords["h:c"].values)
    for name, a in draws_of(mem).items():
        assert np.allclose(a, draws_of(par)[name], rtol=1e-7, atol=1e-7), name


def test_moments_combine_batches_without_cancellation():
    from multilevel.moments import combine_moments, moments_of

    rng = np.random.default_rng(0)
    x = 1e9 + rng.standard_normal((1000, 2))  # a large mean: the sum of squares about 0 would lose every digit
    batches = [x[:1], x[1:300], x[300:301], x[301:]]
    total = moments_of(x[:0])
    for b in batches:
        total = combine_moments(total, moments_of(b))
    assert total.count == 1000
    assert np.allclose(total.mean, x.mean(axis=0), rtol=1e-15)
    assert np.allclose(total.variance, x.var(axis=0), rtol=1e-6)  # x itself is stored to 1e-7
    plain = (x ** 2).mean(axis=0) - x.mean(axis=0) ** 2
    assert not np.allclose(plain, x.var(axis=0), rtol=1e-3)  # the control: the textbook formula fails here


def test_tree_reduce_combines_in_partition_order():
    import dask
    from dask import delayed

    from multilevel.distributed.reduce import tree_reduce

    for n in (1, 2, 5, 8):
        (out,) = dask.compute(tree_reduce([delayed(str)(i) for i in range(n)], lambda a, b: f"({a}+{b})"),
                              scheduler="sync")
        assert [int(c) for c in out if c.isdigit()] == list(range(n))
    (five,) = dask.compute(tree_reduce([delayed(str)(i) for i in range(5)], lambda a, b: f"({a}+{b})"),
                           scheduler="sync")
    assert five == "(((0+1)+(2+3))+4)"


def test_factors_grouping_the_rows_identically_are_refused_as_in_memory():
    rng = np.random.default_rng(4)
    df = pd.DataFrame({"a": rng.integers(0, 30, 600), "x": rng.normal(size=600)})
    df["b"] = (df.a * 7) % 30  # a relabelling of a: the same groups
    df["c"] = rng.permutation(df.a.to_numpy())  # as many levels, other groups
    df["y"] = df.x + rng.normal(size=600)
    for formula, refused in [("y ~ x + (1 | a) + (1 | b)", True), ("y ~ x + (1 | a) + (1 | c)", False)]:
        for family, data in [("gaussian", df), ("poisson", df.assign(y=rng.poisson(2, 600)))]:
            if refused:
                with pytest.raises(ModelError, match="group the rows identically") as mem:
                    multilevel.Model(formula, data, family=family)
                with pytest.raises(ModelError, match="group the rows identically") as par:
                    multilevel.Model(formula, partitioned(data, 3), family=family, engine="dask")
                assert str(par.value) == str(mem.value) and "\n" not in str(par.value)
            else:
                multilevel.Model(formula, partitioned(data, 3), family=family, engine="dask")
