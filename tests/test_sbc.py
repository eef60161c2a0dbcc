"""Simulation-based calibration of the Gaussian Gibbs sampler (Talts et al. 2018).

Parameters are drawn from proper, moderately informative priors (with scipy, not with the
package's own samplers), data from the model, and the posterior is sampled by the
package's Gibbs kernel with the same priors. The default suite runs a small version with
fixed seeds; ``pytest -m validate`` (``make validate``) runs the full one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats

import multilevel
from multilevel.run import run_chains
from multilevel.samplers.gibbs import BLOCKS, GaussianGibbs, draw_Sigma
from multilevel.samplers.interweaving import InterweavingGibbs

import sbc


@dataclass(frozen=True)
class Config:
    formula: str
    free: tuple[bool, ...]  # varying terms with a population mean
    r: int  # fixed-only terms
    sizes: tuple[int, ...]  # rows per group
    priors: multilevel.Priors


INTERCEPT = Config(
    formula="y ~ 1 + (1 | g)",
    free=(True,),
    r=0,
    sizes=(3, 4, 5, 5, 6, 6, 7, 8),
    # Sigma ~ inverse-gamma(3, 2): mean 1; sigma2 ~ inverse-gamma(5, 5): mean 1.25
    priors=multilevel.Priors(mu0=[1.0], Lambda0=[[1.0]], eta0=6.0, S0=[[4.0]], nu0=10.0, sigma0_sq=1.0),
)

SLOPE = Config(
    formula="y ~ x + z + (x | g)",
    free=(True, True),
    r=1,
    sizes=(3, 4, 5, 5, 6, 6, 7, 8, 9, 10),
    # E[Sigma] = S0 / (eta0 - 3) = [[1, 0.25], [0.25, 0.5]]
    priors=multilevel.Priors(
        mu0=[0.5, -0.5], Lambda0=[[1.0, 0.2], [0.2, 0.5]], eta0=7.0, S0=[[4.0, 1.0], [1.0, 2.0]],
        nu0=10.0, sigma0_sq=1.0, alpha_mean=[0.3], alpha_cov=[[0.5]],
    ),
)

ZERO_MEAN_SLOPE = Config(  # a varying slope without a population mean: theta[x] = 0
    formula="y ~ 1 + (1 + x | g)",
    free=(True, False),
    r=0,
    sizes=(3, 4, 5, 5, 6, 6, 7, 8, 9, 10),
    priors=multilevel.Priors(mu0=[0.5], Lambda0=[[1.0]], eta0=7.0, S0=[[4.0, 1.0], [1.0, 2.0]], nu0=10.0, sigma0_sq=1.0),
)


def draw_truth(rng: np.random.Generator, cfg: Config):
    """theta, Sigma, sigma2, alpha from the configuration's priors (scipy's samplers)."""
    pr = cfg.priors
    free = np.asarray(cfg.free)
    p = free.shape[0]
    theta = np.zeros(p)
    theta[free] = rng.multivariate_normal(np.asarray(pr.mu0, float), np.asarray(pr.Lambda0, float))
    # inverse-Wishart(eta0, S0^-1) of the specification = scipy's invwishart(df=eta0, scale=S0)
    Sigma = np.atleast_2d(stats.invwishart.rvs(df=pr.eta0, scale=np.asarray(pr.S0, float), random_state=rng))
    sigma2 = float(stats.invgamma.rvs(pr.nu0 / 2, scale=pr.nu0 * pr.sigma0_sq / 2, random_state=rng))
    alpha = rng.multivariate_normal(np.asarray(pr.alpha_mean, float), np.asarray(pr.alpha_cov, float)) if cfg.r else np.zeros(0)
    return theta, Sigma, sigma2, alpha


class WrongSigmaDF:
    """A deliberately wrong Gibbs kernel: its Sigma step uses eta0 + m + ``extra`` degrees of
    freedom. It sweeps beta, alpha, theta, sigma2 with the package's kernel, then Sigma last
    (a different but equally valid scan order), so ``extra=0`` is a correct sampler."""

    def __init__(self, kernel: GaussianGibbs, extra: float):
        self.inner = GaussianGibbs(kernel.stats, kernel.priors, kernel.theta_free, update=frozenset(BLOCKS) - {"Sigma"})
        self.extra = extra

    def init(self, rng):
        return self.inner.init(rng)

    def step(self, state, rng):
        state = self.inner.step(state, rng)
        pr = self.inner.priors
        Sigma, Sigma_inv = draw_Sigma(pr.eta0 + self.extra, pr.S0, state.beta, state.theta, rng)
        return state._replace(Sigma=Sigma, Sigma_inv=Sigma_inv)

    def record(self, state):
        return self.inner.record(state)


def run_sbc(cfg: Config, simulate, *, n_reps: int, L: int, thin: int, warmup: int, bins: int, seed: int,
            kernel_factory=lambda model: model.kernel) -> sbc.SBCResult:
    """``n_reps`` replications of: truth from the prior, data, one chain of ``warmup`` +
    ``L * thin`` sweeps, every ``thin``-th draw kept, ranks of the truth."""
    free = np.asarray(cfg.free)
    all_ranks = []
    for i in range(n_reps):
        rng = np.random.default_rng([seed, i])
        theta, Sigma, sigma2, alpha = draw_truth(rng, cfg)
        df = simulate(rng, len(cfg.sizes), np.asarray(cfg.sizes), theta, Sigma, sigma2, alpha=alpha if cfg.r else None)
        model = multilevel.Model(cfg.formula, df, priors=cfg.priors)
        assert model.design.Z.shape[1] == cfg.r and list(model.design.theta_free) == list(cfg.free)
        res = run_chains(kernel_factory(model), chains=1, draws=L * thin, warmup=warmup,
                         seed=int(rng.integers(2**32)), cores=1, progress=False)
        d = {k: sbc.thin(v[0], L) for k, v in res.draws.items()}
        truth = sbc.scalar_parameters(theta, Sigma, sigma2, alpha, df.attrs["beta"], free)
        post = sbc.scalar_parameters(d["theta"], d["Sigma"], d["sigma2"], d["alpha"], d["beta"], free)
        all_ranks.append(sbc.ranks(truth, post))
    return sbc.collect(all_ranks, L, bins)


# -- the machinery itself -----------------------------------------------------------------

def test_rank_machinery():
    rng = np.random.default_rng(0)
    L = 19
    # calibrated: truth and draws from the same distribution -> uniform ranks
    good = [sbc.ranks({"a": rng.normal()}, {"a": rng.normal(size=L)}) for _ in range(400)]
    # miscalibrated: posterior draws too narrow
    bad = [sbc.ranks({"a": rng.normal()}, {"a": 0.6 * rng.normal(size=L)}) for _ in range(400)]
    assert sbc.collect(good, L, 5).rejected == []
    assert sbc.collect(bad, L, 5).rejected == ["a"]
    assert sbc.chi2_uniform_pvalue(np.arange(20).repeat(3), L, 5) == pytest.approx(1.0)
    x = np.arange(100.0)
    assert np.array_equal(sbc.thin(x, 4), [24.0, 49.0, 74.0, 99.0])


# -- small version: default suite -----------------------------------------------------------

SMALL = dict(n_reps=200, L=19, thin=5, warmup=100, bins=5)


def centred(model):
    """The specification's centred Gibbs kernel (the default is the collapsed one)."""
    return GaussianGibbs(model.stats, model.priors, model.design.theta_free)


SAMPLERS = {"collapsed": lambda model: model.kernel, "centred": centred,
            "interweaving": lambda model: InterweavingGibbs(centred(model))}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("cfg", [INTERCEPT, SLOPE], ids=["intercept", "slope+fixed"])
def test_sbc_small(cfg, sampler, simulate):
    result = run_sbc(cfg, simulate, seed=101, kernel_factory=SAMPLERS[sampler], **SMALL)
    assert result.rejected == [], result.report()


@pytest.mark.parametrize("extra", [0, 3, 10])
def test_sbc_catches_wrong_sigma_step(extra, simulate):
    """Same replications, the Sigma step with eta0 + m + extra degrees of freedom: extra = 0
    (the wrapper itself) passes; extra = 3 and 10 must be rejected, for Sigma at least
    (measured p-values about 1e-22 and 1e-128 against a threshold of 2.5e-3)."""
    result = run_sbc(INTERCEPT, simulate, seed=202, kernel_factory=lambda model: WrongSigmaDF(model.kernel, extra), **SMALL)
    if extra == 0:
        assert result.rejected == [], result.report()
    else:
        assert "Sigma[0,0]" in result.rejected, result.report()


# -- full version: `make validate` ------------------------------------------------------------

FULL = dict(n_reps=800, L=49, thin=10, warmup=200, bins=10)


@pytest.mark.validate
@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("cfg", [INTERCEPT, SLOPE, ZERO_MEAN_SLOPE], ids=["intercept", "slope+fixed", "zero-mean-slope"])
def test_sbc_full(cfg, sampler, simulate):
    result = run_sbc(cfg, simulate, seed=303, kernel_factory=SAMPLERS[sampler], **FULL)
    print(result.report())
    assert result.rejected == [], result.report()
