"""lme4-style accessors of a fit: ``fixef``, ``ranef``, ``coef`` and ``VarCorr`` as tidy tables.

Every table has one row per quantity and the columns ``mean``, ``sd`` and the bounds of the
``hdi_prob`` highest-density interval (``hdi_3%``, ``hdi_97%`` for the default 0.94), over
all chains and draws.

* :func:`fixef`, index ``term``: the population-level (fixed) effects, lme4's ``fixef``:
  theta of the varying terms that have a population mean and alpha of the fixed-only
  terms, in the order of the formula's fixed part (``Intercept`` first).
* :func:`ranef`, index (``factor``, ``group``, ``term``): each group's deviation from the
  population, b_j = beta_j - theta (lme4's ``ranef``); a term without a population mean
  (``(0 + x | g)`` without ``x`` in the fixed part) has theta = 0, so b_j = beta_j.
* :func:`coef`, index (``factor``, ``group``, ``term``): each group's coefficients, lme4's
  ``coef``: beta_j for the varying terms and, for the fixed-only terms, alpha, the same in
  every group. Terms in :func:`fixef` order, then the varying terms without a population
  mean (lme4 puts those first; here they follow).
* :func:`VarCorr`, index (``factor``, ``kind``, ``term``, ``term2``): per grouping factor the
  sd of each varying term (``kind`` "sd", ``term2`` "") and the correlation of each pair
  (``kind`` "cor"), in lme4's order; for the Gaussian family a last row
  (``"Residual"``, "sd", "", "") holds the residual sd, sqrt(sigma2).
* lme4's other accessors: :func:`nobs` (rows fitted), :func:`ngrps` (levels per grouping
  factor), :func:`sigma` (the residual sd's posterior mean; 1 for families whose variance
  follows the mean, as lme4), :func:`confint` (credible intervals of the variance components,
  the residual sd and the fixed effects, in lme4's layout: one row per parameter, the columns
  ``2.5 %`` and ``97.5 %``), :func:`fitted` (each fitted row's posterior mean of mu_i) and
  :func:`residuals` (y_i - that mean, or divided by sqrt(V(mu_i)): Pearson).

Grouping factors: a factor is its name with its ``beta`` (chain, draw, group, term) and
``Sigma`` (chain, draw, term, term_) draws (:class:`Factor`); the per-factor functions use
only those, whatever their group and term dims are called. A one-factor fit stores
``beta`` and ``Sigma`` and names its factor in ``attrs["group_factor"]``; a fit with several
factors stores ``beta_<factor>`` and ``Sigma_<factor>``, each factor's coefficients
(population mean plus deviation, as ``beta`` is).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from .errors import ModelError
from .predict import HDI_PROB, summarize

if TYPE_CHECKING:
    from .result import Fit

#: the ``factor`` label of the residual sd in :func:`VarCorr`, as in lme4
RESIDUAL = "Residual"


@dataclass(frozen=True)
class Factor:
    """One grouping factor: its name and the draws of its groups' coefficients and covariance."""

    name: str
    beta: xr.DataArray  # (chain, draw, group, term)
    Sigma: xr.DataArray  # (chain, draw, term, term_)

    @property
    def groups(self) -> np.ndarray:
        return self.beta[self.beta.dims[-2]].values

    @property
    def terms(self) -> list[str]:
        return [str(t) for t in self.beta[self.beta.dims[-1]].values]


def factors(fit: Fit) -> list[Factor]:
    """The fit's grouping factors, in the order the posterior stores them."""
    post = fit.posterior
    if "beta" in post:
        return [Factor(str(fit.attrs.get("group_factor", "group")), post["beta"], post["Sigma"])]
    names = [str(v)[len("beta_"):] for v in post.data_vars if str(v).startswith("beta_")]
    return [Factor(n, post[f"beta_{n}"], post[f"Sigma_{n}"]) for n in names if f"Sigma_{n}" in post]


def _table(draws: np.ndarray, index: pd.Index, hdi_prob: float) -> pd.DataFrame:
    """mean, sd and HDI of each column of ``draws`` (chain, draw, column)."""
    return summarize(xr.DataArray(draws, dims=("chain", "draw", "obs")), hdi_prob, index=index)


def _chain_draw(da: xr.DataArray, *dims: str) -> np.ndarray:
    return da.transpose("chain", "draw", *dims).values


# -- fixed effects ----------------------------------------------------------------------------

def formula_order(formula: str, labels: list[str]) -> list[str]:
    """``labels`` (design columns such as ``c[b]``) in the order their terms stand in the
    formula's fixed part; labels that match no term follow, in their given order."""
    from .formula import parse_formula

    try:
        common = parse_formula(formula).common
    except ModelError:
        return list(labels)
    from .rformula import display_name

    position = {display_name(t): i for i, t in enumerate(common)}  # labels show R's scale, not r_scale

    def key(label: str) -> int:
        return position.get(label, position.get(re.sub(r"\[[^\[\]]*\]", "", label), len(common)))

    return sorted(labels, key=key)


def fixef_draws(fit: Fit) -> xr.DataArray:
    """Draws (chain, draw, term) of the population-level effects, in :func:`fixef` order."""
    post = fit.posterior
    zero = set(fit.zero_mean_terms)
    parts = {}
    for name, dim in (("theta", "term"), ("alpha", "fixed_term")):
        if name in post and post[name].size:
            for t in post[name][dim].values:
                if name == "alpha" or str(t) not in zero:
                    parts[str(t)] = post[name].sel({dim: t}, drop=True)
    order = formula_order(fit.formula, list(parts))
    if not order:
        return xr.DataArray(np.empty((post.sizes["chain"], post.sizes["draw"], 0)), dims=("chain", "draw", "term"),
                            coords={"term": []})
    return xr.concat([parts[t] for t in order], dim=pd.Index(order, name="term")).transpose("chain", "draw", "term")


def fixef(fit: Fit, hdi_prob: float = HDI_PROB) -> pd.DataFrame:
    """Population-level effects, index ``term``: mean, sd and HDI (lme4's ``fixef``)."""
    draws = fixef_draws(fit)
    return _table(draws.values, pd.Index(list(draws["term"].values), name="term"), hdi_prob)


# -- group-level effects ----------------------------------------------------------------------

def _group_index(factor: str, groups: np.ndarray, term: str) -> pd.MultiIndex:
    n = len(groups)
    return pd.MultiIndex.from_arrays([np.repeat(factor, n), groups, np.repeat(term, n)],
                                     names=["factor", "group", "term"])


def _group_major(tables: list[pd.DataFrame], n_groups: int) -> pd.DataFrame:
    """Term-by-term tables of ``n_groups`` rows each, as one table ordered by group, then term."""
    order = np.arange(len(tables) * n_groups).reshape(len(tables), n_groups).T.ravel()
    return pd.concat(tables).iloc[order]


def factor_ranef(factor: Factor, fixed: xr.DataArray, hdi_prob: float = HDI_PROB) -> pd.DataFrame:
    """b_j = beta_j - theta of one factor's groups; ``fixed`` the :func:`fixef_draws`."""
    group_dim, term_dim = factor.beta.dims[-2:]
    fixed_terms = set(map(str, fixed["term"].values))
    tables = []
    for k, term in enumerate(factor.terms):  # one term at a time: temporaries (chain, draw, groups)
        b = _chain_draw(factor.beta.isel({term_dim: k}), group_dim)
        if term in fixed_terms:
            b = b - fixed.sel(term=term).values[..., None]
        tables.append(_table(b, _group_index(factor.name, factor.groups, term), hdi_prob))
    return _group_major(tables, len(factor.groups))


def factor_coef(factor: Factor, fixed: xr.DataArray, hdi_prob: float = HDI_PROB) -> pd.DataFrame:
    """Per-group coefficients of one factor: beta_j of its varying terms and the population
    effect of the other fixed terms (the same in every group)."""
    group_dim, term_dim = factor.beta.dims[-2:]
    varying = factor.terms
    fixed_terms = [str(t) for t in fixed["term"].values]
    terms = fixed_terms + [t for t in varying if t not in fixed_terms]
    groups = factor.groups
    tables = []
    for term in terms:
        index = _group_index(factor.name, groups, term)
        if term in varying:
            b = _chain_draw(factor.beta.isel({term_dim: varying.index(term)}), group_dim)
            tables.append(_table(b, index, hdi_prob))
        else:  # summarise the population draws once, then repeat the row for every group
            row = _table(fixed.sel(term=term).values[..., None], index[:1], hdi_prob)
            tables.append(pd.DataFrame(np.repeat(row.values, len(groups), axis=0), index=index, columns=row.columns))
    return _group_major(tables, len(groups))


def ranef(fit: Fit, hdi_prob: float = HDI_PROB) -> pd.DataFrame:
    """Groups' deviations from the population, index (factor, group, term) (lme4's ``ranef``)."""
    fixed = fixef_draws(fit)
    return pd.concat([factor_ranef(f, fixed, hdi_prob) for f in factors(fit)])


def coef(fit: Fit, hdi_prob: float = HDI_PROB) -> pd.DataFrame:
    """Groups' coefficients, index (factor, group, term) (lme4's ``coef``)."""
    fixed = fixef_draws(fit)
    return pd.concat([factor_coef(f, fixed, hdi_prob) for f in factors(fit)])


# -- variance components ----------------------------------------------------------------------

def factor_varcorr(factor: Factor) -> tuple[np.ndarray, list[tuple[str, str, str, str]]]:
    """Draws (chain, draw, row) of one factor's sds and correlations, and the rows' labels."""
    S = _chain_draw(factor.Sigma, *factor.Sigma.dims[-2:])
    sd = np.sqrt(np.diagonal(S, axis1=-2, axis2=-1))
    terms = factor.terms
    i, j = np.triu_indices(len(terms), k=1)
    cor = S[..., i, j] / (sd[..., i] * sd[..., j])
    labels = [(factor.name, "sd", t, "") for t in terms]
    labels += [(factor.name, "cor", terms[a], terms[b]) for a, b in zip(i, j)]
    return np.concatenate([sd, cor], axis=-1), labels


def VarCorr(fit: Fit, hdi_prob: float = HDI_PROB) -> pd.DataFrame:
    """sd of each varying term and correlation of each pair, per grouping factor, and the
    residual sd (Gaussian family); index (factor, kind, term, term2) (lme4's ``VarCorr``)."""
    parts = [factor_varcorr(f) for f in factors(fit)]
    draws = [d for d, _ in parts]
    labels = [label for _, rows in parts for label in rows]
    if fit.family == "gaussian":
        draws.append(np.sqrt(_chain_draw(fit.posterior["sigma2"]))[..., None])
        labels.append((RESIDUAL, "sd", "", ""))
    index = pd.MultiIndex.from_tuples(labels, names=["factor", "kind", "term", "term2"])
    return _table(np.concatenate(draws, axis=-1), index, hdi_prob)


# -- lme4's other accessors -------------------------------------------------------------------

def nobs(fit: Fit) -> int:
    """The number of rows fitted (lme4's ``nobs``)."""
    return int(fit.attrs["n_obs"])


def ngrps(fit: Fit) -> pd.Series:
    """The number of levels of each grouping factor (lme4's ``ngrps``), index ``factor``."""
    counts = fit.attrs["n_groups"]
    counts = json.loads(counts) if isinstance(counts, str) else {str(fit.attrs.get("group_factor", "group")): counts}
    return pd.Series({str(k): int(v) for k, v in counts.items()}, name="levels").rename_axis("factor")


def sigma(fit: Fit) -> float:
    """The residual sd's posterior mean, E[sqrt(sigma2) | y] (lme4's ``sigma``); 1.0 for the
    families whose variance follows from the mean (Poisson, binomial, Bernoulli, and the
    negative binomial, whose phi is in the summary), as lme4 gives for a ``glmer`` fit."""
    if fit.family != "gaussian":
        return 1.0
    return float(np.sqrt(fit.posterior["sigma2"].values).mean())


def confint(fit: Fit, level: float = 0.95, method: str = "eti") -> pd.DataFrame:
    """Credible intervals in the layout of lme4's ``confint``: one row per parameter, the
    variance components first (``sd_<term>|<factor>``, ``cor_<term2>.<term>|<factor>``), then
    ``sigma`` (Gaussian), then the fixed effects (:func:`fixef` names); columns the lower and
    upper bounds named as R names them (``2.5 %``, ``97.5 %`` for ``level`` 0.95).
    ``method``: ``"eti"`` equal-tailed (the posterior's quantiles) or ``"hdi"`` (highest density)."""
    from .diagnostics import hdi

    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ModelError(f"level must be a probability between 0 and 1, e.g. 0.95; got {level!r}")
    if method not in ("eti", "hdi"):
        raise ModelError(f"method must be 'eti' (equal-tailed) or 'hdi' (highest density), not {method!r}")
    parts = [factor_varcorr(f) for f in factors(fit)]
    draws = [d for d, _ in parts]
    names = [f"sd_{t}|{f}" if kind == "sd" else f"cor_{t2}.{t}|{f}" for _, rows in parts for f, kind, t, t2 in rows]
    if fit.family == "gaussian":
        draws.append(np.sqrt(_chain_draw(fit.posterior["sigma2"]))[..., None])
        names.append("sigma")
    fixed = fixef_draws(fit)
    draws.append(fixed.values)
    names += [str(t) for t in fixed["term"].values]
    flat = np.concatenate(draws, axis=-1)
    flat = flat.reshape(-1, flat.shape[-1])
    tail = (1 - level) / 2
    lo, hi = (hdi(flat, level) if method == "hdi" else np.quantile(flat, [tail, 1 - tail], axis=0))
    columns = [f"{100 * tail:.4g} %", f"{100 * (1 - tail):.4g} %"]
    return pd.DataFrame({columns[0]: lo, columns[1]: hi}, index=pd.Index(names, name="parameter"))


def fitted(fit: Fit) -> pd.Series:
    """Each fitted row's posterior mean of mu_i = E[y_i | parameters] (lme4's ``fitted``),
    indexed by the rows' labels; a Dask fit's as a lazy Dask Series, partition by partition."""
    table = fit.predict(kind="mean", summary=True)
    return table["mean"].rename("fitted")


RESIDUAL_TYPES = ("response", "pearson")


def residual_values(family: str, y: np.ndarray, n: np.ndarray, mu: np.ndarray, weights: np.ndarray | None,
                    type: str, sigma: float, phi: float | None) -> np.ndarray:  # noqa: A002
    """Residuals of rows with response ``y`` (binomial successes of ``n`` trials) at the
    posterior means ``mu`` (:func:`residuals`)."""
    y = y / n if family == "binomial" else y
    out = y - mu
    if type == "response":
        return out
    if family == "gaussian":
        var = sigma ** 2 / (1.0 if weights is None else weights)
    elif family == "poisson":
        var = mu
    elif family == "negbinomial":
        var = mu + mu ** 2 / phi
    else:
        var = mu * (1 - mu) / n
    return out / np.sqrt(var)


def residuals(fit: Fit, type: str = "response") -> Any:  # noqa: A002 (lme4's argument name)
    """Each fitted row's residual (lme4's ``residuals``/``resid``) at the posterior mean mu_i of
    :func:`fitted`: ``"response"`` y_i - mu_i (binomial: the proportion y_i / n_i - p_i), or
    ``"pearson"``: that over sqrt(V(mu_i)), V = sigma^2 (Gaussian, :func:`sigma` squared, over
    the row's weight), mu (Poisson), mu + mu^2 / phi (negative binomial, phi's posterior
    mean), p (1 - p) / n (binomial, Bernoulli). lme4's ``glmer`` default, deviance residuals,
    is not offered. A Dask fit's are a lazy Dask Series, partition by partition
    (:func:`multilevel.distributed.posterior.residual_partitions`)."""
    if type not in RESIDUAL_TYPES:
        raise ModelError(f"type must be one of {', '.join(RESIDUAL_TYPES)}, not {type!r}")
    phi = float(fit.posterior["phi"].values.mean()) if fit.family == "negbinomial" else None
    options = dict(family=fit.family, type=type, sigma=sigma(fit), phi=phi)
    name = f"{type}_residual"
    if fit.partitioned:
        from .distributed.posterior import residual_partitions

        return residual_partitions(fit, options).rename(name)
    fit.require_rows("residuals()")
    cd = fit.group("constant_data")
    labels = pd.Index(cd["row_label"].values)
    mu = fitted(fit)
    at = labels.get_indexer(mu.index)
    column = (lambda v: cd[v].values[at] if v in cd else None)
    trials = column("trials")
    values = residual_values(y=fit.group("observed_data")["y"].values[at], mu=mu.to_numpy(),
                             n=np.ones(len(at)) if trials is None else trials, weights=column("weights"), **options)
    return pd.Series(values, index=mu.index, name=name)


__all__ = ["Factor", "factors", "fixef", "fixef_draws", "ranef", "coef", "VarCorr", "formula_order", "RESIDUAL",
           "nobs", "ngrps", "sigma", "confint", "fitted", "residuals"]
