"""Plots of a fit (matplotlib; ArviZ's where it has them). Every function returns the Figure.

* :func:`plot_trace`, :func:`plot_rank`, :func:`plot_pairs`: ArviZ's trace, rank and pair
  plots of the population parameters (theta, alpha, the lower triangle of Sigma, sigma2);
* :func:`plot_caterpillar`: every group's coefficient with its 94% HDI, sorted, against theta;
* :func:`plot_shrinkage`: each group's own least-squares (GLM) estimate against its
  posterior mean, with the pull towards theta drawn;
* :func:`plot_ppc`: posterior predictive check suited to the family: densities
  (gaussian), frequencies of the counts (poisson), per-group proportions (binomial,
  bernoulli).

This module does not choose a matplotlib backend: scripts without a display select
``Agg`` (the command line does).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from .comparison import population_dataset
from .convert import az
from .errors import ModelError
from .families import check_family
from .predict import HDI_PROB, draw_positions, hdi, posterior_predictive

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .result import Fit

KINDS = ("trace", "rank", "caterpillar", "shrinkage", "ppc", "pairs")
OBSERVED = "black"
MODEL = "C0"
POOL = "C3"


def _plt() -> Any:
    import matplotlib.pyplot as plt

    return plt


def _figure_of(axes: Any) -> Figure:
    return np.ravel(np.asarray(axes, dtype=object))[0].figure


def _population(fit: Fit, var_names: list[str] | None) -> Any:
    ds = population_dataset(fit)
    if var_names is not None:
        unknown = [v for v in var_names if v not in ds]
        if unknown:
            raise ModelError(f"unknown parameter {unknown[0]!r}; the population parameters are {', '.join(ds.data_vars)}")
        ds = ds[list(var_names)]
    return az.convert_to_inference_data(ds)


def plot_trace(fit: Fit, var_names: list[str] | None = None, **kwargs: Any) -> Figure:
    """ArviZ trace plot (density and trace per chain) of the population parameters."""
    axes = az.plot_trace(_population(fit, var_names), compact=False, show=False, **kwargs)
    fig = _figure_of(axes)
    fig.suptitle(f"Trace: {fit.formula}")
    fig.tight_layout()
    return fig


def plot_rank(fit: Fit, var_names: list[str] | None = None, **kwargs: Any) -> Figure:
    """ArviZ rank plot (histograms of the ranks of each chain's draws; flat when the chains mix)."""
    axes = az.plot_rank(_population(fit, var_names), show=False, **kwargs)
    fig = _figure_of(axes)
    for ax in list(fig.axes):
        if not ax.has_data():  # the unused cells of ArviZ's grid
            ax.remove()
    fig.suptitle(f"Rank plot: {fit.formula}")
    fig.tight_layout()
    return fig


def plot_pairs(fit: Fit, var_names: list[str] | None = None, max_points: int = 1000, **kwargs: Any) -> Figure:
    """ArviZ pair plot (scatter of every pair) of the population parameters, on at most
    ``max_points`` draws."""
    data = _population(fit, var_names)
    n = data.posterior.sizes["chain"] * data.posterior.sizes["draw"]
    if n > max_points:
        keep = draw_positions(data.posterior.sizes["draw"], max(1, max_points // data.posterior.sizes["chain"]))
        data = az.convert_to_inference_data(data.posterior.isel(draw=keep))
    n_vars = len(data.posterior.data_vars)
    side = min(2.2 * n_vars + 1.0, 16.0)
    kwargs.setdefault("scatter_kwargs", {"alpha": 0.4, "s": 6, "color": MODEL})
    kwargs.setdefault("marginals", True)
    kwargs.setdefault("figsize", (side, side))
    kwargs.setdefault("textsize", 9)
    axes = az.plot_pair(data, show=False, **kwargs)
    fig = _figure_of(axes)
    fig.suptitle(f"Pairs: {fit.formula}")
    return fig


def _terms(fit: Fit, terms: list[str] | None) -> list[str]:
    all_terms = [str(t) for t in fit.posterior["term"].values]
    if terms is None:
        return all_terms
    unknown = [t for t in terms if t not in all_terms]
    if unknown:
        raise ModelError(f"unknown varying term {unknown[0]!r}; the varying terms are {', '.join(all_terms)}")
    return list(terms)


def _flat(da: Any) -> np.ndarray:
    """(chain x draw, ...) values of a posterior variable."""
    v = da.values
    return v.reshape(-1, *v.shape[2:])


def plot_caterpillar(fit: Fit, terms: list[str] | None = None, hdi_prob: float = HDI_PROB, max_labels: int = 40) -> Figure:
    """Each group's coefficient beta_jk: posterior mean and ``hdi_prob`` HDI, groups sorted
    by the mean, one panel per varying term; the vertical line and band are theta_k's
    posterior mean and HDI (0 where the term's mean is fixed at 0)."""
    plt = _plt()
    terms = _terms(fit, terms)
    post = fit.posterior
    groups = np.asarray([str(g) for g in post["group"].values])
    m = groups.shape[0]
    zero = set(fit.zero_mean_terms)
    fig, axes = plt.subplots(1, len(terms), figsize=(4.5 * len(terms), max(4.0, min(0.06 * m + 2.0, 12.0))), squeeze=False,
                             layout="constrained")
    for ax, term in zip(axes[0], terms):
        draws = _flat(post["beta"].sel(term=term))  # (S, m)
        mean = draws.mean(axis=0)
        lo, hi = hdi(draws, hdi_prob)
        order = np.argsort(mean, kind="stable")
        y = np.arange(m)
        xerr = np.clip([mean[order] - lo[order], hi[order] - mean[order]], 0.0, None)
        ax.errorbar(mean[order], y, xerr=xerr, fmt="o", color=MODEL,
                    markersize=2.5 if m > 40 else 4, elinewidth=0.8, label=f"group {term} ({100 * hdi_prob:g}% HDI)")
        if term in zero:
            ax.axvline(0.0, color=POOL, lw=1.5, label="mean fixed at 0")
        else:
            th = _flat(post["theta"].sel(term=term))[:, None]
            tlo, thi = hdi(th, hdi_prob)
            ax.axvspan(float(tlo[0]), float(thi[0]), color=POOL, alpha=0.15, lw=0)
            ax.axvline(float(th.mean()), color=POOL, lw=1.5, label=f"theta[{term}]")
        ax.set_xlabel(f"{term} coefficient")
        ax.set_title(term)
        if m <= max_labels:
            ax.set_yticks(y)
            ax.set_yticklabels(groups[order], fontsize=7)
        else:
            ax.set_yticks([])
        ax.set_ylabel(f"{fit.attrs.get('group_factor', 'group')} (sorted by posterior mean)")
        ax.set_ylim(-1, m)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Group effects: {fit.formula}")
    return fig


def own_estimates(fit: Fit) -> tuple[np.ndarray, np.ndarray]:
    """(b_group (m, p), own (m,)): each group's own least-squares (gaussian) or maximum-
    likelihood GLM estimate, recomputed from ``fit.design`` (so it works after ``load``)
    with the stored response, trials and offset; ``own`` marks groups that have one."""
    design = fit.design
    if design is None:
        raise ModelError("this fit has no stored training data, so the groups' own estimates cannot be computed")
    cd = fit.idata.constant_data
    y = np.asarray(fit.idata.observed_data["y"].values, dtype=float)
    if y.shape[0] != design.n_obs:
        raise ModelError("the stored training data do not match the fitted rows")
    design = dataclasses.replace(
        design, y=y,
        trials=np.asarray(cd["trials"].values, dtype=float) if "trials" in cd else np.ones_like(y),
        offset=np.asarray(cd["offset"].values, dtype=float) if "offset" in cd else np.zeros_like(y),
    )
    family = check_family(fit.family)
    if family.is_gaussian:
        from .suffstats import gaussian_stats

        est = gaussian_stats(design)[1]
    else:
        from .glmfit import glm_estimates

        est = glm_estimates(design, family)
    return np.asarray(est.b_group), np.asarray(est.own, dtype=bool)


def plot_shrinkage(fit: Fit, terms: list[str] | None = None) -> Figure:
    """Shrinkage of the group effects towards theta.

    One panel per varying term k: for each group with its own estimate, x = its own
    least-squares (GLM) estimate b_jk, y = its posterior mean of beta_jk. The diagonal is
    no pooling (y = x), the horizontal line theta_k complete pooling; the vertical segment
    from the diagonal to each point is the group's pull towards theta (longer for small,
    noisy groups). With two or more varying terms, a last panel shows the first two in the
    plane: arrows from each own estimate (open circle) to the posterior mean (dot), and theta.
    """
    plt = _plt()
    all_terms = [str(t) for t in fit.posterior["term"].values]
    terms = _terms(fit, terms)
    b_own, own = own_estimates(fit)
    post = fit.posterior
    b_post = post["beta"].mean(("chain", "draw")).transpose("group", "term").values
    theta = post["theta"].mean(("chain", "draw")).values
    n_sizes = np.bincount(fit.idata.constant_data["group_index"].values, minlength=b_post.shape[0])
    plane = len(terms) >= 2
    n_panels = len(terms) + int(plane)
    fig, axes = plt.subplots(1, n_panels, figsize=(4.8 * n_panels, 4.8), squeeze=False, layout="constrained")
    axes = axes[0]
    shown = np.flatnonzero(own)
    left_out = int((~own).sum())
    sizes = 8 + 40 * np.sqrt(n_sizes[shown] / max(n_sizes.max(), 1))
    for ax, term in zip(axes, terms):
        k = all_terms.index(term)
        x, y = b_own[shown, k], b_post[shown, k]
        lo, hi = float(np.min(np.r_[x, y, theta[k]])), float(np.max(np.r_[x, y, theta[k]]))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="no pooling (y = x)")
        ax.axhline(theta[k], color=POOL, lw=1.5, label=f"theta[{term}] (complete pooling)")
        segments = np.stack([np.column_stack([x, x]), np.column_stack([x, y])], axis=1)
        from matplotlib.collections import LineCollection

        ax.add_collection(LineCollection(segments, colors=MODEL, alpha=0.5, lw=0.8, label="pull towards theta"))
        ax.scatter(x, y, s=sizes, color=MODEL, zorder=3, label="posterior mean (size: rows)")
        ax.set_xlabel(f"own {'least-squares' if fit.family == 'gaussian' else 'GLM'} estimate of {term}")
        ax.set_ylabel(f"posterior mean of {term}")
        ax.set_title(term)
        ax.legend(fontsize=7, loc="upper left")
    if plane:
        ax = axes[-1]
        k0, k1 = all_terms.index(terms[0]), all_terms.index(terms[1])
        x0, y0 = b_own[shown, k0], b_own[shown, k1]
        x1, y1 = b_post[shown, k0], b_post[shown, k1]
        ax.quiver(x0, y0, x1 - x0, y1 - y0, angles="xy", scale_units="xy", scale=1, color=MODEL, alpha=0.6,
                  width=0.003, headwidth=4, label="own estimate -> posterior mean")
        ax.scatter(x0, y0, s=14, facecolors="none", edgecolors="grey", label="own estimate")
        ax.scatter(x1, y1, s=10, color=MODEL, zorder=3, label="posterior mean")
        ax.scatter([theta[k0]], [theta[k1]], marker="*", s=220, color=POOL, zorder=4, label="theta")
        ax.set_xlabel(terms[0])
        ax.set_ylabel(terms[1])
        ax.set_title(f"{terms[0]} and {terms[1]}")
        ax.legend(fontsize=7, loc="best")
    note = f"\n({left_out} groups without their own estimate not shown)" if left_out else ""
    fig.suptitle(f"Shrinkage towards theta: {fit.formula}{note}")
    return fig


def _replicates(fit: Fit, n: int, seed: Any) -> np.ndarray:
    """(S, N) posterior predictive replicates of the observed rows: the stored
    ``posterior_predictive`` group, or ``n`` new ones (evenly spaced draws)."""
    if "posterior_predictive" in fit.idata.groups() and "y" in fit.idata.posterior_predictive:
        rep = _flat(fit.idata.posterior_predictive["y"])
        keep = np.unique(np.linspace(0, rep.shape[0] - 1, min(n, rep.shape[0])).round().astype(int))
        return rep[keep]
    n = max(2, min(n, 20_000_000 // max(fit.idata.observed_data["y"].size, 1)))  # memory: replicates x rows
    chains = fit.posterior.sizes["chain"]
    per_chain = max(1, min(fit.posterior.sizes["draw"], -(-n // chains)))
    return _flat(posterior_predictive(fit, seed=seed, draws=per_chain))


def _interval(draws: np.ndarray, prob: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median and equal-tailed ``prob`` interval of each column (the median always lies inside)."""
    q = np.quantile(np.asarray(draws, dtype=float), [0.5, (1 - prob) / 2, (1 + prob) / 2], axis=0)
    return q[0], q[1], q[2]


def plot_ppc(fit: Fit, num_pp_samples: int = 100, seed: Any = 0, hdi_prob: float = HDI_PROB,
             max_groups: int = 200) -> Figure:
    """Posterior predictive check suited to the family.

    * gaussian: density of the observed y against the densities of ``num_pp_samples``
      replicated data sets;
    * poisson: frequency of each count (bars, binned when counts are large) against the
      replicates' median frequency and equal-tailed ``hdi_prob`` interval;
    * binomial, bernoulli: each group's observed proportion of successes (dots, groups
      sorted by it) against the replicates' median and interval; at most ``max_groups``
      groups (evenly spaced in that order).
    The replicates come from ``fit.idata.posterior_predictive`` when present, else are
    drawn with ``seed``.
    """
    plt = _plt()
    family = check_family(fit.family)
    y = np.asarray(fit.idata.observed_data["y"].values, dtype=float)
    rep = np.asarray(_replicates(fit, num_pp_samples, seed), dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    if family.is_gaussian:
        for i, r in enumerate(rep):
            grid, pdf = az.kde(r)
            ax.plot(grid, pdf, color=MODEL, alpha=0.15, lw=0.8, label="replicated y" if i == 0 else None)
        grid, pdf = az.kde(y)
        ax.plot(grid, pdf, color=OBSERVED, lw=2, label="observed y")
        ax.set_xlabel("y")
        ax.set_ylabel("density")
        ax.set_title(f"Posterior predictive check: {rep.shape[0]} replicated data sets")
    elif family.name == "poisson":
        top = int(max(y.max(), 0))
        if top <= 40:
            edges = np.arange(-0.5, top + 1.5)
        else:
            width = int(np.ceil((top + 1) / 30))
            edges = np.arange(-0.5, top + width + 0.5, width)
        rep_c = np.clip(rep, None, edges[-1] - 0.5)
        obs = np.histogram(y, edges)[0]
        freq = np.stack([np.histogram(r, edges)[0] for r in rep_c])
        centers = 0.5 * (edges[:-1] + edges[1:])
        mid, lo, hi = _interval(freq, hdi_prob)
        ax.bar(centers, obs, width=np.diff(edges) * 0.9, color="lightgrey", edgecolor="grey", label="observed")
        ax.errorbar(centers, mid, yerr=[mid - lo, hi - mid], fmt="o", color=MODEL, markersize=3,
                    label=f"replicated: median and {100 * hdi_prob:g}% interval")
        ax.set_xlabel("count" if edges[1] - edges[0] == 1 else f"count (bins of {int(edges[1] - edges[0])})")
        ax.set_ylabel("number of rows")
        ax.set_title(f"Posterior predictive check: counts ({rep.shape[0]} replicates)")
    else:
        g = fit.idata.constant_data["group_index"].values
        trials = fit.idata.constant_data["trials"].values if "trials" in fit.idata.constant_data else np.ones_like(y)
        m = fit.posterior.sizes["group"]
        n_g = np.bincount(g, weights=trials, minlength=m)
        obs = np.bincount(g, weights=y, minlength=m) / n_g
        props = np.stack([np.bincount(g, weights=r, minlength=m) for r in rep]) / n_g
        order = np.argsort(obs, kind="stable")
        if m > max_groups:
            order = order[np.unique(np.linspace(0, m - 1, max_groups).round().astype(int))]
        mid, lo, hi = _interval(props[:, order], hdi_prob)
        x = np.arange(order.shape[0])
        ax.errorbar(x, mid, yerr=[mid - lo, hi - mid], fmt="o", color=MODEL, markersize=3, alpha=0.8,
                    label=f"replicated: median and {100 * hdi_prob:g}% interval")
        ax.scatter(x, obs[order], color=OBSERVED, s=14, zorder=3, label="observed proportion")
        ax.set_xlabel(f"{fit.attrs.get('group_factor', 'group')} (sorted by observed proportion)")
        ax.set_ylabel("proportion of successes")
        groups = np.asarray([str(v) for v in fit.posterior["group"].values])
        if order.shape[0] <= 40:
            ax.set_xticks(x)
            ax.set_xticklabels(groups[order], rotation=90, fontsize=7)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"Posterior predictive check: proportion per group ({rep.shape[0]} replicates)")
    ax.legend(fontsize=8)
    return fig


PLOTTERS = {
    "trace": plot_trace,
    "rank": plot_rank,
    "caterpillar": plot_caterpillar,
    "shrinkage": plot_shrinkage,
    "ppc": plot_ppc,
    "pairs": plot_pairs,
}


def plot(fit: Fit, kind: str = "trace", **kwargs: Any) -> Figure:
    """The plot ``kind`` (one of :data:`KINDS`) of ``fit``."""
    if kind not in PLOTTERS:
        raise ModelError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}")
    return PLOTTERS[kind](fit, **kwargs)


__all__ = ["KINDS", "plot", "own_estimates", *[f.__name__ for f in PLOTTERS.values()]]
