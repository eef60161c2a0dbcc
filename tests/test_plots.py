"""Plots (issue 4, points 4, 6 and 7): each is produced with the expected axes, labels and
artists; from Python (methods on Fit returning the Figure) and from the CLI."""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.container import BarContainer, ErrorbarContainer  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.quiver import Quiver  # noqa: E402

import multilevel  # noqa: E402
from multilevel import ModelError  # noqa: E402
from multilevel.plots import own_estimates  # noqa: E402

SMALL = dict(chains=2, draws=120, warmup=100, seed=5, cores=1, progress=False)
M = 12
PARAMS = ["theta[Intercept]", "theta[x]", "alpha[z]", "Sigma[Intercept, Intercept]", "Sigma[x, Intercept]",
          "Sigma[x, x]", "sigma2"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def gfit():
    rng = np.random.default_rng(8)
    sizes = rng.integers(3, 25, size=M)
    g = np.repeat(np.arange(M), sizes)
    x, z = rng.normal(size=g.size), rng.normal(size=g.size)
    b = np.array([1.0, 2.0]) + rng.normal(size=(M, 2)) * [1.5, 0.7]
    y = b[g, 0] + b[g, 1] * x + 0.5 * z + rng.normal(size=g.size)
    return multilevel.fit("y ~ x + z + (x | g)", pd.DataFrame({"y": y, "x": x, "z": z, "g": g}), **SMALL)


@pytest.fixture(scope="module")
def poisson_fit():
    return multilevel.fit("y ~ lbase * trt + (1 | subject)", multilevel.load_dataset("epil"), family="poisson", **SMALL)


@pytest.fixture(scope="module")
def binomial_fit():
    return multilevel.fit("p(incidence, size) ~ period + (1 | herd)", multilevel.load_dataset("cbpp"),
                          family="binomial", **SMALL)


def errorbar_points(ax) -> list[int]:
    return [len(c.lines[0].get_xdata()) for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_trace(gfit):
    fig = gfit.plot_trace()
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 2 * len(PARAMS)
    titles = [ax.get_title() for ax in axes]
    for name in PARAMS:
        assert titles.count(name) == 2, titles
    # right-hand column: one trace line per chain of 120 draws
    trace_ax = axes[1]
    lines = [ln for ln in trace_ax.get_lines() if len(ln.get_xdata()) == 120]
    assert len(lines) == 2
    assert gfit.plot("trace") is not fig


def test_trace_subset_and_unknown_name(gfit):
    fig = gfit.plot_trace(var_names=["sigma2"])
    assert len(fig.axes) == 2
    with pytest.raises(ModelError, match="unknown parameter"):
        gfit.plot_trace(var_names=["theta"])


def test_rank(gfit):
    fig = gfit.plot_rank()
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == PARAMS
    for ax in fig.axes:
        assert ax.get_xlabel() == "Rank (all chains)"
        assert len(ax.patches) > 0  # rank histograms


def test_pairs(gfit):
    fig = gfit.plot_pairs(var_names=["theta[Intercept]", "theta[x]", "sigma2"])
    assert isinstance(fig, Figure)
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.has_data()]
    assert len(visible) == 6  # 3 marginals + 3 scatter panels below the diagonal
    scatter = [ax for ax in visible if any(isinstance(c, PathCollection) for c in ax.collections)]
    assert len(scatter) == 3
    assert all(len(ax.collections[0].get_offsets()) == 2 * 120 for ax in scatter)
    labels = {ax.get_xlabel() for ax in fig.axes} | {ax.get_ylabel() for ax in fig.axes}
    assert {"theta[Intercept]", "theta[x]", "sigma2"} <= labels


def test_caterpillar(gfit):
    fig = gfit.plot_caterpillar()
    assert len(fig.axes) == 2
    post = gfit.posterior
    for ax, term in zip(fig.axes, ["Intercept", "x"]):
        assert ax.get_title() == term
        assert ax.get_xlabel() == f"{term} coefficient"
        assert errorbar_points(ax) == [M]
        means = np.asarray(ax.containers[0].lines[0].get_xdata())
        assert np.all(np.diff(means) >= 0)  # sorted
        expected = np.sort(post["beta"].sel(term=term).mean(("chain", "draw")).values)
        np.testing.assert_allclose(means, expected)
        # y tick labels are the group labels in sorted order (12 groups: labelled)
        order = np.argsort(post["beta"].sel(term=term).mean(("chain", "draw")).values, kind="stable")
        assert [t.get_text() for t in ax.get_yticklabels()] == [str(g) for g in post["group"].values[order]]
        theta_lines = [ln for ln in ax.get_lines() if ln.get_label() == f"theta[{term}]"]
        assert len(theta_lines) == 1
        assert theta_lines[0].get_xdata()[0] == pytest.approx(float(post["theta"].sel(term=term).mean()))


def test_shrinkage(gfit):
    fig = gfit.plot_shrinkage()
    b_own, own = own_estimates(gfit)
    n_own = int(own.sum())
    assert n_own >= M - 2
    axes = fig.axes
    assert len(axes) == 3  # Intercept, x, and the plane of both
    post_mean = gfit.posterior["beta"].mean(("chain", "draw")).values
    theta = gfit.posterior["theta"].mean(("chain", "draw")).values
    for k, (ax, term) in enumerate(zip(axes[:2], ["Intercept", "x"])):
        assert ax.get_title() == term
        assert ax.get_xlabel() == f"own least-squares estimate of {term}"
        assert ax.get_ylabel() == f"posterior mean of {term}"
        points = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert len(points) == 1
        xy = points[0].get_offsets()
        assert len(xy) == n_own
        np.testing.assert_allclose(xy[:, 0], b_own[own, k])
        np.testing.assert_allclose(xy[:, 1], post_mean[own, k])
        segments = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert len(segments) == 1 and len(segments[0].get_segments()) == n_own
        pooled = [ln for ln in ax.get_lines() if ln.get_label().startswith(f"theta[{term}]")]
        assert len(pooled) == 1 and pooled[0].get_ydata()[0] == pytest.approx(theta[k])
    plane = axes[2]
    quiver = [c for c in plane.collections if isinstance(c, Quiver)]
    assert len(quiver) == 1 and quiver[0].N == n_own
    star = [c for c in plane.collections if c.get_label() == "theta"]
    np.testing.assert_allclose(star[0].get_offsets()[0], theta)


def test_shrinkage_own_estimates_match_least_squares(gfit):
    """Group j's own estimate is its least-squares fit of y - z alpha_pool on (1, x)."""
    from multilevel.suffstats import gaussian_stats

    b_own, own = own_estimates(gfit)
    ls = gaussian_stats(gfit.design)[1]
    np.testing.assert_allclose(b_own, ls.b_group)
    np.testing.assert_array_equal(own, ls.own)


def test_shrinkage_after_load_and_for_glm(gfit, binomial_fit, tmp_path):
    loaded = multilevel.load(gfit.save(tmp_path / "g.nc"))
    b0, own0 = own_estimates(gfit)
    b1, own1 = own_estimates(loaded)
    np.testing.assert_allclose(b1, b0, rtol=1e-10)
    np.testing.assert_array_equal(own1, own0)
    assert len(loaded.plot_shrinkage().axes) == 3
    lb = multilevel.load(binomial_fit.save(tmp_path / "b.nc"))
    b_glm, own_glm = own_estimates(lb)
    np.testing.assert_allclose(b_glm, own_estimates(binomial_fit)[0], rtol=1e-8)
    fig = lb.plot_shrinkage()
    assert len(fig.axes) == 1  # one varying term: no plane panel
    assert fig.axes[0].get_xlabel() == "own GLM estimate of Intercept"
    assert len(fig.axes[0].collections[-1].get_offsets()) == int(own_glm.sum())


def test_ppc_gaussian(gfit):
    fig = gfit.plot_ppc(num_pp_samples=20)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "y" and ax.get_ylabel() == "density"
    lines = ax.get_lines()
    assert len(lines) == 20 + 1
    assert sum(ln.get_label() == "observed y" for ln in lines) == 1
    # uses the stored posterior_predictive group when there is one
    gfit.posterior_predictive(seed=1)
    fig = gfit.plot_ppc(num_pp_samples=10)
    assert len(fig.axes[0].get_lines()) == 10 + 1


def test_ppc_poisson_counts(poisson_fit):
    fig = poisson_fit.plot_ppc(num_pp_samples=40)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "number of rows"
    assert ax.get_xlabel().startswith("count")
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 1
    n_bins = len(bars[0].patches)
    assert errorbar_points(ax) == [n_bins]
    y = poisson_fit.idata.observed_data["y"].values
    assert sum(p.get_height() for p in bars[0].patches) == len(y)


def test_ppc_binomial_proportions(binomial_fit):
    fig = binomial_fit.plot_ppc(num_pp_samples=40)
    ax = fig.axes[0]
    m = binomial_fit.posterior.sizes["group"]
    assert m == 15
    assert ax.get_ylabel() == "proportion of successes"
    assert errorbar_points(ax) == [m]
    observed = [c for c in ax.collections if c.get_label() == "observed proportion"]
    assert len(observed) == 1
    props = np.asarray(observed[0].get_offsets())[:, 1]
    assert np.all(np.diff(props) >= 0) and np.all((0 <= props) & (props <= 1))
    assert len(ax.get_xticklabels()) == m


def test_ppc_bernoulli():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(8), 20)
    x = rng.normal(size=g.size)
    y = (rng.random(g.size) < 1 / (1 + np.exp(-(0.3 * g - 1 + x)))).astype(int)
    fit = multilevel.fit("y ~ x + (1 | g)", pd.DataFrame({"y": y, "x": x, "g": g}), family="bernoulli", **SMALL)
    ax = fit.plot_ppc(num_pp_samples=30).axes[0]
    assert errorbar_points(ax) == [8]


def test_unknown_kind(gfit):
    with pytest.raises(ModelError, match="unknown plot kind"):
        gfit.plot("forest")


# -- command line ----------------------------------------------------------------------------

from clitools import run_main


PNG = b"\x89PNG\r\n\x1a\n"


def test_cli_plot(gfit, tmp_path):
    path = gfit.save(tmp_path / "fit.nc")
    for kind in ("trace", "rank", "caterpillar", "shrinkage", "ppc", "pairs"):
        out = tmp_path / f"{kind}.png"
        code, _, err = run_main(["plot", path, "--kind", kind, "--out", out, "--dpi", "40"])
        assert code == 0, err
        assert out.read_bytes()[:8] == PNG
    svg = tmp_path / "c.svg"
    code, _, err = run_main(["plot", path, "--kind", "caterpillar", "--out", svg])
    assert code == 0, err
    assert b"<svg" in svg.read_bytes()[:500]


@pytest.mark.parametrize("argv,fragment", [
    (["--kind", "forest", "--out", "x.png"], "forest"),
    (["--kind", "trace", "--out", "x.unknownformat"], "x.unknownformat"),
    (["--kind", "trace"], "--out"),
    (["--kind", "trace", "--out", "exists.png"], "--overwrite"),
])
def test_cli_plot_errors(gfit, tmp_path, argv, fragment):
    path = gfit.save(tmp_path / "fit.nc")
    (tmp_path / "exists.png").write_bytes(b"old")
    argv = [str(tmp_path / a) if a.endswith((".png", ".unknownformat")) else a for a in argv]
    code, _, err = run_main(["plot", path, *argv])
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and fragment in lines[0], err
    assert (tmp_path / "exists.png").read_bytes() == b"old"
    code, _, err = run_main(["plot", tmp_path / "nofit.nc", "--kind", "trace", "--out", tmp_path / "n.png"])
    assert code == 2 and "nofit.nc" in err


def test_demo_writes_plots(tmp_path, monkeypatch):
    """``multilevel demo --plots-dir``: the trace, caterpillar, shrinkage and ppc PNGs (the
    fit itself shortened here; the full demo runs in test_cli)."""
    from multilevel.api import Model

    original = Model.fit
    monkeypatch.setattr(Model, "fit", lambda self, **kw: original(self, chains=2, draws=100, warmup=100, seed=1,
                                                                    cores=1, progress=False))
    folder = tmp_path / "plots"
    code, out, err = run_main(["demo", "--plots-dir", folder, "--no-progress"])
    assert code == 0, err
    for kind in ("trace", "caterpillar", "shrinkage", "ppc"):
        assert (folder / f"{kind}.png").read_bytes()[:8] == PNG
    assert str(folder) in err
    # run again: the demo's own folder is reused
    code, _, err = run_main(["demo", "--plots-dir", folder, "--no-progress"])
    assert code == 0, err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_main(["demo", "--plots-dir", blocker])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "file" in err
