"""After a Dask fit: the pointwise log-likelihood, PSIS-LOO and predictions of new rows,
partition by partition.

* :func:`log_likelihood`: each partition's rows through
  :func:`multilevel.distributed.plan.partition_design` (the fitted coding), their linear
  predictor (:func:`multilevel.predict_crossed.rows_linear_predictor`) and Gaussian
  log-likelihood (:func:`multilevel.families.loglik_by_draws`), the code the in-memory fit
  uses on its stored rows; the partitions' blocks in partition order are the rows in data order.
* :func:`loo`: PSIS-LOO as ``az.loo`` computes it, one partition at a time: the Pareto
  smoothing and the pointwise elpd are per row, so each partition gives its rows' block
  result (:mod:`multilevel.elpd`: sums, moments of the pointwise elpd, largest Pareto k),
  combined in a fixed tree; a task holds chains x draws x a block of its partition's rows
  (:data:`multilevel.elpd.LOO_VALUES`), never all rows.
* :func:`waic`: WAIC as ``az.waic`` computes it, the same way (its pointwise values are per
  row too: log-sum-exp and variance over the draws).
* :func:`predict_partitions`: ``predict(newdata, summary=True)`` of a Dask DataFrame: each
  partition predicted as a pandas frame is, giving a Dask DataFrame of per-row summaries;
  :func:`fitted_partitions`: ``predict()`` of the fitted rows, those of each partition the
  fit kept, the same way.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from .. import elpd
from ..design import missing_rows
from ..errors import ModelError
from ..families import check_family, loglik_by_draws
from ..elpd import SCALES, block_loo, block_waic, check_pointwise, check_scale, combine, loo_data, waic_data
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


def partition_loo(frame: pd.DataFrame, plan: PartitionPlan, draws: dict[str, Any], reff: float, scale: float,
                  pointwise: bool) -> dict[str, Any]:
    """PSIS-LOO of one partition's rows (as ``az.loo``), in blocks of rows of at most
    :data:`multilevel.elpd.LOO_VALUES` log-likelihood values: a block result of
    :mod:`multilevel.elpd` (rows, the sums of the pointwise elpd times ``scale`` and of the
    pointwise lppd, the moments of the pointwise elpd, the largest Pareto k, and with
    ``pointwise`` the pointwise elpd and k themselves)."""
    return design_loo(partition_design(frame, plan), draws, reff, scale, pointwise)


def design_loo(d: Any, draws: dict[str, Any], reff: float, scale: float, pointwise: bool) -> dict[str, Any]:
    """:func:`partition_loo` of a partition's design ``d``."""
    return design_blocks(d, draws, lambda samples: block_loo(samples, reff, scale, pointwise))


def partition_waic(frame: pd.DataFrame, plan: PartitionPlan, draws: dict[str, Any], scale: float,
                   pointwise: bool) -> dict[str, Any]:
    """WAIC of one partition's rows (as ``az.waic``), in blocks as :func:`partition_loo`: the
    same sums and moments of the pointwise elpd_waic, the largest posterior variance of a
    row's log predictive density (``max``), and with ``pointwise`` the pointwise values."""
    return design_blocks(partition_design(frame, plan), draws, lambda samples: block_waic(samples, scale, pointwise))


def design_blocks(d: Any, draws: dict[str, Any], block_of: Any) -> dict[str, Any]:
    """``block_of`` (:func:`multilevel.elpd.block_loo` or :func:`~multilevel.elpd.block_waic`)
    of the rows of a partition's design ``d`` in blocks of at most
    :data:`multilevel.elpd.LOO_VALUES` log-likelihood values, combined."""
    n_samples = int(np.prod(draws["shape"]))
    block = max(1, elpd.LOO_VALUES // n_samples)
    out = block_of(np.zeros((0, n_samples)))
    for start in range(0, d.y.shape[0], block):
        ll = rows_log_likelihood(d, slice(start, start + block), draws)
        samples = np.ascontiguousarray(ll.reshape(n_samples, -1).T)  # (rows, chain x draw): ArviZ's __sample__
        out = combine(out, block_of(samples))
    return out


def loo(fit: Fit, reff: float, pointwise: bool | None = None, scale: str | None = None) -> Any:
    """PSIS-LOO of a Dask fit (module doc): ArviZ's ``ELPDData`` with the elpd_loo, se and
    p_loo that ``az.loo`` gives on the whole pointwise log-likelihood (``reff``, ``scale`` and
    ``pointwise`` as there; the pointwise values are one number per row)."""
    from dask import delayed

    from .design import dask_compute

    pointwise = check_pointwise(pointwise)
    scale = check_scale(scale)
    parts, plan, draws = _partitions(fit, "loo()")
    (total,) = dask_compute([tree_reduce([delayed(partition_loo)(p, plan, draws, reff, SCALES[scale], pointwise)
                                          for p in parts], combine)])
    return loo_data(total, scale, stacklevel=6)


def waic(fit: Fit, pointwise: bool | None = None, scale: str | None = None) -> Any:
    """WAIC of a Dask fit, partition by partition as :func:`loo`: ArviZ's ``ELPDData`` with
    the numbers (and names) ``az.waic`` gives on the whole pointwise log-likelihood."""
    from dask import delayed

    from .design import dask_compute

    pointwise = check_pointwise(pointwise)
    scale = check_scale(scale)
    parts, plan, draws = _partitions(fit, "waic()")
    (total,) = dask_compute([tree_reduce([delayed(partition_waic)(p, plan, draws, SCALES[scale], pointwise)
                                          for p in parts], combine)])
    return waic_data(total, scale, stacklevel=5)


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
