"""multilevel against NUTS in PyMC and NumPyro, with matched priors (issue 6, point 2 and Targets).

For each data set the SAME model is written in PyMC and in NumPyro, with the priors that
``multilevel.Model(formula, data, family)`` resolves (``m.priors``) and its design arrays
(``m.design``: X, Z, group index, y, offset)::

    theta ~ MVN(mu0, Lambda0)                 (the varying terms with a population mean)
    Sigma ~ inverse-Wishart(eta0, scale S0)   E[Sigma] = S0 / (eta0 - p - 1), scipy's convention
    sigma2 ~ inverse-gamma(nu0 / 2, nu0 sigma0_sq / 2)      (gaussian)
    alpha ~ MVN(alpha_mean, alpha_cov)        (fixed-only terms)
    beta_j ~ MVN(theta, Sigma)                centred, or beta_j = theta + chol(Sigma) eta_j, eta_j ~ N(0, I)
    y_i ~ N(x_i' beta_g[i] + z_i' alpha + offset_i, sigma2)  or  Poisson(exp(...))

Neither library has an inverse-Wishart prior for a covariance that NUTS can use directly, so
both parametrise Sigma = L L' by an unconstrained vector u (the lower triangle of L, its
diagonal as logs) and add log IW(L L' | eta0, S0) + log |d vech(Sigma) / d u| as a potential
(``pm.Potential``, ``numpyro.factor``). The self-check (``check_models``) compares that log
density with ``scipy.stats.invwishart.logpdf``, the log-Jacobian with an automatic-differentiation
Jacobian, and the whole PyMC and NumPyro log densities with each other at random points.

The NumPyro model writes the centred MVN(theta, Sigma) of the m groups' beta_j out with L^-1 as a
matrix product (``numpyro.factor``): XLA's CPU triangular solve with m right-hand sides, which
NumPyro's ``MultivariateNormal`` uses, takes about 8 ms for m = 1000 here and made the gradient
8x slower on the 1e3 x 100 set. That favours NumPyro, as it should: the comparison is against
NUTS done well. PyMC's ``MvNormal`` has no such cost and is used as is.

NUTS runs one chain per core: each chain in its own spawned process with one thread,
two at a time on the two cores. Compilation (NumPyro: ``NUTS.init`` plus the ahead-of-time
``jit(...).lower(...).compile()`` of the whole warm-up + sampling loop; PyMC: building the
model and compiling the NUTS step's logp/dlogp, plus a 2+2-draw run that compiles the trace
function) is timed apart; the sampling time includes the warm-up. NumPyro's ``NUTS.init`` is
jitted (run eagerly it compiles hundreds of small programs, 20-60 s here) and a JAX compilation
cache is shared by the run's processes.

Speed is min bulk ESS over the population parameters (theta, alpha, the unique entries of Sigma,
sigma2) per second of sampling: per CPU second (the CPU time of all chains, which the other
processes on this shared machine do not inflate; the verdicts use it) and per wall second with the
chains on the two cores.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .common import GAUSSIAN_FORMULA, Result, Table, Target, assess, simulate_gaussian

# --------------------------------------------------------------------------- configuration

#: multilevel: its defaults (4 chains x (1000 warm-up + 1000 draws))
ML_CHAINS, ML_WARMUP, ML_DRAWS = 4, 1000, 1000
#: NUTS: chains run two at a time, one per core
NUTS_CHAINS = 2

#: name -> title, formula, data, family, NUTS (warm-up, draws) per chain for each peer, parametrisations
#: to run with NumPyro, those to run with PyMC ("best": the one NumPyro mixed better, in min bulk ESS
#: per CPU second; "none": not run), target ratio. The sizes keep the whole suite near 15 minutes on an
#: idle 2-core machine (about 40 under a load of 4): PyMC's NUTS costs about 1 ms of Python per leapfrog
#: step on top of the gradient, so it gets fewer iterations; each run keeps warm-up = draws, so that ESS
#: per second (warm-up included) stays comparable.
DATASETS: dict[str, dict[str, Any]] = {
    "hsb82": dict(title="hsb82", formula="mAch ~ ses + (ses | school)", data="hsb82", family="gaussian",
                  sizes={"numpyro": (1000, 1000), "pymc": (500, 500)}, params=("centred", "noncentred"),
                  pymc_params="all", target=50.0),
    "sleepstudy": dict(title="sleepstudy", formula="Reaction ~ Days + (Days | Subject)", data="sleepstudy",
                       family="gaussian", sizes={"numpyro": (1000, 1000), "pymc": (500, 500)},
                       params=("centred", "noncentred"), pymc_params="best", target=None),
    "epil": dict(title="epil (Poisson)", formula="y ~ lbase*trt + lage + V4 + (1 | subject)", data="epil",
                 family="poisson", sizes={"numpyro": (1000, 1000), "pymc": (500, 500)},
                 params=("centred", "noncentred"), pymc_params="best", target=5.0),
    "sim1e3": dict(title="simulated linear, 1,000 groups x 100 rows", formula=GAUSSIAN_FORMULA,
                   data=("sim", 100_000, 1000, 11), family="gaussian",
                   sizes={"numpyro": (1000, 1000), "pymc": (250, 250)}, params=("centred",), pymc_params="all",
                   target=100.0),
    "sim1e4": dict(title="simulated linear, 10,000 groups x 20 rows", formula=GAUSSIAN_FORMULA,
                   data=("sim", 200_000, 10_000, 12), family="gaussian",
                   sizes={"numpyro": (400, 400), "pymc": (150, 150)}, params=("centred",), pymc_params="none",
                   target=None),
}
QUICK_SIZES = {"sim1e3": ("sim", 10_000, 100, 11), "sim1e4": ("sim", 20_000, 1000, 12)}

#: environment of the NUTS worker processes: one thread each
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "JAX_PLATFORMS": "cpu",
    "JAX_ENABLE_X64": "1",
}




def ensure_pytensor_blas() -> None:
    """Point PyTensor at Debian's OpenBLAS (package libopenblas-dev) before it is imported.

    PyTensor 2.38 looks for ``-lblas -lcblas`` or ``-lopenblas -lgfortran -lgomp``; Debian's
    libopenblas-dev gives libopenblas.so and libblas.so but no libcblas.so nor libgfortran.so,
    so the search fails and PyTensor would run without BLAS. ``PYTENSOR_FLAGS`` set by the
    user is left alone.
    """
    import ctypes.util

    flags = os.environ.get("PYTENSOR_FLAGS", "")
    if "blas__ldflags" in flags or "blas.ldflags" in flags or not ctypes.util.find_library("openblas"):
        return
    os.environ["PYTENSOR_FLAGS"] = ",".join(f for f in (flags, "blas__ldflags=-lopenblas") if f)


# --------------------------------------------------------------------------- the problem


@dataclass
class Problem:
    """Design arrays and priors of one model, as multilevel resolved them (picklable)."""

    name: str
    family: str
    X: np.ndarray
    Z: np.ndarray
    g: np.ndarray
    y: np.ndarray
    offset: np.ndarray
    m: int
    free: np.ndarray
    varying_terms: list[str]
    fixed_terms: list[str]
    mu0: np.ndarray
    Lambda0: np.ndarray
    eta0: float
    S0: np.ndarray
    nu0: float | None
    sigma0_sq: float | None
    alpha_mean: np.ndarray
    alpha_cov: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def p(self) -> int:
        return self.X.shape[1]

    @property
    def r(self) -> int:
        return self.Z.shape[1]

    @property
    def gaussian(self) -> bool:
        return self.family == "gaussian"

    @property
    def tril(self) -> tuple[np.ndarray, np.ndarray]:
        return np.tril_indices(self.p)

    def param_names(self) -> list[str]:
        """Scalar population parameters, named as in multilevel's posterior."""
        names = [f"theta[{t}]" for t, f in zip(self.varying_terms, self.free) if f]
        names += [f"alpha[{t}]" for t in self.fixed_terms]
        rows, cols = self.tril
        names += [f"Sigma[{self.varying_terms[i]}, {self.varying_terms[j]}]" for i, j in zip(rows, cols)]
        if self.gaussian:
            names.append("sigma2")
        return names

    def scalars(self, theta, alpha, Sigma, sigma2) -> dict[str, np.ndarray]:
        """Split arrays with leading (chain, draw) axes into the named scalars."""
        out: dict[str, np.ndarray] = {}
        names = [t for t, f in zip(self.varying_terms, self.free) if f]
        for k, t in enumerate(names):
            out[f"theta[{t}]"] = np.asarray(theta)[..., k]
        for k, t in enumerate(self.fixed_terms):
            out[f"alpha[{t}]"] = np.asarray(alpha)[..., k]
        rows, cols = self.tril
        for i, j in zip(rows, cols):
            out[f"Sigma[{self.varying_terms[i]}, {self.varying_terms[j]}]"] = np.asarray(Sigma)[..., i, j]
        if self.gaussian:
            out["sigma2"] = np.asarray(sigma2)
        return out


def load_data(spec: Any):
    if isinstance(spec, tuple) and spec[0] == "sim":
        _, rows, groups, seed = spec
        return simulate_gaussian(rows, groups, seed=seed)
    return spec


def make_problem(name: str, formula: str, data: Any, family: str):
    """(multilevel Model, Problem) for one data set."""
    import multilevel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = multilevel.Model(formula, load_data(data), family=family)
    d, pr = model.design, model.priors
    prob = Problem(
        name=name, family=family, X=np.ascontiguousarray(d.X, dtype=float), Z=np.ascontiguousarray(d.Z, dtype=float),
        g=np.asarray(d.group, dtype=np.int64), y=np.asarray(d.y, dtype=float),
        offset=np.asarray(d.offset, dtype=float), m=d.n_groups, free=np.asarray(d.theta_free, dtype=bool),
        varying_terms=list(d.varying_terms), fixed_terms=list(d.fixed_terms),
        mu0=np.asarray(pr.mu0, dtype=float), Lambda0=np.asarray(pr.Lambda0, dtype=float), eta0=float(pr.eta0),
        S0=np.asarray(pr.S0, dtype=float), nu0=None if pr.nu0 is None else float(pr.nu0),
        sigma0_sq=None if pr.sigma0_sq is None else float(pr.sigma0_sq),
        alpha_mean=np.asarray(pr.alpha_mean, dtype=float), alpha_cov=np.asarray(pr.alpha_cov, dtype=float),
    )
    return model, prob


def initial_values(P: Problem, seed: int, centred: bool) -> dict[str, np.ndarray]:
    """Starting point of a NUTS chain (constrained values), the same for PyMC and NumPyro: the
    prior centres (theta = mu0, alpha = alpha_mean, Sigma = S0 / (eta0 - p - 1) or S0, sigma2 =
    sigma0_sq, beta_j = theta) with PyMC's 'jitter' (uniform(-1, 1) on the unconstrained scale)."""
    rng = np.random.default_rng(seed)
    p, q = P.p, int(P.free.sum())
    denom = P.eta0 - p - 1
    Sigma = P.S0 / denom if denom > 0 else P.S0
    L = np.linalg.cholesky(Sigma)
    rows, cols = P.tril
    u = L[rows, cols].copy()
    diag = rows == cols
    u[diag] = np.log(u[diag])
    jit = lambda *shape: rng.uniform(-1, 1, size=shape)  # noqa: E731
    theta = P.mu0 + jit(q)
    v: dict[str, np.ndarray] = {"theta": theta, "chol_u": u + jit(u.size)}
    if P.r:
        v["alpha"] = P.alpha_mean + jit(P.r)
    if P.gaussian:
        v["sigma2"] = np.asarray(P.sigma0_sq * np.exp(jit()))
    full = np.zeros(p)
    full[P.free] = theta
    if centred:
        v["beta"] = full[None, :] + jit(P.m, p)
    else:
        v["eta"] = jit(P.m, p)
    return v


def iw_logpdf_numpy(Sigma: np.ndarray, eta0: float, S0: np.ndarray) -> float:
    """log inverse-Wishart(Sigma | df eta0, scale S0) written out, as the peers' potentials do."""
    from scipy.special import multigammaln

    p = S0.shape[0]
    _, ld_S0 = np.linalg.slogdet(S0)
    _, ld = np.linalg.slogdet(Sigma)
    return float(0.5 * eta0 * ld_S0 - 0.5 * eta0 * p * math.log(2) - multigammaln(0.5 * eta0, p)
                 - 0.5 * (eta0 + p + 1) * ld - 0.5 * np.trace(S0 @ np.linalg.inv(Sigma)))


# --------------------------------------------------------------------------- NumPyro


def numpyro_model_fn(P: Problem, centred: bool):
    """The NumPyro model; data as keyword arguments (X, Z, g, y, off) so that they are traced."""
    import jax.numpy as jnp
    import jax.scipy.linalg as jsl
    import numpyro
    import numpyro.distributions as dist
    from jax.scipy.special import multigammaln
    from numpyro.distributions import constraints

    p, q, r, m = P.p, int(P.free.sum()), P.r, P.m
    rows, cols = P.tril
    k = rows.size
    diag = jnp.asarray(rows == cols)
    free_idx = np.flatnonzero(P.free)
    C = jnp.asarray(np.linalg.cholesky(P.S0))
    eta0 = P.eta0
    const = (eta0 * jnp.sum(jnp.log(jnp.diag(C))) - 0.5 * eta0 * p * math.log(2)
             - multigammaln(0.5 * eta0, p))
    # log|d vech(Sigma)/du| = p log 2 + sum_i (p - i + 2) u_ii, i = 1..p
    jac_w = jnp.asarray(np.where(rows == cols, p - rows + 1.0, 0.0))
    mu0, Lambda0 = jnp.asarray(P.mu0), jnp.asarray(P.Lambda0)
    am, ac = jnp.asarray(P.alpha_mean), jnp.asarray(P.alpha_cov)

    def chol_from_u(u):
        vals = jnp.where(diag, jnp.exp(u), u)
        return jnp.zeros((p, p)).at[rows, cols].set(vals)

    def model(X, Z, g, y, off):
        theta = numpyro.sample("theta", dist.MultivariateNormal(mu0, covariance_matrix=Lambda0)) if q else None
        u = numpyro.sample("chol_u", dist.ImproperUniform(constraints.real_vector, (), event_shape=(k,)))
        L = chol_from_u(u)
        logdiag = jnp.where(diag, u, 0.0).sum()
        Linv = jsl.solve_triangular(L, jnp.eye(p), lower=True)
        A = Linv @ C
        numpyro.factor("Sigma_prior", const - (eta0 + p + 1) * logdiag - 0.5 * jnp.sum(A * A)
                       + p * math.log(2) + jnp.sum(jac_w * u))
        numpyro.deterministic("Sigma", L @ L.T)
        mean = jnp.zeros(p)
        if q:
            mean = mean.at[free_idx].set(theta)
        if centred:
            # MVN(theta, L L') for the m rows of beta, written out with L^-1 as a matrix product:
            # XLA's CPU triangular solve with m right-hand sides (what NumPyro's MultivariateNormal
            # does) takes about 8 ms for m = 1000 here, making the gradient about 8x slower
            beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real_vector, (m,), event_shape=(p,)))
            W = Linv @ (beta - mean).T
            numpyro.factor("beta_prior", -0.5 * jnp.sum(W * W) - m * logdiag - 0.5 * m * p * math.log(2 * math.pi))
        else:
            e = numpyro.sample("eta", dist.Normal(0.0, 1.0).expand([m, p]).to_event(2))
            beta = mean + e @ L.T
        lin = jnp.sum(X * beta[g], axis=1) + off
        if r:
            alpha = numpyro.sample("alpha", dist.MultivariateNormal(am, covariance_matrix=ac))
            lin = lin + Z @ alpha
        if P.gaussian:
            sigma2 = numpyro.sample("sigma2", dist.InverseGamma(0.5 * P.nu0, 0.5 * P.nu0 * P.sigma0_sq))
            numpyro.sample("y", dist.Normal(lin, jnp.sqrt(sigma2)), obs=y)
        else:
            numpyro.sample("y", dist.Poisson(jnp.exp(lin)), obs=y)

    return model


def numpyro_data(P: Problem) -> dict:
    import jax.numpy as jnp

    return {"X": jnp.asarray(P.X), "Z": jnp.asarray(P.Z), "g": jnp.asarray(P.g), "y": jnp.asarray(P.y),
            "off": jnp.asarray(P.offset)}


def _jax_cache_dir() -> str:
    """A persistent JAX compilation cache shared by this run's worker processes (fresh each run).

    NumPyro's ``NUTS.init`` runs the model eagerly, which compiles some hundreds of small XLA
    programs (about 20 s here); the cache lets the second chain of a round and later data sets
    reuse those of the same shapes. The compilation times reported are measured with it.
    """
    global _JAX_CACHE
    if _JAX_CACHE is None:
        import atexit
        import shutil
        import tempfile

        _JAX_CACHE = tempfile.mkdtemp(prefix="multilevel-bench-jax-")
        atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
    return _JAX_CACHE


_JAX_CACHE: str | None = None


def _numpyro_chain(P: Problem, centred: bool, warmup: int, draws: int, seed: int, cache: str | None = None) -> dict:
    """One NumPyro NUTS chain of ``P`` in this (worker) process (see :func:`numpyro_nuts_chain`)."""

    def build():
        import jax.numpy as jnp

        init = {k: jnp.asarray(v) for k, v in initial_values(P, seed, centred).items()}
        keep = ["theta", "Sigma"] + (["alpha"] if P.r else []) + (["sigma2"] if P.gaussian else [])
        return numpyro_model_fn(P, centred), numpyro_data(P), init, keep

    return numpyro_nuts_chain(build, warmup, draws, seed, cache)


def numpyro_nuts_chain(build, warmup: int, draws: int, seed: int, cache: str | None = None) -> dict:
    """One NumPyro NUTS chain in this (worker) process: compile apart, then warm-up + draws.

    ``build()`` returns ``(model, kw, init, keep)``: the model function, its data as keyword
    arguments, the starting values (constrained) and the sites whose draws to keep; it runs
    after JAX is set up (float64, the compilation cache ``cache``) and inside the compile timing.
    The same steps as ``numpyro.infer.MCMC`` (``NUTS.init``, then ``NUTS.sample`` in a compiled
    loop, warm-up adaptation inside ``sample``), with the initialisation jitted and the loop
    compiled ahead of time, so that compilation is timed apart from sampling.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from jax import lax
    from numpyro.infer import NUTS, init_to_value

    c0, t0 = time.process_time(), time.perf_counter()
    model, kw, init, keep = build()
    kernel = NUTS(model, init_strategy=init_to_value(values=init))
    # NUTS.init run eagerly compiles hundreds of small programs (20-60 s here); jitted it is one program
    state = jax.jit(lambda key: kernel.init(key, warmup, None, (), kw))(jax.random.PRNGKey(seed))

    def run(state, kw):
        post = kernel.postprocess_fn((), kw)

        def body(s, _):
            s = kernel.sample(s, (), kw)
            v = post(s.z)
            return s, ({n: v[n] for n in keep if n in v}, s.diverging, s.num_steps)

        return lax.scan(body, state, None, length=warmup + draws)[1]

    compiled = jax.jit(run).lower(state, kw).compile()
    compile_wall, compile_cpu = time.perf_counter() - t0, time.process_time() - c0
    c0, t0 = time.process_time(), time.perf_counter()
    out, div, steps = jax.block_until_ready(compiled(state, kw))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {k: np.asarray(v)[warmup:] for k, v in out.items()}
    return {"draws": out, "divergences": int(np.asarray(div)[warmup:].sum()),
            "mean_steps": float(np.asarray(steps)[warmup:].mean()), "total_steps": int(np.asarray(steps).sum()),
            "compile": compile_wall, "compile_cpu": compile_cpu, "wall": wall, "cpu": cpu}


# --------------------------------------------------------------------------- PyMC


def pymc_model(P: Problem, centred: bool):
    ensure_pytensor_blas()
    import pymc as pm
    import pytensor.tensor as pt
    from pytensor.tensor.slinalg import solve_triangular
    from scipy.special import multigammaln

    p, q, r, m = P.p, int(P.free.sum()), P.r, P.m
    rows, cols = P.tril
    k = rows.size
    is_diag = rows == cols
    free_idx = np.flatnonzero(P.free)
    C = np.linalg.cholesky(P.S0)
    eta0 = P.eta0
    const = float(eta0 * np.sum(np.log(np.diag(C))) - 0.5 * eta0 * p * math.log(2) - multigammaln(0.5 * eta0, p))
    jac_w = np.where(is_diag, p - rows + 1.0, 0.0)
    with pm.Model() as model:
        theta = pm.MvNormal("theta", mu=P.mu0, cov=P.Lambda0) if q else None
        u = pm.Flat("chol_u", shape=k)
        vals = pt.where(is_diag, pt.exp(u), u)
        L = pt.set_subtensor(pt.zeros((p, p))[rows, cols], vals)
        logdiag = pt.sum(pt.where(is_diag, u, 0.0))
        A = solve_triangular(L, C, lower=True)
        pm.Potential("Sigma_prior", const - (eta0 + p + 1) * logdiag - 0.5 * pt.sum(A * A)
                     + p * math.log(2) + pt.sum(jac_w * u))
        pm.Deterministic("Sigma", L @ L.T)
        mean = pt.zeros(p)
        if q:
            mean = pt.set_subtensor(mean[free_idx], theta)
        if centred:
            beta = pm.MvNormal("beta", mu=mean, chol=L, shape=(m, p))
        else:
            e = pm.Normal("eta", 0.0, 1.0, shape=(m, p))
            beta = mean + e @ L.T
        lin = pt.sum(P.X * beta[P.g], axis=1) + P.offset
        if r:
            alpha = pm.MvNormal("alpha", mu=P.alpha_mean, cov=P.alpha_cov)
            lin = lin + pt.dot(P.Z, alpha)
        if P.gaussian:
            sigma2 = pm.InverseGamma("sigma2", alpha=0.5 * P.nu0, beta=0.5 * P.nu0 * P.sigma0_sq)
            pm.Normal("y", mu=lin, sigma=pt.sqrt(sigma2), observed=P.y)
        else:
            pm.Poisson("y", mu=pt.exp(lin), observed=P.y)
    return model


def _pymc_chain(P: Problem, centred: bool, warmup: int, draws: int, seed: int, cache: str | None = None) -> dict:
    """One PyMC NUTS chain in this (worker) process: compile apart, then warm-up + draws."""
    import logging

    ensure_pytensor_blas()
    import pymc as pm
    import pytensor

    logging.getLogger("pymc").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    names = ["theta", "Sigma"] + (["alpha"] if P.r else []) + (["sigma2"] if P.gaussian else [])
    init = initial_values(P, seed, centred)

    def step_and_start(model, s):
        return pm.init_nuts(init="adapt_diag", chains=1, model=model, random_seed=s, progressbar=False,
                            initvals=init)

    c0, t0 = time.process_time(), time.perf_counter()
    model = pymc_model(P, centred)
    with model:
        _, step = step_and_start(model, seed)  # compiles logp and dlogp
        pm.sample(draws=2, tune=2, step=step, chains=1, cores=1, initvals=init, random_seed=seed,
                  progressbar=False, compute_convergence_checks=False, var_names=names, return_inferencedata=False)
    compile_wall, compile_cpu = time.perf_counter() - t0, time.process_time() - c0
    with model:
        _, step = step_and_start(model, seed)  # a fresh step (unadapted); its functions come from the cache
        c0, t0 = time.process_time(), time.perf_counter()
        trace = pm.sample(draws=draws, tune=warmup, step=step, chains=1, cores=1, initvals=init, random_seed=seed,
                          progressbar=False, compute_convergence_checks=False, var_names=names,
                          return_inferencedata=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {n: np.asarray(trace.get_values(n)) for n in names}
    if len(out["Sigma"]) != draws:
        raise RuntimeError(f"PyMC returned {len(out['Sigma'])} draws, expected {draws}")
    return {"draws": out, "divergences": int(np.sum(trace.get_sampler_stats("diverging"))),
            "mean_steps": float(np.mean(trace.get_sampler_stats("tree_size"))), "compile": compile_wall,
            "compile_cpu": compile_cpu, "wall": wall, "cpu": cpu,
            "blas": str(pytensor.config.blas__ldflags)}


# --------------------------------------------------------------------------- running NUTS


@contextlib.contextmanager
def _worker_env():
    """Spawned workers inherit this environment: one thread each, JAX on the CPU in float64."""
    ensure_pytensor_blas()
    old = {k: os.environ.get(k) for k in WORKER_ENV}
    os.environ.update(WORKER_ENV)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_nuts(which: str, P: Problem, centred: bool, warmup: int, draws: int, chains: int = NUTS_CHAINS,
             seed: int = 1) -> dict:
    """``chains`` chains of one peer, two at a time (one per core), each in its own process."""
    fn = {"numpyro": _numpyro_chain, "pymc": _pymc_chain}[which]
    cache = _jax_cache_dir() if which == "numpyro" else None
    results = run_worker_chains(fn, (P, centred, warmup, draws), chains, seed=seed, cache=cache)
    names = results[0]["draws"].keys()
    stacked = {n: np.stack([r["draws"][n] for r in results]) for n in names}
    scal = P.scalars(stacked["theta"] if "theta" in stacked else np.zeros((chains, draws, 0)),
                     stacked.get("alpha", np.zeros((chains, draws, 0))), stacked["Sigma"], stacked.get("sigma2"))
    return {"scalars": scal, **pool_chain_times(results), "chains": chains, "warmup": warmup, "draws": draws,
            "blas": results[0].get("blas")}


def run_worker_chains(fn, args: tuple, chains: int, seed: int = 1, cache: str | None = None,
                      workers: int = 2) -> list[dict]:
    """``fn(*args, seed + 1000 c, cache)`` for chains c = 0 .. chains - 1, each chain in a spawned
    single-threaded process (:func:`_worker_env`), at most ``workers`` at a time; their results in order."""
    with _worker_env(), ProcessPoolExecutor(max_workers=max(1, min(workers, chains)),
                                            mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *args, seed + 1000 * c, cache) for c in range(chains)]
        return [f.result() for f in futures]


def pool_chain_times(results: list[dict], workers: int = 2) -> dict:
    """Compile time (median over chains), sampling wall time (the chains of a round of ``workers``
    run side by side), CPU time (all chains), divergences and mean leapfrog steps of worker chains."""
    rounds = [results[i:i + workers] for i in range(0, len(results), workers)]
    return {
        "compile": float(np.median([r["compile"] for r in results])),
        "compile_cpu": float(np.median([r["compile_cpu"] for r in results])),
        "wall": float(sum(max(r["wall"] for r in rd) for rd in rounds)),
        "cpu": float(sum(r["cpu"] for r in results)),
        "divergences": int(sum(r["divergences"] for r in results)),
        "mean_steps": float(np.mean([r["mean_steps"] for r in results])),
    }


# --------------------------------------------------------------------------- multilevel


def run_multilevel(model, P: Problem, warmup: int, draws: int, chains: int, cores: int | None, seed: int = 1,
                   build_seconds: float = float("nan")) -> dict:
    """A multilevel fit with its default sampler; CPU clock read around the chains when cores=1."""
    from .gaussian import _CLOCK, _CpuClocked

    kernel = model.kernel
    if cores == 1:
        model.kernel = _CpuClocked(kernel)
        _CLOCK.clear()
    try:
        c0 = time.process_time()
        fit = model.fit(chains=chains, draws=draws, warmup=warmup, cores=cores, seed=seed, progress=False,
                        log_likelihood=False)
        c1 = time.process_time()
    finally:
        model.kernel = kernel
    post = fit.idata.posterior
    wall = float(fit.attrs["sampling_seconds"])
    cpu = (_CLOCK["end"] - _CLOCK["start"]) if cores == 1 else float("nan")
    theta = post["theta"].values if "theta" in post else None
    alpha = post["alpha"].values if "alpha" in post else np.zeros((chains, draws, 0))
    sigma2 = post["sigma2"].values if "sigma2" in post else None
    # theta in the posterior has all varying terms (0 where not free); keep the free ones
    theta = theta[..., P.free] if theta is not None else np.zeros((chains, draws, 0))
    scal = P.scalars(theta, alpha, post["Sigma"].values, sigma2)
    del fit
    return {"scalars": scal, "compile": build_seconds, "compile_cpu": float("nan"), "wall": wall, "cpu": cpu,
            "parent_cpu": c1 - c0, "divergences": None, "mean_steps": None, "chains": chains, "warmup": warmup,
            "draws": draws, "cores": cores}


# --------------------------------------------------------------------------- diagnostics


def diagnose(scal: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    import arviz as az

    out = {}
    for n, a in scal.items():
        a = np.asarray(a, dtype=float)
        out[n] = {"mean": float(a.mean()), "sd": float(a.std()),
                  "ess": float(az.ess(a, method="bulk")), "rhat": float(az.rhat(a)),
                  "mcse": float(np.ravel(az.mcse(a, method="mean"))[0])}
    return out


def summarise(run: dict) -> dict:
    d = diagnose(run["scalars"])
    at = min(d, key=lambda n: d[n]["ess"])
    run["diag"] = d
    run["min_ess"], run["min_at"] = d[at]["ess"], at
    run["max_rhat"] = max(v["rhat"] for v in d.values())
    run["ess_wall"] = run["min_ess"] / run["wall"]
    run["ess_cpu"] = run["min_ess"] / run["cpu"] if run["cpu"] == run["cpu"] else float("nan")
    return run


def agreement(ref: dict, other: dict) -> tuple[float, str, list[str]]:
    """Largest |mean difference| / sqrt(mcse_ref^2 + mcse_other^2) and where; the parameters beyond 4."""
    worst, at, beyond = 0.0, "", []
    for n, a in ref["diag"].items():
        b = other["diag"][n]
        z = abs(a["mean"] - b["mean"]) / math.sqrt(a["mcse"] ** 2 + b["mcse"] ** 2)
        if z > worst:
            worst, at = z, n
        if z > 4:
            beyond.append(n)
    return worst, at, beyond


# --------------------------------------------------------------------------- self-check


def check_models(P: Problem, params: tuple[str, ...] = ("centred", "noncentred"), n_points: int = 3,
                 seed: int = 0) -> dict:
    """The peers' models are the same model with multilevel's priors:

    * the inverse-Wishart potential (without the Jacobian) against ``scipy.stats.invwishart.logpdf``;
    * the log-Jacobian of u -> vech(L L') against ``log|det jax.jacfwd(...)|``;
    * the NumPyro and PyMC joint log densities (unconstrained, Jacobians included) at random
      points: their differences from the first point must agree (the constants may differ).
    Returns the largest absolute errors found.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from numpyro.infer.util import log_density
    from scipy.stats import invwishart

    rng = np.random.default_rng(seed)
    p = P.p
    rows, cols = P.tril
    is_diag = rows == cols
    out = {"iw": 0.0, "jac": 0.0, "joint": 0.0}

    def L_of(u):
        vals = jnp.where(jnp.asarray(is_diag), jnp.exp(u), u)
        return jnp.zeros((p, p)).at[rows, cols].set(vals)

    def vech(u):
        L = L_of(u)
        return (L @ L.T)[rows, cols]

    # the Sigma potential alone, via a model with only chol_u
    for centred in [par == "centred" for par in params]:
        model = numpyro_model_fn(P, centred)
        kw = numpyro_data(P)
        logd = jax.jit(lambda prm, model=model, kw=kw: log_density(model, (), kw, prm)[0])
        pm_model = pymc_model(P, centred)
        logp_pm = pm_model.compile_logp(jacobian=True)
        pot_pm = pm_model.compile_fn(pm_model.potentiallogp, inputs=pm_model.value_vars, on_unused_input="ignore")
        diffs = []
        for t in range(n_points):
            v = initial_values(P, seed + 17 * t + (0 if centred else 5), centred)
            u = v["chol_u"] + 0.3 * rng.standard_normal(v["chol_u"].size)
            L = np.asarray(L_of(jnp.asarray(u)))
            Sigma = L @ L.T
            J = jax.jacfwd(vech)(jnp.asarray(u))
            logjac = float(np.linalg.slogdet(np.asarray(J))[1])
            formula_jac = p * math.log(2) + float(np.sum(np.where(is_diag, p - rows + 1.0, 0.0) * u))
            out["jac"] = max(out["jac"], abs(logjac - formula_jac))
            ref = float(invwishart(df=P.eta0, scale=P.S0).logpdf(Sigma))
            out["iw"] = max(out["iw"], abs(ref - iw_logpdf_numpy(Sigma, P.eta0, P.S0)))
            # point in both libraries' unconstrained spaces
            prm = {k: jnp.asarray(val) for k, val in v.items()}
            prm["chol_u"] = jnp.asarray(u)
            if P.gaussian:
                prm["sigma2"] = jnp.asarray(v["sigma2"])
            nd = float(logd(prm))
            # numpyro's log_density takes constrained values; add the log-Jacobian of sigma2's log transform
            if P.gaussian:
                nd += float(np.log(v["sigma2"]))
            point = {}
            for var in pm_model.value_vars:
                name = var.name
                if name == "sigma2_log__":
                    point[name] = np.log(v["sigma2"])
                else:
                    point[name] = np.asarray(prm[name])
            pd_ = float(logp_pm(point))
            pot = float(pot_pm(point))
            out["iw"] = max(out["iw"], abs(pot - (ref + formula_jac)))
            diffs.append(nd - pd_)
        out["joint"] = max(out["joint"], float(np.ptp(diffs)))
    return out


# --------------------------------------------------------------------------- the benchmark


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or x != x:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def bench_dataset(key: str, quick: bool) -> Result:
    import importlib.metadata as md

    cfg = DATASETS[key]
    data = QUICK_SIZES.get(key, cfg["data"]) if quick else cfg["data"]
    sizes = {k: ((150, 150) if quick else v) for k, v in cfg["sizes"].items()}
    ml_warmup, ml_draws = (300, 300) if quick else (ML_WARMUP, ML_DRAWS)
    params = cfg["params"]

    t0 = time.perf_counter()
    model, P = make_problem(key, cfg["formula"], data, cfg["family"])
    build = time.perf_counter() - t0
    with _worker_env(), ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        check = pool.submit(check_models, P, params).result()  # JAX and PyTensor stay out of this process

    runs: dict[str, dict] = {}
    # warm multilevel's compiled code once, then time it
    model.fit(chains=1, draws=10, warmup=10, cores=1, progress=False, seed=0, log_likelihood=False)
    runs["multilevel, cores=1"] = summarise(run_multilevel(model, P, ml_warmup, ml_draws, ML_CHAINS, 1,
                                                           build_seconds=build))
    runs["multilevel, 2 cores"] = summarise(run_multilevel(model, P, ml_warmup, ml_draws, ML_CHAINS, None,
                                                           build_seconds=build))
    for par in params:
        runs[f"NumPyro NUTS, {par}"] = summarise(run_nuts("numpyro", P, par == "centred", *sizes["numpyro"]))
    pymc_params = params if cfg["pymc_params"] != "none" else ()
    if cfg["pymc_params"] == "best":
        pymc_params = (max(params, key=lambda par: runs[f"NumPyro NUTS, {par}"]["ess_cpu"]),)
    for par in pymc_params:
        runs[f"PyMC NUTS, {par}"] = summarise(run_nuts("pymc", P, par == "centred", *sizes["pymc"]))

    ref = runs["multilevel, cores=1"]
    if not pymc_params:
        res_note_pymc = (
            "PyMC is not run on this set: at 2e5 rows its gradient takes about 15 ms (C backend) and with the "
            "short warm-up the suite could afford (150 + 150 iterations) its trees grew to about 127 leapfrog "
            "steps, so 2 chains took about 13 minutes on the 2 cores and gave a min bulk ESS per CPU second "
            "about 3x below NumPyro's, as on every other set; the best NUTS here is NumPyro.")
    else:
        res_note_pymc = ""
    if len(params) > 1:
        ranked = sorted(params, key=lambda par: -runs[f"NumPyro NUTS, {par}"]["ess_cpu"])
        how = ("PyMC ran both too" if len(pymc_params) > 1 else
               f"PyMC then ran only the {pymc_params[0]} one, to save time")
        res_note = (f"Parametrisation: NumPyro mixed better {ranked[0]} ({_fmt(runs[f'NumPyro NUTS, {ranked[0]}']['ess_cpu'])} "
                    f"min ESS per CPU second) than {ranked[1]} ({_fmt(runs[f'NumPyro NUTS, {ranked[1]}']['ess_cpu'])}); "
                    f"{how}. The ratio below takes the best NUTS run.")
    else:
        res_note = (f"Parametrisation: {params[0]} only (the groups are large, and the issue found the centred "
                    "form the better one for NumPyro on the 1e3 x 100 set).")
    rows = []
    for label, r in runs.items():
        nuts = not label.startswith("multilevel")
        size = f"{r['chains']} x ({r['warmup']} + {r['draws']})"
        comp = (f"{r['compile']:.1f} s" if nuts else f"{r['compile']:.2f} s (Model build)")
        agree = ""
        if label == "multilevel, 2 cores":
            agree = "the same draws (same seed)"
        elif label != "multilevel, cores=1":
            z, at, beyond = agreement(ref, r)
            agree = f"{z:.1f} (`{at}`)" + (" **> 4**" if beyond else "")
        rows.append([label, size, comp, f"{r['wall']:.2f} s", _fmt(r["cpu"]) + (" s" if r["cpu"] == r["cpu"] else ""),
                     f"{r['min_ess']:.0f} (`{r['min_at']}`)", _fmt(r["ess_wall"]), _fmt(r["ess_cpu"]),
                     f"{r['max_rhat']:.3f}", "" if r["divergences"] is None else str(r["divergences"]),
                     "" if r["mean_steps"] is None else f"{r['mean_steps']:.0f}", agree])
    res = Result(
        f"peers_{key}",
        f"Against NUTS: {cfg['title']}",
        f"Model `{cfg['formula']}`" + (f", family {cfg['family']}" if cfg["family"] != "gaussian" else "")
        + f": {len(P.y):,} rows, {P.m:,} groups, p = {P.p} varying terms, r = {P.r} fixed-only terms. "
        "multilevel runs its default sampler (" + model.sampler + f") with its defaults, {ML_CHAINS} chains x "
        f"({ml_warmup} + {ml_draws}) sweeps, once in one process (`cores=1`, which gives the CPU time) and once with "
        f"the default worker processes (one per core; wall time includes starting them). NUTS: {NUTS_CHAINS} chains, "
        "one per core, each in its own single-threaded process; PyMC with its default C backend, NumPyro with JAX on "
        "the CPU in float64; both with their default NUTS settings (target acceptance 0.8, diagonal mass matrix "
        "adapted in the warm-up, tree depth 10) and the same starting points. Sampling time includes the warm-up; "
        "compilation is apart.",
    )
    res.notes.append(res_note)
    if res_note_pymc:
        res.notes.append(res_note_pymc)
    res.tables.append(Table(
        ["sampler", "chains x (warm-up + draws)", "compile / setup (per chain)", "sampling, wall",
         "sampling, CPU (all chains)", "min bulk ESS (at)", "min ESS / wall s", "min ESS / CPU s", "max R-hat",
         "divergences", "mean leapfrog steps", "largest mean difference vs multilevel cores=1, in MCSEs (at)"],
        rows,
    ))
    # per parameter means
    prow = []
    labels = list(runs)
    for n in P.param_names():
        prow.append([f"`{n}`"] + [f"{runs[l]['diag'][n]['mean']:.4g} ± {runs[l]['diag'][n]['mcse']:.2g} "
                                  f"({runs[l]['diag'][n]['ess']:.0f})" for l in labels])
    res.tables.append(Table(["parameter"] + labels, prow,
                            caption="Posterior mean ± Monte Carlo standard error (bulk ESS) of each population parameter:"))

    nuts_labels = [l for l in runs if not l.startswith("multilevel")]
    best = max(nuts_labels, key=lambda l: runs[l]["ess_cpu"])
    best_wall = max(nuts_labels, key=lambda l: runs[l]["ess_wall"])
    ratio_cpu = runs["multilevel, cores=1"]["ess_cpu"] / runs[best]["ess_cpu"]
    ratio_wall = runs["multilevel, 2 cores"]["ess_wall"] / runs[best_wall]["ess_wall"]
    measured = (f"{ratio_cpu:,.0f}x per CPU second (multilevel {_fmt(runs['multilevel, cores=1']['ess_cpu'])} vs "
                f"{best} {_fmt(runs[best]['ess_cpu'])}); {ratio_wall:,.0f}x per wall second on 2 cores "
                f"(multilevel {_fmt(runs['multilevel, 2 cores']['ess_wall'])} vs {best_wall} "
                f"{_fmt(runs[best_wall]['ess_wall'])})")
    if cfg["target"] is not None:
        res.targets.append(Target(
            f"{cfg['title']}: min bulk-ESS per second at least {cfg['target']:.0f}x that of the faster of PyMC and "
            "NumPyro NUTS (verdict on CPU seconds)", measured, assess(ratio_cpu >= cfg["target"], quick)))
    else:
        res.notes.append(f"Speed ratio multilevel / best NUTS (no target for this set): {measured}.")
    if key == "sim1e3" and "NumPyro NUTS, centred" in runs:
        r = runs["NumPyro NUTS, centred"]
        res.notes.append(f"Issue 6 quotes about 8 min bulk ESS per second for NumPyro's centred NUTS on a set like this "
                         f"one; measured here: {_fmt(r['ess_cpu'])} per CPU second, {_fmt(r['ess_wall'])} per wall "
                         "second (2 chains on 2 cores).")
    disagree = {l: agreement(ref, runs[l]) for l in runs if not l.startswith("multilevel")}
    bad = {l: v for l, v in disagree.items() if v[2]}
    beyond = "; ".join(f"{l}: " + ", ".join(f"`{n}`" for n in v[2]) for l, v in bad.items())
    res.notes.append(
        "Agreement: for each population parameter, |mean difference| / sqrt(MCSE_a^2 + MCSE_b^2) of each NUTS run "
        "against multilevel (cores=1); the table gives the largest. "
        + ("All within 4." if not bad else f"Beyond 4: {beyond}.")
    )
    res.notes.append(
        f"Self-check of the peers' models: inverse-Wishart log density vs `scipy.stats.invwishart.logpdf` "
        f"max error {check['iw']:.1e}; log-Jacobian of u -> vech(Sigma) vs `jax.jacfwd` {check['jac']:.1e}; "
        f"NumPyro vs PyMC joint log density (differences between random points) {check['joint']:.1e}."
    )
    versions = ", ".join(f"{n} {md.version(n)}" for n in ("pymc", "pytensor", "numpyro", "jax", "jaxlib"))
    blas = next((r["blas"] for r in runs.values() if r.get("blas")), None)
    res.notes.append(f"Versions: {versions}" + (f"; PyTensor BLAS flags: `{blas}`." if blas else "."))
    res.data = {
        "build": build, "check": check, "ratio_cpu": ratio_cpu, "ratio_wall": ratio_wall, "best_cpu": best,
        "best_wall": best_wall,
        "runs": {l: {k: v for k, v in r.items() if k != "scalars"} for l, r in runs.items()},
    }
    _check_ok(check)
    return res


def _check_ok(check: dict) -> None:
    if check["iw"] > 1e-6 or check["jac"] > 1e-8 or check["joint"] > 1e-4:
        raise AssertionError(f"the peers' models fail the self-check: {check}")


def _bench(key: str):
    def bench(quick: bool = False) -> Result:
        return bench_dataset(key, quick)

    cfg = DATASETS[key]
    bench.__doc__ = f"multilevel vs PyMC and NumPyro NUTS on {cfg['title']}: min bulk ESS/s, R-hat, agreement."
    bench.__name__ = f"bench_peers_{key}"
    return bench


BENCHMARKS = {f"peers_{k}": _bench(k) for k in DATASETS}
