"""Plots of a fit (matplotlib; ArviZ's where it has them). Every function returns the Figure.

* :func:`plot_trace`, :func:`plot_rank`, :func:`plot_pairs`: ArviZ's trace, rank and pair
  plots of the population parameters (theta, alpha, the lower triangle of Sigma, sigma2);
* :func:`plot_caterpillar`: every group's coefficient with its 94% HDI, sorted, against theta;
* :func:`plot_shrinkage`: each group's own least-squares (GLM) estimate against its
  posterior mean, with the pull towards theta drawn;
* :func:`plot_ppc`: posterior predictive check suited to the family: densities
  (gaussian), frequencies of the counts (poisson), per-group proportions (binomial,
  bernoulli).

The two group-level plots show one grouping factor (``factor=``, default the first in the
formula; a fit with several factors has ``beta_<factor>`` per factor), take ``groups=``
(labels of its levels) or ``top=N`` and, above
:data:`MAX_GROUPS` groups, show :data:`DEFAULT_TOP` of them by default (the title says
which). Their cost is O(groups x draws) with temporaries of at most :data:`CHUNK_VALUES`
values: beta is read in slices of groups (from the file, for a loaded fit), for every
group's mean and, only for the groups drawn, their HDIs.

This module does not choose a matplotlib backend: scripts without a display select
``Agg`` (the command line does).
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .comparison import population_dataset
from .convert import az
from .errors import ModelError
from .families import check_family, fitting_family
from .predict import HDI_PROB, draw_positions, hdi, posterior_predictive

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .result import Fit

KINDS = ("trace", "rank", "caterpillar", "shrinkage", "ppc", "pairs")
#: above this many groups the caterpillar and shrinkage plots show a subset unless told otherwise
MAX_GROUPS = 300
#: the size of that default subset (``top=``)
DEFAULT_TOP = 40
#: values read at a time by the per-group means and HDIs (16 MB of float64)
CHUNK_VALUES = 2**21
#: scatters with more points than this are rasterized in vector formats (PDF, SVG)
RASTERIZE_ABOVE = 1000
BACKGROUND = "0.6"
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


def _title(fig: Figure, head: str, formula: str, note: str = "") -> None:
    """Set the figure title ``head: formula`` and ``note``; where that line would be wider
    than the figure (about 0.09 inch a character), the formula goes on a line of its own and
    the head is wrapped."""
    width = max(int(fig.get_figwidth() / 0.09), 20)
    line = f"{head}: {formula}"
    fig.suptitle((line if len(line) <= width else f"{textwrap.fill(head + ':', width)}\n{formula}") + note)


def _terms(fit: Fit, terms: list[str] | None, factor: Factor | None = None) -> list[str]:
    """The chosen varying terms (of ``factor``, default the first), all of them for None."""
    all_terms = (factor or _factor(fit)).terms(fit)
    if terms is None:
        return all_terms
    unknown = [t for t in terms if t not in all_terms]
    if unknown:
        of = f" of {factor.name}" if factor is not None and factor.several else ""
        raise ModelError(f"unknown varying term {unknown[0]!r}; the varying terms{of} are {', '.join(all_terms)}")
    return list(terms)


def _flat(da: Any) -> np.ndarray:
    """(chain x draw, ...) values of a posterior variable."""
    v = da.values
    return v.reshape(-1, *v.shape[2:])


# -- grouping factors ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Factor:
    """A grouping factor as the posterior stores it: ``beta`` (chain, draw, ``level_dim``,
    ``term_dim``) and ``Sigma``; ``beta`` and ``group`` dims in a one-factor fit, ``beta_<f>``
    and ``<f>`` otherwise (:func:`multilevel.convert.factor_dims`)."""

    name: str
    beta: str
    level_dim: str
    term_dim: str
    several: bool

    def terms(self, fit: Fit) -> list[str]:
        return [str(t) for t in fit.posterior[self.term_dim].values]


def _factor(fit: Fit, factor: str | None = None, draws: bool = False) -> Factor:
    """The grouping factor ``factor`` (None: the first in the formula); ``draws``: its
    per-group draws are needed. A one-line ModelError for a factor the fit does not have."""
    from .convert import factor_dims

    sigmas = fit.sigma_variables()
    names = list(sigmas)
    if factor is None:
        factor = names[0]
    elif str(factor) not in sigmas:
        raise ModelError(f"the fit has no grouping factor {factor!r}; its factors are: {', '.join(names)}")
    name = str(factor)
    one = sigmas[name] == "Sigma"
    level_dim, term_dim = factor_dims(name, one)
    beta = "beta" if one else f"beta_{name}"
    if draws and beta not in fit.posterior:
        raise ModelError("this fit was saved without its per-group draws (group_draws=False): the caterpillar and "
                         "shrinkage plots need them; fit the model again")
    return Factor(name, beta, level_dim, term_dim, not one)


def _level_index(fit: Fit, factor: Factor) -> np.ndarray:
    """Each fitted row's level of ``factor`` (positions along its level dim)."""
    cd = fit.idata.constant_data
    return np.asarray(cd["group_index"].values if "group_index" in cd else cd[f"index_{factor.name}"].values)


def _population_draws(fit: Fit, term: str) -> np.ndarray | None:
    """(chain x draw,) draws of the population mean of a varying term: theta (or alpha) of
    that name, None where the mean is fixed at 0."""
    post = fit.posterior
    if term in fit.zero_mean_terms:
        return None
    for var, dim in (("theta", "term"), ("alpha", "fixed_term")):
        if var in post and term in post[dim].values:
            return _flat(post[var].sel({dim: term}))
    return None


def _population_means(fit: Fit, terms: list[str]) -> np.ndarray:
    """Posterior means of the terms' population means (0 where fixed at 0)."""
    draws = [_population_draws(fit, t) for t in terms]
    return np.array([0.0 if d is None else float(np.mean(d)) for d in draws])


# -- choosing groups ----------------------------------------------------------------------------

def _group_labels(fit: Fit, factor: Factor | None = None) -> np.ndarray:
    return np.asarray(fit.posterior[(factor or _factor(fit)).level_dim].values).astype(str)


def _positive_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ModelError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _chosen(labels: np.ndarray, groups: Any) -> np.ndarray:
    """Positions of the ``groups`` labels (compared as strings), in the order given, without repeats."""
    wanted = [str(g) for g in ([groups] if np.ndim(groups) == 0 else groups)]
    if not wanted:
        raise ModelError("groups= is empty: give at least one group label")
    pos = pd.Index(labels).get_indexer(wanted)
    missing = [w for w, i in zip(wanted, pos) if i < 0]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelError(f"unknown group {missing[0]!r}{more}; the groups are labelled like "
                         f"{', '.join(labels[:5])} ({labels.shape[0]:,} in all)")
    return pd.unique(pos)


def _selection(labels: np.ndarray, groups: Any, top: Any,
               max_groups: Any) -> tuple[np.ndarray | None, int | None, bool]:
    """Validated choice of groups: (positions of ``groups`` or None, ``top`` or None, whether
    ``top`` is the default for more than ``max_groups`` groups). (None, None, False): all."""
    if groups is not None and top is not None:
        raise ModelError("give groups= or top=, not both")
    if max_groups is not None:
        max_groups = _positive_count(max_groups, "max_groups")
    if groups is not None:
        return _chosen(labels, groups), None, False
    if top is not None:
        top = _positive_count(top, "top")
        return None, (top if top < labels.shape[0] else None), False
    if max_groups is not None and labels.shape[0] > max_groups:
        return None, DEFAULT_TOP, True
    return None, None, False


def _top_positions(score: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` largest scores, largest first (O(m) selection, then a sort of n)."""
    part = np.argpartition(-score, n - 1)[:n]
    return part[np.argsort(-score[part], kind="stable")]


# -- per-group summaries in O(groups x draws) ----------------------------------------------------

def _beta_draws(fit: Fit, factor: Factor | None = None) -> Any:
    """``factor``'s beta as a (chain, draw, level, term) DataArray; not read into memory here
    (a loaded fit reads it from its file chunk by chunk below)."""
    f = factor or _factor(fit, draws=True)
    return fit.posterior[f.beta].transpose("chain", "draw", f.level_dim, f.term_dim)


def _chunk(per_group: int) -> int:
    """Groups per chunk: at most :data:`CHUNK_VALUES` values of ``per_group`` each."""
    return max(1, CHUNK_VALUES // max(per_group, 1))


def group_means(beta: Any) -> np.ndarray:
    """(group, term) posterior means of (chain, draw, group, term) draws, in chunks of groups:
    no temporary of the draws' size (xarray's NaN-skipping mean copies them several times)."""
    n_chain, n_draw, m, p = beta.shape
    step = _chunk(n_chain * n_draw * p)
    out = np.empty((m, p))
    for a in range(0, m, step):  # chunks of groups, not groups
        out[a:a + step] = np.mean(np.asarray(beta[:, :, a:a + step].values), axis=(0, 1), dtype=float)
    return out


def group_hdi(beta: Any, term: int, rows: np.ndarray, hdi_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """``hdi_prob`` HDI of beta[:, :, rows, term]: the rows are read by slices of the group axis
    of at most :data:`CHUNK_VALUES` values (skipping slices without a row; a file is read no
    further than the slice), one sort over the draws each."""
    n_draws = beta.shape[0] * beta.shape[1]
    step = _chunk(n_draws)
    order = np.argsort(rows, kind="stable")
    ranked = rows[order]
    bounds = np.searchsorted(ranked, np.arange(0, beta.shape[2] + step, step))
    lo, hi = np.empty(rows.shape[0]), np.empty(rows.shape[0])
    for c in np.flatnonzero(np.diff(bounds)):  # slices of groups, not groups
        i, j = bounds[c], bounds[c + 1]
        block = np.asarray(beta.isel({beta.dims[2]: ranked[i:j], beta.dims[3]: term}).values,
                           dtype=float).reshape(n_draws, -1)
        lo[order[i:j]], hi[order[i:j]] = hdi(block, hdi_prob)
    return lo, hi


def _count_groups(n: int) -> str:
    return f"{n:,} group{'s' if n != 1 else ''}"


def plot_caterpillar(fit: Fit, terms: list[str] | None = None, hdi_prob: float = HDI_PROB, groups: Any = None,
                     top: int | None = None, max_groups: int | None = MAX_GROUPS, max_labels: int = 40,
                     factor: str | None = None) -> Figure:
    """Each group's coefficient beta_jk: posterior mean and ``hdi_prob`` HDI, groups sorted
    by the mean, one panel per varying term; the vertical line and band are theta_k's
    posterior mean and HDI (0 where the term's mean is fixed at 0).

    ``factor``: the grouping factor whose levels are the groups (default: the first in the
    formula); with several factors, its ``beta_<factor>`` (population mean plus the level's
    deviation, as lme4's ``coef``) and its varying terms.

    Which groups: ``groups``, a list of group labels; or ``top=N``, in each panel the
    ceil(N/2) groups with the highest posterior means and the floor(N/2) lowest (the two
    ends of the full caterpillar, a dotted line between them). With neither, every group
    when there are at most ``max_groups`` (None: no limit), else ``top=DEFAULT_TOP``. The
    figure title says which groups are shown; up to ``max_labels`` rows are labelled.
    """
    plt = _plt()
    if not 0 < hdi_prob < 1:
        raise ModelError(f"hdi_prob must be between 0 and 1, got {hdi_prob!r}")
    f = _factor(fit, factor, draws=True)
    all_terms = f.terms(fit)
    terms = _terms(fit, terms, f)
    labels = _group_labels(fit, f)
    m = labels.shape[0]
    chosen, top, by_default = _selection(labels, groups, top, max_groups)
    beta = _beta_draws(fit, f)
    means = group_means(beta)
    n_rows = chosen.shape[0] if chosen is not None else top or m
    fig, axes = plt.subplots(1, len(terms), figsize=(4.5 * len(terms), max(4.0, min(0.06 * n_rows + 2.0, 12.0))),
                             squeeze=False, layout="constrained")
    for ax, term in zip(axes[0], terms):
        k = all_terms.index(term)
        mean = means[:, k]
        n_low = 0
        if chosen is not None:
            rows = chosen[np.argsort(mean[chosen], kind="stable")]
        elif top is not None:
            order = np.argsort(mean, kind="stable")
            n_low = top // 2
            rows = np.r_[order[:n_low], order[m - (top - n_low):]]
        else:
            rows = np.argsort(mean, kind="stable")
        lo, hi = group_hdi(beta, k, rows, hdi_prob)
        y = np.arange(rows.shape[0])
        xerr = np.clip([mean[rows] - lo, hi - mean[rows]], 0.0, None)
        ax.errorbar(mean[rows], y, xerr=xerr, fmt="o", color=MODEL,
                    markersize=2.5 if rows.shape[0] > 40 else 4, elinewidth=0.8,
                    label=f"group {term} ({100 * hdi_prob:g}% HDI)")
        if n_low:
            ax.axhline(n_low - 0.5, color="grey", ls=":", lw=1)
            ax.text(0.5, n_low - 0.5, f"{_count_groups(m - top)} not shown", transform=ax.get_yaxis_transform(),
                    fontsize=7, color="grey", ha="center", va="center", bbox={"fc": "white", "ec": "none", "pad": 1})
        th = _population_draws(fit, term)
        if th is None:
            ax.axvline(0.0, color=POOL, lw=1.5, label="mean fixed at 0")
        else:
            th = th[:, None]
            tlo, thi = hdi(th, hdi_prob)
            ax.axvspan(float(tlo[0]), float(thi[0]), color=POOL, alpha=0.15, lw=0)
            ax.axvline(float(th.mean()), color=POOL, lw=1.5, label=f"theta[{term}]")
        ax.set_xlabel(f"{term} coefficient")
        ax.set_title(term)
        if rows.shape[0] <= max_labels:
            ax.set_yticks(y)
            ax.set_yticklabels(labels[rows], fontsize=7)
        else:
            ax.set_yticks([])
        ax.set_ylabel(f"{f.name} (sorted by posterior mean)")
        ax.set_ylim(-1, rows.shape[0])
        ax.legend(loc="lower right", fontsize=8)
    _title(fig, f"Group effects of {f.name}", fit.formula, _caterpillar_note(m, chosen, top, by_default, max_groups))
    return fig


def _caterpillar_note(m: int, chosen: np.ndarray | None, top: int | None, by_default: bool, max_groups: Any) -> str:
    """Second title line: which groups the caterpillar shows (nothing when all)."""
    if chosen is not None:
        return f"\n{chosen.shape[0]:,} chosen of {_count_groups(m)}"
    if top is None:
        return ""
    ends = f"the {top - top // 2:,} highest and {top // 2:,} lowest" if top > 1 else "the highest"
    note = f"\n{top:,} of {_count_groups(m)}: {ends} posterior means"
    return note + (f" (the default above {max_groups:,} groups)" if by_default else "")


def own_estimates(fit: Fit, factor: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(b_group (m, p), own (m,)): each group's own least-squares (gaussian) or maximum-
    likelihood GLM estimate, recomputed from ``fit.design`` (so it works after ``load``)
    with the stored response, trials and offset; ``own`` marks groups that have one.

    One grouping factor: group j's fit of y_j - Z_j alpha_pool on X_j (alpha_pool from the
    pooled least-squares fit), :func:`multilevel.suffstats.gaussian_stats`. Several factors
    (or uncorrelated terms, ``||``), for the levels of ``factor`` (default: the first): see
    :func:`partial_residual_estimates`; a Dask fit's, the same, partition by partition
    (:mod:`multilevel.distributed.shrinkage`).
    """
    if fit.partitioned:
        return _own_and_sizes(fit, _factor(fit, factor))[:2]
    design = fit.design
    if design is None:
        raise ModelError("this fit has no stored training data, so the groups' own estimates cannot be computed")
    f = _factor(fit, factor)
    cd = fit.idata.constant_data
    y = np.asarray(fit.idata.observed_data["y"].values, dtype=float)
    if y.shape[0] != design.n_obs:
        raise ModelError("the stored training data do not match the fitted rows")
    if hasattr(design, "factors"):  # a CrossedDesign: fixed design F and one Z per factor
        return partial_residual_estimates(fit, design, y, f)
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


def _own_and_sizes(fit: Fit, f: Factor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`own_estimates` of the levels of ``f`` and their rows; a Dask fit's partition by
    partition (:func:`multilevel.distributed.shrinkage.own_estimates`)."""
    m = int(fit.posterior.sizes[f.level_dim])
    if not fit.partitioned:
        b_own, own = own_estimates(fit, f.name)
        return b_own, own, np.bincount(_level_index(fit, f), minlength=m)
    from .distributed.shrinkage import own_estimates as partitioned_estimates

    design = fit.design
    fixed, b_hats = posterior_mean_parts(fit, design, f.name)
    q = len(f.terms(fit))
    dev, own, rows = partitioned_estimates(fit, f.name, m, fixed, b_hats, np.zeros(q))
    return np.where(own[:, None], dev, 0.0) + _population_means(fit, f.terms(fit)), own, rows


def partial_residual_estimates(fit: Fit, design: Any, y: np.ndarray, factor: Factor) -> tuple[np.ndarray, np.ndarray]:
    """(b (m, q), own (m,)) of a model with several random-effects terms
    (:class:`~multilevel.design.CrossedDesign`, rows in data order): level j's own
    least-squares estimate of ``factor``'s coefficients from the rows of that level alone,
    with everything else held at its posterior mean. The partial residuals

        r = y - F a_hat - sum_{k != factor} Z_k b_hat_k[level_k],

    subtract the posterior-mean fixed effects a_hat (theta and alpha) and the other factors'
    posterior-mean deviations b_hat_k (beta_k less the terms' population means)
    (:func:`posterior_mean_parts`, :func:`known_part`); level j's estimate is then its
    (weighted) least-squares fit of r_j on Z_j plus the population means of the factor's
    terms, on the scale of ``beta_<factor>`` (:func:`level_normal_sums`,
    :func:`own_least_squares`). GLMs: level j's own ML GLM fit of y_j on Z_j with the rest,
    offset + F a_hat + sum_{k != factor} Z_k b_hat_k, as the known part of its linear
    predictor (:func:`multilevel.glmfit.level_fits`; the one-factor GLM rule for ``own``)."""
    fixed, b_hats = posterior_mean_parts(fit, design, factor.name)
    own_terms = next(fd for fd in design.factors if fd.name == factor.name)
    Z, level = np.asarray(own_terms.Z, dtype=float), np.asarray(own_terms.index)
    m = int(fit.posterior.sizes[factor.level_dim])
    known = known_part(design, fixed, b_hats, factor.name)
    family = check_family(fit.family)
    if not family.is_gaussian:  # each level's own GLM fit given the rest of the linear predictor
        from .glmfit import level_fits

        dev, own = level_fits(fitting_family(family), Z, level, m, y, np.asarray(design.trials, dtype=float),
                              np.asarray(design.offset, dtype=float) + known)
        return np.where(own[:, None], dev, 0.0) + _population_means(fit, factor.terms(fit)), own
    w = np.ones_like(y) if design.weights is None else np.asarray(design.weights, dtype=float)
    dev, own = own_least_squares(*level_normal_sums(Z, level, m, w, y - known))
    return dev + _population_means(fit, factor.terms(fit)), own


def posterior_mean_parts(fit: Fit, design: Any, factor: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The posterior means a partial residual subtracts (:func:`partial_residual_estimates`):
    of each fixed effect a_hat (0 where a varying term's mean is fixed at 0), and of every
    other factor's deviations b_hat_k (levels, terms), beta_k less its terms' population means."""
    fixed = np.array([0.0 if d is None else float(np.mean(d))
                      for d in (_population_draws(fit, name) for name in design.fixed_names)])
    b_hats = {}
    for fd in design.factors:
        if fd.name != factor:
            g = _factor(fit, fd.name, draws=True)
            b_hats[fd.name] = group_means(_beta_draws(fit, g)) - _population_means(fit, g.terms(fit))
    return fixed, b_hats


def known_part(design: Any, fixed: np.ndarray, b_hats: dict[str, np.ndarray], factor: str) -> np.ndarray:
    """F a_hat + sum_{k != factor} Z_k b_hat_k[level_k] of the design's rows."""
    known = np.asarray(design.F, dtype=float) @ fixed
    for fd in design.factors:
        if fd.name != factor:
            known += np.einsum("ik,ik->i", np.asarray(fd.Z, dtype=float), b_hats[fd.name][fd.index])
    return known


def level_normal_sums(Z: np.ndarray, level: np.ndarray, m: int, w: np.ndarray, r: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per level j of m: its rows n_j, Z_j'W_jZ_j (m, q, q) and Z_j'W_j r_j (m, q), by bincount
    (O(rows q^2), no (rows, q, q) temporary)."""
    q = Z.shape[1]
    ZtZ, Ztr = np.empty((m, q, q)), np.empty((m, q))
    for a in range(q):
        Ztr[:, a] = np.bincount(level, weights=w * Z[:, a] * r, minlength=m)
        for b in range(a, q):
            ZtZ[:, a, b] = ZtZ[:, b, a] = np.bincount(level, weights=w * Z[:, a] * Z[:, b], minlength=m)
    return np.bincount(level, minlength=m), ZtZ, Ztr


def own_least_squares(n: np.ndarray, ZtZ: np.ndarray, Ztr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each level's least-squares solution of (Z_j'W_jZ_j) d = Z_j'W_j r_j, and ``own``: it has
    more rows than terms and a well-conditioned Z_j'W_jZ_j (the one-factor rule); 0 elsewhere."""
    q = ZtZ.shape[1]
    eig = np.linalg.eigvalsh(ZtZ)
    own = (n > q) & (eig[:, 0] > 1e-10 * np.maximum(eig[:, -1], 1e-300))
    safe = np.where(own[:, None, None], ZtZ, np.eye(q))
    return np.where(own[:, None], np.linalg.solve(safe, Ztr[..., None])[..., 0], 0.0), own


def _pull_score(b_own: np.ndarray, b_post: np.ndarray) -> np.ndarray:
    """How far each group is pulled from its own estimate to its posterior mean: the length
    of own - posterior mean with each term in units of the sd of the own estimates across groups."""
    scale = b_own.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return np.sqrt((((b_own - b_post) / scale) ** 2).sum(axis=1))


def _label_points(ax: Any, x: np.ndarray, y: np.ndarray, names: np.ndarray) -> None:
    for xi, yi, name in zip(x, y, names):  # at most max_labels points
        ax.annotate(name, (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize=6, color="0.25")


def plot_shrinkage(fit: Fit, terms: list[str] | None = None, groups: Any = None, top: int | None = None,
                   max_groups: int | None = MAX_GROUPS, max_labels: int = 15, factor: str | None = None) -> Figure:
    """Shrinkage of the group effects towards theta.

    One panel per varying term k: for each group with its own estimate, x = its own
    least-squares (GLM) estimate b_jk, y = its posterior mean of beta_jk. The diagonal is
    no pooling (y = x), the horizontal line theta_k complete pooling; the vertical segment
    from the diagonal to each point is the group's pull towards theta (longer for small,
    noisy groups). With two or more varying terms, a last panel shows the first two in the
    plane: arrows from each own estimate (open circle) to the posterior mean (dot), and theta.

    Every group with an own estimate is a point. The pulls are drawn for all of them when
    there are at most ``max_groups`` (None: no limit); otherwise only for the highlighted
    groups, the rest staying small grey points (rasterized in PDF and SVG when many):
    ``groups`` (labels), or ``top=N`` the N most shrunk groups (the longest pull from own
    estimate to posterior mean, each term in units of the sd of the own estimates across
    groups), by default ``top=DEFAULT_TOP``. Up to ``max_labels`` highlighted groups are labelled.

    ``factor``: the grouping factor whose levels are the groups (default: the first in the
    formula). With several factors (or uncorrelated terms, ``||``), a level's own estimate
    is its least-squares fit of the partial residuals, the response less the posterior-mean
    fixed effects and the other factors' posterior-mean effects, on the rows of that level
    (:func:`partial_residual_estimates`); theta is then the population mean of the factor's
    terms (0 where fixed at 0).
    """
    plt = _plt()
    f = _factor(fit, factor, draws=True)
    all_terms = f.terms(fit)
    terms = _terms(fit, terms, f)
    labels = _group_labels(fit, f)
    m = labels.shape[0]
    chosen, top, by_default = _selection(labels, groups, top, max_groups)
    b_own, own, n_sizes = _own_and_sizes(fit, f)
    b_post = group_means(_beta_draws(fit, f))
    theta = _population_means(fit, all_terms)
    shown = np.flatnonzero(own)
    left_out = m - shown.shape[0]
    ks = [all_terms.index(t) for t in terms]
    # highlighted: positions into ``shown``, or None for all of them
    if chosen is not None:
        lit = np.flatnonzero(np.isin(shown, chosen))
        lit = lit[np.argsort(pd.Index(chosen).get_indexer(shown[lit]), kind="stable")]
    elif top is not None and top < shown.shape[0]:
        lit = _top_positions(_pull_score(b_own[np.ix_(shown, ks)], b_post[np.ix_(shown, ks)]), top)
    else:
        lit = None
    plane = len(terms) >= 2
    n_panels = len(terms) + int(plane)
    fig, axes = plt.subplots(1, n_panels, figsize=(4.8 * n_panels, 4.8), squeeze=False, layout="constrained")
    axes = axes[0]
    sizes = 8 + 40 * np.sqrt(n_sizes[shown] / max(n_sizes.max(), 1))
    many = shown.shape[0] > RASTERIZE_ABOVE
    hl = slice(None) if lit is None else lit
    named = lit is not None and lit.shape[0] <= max_labels
    from matplotlib.collections import LineCollection

    for ax, term, k in zip(axes, terms, ks):
        x, y = b_own[shown, k], b_post[shown, k]
        lo, hi = float(np.min(np.r_[x, y, theta[k]])), float(np.max(np.r_[x, y, theta[k]]))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="no pooling (y = x)")
        pool = f"theta[{term}]" if _population_draws(fit, term) is not None else "mean fixed at 0"
        ax.axhline(theta[k], color=POOL, lw=1.5, label=f"{pool} (complete pooling)")
        if lit is not None:
            ax.scatter(x, y, s=3, color=BACKGROUND, alpha=0.5, lw=0, rasterized=many, label="other groups")
        segments = np.stack([np.column_stack([x[hl], x[hl]]), np.column_stack([x[hl], y[hl]])], axis=1)
        ax.add_collection(LineCollection(segments, colors=MODEL, alpha=0.5, lw=0.8, label="pull towards theta"))
        ax.scatter(x[hl], y[hl], s=sizes[hl], color=MODEL, zorder=3, rasterized=many and lit is None,
                   label="posterior mean (size: rows)")
        if named:
            _label_points(ax, x[lit], y[lit], labels[shown[lit]])
        ax.set_xlabel(f"own {'least-squares' if fit.family == 'gaussian' else 'GLM'} estimate of {term}")
        ax.set_ylabel(f"posterior mean of {term}")
        ax.set_title(term)
        ax.legend(fontsize=7, loc="upper left")
    if plane:
        ax = axes[-1]
        k0, k1 = ks[0], ks[1]
        x0, y0 = b_own[shown, k0], b_own[shown, k1]
        x1, y1 = b_post[shown, k0], b_post[shown, k1]
        if lit is not None:
            ax.scatter(x1, y1, s=3, color=BACKGROUND, alpha=0.5, lw=0, rasterized=many,
                       label="other groups' posterior means")
        x0, y0, x1, y1 = x0[hl], y0[hl], x1[hl], y1[hl]
        ax.quiver(x0, y0, x1 - x0, y1 - y0, angles="xy", scale_units="xy", scale=1, color=MODEL, alpha=0.6,
                  width=0.003, headwidth=4, label="own estimate -> posterior mean")
        ax.scatter(x0, y0, s=14, facecolors="none", edgecolors="grey", rasterized=many and lit is None,
                   label="own estimate")
        ax.scatter(x1, y1, s=10, color=MODEL, zorder=3, rasterized=many and lit is None, label="posterior mean")
        if named:
            _label_points(ax, x1, y1, labels[shown[lit]])
        ax.scatter([theta[k0]], [theta[k1]], marker="*", s=220, color=POOL, zorder=4, label="theta")
        ax.set_xlabel(terms[0])
        ax.set_ylabel(terms[1])
        ax.set_title(f"{terms[0]} and {terms[1]}")
        ax.legend(fontsize=7, loc="upper left" if many else "best")  # "best" costs O(points) in Python
    notes = []
    if lit is not None:
        what = "chosen" if chosen is not None else "most shrunk"
        notes.append(f"{_count_groups(shown.shape[0])} as points; pulls drawn for the {lit.shape[0]:,} {what}"
                     + (f", the default above {max_groups:,} groups" if by_default else ""))
    if left_out:
        notes.append(f"{_count_groups(left_out)} without their own estimate not shown")
    if chosen is not None and lit.shape[0] < chosen.shape[0]:
        notes.append(f"{chosen.shape[0] - lit.shape[0]:,} of the chosen groups have no own estimate")
    note = "".join(f"\n({n})" for n in notes)
    _title(fig, f"Shrinkage of {f.name} effects towards theta", fit.formula, note)
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


def _dask_replicates(fit: Fit, n: int, seed: Any) -> tuple[Any, np.ndarray]:
    """A Dask fit's sampled rows (``observed_data``: y, coordinates trials and index_<factor>)
    and (S, rows) replicates of them: the stored sample, or a new one of ``n`` evenly spaced
    draws (:mod:`multilevel.distributed.replicates`)."""
    from .distributed.replicates import is_sample, replicate_sample

    if is_sample(fit):
        rep = _flat(fit.group("posterior_predictive")["y"])
        keep = np.unique(np.linspace(0, rep.shape[0] - 1, min(n, rep.shape[0])).round().astype(int))
        return fit.group("observed_data"), rep[keep]
    per_chain = max(1, min(fit.posterior.sizes["draw"], -(-max(n, 2) // fit.posterior.sizes["chain"])))
    observed, y_rep = replicate_sample(fit, seed=seed, draws=per_chain)
    return observed, _flat(y_rep)


def _ppc_rows(fit: Fit, n: int, seed: Any) -> tuple[np.ndarray, np.ndarray, Any, np.ndarray, str]:
    """The observed y, (S, N) replicates, a function of a factor giving each row's level
    position, the rows' trials, and a note on the rows: every fitted row in memory, a random
    sample of them for a Dask fit."""
    if fit.partitioned:
        observed, rep = _dask_replicates(fit, n, seed)
        a = observed.attrs
        note = (f"\n(a random sample of {a['sampled_rows']:,} of the {a['fitted_rows']:,} fitted rows)"
                if a["sampled_rows"] < a["fitted_rows"] else "")
        return (np.asarray(observed["y"].values, dtype=float), rep,
                lambda f: np.asarray(observed[f"index_{f.name}"].values), observed["trials"].values, note)
    y = np.asarray(fit.idata.observed_data["y"].values, dtype=float)
    cd = fit.idata.constant_data
    return (y, _replicates(fit, n, seed), lambda f: _level_index(fit, f),
            cd["trials"].values if "trials" in cd else np.ones_like(y), "")


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
    drawn with ``seed``. A Dask fit's are those of a random sample of its rows
    (:meth:`multilevel.result.Fit.posterior_predictive`), as the title says.
    """
    plt = _plt()
    family = check_family(fit.family)
    y, rep, level_index, trials, note = _ppc_rows(fit, num_pp_samples, seed)
    rep = np.asarray(rep, dtype=float)
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
    elif family.link == "log":  # poisson, negbinomial: counts
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
        f = _factor(fit)  # the first grouping factor
        g = level_index(f)
        groups = _group_labels(fit, f)
        m = groups.shape[0]
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
        ax.set_xlabel(f"{f.name} (sorted by observed proportion)")
        ax.set_ylabel("proportion of successes")
        if order.shape[0] <= 40:
            ax.set_xticks(x)
            ax.set_xticklabels(groups[order], rotation=90, fontsize=7)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"Posterior predictive check: proportion per group ({rep.shape[0]} replicates)")
    if note:
        ax.set_title(ax.get_title() + note, fontsize="medium")
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


__all__ = ["KINDS", "MAX_GROUPS", "DEFAULT_TOP", "plot", "own_estimates", "partial_residual_estimates",
           "group_means", "group_hdi",
           *[f.__name__ for f in PLOTTERS.values()]]
