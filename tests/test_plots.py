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


# -- choosing groups (issue 11, point 7) ------------------------------------------------------

from matplotlib.text import Annotation  # noqa: E402

from multilevel import plots  # noqa: E402
from multilevel.predict import hdi  # noqa: E402


def beta_means(fit, term):
    return fit.posterior["beta"].sel(term=term).mean(("chain", "draw")).values


def caterpillar_rows(ax):
    """(means, tick labels) of a caterpillar panel, bottom to top."""
    means = np.asarray(ax.containers[0].lines[0].get_xdata())
    return means, [t.get_text() for t in ax.get_yticklabels()]


def test_group_means_and_hdi_in_chunks(gfit, monkeypatch):
    """Chunks of groups (here 3 values at a time, so one group per chunk) give the same means
    and HDIs as one pass over all draws, for rows in any order."""
    monkeypatch.setattr(plots, "CHUNK_VALUES", 3)
    beta = plots._beta_draws(gfit)
    np.testing.assert_allclose(plots.group_means(beta),
                               gfit.posterior["beta"].mean(("chain", "draw")).transpose("group", "term").values)
    rows = np.array([7, 2, 11, 0, 5])
    flat = gfit.posterior["beta"].sel(term="x").values.reshape(-1, M)[:, rows]
    lo, hi = plots.group_hdi(beta, 1, rows, 0.8)
    elo, ehi = hdi(flat, 0.8)
    np.testing.assert_array_equal(lo, elo)
    np.testing.assert_array_equal(hi, ehi)


def test_caterpillar_chosen_groups(gfit):
    fig = gfit.plot_caterpillar(groups=["3", 0, "7", "3"])  # labels compared as strings; repeats dropped
    assert "3 chosen of 12 groups" in fig._suptitle.get_text()
    for ax, term in zip(fig.axes, ["Intercept", "x"]):
        full = beta_means(gfit, term)
        means, ticks = caterpillar_rows(ax)
        assert sorted(ticks) == ["0", "3", "7"]
        np.testing.assert_allclose(means, full[[int(t) for t in ticks]])
        assert np.all(np.diff(means) >= 0)
        # the HDI of each chosen group, as computed from all its draws
        flat = gfit.posterior["beta"].sel(term=term).values.reshape(-1, M)[:, [int(t) for t in ticks]]
        lo, _ = hdi(flat, 0.94)
        left = ax.containers[0].lines[2][0].get_segments()
        np.testing.assert_allclose([seg[0][0] for seg in left], np.minimum(lo, means))


def test_caterpillar_top(gfit):
    fig = gfit.plot_caterpillar(top=5)
    assert "5 of 12 groups: the 3 highest and 2 lowest posterior means" in fig._suptitle.get_text()
    assert "default" not in fig._suptitle.get_text()
    for ax, term in zip(fig.axes, ["Intercept", "x"]):
        full = beta_means(gfit, term)
        order = np.argsort(full, kind="stable")
        means, ticks = caterpillar_rows(ax)
        assert ticks == [str(g) for g in order[[0, 1, -3, -2, -1]]]
        np.testing.assert_allclose(means, full[order[[0, 1, -3, -2, -1]]])
        gap = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
        assert len(gap) == 1 and gap[0].get_ydata()[0] == pytest.approx(1.5)
        assert any(t.get_text() == "7 groups not shown" for t in ax.texts)
    # top at least the number of groups: all of them, no note
    fig = gfit.plot_caterpillar(top=M)
    assert errorbar_points(fig.axes[0]) == [M] and "\n" not in fig._suptitle.get_text()


def test_caterpillar_default_subset_above_max_groups(gfit, monkeypatch):
    monkeypatch.setattr(plots, "DEFAULT_TOP", 4)
    fig = gfit.plot_caterpillar(max_groups=10)
    assert errorbar_points(fig.axes[0]) == [4]
    assert "4 of 12 groups: the 2 highest and 2 lowest posterior means (the default above 10 groups)" \
        in fig._suptitle.get_text()
    assert errorbar_points(gfit.plot_caterpillar(max_groups=12).axes[0]) == [M]
    assert errorbar_points(gfit.plot_caterpillar(max_groups=None).axes[0]) == [M]
    assert errorbar_points(gfit.plot_caterpillar(max_groups=10, groups=["1"]).axes[0]) == [1]


def highlighted(ax):
    """The blue (highlighted) points of a shrinkage panel and its grey background points."""
    points = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_label() != "theta"]
    grey = [c for c in points if c.get_label().startswith("other groups")]
    return [c for c in points if c not in grey], grey


def test_shrinkage_chosen_groups(gfit, monkeypatch):
    b_own, own = own_estimates(gfit)
    own = own.copy()
    own[5] = False  # group 5 has no own estimate here
    monkeypatch.setattr(plots, "own_estimates", lambda fit, factor=None: (b_own, own))
    post_mean = gfit.posterior["beta"].mean(("chain", "draw")).values
    fig = gfit.plot_shrinkage(groups=["9", "2", "5"])
    title = fig._suptitle.get_text()
    assert "11 groups as points; pulls drawn for the 2 chosen" in title
    assert "1 group without their own estimate not shown" in title
    assert "1 of the chosen groups have no own estimate" in title
    for k, ax in enumerate(fig.axes[:2]):
        lit, grey = highlighted(ax)
        assert len(grey) == 1 and len(grey[0].get_offsets()) == own.sum()
        assert len(lit) == 1
        np.testing.assert_allclose(lit[0].get_offsets(), np.column_stack([b_own[[9, 2], k], post_mean[[9, 2], k]]))
        segments = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert len(segments) == 1 and len(segments[0].get_segments()) == 2
        assert sorted(a.get_text() for a in ax.texts if isinstance(a, Annotation)) == ["2", "9"]
    quiver = [c for c in fig.axes[2].collections if isinstance(c, Quiver)]
    assert len(quiver) == 1 and quiver[0].N == 2


def test_shrinkage_top_most_shrunk(gfit):
    b_own, own = own_estimates(gfit)
    post_mean = gfit.posterior["beta"].mean(("chain", "draw")).values
    shown = np.flatnonzero(own)
    scaled = (b_own[shown] - post_mean[shown]) / b_own[shown].std(axis=0)
    most = shown[np.argsort(-np.hypot(scaled[:, 0], scaled[:, 1]))[:3]]
    fig = gfit.plot_shrinkage(top=3)
    assert "pulls drawn for the 3 most shrunk" in fig._suptitle.get_text()
    lit, grey = highlighted(fig.axes[0])
    np.testing.assert_allclose(lit[0].get_offsets()[:, 0], b_own[most, 0])
    # one term: its pull alone
    fig = gfit.plot_shrinkage(terms=["x"], top=2)
    assert len(fig.axes) == 1
    pull = np.abs(b_own[shown, 1] - post_mean[shown, 1])
    lit, _ = highlighted(fig.axes[0])
    np.testing.assert_allclose(lit[0].get_offsets()[:, 0], b_own[shown[np.argsort(-pull)[:2]], 1])


def test_shrinkage_default_subset_above_max_groups(gfit, monkeypatch):
    monkeypatch.setattr(plots, "DEFAULT_TOP", 4)
    fig = gfit.plot_shrinkage(max_groups=10)
    assert "pulls drawn for the 4 most shrunk, the default above 10 groups" in fig._suptitle.get_text()
    lit, grey = highlighted(fig.axes[0])
    assert len(lit[0].get_offsets()) == 4 and len(grey) == 1
    assert len([a for a in fig.axes[0].texts if isinstance(a, Annotation)]) == 4  # up to max_labels are named
    assert not [a for a in gfit.plot_shrinkage(top=4, max_labels=3).axes[0].texts if isinstance(a, Annotation)]
    assert len(highlighted(gfit.plot_shrinkage(max_groups=None).axes[0])[1]) == 0  # all groups, no background


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(groups=["3", "nope", "zz"]),
     "unknown group 'nope' (and 1 more); the groups are labelled like 0, 1, 2, 3, 4 (12 in all)"),
    (dict(groups=[]), "groups= is empty"),
    (dict(groups=["1"], top=3), "give groups= or top=, not both"),
    (dict(top=0), "top must be a positive integer, got 0"),
    (dict(top=2.5), "top must be a positive integer"),
    (dict(top=True), "top must be a positive integer"),
    (dict(max_groups=0), "max_groups must be a positive integer"),
])
@pytest.mark.parametrize("kind", ["caterpillar", "shrinkage"])
def test_group_choice_errors(gfit, kind, kwargs, fragment):
    with pytest.raises(ModelError) as info:
        gfit.plot(kind, **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.fixture
def figures(monkeypatch):
    """The figures the command line saves, in order."""
    import multilevel.cli as cli

    saved = []
    original = cli._save_figure
    monkeypatch.setattr(cli, "_save_figure", lambda fig, *a, **kw: (saved.append(fig), original(fig, *a, **kw)))
    return saved


def test_cli_plot_groups_and_top(gfit, tmp_path, figures):
    path = gfit.save(tmp_path / "fit.nc")
    code, _, err = run_main(["plot", path, "--kind", "caterpillar", "--groups", "4, 1", "--groups", "10",
                             "--out", tmp_path / "c.png"])
    assert code == 0, err
    assert sorted(caterpillar_rows(figures[-1].axes[0])[1]) == ["1", "10", "4"]
    code, _, err = run_main(["plot", path, "--kind", "caterpillar", "--top", "4", "--out", tmp_path / "t.png"])
    assert code == 0, err
    assert errorbar_points(figures[-1].axes[1]) == [4]
    code, _, err = run_main(["plot", path, "--kind", "shrinkage", "--top", "3", "--out", tmp_path / "s.png"])
    assert code == 0, err
    assert "3 most shrunk" in figures[-1]._suptitle.get_text()
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("argv,fragment", [
    (["--kind", "caterpillar", "--groups", "1,nope"], "unknown group 'nope'"),
    (["--kind", "shrinkage", "--groups", " , "], "--groups is empty"),
    (["--kind", "caterpillar", "--groups", "1", "--top", "3"], "not both"),
    (["--kind", "caterpillar", "--top", "0"], "--top must be a positive integer"),
    (["--kind", "trace", "--top", "3"], "not of trace"),
])
def test_cli_plot_group_errors(gfit, tmp_path, argv, fragment):
    path = gfit.save(tmp_path / "fit.nc")
    code, _, err = run_main(["plot", path, *argv, "--out", tmp_path / "x.png"])
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and fragment in lines[0], err
    assert not (tmp_path / "x.png").exists()


# -- several grouping factors (issue 12, point 5) ---------------------------------------------

from pathlib import Path  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
CROSSED = "y ~ x + z + (x | subj) + (1 | item)"
FEW = dict(chains=2, draws=100, warmup=100, seed=1, cores=1, progress=False)


@pytest.fixture(scope="module")
def crossed_fit():
    return multilevel.fit(CROSSED, pd.read_csv(DATA / "crossed.csv"), **FEW)


@pytest.fixture(scope="module")
def crossed_path(crossed_fit, tmp_path_factory):
    return crossed_fit.save(tmp_path_factory.mktemp("crossed") / "crossed.nc")


def factor_means(fit, factor):
    """(level, term) posterior means of beta_<factor>."""
    da = fit.posterior[f"beta_{factor}"]
    return da.mean(("chain", "draw")).transpose(factor, f"{factor}_term").values


@pytest.mark.parametrize("factor,terms,n_levels", [(None, ["Intercept", "x"], 60), ("subj", ["Intercept", "x"], 60),
                                                   ("item", ["Intercept"], 40)])
def test_caterpillar_per_factor(crossed_fit, factor, terms, n_levels):
    fig = crossed_fit.plot_caterpillar(factor=factor)
    name = factor or "subj"  # default: the first factor of the formula
    assert fig._suptitle.get_text().startswith(f"Group effects of {name}:")
    assert [ax.get_title() for ax in fig.axes] == terms
    means = factor_means(crossed_fit, name)
    labels = crossed_fit.posterior[name].values.astype(str)
    theta = crossed_fit.posterior["theta"].mean(("chain", "draw"))
    for k, (ax, term) in enumerate(zip(fig.axes, terms)):
        assert ax.get_ylabel() == f"{name} (sorted by posterior mean)"
        assert errorbar_points(ax) == [n_levels]
        order = np.argsort(means[:, k], kind="stable")
        np.testing.assert_allclose(caterpillar_rows(ax)[0], means[order, k])
        if n_levels <= 40:  # labelled: the factor's levels
            assert caterpillar_rows(ax)[1] == list(labels[order])
        pool = [ln for ln in ax.get_lines() if ln.get_label() == f"theta[{term}]"]
        assert len(pool) == 1 and pool[0].get_xdata()[0] == pytest.approx(float(theta.sel(term=term)))


def test_caterpillar_factor_groups_and_top(crossed_fit):
    fig = crossed_fit.plot_caterpillar(factor="item", groups=["i07", "i02"])
    assert sorted(caterpillar_rows(fig.axes[0])[1]) == ["i02", "i07"]
    assert "2 chosen of 40 groups" in fig._suptitle.get_text()
    fig = crossed_fit.plot_caterpillar(factor="subj", terms=["x"], top=6)
    assert len(fig.axes) == 1 and errorbar_points(fig.axes[0]) == [6]
    with pytest.raises(ModelError, match="unknown group 's01'; the groups are labelled like i01"):
        crossed_fit.plot_caterpillar(factor="item", groups=["s01"])
    with pytest.raises(ModelError, match="unknown varying term 'x'; the varying terms of item are Intercept"):
        crossed_fit.plot_shrinkage(factor="item", terms=["x"])


def partial_residual_own(fit, factor):
    """Each level's least-squares fit, on its own rows, of y less the posterior-mean fixed
    effects and the other factor's posterior-mean deviations; plus the population means."""
    data = pd.read_csv(DATA / "crossed.csv")
    post = fit.posterior
    theta = post["theta"].mean(("chain", "draw")).to_series()
    alpha = post["alpha"].mean(("chain", "draw")).to_series()
    subj = pd.DataFrame(factor_means(fit, "subj"), index=post["subj"].values, columns=["Intercept", "x"])
    item = pd.Series(factor_means(fit, "item")[:, 0], index=post["item"].values)
    r = data["y"] - theta["Intercept"] - theta["x"] * data["x"] - alpha["z"] * data["z"]
    dev_subj = subj.loc[data["subj"]].to_numpy() - theta[["Intercept", "x"]].to_numpy()
    dev_item = item.loc[data["item"]].to_numpy() - theta["Intercept"]
    if factor == "item":
        r = r - dev_subj[:, 0] - dev_subj[:, 1] * data["x"]
        return (r.groupby(data["item"]).mean() + theta["Intercept"]).loc[post["item"].values].to_numpy()[:, None]
    r = r - dev_item
    out = []
    for level in post["subj"].values:
        rows = (data["subj"] == level).to_numpy()
        Z = np.column_stack([np.ones(rows.sum()), data["x"][rows]])
        out.append(np.linalg.lstsq(Z, r[rows], rcond=None)[0] + theta[["Intercept", "x"]].to_numpy())
    return np.array(out)


@pytest.mark.parametrize("factor", ["subj", "item"])
def test_own_estimates_of_a_factor_from_partial_residuals(crossed_fit, factor):
    b_own, own = own_estimates(crossed_fit, factor)
    assert own.all()  # every level has more rows than terms
    np.testing.assert_allclose(b_own, partial_residual_own(crossed_fit, factor), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("factor,terms", [("subj", ["Intercept", "x"]), ("item", ["Intercept"])])
def test_shrinkage_per_factor(crossed_fit, factor, terms):
    fig = crossed_fit.plot_shrinkage(factor=factor)
    assert fig._suptitle.get_text().startswith(f"Shrinkage of {factor} effects towards theta:")
    assert len(fig.axes) == len(terms) + (len(terms) >= 2)
    b_own, own = own_estimates(crossed_fit, factor)
    means = factor_means(crossed_fit, factor)
    theta = crossed_fit.posterior["theta"].mean(("chain", "draw"))
    for k, (ax, term) in enumerate(zip(fig.axes, terms)):
        assert ax.get_title() == term
        lit, grey = highlighted(ax)
        assert not grey and len(lit) == 1
        np.testing.assert_allclose(lit[0].get_offsets(), np.column_stack([b_own[own, k], means[own, k]]))
        pool = [ln for ln in ax.get_lines() if ln.get_label() == f"theta[{term}] (complete pooling)"]
        assert len(pool) == 1 and pool[0].get_ydata()[0] == pytest.approx(float(theta.sel(term=term)))


def test_shrinkage_of_a_factor_after_load(crossed_fit, crossed_path):
    loaded = multilevel.load(crossed_path)
    for factor in ("subj", "item"):
        np.testing.assert_allclose(own_estimates(loaded, factor)[0], own_estimates(crossed_fit, factor)[0],
                                   rtol=1e-10)
    fig = loaded.plot_shrinkage(factor="item", top=5)
    assert "pulls drawn for the 5 most shrunk" in fig._suptitle.get_text()


@pytest.mark.parametrize("kind", ["caterpillar", "shrinkage"])
def test_unknown_factor_one_line(crossed_fit, gfit, kind):
    with pytest.raises(ModelError) as info:
        crossed_fit.plot(kind, factor="school")
    assert str(info.value) == "the fit has no grouping factor 'school'; its factors are: subj, item"
    with pytest.raises(ModelError) as info:
        gfit.plot(kind, factor="subj")
    assert str(info.value) == "the fit has no grouping factor 'subj'; its factors are: g"


def test_one_factor_fit_takes_its_own_factor_name(gfit):
    fig = gfit.plot_caterpillar(factor="g")
    assert fig._suptitle.get_text().startswith("Group effects of g:")
    assert fig.axes[0].get_ylabel() == "g (sorted by posterior mean)"
    np.testing.assert_allclose(caterpillar_rows(fig.axes[0])[0], np.sort(beta_means(gfit, "Intercept")))
    b_own, own = own_estimates(gfit, "g")
    np.testing.assert_array_equal(b_own, own_estimates(gfit)[0])
    assert len(gfit.plot_shrinkage(factor="g").axes) == 3


def test_uncorrelated_terms_plots():
    """(x || g): one factor (beta, group) with a term per block; its own estimates come from
    the partial residuals (its design has no one-factor X)."""
    fit = multilevel.fit("y ~ x + (x || g)", pd.read_csv(DATA / "uncorrelated.csv"), **FEW)
    b_own, own = own_estimates(fit)
    assert b_own.shape == (50, 2) and own.all()
    post_mean = fit.posterior["beta"].mean(("chain", "draw")).values
    assert np.corrcoef(b_own[:, 1], post_mean[:, 1])[0, 1] > 0.8
    fig = fit.plot_shrinkage()
    assert fig._suptitle.get_text().startswith("Shrinkage of g effects towards theta:")
    assert len(fig.axes) == 3
    assert errorbar_points(fit.plot_caterpillar(factor="g").axes[1]) == [50]


def test_ppc_and_population_plots_of_several_factors(crossed_fit):
    assert len(crossed_fit.plot_ppc(num_pp_samples=10).axes[0].get_lines()) == 10 + 1
    titles = [ax.get_title() for ax in crossed_fit.plot_rank().axes]
    assert {"Sigma_subj[x, Intercept]", "Sigma_item[Intercept, Intercept]", "alpha[z]"} <= set(titles)


def test_group_plots_without_group_draws(crossed_fit, tmp_path):
    loaded = multilevel.load(crossed_fit.save(tmp_path / "nobeta.nc", group_draws=False))
    for kind in ("caterpillar", "shrinkage"):
        with pytest.raises(ModelError) as info:
            loaded.plot(kind, factor="item")
        assert "group_draws=False" in str(info.value) and "\n" not in str(info.value)
    assert loaded.plot_trace(var_names=["sigma2"]) is not None


def test_cli_plot_factor(crossed_path, tmp_path, figures):
    path = crossed_path
    code, _, err = run_main(["plot", path, "--kind", "caterpillar", "--factor", "item", "--dpi", "40",
                             "--out", tmp_path / "c.png"])
    assert code == 0, err
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG
    assert figures[-1]._suptitle.get_text().startswith("Group effects of item:")
    assert errorbar_points(figures[-1].axes[0]) == [40]
    code, _, err = run_main(["plot", path, "--kind", "shrinkage", "--factor", "subj", "--groups", "s03,s01",
                             "--dpi", "40", "--out", tmp_path / "s.png"])
    assert code == 0, err
    assert "pulls drawn for the 2 chosen" in figures[-1]._suptitle.get_text()
    assert sorted(a.get_text() for a in figures[-1].axes[0].texts if isinstance(a, Annotation)) == ["s01", "s03"]


@pytest.mark.parametrize("argv,fragment", [
    (["--kind", "caterpillar", "--factor", "school"], "no grouping factor 'school'; its factors are: subj, item"),
    (["--kind", "shrinkage", "--factor", "Subj"], "no grouping factor 'Subj'"),
    (["--kind", "ppc", "--factor", "item"], "not of ppc"),
    (["--kind", "caterpillar", "--factor", "item", "--groups", "s01"], "unknown group 's01'"),
])
def test_cli_plot_factor_errors(crossed_path, tmp_path, argv, fragment):
    code, _, err = run_main(["plot", crossed_path, *argv, "--out", tmp_path / "x.png"])
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and fragment in lines[0], err
    assert not (tmp_path / "x.png").exists()
