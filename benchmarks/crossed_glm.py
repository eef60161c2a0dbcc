"""Benchmarks of the Polya-Gamma sampler for binomial and Bernoulli models (issue 13, point 3).

- ``crossed_glm_pg``: a crossed Bernoulli model, ``y ~ x + (1 | g1) + (1 | g2)``, 20,000 rows,
  500 x 200 levels: CPU time per sweep and min bulk ESS per CPU second over the population
  parameters (theta, alpha, each factor's variance);
- ``glm_pg_vs_metropolis``: one grouping factor, Bernoulli, the same data and priors fitted by
  the default Metropolis-within-Gibbs kernel (``sampler="auto"``) and by ``sampler="polya-gamma"``:
  min bulk ESS per CPU second, on balanced outcomes (about half successes) and on rare ones
  (about 4 %), where Polya-Gamma augmentation is known to mix slower (Johndrow et al. 2019).

    python benchmarks/run.py --only crossed_glm_pg --only glm_pg_vs_metropolis [--quick]

Everything runs in this one process (``cores=1``); CPU seconds are ``time.process_time`` around
``Model.fit`` after the compiled code was loaded on a tiny model.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from . import glmer_check
from .common import Result, Table, fmt_count, fmt_time, one_core

CROSSED_FORMULA = "y ~ x + (1 | g1) + (1 | g2)"
ONE_FORMULA = "y ~ x + (1 | g)"
#: truth of the simulations: intercept (balanced and rare outcomes), slope of x, sd per factor
INTERCEPT, RARE_INTERCEPT, SLOPE, SDS = 0.0, -3.5, 0.5, (0.8, 0.5)
#: (chains, warmup, draws) of every fit, by ``quick``
RUN = {True: (2, 200, 300), False: (2, 500, 1000)}


def simulate_bernoulli(n_rows: int, levels: tuple[int, ...], intercept: float = INTERCEPT, seed: int = 0):
    """A DataFrame for ``y ~ x + (1 | g1) + ...`` (one factor: column ``g``): every level with at
    least one row, the rest at random; y ~ Bernoulli(logistic(intercept + 0.5 x + sum_k b_k[g_k])),
    b_k ~ N(0, SDS[k]^2)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n_rows)
    eta = intercept + SLOPE * x
    cols = {}
    for k, J in enumerate(levels):
        g = np.concatenate([np.arange(J), rng.integers(0, J, n_rows - J)])
        rng.shuffle(g)
        eta += SDS[k] * rng.standard_normal(J)[g]
        cols["g" if len(levels) == 1 else f"g{k + 1}"] = g
    y = rng.binomial(1, 0.5 * (1.0 + np.tanh(0.5 * eta)))
    return pd.DataFrame({"y": y, "x": x, **cols})


def min_population_ess(fit) -> tuple[float, str, dict[str, float]]:
    """The smallest bulk ESS over theta, alpha, every Sigma variable's lower triangle and phi (the
    negative binomial's), its parameter, and all of them."""
    import arviz as az

    post = fit.posterior
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for v in post.data_vars:
            if not (v in ("theta", "alpha", "phi") or v.startswith("Sigma")):
                continue
            ess = az.ess(post[[v]], method="bulk")[v]
            if v == "phi":
                out[v] = float(ess)
                continue
            values = ess.values.reshape(-1) if v in ("theta", "alpha") else ess.values[np.tril_indices(ess.shape[0])]
            labels = (list(ess[ess.dims[0]].values) if v in ("theta", "alpha")
                      else [f"{a},{b}" for a, b in zip(*np.tril_indices(ess.shape[0]))])
            for label, e in zip(labels, values):
                out[f"{v}[{label}]"] = float(e)
    name = min(out, key=out.get)
    return out[name], name, out


def fit_timed(model, chains: int, warmup: int, draws: int, seed: int) -> tuple[object, float, float]:
    """Fit in this process: the fit, its CPU seconds (``time.process_time``) and wall seconds."""
    c0, t0 = time.process_time(), time.perf_counter()
    fit = model.fit(chains=chains, warmup=warmup, draws=draws, seed=seed, cores=1, progress=False)
    return fit, time.process_time() - c0, time.perf_counter() - t0


def fit_figures(fit, cpu: float, chains: int, warmup: int, draws: int) -> dict:
    """CPU seconds, min ESS (and where), per-sweep CPU and max R-hat of a fit taking ``cpu`` seconds."""
    ess, name, all_ess = min_population_ess(fit)
    return {"cpu": cpu, "per_sweep": cpu / (chains * (warmup + draws)), "min_ess": ess, "min_param": name,
            "ess": all_ess, "ess_per_cpu_s": ess / cpu, "ess_per_draw": ess / (chains * draws),
            "r_hat_max": float(fit.summary()["r_hat"].max())}


def _warm_up() -> None:
    """Load (or compile) both kernels' numba code on a tiny model."""
    import multilevel

    for formula, levels, sampler in ((CROSSED_FORMULA, (10, 8), None), (CROSSED_FORMULA, (10, 8), "metropolis"),
                                     (ONE_FORMULA, (10,), None), (ONE_FORMULA, (10,), "polya-gamma")):
        df = simulate_bernoulli(300, levels, seed=99)
        multilevel.Model(formula, df, family="bernoulli", sampler=sampler).fit(chains=1, warmup=5, draws=5, cores=1,
                                                                               progress=False)


#: the samplers compared on the crossed Bernoulli model (``Model(..., sampler=...)``)
CROSSED_SAMPLERS = ("polya-gamma", "metropolis")


def sampler_row(label: str, sampler: str, run: dict) -> list[str]:
    """One table row of a timed fit (:func:`fit_figures`)."""
    return [label, sampler, fmt_time(run["per_sweep"]), f"{run['min_ess']:.0f}", f"`{run['min_param']}`",
            f"{run['ess_per_draw']:.3f}", f"**{run['ess_per_cpu_s']:.1f}**", f"{run['r_hat_max']:.3f}"]


def bench_crossed_pg(quick: bool = False) -> Result:
    """Crossed Bernoulli model: Polya-Gamma against Metropolis-within-Gibbs, min bulk ESS per CPU second, and glmer."""
    import multilevel

    n, levels = (5_000, (100, 50)) if quick else (20_000, (500, 200))
    chains, warmup, draws = RUN[quick]
    res = Result(
        "crossed_glm_pg",
        "Crossed Bernoulli model: Polya-Gamma against Metropolis-within-Gibbs",
        f"`{CROSSED_FORMULA}`, family bernoulli, simulated (`crossed_glm.simulate_bernoulli`): {fmt_count(n)} rows, "
        f"factors of {levels[0]} and {levels[1]} levels (sd {SDS[0]} and {SDS[1]}), intercept {INTERCEPT}, slope "
        f"{SLOPE}; default priors (resolved once, passed to both). Fitted by `sampler=\"polya-gamma\"` (the "
        "default here) and by `sampler=\"metropolis\"`, each `Model(...).fit(chains="
        f"{chains}, warmup={warmup}, draws={draws}, cores=1, seed=1)` in this process; CPU = `time.process_time` "
        "around `fit` (numba code loaded before); per sweep = CPU / (chains x (warmup + draws)). Bulk ESS of theta, "
        "alpha and each factor's variance; the minimum is divided by the CPU seconds.",
    )
    runs, checks = {}, []
    with one_core():
        _warm_up()
        df = simulate_bernoulli(n, levels, seed=1)
        c0 = time.process_time()
        base = multilevel.Model(CROSSED_FORMULA, df, family="bernoulli", sampler=CROSSED_SAMPLERS[0])
        build = time.process_time() - c0
        ref = glmer_check.glmer_fixef(df, CROSSED_FORMULA, "bernoulli")
        for sampler in CROSSED_SAMPLERS:
            model = base if sampler == CROSSED_SAMPLERS[0] else multilevel.Model(
                CROSSED_FORMULA, df, family="bernoulli", priors=base.priors, sampler=sampler)
            fit, cpu, _ = fit_timed(model, chains, warmup, draws, seed=1)
            runs[sampler] = fit_figures(fit, cpu, chains, warmup, draws)
            checks.append(glmer_check.check(f"crossed Bernoulli, {sampler}", fit, ref))
    res.tables.append(Table(
        ["data", "sampler", "per sweep (CPU)", "min bulk ESS", "parameter", "ESS per draw", "min ESS per CPU s",
         "max r_hat"],
        [sampler_row(f"{fmt_count(n)} rows, {levels[0]} x {levels[1]} levels", k, r) for k, r in runs.items()]))
    res.tables.append(Table(["parameter"] + [f"bulk ESS, {k}" for k in runs],
                            [[f"`{p}`"] + [f"{r['ess'][p]:.0f}" for r in runs.values()]
                             for p in runs[CROSSED_SAMPLERS[0]]["ess"]]))
    ratio = runs["polya-gamma"]["ess_per_cpu_s"] / runs["metropolis"]["ess_per_cpu_s"]
    res.notes.append(f"polya-gamma / metropolis min ESS per CPU s = {ratio:.2f}x; `Model(...)` build (polya-gamma) "
                     f"{fmt_time(build)} CPU.")
    res.tables.append(glmer_check.table(checks))
    res.targets.append(glmer_check.target(checks, quick))
    res.data = {"rows": n, "levels": list(levels), "build_cpu": build, "runs": runs, "pg_over_metropolis": ratio,
                "glmer": checks}
    return res


def bench_pg_vs_metropolis(quick: bool = False) -> Result:
    """One factor, Bernoulli: Polya-Gamma against the default Metropolis kernel, same data and priors, and glmer."""
    import multilevel

    n, J = (3_000, 100) if quick else (10_000, 500)
    chains, warmup, draws = RUN[quick]
    res = Result(
        "glm_pg_vs_metropolis",
        "One grouping factor, Bernoulli: Polya-Gamma against Metropolis-within-Gibbs",
        f"`{ONE_FORMULA}`, family bernoulli, simulated: {fmt_count(n)} rows, {J} groups (sd {SDS[0]}), slope "
        f"{SLOPE}, intercept {INTERCEPT} (balanced: about half successes) or {RARE_INTERCEPT} (rare: about 4 %). "
        "Each data set is fitted with the default sampler (`sampler=None`: \"auto\", Metropolis-within-Gibbs with "
        "the Laplace proposal) and with `sampler=\"polya-gamma\"`, both with the default one-term GLM priors "
        f"resolved by the first (passed to the second). `fit(chains={chains}, warmup={warmup}, draws={draws}, "
        "cores=1, seed=1)` in this process; CPU = `time.process_time` around `fit`. Bulk ESS of theta, alpha "
        "and Sigma; min ESS / CPU s.",
    )
    rows, data, checks = [], {}, []
    with one_core():
        _warm_up()
        for label, intercept in (("balanced", INTERCEPT), ("rare", RARE_INTERCEPT)):
            df = simulate_bernoulli(n, (J,), intercept=intercept, seed=2)
            base = multilevel.Model(ONE_FORMULA, df, family="bernoulli")
            p = base.priors
            priors = dict(mu0=p.mu0, Lambda0=p.Lambda0, eta0=p.eta0, S0=p.S0, alpha_mean=p.alpha_mean,
                          alpha_cov=p.alpha_cov)
            runs, ref = {}, glmer_check.glmer_fixef(df, ONE_FORMULA, "bernoulli")
            for sampler in (None, "polya-gamma"):
                model = multilevel.Model(ONE_FORMULA, df, family="bernoulli", priors=priors, sampler=sampler)
                fit, cpu, _ = fit_timed(model, chains, warmup, draws, seed=1)
                runs[sampler or "auto"] = fit_figures(fit, cpu, chains, warmup, draws)
                checks.append(glmer_check.check(f"{label}, {sampler or 'auto'}", fit, ref))
            data[label] = {"success_rate": float(df["y"].mean()), **runs}
            for name, r in runs.items():
                rows.append([label, f"{df['y'].mean():.3f}", name, fmt_time(r["per_sweep"]), f"{r['min_ess']:.0f}",
                             f"`{r['min_param']}`", f"{r['ess_per_draw']:.3f}", f"**{r['ess_per_cpu_s']:.1f}**",
                             f"{r['r_hat_max']:.3f}"])
            ratio = runs["polya-gamma"]["ess_per_cpu_s"] / runs["auto"]["ess_per_cpu_s"]
            res.notes.append(f"{label}: polya-gamma / auto min ESS per CPU s = {ratio:.2f}x")
    res.tables.append(Table(["outcomes", "success rate", "sampler", "per sweep (CPU)", "min bulk ESS", "parameter",
                             "ESS per draw", "min ESS per CPU s", "max r_hat"], rows))
    res.tables.append(glmer_check.table(checks))
    res.targets.append(glmer_check.target(checks, quick))
    res.data = {"rows": n, "groups": J, **data, "glmer": checks}
    return res


BENCHMARKS = {"crossed_glm_pg": bench_crossed_pg, "glm_pg_vs_metropolis": bench_pg_vs_metropolis}
