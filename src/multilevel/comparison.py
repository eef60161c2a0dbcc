"""Model comparison by PSIS-LOO and WAIC, from the pointwise log-likelihood.

The pointwise log-likelihood is log p(y_i | parameters) of each observed row i, so LOO
here leaves out one *row* at a time (predicting a new observation in a seen group). With
few rows per group some Pareto k values may be high, and then a warning says so. The
criteria are ArviZ's (``az.loo``, ``az.waic``: the same numbers, in its ``ELPDData``),
computed by :mod:`multilevel.elpd` in blocks of rows with a compiled PSIS
(:mod:`multilevel.psis`); the comparison table is ``az.compare``'s.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from .convert import az
from .errors import ModelError

if TYPE_CHECKING:
    from .result import Fit


def population_dataset(fit: Fit) -> xr.Dataset:
    """The population parameters as scalar variables per draw: ``theta[<term>]`` (terms with
    a mean), ``alpha[<term>]``, ``Sigma[<a>, <b>]`` (lower triangle; with several grouping
    factors ``Sigma_<factor>[<a>, <b>]`` per factor, and the covariances between uncorrelated
    terms, ``||``, left out) and ``sigma2`` (Gaussian) or ``phi`` (negative binomial)."""
    post = fit.posterior
    terms = [str(t) for t in post["term"].values]
    zero = set(fit.zero_mean_terms)
    out: dict[str, xr.DataArray] = {}

    def scalar(da: xr.DataArray) -> xr.DataArray:
        return da.drop_vars([c for c in da.coords if c not in ("chain", "draw")])

    for t in terms:
        if t not in zero:
            out[f"theta[{t}]"] = scalar(post["theta"].sel(term=t))
    if "alpha" in post:
        for a in post["fixed_term"].values:
            out[f"alpha[{a}]"] = scalar(post["alpha"].sel(fixed_term=a))
    for name in [str(v) for v in post.data_vars if str(v) == "Sigma" or str(v).startswith("Sigma_")]:
        da = post[name]
        row, col = da.dims[-2], da.dims[-1]
        names = [str(t) for t in da[row].values]
        for i, a in enumerate(names):
            for j, b in enumerate(names[: i + 1]):
                entry = da.isel({row: i, col: j})
                if i != j and not np.any(entry.values):  # between uncorrelated terms: 0 by the model
                    continue
                out[f"{name}[{a}, {b}]"] = scalar(entry)
    for name in ("sigma2", "phi"):
        if name in post:
            out[name] = scalar(post[name])
    return xr.Dataset(out)


def _reff(fit: Fit) -> float:
    """Relative effective sample size for PSIS, from the population parameters (constant
    ones, such as a mean fixed at 0, are left out, as their ESS is undefined)."""
    ess = az.ess(population_dataset(fit), method="mean")
    values = np.array([float(v) for v in ess.data_vars.values()])
    values = values[np.isfinite(values)]
    n = fit.posterior.sizes["chain"] * fit.posterior.sizes["draw"]
    return float(np.clip(values.mean() / n, 0.01, 1.0)) if values.size else 1.0


def _ll_values(fit: Fit, order: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
    """The pointwise log-likelihood (chain, draw, rows) as an array (its rows reordered by
    ``order`` when given, then numbered 0..n-1) and the rows' coordinate."""
    ll = fit.log_likelihood()
    if order is not None:
        return ll.values[:, :, order], np.arange(order.shape[0])
    return ll.values, ll["obs"].values


def _options(kwargs: dict[str, Any], allowed: set[str], what: str) -> None:
    """Refuse in one line keywords ``what`` does not take."""
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ModelError(f"{what} takes {' and '.join(sorted(allowed))}, not {', '.join(unknown)}")


def loo(fit: Fit, pointwise: bool | None = None, order: np.ndarray | None = None, **kwargs: Any) -> Any:
    """PSIS leave-one-out cross-validation: ArviZ's ``ELPDData`` with the elpd_loo, se, p_loo
    and Pareto k that ``az.loo`` gives on the pointwise log-likelihood (keywords ``reff``,
    default from the population parameters' ESS, and ``scale``), computed by
    :mod:`multilevel.elpd` in blocks of rows. ``pointwise``: keep the pointwise values
    (ArviZ's default, True, when None). A Dask fit without a stored log-likelihood gets the
    same numbers partition by partition (:func:`multilevel.distributed.posterior.loo`)."""
    _options(kwargs, {"reff", "scale"}, "loo()")
    reff = float(kwargs["reff"]) if kwargs.get("reff") is not None else _reff(fit)
    if fit.group("log_likelihood") is None and fit.partitioned:
        from .distributed.posterior import loo as loo_over_partitions

        return loo_over_partitions(fit, reff, pointwise=pointwise, scale=kwargs.get("scale"))
    from . import elpd  # its PSIS kernels are compiled (numba): loaded when an elpd is computed

    pointwise, scale = elpd.check_pointwise(pointwise), elpd.check_scale(kwargs.get("scale"))
    ll, obs = _ll_values(fit, order)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    total = elpd.in_blocks(ll, lambda samples: elpd.block_loo(samples, reff, elpd.SCALES[scale], pointwise, threads))
    return elpd.loo_data(total, scale, obs)


def waic(fit: Fit, pointwise: bool | None = None, order: np.ndarray | None = None, **kwargs: Any) -> Any:
    """The widely applicable information criterion: ArviZ's ``ELPDData`` with the numbers
    ``az.waic`` gives (keyword ``scale``), by :mod:`multilevel.elpd` as :func:`loo`; a Dask
    fit without a stored log-likelihood partition by partition
    (:func:`multilevel.distributed.posterior.waic`)."""
    _options(kwargs, {"scale"}, "waic()")
    if fit.group("log_likelihood") is None and fit.partitioned:
        from .distributed.posterior import waic as waic_over_partitions

        return waic_over_partitions(fit, pointwise=pointwise, scale=kwargs.get("scale"))
    from . import elpd  # its PSIS kernels are compiled (numba): loaded when an elpd is computed

    pointwise, scale = elpd.check_pointwise(pointwise), elpd.check_scale(kwargs.get("scale"))
    ll, obs = _ll_values(fit, order)
    total = elpd.in_blocks(ll, lambda samples: elpd.block_waic(samples, elpd.SCALES[scale], pointwise))
    return elpd.waic_data(total, scale, obs)


def _row_orders(fits: dict[str, Fit]) -> list[np.ndarray | None]:
    """Reorderings that put every fit's rows in the first fit's order (fits sorted by
    different grouping factors store their rows in different orders)."""
    items = list(fits.items())
    name0, fit0 = items[0]
    y0 = fit0.idata.observed_data["y"].values
    lab0 = fit0.idata.constant_data["row_label"].values if "row_label" in fit0.idata.constant_data else None
    orders: list[np.ndarray | None] = [None]
    for name, fit in items[1:]:
        y = fit.idata.observed_data["y"].values
        if y.shape != y0.shape:
            raise ModelError(f"fits {name0!r} and {name!r} were fitted to different rows ({y0.shape[0]} and {y.shape[0]}); "
                             "compare models fitted to the same data")
        lab = fit.idata.constant_data["row_label"].values if "row_label" in fit.idata.constant_data else None
        order = None
        if lab0 is not None and lab is not None and pd.Index(lab0).is_unique and pd.Index(lab).is_unique:
            pos = pd.Index(lab).get_indexer(lab0)
            if np.any(pos < 0):
                raise ModelError(f"fits {name0!r} and {name!r} were fitted to different rows; compare models fitted to the same data")
            order = None if np.array_equal(pos, np.arange(pos.shape[0])) else pos
        yy = y if order is None else y[order]
        if not np.allclose(np.asarray(yy, float), np.asarray(y0, float)):
            raise ModelError(f"fits {name0!r} and {name!r} have different responses; compare models of the same data")
        orders.append(order)
    return orders


def _same_partitioned_rows(fits: dict[str, Fit]) -> list[None]:
    """Dask fits with their pointwise log-likelihood stored (rows in data order, no rows kept):
    refused in one line unless fitted to the same source with the same number of rows kept."""
    (name0, fit0), *rest = fits.items()
    want = (str(fit0.attrs.get("data_source")), int(fit0.attrs.get("n_obs", -1)))
    for name, fit in rest:
        got = (str(fit.attrs.get("data_source")), int(fit.attrs.get("n_obs", -1)))
        if got != want:
            raise ModelError(f"fits {name0!r} and {name!r} were fitted to different data ({want[0]}, {want[1]} rows; "
                             f"{got[0]}, {got[1]} rows); compare models fitted to the same data")
    return [None] * len(fits)


def compare(fits: dict[str, Fit], ic: str = "loo", **kwargs: Any) -> pd.DataFrame:
    """Rank fits of the same data by expected log predictive density (``az.compare``).

    ``fits`` maps names to :class:`~multilevel.result.Fit`; ``ic`` is ``"loo"`` (PSIS-LOO,
    default) or ``"waic"``. Returns ArviZ's table: rank, elpd, p (effective number of
    parameters), elpd_diff from the best, weight, se, dse (standard error of the
    difference), warning and scale.

    Fits made with ``engine="dask"`` (all of them, of the same data) with their pointwise
    log-likelihood stored (``add_log_likelihood()``, CLI ``--log-likelihood``) are compared from
    it, rows in data order; without it they are compared partition by partition, their
    pointwise values side by side, with ``ic="loo"`` and pseudo-BMA weights
    (``method="pseudo-BMA"``; stacking needs every row's pointwise elpd in one place):
    :mod:`multilevel.distributed.compare`. Dask and in-memory fits together are refused.
    """
    if not isinstance(fits, dict) or len(fits) < 2:
        raise ModelError("compare needs a dict of at least two fits, e.g. {'intercept': fit1, 'slope': fit2}")
    from .result import Fit

    for name, fit in fits.items():
        if not isinstance(fit, Fit):
            raise ModelError(f"compare: {name!r} is a {type(fit).__name__}, not a multilevel Fit")
    if ic not in ("loo", "waic"):
        raise ModelError(f"ic must be 'loo' or 'waic', not {ic!r}")
    engines = {name: "dask" if fit.partitioned else "in-memory" for name, fit in fits.items()}
    if len(set(engines.values())) > 1:
        dask_fit = next(n for n, e in engines.items() if e == "dask")
        memory_fit = next(n for n, e in engines.items() if e != "dask")
        raise ModelError(f"compare() takes fits of one engine: {dask_fit!r} was made with engine='dask' and "
                         f"{memory_fit!r} in memory; fit them with the same engine")
    stored = all(fit.group("log_likelihood") is not None for fit in fits.values())
    if "dask" in engines.values() and not stored:
        from .distributed.compare import compare as compare_partitions

        return compare_partitions(fits, ic, **kwargs)
    orders = _row_orders(fits) if "dask" not in engines.values() else _same_partitioned_rows(fits)
    # ArviZ compare on precomputed ELPDData, so that each LOO uses its own fit's r_eff
    # on the scale asked for: az.compare takes precomputed values on theirs, whatever scale= says
    scale = kwargs.get("scale")
    on_scale = {} if scale is None else {"scale": scale}
    criterion = loo if ic == "loo" else waic
    values = {name: criterion(fit, pointwise=True, order=order, **on_scale)
              for (name, fit), order in zip(fits.items(), orders)}
    return az.compare(values, ic=ic, **kwargs)


__all__ = ["compare", "loo", "waic", "population_dataset"]
