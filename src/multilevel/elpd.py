"""PSIS-LOO and WAIC from blocks of rows of the pointwise log-likelihood, as ArviZ's
``az.loo`` and ``az.waic`` compute them, assembled into ArviZ's ``ELPDData``.

Both criteria are sums over rows of per-row values computed from that row's draws alone, so
the rows can be taken a block at a time (in memory: :func:`in_blocks`; on Dask: partition by
partition, :mod:`multilevel.distributed.posterior`). A block's result holds its rows' sums
of the pointwise elpd (times the scale) and of the pointwise lppd, the count, mean and
centred sum of squares of the pointwise elpd (for the standard error, :mod:`multilevel.moments`),
the largest Pareto k (LOO) or log-density variance (WAIC) and, when asked, the pointwise
values; :func:`combine` joins two blocks' results, the first block's rows first.

* LOO: elpd_loo_i and the Pareto k from :func:`multilevel.psis.pointwise_loo`; se =
  sqrt(n var(elpd_loo_i)); p_loo = sum_i lppd_i - elpd_loo / scale; a warning when a k
  exceeds good_k = min(1 - 1 / log10 S, 0.7).
* WAIC: elpd_waic_i = scale (lppd_i - var_s log p(y_i | s)); a warning when a variance
  exceeds 0.4.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import xarray as xr

from .errors import ModelError
from .moments import combine_moments, moments_of
from .psis import pointwise_loo

#: ArviZ's scales: the pointwise values are multiplied by these
SCALES = {"log": 1.0, "negative_log": -1.0, "deviance": -2.0}

#: log-likelihood values (chains x draws x rows) a block holds at once
LOO_VALUES = 20_000_000

#: az.waic's warning: a row whose log predictive density varies more than this over the draws
WAIC_VARIANCE = 0.4


def check_scale(scale: str | None) -> str:
    """ArviZ's ``stats.ic_scale`` (None) or ``scale``, one of :data:`SCALES`, or a one-line refusal."""
    from arviz import rcParams

    scale = rcParams["stats.ic_scale"] if scale is None else str(scale).lower()
    if scale not in SCALES:
        raise ModelError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    return scale


def check_pointwise(pointwise: bool | None) -> bool:
    """ArviZ's ``stats.ic_pointwise`` (None) or ``pointwise``."""
    from arviz import rcParams

    return bool(rcParams["stats.ic_pointwise"]) if pointwise is None else bool(pointwise)


def _sums(samples: np.ndarray, elpd_i: np.ndarray, lppd: np.ndarray, largest: np.ndarray,
          k: np.ndarray | None, pointwise: bool) -> dict[str, Any]:
    """A block's result (module doc) from its pointwise values."""
    return {"rows": samples.shape[0], "samples": samples.shape[1], "elpd": float(np.sum(elpd_i)),
            "lppd": float(np.sum(lppd)), "moments": moments_of(elpd_i), "max": float(np.max(largest, initial=-np.inf)),
            "values": elpd_i if pointwise else None, "k": np.asarray(k) if pointwise and k is not None else None}


def block_loo(samples: np.ndarray, reff: float, scale: float, pointwise: bool, threads: int = 1) -> dict[str, Any]:
    """PSIS-LOO of the rows of ``samples`` (rows, draws): the block's result (module doc),
    the rows' PSIS on ``threads`` threads."""
    if samples.shape[0]:
        loo_i, lppd, k = pointwise_loo(samples, reff, threads)
    else:
        loo_i, lppd, k = np.zeros(0), np.zeros(0), np.zeros(0)
    return _sums(samples, scale * loo_i, lppd, k, k, pointwise)


def block_waic(samples: np.ndarray, scale: float, pointwise: bool) -> dict[str, Any]:
    """WAIC of the rows of ``samples`` (rows, draws): elpd_waic_i = scale (lppd_i - var_s
    log p(y_i | s)), the block's result (module doc)."""
    from arviz.stats.stats_utils import logsumexp

    if samples.shape[0]:
        lppd = logsumexp(samples, b_inv=samples.shape[1], axis=-1)
        var_lpd = samples.var(axis=-1)
    else:
        lppd, var_lpd = np.zeros(0), np.zeros(0)
    return _sums(samples, scale * (lppd - var_lpd), lppd, var_lpd, None, pointwise)


def combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two blocks' results as one (a's rows first)."""
    def join(name: str) -> np.ndarray | None:
        return None if a[name] is None else np.concatenate([a[name], b[name]])

    return {"rows": a["rows"] + b["rows"], "samples": a["samples"], "elpd": a["elpd"] + b["elpd"],
            "lppd": a["lppd"] + b["lppd"], "moments": combine_moments(a["moments"], b["moments"]),
            "max": max(a["max"], b["max"]), "values": join("values"), "k": join("k")}


def in_blocks(ll: np.ndarray, block_of: Callable[[np.ndarray], dict[str, Any]]) -> dict[str, Any]:
    """``block_of`` (e.g. :func:`block_loo` with its options bound) of the rows of the
    pointwise log-likelihood ``ll`` (chain, draw, rows), taken in blocks of at most
    :data:`LOO_VALUES` values (rows, chain x draw), combined."""
    n_samples = ll.shape[0] * ll.shape[1]
    flat = ll.reshape(n_samples, -1)
    block = max(1, LOO_VALUES // n_samples)
    out = block_of(np.zeros((0, n_samples)))
    for start in range(0, flat.shape[1], block):
        out = combine(out, block_of(np.ascontiguousarray(flat[:, start:start + block].T)))
    return out


def loo_numbers(total: dict[str, Any], scale: str, stacklevel: int = 4) -> tuple[float, float, bool, float]:
    """The se, p_loo, warning and good_k of a combined LOO result as ``az.loo`` gives them
    (warning as it does when a Pareto k is above good_k)."""
    n_samples = total["samples"]
    se = float(np.sqrt(total["rows"] * total["moments"].variance))
    p_loo = total["lppd"] - total["elpd"] / SCALES[scale]
    good_k = min(1 - 1 / np.log10(n_samples), 0.7)
    warn = bool(total["max"] > good_k)
    if warn:
        warnings.warn(f"Pareto k above {good_k:.2f} for one or more rows: PSIS-LOO is unreliable for them "
                      "(influential rows, or a LOO posterior far from the full one)", UserWarning, stacklevel=stacklevel)
    return se, p_loo, warn, good_k


def loo_data(total: dict[str, Any], scale: str, obs: Any = None, stacklevel: int = 5) -> Any:
    """ArviZ's ``ELPDData`` of a combined LOO result, as ``az.loo`` returns it (pointwise
    values, named ``loo_i`` and ``pareto_k`` along ``obs``, when the result holds them;
    ``obs`` their coordinate, default 0..n-1)."""
    from arviz.stats.stats_utils import ELPDData

    n, n_samples = total["rows"], total["samples"]
    se, p_loo, warn, good_k = loo_numbers(total, scale, stacklevel)
    if total["values"] is None:
        return ELPDData(data=[total["elpd"], se, p_loo, n_samples, n, warn, scale, good_k],
                        index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "scale", "good_k"])
    coords = {"obs": np.arange(n) if obs is None else obs}
    return ELPDData(data=[total["elpd"], se, p_loo, n_samples, n, warn,
                          xr.DataArray(total["values"], dims=("obs",), coords=coords, name="loo_i"),
                          xr.DataArray(total["k"], dims=("obs",), coords=coords), scale, good_k],
                    index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i", "pareto_k",
                           "scale", "good_k"])


def waic_data(total: dict[str, Any], scale: str, obs: Any = None, stacklevel: int = 4) -> Any:
    """ArviZ's ``ELPDData`` of a combined WAIC result, with the numbers and names ``az.waic``
    gives (``obs`` as in :func:`loo_data`)."""
    from arviz.stats.stats_utils import ELPDData

    n, n_samples = total["rows"], total["samples"]
    se = float(np.sqrt(n * total["moments"].variance))
    p_waic = total["lppd"] - total["elpd"] / SCALES[scale]
    warn = bool(total["max"] > WAIC_VARIANCE)
    if warn:
        warnings.warn(f"the posterior variance of the log predictive density exceeds {WAIC_VARIANCE} for one or more "
                      "rows: WAIC may be failing; prefer loo()", UserWarning, stacklevel=stacklevel)
    if total["values"] is None:  # az.waic's names, "waic" among them
        return ELPDData(data=[total["elpd"], se, p_waic, n_samples, n, warn, scale],
                        index=["waic", "se", "p_waic", "n_samples", "n_data_points", "warning", "scale"])
    coords = {"obs": np.arange(n) if obs is None else obs}
    waic_i = xr.DataArray(total["values"], dims=("obs",), coords=coords, name="waic_i")
    return ELPDData(data=[total["elpd"], se, p_waic, n_samples, n, warn, waic_i, scale],
                    index=["elpd_waic", "se", "p_waic", "n_samples", "n_data_points", "warning", "waic_i", "scale"])


__all__ = ["SCALES", "LOO_VALUES", "check_scale", "check_pointwise", "block_loo", "block_waic", "combine",
           "in_blocks", "loo_numbers", "loo_data", "waic_data"]
