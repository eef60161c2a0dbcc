"""Benchmarks of the Metropolis-within-Gibbs sampler of Poisson models with several grouping
factors (issue 13, points 1-3 and 6; :mod:`multilevel.samplers.crossed_metropolis`).

- ``crossed_poisson_mwg``: min bulk ESS per CPU second over the population parameters (theta,
  alpha, each factor's variance) and CPU per sweep on three models: tests/data/crossed_poisson.csv
  (``y ~ x + (1 | subj) + (1 | item)``, lme4's reference set), a simulated grouseticks-shaped set
  (``TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)``: 403 rows, 118 broods in 63
  locations) and epil with an observation-level effect (``y ~ lbase*trt + lage + V4 + (1 | subject)
  + (1 | obs)``). On the last two, NumPyro NUTS in the same run (centred, multilevel's resolved
  priors: :func:`crossed.problem_from_model`, :func:`crossed.run_crossed_nuts`); the issue's target
  is 25 x NUTS's min bulk ESS per CPU second on grouseticks (it quotes NumPyro at about 12.7). Every
  model's fixed effects are compared with glmer's on the same data (:mod:`glmer_check`);
- ``crossed_poisson_scaling``: CPU per sweep of ``y ~ x + (1 | g1) + (1 | g2)`` with 1e6 rows and
  1e4 x 1e3 levels (the issue's target: 2000 sweeps in under 3 minutes; ``--quick``: 2e4 rows,
  extrapolated linearly in the rows to 1e6). It fits no posterior, so it has no glmer comparison.

    python benchmarks/run.py --only crossed_poisson_mwg --only crossed_poisson_scaling [--quick]

multilevel runs in this one process (``cores=1``; CPU seconds are ``time.process_time``), NUTS in
single-threaded worker processes (their CPU seconds of sampling, warm-up included).
"""

from __future__ import annotations

import time

import numpy as np

from . import glmer_check
from .common import REPO, Result, Table, Target, assess, fmt_count, fmt_time, one_core
from .crossed import multilevel_scalars, problem_from_model, run_crossed_nuts, self_check
from .crossed_glm import fit_figures, fit_timed
from .peers import _fmt, agreement, summarise

#: (chains, warmup, draws) of every fit, by ``quick``
RUN = {True: (2, 200, 500), False: (4, 500, 1000)}
TICKS_FORMULA = "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)"
EPIL_FORMULA = "y ~ lbase*trt + lage + V4 + (1 | subject) + (1 | obs)"
#: NumPyro NUTS's min bulk ESS per CPU second on the grouseticks-shaped model, as the issue quotes it
NUTS_TICKS = 12.7
#: the models also fitted by NumPyro NUTS in the same run, and its (chains, warmup, draws) by ``quick``
NUTS_MODELS = ("grouseticks-shaped", "epil + (1 | obs)")
NUTS_RUN = {True: (2, 200, 200), False: (4, 1000, 1000)}


def simulate_ticks(seed: int = 1):
    """A grouseticks-shaped data set: 403 rows, 118 broods in 63 locations (each location at least
    one brood), YEAR (95, 96, 97) per brood, cHEIGHT (centred altitude) per location, and
    TICKS ~ Poisson(exp(0.3 + YEAR effect - 0.025 cHEIGHT + b_BROOD + b_LOCATION)) with sds 1.0 and 0.9."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    loc = rng.integers(0, 63, 118)
    loc[:63] = np.arange(63)
    cuts = np.sort(rng.choice(np.arange(1, 403), 117, replace=False))
    brood = np.repeat(np.arange(118), np.diff(np.r_[0, cuts, 403]))
    year = rng.integers(0, 3, 118)[brood]
    height = rng.normal(0, 20, 63)[loc[brood]]
    eta = (0.3 + np.array([0.0, 1.1, -0.9])[year] - 0.025 * height + rng.normal(0, 1.0, 118)[brood]
           + rng.normal(0, 0.9, 63)[loc[brood]])
    return pd.DataFrame({"TICKS": rng.poisson(np.exp(eta)), "YEAR": pd.Categorical(year + 95), "cHEIGHT": height,
                         "BROOD": brood, "LOCATION": loc[brood]})


def simulate_crossed(n: int, levels: tuple[int, int], seed: int = 0):
    """``y ~ x + (1 | g1) + (1 | g2)`` Poisson data: every level at least once, sds 0.6 and 0.4."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    cols = {}
    x = rng.standard_normal(n)
    eta = 0.5 + 0.3 * x
    for k, (J, sd) in enumerate(zip(levels, (0.6, 0.4))):
        g = rng.permutation(np.concatenate([np.arange(J), rng.integers(0, J, n - J)]))
        eta += rng.normal(0, sd, J)[g]
        cols[f"g{k + 1}"] = g
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)), "x": x, **cols})


def _models():
    import pandas as pd

    import multilevel

    epil = multilevel.load_dataset("epil")
    return [
        ("crossed_poisson.csv", "y ~ x + (1 | subj) + (1 | item)",
         pd.read_csv(REPO / "tests" / "data" / "crossed_poisson.csv")),
        ("grouseticks-shaped", TICKS_FORMULA, simulate_ticks()),
        ("epil + (1 | obs)", EPIL_FORMULA, epil.assign(obs=np.arange(len(epil)))),
    ]


def nuts_run(P, quick: bool) -> dict:
    """NumPyro NUTS (centred) on ``P``, :data:`NUTS_RUN` chains and iterations, after the self-check
    of its log density (:func:`crossed.self_check`); summarised as :func:`peers.summarise` does."""
    check = self_check(P, (True,))
    if check > 1e-9:
        raise AssertionError(f"{P.name}: NumPyro's log density differs from the scipy reference by {check:.1e}")
    chains, warmup, draws = NUTS_RUN[quick]
    return {**summarise(run_crossed_nuts(P, True, warmup, draws, chains)), "check": check}


def multilevel_run(fit, P, cpu: float, wall: float) -> dict:
    """A multilevel fit's population parameters named as P's, summarised as the NUTS runs are."""
    post = fit.posterior
    return summarise({"scalars": multilevel_scalars(post, P), "cpu": cpu, "wall": wall,
                      "chains": post.sizes["chain"], "draws": post.sizes["draw"]})


def nuts_rows(label: str, ml: dict, nuts: dict) -> list[list[str]]:
    """The two rows (multilevel, NumPyro NUTS) of one model in the table against NUTS."""
    z, at, _ = agreement(ml, nuts)
    rows = []
    for name, r in (("multilevel", ml), ("NumPyro NUTS, centred", nuts)):
        is_nuts = r is nuts
        rows.append([label, name, f"{r['chains']} x ({r['warmup']} + {r['draws']})", f"{r['cpu']:.2f} s",
                     f"{r['min_ess']:.0f} (`{r['min_at']}`)", f"**{_fmt(r['ess_cpu'])}**", f"{r['max_rhat']:.3f}",
                     str(r["divergences"]) if is_nuts else "", f"{r['mean_steps']:.0f}" if is_nuts else "",
                     f"{ml['ess_cpu'] / nuts['ess_cpu']:.1f}x" if not is_nuts else f"{z:.1f} (`{at}`)"])
    return rows


def bench_mwg(quick: bool = False) -> Result:
    """Min bulk ESS per CPU second on three Poisson models with two factors, against NumPyro NUTS on two, and glmer."""
    import multilevel

    chains, warmup, draws = RUN[quick]
    n_chains, n_warmup, n_draws = NUTS_RUN[quick]
    res = Result(
        "crossed_poisson_mwg",
        "Poisson models with two grouping factors: Metropolis-within-Gibbs against NumPyro NUTS",
        f"Default priors and sampler (metropolis). `Model(...).fit(chains={chains}, warmup={warmup}, draws={draws}, "
        "cores=1, seed=1)` in this process after the compiled code was loaded; CPU = `time.process_time` around "
        "`fit`; per sweep = CPU / (chains x (warmup + draws)). Bulk ESS of theta, alpha and each factor's variance. "
        f"On the grouseticks-shaped and epil models, NumPyro NUTS in the same run: centred, multilevel's resolved "
        f"priors (`crossed.problem_from_model`), {n_chains} chains x ({n_warmup} warm-up + {n_draws} draws), each "
        "chain in its own single-threaded process (`crossed.run_crossed_nuts`, as for InstEval), compilation "
        "timed apart, CPU of sampling (warm-up included) of all chains; min bulk ESS (`az.ess`) over the same "
        "population parameters.",
    )
    rows, data, checks, against = [], {}, [], {}
    with one_core():
        df = simulate_crossed(300, (10, 8), seed=9)
        multilevel.Model("y ~ x + (1 | g1) + (1 | g2)", df, family="poisson").fit(chains=1, warmup=5, draws=5,
                                                                                  cores=1, progress=False)
        for label, formula, frame in _models():
            model = multilevel.Model(formula, frame, family="poisson")
            fit, cpu, wall = fit_timed(model, chains, warmup, draws, seed=1)
            run = data[label] = fit_figures(fit, cpu, chains, warmup, draws)
            rows.append([label, f"`{formula}`", str(len(frame)), fmt_time(run["per_sweep"]), f"{run['min_ess']:.0f}",
                         f"`{run['min_param']}`", f"{run['ess_per_draw']:.3f}", f"**{run['ess_per_cpu_s']:.1f}**",
                         f"{run['r_hat_max']:.3f}"])
            checks.append(glmer_check.check(label, fit, glmer_check.glmer_fixef(frame, formula, "poisson")))
            if label in NUTS_MODELS:
                P = problem_from_model(label, model)
                against[label] = (P, {**multilevel_run(fit, P, cpu, wall), "warmup": warmup})
    res.tables.append(Table(["data", "formula", "rows", "per sweep (CPU)", "min bulk ESS", "parameter",
                             "ESS per draw", "min ESS per CPU s", "max r_hat"], rows))
    nuts_table = []
    for label, (P, ml) in against.items():
        nuts = nuts_run(P, quick)
        nuts_table += nuts_rows(label, ml, nuts)
        data[label]["nuts"] = {k: v for k, v in nuts.items() if k != "scalars"}
        data[label]["ratio_vs_nuts"] = ml["ess_cpu"] / nuts["ess_cpu"]
    res.tables.append(Table(
        ["data", "sampler", "chains x (warm-up + draws)", "sampling CPU (all chains)", "min bulk ESS (at)",
         "min ESS / CPU s", "max R-hat", "divergences", "mean leapfrog steps",
         "multilevel / NUTS (min ESS per CPU s); NUTS: largest mean difference vs multilevel in MCSEs (at)"],
        nuts_table, caption="Against NumPyro NUTS in the same run:"))
    ticks = against["grouseticks-shaped"][1]["ess_cpu"]
    ratio = data["grouseticks-shaped"]["ratio_vs_nuts"]
    nuts_ticks = data["grouseticks-shaped"]["nuts"]["ess_cpu"]
    res.targets.append(Target(
        f"grouseticks-shaped: min ESS per CPU s >= 25 x NumPyro NUTS's in the same run (the issue quotes NumPyro "
        f"at about {NUTS_TICKS})", f"{ratio:.1f}x (multilevel {ticks:.1f} vs NumPyro NUTS {nuts_ticks:.2f} per CPU s)",
        assess(ratio >= 25, quick)))
    res.tables.append(glmer_check.table(checks))
    res.targets.append(glmer_check.target(checks, quick))
    note = glmer_check.warnings_note(checks)
    if note:
        res.notes.append(note)
    res.notes.append(f"epil + (1 | obs): multilevel / NumPyro NUTS = {data['epil + (1 | obs)']['ratio_vs_nuts']:.1f}x "
                     "in min ESS per CPU s (no target).")
    data["glmer"] = checks
    res.data = data
    return res


def bench_scaling(quick: bool = False) -> Result:
    """CPU per sweep with 1e6 rows and 1e4 x 1e3 crossed levels (``quick``: 2e4 rows, extrapolated)."""
    import multilevel
    from multilevel.run import prime

    n, levels = (20_000, (200, 20)) if quick else (1_000_000, (10_000, 1_000))
    res = Result(
        "crossed_poisson_scaling",
        "Poisson with two crossed factors: CPU per sweep at scale",
        f"`y ~ x + (1 | g1) + (1 | g2)`, simulated (`crossed_poisson.simulate_crossed`): {fmt_count(n)} rows, "
        f"{levels[0]} x {levels[1]} levels. `multilevel.run.prime(kernel, timed=20)`: CPU per kept-kind sweep "
        "(`time.process_time`), recording left out. With the scale moves off after warm-up (as here: the levels "
        "pin their effects) a sweep reads the rows in sequence twice (`crossed_metropolis.paired_pass`, then the "
        "fixed move's pass at its proposal), so its cost is about linear in the rows; the 1e6-row figure is that "
        "time x 1e6 / rows (the same time when the run has 1e6 rows).",
    )
    with one_core():
        df = simulate_crossed(n, levels, seed=1)
        c0 = time.process_time()
        model = multilevel.Model("y ~ x + (1 | g1) + (1 | g2)", df, family="poisson")
        build = time.process_time() - c0
        per_sweep = prime(model.kernel, timed=20)
    at_1e6 = per_sweep * 1e6 / n
    res.tables.append(Table(["rows", "levels", "Model(...) build (CPU)", "per sweep (CPU)",
                             "per sweep at 1e6 rows", "2000 sweeps at 1e6 rows"],
                            [[fmt_count(n), f"{levels[0]} x {levels[1]}", fmt_time(build), fmt_time(per_sweep),
                              fmt_time(at_1e6), fmt_time(2000 * at_1e6)]]))
    res.targets.append(Target("2000 sweeps of 1e6 rows x (1e4, 1e3) levels in under 3 minutes on one core",
                              f"{2000 * at_1e6:.0f} s" + ("" if n == 1_000_000 else
                                                          f" (extrapolated from {fmt_count(n)} rows)"),
                              None if quick else 2000 * at_1e6 < 180))
    res.data = {"rows": n, "levels": list(levels), "build_cpu": build, "per_sweep": per_sweep,
                "per_sweep_1e6_extrapolated": at_1e6}
    return res


BENCHMARKS = {"crossed_poisson_mwg": bench_mwg, "crossed_poisson_scaling": bench_scaling}
