"""Compile the samplers' numba kernels once, in parallel: ``python -m multilevel.warmup``.

numba compiles each kernel on its first call and caches the machine code beside the package
(``cache=True``), so the first fit of each kind in a fresh install waits for its compilation
(from 10 s to about 90 s for the largest kernels on a 2-core machine), and several processes
starting at once (test workers, chains, Dask workers) each compile the same kernels. Here
tiny fits of the bundled data sets, four draws each, run through every sampler and family,
split into ``processes`` groups of about equal compilation time run side by side; afterwards
every process loads the kernels from the cache. ``make test`` runs it before the tests.
"""

from __future__ import annotations

import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Any

#: tiny fits (formula, data set, options) whose kernels together are those of every sampler;
#: two groups of about equal compilation time
GROUPS: tuple[tuple[tuple[str, str, dict[str, Any]], ...], ...] = (
    (("y ~ lbase + V4 + (1 | subject) + (1 | V4)", "epil", {"family": "poisson"}),
     ("y ~ lbase + (1 | subject)", "epil", {"family": "poisson", "sampler": "sharded"}),
     ("y ~ lbase + (1 | subject) + (1 | V4)", "epil", {"family": "poisson", "sampler": "sharded"}),
     ("y ~ lbase + (1 | subject/V4)", "epil", {"family": "poisson", "sampler": "sharded"}),  # nested variance moves
     ("y ~ lbase + (1 | subject)", "epil", {"family": "negbinomial"}),
     ("y ~ lbase + (1 | subject)", "epil", {"family": "negbinomial", "sampler": "sharded"}),
     ("p(incidence, size) ~ period + (1 | herd) + (1 | period)", "cbpp", {"family": "binomial"}),
     ("y ~ lbase + (1 | subject)", "epil", {"family": "poisson", "loo": True})),
    (("mAch ~ ses + (ses | school)", "hsb82", {}),
     ("mAch ~ ses + (ses | school)", "hsb82", {"sampler": "centred"}),
     ("mAch ~ ses + (ses | school)", "hsb82", {"sampler": "interweaving"}),
     ("mAch ~ ses + (ses | school)", "hsb82", {"sampler": "blocked"}),
     ("Reaction ~ Days + (Days || Subject)", "sleepstudy", {}),
     ("y ~ service + (1 | s) + (1 | d)", "insteval", {}),
     ("y ~ lbase + trt + (1 | subject)", "epil", {"family": "poisson"}),
     ("p(incidence, size) ~ period + (1 | herd)", "cbpp", {"family": "binomial"})),
)


def run_group(jobs: tuple[tuple[str, str, dict[str, Any]], ...]) -> float:
    """Fit each job with four draws (compiling its kernels); returns the seconds taken."""
    import multilevel

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for formula, name, options in jobs:
            options = dict(options)
            loo = options.pop("loo", False)
            data = multilevel.load_dataset(name)
            fit = multilevel.fit(formula, data.head(3000), chains=1, draws=4, warmup=4, seed=1, progress=False,
                                 cores=1, **options)
            if loo:
                fit.loo()
    return time.perf_counter() - start


def compile_kernels(processes: int = 2) -> list[float]:
    """Run :data:`GROUPS` in ``processes`` worker processes (1: in this one); the seconds each took."""
    if processes <= 1:
        return [run_group(tuple(job for group in GROUPS for job in group))]
    with ProcessPoolExecutor(processes) as pool:
        return list(pool.map(run_group, GROUPS))


def main() -> None:
    start = time.perf_counter()
    seconds = compile_kernels()
    print(f"multilevel: kernels compiled in {time.perf_counter() - start:.0f} s "
          f"({', '.join(f'{s:.0f} s' for s in seconds)} in parallel)", file=sys.stderr)


if __name__ == "__main__":
    main()
