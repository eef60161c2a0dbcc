"""Caterpillar and shrinkage plots of a 20,000-group, 2e6-row Gaussian fit (issue 11, point 7).

    python benchmarks/plots_many_groups.py make big.nc                 # simulate, fit (2 x 500 draws), save
    python benchmarks/plots_many_groups.py plot big.nc caterpillar     # time and memory of one plot
    python benchmarks/plots_many_groups.py plot big.nc shrinkage '{"max_groups": null}' --in-memory

``plot`` loads the fit (``--in-memory``: and reads beta into memory, as right after
``multilevel.fit``), rebuilds its design, then times the figure and its 100-dpi PNG, and
repeats both under tracemalloc for the peak memory allocated while plotting (tracemalloc
slows matplotlib, so that run is not timed); it also prints the process's peak RSS before
and after plotting. Run each plot in its own process.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import tracemalloc


def make(path: str) -> None:
    import numpy as np
    import pandas as pd

    import multilevel

    rng = np.random.default_rng(1)
    m, n = 20_000, 2_000_000
    g = rng.integers(0, m, size=n)
    x = rng.normal(size=n)
    b = np.array([1.0, 0.5]) + rng.normal(size=(m, 2)) * [0.8, 0.3]
    y = b[g, 0] + b[g, 1] * x + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "x": x, "g": np.char.add("s", g.astype(str))})
    fit = multilevel.fit("y ~ x + (x | g)", df, chains=2, draws=500, warmup=300, seed=1, cores=1, progress=False,
                         log_likelihood=False)
    fit.save(path, overwrite=True)


def plot(path: str, kind: str, kwargs: dict, in_memory: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import multilevel

    fit = multilevel.load(path)
    if in_memory:
        fit.posterior["beta"].load()
    fit.design  # rebuilt from the stored training data after load: not the plot's cost
    plt.close(plt.figure())
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    fig = fit.plot(kind, **kwargs)
    t1 = time.perf_counter()
    fig.savefig(f"{kind}.png", dpi=100)
    t2 = time.perf_counter()
    plt.close("all")
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    fit.plot(kind, **kwargs).savefig(f"{kind}.png", dpi=100)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    print(f"{kind} {kwargs}{' in memory' if in_memory else ''}: figure {t1 - t0:.1f} s + png {t2 - t1:.1f} s "
          f"= {t2 - t0:.1f} s; peak traced {peak:.0f} MiB; max RSS {rss0:.0f} MiB before, {rss1:.0f} MiB after")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--in-memory"]
    if args[0] == "make":
        make(args[1])
    else:
        plot(args[1], args[2], json.loads(args[3]) if len(args) > 3 else {}, "--in-memory" in sys.argv)
