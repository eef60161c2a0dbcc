"""Crossed random effects (several grouping factors): multilevel against NumPyro NUTS on InstEval,
and the per-sweep time of multilevel's crossed sampler against rows and levels (issue 12).

The model, with K scalar random-intercept factors (InstEval: K = 3, students ``s``, lecturers
``d`` and the 28 department x service cells ``dept:service``)::

    a ~ MVN(a_mean, a_cov)                           fixed effects (p: intercept, service1)
    tau_k ~ inverse-gamma(eta0_k / 2, S0_k / 2)      variance of factor k's effects: the scalar
                                                     inverse-Wishart IW(eta0_k, S0_k)
    sigma2 ~ inverse-gamma(nu0 / 2, nu0 sigma0_sq / 2)
    b_k[l] ~ N(0, tau_k) per level l of factor k     centred, or b_k = sqrt(tau_k) eta_k, eta_k ~ N(0, I)
    y_i ~ N(F_i a + sum_k b_k[idx_k[i]], sigma2)

``CrossedProblem`` holds its arrays and priors (picklable, for the NUTS worker processes);
``numpyro_crossed_model`` writes it in NumPyro, general in K, each factor centred or not. The same
machinery runs Poisson models (``family="poisson"``: y_i ~ Poisson(exp(F_i a + sum_k b_k[idx_k[i]])),
no sigma2), built from a multilevel Model by ``problem_from_model`` (``crossed_poisson.py``).

Priors: both samplers target the same posterior: the NUTS side takes ``multilevel.Model(...).priors``
(:func:`priors_from_model`), the data-informed defaults multilevel records in its output;
:func:`placeholder_priors` remains for running the NUTS side alone (``insteval_problem()``).

NUTS runs as in ``peers.py`` (whose helpers it imports): each chain in its own spawned process
with one thread, at most two at a time (``NUTS_WORKERS``), JAX on the CPU in float64, the
initialisation jitted and the whole warm-up + sampling loop compiled ahead of time, so that
compilation is timed apart; the sampling time includes the warm-up. Speed is min bulk ESS
(``az.ess``) over the population parameters (a, every tau_k, sigma2) per CPU second of
sampling (all chains).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .common import Chain, Result, Table, Target, assess, fmt_count, fmt_time, interleaved
from .peers import (
    _fmt,
    _jax_cache_dir,
    _worker_env,
    agreement,
    numpyro_nuts_chain,
    pool_chain_times,
    run_worker_chains,
    summarise,
)

INSTEVAL_FORMULA = "y ~ service + (1 | s) + (1 | d) + (1 | dept:service)"
INSTEVAL_FACTORS = ("s", "d", "dept:service")
#: lme4 1.1-31 REML fit of INSTEVAL_FORMULA (benchmarks/reference/lme4_insteval_time.R prints it), by parameter name
LME4_REML = {"theta[Intercept]": 3.2807, "theta[service[1]]": -0.0535, "Sigma_s": 0.1054, "Sigma_d": 0.2626,
             "Sigma_dept:service": 0.0120, "sigma2": 1.3850}
#: issue 12's target: multilevel's min bulk ESS per CPU second at least this many times NumPyro NUTS's
#: (the issue's figure: 290 per CPU second = 100 x 2.9, NumPyro's best run measured before)
TARGET_RATIO = 100.0
ISSUE_NUTS_ESS_PER_CPU_S = 2.9

#: 4 chains x (1000 warm-up + 1000 draws) for both samplers; --quick: fewer
CHAINS, WARMUP, DRAWS = 4, 1000, 1000
QUICK_CHAINS, QUICK_WARMUP, QUICK_DRAWS = 2, 200, 200
#: NUTS chains running at once, each in its own single-threaded process (one per core on 2 cores)
NUTS_WORKERS = int(os.environ.get("MULTILEVEL_BENCH_NUTS_WORKERS", "2"))

#: NumPyro parametrisations, per factor of INSTEVAL_FACTORS: True = centred
PARAMETRISATIONS: dict[str, tuple[bool, ...]] = {
    "non-centred": (False, False, False),
    "centred": (True, True, True),
    "mixed (s non-centred; d, dept:service centred)": (False, True, True),
}
#: the one the benchmark runs: the faster in min bulk ESS per CPU second. Measured on InstEval, 4 chains x
#: (1000 + 1000), placeholder priors: centred 1.46, non-centred 0.86 (its Var(d) mixes worse and its trees are
#: deeper in the warm-up); 2 x (300 + 300): centred 0.51, non-centred 0.37, mixed 0.10 (benchmarks/README.md)
NUTS_PARAMETRISATION = "centred"


# --------------------------------------------------------------------------- the problem


@dataclass
class CrossedProblem:
    """Arrays and priors of a crossed model with K scalar random-intercept factors: Gaussian (with
    sigma2 ~ inverse-gamma(nu0 / 2, nu0 sigma0_sq / 2)) or Poisson (log link, no sigma2)."""

    name: str
    y: np.ndarray  # (N,)
    F: np.ndarray  # (N, p) fixed design
    fixed_terms: list[str]  # p names, as multilevel names its terms
    factors: list[str]  # K factor names
    idx: list[np.ndarray]  # K arrays (N,) of level indices 0 .. levels[k] - 1
    levels: list[int]
    a_mean: np.ndarray
    a_cov: np.ndarray
    eta0: list[float]  # per factor
    S0: list[float]  # per factor
    nu0: float | None = None  # gaussian only
    sigma0_sq: float | None = None
    priors_from: str = "placeholder"
    family: str = "gaussian"  # or "poisson"
    extra: dict = field(default_factory=dict)

    @property
    def K(self) -> int:
        return len(self.factors)

    @property
    def p(self) -> int:
        return self.F.shape[1]

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def gaussian(self) -> bool:
        return self.family == "gaussian"

    def param_names(self) -> list[str]:
        """Scalar population parameters, named as in multilevel's posterior (``theta`` for a)."""
        return ([f"theta[{t}]" for t in self.fixed_terms] + [f"Sigma_{f}" for f in self.factors]
                + (["sigma2"] if self.gaussian else []))

    def scalars(self, a, taus, sigma2=None) -> dict[str, np.ndarray]:
        """Named scalars from arrays with leading (chain, draw) axes: a (..., p), K taus, sigma2
        (Gaussian only)."""
        out = {f"theta[{t}]": np.asarray(a)[..., j] for j, t in enumerate(self.fixed_terms)}
        out.update({f"Sigma_{f}": np.asarray(t) for f, t in zip(self.factors, taus)})
        if self.gaussian:
            out["sigma2"] = np.asarray(sigma2)
        return out

    def centred_flags(self, centred: bool | tuple[bool, ...]) -> tuple[bool, ...]:
        flags = (bool(centred),) * self.K if isinstance(centred, (bool, np.bool_)) else tuple(map(bool, centred))
        if len(flags) != self.K:
            raise ValueError(f"centred: one flag per factor ({self.K}), got {centred!r}")
        return flags


def insteval_frame():
    import multilevel

    return multilevel.load_dataset("insteval")


def insteval_path() -> str:
    """The CSV file of the bundled InstEval data set (what :func:`insteval_frame` reads)."""
    import multilevel.datasets

    return os.path.join(os.path.dirname(multilevel.datasets.__file__), "insteval.csv")


def insteval_arrays(data=None) -> dict[str, Any]:
    """y, F (intercept, service == "1") and the factor indices of InstEval, by pandas.

    ``dept:service`` is the interaction factor: one level per observed (dept, service) pair.
    """
    import pandas as pd

    df = insteval_frame() if data is None else data
    y = df["y"].to_numpy(dtype=float)
    service = (df["service"].astype(str) == "1").to_numpy(dtype=float)
    F = np.column_stack([np.ones_like(y), service])
    cols = {"s": df["s"].astype(str), "d": df["d"].astype(str),
            "dept:service": df["dept"].astype(str) + ":" + df["service"].astype(str)}
    idx, levels = [], []
    for f in INSTEVAL_FACTORS:
        codes, uniques = pd.factorize(cols[f], sort=True)
        idx.append(codes.astype(np.int64))
        levels.append(len(uniques))
    return {"y": y, "F": F, "fixed_terms": ["Intercept", "service[1]"], "factors": list(INSTEVAL_FACTORS),
            "idx": idx, "levels": levels}


def placeholder_priors(y: np.ndarray, F: np.ndarray, factors: list[str]) -> dict[str, Any]:
    """Stand-alone priors for the NUTS side without a multilevel Model (the benchmark itself uses
    :func:`priors_from_model`).

    a_mean = the least-squares fit of y on F, a_cov = N s2 (F'F)^-1 (unit information; s2 = that
    fit's residual variance RSS / (N - p)); eta0_k = 3 and S0_k = 0.1 for every factor (tau_k ~
    inverse-gamma(1.5, 0.05)); nu0 = 1, sigma0_sq = s2, as multilevel's one-factor defaults take
    nu0 = 1 and a residual variance.
    """
    n, p = F.shape
    coef, *_ = np.linalg.lstsq(F, y, rcond=None)
    s2 = float(np.sum((y - F @ coef) ** 2) / (n - p))
    return {"a_mean": coef, "a_cov": n * s2 * np.linalg.inv(F.T @ F), "eta0": {f: 3.0 for f in factors},
            "S0": {f: 0.1 for f in factors}, "nu0": 1.0, "sigma0_sq": s2}


def priors_from_model(model) -> dict[str, Any]:
    """The priors dict of :func:`insteval_problem` from a multilevel Model with several factors.

    ``model.priors`` with mu0 / Lambda0 (theta, the fixed
    effects), eta0 and S0 as dicts keyed by factor name (S0 1 x 1 for a scalar factor), nu0,
    sigma0_sq. Fixed-only effects in alpha_mean / alpha_cov, if the model has them, join a after theta.
    """
    pr = model.priors
    a_mean = np.atleast_1d(np.asarray(pr.mu0, dtype=float))
    a_cov = np.atleast_2d(np.asarray(pr.Lambda0, dtype=float))
    am = getattr(pr, "alpha_mean", None)
    if am is not None and np.size(am):
        ac = np.atleast_2d(np.asarray(pr.alpha_cov, dtype=float))
        a_cov = np.block([[a_cov, np.zeros((a_cov.shape[0], ac.shape[1]))],
                          [np.zeros((ac.shape[0], a_cov.shape[1])), ac]])
        a_mean = np.concatenate([a_mean, np.asarray(am, dtype=float)])
    return {"a_mean": a_mean, "a_cov": a_cov, "eta0": {f: float(v) for f, v in dict(pr.eta0).items()},
            "S0": {f: float(np.asarray(v, dtype=float).reshape(-1)[0]) for f, v in dict(pr.S0).items()},
            "nu0": None if pr.nu0 is None else float(pr.nu0),
            "sigma0_sq": None if pr.sigma0_sq is None else float(pr.sigma0_sq)}


def insteval_problem(priors: dict | None = None, data=None) -> CrossedProblem:
    """InstEval's ``y ~ service + (1 | s) + (1 | d) + (1 | dept:service)`` as a CrossedProblem.

    ``priors``: a dict with keys a_mean, a_cov, eta0 (factor -> float), S0 (factor -> float), nu0,
    sigma0_sq (such as :func:`priors_from_model` gives); None: :func:`placeholder_priors`.
    """
    arr = insteval_arrays(data)
    source = "placeholder" if priors is None else "given"
    pr = placeholder_priors(arr["y"], arr["F"], arr["factors"]) if priors is None else priors
    p = arr["F"].shape[1]
    a_mean, a_cov = np.asarray(pr["a_mean"], dtype=float), np.asarray(pr["a_cov"], dtype=float)
    if a_mean.shape != (p,) or a_cov.shape != (p, p):
        raise ValueError(f"a_mean / a_cov must be ({p},) / ({p}, {p}), got {a_mean.shape} / {a_cov.shape}")
    return CrossedProblem(
        name="insteval", y=arr["y"], F=arr["F"], fixed_terms=arr["fixed_terms"], factors=arr["factors"],
        idx=arr["idx"], levels=arr["levels"], a_mean=a_mean, a_cov=a_cov,
        eta0=[float(pr["eta0"][f]) for f in arr["factors"]], S0=[float(pr["S0"][f]) for f in arr["factors"]],
        nu0=float(pr["nu0"]), sigma0_sq=float(pr["sigma0_sq"]), priors_from=source,
    )


def problem_from_model(name: str, model) -> CrossedProblem:
    """A CrossedProblem of a multilevel Model with several scalar random-intercept factors (Gaussian
    or Poisson, no offset): its design (fixed columns ordered theta then alpha, as
    :func:`priors_from_model` joins their priors) and its resolved priors."""
    d = model.design
    family = model.family.name
    if family not in ("gaussian", "poisson") or any(tuple(f.names) != ("Intercept",) for f in d.factors):
        raise ValueError(f"{name}: Gaussian or Poisson models with (1 | factor) terms only")
    if d.offset is not None and np.any(d.offset):
        raise ValueError(f"{name}: offsets are not written into the NumPyro model")
    order = np.concatenate([d.theta_index, d.alpha_index])
    pr = priors_from_model(model)
    return CrossedProblem(
        name=name, y=np.asarray(d.y, dtype=float), F=np.ascontiguousarray(d.F[:, order]),
        fixed_terms=[d.fixed_names[i] for i in order], factors=[f.name for f in d.factors],
        idx=[np.asarray(f.factor.index, dtype=np.int64) for f in d.factors], levels=[f.n_levels for f in d.factors],
        a_mean=pr["a_mean"], a_cov=pr["a_cov"], eta0=[pr["eta0"][f.name] for f in d.factors],
        S0=[pr["S0"][f.name] for f in d.factors], nu0=pr["nu0"], sigma0_sq=pr["sigma0_sq"],
        priors_from="multilevel.Model(...).priors", family=family,
    )


def initial_values(P: CrossedProblem, seed: int, centred: bool | tuple[bool, ...]) -> dict[str, np.ndarray]:
    """Starting point of a NUTS chain (constrained values), the same point in either parametrisation:
    a = a_mean, tau_k = its prior mean S0_k / (eta0_k - 2) (S0_k where that is undefined), sigma2 =
    sigma0_sq (Gaussian only), each with PyMC's 'jitter' (uniform(-1, 1) on the unconstrained scale);
    eta_k uniform(-1, 1) and, centred, b_k = sqrt(tau_k) eta_k."""
    rng = np.random.default_rng(seed)
    flags = P.centred_flags(centred)
    v: dict[str, np.ndarray] = {"a": P.a_mean + rng.uniform(-1, 1, P.p)}
    for k in range(P.K):
        t = P.S0[k] / (P.eta0[k] - 2) if P.eta0[k] > 2 else P.S0[k]
        tau = t * math.exp(rng.uniform(-1, 1))
        e = rng.uniform(-1, 1, P.levels[k])
        v[f"tau_{k}"] = np.asarray(tau)
        if flags[k]:
            v[f"b_{k}"] = math.sqrt(tau) * e
        else:
            v[f"eta_{k}"] = e
    if P.gaussian:
        v["sigma2"] = np.asarray(P.sigma0_sq * math.exp(rng.uniform(-1, 1)))
    return v


# --------------------------------------------------------------------------- NumPyro


def numpyro_crossed_model(P: CrossedProblem, centred: bool | tuple[bool, ...]):
    """The NumPyro model (sites a, tau_k, b_k or eta_k, sigma2 if Gaussian, y); data as keyword
    arguments F, y, idx (a tuple of K index arrays), so that they are traced rather than baked in."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    flags = P.centred_flags(centred)
    a_mean, a_cov = jnp.asarray(P.a_mean), jnp.asarray(P.a_cov)

    def model(F, y, idx):
        a = numpyro.sample("a", dist.MultivariateNormal(a_mean, covariance_matrix=a_cov))
        mu = F @ a
        for k in range(P.K):
            tau = numpyro.sample(f"tau_{k}", dist.InverseGamma(0.5 * P.eta0[k], 0.5 * P.S0[k]))
            if flags[k]:
                b = numpyro.sample(f"b_{k}", dist.Normal(0.0, jnp.sqrt(tau)).expand([P.levels[k]]).to_event(1))
            else:
                e = numpyro.sample(f"eta_{k}", dist.Normal(0.0, 1.0).expand([P.levels[k]]).to_event(1))
                b = jnp.sqrt(tau) * e
            mu = mu + b[idx[k]]
        if not P.gaussian:
            numpyro.sample("y", dist.Poisson(jnp.exp(mu)), obs=y)
            return
        sigma2 = numpyro.sample("sigma2", dist.InverseGamma(0.5 * P.nu0, 0.5 * P.nu0 * P.sigma0_sq))
        numpyro.sample("y", dist.Normal(mu, jnp.sqrt(sigma2)), obs=y)

    return model


def numpyro_crossed_data(P: CrossedProblem) -> dict:
    import jax.numpy as jnp

    return {"F": jnp.asarray(P.F), "y": jnp.asarray(P.y), "idx": tuple(jnp.asarray(i) for i in P.idx)}


def _crossed_chain(P: CrossedProblem, centred, warmup: int, draws: int, seed: int, cache: str | None = None) -> dict:
    """One NumPyro NUTS chain of ``P`` in this (worker) process (``peers.numpyro_nuts_chain``)."""

    def build():
        import jax.numpy as jnp

        init = {k: jnp.asarray(v) for k, v in initial_values(P, seed, centred).items()}
        keep = ["a"] + [f"tau_{k}" for k in range(P.K)] + (["sigma2"] if P.gaussian else [])
        return numpyro_crossed_model(P, centred), numpyro_crossed_data(P), init, keep

    return numpyro_nuts_chain(build, warmup, draws, seed, cache)


def run_crossed_nuts(P: CrossedProblem, centred, warmup: int, draws: int, chains: int, seed: int = 1,
                     workers: int | None = None) -> dict:
    """``chains`` NumPyro NUTS chains, each in its own single-threaded process, ``workers`` at a time."""
    workers = NUTS_WORKERS if workers is None else workers
    results = run_worker_chains(_crossed_chain, (P, centred, warmup, draws), chains, seed=seed,
                                cache=_jax_cache_dir(), workers=workers)
    st = {n: np.stack([r["draws"][n] for r in results]) for n in results[0]["draws"]}
    scal = P.scalars(st["a"], [st[f"tau_{k}"] for k in range(P.K)], st.get("sigma2"))
    total_steps = sum(r["total_steps"] for r in results)
    return {"scalars": scal, **pool_chain_times(results, workers), "chains": chains, "warmup": warmup,
            "draws": draws, "workers": workers, "total_steps": total_steps,
            "ms_per_step": 1e3 * sum(r["cpu"] for r in results) / max(1, total_steps)}


def reference_logdensity(P: CrossedProblem, values: dict[str, np.ndarray], centred) -> float:
    """The model's joint log density (constrained values, no Jacobian) written with scipy.stats."""
    from scipy import stats

    flags = P.centred_flags(centred)
    a = values["a"]
    lp = stats.multivariate_normal(P.a_mean, P.a_cov).logpdf(a)
    mu = P.F @ a
    for k in range(P.K):
        tau = float(values[f"tau_{k}"])
        lp += stats.invgamma(0.5 * P.eta0[k], scale=0.5 * P.S0[k]).logpdf(tau)
        if flags[k]:
            b = values[f"b_{k}"]
            lp += stats.norm(0.0, math.sqrt(tau)).logpdf(b).sum()
        else:
            e = values[f"eta_{k}"]
            lp += stats.norm().logpdf(e).sum()
            b = math.sqrt(tau) * e
        mu = mu + b[P.idx[k]]
    if not P.gaussian:
        return float(lp + stats.poisson(np.exp(mu)).logpmf(P.y).sum())
    s2 = float(values["sigma2"])
    lp += stats.invgamma(0.5 * P.nu0, scale=0.5 * P.nu0 * P.sigma0_sq).logpdf(s2)
    lp += stats.norm(mu, math.sqrt(s2)).logpdf(P.y).sum()
    return float(lp)


def check_crossed_model(P: CrossedProblem, parametrisations: tuple = (False, True), n_points: int = 3,
                        seed: int = 0) -> float:
    """Largest relative error of NumPyro's joint log density against :func:`reference_logdensity`
    at random points, for each parametrisation (run in a worker: JAX stays out of the parent)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from numpyro.infer.util import log_density

    rng = np.random.default_rng(seed)
    worst = 0.0
    for centred in parametrisations:
        flags = P.centred_flags(centred)
        model, kw = numpyro_crossed_model(P, flags), numpyro_crossed_data(P)
        for t in range(n_points):
            v = initial_values(P, int(rng.integers(1 << 30)), flags)
            nd = float(log_density(model, (), kw, {k: jnp.asarray(x) for k, x in v.items()})[0])
            ref = reference_logdensity(P, v, flags)
            worst = max(worst, abs(nd - ref) / max(1.0, abs(ref)))
    return worst


def self_check(P: CrossedProblem, parametrisations: tuple | None = None) -> float:
    """:func:`check_crossed_model` of the parametrisations (default: InstEval's, every one of
    ``PARAMETRISATIONS``), in a spawned worker process."""
    params = tuple(PARAMETRISATIONS.values()) if parametrisations is None else parametrisations
    with _worker_env(), ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(check_crossed_model, P, params).result()


# --------------------------------------------------------------------------- multilevel


class NotSupported(Exception):
    """multilevel cannot build the model yet (its Model raised a ModelError or NotImplementedError)."""


def build_multilevel(formula: str, data) -> tuple[Any, float, float]:
    """(Model, wall, CPU seconds of building it); NotSupported while the package rejects the formula."""
    import multilevel
    from multilevel.errors import ModelError

    c0, t0 = time.process_time(), time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = multilevel.Model(formula, data)
    except (ModelError, NotImplementedError) as e:
        raise NotSupported(f"{type(e).__name__}: {e}") from e
    return model, time.perf_counter() - t0, time.process_time() - c0


def multilevel_scalars(posterior, P: CrossedProblem) -> dict[str, np.ndarray]:
    """The population parameters of a multilevel fit of P's model, named as ``P.param_names()``:
    ``theta`` (dim term; ``alpha``'s fixed-only terms after it if the fit has them), ``Sigma_<factor>``
    (1 x 1 each), ``sigma2`` (Gaussian)."""
    fixed = [posterior["theta"]] + ([posterior["alpha"]] if "alpha" in posterior else [])
    out: dict[str, np.ndarray] = {}
    for da in fixed:
        dim = [d for d in da.dims if d not in ("chain", "draw")][0]
        for i, term in enumerate(da.coords[dim].values):
            out[f"theta[{term}]"] = da.isel({dim: i}).values
    for f in P.factors:
        da = posterior[f"Sigma_{f}"]
        out[f"Sigma_{f}"] = da.values.reshape(da.sizes["chain"], da.sizes["draw"])
    if P.gaussian:
        out["sigma2"] = posterior["sigma2"].values
    missing = [n for n in P.param_names() if n not in out]
    if missing:
        raise KeyError(f"the multilevel fit lacks {missing}; it has {sorted(out)}")
    return {n: out[n] for n in P.param_names()}


def run_multilevel(model, P: CrossedProblem, chains: int, warmup: int, draws: int, seed: int = 1) -> dict:
    """A multilevel fit, all chains in this process (cores=1), the process CPU clock read around it."""
    model.fit(chains=1, warmup=10, draws=10, cores=1, seed=0, progress=False)  # compile numba code, untimed
    c0, t0 = time.process_time(), time.perf_counter()
    fit = model.fit(chains=chains, warmup=warmup, draws=draws, cores=1, seed=seed, progress=False)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    scal = multilevel_scalars(fit.posterior, P)
    return {"scalars": scal, "cpu": cpu, "wall": wall, "chains": chains, "warmup": warmup, "draws": draws,
            "sampler": getattr(model, "sampler", "?")}


def _vec(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in np.ravel(v)) + ")"


def _mat(m) -> str:
    return "(" + "; ".join(_vec(row)[1:-1] for row in np.atleast_2d(m)) + ")"


def cpu_to_ess(run: dict, ess: float = 1000.0) -> float:
    """CPU seconds at which every population parameter passes bulk ESS ``ess``, estimated as the
    run's CPU time / (min ESS / ess) (ESS grows linearly in the draws); nan if the run fell short."""
    return run["cpu"] * ess / run["min_ess"] if run["min_ess"] >= ess else float("nan")


def lme4_fit_time(data_path: str) -> dict | None:
    """lme4's REML fit of INSTEVAL_FORMULA timed in R (``reference/lme4_insteval_time.R``): its
    CPU and wall seconds of ``lmer()`` alone; None when Rscript with lme4 is not installed."""
    import shutil
    import subprocess

    script = os.path.join(os.path.dirname(__file__), "reference", "lme4_insteval_time.R")
    if shutil.which("Rscript") is None:
        return None
    done = subprocess.run(["Rscript", script, data_path], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    cpu, wall = map(float, done.stdout.split("\n", 1)[0].split())
    return {"cpu": cpu, "wall": wall, "version": subprocess.run(
        ["Rscript", "-e", "cat(as.character(packageVersion('lme4')))"], capture_output=True, text=True).stdout}


# --------------------------------------------------------------------------- benchmark: InstEval


def bench_insteval(quick: bool = False, parametrisations: tuple[str, ...] | None = None,
                   workers: int | None = None) -> Result:
    """InstEval, y ~ service + (1|s) + (1|d) + (1|dept:service): multilevel vs NumPyro NUTS, min bulk ESS per CPU s."""
    import importlib.metadata as md

    chains, warmup, draws = (QUICK_CHAINS, QUICK_WARMUP, QUICK_DRAWS) if quick else (CHAINS, WARMUP, DRAWS)
    params = parametrisations or (NUTS_PARAMETRISATION,)
    data = insteval_frame()

    # multilevel first: its Model gives the priors NUTS must share
    ml: dict | None = None
    try:
        model, build_wall, build_cpu = build_multilevel(INSTEVAL_FORMULA, data)
    except NotSupported as e:
        unsupported, model = str(e), None
    else:
        unsupported = ""
    P = insteval_problem(priors_from_model(model) if model is not None else None, data)
    if model is not None:
        P.priors_from = "multilevel.Model(...).priors"
        ml = summarise(run_multilevel(model, P, chains, warmup, draws))
        ml["build_wall"], ml["build_cpu"] = build_wall, build_cpu
        del model

    flags = tuple(PARAMETRISATIONS[k] for k in params)
    check = self_check(P)
    if check > 1e-9:
        raise AssertionError(f"the NumPyro model's log density differs from the scipy reference by {check:.1e}")

    runs: dict[str, dict] = {}
    for name, fl in zip(params, flags):
        runs[f"NumPyro NUTS, {name}"] = summarise(run_crossed_nuts(P, fl, warmup, draws, chains, workers=workers))
    best = max(runs, key=lambda l: runs[l]["ess_cpu"])
    nuts = runs[best]

    res = Result(
        "crossed_insteval",
        "Crossed factors: InstEval against NumPyro NUTS",
        f"Model `{INSTEVAL_FORMULA}` on lme4's InstEval ({P.n:,} rows; levels: "
        + ", ".join(f"{f} {L:,}" for f, L in zip(P.factors, P.levels))
        + f"; p = {P.p} fixed effects). Both samplers: {chains} chains x ({warmup} warm-up + {draws} draws). "
        "multilevel: its default sampler, all chains in one process (`cores=1`), CPU time by `time.process_time` "
        "around `Model.fit` (numba compilation done before, by a 10 + 10 sweep fit). NumPyro NUTS: each chain in "
        "its own single-threaded process, "
        f"{NUTS_WORKERS if workers is None else workers} at a time, JAX on the CPU in float64, default NUTS settings "
        "(target acceptance 0.8, diagonal mass matrix adapted in the warm-up, tree depth 10); compilation timed apart, "
        "sampling time includes the warm-up. Min bulk ESS (`az.ess`) over the population parameters: the fixed effects "
        "(`theta`), each factor's variance (`Sigma_<factor>`), `sigma2`.",
    )
    if ml:
        res.notes.append(f"multilevel's sampler: {ml['sampler']}. Its CPU time is that of the whole `Model.fit` "
                         "call (the sweeps and the making of the fit's InferenceData).")
    if unsupported:
        res.notes.append(f"**multilevel: not yet supported** (`Model` raised {unsupported}); only the NUTS side "
                         "ran. Its priors are the placeholder ones of `crossed.placeholder_priors`.")
    res.notes.append(
        f"Priors ({P.priors_from}): a ~ MVN(mean {_vec(P.a_mean)}, covariance {_mat(P.a_cov)}); "
        + "; ".join(f"Var({f}) ~ IG({e / 2:g}, {s / 2:g})" for f, e, s in zip(P.factors, P.eta0, P.S0))
        + f"; sigma2 ~ IG({P.nu0 / 2:g}, {P.nu0 * P.sigma0_sq / 2:.4g}).")

    rows = []
    table_runs = ({"multilevel, cores=1": ml} if ml else {}) | runs
    for label, r in table_runs.items():
        is_nuts = label.startswith("NumPyro")
        comp = (f"{r['compile']:.1f} s ({r['compile_cpu']:.1f} s CPU)" if is_nuts
                else f"{r['build_cpu']:.2f} s CPU (Model build)")
        t1000 = cpu_to_ess(r)
        rows.append([label, f"{r['chains']} x ({r['warmup']} + {r['draws']})", comp, f"{r['wall']:.1f} s",
                     f"{r['cpu']:.1f} s", f"{r['min_ess']:.0f} (`{r['min_at']}`)", _fmt(r["ess_cpu"]),
                     "not reached" if t1000 != t1000 else f"{_fmt(t1000)} s", f"{r['max_rhat']:.3f}",
                     str(r["divergences"]) if is_nuts else "",
                     f"{r['mean_steps']:.0f} ({r['total_steps'] / (r['chains'] * (r['warmup'] + r['draws'])):.0f}); "
                     f"{r['ms_per_step']:.2f} ms" if is_nuts else ""])
    if not ml:
        rows.insert(0, ["multilevel", "not yet supported", "", "", "", "", "", "", "", "", ""])
    res.tables.append(Table(
        ["sampler", "chains x (warm-up + draws)", "compile / setup", "sampling, wall", "sampling, CPU (all chains)",
         "min bulk ESS (at)", "min ESS / CPU s", "CPU s to bulk ESS 1000 (every parameter)", "max R-hat",
         "divergences", "leapfrog steps per draw (per iteration, warm-up included); CPU per step"], rows))

    labels = list(table_runs)
    prow = []
    for n in P.param_names():
        prow.append([f"`{n}`", f"{LME4_REML[n]:.4f}" if n in LME4_REML else ""]
                    + [f"{table_runs[l]['diag'][n]['mean']:.4g} ± {table_runs[l]['diag'][n]['mcse']:.2g} "
                       f"({table_runs[l]['diag'][n]['ess']:.0f})" for l in labels])
    res.tables.append(Table(["parameter", "lme4 1.1-31 REML"] + labels, prow,
                            caption="Posterior mean ± Monte Carlo standard error (bulk ESS) of each population "
                                    "parameter, and lme4's REML estimate:"))

    if len(runs) > 1:
        ranked = sorted(runs, key=lambda l: -runs[l]["ess_cpu"])
        res.notes.append("Parametrisation: " + ", ".join(f"{l} {_fmt(runs[l]['ess_cpu'])}" for l in ranked)
                         + " min ESS per CPU second; the ratio takes the best.")
    else:
        res.notes.append(f"Parametrisation: {params[0]}, the faster for NumPyro on this model in min bulk ESS per "
                         "CPU second (measured against the others of `crossed.PARAMETRISATIONS`; benchmarks/README.md).")
    target = (f"min bulk ESS per CPU second at least {TARGET_RATIO:.0f}x NumPyro NUTS's on the same model in the same "
              f"run (issue 12: {TARGET_RATIO * ISSUE_NUTS_ESS_PER_CPU_S:.0f}, from NUTS's {ISSUE_NUTS_ESS_PER_CPU_S} "
              "measured earlier)")
    data_out: dict[str, Any] = {"check": check, "best_nuts": best, "priors_from": P.priors_from,
                                "runs": {l: {k: v for k, v in r.items() if k != "scalars"}
                                         for l, r in table_runs.items()}}
    if ml:
        ratio = ml["ess_cpu"] / nuts["ess_cpu"]
        z, at, beyond = agreement(ml, nuts)
        res.notes.append(f"Agreement of {best} with multilevel: largest |mean difference| / sqrt(MCSE_a^2 + MCSE_b^2) "
                         f"{z:.1f} (`{at}`)" + (f"; beyond 4: {', '.join(beyond)}." if beyond else ", all within 4."))
        res.targets.append(Target(target, f"{ratio:,.0f}x (multilevel {_fmt(ml['ess_cpu'])} vs {best} "
                                          f"{_fmt(nuts['ess_cpu'])} per CPU second)",
                                  assess(ratio >= TARGET_RATIO, quick)))
        data_out["ratio_cpu"] = ratio
        lme4 = lme4_fit_time(insteval_path())
        to_1000 = ml["build_cpu"] + cpu_to_ess(ml)
        aim = ("every population parameter at bulk ESS 1000 (Model build + sampling CPU) sooner than lme4's REML "
               "point estimate (`lmer`, timed in the same run by `reference/lme4_insteval_time.R`)")
        if lme4 is None:
            res.targets.append(Target(aim, f"{_fmt(to_1000)} CPU s; lme4 not installed here (Rscript with lme4)", None))
        else:
            res.targets.append(Target(aim, f"{_fmt(to_1000)} CPU s against lme4 {lme4['version']}'s {lme4['cpu']:.1f} "
                                           f"CPU s ({lme4['wall']:.1f} s wall)", assess(to_1000 < lme4["cpu"], quick)))
            data_out["lme4"] = lme4
        data_out["cpu_to_ess_1000_with_build"] = to_1000
    else:
        res.targets.append(Target(target, f"multilevel: not yet supported; {best} {_fmt(nuts['ess_cpu'])} per CPU "
                                          "second", assess(False, quick)))
        data_out["unsupported"] = unsupported
    res.notes.append(f"Self-check: NumPyro's joint log density against a scipy.stats reference at random points, "
                     f"every parametrisation: largest relative error {check:.1e}.")
    res.notes.append("Versions: " + ", ".join(f"{n} {md.version(n)}" for n in ("numpyro", "jax", "jaxlib", "arviz")))
    res.data = data_out
    return res


# --------------------------------------------------------------------------- benchmark: scaling

SCALING_FORMULA = "y ~ x + (1 | g1) + (1 | g2)"
#: (rows, levels of each factor): flat in rows at fixed levels, then levels up to 1e5
SCALING_CELLS = [(10_000, 1_000), (100_000, 1_000), (1_000_000, 1_000), (100_000, 10_000), (1_000_000, 10_000),
                 (1_000_000, 100_000)]
QUICK_SCALING_CELLS = [(10_000, 1_000), (100_000, 1_000), (100_000, 10_000)]
UNTIMED_SWEEPS = 5


def simulate_crossed(n_rows: int, levels: tuple[int, ...], seed: int = 0, sd: tuple[float, ...] | None = None):
    """A DataFrame for ``y ~ x + (1 | g1) + (1 | g2) ...``: one integer column g<k> per factor with
    ``levels[k]`` levels, each level given at least one row and the rest spread at random, the
    factors independent (crossed); y = 1 + 0.5 x + sum_k b_k[g_k] + N(0, 1), b_k ~ N(0, sd_k^2)."""
    import pandas as pd

    if n_rows < max(levels):
        raise ValueError("need at least one row per level")
    rng = np.random.default_rng(seed)
    sd = sd or tuple(0.5 + 0.5 * k for k in range(len(levels)))
    x = rng.standard_normal(n_rows)
    y = 1.0 + 0.5 * x + rng.standard_normal(n_rows)
    cols: dict[str, np.ndarray] = {}
    for k, L in enumerate(levels):
        g = np.concatenate([np.arange(L), rng.integers(0, L, n_rows - L)])
        rng.shuffle(g)
        y += sd[k] * rng.standard_normal(L)[g]
        cols[f"g{k + 1}"] = g
    return pd.DataFrame({"y": y, "x": x, **cols})


def scaling_runs(cells: list[tuple[int, int]], formula: str = SCALING_FORMULA, repeats: int = 5,
                 n_factors: int = 2) -> dict[tuple[int, int], dict]:
    """Per cell (rows, levels): the Model construction (the one-time statistics) in wall and CPU
    seconds, then ``kernel.init`` and ``UNTIMED_SWEEPS`` untimed ``kernel.step``s, then the sweeps
    timed in blocks, the blocks of all cells interleaved (``common.interleaved``)."""
    warm = simulate_crossed(500, (20,) * n_factors, seed=99)
    model = build_multilevel(formula, warm)[0]  # NotSupported while the package rejects the formula
    Chain(model.kernel).run(UNTIMED_SWEEPS)  # compile the numba code
    out: dict[tuple[int, int], dict] = {}
    chains: dict[tuple[int, int], Chain] = {}
    for n, L in cells:
        df = simulate_crossed(n, (L,) * n_factors, seed=n + L)
        model, wall, cpu = build_multilevel(formula, df)
        # non-empty (level of g1, level of g2) cells: the cross table's entries (C holds each twice)
        out[(n, L)] = {"build_wall": wall, "build_cpu": cpu, "cells": int(model.kernel.stats.C_col.size) // 2}
        chains[(n, L)] = Chain(model.kernel, seed=n + L)
        chains[(n, L)].run(UNTIMED_SWEEPS)
        del model, df
    for cell, t in interleaved(chains, repeats).items():
        out[cell]["sweep"] = t
    return out


def bench_scaling(quick: bool = False) -> Result:
    """Crossed factors: per-sweep time of multilevel's sampler against rows and levels (two crossed factors)."""
    cells = QUICK_SCALING_CELLS if quick else SCALING_CELLS
    repeats = 3 if quick else 11
    res = Result(
        "crossed_scaling",
        "Crossed factors: per-sweep time against rows and levels",
        f"Model `{SCALING_FORMULA}` on simulated data (`crossed.simulate_crossed`): two crossed random-intercept "
        "factors with the same number of levels each, every level given at least one row, the rest at random. "
        "`multilevel.Model(formula, df)` is timed once per cell (the one-time statistics pass); then its `kernel` "
        f"runs {UNTIMED_SWEEPS} untimed sweeps and `state = kernel.step(state, rng)` is timed in {repeats} blocks of "
        "about 50 ms per cell, the blocks of all cells interleaved; one process, one thread.",
    )
    try:
        out = scaling_runs(cells, repeats=repeats)
    except NotSupported as e:
        res.notes.append(f"**multilevel: not yet supported** (`Model` raised {e}); nothing was timed.")
        res.tables.append(Table(["rows N", "levels per factor", "per sweep"],
                                [[fmt_count(n), fmt_count(L), "not yet supported"] for n, L in cells]))
        res.data = {"unsupported": str(e), "cells": cells}
        return res
    base = {L: out[(n, L)]["sweep"] for n, L in sorted(cells, reverse=True)}  # the fewest rows per levels
    res.tables.append(Table(
        ["rows N", "levels per factor", "per sweep (wall, median)", "spread of blocks", "per sweep (CPU)",
         "vs fewest rows at these levels (CPU)", "non-empty cells of the cross table",
         "Model(...) build, once (wall / CPU)"],
        [[fmt_count(n), fmt_count(L), fmt_time(out[(n, L)]["sweep"].median), out[(n, L)]["sweep"].spread,
          fmt_time(out[(n, L)]["sweep"].cpu), f"{out[(n, L)]['sweep'].cpu / base[L].cpu:.2f}x",
          fmt_count(out[(n, L)]["cells"]),
          f"{fmt_time(out[(n, L)]['build_wall'])} / {fmt_time(out[(n, L)]['build_cpu'])}"] for n, L in cells]))
    res.notes.append(
        "A sweep reads the statistics, never the rows: its cost is linear in the levels and in the non-empty cells "
        "of the cross-factor table (pairs of levels that share a row; at most N and at most the product of the "
        "levels). At fixed levels it grows with the rows only while new cells fill (1,000 x 1,000 levels: 10,000 "
        "rows fill about 1% of the 1e6 cells, 1e6 rows about 63%); rows that fall in filled cells cost nothing.")
    res.data = {f"{n}x{L}": {"sweep": v["sweep"].as_dict(), "build_wall": v["build_wall"],
                             "build_cpu": v["build_cpu"], "cells": v["cells"]} for (n, L), v in out.items()}
    return res


BENCHMARKS = {"crossed_insteval": bench_insteval, "crossed_scaling": bench_scaling}
