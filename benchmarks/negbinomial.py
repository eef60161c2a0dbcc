"""Benchmark of the negative binomial sampler (issue 13, point 4), one core.

- ``negbinomial``: two models, ``y ~ x + (1 | g)`` on ``tests/data/negbin.csv`` (828 rows, 40
  groups) and a simulated crossed NB2 model ``y ~ x + (1 | a) + (1 | b)`` with 20,000 rows, 500 x
  100 levels (intercept 1, slope 0.4, sds 0.5 and 0.3, phi = 2; :func:`simulated`). For each: the
  CPU time per sweep and the minimum bulk ESS over the population parameters (theta, alpha, each
  factor's variance, phi) per CPU second of the whole fit (warm-up included), and the fixed effects
  and phi against lme4's ``glmer.nb`` on the same data in the same run.

    python benchmarks/run.py --only negbinomial [--quick]

Measured before (2026-12-01, a shared 2-core machine under load, 2 chains x (500 + 1000) sweeps of
the kernel alone): the simulated crossed model's 26.8 ms a sweep are about 21 ms of Polya-Gamma draws
(``polyagamma`` with non-integer n_i = y_i + phi, about 1 us a row), 1.1 ms of weighted statistics and
3.8 ms of the four phi steps.
"""

from __future__ import annotations

import numpy as np

from . import glmer_check
from .common import REPO, Result, Table, fmt_time, one_core
from .crossed_glm import fit_figures, fit_timed

DATA = REPO / "tests" / "data" / "negbin.csv"
#: (chains, warmup, draws) of every fit, by ``quick``
RUN = {True: (2, 200, 300), False: (2, 500, 1000)}


def simulated(n: int = 20_000, levels: tuple[int, int] = (500, 100), seed: int = 7):
    """The crossed NB2 data set of the module docstring."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, levels[0], n), rng.integers(0, levels[1], n)
    x = rng.standard_normal(n)
    eta = 1.0 + 0.4 * x + rng.normal(0, 0.5, levels[0])[a] + rng.normal(0, 0.3, levels[1])[b]
    y = rng.poisson(np.exp(eta) * rng.gamma(2.0, 0.5, n))
    return pd.DataFrame({"a": [f"a{k}" for k in a], "b": [f"b{k}" for k in b], "x": x, "y": y})


def _models(quick: bool):
    import pandas as pd

    return [("negbin.csv", "y ~ x + (1 | g)", pd.read_csv(DATA)),
            ("simulated crossed", "y ~ x + (1 | a) + (1 | b)", simulated(5_000 if quick else 20_000))]


def bench_negbinomial(quick: bool = False) -> Result:
    """Negative binomial (NB2): min bulk ESS per CPU second on one- and two-factor models, and glmer.nb."""
    import multilevel

    chains, warmup, draws = RUN[quick]
    res = Result(
        "negbinomial",
        "Negative binomial (NB2): Polya-Gamma sampler",
        f"`family=\"negbinomial\"`, default priors and sampler. `Model(...).fit(chains={chains}, warmup={warmup}, "
        f"draws={draws}, cores=1, seed=1)` in this process after a 5 + 5 sweep fit of the same model loaded the "
        "compiled code; CPU = "
        "`time.process_time` around `fit`; per sweep = CPU / (chains x (warmup + draws)). Bulk ESS of theta, alpha, "
        "each factor's variance and phi. negbin.csv: tests/data (828 rows, 40 groups); simulated crossed: "
        "`negbinomial.simulated` (intercept 1, slope 0.4, sds 0.5 and 0.3, phi 2).",
    )
    rows, data, checks = [], {}, []
    with one_core():
        for label, formula, frame in _models(quick):
            model = multilevel.Model(formula, frame, family="negbinomial")
            model.fit(chains=1, warmup=5, draws=5, cores=1, seed=0, progress=False)  # compiled code loaded
            fit, cpu, _ = fit_timed(model, chains, warmup, draws, seed=1)
            run = data[label] = fit_figures(fit, cpu, chains, warmup, draws)
            ref = glmer_check.glmer_fixef(frame, formula, "negbinomial")
            checks.append(glmer_check.check(label, fit, ref))
            phi = float(fit.posterior["phi"].mean())
            run["phi_mean"], run["glmer_nb_phi"] = phi, None if ref is None else ref["phi"]
            rows.append([label, f"`{formula}`", str(len(frame)), fmt_time(run["per_sweep"]), f"{run['min_ess']:.0f}",
                         f"`{run['min_param']}`", f"{run['ess_per_draw']:.3f}", f"**{run['ess_per_cpu_s']:.1f}**",
                         f"{run['r_hat_max']:.3f}", f"{phi:.3f}", "" if ref is None else f"{ref['phi']:.3f}"])
    res.tables.append(Table(["data", "formula", "rows", "per sweep (CPU)", "min bulk ESS", "parameter",
                             "ESS per draw", "min ESS per CPU s", "max r_hat", "posterior mean phi",
                             "glmer.nb phi (theta)"], rows))
    res.tables.append(glmer_check.table(checks))
    res.targets.append(glmer_check.target(checks, quick))
    note = glmer_check.warnings_note(checks)
    if note:
        res.notes.append(note)
    data["glmer"] = checks
    res.data = data
    return res


BENCHMARKS = {"negbinomial": bench_negbinomial}
