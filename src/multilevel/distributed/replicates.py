"""Posterior predictive checks of a Dask fit: replicated responses of a random sample of the
fitted rows, chosen partition by partition.

An in-memory fit's ``posterior_predictive`` group holds a replicate of every row for every
draw (chains x draws x rows numbers), which a fit of data beyond memory cannot hold. What a
check needs is the distribution of the responses, which a random sample of rows shows
unbiased. :func:`replicate_sample` takes a simple random sample, without replacement, of
``rows`` of the fitted rows (all of them when there are no more) and draws their replicates:

* the sample is chosen partition by partition (bottom-k sampling): each kept row of partition
  p gets a uniform key from the seed sequence of ``seed`` with spawn key (0, p); each partition
  offers its ``rows`` smallest keys, and the offers are combined in a fixed tree
  (:func:`multilevel.distributed.reduce.tree_reduce`) keeping the ``rows`` smallest overall.
  Every set of ``rows`` rows is equally likely, and the sample depends on the seed and the
  partitioning only, never on the scheduler or the number of workers;
* the sampled rows, in data order, are coded as the fitted rows were
  (:func:`multilevel.distributed.plan.partition_design`) and their replicates drawn as
  :func:`multilevel.predict.posterior_predictive` draws an in-memory fit's: the draw's group
  effects, the family's noise, the rows' precision weights and trials, from spawn key (1,).

The observed responses of the sample (``observed_data``) and their replicates
(``posterior_predictive``) have the same ``obs`` dimension, so ``az.plot_ppc(fit.idata)``
compares them; coordinates ``row`` (the data's index labels), ``partition``, ``trials`` and
``index_<factor>`` (each row's level position) describe the rows, and the groups' attributes
say how they were sampled.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import ModelError
from .plan import partition_design
from .posterior import (fitted_rows, partitioned_design_of, partitions_of, posterior_draws, rows_eta,
                        seed_entropy)
from .reduce import tree_reduce

if TYPE_CHECKING:
    from ..result import Fit

#: rows a Dask fit's posterior predictive check replicates by default
PPC_ROWS = 1000

#: how the groups' attributes describe the sample
SAMPLING = ("simple random sample without replacement of the fitted rows, chosen partition by partition "
            "(bottom-k of seeded uniform keys)")


def partition_offer(frame: pd.DataFrame, variables: tuple[str, ...], entropy: int, number: int,
                    size: int) -> dict[str, Any]:
    """Partition ``number``'s candidates: its ``size`` kept rows of smallest keys, their keys,
    partition number and positions among the partition's kept rows, and its count of kept rows."""
    kept = fitted_rows(frame, variables)
    keys = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(0, number))).random(len(kept))
    order = np.argsort(keys, kind="stable")[:size]
    return {"rows": kept.iloc[order], "key": keys[order], "partition": np.full(order.shape[0], number),
            "position": order, "count": len(kept), "size": size}


def combine_offers(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The ``size`` candidates of smallest keys of two offers (ties by partition, position)."""
    key, part, pos = (np.concatenate([a[k], b[k]]) for k in ("key", "partition", "position"))
    keep = np.lexsort((pos, part, key))[:a["size"]]
    rows = pd.concat([a["rows"], b["rows"]])
    return {"rows": rows.iloc[keep], "key": key[keep], "partition": part[keep], "position": pos[keep],
            "count": a["count"] + b["count"], "size": a["size"]}


def check_rows(rows: Any) -> int:
    """``rows`` (the sample's size), a positive integer, or a one-line refusal."""
    if isinstance(rows, bool) or not isinstance(rows, numbers.Integral) or rows < 1:
        raise ModelError(f"rows must be a positive integer (the number of fitted rows to replicate), got {rows!r}")
    return int(rows)


def sample_rows(fit: Fit, entropy: int, rows: int) -> tuple[pd.DataFrame, np.ndarray, int]:
    """The sampled rows of a Dask fit in data order, their partition numbers, and the number of
    fitted rows (module doc)."""
    from dask import delayed

    from .design import dask_compute

    design = partitioned_design_of(fit, "posterior_predictive()",
                                   "call fit.posterior_predictive() before saving (the sample is saved), or fit again")
    variables = tuple(design.plan.spec.variables)
    offers = [delayed(partition_offer)(p, variables, entropy, i, rows) for i, p in enumerate(partitions_of(design.ddf))]
    (total,) = dask_compute([tree_reduce(offers, combine_offers)])
    order = np.lexsort((total["position"], total["partition"]))
    return total["rows"].iloc[order], total["partition"][order], int(total["count"])


def replicate_sample(fit: Fit, seed: Any = None, rows: int = PPC_ROWS,
                     draws: int | None = None) -> tuple[xr.Dataset, xr.DataArray]:
    """The observed responses (``observed_data``, variable ``y``) of a random sample of ``rows``
    of a Dask fit's rows and their replicates y_rep (chain, draw, obs), one per posterior draw
    (``draws``: this many evenly spaced per chain), chosen and drawn from ``seed`` (module doc)."""
    from ..convert import index_values
    from ..families import check_family
    from ..predict import dispersion, draw_positions, draw_response

    rows = check_rows(rows)
    entropy = seed_entropy(seed)
    frame, partition, count = sample_rows(fit, entropy, rows)
    d = partition_design(frame, fit._design.plan)
    family = check_family(fit.family)
    post = fit.posterior
    idx = draw_positions(post.sizes["draw"], draws)
    eta = rows_eta(d, slice(None), posterior_draws(fit, idx))
    rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(1,)))
    y_rep = draw_response(family, eta, rng, sigma2=dispersion(post, family, idx), trials=d.trials, weights=d.weights)
    n = d.y.shape[0]
    coords: dict[str, Any] = {"obs": np.arange(n), "row": ("obs", index_values(frame.index)),
                              "partition": ("obs", partition), "trials": ("obs", np.asarray(d.trials, dtype=float))}
    coords.update({f"index_{f.name}": ("obs", np.asarray(f.factor.index)) for f in d.factors})
    attrs = {"sampling": SAMPLING, "sampled_rows": n, "fitted_rows": count, "seed": str(entropy)}
    y = d.y if family.is_gaussian else np.asarray(np.rint(d.y), dtype=np.int64)
    observed = xr.Dataset({"y": xr.DataArray(y, dims=("obs",), coords=coords)}, attrs=attrs)
    out = xr.DataArray(np.asarray(y_rep, dtype=float if family.is_gaussian else np.int64), dims=("chain", "draw", "obs"),
                       name="y", coords={"chain": post["chain"].values, "draw": post["draw"].values[idx], **coords},
                       attrs=attrs)
    return observed, out


def is_sample(fit: Fit) -> bool:
    """Whether the fit's ``observed_data`` and ``posterior_predictive`` groups hold a
    :func:`replicate_sample` (of a Dask fit)."""
    pp, obs = fit.group("posterior_predictive"), fit.group("observed_data")
    return pp is not None and obs is not None and "sampled_rows" in obs.attrs and "y" in pp


__all__ = ["PPC_ROWS", "combine_offers", "is_sample", "partition_offer", "replicate_sample", "sample_rows"]
