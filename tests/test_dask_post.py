"""After a Dask fit (``engine="dask"``), everything that reads the fitted rows does so partition
by partition, with the in-memory engine's results on the same data and draws:

* ``predict()`` without new data: a lazy Dask DataFrame of the fitted rows' summaries, those
  of ``predict(newdata)`` of the same rows (as pandas, and as the same Dask partitions with
  the same seed); a loaded fit refuses in one line and says to pass the data again, or to
  give it its rows with ``attach()``, after which it predicts them and computes LOO as
  before saving (other rows refused);
* ``posterior_predictive()``: replicates of a seeded random sample of the fitted rows, the
  same sample on any scheduler, stored with the sample's observed responses so that
  ``az.plot_ppc`` and ``plot_ppc`` work, also after saving;
* ``compare()`` of Dask fits of the same data: ``az.compare``'s table (pseudo-BMA weights) of
  the in-memory fits; mixed or different data refused in one line; ``waic()``: ``az.waic``'s;
* the sample and the comparison on a worker process equal the threaded ones;
* the CLI predicts Parquet/CSV directories into a Parquet directory with ``--engine dask``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel.errors import ModelError

from clitools import run_main

dd = pytest.importorskip("dask.dataframe")
dask = pytest.importorskip("dask")

RUN = dict(chains=2, draws=40, warmup=40, seed=3, cores=1, progress=False)
GAUSSIAN = "y ~ x + (1 | g)"


def frame(n: int = 600, seed: int = 1) -> pd.DataFrame:
    """``n`` rows in 20 groups: a Gaussian y, a count k, precision weights w; two rows miss x."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"g": rng.integers(0, 20, n), "x": rng.normal(size=n), "w": rng.uniform(0.5, 2.0, n)})
    df["y"] = 1 + df.x + rng.normal(size=20)[df.g] + rng.normal(size=n)
    df["k"] = rng.poisson(np.exp(0.5 + 0.3 * rng.normal(size=20)[df.g]))
    df.loc[[3, 400], "x"] = np.nan
    return df


def quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return call(*args, **kwargs)


@pytest.fixture(scope="module")
def fits():
    """The data, its Dask frame (3 partitions), and the Gaussian (weighted) fits of both engines."""
    df = frame()
    ddf = dd.from_pandas(df, npartitions=3, sort=False)
    mem = quiet(multilevel.fit, GAUSSIAN, df, weights="w", sampler="blocked", **RUN)
    par = quiet(multilevel.fit, GAUSSIAN, ddf, weights="w", engine="dask", **RUN)
    return df, ddf, mem, par


def one_line(call, match: str) -> str:
    with pytest.raises(ModelError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


# -- predictions of the fitted rows ---------------------------------------------------------------

def test_fitted_rows_are_predicted_partition_by_partition(fits):
    df, ddf, mem, par = fits
    kept = df.dropna()
    got = par.predict(summary=True)
    assert isinstance(got, dd.DataFrame) and got.npartitions == 3
    pd.testing.assert_frame_equal(got.compute(), par.predict(kept, summary=True))  # kind="mean": no random numbers
    want = mem.predict(summary=True)  # the in-memory engine's fitted values, the same draws up to rounding
    assert list(got.compute().index) == list(want.index) == list(kept.index)
    assert np.allclose(got.compute().values, want.values, rtol=1e-7, atol=1e-7)
    # responses: the rows' precision weights, each partition's random numbers spawned from the seed
    drawn = par.predict(kind="response", seed=5, summary=True).compute()
    same = par.predict(ddf.dropna(), kind="response", seed=5, weights="w", summary=True).compute()
    pd.testing.assert_frame_equal(drawn, same)
    by_hand = pd.concat([par.predict(part.dropna(), kind="response", weights="w", summary=True,
                                     seed=np.random.default_rng(np.random.SeedSequence(5, spawn_key=(i,))))
                         for i, part in enumerate(ddf.partitions[i].compute() for i in range(3))])
    pd.testing.assert_frame_equal(drawn, by_hand)
    one_line(lambda: par.predict(), "summary=True")


def test_fitted_rows_of_a_poisson_fit_and_a_loaded_fit(fits, tmp_path):
    df, ddf, _, _ = fits
    pois = quiet(multilevel.fit, "k ~ 1 + (1 | g)", ddf, family="poisson", engine="dask", **RUN)
    with dask.config.set(scheduler="sync"):
        got = pois.predict(summary=True).compute()
    pd.testing.assert_frame_equal(got, pois.predict(df.dropna(subset=["k", "g"]), summary=True))
    back = multilevel.load(pois.save(tmp_path / "pois.nc"))
    one_line(lambda: back.predict(summary=True), "pass the data again as newdata.*fit.attach")
    pd.testing.assert_frame_equal(back.predict(ddf, summary=True).compute(), got)
    # attach(): the loaded fit reads its rows again, once they are shown to be the fitted rows
    one_line(lambda: back.attach(dd.from_pandas(df.iloc[:500], npartitions=2)), "not the rows the fit was made from")
    with dask.config.set(scheduler="sync"):
        pd.testing.assert_frame_equal(back.attach(ddf).predict(summary=True).compute(), got)
    assert back.loo().elpd_loo == pytest.approx(pois.loo().elpd_loo, rel=1e-12)


# -- the shrinkage plot ---------------------------------------------------------------------------

def test_shrinkage_estimates_of_a_dask_fit_are_the_in_memory_ones(fits):
    """Each level's own estimate, partition by partition: Gaussian (weighted) least squares in
    one pass, a Poisson of two factors by Newton passes, as the in-memory fits of the same rows
    and draws give them; the plot draws them."""
    import matplotlib.pyplot as plt

    from multilevel.plots import own_estimates

    df, ddf, mem, par = fits
    for got, want in zip(own_estimates(par, "g"), own_estimates(mem, "g")):
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-8)
    formula = "k ~ x + (1 | g) + (1 | h)"
    data = df.assign(h=np.arange(len(df)) % 7)
    pois = [quiet(multilevel.fit, formula, d, family="poisson", sampler="sharded" if d is data else None,
                  engine="pandas" if d is data else "dask", **RUN)
            for d in (data, dd.from_pandas(data, npartitions=3, sort=False))]
    for factor in ("g", "h"):
        (b_mem, own_mem), (b_par, own_par) = (own_estimates(f, factor) for f in pois)
        assert own_mem.any() and np.array_equal(own_mem, own_par)
        np.testing.assert_allclose(b_par, b_mem, rtol=1e-6, atol=1e-8)
    plt.close(pois[1].plot("shrinkage"))


# -- posterior predictive checks ------------------------------------------------------------------

def test_posterior_predictive_of_every_row_when_the_sample_covers_them(fits):
    df, _, mem, par = fits
    kept = df.dropna()
    y_rep = par.posterior_predictive(seed=2, rows=10_000)
    observed = par.group("observed_data")
    assert y_rep.dims == ("chain", "draw", "obs") and y_rep.shape == (2, 40, len(kept))
    assert np.array_equal(observed["y"].values, kept.y.values) and np.array_equal(observed["row"].values, kept.index)
    assert observed.attrs["sampled_rows"] == observed.attrs["fitted_rows"] == len(kept)
    # the replicates' means are the in-memory fit's fitted means, up to Monte Carlo error
    mean = mem.predict(summary=True)["mean"].values
    noise = np.sqrt(float(par.posterior["sigma2"].mean()) / kept.w.values / 80)
    assert np.all(np.abs(y_rep.mean(("chain", "draw")).values - mean) < 5 * noise)
    with dask.config.set(scheduler="sync"):
        again = par.posterior_predictive(seed=2, rows=10_000)
    assert np.array_equal(again.values, y_rep.values)


def test_posterior_predictive_samples_rows_for_arviz_and_the_ppc_plot(fits, tmp_path):
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    df, _, _, par = fits
    y_rep = par.posterior_predictive(seed=7, rows=50)
    observed = par.group("observed_data")
    rows = observed["row"].values
    assert y_rep.shape == (2, 40, 50) and len(set(rows)) == 50 and np.all(np.diff(rows) > 0)  # data order
    assert np.array_equal(observed["y"].values, df.loc[rows, "y"].values)
    assert par.group("posterior_predictive").attrs["sampled_rows"] == 50
    assert "random sample" in observed.attrs["sampling"] and observed.attrs["fitted_rows"] == 598
    with dask.config.set(scheduler="sync"):
        same = par.posterior_predictive(seed=7, rows=50)
    assert np.array_equal(same["row"].values, rows) and np.array_equal(same.values, y_rep.values)
    other = par.posterior_predictive(seed=8, rows=50)
    assert not np.array_equal(other["row"].values, rows)
    az.plot_ppc(par.idata, num_pp_samples=20)
    assert "random sample of 50 of the 598" in par.plot("ppc").axes[0].get_title()
    back = multilevel.load(par.save(tmp_path / "ppc.nc"))
    assert "random sample of 50" in back.plot("ppc").axes[0].get_title()  # the stored sample
    one_line(lambda: back.posterior_predictive(), "before saving")
    one_line(lambda: par.posterior_predictive(rows=0), "rows must be a positive integer")
    one_line(lambda: back.linear_predictor(), "engine='dask'")


def test_a_binomial_ppc_plot_of_a_dask_fit_reads_the_sample(fits):
    import matplotlib

    matplotlib.use("Agg")
    df, _, _, _ = fits
    data = dd.from_pandas(df.assign(b=(df.k > 1).astype(int)), npartitions=3, sort=False)
    fit = quiet(multilevel.fit, "b ~ 1 + (1 | g)", data, family="bernoulli", engine="dask", **RUN)
    fig = fit.plot("ppc", num_pp_samples=10)
    assert "proportion per group" in fig.axes[0].get_title()
    assert fit.group("posterior_predictive") is None  # the plot stores nothing
    one_line(lambda: multilevel.fit(GAUSSIAN, df.dropna(), **RUN).posterior_predictive(rows=10), "leave it out")


# -- compare ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nested_fits(fits):
    """(1 | g) and x + (1 | g) of the same rows, in memory and on Dask (the same draws)."""
    df, ddf, mem, par = fits
    kept = df.dropna()
    run = dict(RUN, sampler="blocked")
    mem0 = quiet(multilevel.fit, "y ~ 1 + (1 | g)", kept, weights="w", **run)
    par0 = quiet(multilevel.fit, "y ~ 1 + (1 | g)", dd.from_pandas(kept, npartitions=3, sort=False), weights="w",
                 engine="dask", **RUN)
    mem1 = quiet(multilevel.fit, GAUSSIAN, kept, weights="w", **run)
    par1 = quiet(multilevel.fit, GAUSSIAN, dd.from_pandas(kept, npartitions=3, sort=False), weights="w",
                 engine="dask", **RUN)
    return mem0, mem1, par0, par1


def test_compare_of_dask_fits_is_arviz_table_of_the_in_memory_fits(nested_fits):
    import arviz as az

    mem0, mem1, par0, par1 = nested_fits
    got = quiet(multilevel.compare, {"intercept": par0, "slope": par1})
    want = quiet(multilevel.compare, {"intercept": mem0, "slope": mem1}, method="pseudo-BMA")
    assert list(got.columns) == ["rank", "elpd_loo", "p_loo", "elpd_diff", "weight", "se", "dse", "warning", "scale"]
    assert got.attrs["method"] == "pseudo-BMA" and list(got.index) == ["slope", "intercept"]
    pd.testing.assert_frame_equal(got, want, rtol=1e-8, check_dtype=False)
    for scale in ("deviance", "negative_log"):  # the differences change sign with the scale
        loos = {name: quiet(fit.loo, scale=scale) for name, fit in (("intercept", mem0), ("slope", mem1))}
        want = quiet(az.compare, loos, method="pseudo-BMA", scale=scale)
        got = quiet(multilevel.compare, {"intercept": par0, "slope": par1}, scale=scale, method="pseudo-bma")
        pd.testing.assert_frame_equal(got, want, rtol=1e-8, check_dtype=False)


def test_compare_refuses_mixed_engines_other_data_and_stacking_in_one_line(fits, nested_fits):
    df, ddf, mem, par = fits
    mem0, _, par0, par1 = nested_fits
    one_line(lambda: multilevel.compare({"memory": mem0, "dask": par1}), "fit them with the same engine")
    one_line(lambda: multilevel.compare({"a": par0, "b": par1}, method="stacking"), "method='pseudo-BMA'")
    one_line(lambda: multilevel.compare({"a": par0, "b": par1}, ic="waic"), "ic='loo'")
    # par kept 598 of the 600 rows of its data, par0 the 598 rows given: the same rows, other partitions
    one_line(lambda: multilevel.compare({"a": par0, "b": par}), "different rows or responses in partition")
    other = quiet(multilevel.fit, GAUSSIAN, dd.from_pandas(df.dropna().iloc[:500], npartitions=3, sort=False),
                  engine="dask", **RUN)
    one_line(lambda: multilevel.compare({"a": par1, "b": other}), "fitted to different data")


# -- the command line --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scheduler():
    """The address of a local cluster of one worker process, shared by the CLI tests."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def test_cli_predicts_a_parquet_directory_partition_by_partition(fits, scheduler, tmp_path):
    from multilevel.distributed.source import open_dask

    df, ddf, _, par = fits
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(3):
        df.iloc[200 * i:200 * (i + 1)].dropna().to_parquet(parts / f"part-{i}.parquet")
    fit_path, out = par.save(tmp_path / "fit.nc"), tmp_path / "out"
    dask_args = ["--engine", "dask", "--scheduler", scheduler, "--out", out]
    code, _, err = run_main(["predict", fit_path, parts, *dask_args])
    assert code == 0 and "3 partitions" in err
    assert sorted(p.name for p in out.iterdir()) == ["part.0.parquet", "part.1.parquet", "part.2.parquet"]
    got = pd.read_parquet(out)
    code, _, _ = run_main(["predict", fit_path, parts, "--out", tmp_path / "memory.csv"])  # in memory: the same rows
    pd.testing.assert_frame_equal(got, pd.read_csv(tmp_path / "memory.csv"), check_dtype=False)
    # responses: each partition's random numbers spawned from --seed, as fit.predict of a Dask frame draws them
    code, _, _ = run_main(["predict", fit_path, parts, *dask_args, "--overwrite", "--kind", "response", "--seed", "4"])
    want = par.predict(open_dask(str(parts)), kind="response", seed=4, summary=True).compute()
    assert code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out)[list(want.columns)], want.reset_index(drop=True))
    # a failure leaves what was saved as it was, and no temporary files
    before = pd.read_parquet(out)
    (tmp_path / "bad").mkdir()
    df.drop(columns="x").to_parquet(tmp_path / "bad" / "b.parquet")
    code, _, err = run_main(["predict", fit_path, tmp_path / "bad", *dask_args, "--overwrite"])
    assert code == 2 and "column 'x' needed by the formula" in err and len(err.strip().splitlines()) == 1
    pd.testing.assert_frame_equal(pd.read_parquet(out), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "fit.nc", "memory.csv", "out", "parts"]


def test_an_out_directory_the_workers_do_not_see_is_refused_before_predicting(tmp_path):
    """With a remote scheduler the workers write the files: an --out they do not see would be
    written elsewhere, so it is refused in one line (checked on every worker)."""
    from pathlib import Path

    from multilevel.cli import _check_workers_see

    class Cluster:
        def __init__(self, seen):
            self.seen = seen

        def run(self, check, path):
            return {w: check(path) and ok for w, ok in self.seen.items()}

    _check_workers_see(Cluster({"tcp://a:1": True, "tcp://b:1": True}), str(tmp_path), Path("out"))
    with pytest.raises(ModelError, match=r"--out 'out' is not on a path the Dask workers see \(1 of 2 workers, "
                                         r"e.g. tcp://b:1\); with --scheduler, give a directory they share") as info:
        _check_workers_see(Cluster({"tcp://a:1": True, "tcp://b:1": False}), str(tmp_path), Path("out"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("args, message", [
    (["--engine", "dask", "--out", "o"], "pass the data again as NEW"),
    (["NEW", "--engine", "dask"], "add --out DIR"),
    (["NEW", "--engine", "dask", "--out", "fit.nc"], "exists; choose another name"),
    (["NEW", "--engine", "dask", "--out", "fit.nc", "--overwrite"], "is a file"),
    (["NEW", "--workers", "2", "--out", "o.csv"], "apply to --engine dask"),
    (["NEW", "--engine", "dask", "--out", "o", "--worker-memory", "lots"], "--worker-memory must be a size"),
    (["/nonexistent/*.parquet", "--engine", "dask", "--out", "o", "--workers", "1"], "no files match"),
    ([], "fitted with --engine dask and keeps no rows"),
])
def test_cli_refuses_bad_dask_predictions_in_one_line(fits, tmp_path, monkeypatch, args, message):
    df, _, _, par = fits
    monkeypatch.chdir(tmp_path)
    par.save("fit.nc")
    df.to_parquet("new.parquet")
    code, _, err = run_main(["predict", "fit.nc", *["new.parquet" if a == "NEW" else a for a in args]])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_the_sample_and_the_comparison_on_a_worker_process_equal_the_threaded_ones(nested_fits, scheduler):
    from distributed import Client

    _, _, par0, par1 = nested_fits
    threaded = par1.posterior_predictive(seed=11, rows=40).values
    table = quiet(multilevel.compare, {"a": par0, "b": par1})
    with Client(scheduler):
        on_worker = par1.posterior_predictive(seed=11, rows=40).values
        again = quiet(multilevel.compare, {"a": par0, "b": par1})
    assert np.array_equal(on_worker, threaded)
    pd.testing.assert_frame_equal(again, table)


def test_waic_of_a_dask_fit_is_the_in_memory_one_partition_by_partition(nested_fits, monkeypatch):
    from multilevel import elpd

    mem0, _, par0, _ = nested_fits
    for scale in ("log", "deviance"):
        want, got = quiet(mem0.waic, scale=scale), quiet(par0.waic, scale=scale)
        assert list(got.index) == list(want.index)
        for name in ("elpd_waic", "se", "p_waic"):
            assert got[name] == pytest.approx(want[name], rel=1e-8), name
        assert (got.n_data_points, got.n_samples, got.warning, got.scale) == (want.n_data_points, want.n_samples,
                                                                              want.warning, want.scale)
        assert np.allclose(got.waic_i.values, want.waic_i.values, rtol=1e-8)
    monkeypatch.setattr(elpd, "LOO_VALUES", 7 * 80)  # a partition's rows in blocks of 7
    summary = quiet(par0.waic, pointwise=False)
    assert summary["waic"] == pytest.approx(quiet(mem0.waic, pointwise=False)["waic"], rel=1e-8)
    one_line(lambda: par0.waic(var_name="y"), "takes scale")


def test_fitted_and_residuals_of_a_dask_fit_are_lazy_and_the_rows_own():
    hsb = multilevel.load_dataset("hsb82")
    fit = multilevel.fit("mAch ~ ses + (1 | school)", dd.from_pandas(hsb, npartitions=3), engine="dask",
                         chains=1, draws=40, warmup=40, seed=1, progress=False, cores=1)
    mu = fit.fitted()
    r, pearson = fit.residuals(), fit.residuals("pearson")
    assert mu.npartitions == r.npartitions == 3
    mu, r, pearson = mu.compute(), r.compute(), pearson.compute()
    np.testing.assert_allclose(r.to_numpy(), (hsb.mAch.loc[r.index] - mu.loc[r.index]).to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(pearson.to_numpy(), r.to_numpy() / fit.sigma(), rtol=1e-12)


def test_cli_loo_and_compare_of_saved_dask_fits(fits, tmp_path, monkeypatch):
    """A Dask fit saved without its pointwise log-likelihood is refused in one line (its rows
    stay in their files); saved with it, ``multilevel loo`` gives the in-memory fit's numbers."""
    _, _, mem, par = fits
    monkeypatch.chdir(tmp_path)
    par.save("bare.nc")
    for argv in (["loo", "bare.nc"], ["compare", "bare.nc", "bare.nc", "--names", "a,b"]):
        code, out, err = run_main(argv)
        assert code == 2 and not out and len(err.strip().splitlines()) == 1, err
        assert "bare.nc is a Dask fit saved without its pointwise log-likelihood" in err and "--log-likelihood" in err
    loaded = multilevel.load("bare.nc").attach(fits[1])
    loaded.add_log_likelihood()
    loaded.save("ll.nc")
    code, out, err = run_main(["loo", "ll.nc", "--json"])
    assert code == 0, err
    got, want = json.loads(out), quiet(mem.loo)
    for name in ("elpd_loo", "se", "p_loo"):
        assert got[name] == pytest.approx(float(want[name]), rel=1e-8), name
    code, out, err = run_main(["compare", "ll.nc", "ll.nc", "--names", "a,b", "--json"])  # from the stored values
    assert code == 0, err
    rows = json.loads(out)
    assert [r["elpd_diff"] for r in rows] == [0.0, 0.0] and rows[0]["elpd_loo"] == pytest.approx(got["elpd_loo"])
