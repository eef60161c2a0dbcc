"""``compare()`` of Dask fits of the same data: ArviZ's comparison table by PSIS-LOO, computed
partition by partition.

``az.compare`` needs each fit's pointwise elpd (one number per row) and, for the standard error
of a difference, the per-row differences between two fits. Here each partition's rows go
through every fit side by side (:func:`partition_comparison`): each fit's PSIS-LOO of them
(:func:`multilevel.distributed.posterior.design_loo`, as ``fit.loo()`` computes it) and the
count, mean and centred sum of squares (:mod:`multilevel.moments`) of the pairwise differences
elpd_i(a) - elpd_i(b) of every two fits. The partitions' results are combined in a fixed tree
in partition order, so no process holds more than a partition's rows, and:

* elpd_loo, p_loo, se and warning of each fit are ``fit.loo()``'s;
* elpd_diff = sum_i of the difference from the best fit, dse = sqrt(n var(difference)), as
  ``az.compare`` computes them from the pointwise values;
* weight: pseudo-BMA (``az.compare(..., method="pseudo-BMA")``), w_k proportional to
  exp((elpd_k - elpd_best) / scale), computable from each fit's elpd alone. ArviZ's default,
  stacking, optimises the weights over every row's pointwise elpd of every fit at once (and
  Bayesian-bootstrap pseudo-BMA resamples them), which is the matrix a Dask fit does not hold.

The table has ``az.compare``'s columns (rank, elpd_loo, p_loo, elpd_diff, weight, se, dse,
warning, scale), rows sorted best first, its attrs naming the weighting method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import ModelError
from ..moments import Moments, combine_moments, moments_of
from .plan import PartitionPlan, partition_design
from ..elpd import SCALES, check_scale, combine, loo_numbers
from .posterior import design_loo, partitioned_design_of, partitions_of, posterior_draws
from .reduce import tree_reduce

if TYPE_CHECKING:
    from ..result import Fit

#: the weighting method of a comparison of Dask fits (module doc)
METHOD = "pseudo-BMA"


def partition_comparison(frames: list[pd.DataFrame], plans: list[PartitionPlan], draws: list[dict[str, Any]],
                         reffs: list[float], scale: float, names: list[str], number: int) -> dict[str, Any]:
    """One partition's rows through every fit (module doc): each fit's PSIS-LOO sums (without
    pointwise values) and the :class:`~multilevel.moments.Moments` of the (rows, fits, fits)
    pairwise differences of their pointwise elpd. The fits must have kept the same rows with
    the same responses, else a one-line refusal."""
    designs = [partition_design(f, p) for f, p in zip(frames, plans)]
    for name, d in zip(names[1:], designs[1:]):
        if d.y.shape != designs[0].y.shape or not np.allclose(d.y, designs[0].y):
            raise ModelError(f"fits {names[0]!r} and {name!r} have different rows or responses in partition {number} "
                             f"({designs[0].y.shape[0]} and {d.y.shape[0]} rows kept); compare models fitted to the "
                             "same data (rows with missing values in either formula's columns dropped from both)")
    loos = [design_loo(d, dr, r, scale, True) for d, dr, r in zip(designs, draws, reffs)]
    elpd = np.stack([x["values"] for x in loos], axis=1)  # (rows, fits)
    diffs = moments_of(elpd[:, :, None] - elpd[:, None, :])
    return {"loo": [dict(x, values=None, k=None) for x in loos], "diffs": diffs}


def combine_comparisons(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two :func:`partition_comparison` results as one (a's rows first)."""
    return {"loo": [combine(x, y) for x, y in zip(a["loo"], b["loo"])],
            "diffs": combine_moments(a["diffs"], b["diffs"])}


def check_same_data(fits: dict[str, Fit]) -> None:
    """Refuse in one line Dask fits of different data: another source, number of rows kept or
    partitioning (the partitions' rows are compared as they are read)."""
    def data(fit: Fit) -> tuple[str, int, int]:
        design = partitioned_design_of(fit, "compare()", "compare the fits in the session that made them")
        return str(fit.attrs.get("data_source")), int(fit.attrs.get("n_obs", -1)), design.n_partitions

    (first, fit0), *rest = fits.items()
    want = data(fit0)
    for name, fit in rest:
        got = data(fit)
        if got != want:
            raise ModelError(f"fits {first!r} and {name!r} were fitted to different data ({want[0]}, {want[1]} rows "
                             f"in {want[2]} partitions; {got[0]}, {got[1]} rows in {got[2]} partitions); compare "
                             "models fitted to the same data")


def check_options(ic: str, kwargs: dict[str, Any]) -> str | None:
    """The ``scale`` of a comparison of Dask fits, refusing in one line what it cannot do."""
    if ic != "loo":
        raise ModelError(f"compare() of Dask fits ranks them by PSIS-LOO (ic='loo'), not {ic!r}: WAIC would need "
                         "every row's log-likelihood in one place")
    method = kwargs.pop("method", None)
    if method is not None and str(method).lower() != METHOD.lower():
        raise ModelError(f"compare() of Dask fits weighs them by method='{METHOD}', not {method!r}: stacking and "
                         "BB-pseudo-BMA need every row's pointwise elpd of every fit in one place")
    scale = kwargs.pop("scale", None)
    if kwargs:
        raise ModelError(f"compare() of Dask fits takes scale and method, not {', '.join(sorted(kwargs))}")
    return scale


def comparison_table(names: list[str], total: dict[str, Any], scale: str) -> pd.DataFrame:
    """``az.compare``'s table (module doc) from the combined partition results."""
    sign = SCALES[scale]
    numbers = [loo_numbers(x, scale, stacklevel=5) for x in total["loo"]]
    elpd = np.array([x["elpd"] for x in total["loo"]])
    order = np.argsort(-elpd if sign > 0 else elpd, kind="stable")
    best = order[0]
    weights = np.exp((elpd - elpd[best]) / sign)
    weights /= weights.sum()
    diffs: Moments = total["diffs"]
    rows = []
    for rank, k in enumerate(order):
        a, b = (best, k) if sign > 0 else (k, best)  # az.compare's difference: the better minus the other
        rows.append({"rank": rank, "elpd_loo": elpd[k], "p_loo": numbers[k][1],
                     "elpd_diff": float(diffs.count * diffs.mean[a, b]), "weight": float(weights[k]),
                     "se": numbers[k][0], "dse": float(np.sqrt(diffs.m2[a, b])), "warning": numbers[k][2],
                     "scale": scale})
    table = pd.DataFrame(rows, index=[names[k] for k in order])
    table.attrs["method"] = METHOD
    return table


def compare(fits: dict[str, Fit], ic: str = "loo", **kwargs: Any) -> pd.DataFrame:
    """Compare Dask fits of the same data by PSIS-LOO, partition by partition (module doc)."""
    from dask import delayed

    from ..comparison import _reff
    from .design import dask_compute

    scale = check_scale(check_options(ic, dict(kwargs)))
    check_same_data(fits)
    names = list(fits)
    designs = [f._design for f in fits.values()]
    plans = [delayed(d.plan, pure=True) for d in designs]
    draws = [delayed(posterior_draws(f), pure=True) for f in fits.values()]
    reffs = [_reff(f) for f in fits.values()]
    parts = zip(*(partitions_of(d.ddf) for d in designs))  # partition i of every fit: the same rows
    tasks = [delayed(partition_comparison)(list(frames), plans, draws, reffs, SCALES[scale], names, i)
             for i, frames in enumerate(parts)]
    (total,) = dask_compute([tree_reduce(tasks, combine_comparisons)])
    return comparison_table(names, total, scale)


__all__ = ["METHOD", "combine_comparisons", "compare", "comparison_table", "partition_comparison"]
