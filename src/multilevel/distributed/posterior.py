"""After a Dask fit: the pointwise log-likelihood, PSIS-LOO and predictions of new rows,
partition by partition.

* :func:`log_likelihood`: each partition's rows through
  :func:`multilevel.distributed.plan.partition_design` (the fitted coding), their linear
  predictor (:func:`multilevel.predict_crossed.rows_linear_predictor`) and Gaussian
  log-likelihood (:func:`multilevel.families.loglik_by_draws`), the code the in-memory fit
  uses on its stored rows; the partitions' blocks in partition order are the rows in data order.
* :func:`loo`: PSIS-LOO as ``az.loo`` computes it, one partition at a time: the Pareto
  smoothing (ArviZ's ``psislw``) and the pointwise elpd are per row, so each partition gives
  its rows' sums (elpd, lppd), the count, mean and centred sum of squares of its pointwise
  elpd (for the standard error, :mod:`multilevel.moments`) and its largest Pareto k, combined
  in a fixed tree; a task holds chains x draws x a block of its partition's rows
  (:data:`LOO_VALUES`), never all rows.
* :func:`waic`: WAIC as ``az.waic`` computes it, the same way (its pointwise values are per
  row too: log-sum-exp and variance over the draws).
* :func:`predict_partitions`: ``predict(newdata, summary=True)`` of a Dask DataFrame: each
  partition predicted as a pandas frame is, giving a Dask DataFrame of per-row summaries;
  :func:`fitted_partitions`: ``predict()`` of the fitted rows, those of each partition the
  fit kept, the same way.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from ..design import missing_rows
from ..errors import ModelError
from ..families import check_family, loglik_by_draws
from ..moments import combine_moments, moments_of
from ..predict_crossed import deviations, fixed_effect_draws, rows_linear_predictor
from .plan import PartitionPlan, partition_design
from .reduce import tree_reduce

if TYPE_CHECKING:
    from ..result import Fit


#: what a loaded Dask fit's refusal of work over the fitted rows suggests, unless told otherwise
IN_SESSION = "compute it in the session that made the fit (fit.add_log_likelihood() before saving)"


def partitioned_design_of(fit: Fit, what: str, fix: str = IN_SESSION) -> Any:
    """The :class:`~multilevel.distributed.design.PartitionedDesign` (its partitions at hand)
    of a Dask fit, or a one-line refusal of ``what`` that names the ``fix``."""
    design = fit._design
    if design is None or getattr(design, "ddf", None) is None:
        raise ModelError(f"{what} reads the fitted rows again, partition by partition, from "
                         f"{fit.attrs.get('data_source')}; a Dask fit loaded from a file has no handle on them: {fix}, or give "
                         "it its rows again with fit.attach(data)")
    return design


def posterior_draws(fit: Fit, idx: np.ndarray | None = None) -> dict[str, Any]:
    """What a partition's log-likelihood needs of the posterior (draws ``idx`` of each chain,
    default all): the fixed effects' draws by column, each factor's deviations b (chain, draw,
    level, term) and the family's dispersion (:attr:`multilevel.families.Family.dispersion`: sigma2,
    the negative binomial's phi; None without one), under ``"sigma2"``."""
    post = fit.posterior
    idx = np.arange(post.sizes["draw"]) if idx is None else np.asarray(idx)
    fixed = fixed_effect_draws(fit, idx)
    family = check_family(fit.family)
    name = family.dispersion
    return {"fixed": fixed, "effects": {f: deviations(fit, f, idx, fixed)[0] for f in fit.sigma_variables()},
            "sigma2": post[name].values[:, idx] if name is not None and name in post else None,
            "family": family, "shape": (post.sizes["chain"], idx.shape[0])}


def rows_eta(d: Any, rows: slice, draws: dict[str, Any], sl: slice = slice(None)) -> np.ndarray:
    """The linear predictor (chain, draws ``sl``, rows) of the ``rows`` of a partition's design ``d``."""
    return rows_linear_predictor(d.F[rows], d.fixed_names, {k: v[:, sl] for k, v in draws["fixed"].items()},
                                 [(f.Z[rows], f.factor.index[rows], draws["effects"][f.name][:, sl])
                                  for f in d.factors], d.offset[rows])


def rows_log_likelihood(d: Any, rows: slice, draws: dict[str, Any]) -> np.ndarray:
    """Pointwise log-likelihood (chain, draw, rows) of the ``rows`` of a partition's design ``d``."""
    weights = None if d.weights is None else d.weights[rows]
    n_chain, n_draw = draws["shape"]
    return loglik_by_draws(draws["family"], d.y[rows], d.trials[rows], lambda sl: rows_eta(d, rows, draws, sl),
                           n_chain, n_draw, draws["sigma2"], weights)


def partition_log_likelihood(frame: pd.DataFrame, plan: PartitionPlan, draws: dict[str, Any]) -> np.ndarray:
    """Pointwise log-likelihood (chain, draw, rows) of one partition's rows kept (data order)."""
    return rows_log_likelihood(partition_design(frame, plan), slice(None), draws)


def _partitions(fit: Fit, what: str) -> tuple[list[Any], Any, Any]:
    """The fit's partitions (delayed), and its plan and posterior draws as delayed values (in
    the task graph once, not per task)."""
    from dask import delayed

    design = partitioned_design_of(fit, what)
    return design.ddf.to_delayed(), delayed(design.plan, pure=True), delayed(posterior_draws(fit), pure=True)


def log_likelihood(fit: Fit) -> xr.DataArray:
    """The pointwise log-likelihood (chain, draw, obs) of a Dask fit's rows, computed partition
    by partition and joined in partition order: chains x draws x rows numbers in memory."""
    from dask import delayed

    from .design import dask_compute

    parts, plan, draws = _partitions(fit, "the log-likelihood")
    blocks = dask_compute([delayed(partition_log_likelihood)(p, plan, draws) for p in parts])
    out = np.concatenate(blocks, axis=-1)
    post = fit.posterior
    return xr.DataArray(out, dims=("chain", "draw", "obs"), name="y",
                        coords={"chain": post["chain"], "draw": post["draw"], "obs": np.arange(out.shape[-1])})


#: log-likelihood values (chains x draws x rows) a LOO task holds at once: a partition's rows
#: are taken in blocks of at most this many values
LOO_VALUES = 20_000_000


def partition_loo(frame: pd.DataFrame, plan: PartitionPlan, draws: dict[str, Any], reff: float, scale: float,
                  pointwise: bool) -> dict[str, Any]:
    """PSIS-LOO of one partition's rows (as ``az.loo``), in blocks of rows of at most
    :data:`LOO_VALUES` log-likelihood values: rows, the sums of the pointwise elpd (times
    ``scale``) and of the pointwise lppd, the moments of the pointwise elpd, the largest
    Pareto k (``max``), and with ``pointwise`` the pointwise elpd (``values``) and k themselves."""
    return design_loo(partition_design(frame, plan), draws, reff, scale, pointwise)


def design_loo(d: Any, draws: dict[str, Any], reff: float, scale: float, pointwise: bool) -> dict[str, Any]:
    """:func:`partition_loo` of a partition's design ``d``."""
    return design_blocks(d, draws, lambda samples: _block_loo(samples, reff, scale, pointwise))


def partition_waic(frame: pd.DataFrame, plan: PartitionPlan, draws: dict[str, Any], scale: float,
                   pointwise: bool) -> dict[str, Any]:
    """WAIC of one partition's rows (as ``az.waic``), in blocks as :func:`partition_loo`: the
    same sums and moments of the pointwise elpd_waic, the largest posterior variance of a
    row's log predictive density (``max``), and with ``pointwise`` the pointwise values."""
    return design_blocks(partition_design(frame, plan), draws, lambda samples: _block_waic(samples, scale, pointwise))


def design_blocks(d: Any, draws: dict[str, Any], block_of: Any) -> dict[str, Any]:
    """``block_of`` (:func:`_block_loo` or :func:`_block_waic`) of the rows of a partition's
    design ``d`` in blocks of at most :data:`LOO_VALUES` log-likelihood values, combined
    (:func:`combine_loo`)."""
    n_samples = int(np.prod(draws["shape"]))
    block = max(1, LOO_VALUES // n_samples)
    out = block_of(np.zeros((0, n_samples)))
    for start in range(0, d.y.shape[0], block):
        ll = rows_log_likelihood(d, slice(start, start + block), draws)
        samples = np.ascontiguousarray(ll.reshape(n_samples, -1).T)  # (rows, chain x draw): ArviZ's __sample__
        out = combine_loo(out, block_of(samples))
    return out


def _pointwise_sums(samples: np.ndarray, elpd_i: np.ndarray, lppd: np.ndarray, largest: np.ndarray,
                    k: np.ndarray | None, pointwise: bool) -> dict[str, Any]:
    """A block's result (:func:`partition_loo`) from its pointwise values."""
    return {"rows": samples.shape[0], "samples": samples.shape[1], "elpd": float(np.sum(elpd_i)),
            "lppd": float(np.sum(lppd)), "moments": moments_of(elpd_i), "max": float(np.max(largest, initial=-np.inf)),
            "values": elpd_i if pointwise else None, "k": np.asarray(k) if pointwise and k is not None else None}


def _block_loo(samples: np.ndarray, reff: float, scale: float, pointwise: bool) -> dict[str, Any]:
    """:func:`partition_loo` of the rows of ``samples`` (rows, samples): ArviZ's ``psislw``
    and the log-sum-exps of ``az.loo``."""
    from arviz import psislw
    from arviz.stats.stats_utils import logsumexp

    if samples.shape[0]:
        log_weights, k = psislw(-samples, reff)
        log_weights += samples
        loo_i = scale * logsumexp(log_weights, axis=-1)
        lppd = logsumexp(samples, b_inv=samples.shape[1], axis=-1)
    else:
        loo_i, lppd, k = np.zeros(0), np.zeros(0), np.zeros(0)
    return _pointwise_sums(samples, loo_i, lppd, k, k, pointwise)


def _block_waic(samples: np.ndarray, scale: float, pointwise: bool) -> dict[str, Any]:
    """:func:`partition_waic` of the rows of ``samples`` (rows, samples), as ``az.waic``:
    elpd_waic_i = scale (lppd_i - var_s log p(y_i | s))."""
    from arviz.stats.stats_utils import logsumexp

    if samples.shape[0]:
        lppd = logsumexp(samples, b_inv=samples.shape[1], axis=-1)
        var_lpd = samples.var(axis=-1)
    else:
        lppd, var_lpd = np.zeros(0), np.zeros(0)
    return _pointwise_sums(samples, scale * (lppd - var_lpd), lppd, var_lpd, None, pointwise)


def combine_loo(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two :func:`partition_loo` (or :func:`partition_waic`) results as one (a's rows first)."""
    def join(name: str) -> np.ndarray | None:
        return None if a[name] is None else np.concatenate([a[name], b[name]])

    return {"rows": a["rows"] + b["rows"], "samples": a["samples"], "elpd": a["elpd"] + b["elpd"],
            "lppd": a["lppd"] + b["lppd"], "moments": combine_moments(a["moments"], b["moments"]),
            "max": max(a["max"], b["max"]), "values": join("values"), "k": join("k")}


SCALES = {"log": 1.0, "negative_log": -1.0, "deviance": -2.0}


def loo_numbers(total: dict[str, Any], scale: str, stacklevel: int = 4) -> tuple[float, float, bool, float]:
    """The se, p_loo, warning and good_k of a combined :func:`partition_loo` result as
    ``az.loo`` gives them (warning as it does when a Pareto k is above good_k)."""
    n_samples = total["samples"]
    se = float(np.sqrt(total["rows"] * total["moments"].variance))
    p_loo = total["lppd"] - total["elpd"] / SCALES[scale]
    good_k = min(1 - 1 / np.log10(n_samples), 0.7)
    warn = bool(total["max"] > good_k)
    if warn:
        warnings.warn(f"Pareto k above {good_k:.2f} for one or more rows: PSIS-LOO is unreliable for them "
                      "(influential rows, or a LOO posterior far from the full one)", UserWarning, stacklevel=stacklevel)
    return se, p_loo, warn, good_k


def check_scale(scale: str | None) -> str:
    """ArviZ's ``stats.ic_scale`` (None) or ``scale``, one of :data:`SCALES`, or a one-line refusal."""
    from arviz import rcParams

    scale = rcParams["stats.ic_scale"] if scale is None else str(scale).lower()
    if scale not in SCALES:
        raise ModelError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    return scale


def loo(fit: Fit, reff: float, pointwise: bool | None = None, scale: str | None = None) -> Any:
    """PSIS-LOO of a Dask fit (module doc): ArviZ's ``ELPDData`` with the elpd_loo, se and
    p_loo that ``az.loo`` gives on the whole pointwise log-likelihood (``reff``, ``scale`` and
    ``pointwise`` as there; the pointwise values are one number per row)."""
    from arviz import rcParams
    from arviz.stats.stats_utils import ELPDData
    from dask import delayed

    from .design import dask_compute

    pointwise = rcParams["stats.ic_pointwise"] if pointwise is None else bool(pointwise)
    scale = check_scale(scale)
    parts, plan, draws = _partitions(fit, "loo()")
    (total,) = dask_compute([tree_reduce([delayed(partition_loo)(p, plan, draws, reff, SCALES[scale], pointwise)
                                          for p in parts], combine_loo)])
    n, n_samples = total["rows"], total["samples"]
    se, p_loo, warn, good_k = loo_numbers(total, scale)
    if not pointwise:
        return ELPDData(data=[total["elpd"], se, p_loo, n_samples, n, warn, scale, good_k],
                        index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "scale", "good_k"])
    obs = {"obs": np.arange(n)}
    return ELPDData(data=[total["elpd"], se, p_loo, n_samples, n, warn,
                          xr.DataArray(total["values"], dims=("obs",), coords=obs, name="loo_i"),
                          xr.DataArray(total["k"], dims=("obs",), coords=obs), scale, good_k],
                    index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i", "pareto_k",
                           "scale", "good_k"])


#: az.waic's warning: a row whose log predictive density varies more than this over the draws
WAIC_VARIANCE = 0.4


def waic(fit: Fit, pointwise: bool | None = None, scale: str | None = None) -> Any:
    """WAIC of a Dask fit, partition by partition as :func:`loo`: ArviZ's ``ELPDData`` with
    the numbers (and names) ``az.waic`` gives on the whole pointwise log-likelihood."""
    from arviz import rcParams
    from arviz.stats.stats_utils import ELPDData
    from dask import delayed

    from .design import dask_compute

    pointwise = rcParams["stats.ic_pointwise"] if pointwise is None else bool(pointwise)
    scale = check_scale(scale)
    parts, plan, draws = _partitions(fit, "waic()")
    (total,) = dask_compute([tree_reduce([delayed(partition_waic)(p, plan, draws, SCALES[scale], pointwise)
                                          for p in parts], combine_loo)])
    n, n_samples = total["rows"], total["samples"]
    se = float(np.sqrt(n * total["moments"].variance))
    p_waic = total["lppd"] - total["elpd"] / SCALES[scale]
    warn = bool(total["max"] > WAIC_VARIANCE)
    if warn:
        warnings.warn(f"the posterior variance of the log predictive density exceeds {WAIC_VARIANCE} for one or more "
                      "rows: WAIC may be failing; prefer loo()", UserWarning, stacklevel=3)
    if not pointwise:  # az.waic's names, "waic" among them
        return ELPDData(data=[total["elpd"], se, p_waic, n_samples, n, warn, scale],
                        index=["waic", "se", "p_waic", "n_samples", "n_data_points", "warning", "scale"])
    waic_i = xr.DataArray(total["values"], dims=("obs",), coords={"obs": np.arange(n)}, name="waic_i")
    return ELPDData(data=[total["elpd"], se, p_waic, n_samples, n, warn, waic_i, scale],
                    index=["elpd_waic", "se", "p_waic", "n_samples", "n_data_points", "warning", "waic_i", "scale"])


def is_dask_frame(data: Any) -> bool:
    """Whether ``data`` is a Dask DataFrame (without importing Dask when it is not)."""
    return type(data).__module__.split(".")[0] == "dask" and hasattr(data, "to_delayed") and hasattr(data, "columns")


def with_columns(frame: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The rows' columns followed by their predictions ``table`` (the same rows in order;
    ``pred_<name>`` where a name is taken)."""
    table = table.rename(columns={c: f"pred_{c}" for c in table.columns if c in frame.columns})
    return frame.assign(**{str(c): table[c].to_numpy() for c in table.columns})


def predict_partition(frame: pd.DataFrame, fit: Fit, options: dict[str, Any], entropy: int, number: int,
                      kept: tuple[str, ...] | None = None, columns: bool = False) -> pd.DataFrame:
    """``fit.predict(frame, summary=True, **options)`` of one partition (with ``kept``, of its
    rows the fit kept: :func:`fitted_rows`), its random numbers from the seed sequence
    (``entropy``, spawn key ``number``); ``columns``: after the rows' own columns."""
    from ..predict import predict

    if kept is not None:
        frame = fitted_rows(frame, kept)
    rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(number,)))
    table = predict(fit, frame, seed=rng, summary=True, **options)
    return with_columns(frame, table) if columns else table


def partitions_of(ddf: Any) -> list[Any]:
    """The partitions of a Dask DataFrame as delayed values, one per partition as its
    ``npartitions`` and ``divisions`` count them (the graph not optimised, which may fuse
    small partitions), so partition numbers mean the same in every computation."""
    return list(ddf.to_delayed(optimize_graph=False))


def seed_entropy(seed: Any) -> int:
    """The entropy of the seed sequence a partitioned computation spawns its random numbers
    from: a seed (an integer), one drawn from a Generator, or fresh entropy (None)."""
    from ..predict import make_rng

    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**63))
    make_rng(seed)  # refuses a bad seed in one line
    return int(seed) if seed is not None else int(np.random.SeedSequence().entropy)


def fitted_rows(frame: pd.DataFrame, variables: tuple[str, ...]) -> pd.DataFrame:
    """The rows of a partition the fit kept: those with no missing or infinite value in the
    formula's columns (as :func:`multilevel.distributed.plan.prepare` keeps them)."""
    bad, _ = missing_rows(frame[list(variables)])
    return frame.loc[~bad]


#: how a loaded Dask fit's refusal of predictions of the fitted rows says to get them
PASS_DATA = "pass the data again as newdata, e.g. fit.predict(dask_frame, summary=True)"


def fitted_partitions(fit: Fit, seed: Any, summary: bool, hdi_prob: float, **options: Any) -> Any:
    """``predict()`` without new data of a Dask fit: :func:`predict_partitions` of the fitted
    rows (:func:`fitted_rows` of each partition), a lazy Dask DataFrame indexed as the data;
    Gaussian ``kind="response"`` draws with the rows' precision weights, as the in-memory
    fit's fitted values do."""
    if not summary:
        raise ModelError("predict() of a Dask fit's rows gives each row's summary (summary=True), as a Dask "
                         "DataFrame; the draws of every row would not fit in memory: predict a pandas frame of the "
                         "rows you need for draws")
    design = partitioned_design_of(fit, "predict() without new data", PASS_DATA)
    plan = design.plan
    if options.get("kind") == "response" and plan.weights and plan.family == "gaussian":
        options = dict(options, weights=plan.weights)
    return predict_partitions(fit, design.ddf, seed, summary, hdi_prob, kept=tuple(plan.spec.variables), **options)


def partition_residuals(frame: pd.DataFrame, fitted: pd.DataFrame, plan: PartitionPlan, options: dict[str, Any]
                        ) -> pd.Series:
    """One partition's residuals (:func:`multilevel.accessors.residual_values`) from its rows
    and their fitted means (``fitted``, the partition of :func:`fitted_partitions`)."""
    from ..accessors import residual_values

    d = partition_design(frame, plan)
    mu = fitted["mean"].to_numpy()
    return pd.Series(residual_values(y=d.y, n=d.trials, mu=mu, weights=d.weights, **options), index=fitted.index)


def residual_partitions(fit: Fit, options: dict[str, Any]) -> Any:
    """``residuals()`` of a Dask fit: a lazy Dask Series, each partition's rows against their
    fitted means (:func:`fitted_partitions`, partition by partition alike)."""
    import dask.dataframe as dd
    from dask import delayed

    design = partitioned_design_of(fit, "residuals()", "compute them in the session that made the fit")
    fitted = fit.predict(kind="mean", summary=True)
    plan = delayed(design.plan, pure=True)
    parts = [delayed(partition_residuals)(p, m, plan, options)
             for p, m in zip(partitions_of(design.ddf), partitions_of(fitted))]
    return dd.from_delayed(parts, meta=pd.Series(dtype=float), divisions=fitted.divisions, verify_meta=False)


def predict_partitions(fit: Fit, newdata: Any, seed: Any, summary: bool, hdi_prob: float,
                       kept: tuple[str, ...] | None = None, columns: bool = False, **options: Any) -> Any:
    """Predictions of the rows of a Dask DataFrame: a Dask DataFrame (lazy; ``.compute()`` or
    ``.to_parquet()`` it) indexed like ``newdata``, of each row's posterior mean, sd and HDI,
    each partition predicted as a pandas frame is. Rows of a level not seen in fitting share
    one drawn effect within a partition; each partition draws its random numbers from the
    seed sequence of ``seed`` spawned by partition number, so the summaries depend on the seed
    and the partitioning, not on the scheduler or the number of workers. ``kept``: the rows
    the fit kept only (:func:`fitted_partitions`); ``columns``: each row's columns first
    (:func:`with_columns`)."""
    import dask.dataframe as dd
    from dask import delayed

    from ..diagnostics import hdi_names
    from ..result import Fit

    if not summary:
        raise ModelError("predict() of a Dask DataFrame gives each row's summary (summary=True), as a Dask "
                         "DataFrame; the draws of every row would not fit in memory: predict a pandas frame for draws")
    entropy = seed_entropy(seed)
    design = fit.design
    if getattr(design, "ddf", None) is not None:  # the coding only: a task needs no handle on the fitted rows
        design = dataclasses.replace(design, ddf=None)
    groups = {name: fit.group(name) for name in ("posterior", "constant_data") if fit.group(name) is not None}
    shipped = delayed(Fit(groups, design=design), pure=True)
    options = dict(options, hdi_prob=hdi_prob)
    lo, hi = hdi_names(hdi_prob)
    meta = pd.DataFrame({c: pd.Series(dtype=float) for c in ("mean", "sd", lo, hi)}, index=newdata._meta.index[:0])
    meta = with_columns(newdata._meta, meta) if columns else meta
    parts = [delayed(predict_partition)(p, shipped, options, entropy, i, kept, columns)
             for i, p in enumerate(partitions_of(newdata))]
    return dd.from_delayed(parts, meta=meta, divisions=newdata.divisions, verify_meta=False)


__all__ = ["fitted_partitions", "fitted_rows", "residual_partitions", "is_dask_frame", "log_likelihood", "loo", "partition_log_likelihood",
           "partition_loo", "partition_waic", "partitions_of", "predict_partitions", "seed_entropy", "waic",
           "with_columns"]
