"""A GLM's rows on Dask workers as shards of whole levels of one factor, kept in worker memory
across sweeps (:mod:`multilevel.samplers.sharded`).

The rows are sharded on the factor with the most levels (the first on ties,
:func:`multilevel.samplers.sharded.sharded_factor`); with several factors each row keeps its
levels and covariates of the others (their effects are the kernel's, copied to the shards).

1. A counting pass gives each level's rows; the levels are cut into as many shards as the data
   have partitions, but at least :data:`MIN_SHARDS` when the data have :data:`SHARD_ROWS` rows
   for each (so that one large file still spreads over the workers) and at most
   :data:`MAX_SHARDS` (each costs a fraction of a millisecond every sweep), contiguous
   ranges of about equal rows (:func:`multilevel.samplers.sharded.level_cuts`): the shards
   depend on the data alone, never on the workers.
2. The rows are shuffled once: each partition's design (:func:`multilevel.distributed.plan.partition_design`)
   is split by shard, and each shard's pieces are joined in partition order and sorted by level
   (:func:`multilevel.samplers.sharded.shard_rows`).
3. With a distributed client, the shards go to the workers in contiguous runs (shard k to worker
   floor(k W / S)), each worker's into one long-lived actor (:class:`ShardHost`) that answers the
   kernel's messages for all of them: a sweep is a few rounds of one call per worker (two for
   one factor, each carrying O(p^2) numbers each way; with several factors, rounds carrying
   the other factors' per-level sums, :mod:`multilevel.samplers.sharded`). Without one (Dask's local schedulers), the shards are
   computed into this process (:class:`multilevel.samplers.sharded.LocalShards`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..samplers.shard import LevelShard, ShardRows
from ..samplers.sharded import LocalShards, factor_order, level_cuts, shard_rows
from .plan import PartitionPlan, partition_design, prepare
from .reduce import tree_reduce


#: bounds of the number of shards (module docstring), and the rows a shard is worth having for
MIN_SHARDS, MAX_SHARDS, SHARD_ROWS = 16, 64, 50_000


def partition_counts(frame: Any, plan: PartitionPlan, n_levels: int, s: int) -> np.ndarray:
    """Rows per level of the sharded factor s among a partition's rows kept."""
    _, indices = prepare(frame, plan)
    return np.bincount(indices[s], minlength=n_levels)


def split_partition(frame: Any, plan: PartitionPlan, cuts: np.ndarray, order: list[int]
                    ) -> list[tuple[np.ndarray, ...]]:
    """A partition's rows (y, n, offset, F, Z, index) split by shard (levels [cuts[k], cuts[k + 1])
    of the sharded factor); Z and index (K, N) of the factors in ``order`` (the shards')."""
    d = partition_design(frame, plan)
    fs = [d.factors[k] for k in order]
    index = np.vstack([np.asarray(f.factor.index, dtype=np.int64) for f in fs])
    shard = np.searchsorted(cuts, index[0], side="right") - 1
    arrays = (np.asarray(d.y, dtype=float), np.asarray(d.trials, dtype=float), np.asarray(d.offset, dtype=float),
              np.asarray(d.F, dtype=float), np.hstack([np.asarray(f.Z, dtype=float) for f in fs]), index.T)
    rows = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[rows], np.arange(cuts.shape[0]))
    return [tuple(a[rows[lo:hi]] for a in arrays) for lo, hi in zip(bounds[:-1], bounds[1:])]


def join_shard(parts: list[tuple[np.ndarray, ...]], q: np.ndarray, levels: np.ndarray, lo: int, hi: int) -> ShardRows:
    """A shard's rows from every partition's piece of it, in partition order, sorted by level."""
    y, n, off, F, Z, index = (np.concatenate([p[i] for p in parts]) for i in range(6))
    return shard_rows(y, n, off, F, Z, np.ascontiguousarray(index.T), q, levels, lo, hi)


class ShardHost:
    """A worker's actor: its run of shards, kept in its memory across sweeps; ``call`` runs a
    method of each, in order."""

    def __init__(self, code: int, *rows: ShardRows):
        self.shards = [LevelShard(r, code) for r in rows]

    def call(self, name: str, args: tuple) -> list[Any]:
        return [getattr(s, name)(*args) for s in self.shards]


class ActorShards:
    """Shards held by :class:`ShardHost` actors, one per worker (shards in order along the
    hosts); ``call(name, *args)`` sends one message to every host at once and returns the
    shards' answers in shard order."""

    def __init__(self, hosts: list[Any]):
        self.hosts = hosts

    def call(self, name: str, *args: Any) -> list[Any]:
        futures = [h.call(name, args) for h in self.hosts]
        return [x for f in futures for x in f.result()]


def active_client() -> Any:
    """The distributed client in use, or None."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def level_shards(design: Any, code: int) -> Any:
    """The shards of a GLM's :class:`~multilevel.distributed.design.PartitionedDesign` (module
    docstring): :class:`ActorShards` on a distributed client, else :class:`LocalShards`."""
    from dask import delayed

    plan = delayed(design.plan, pure=True)
    order = factor_order(design)
    fs = [design.factors[k] for k in order]
    q, levels = np.array([f.q for f in fs], dtype=np.int64), np.array([f.n_levels for f in fs], dtype=np.int64)
    J = int(levels[0])
    parts = design.ddf.to_delayed()
    (counts,) = design.compute([tree_reduce([delayed(partition_counts)(p, plan, J, order[0]) for p in parts],
                                            np.add)])
    cuts = level_cuts(counts, min(max(len(parts), min(MIN_SHARDS, int(counts.sum()) // SHARD_ROWS)), MAX_SHARDS))
    S = cuts.shape[0] - 1
    pieces = [delayed(split_partition, nout=S)(p, plan, cuts, order) for p in parts]
    joined = [delayed(join_shard)([piece[k] for piece in pieces], q, levels, int(cuts[k]), int(cuts[k + 1]))
              for k in range(S)]
    client = active_client()
    if client is None:
        return LocalShards([LevelShard(r, code) for r in design.compute(joined)])
    workers = sorted(client.scheduler_info()["workers"])
    W = len(workers)
    owner = [k * W // S for k in range(S)]
    futures = client.compute(joined)
    hosts = []
    for w, address in enumerate(workers):
        mine = [f for f, o in zip(futures, owner) if o == w]
        if mine:
            hosts.append(client.submit(ShardHost, code, *mine, actor=True, workers=[address], pure=False))
    hosts = [h.result() for h in hosts]
    del futures
    return ActorShards(hosts)


__all__ = ["ActorShards", "ShardHost", "level_shards"]
