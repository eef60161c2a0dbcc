"""A brief measurement of the negative binomial sampler (issue 13, point 4), one core.

Two models: ``y ~ x + (1 | g)`` on ``tests/data/negbin.csv`` (828 rows, 40 groups; lme4's
``glmer.nb`` figures in ``tests/lme4_crossed.py``) and a simulated crossed NB2 model
``y ~ x + (1 | a) + (1 | b)`` with 20,000 rows, 500 x 100 levels (intercept 1, slope 0.4, sds
0.5 and 0.3, phi = 2). For each: 2 chains run one after the other in this process, CPU time by
``time.process_time`` (compilation excluded: one throwaway sweep first), the CPU time per sweep
and the minimum bulk ESS (:func:`multilevel.diagnostics.ess_bulk`) over the population
parameters (theta, alpha, each factor's variance, phi) per CPU second of the whole run
(warm-up included).

    PYTHONPATH=src python benchmarks/negbinomial.py [--draws 1000] [--warmup 500]

Measured (2026-12-01, a shared 2-core machine under load, defaults: 2 chains x (500 + 1000) sweeps):

* negbin.csv: 1.56 ms/sweep; min bulk ESS 1394 of 2000 draws (phi; theta, alpha and Sigma
  higher) = 298 per CPU s; posterior mean phi 2.728 (glmer.nb: 2.730);
* simulated crossed, 20,000 rows: 26.8 ms/sweep, of which about 21 ms are the Polya-Gamma draws
  (``polyagamma`` with non-integer n_i = y_i + phi, about 1 us a row), 1.1 ms the weighted
  statistics, 3.8 ms the four phi steps; min bulk ESS 1272 of 2000 (phi) = 15.8 per CPU s;
  posterior mean phi 2.036 (true 2).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import multilevel
from multilevel.diagnostics import ess_bulk
from multilevel.run import run_chains

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "negbin.csv"


def simulated(n: int = 20_000, levels: tuple[int, int] = (500, 100), seed: int = 7) -> pd.DataFrame:
    """The crossed NB2 data set of the module docstring."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, levels[0], n), rng.integers(0, levels[1], n)
    x = rng.standard_normal(n)
    eta = 1.0 + 0.4 * x + rng.normal(0, 0.5, levels[0])[a] + rng.normal(0, 0.3, levels[1])[b]
    y = rng.poisson(np.exp(eta) * rng.gamma(2.0, 0.5, n))
    return pd.DataFrame({"a": [f"a{k}" for k in a], "b": [f"b{k}" for k in b], "x": x, "y": y})


def population(draws: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(chain, draw) arrays of the population parameters among the kernel's records."""
    out = {}
    for name, v in draws.items():
        if name in ("theta", "alpha") or name.startswith("Sigma"):
            flat = v.reshape(v.shape[0], v.shape[1], -1)
            for k in range(flat.shape[-1]):
                if np.ptp(flat[..., k]) > 0:
                    out[f"{name}[{k}]"] = flat[..., k]
        elif name == "phi":
            out[name] = v
    return out


def measure(label: str, formula: str, data: pd.DataFrame, draws: int, warmup: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = multilevel.Model(formula, data, family="negbinomial")
    kernel = model.kernel
    rng = np.random.default_rng(0)
    kernel.step(kernel.init(rng), rng)  # compiled code loaded
    start = time.process_time()
    res = run_chains(kernel, chains=2, draws=draws, warmup=warmup, seed=11, cores=1, progress=False)
    cpu = time.process_time() - start
    ess = {k: ess_bulk(v) for k, v in population(res.draws).items()}
    worst = min(ess, key=ess.get)
    sweeps = 2 * (draws + warmup)
    print(f"{label}: {data.shape[0]} rows, {sweeps} sweeps in {cpu:.1f} CPU s = {1e3 * cpu / sweeps:.2f} ms/sweep; "
          f"min bulk ESS {ess[worst]:.0f} ({worst}) of {2 * draws} draws = {ess[worst] / cpu:.1f} per CPU s; "
          f"phi ESS {ess['phi']:.0f}, posterior mean phi {res.draws['phi'].mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args()
    measure("negbin.csv", "y ~ x + (1 | g)", pd.read_csv(DATA), args.draws, args.warmup)
    measure("simulated crossed", "y ~ x + (1 | a) + (1 | b)", simulated(), args.draws, args.warmup)


if __name__ == "__main__":
    main()
