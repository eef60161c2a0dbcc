"""A model's design whose rows stay in their partitions: names, levels and formulae matrices
at hand, statistics computed partition by partition (:mod:`multilevel.blockstats`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..blockstats import (CrossedStatistics, add_block_sums, add_residual_sums, assemble, block_sums, reference_point,
                          residual_sums)
from ..design import CrossedDesign
from ..errors import ModelError
from ..formula import FormulaSpec
from ..reterms import check_factors, identical_grouping
from .plan import PartitionPlan, make_plan, partition_design, prepare, restore_prototype, transform_states
from .reduce import tree_reduce
from .source import describe_source, open_dask


def dask_compute(values: list[Any]) -> tuple:
    """Compute delayed values on the current Dask scheduler (a distributed client when one is
    active), in the order given."""
    import dask

    return dask.compute(*values)


def partition_block_sums(frame: pd.DataFrame, plan: PartitionPlan, layout: Any) -> Any:
    """First statistics pass over one partition (:func:`multilevel.blockstats.block_sums`)."""
    return block_sums(partition_design(frame, plan), layout)


def partition_residual_sums(frame: pd.DataFrame, plan: PartitionPlan, layout: Any, a_ref: np.ndarray) -> Any:
    """Second statistics pass over one partition (:func:`multilevel.blockstats.residual_sums`)."""
    return residual_sums(partition_design(frame, plan), layout, a_ref)


@dataclass
class PartitionedDesign(CrossedDesign):
    """A :class:`~multilevel.design.CrossedDesign` without rows in memory: its names, factors
    (global levels) and ``formulae`` matrices come from the :class:`PartitionPlan`; its row
    arrays are empty (``frame`` has the columns and their types, no rows: how new data are
    conformed for predictions); :meth:`statistics` runs over the partitions of ``ddf``."""

    ddf: Any = field(default=None, repr=False)
    plan: PartitionPlan | None = field(default=None, repr=False)
    rows: int = 0
    source: str = ""
    compute: Callable[[list[Any]], tuple] = field(default=dask_compute, repr=False)

    in_memory = False

    @property
    def n_obs(self) -> int:
        return self.rows

    @property
    def n_partitions(self) -> int:
        return int(self.ddf.npartitions)

    def statistics(self, layout: Any) -> CrossedStatistics:
        """The Gaussian statistics in two passes over the partitions, each combined in a fixed
        tree (:func:`multilevel.distributed.reduce.tree_reduce`): the same numbers for any
        number of workers."""
        from dask import delayed

        parts = self.ddf.to_delayed()
        plan, shape = delayed(self.plan, pure=True), delayed(layout, pure=True)  # in the graph once, not per task
        (sums,) = self.compute([tree_reduce([delayed(partition_block_sums)(p, plan, shape) for p in parts],
                                            add_block_sums)])
        p = self.F.shape[1]
        check_fixed_rank(sums.G[:p, :p], self.fixed_names)
        a_ref = reference_point(sums, p)
        (resid,) = self.compute([tree_reduce([delayed(partition_residual_sums)(q, plan, shape, a_ref)
                                              for q in parts], add_residual_sums)])
        return CrossedStatistics(assemble(sums, resid, layout, a_ref), sums, resid, layout)


    def level_shards(self, code: int) -> Any:
        """A GLM's rows as shards of whole levels (of the factor with the most levels) on the workers
        (:func:`multilevel.distributed.shards.level_shards`)."""
        from .shards import level_shards

        return level_shards(self, code)


def check_fixed_rank(FtF: np.ndarray, names: list[str]) -> None:
    """Refuse collinear fixed effects, read from F'WF (the rows are not at hand)."""
    if not FtF.size:
        return
    scale = np.sqrt(np.maximum(np.diag(FtF), 1e-300))
    eig, vec = np.linalg.eigh(FtF / np.outer(scale, scale))
    if eig[0] < 1e-10 * max(eig[-1], 1e-300):
        involved = [n for n, v in zip(names, vec[:, 0]) if abs(v) > 1e-3]
        raise ModelError(f"the fixed effects {', '.join(involved)} are collinear (the design is rank deficient); "
                         "remove one of them")


#: the group of a Dask fit that holds what new data are coded by (:func:`coding_dataset`)
CODING_GROUP = "coding_data"


def coding_dataset(design: PartitionedDesign) -> Any:
    """What a saved fit keeps to code new data as the fitted rows were: the prototype's rows
    (the formula's columns, categorical ones with every level learned over all rows, and the
    precision weights), and as attributes the stateful transforms' states learned over all rows
    (``center`` means, ``bs`` knots, ...; the attribute keeps its older name ``constants``) and
    the weights column's name."""
    import json

    from ..convert import frame_to_dataset

    plan = design.plan
    frame = plan.prototype.frame
    if plan.weights is not None and plan.weights not in frame.columns:
        frame = frame.assign(**{plan.weights: plan.prototype.weights})
    ds = frame_to_dataset(frame)
    ds.attrs.update(constants=json.dumps(transform_states(plan.prototype)), weights=plan.weights or "")
    return ds


def restore_design(spec: FormulaSpec, ds: Any, n_obs: int, source: str, family: str = "gaussian") -> PartitionedDesign:
    """The :class:`PartitionedDesign` of a loaded Dask fit from its :func:`coding_dataset`: the
    same coding of new data (levels, transforms' states, formulae matrices), no handle on the fitted
    rows (``ddf`` None); its factors are the prototype's (a prediction takes the fitted levels
    from the posterior)."""
    import json

    from ..convert import dataset_to_frame

    sample = dataset_to_frame(ds)
    weights = ds.attrs.get("weights") or None
    proto = restore_prototype(spec, sample, weights, json.loads(ds.attrs["constants"]), family == "gaussian")
    categories = {c: sample[c].dtype for c in sample.columns if isinstance(sample[c].dtype, pd.CategoricalDtype)}
    plan = PartitionPlan(spec, categories, (), proto, weights, family)
    return design_of_plan(plan, tuple(f.factor for f in proto.factors), n_obs, None, source)


def reattach_design(fit: Any, data: Any, compute: Callable[[list[Any]], tuple] = dask_compute) -> PartitionedDesign:
    """The :class:`PartitionedDesign` of a loaded Dask fit over its rows again (``data`` as
    :func:`build_partitioned_design` takes them): the plan is learned anew, one learning pass
    (missing rows dropped), and must give what the fit recorded: as many rows kept, every
    factor's levels in the same order, and the same states of the stateful transforms (up to
    the rounding of sums), or these are not the rows the fit was made from."""
    import json

    from ..formula import parse_formula

    saved = fit.group(CODING_GROUP)
    weights = (saved.attrs.get("weights") or None) if saved is not None else None
    design = build_partitioned_design(parse_formula(fit.formula), data, "drop", weights, compute, str(fit.family))
    differs = []
    if design.rows != int(fit.attrs.get("n_obs", -1)):
        differs.append(f"{design.rows} rows kept, not {fit.attrs.get('n_obs')}")
    post = fit.posterior
    for factor in design.factors:
        var = fit.beta_variables().get(factor.factor.name)
        if var is not None and list(post[var][post[var].dims[2]].values) != list(factor.factor.labels):
            differs.append(f"other levels of {factor.factor.name}")
    if saved is not None and not _same_numbers(json.loads(saved.attrs["constants"]), transform_states(design.plan.prototype)):
        differs.append("other constants of center(), scale(), spline knots or poly()")
    if differs:
        raise ModelError(f"these are not the rows the fit was made from ({fit.attrs.get('data_source')}): "
                         f"{'; '.join(differs)}; pass the same data")
    return design


def _same_numbers(a: Any, b: Any) -> bool:
    """Whether two JSON-like values have the same structure and numbers (relative 1e-9)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_numbers(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_numbers(u, v) for u, v in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return bool(np.isclose(a, b, rtol=1e-9, atol=1e-12))
    return a == b


def design_of_plan(plan: PartitionPlan, levels: tuple[Any, ...], rows: int, ddf: Any, source: str,
                   compute: Callable[[list[Any]], tuple] = dask_compute) -> PartitionedDesign:
    """The :class:`PartitionedDesign` of ``plan``: the prototype's names and formulae matrices,
    the factors' ``levels`` (global :class:`~multilevel.factors.GroupingFactor`), no rows."""
    proto = plan.prototype
    factors = tuple(replace(f, factor=g, Z=np.zeros((0, f.q))) for f, g in zip(proto.factors, levels))
    values = {x.name: getattr(proto, x.name) for x in fields(CrossedDesign)}
    values.update(y=np.zeros(0), F=np.zeros((0, proto.F.shape[1])), factors=factors, row_labels=pd.RangeIndex(0),
                  frame=proto.frame.iloc[:0], offset=np.zeros(0), offset_argument=None, trials=np.zeros(0),
                  weights=None if plan.weights is None else np.zeros(0))
    return PartitionedDesign(**values, ddf=ddf, plan=plan, rows=rows, source=source, compute=compute)


def build_partitioned_design(spec: FormulaSpec, data: Any, na_action: str = "drop", weights: Any = None,
                             compute: Callable[[list[Any]], tuple] = dask_compute,
                             family: str = "gaussian") -> PartitionedDesign:
    """The :class:`PartitionedDesign` of a model of ``data`` (a Dask DataFrame, an in-memory
    frame, or a Parquet/CSV path, directory or glob): one learning pass
    (:func:`multilevel.distributed.plan.make_plan`); the statistics (Gaussian) or the shards
    (GLMs) come later."""
    columns = list(dict.fromkeys([*spec.variables, *([weights] if isinstance(weights, str) else [])]))
    ddf = open_dask(data, columns=columns if isinstance(data, str) or hasattr(data, "__fspath__") else None)
    plan, levels, rows = make_plan(ddf, spec, na_action, weights, compute, family)
    design = design_of_plan(plan, levels, rows, ddf, describe_source(data), compute)
    check_factors(design.factors, rows, gaussian=family == "gaussian", rows=False)
    check_identical_grouping(design)
    return design


def one_to_one(pairs: np.ndarray | None) -> np.ndarray | None:
    """The distinct (level of a, level of b) rows of ``pairs`` when each level of either factor
    is paired with one level of the other, else None (the factors group these rows differently)."""
    if pairs is None:
        return None
    u = np.unique(pairs, axis=0)
    return u if np.unique(u[:, 0]).size == np.unique(u[:, 1]).size == len(u) else None


def partition_level_pairs(frame: pd.DataFrame, plan: PartitionPlan, pairs: list[tuple[int, int]]) -> list[Any]:
    """For each pair of factors (a, b), :func:`one_to_one` of a partition's rows' levels."""
    _, indices = prepare(frame, plan)
    return [one_to_one(np.stack([indices[a], indices[b]], axis=1)) for a, b in pairs]


def combine_level_pairs(x: list[Any], y: list[Any]) -> list[Any]:
    return [None if u is None or v is None else one_to_one(np.vstack([u, v])) for u, v in zip(x, y)]


def check_identical_grouping(design: PartitionedDesign) -> None:
    """Refuse two factors that group the rows identically (as the in-memory engine does,
    :func:`multilevel.reterms.check_factors`): only factors with as many levels as each other
    can, and for those a pass over the partitions pairs their levels; they group the rows
    alike when every level of one is paired with exactly one level of the other."""
    from dask import delayed

    factors = design.factors
    pairs = [(a, b) for a in range(len(factors)) for b in range(a + 1, len(factors))
             if factors[a].n_levels == factors[b].n_levels]
    if not pairs:
        return
    plan = delayed(design.plan, pure=True)  # in the graph once, not per partition
    parts = [delayed(partition_level_pairs)(p, plan, pairs) for p in design.ddf.to_delayed()]
    (found,) = design.compute([tree_reduce(parts, combine_level_pairs)])
    for (a, b), u in zip(pairs, found):
        if u is not None and len(u) == factors[a].n_levels:
            raise identical_grouping(factors[a].name, factors[b].name)


__all__ = ["CODING_GROUP", "PartitionedDesign", "build_partitioned_design", "coding_dataset", "dask_compute",
           "restore_design"]
