"""Combine per-partition results in a fixed pairwise tree, so the floating-point result depends
only on the number of partitions, never on which worker computed what or when."""

from __future__ import annotations

from typing import Any, Callable


def tree_reduce(items: list[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """``combine`` over ``items`` (delayed values, partition order) as a balanced tree of
    delayed calls: ((0 + 1) + (2 + 3)) + ...; the combined results stay on the workers until
    the root is asked for."""
    from dask import delayed

    if not items:
        raise ValueError("nothing to combine")
    level = list(items)
    while len(level) > 1:
        level = [delayed(combine)(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return level[0]


__all__ = ["tree_reduce"]
