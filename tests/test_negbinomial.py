"""The negative binomial (NB2) family (issue 13, point 4): :mod:`multilevel.samplers.negbinomial`.

1. The NB2 log-likelihood (families' pointwise one and the kernel's compiled sum) against
   ``scipy.stats.nbinom`` with n = phi, p = phi / (phi + mu).
2. Simulation-based calibration (tests/sbc.py) of a one-factor and a crossed NB model with phi:
   small runs here, larger ones under ``make validate``. The truth is drawn from the priors
   (scipy's samplers; 1 / sqrt(phi) ~ Exponential(phi_rate)), the response from the model.
3. Agreement with lme4's ``glmer.nb`` on ``tests/data/negbin.csv`` (figures:
   :data:`lme4_crossed.LME4_CROSSED` ``["negbin"]``, from
   ``benchmarks/reference/lme4_crossed_reference.txt``).
4. Determinism (same seed: same draws on one core and on two), the fit's outputs (phi in the
   posterior and summary, report, log-likelihood and LOO, predictions, posterior predictive,
   saving and loading, the CLI) and one-line errors.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import multilevel
from multilevel.blockstats import factor_layout
from multilevel.errors import ModelError
from multilevel.families import check_family, pointwise_loglik
from multilevel.glmfit import pooled_glm
from multilevel.priors import log_prior_phi
from multilevel.samplers.negbinomial import NegBinomialGibbs, distinct_counts, nb_phi_loglik

import sbc
from clitools import run_main
from lme4_crossed import DATA_DIR, LME4_CROSSED
from test_crossed_glm import truth_and_draws
from test_crossed_sbc import draw_truth

NB = check_family("negbinomial")


# -- 1. the log-likelihood ------------------------------------------------------------------------

@pytest.mark.parametrize("phi", [0.3, 2.7, 150.0])
def test_loglik_matches_scipy_nbinom(phi):
    rng = np.random.default_rng(5)
    eta = rng.normal(0.5, 1.5, 200)
    eta[:3] = [-30.0, 8.0, 15.0]  # tiny and large means
    mu = np.exp(eta)
    y = rng.poisson(mu * rng.gamma(phi, 1 / phi, 200)).astype(float)
    expected = stats.nbinom.logpmf(y, phi, phi / (phi + mu))
    ours = pointwise_loglik(NB, y, np.ones_like(y), eta, phi)
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-9)
    # the kernel's compiled sum leaves out sum log y! only, at both phi it evaluates
    la, lb = nb_phi_loglik(y, eta, *distinct_counts(y), np.log([phi, 2 * phi]))
    logfact = stats.poisson.logpmf(y, 1.0).sum() + y.size  # log Poisson(y | 1) = -1 - log y!
    np.testing.assert_allclose(la, expected.sum() - logfact, rtol=1e-9)
    mu2 = 2 * phi
    np.testing.assert_allclose(lb, stats.nbinom.logpmf(y, mu2, mu2 / (mu2 + mu)).sum() - logfact, rtol=1e-9)


@pytest.mark.parametrize("name", ["negbinomial", "NegBinomial", "negative_binomial", "nbinom2"])
def test_family_names(name):
    family = check_family(name)
    assert (family.name, family.link, family.dispersion) == ("negbinomial", "log", "phi")


# -- 2. simulation-based calibration --------------------------------------------------------------

PHI_RATE = 1.5
MODELS = {
    # one factor: 10 groups of 8 rows
    "one factor": dict(formula="y ~ x + (1 | g)", shape=(10, 8),
                       priors=dict(mu0=[1.0], Lambda0=[[0.3]], alpha_mean=[0.3], alpha_cov=[[0.2]], eta0=4.0,
                                   S0=[[0.8]], phi_rate=PHI_RATE)),
    # crossed: 12 subjects x 10 items, one row per cell
    "crossed": dict(formula="y ~ x + (1 | g) + (1 | h)", shape=(12, 10),
                    priors=dict(mu0=[1.0], Lambda0=[[0.3]], alpha_mean=[0.3], alpha_cov=[[0.2]],
                                eta0={"g": 4.0, "h": 5.0}, S0={"g": [[0.8]], "h": [[0.9]]}, phi_rate=PHI_RATE)),
}


def sbc_model(name: str) -> multilevel.Model:
    spec = MODELS[name]
    rng = np.random.default_rng(31)
    g, h = np.meshgrid(np.arange(spec["shape"][0]), np.arange(spec["shape"][1]), indexing="ij")
    df = pd.DataFrame({"g": [f"g{k:02d}" for k in g.ravel()], "h": [f"h{k}" for k in h.ravel()],
                       "x": rng.standard_normal(g.size), "y": rng.poisson(3.0, g.size)})
    return multilevel.Model(spec["formula"], df, family="negbinomial", priors=spec["priors"])


def nb_kernel(model: multilevel.Model, design) -> NegBinomialGibbs:
    a_start = pooled_glm(check_family("poisson"), design.F, np.asarray(design.y, dtype=float), design.trials,
                         design.offset)[0]
    return NegBinomialGibbs(design, factor_layout(design), model.priors, a_start)


def run_nb_sbc(name: str, n_reps: int, L: int, thin: int, warmup: int, bins: int, seed: int) -> sbc.SBCResult:
    """Per replication: (a, Sigma, b, phi) from the priors, y ~ NB(exp(eta), phi) as a gamma-Poisson
    mixture, one chain of ``warmup`` + L x thin sweeps, the truth's ranks among L thinned draws."""
    model = sbc_model(name)
    d = model.design
    assert model.priors.phi_rate == PHI_RATE
    all_ranks = []
    for rep in range(n_reps):
        rng = np.random.default_rng([seed, rep])
        a, Sigma, b, _ = draw_truth(rng, model)
        phi = float(stats.expon.rvs(scale=1 / PHI_RATE, random_state=rng)) ** -2.0
        eta = d.F @ a + sum(np.einsum("ic,ic->i", f.Z, b[f.name][f.index]) for f in d.factors)
        mu = np.exp(np.minimum(eta, 20.0))
        y = rng.poisson(mu * rng.gamma(phi, 1 / phi, mu.shape)).astype(float)
        truth, post, draws = truth_and_draws(nb_kernel(model, replace(d, y=y)), model, a, Sigma, b, rng, L, thin,
                                             warmup)
        truth["log phi"], post["log phi"] = np.log(phi), np.log(draws["phi"])
        all_ranks.append(sbc.ranks(truth, post))
    return sbc.collect(all_ranks, L, bins)


@pytest.mark.parametrize("name", list(MODELS))
def test_negbinomial_sbc_small(name):
    result = run_nb_sbc(name, n_reps=150, L=19, thin=3, warmup=100, bins=5, seed=1341)
    assert result.rejected == [], result.report()


class WrongPhiPrior(NegBinomialGibbs):
    """phi's step with four times the prior's rate (a proper prior, not the one the truth comes from)."""

    def log_target_phi(self, eta, log_phi_a, log_phi_b):
        la, lb = nb_phi_loglik(self.y, eta, self.y_values, self.y_counts, np.array([log_phi_a, log_phi_b]))
        return la + log_prior_phi(log_phi_a, 4 * self.phi_rate), lb + log_prior_phi(log_phi_b, 4 * self.phi_rate)


def test_negbinomial_sbc_catches_a_wrong_phi_prior(monkeypatch):
    """The small one-factor run must reject phi's step when its prior is not the model's."""
    original = nb_kernel

    def wrong(model, design):
        kernel = original(model, design)
        kernel.__class__ = WrongPhiPrior
        return kernel

    monkeypatch.setattr(__import__(__name__), "nb_kernel", wrong)
    result = run_nb_sbc("one factor", n_reps=150, L=19, thin=3, warmup=100, bins=5, seed=1341)
    assert "log phi" in result.rejected, result.report()


@pytest.mark.validate
@pytest.mark.parametrize("name", list(MODELS))
def test_negbinomial_sbc_full(name):
    result = run_nb_sbc(name, n_reps=600, L=49, thin=8, warmup=200, bins=10, seed=1342)
    print(result.report())
    assert result.rejected == [], result.report()


# -- 3. lme4's glmer.nb ---------------------------------------------------------------------------

REF = LME4_CROSSED["negbin"]


@pytest.fixture(scope="module")
def negbin_fit():
    df = pd.read_csv(DATA_DIR / REF["file"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = multilevel.fit(REF["formula"], df, family="negative_binomial", chains=2, draws=1000, warmup=500,
                             seed=13, progress=False)
    return df, fit


def test_agrees_with_glmer_nb(negbin_fit):
    """Posterior means of the fixed effects within half a posterior sd of glmer.nb's estimates;
    phi (lme4's theta) and the group variance within one posterior sd (the posterior mean of a
    variance sits above its mode; Laplace's estimates are modes)."""
    _, fit = negbin_fit
    table = fit.summary()
    for term, (est, _) in REF["fixef"].items():
        row = table.loc[f"theta[{term}]" if term == "Intercept" else f"alpha[{term}]"]
        assert abs(row["mean"] - est) < 0.5 * row["sd"], (term, row["mean"], est)
    row = table.loc["phi"]
    assert abs(row["mean"] - REF["phi"]) < row["sd"], (row["mean"], REF["phi"])
    row = table.loc["Sigma[Intercept, Intercept]"]
    assert abs(row["mean"] - REF["varcorr"]["g"]["cov"][0][0]) < row["sd"]
    assert table["r_hat"].max() < 1.02 and table["ess_bulk"].min() > 200, table


# -- 4. determinism, outputs, errors ---------------------------------------------------------------

def small_frame(seed: int = 3, n_g: int = 8, n_h: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g, h = np.meshgrid(np.arange(n_g), np.arange(n_h), indexing="ij")
    df = pd.DataFrame({"g": [f"g{k}" for k in g.ravel()], "h": [f"h{k}" for k in h.ravel()],
                       "x": rng.standard_normal(g.size)})
    mu = np.exp(1.0 + 0.4 * df["x"] + rng.normal(0, 0.5, n_g)[g.ravel()])
    df["y"] = rng.poisson(mu * rng.gamma(2.0, 0.5, g.size))
    return df


def test_same_seed_same_draws_on_one_and_two_cores():
    df = small_frame()
    model = multilevel.Model("y ~ x + (1 | g) + (1 | h)", df, family="negbinomial")
    one = model.fit(chains=2, draws=30, warmup=30, seed=7, cores=1, progress=False)
    two = model.fit(chains=2, draws=30, warmup=30, seed=7, cores=2, progress=False)
    for name in ("phi", "alpha", "theta", "Sigma_g", "beta_h"):
        np.testing.assert_array_equal(one.posterior[name].values, two.posterior[name].values)
    other = model.fit(chains=2, draws=30, warmup=30, seed=8, cores=1, progress=False)
    assert not np.array_equal(one.posterior["phi"].values, other.posterior["phi"].values)


@pytest.fixture(scope="module")
def crossed_fit():
    df = small_frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return df, multilevel.fit("y ~ x + (1 | g) + (1 | h)", df, family="negbinomial", chains=2, draws=200,
                                  warmup=200, seed=2, progress=False)


def test_outputs(crossed_fit, tmp_path):
    df, fit = crossed_fit
    assert fit.posterior["phi"].dims == ("chain", "draw") and np.all(fit.posterior["phi"].values > 0)
    assert "phi" in fit.summary().index
    report = fit.report()
    assert "negbinomial (log link)" in report and "Dispersion" in report and "\nphi " in report
    assert "phi" in fit.attrs["sampler"] or "metropolis phi" in report
    # the pointwise log-likelihood sums to the kernel's recorded one
    ll = fit.log_likelihood()
    assert np.all(np.isfinite(ll.values))
    np.testing.assert_allclose(ll.values.sum(axis=-1), fit.idata.sample_stats["loglik"].values, rtol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = fit.loo()
    assert np.isfinite(loo.elpd_loo)
    # predictions: mean = exp(linear); responses are counts with NB's variance
    lin = fit.predict(df.head(5), kind="linear", seed=1)
    mean = fit.predict(df.head(5), kind="mean", seed=1)
    np.testing.assert_allclose(mean.values, np.exp(lin.values))
    resp = fit.predict(df.head(5), kind="response", seed=1)
    assert resp.values.dtype.kind in "iu" or np.all(resp.values == np.round(resp.values))
    rep = fit.posterior_predictive(seed=3)
    assert rep.shape[-1] == len(df) and rep.values.min() >= 0
    # saved and loaded: phi and its prior come back
    path = tmp_path / "nb.nc"
    fit.save(path)
    back = multilevel.load(path)
    np.testing.assert_array_equal(back.posterior["phi"].values, fit.posterior["phi"].values)
    assert '"phi_rate": 1.0' in back.attrs["priors"]


def test_response_draws_have_nb_moments():
    """kind="response" draws NB(mu, phi): mean mu, variance mu + mu^2 / phi."""
    from multilevel.predict import draw_response

    rng = np.random.default_rng(0)
    eta = np.full((2, 50_000, 1), np.log(4.0))
    phi = np.full((2, 50_000), 1.5)
    y = draw_response(NB, eta, rng, sigma2=phi)
    assert abs(y.mean() - 4.0) < 0.05 and abs(y.var() - (4 + 16 / 1.5)) / (4 + 16 / 1.5) < 0.03


def test_cli_fit_negbinomial(tmp_path):
    df = small_frame()
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    code, stdout, stderr = run_main(["fit", path, "--formula", "y ~ x + (1 | g)", "--family", "negbinomial",
                                     "--chains", 1, "--draws", 20, "--warmup", 20, "--seed", 1, "--no-progress"])
    assert code == 0, stderr
    assert "phi" in stdout


@pytest.mark.parametrize("change, options, fragment", [
    (lambda d: d.assign(y=d["y"] + 0.5), {}, "non-integer"),
    (lambda d: d.assign(y=d["y"] - 3), {}, "negative"),
    (lambda d: d, {"sampler": "auto"}, "the negbinomial family is fitted by sampler 'polya-gamma' or 'sharded' only, not 'auto'"),
    (lambda d: d, {"sampler": "collapsed"}, "the negbinomial family is fitted by sampler 'polya-gamma' or 'sharded' only"),
    (lambda d: d, {"priors": {"phi_rate": 0.0}}, "prior phi_rate must be a positive number"),
    (lambda d: d, {"priors": {"phi_rate": "a"}}, "prior phi_rate must be a positive number"),
])
def test_one_line_errors(change, options, fragment):
    with pytest.raises(ModelError) as err:
        multilevel.Model("y ~ x + (1 | g)", change(small_frame()), family="negbinomial", **options)
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("family, formula", [("poisson", "y ~ x + (1 | g)"),
                                             ("gaussian", "y ~ x + (1 | g) + (1 | h)")])
def test_phi_rate_refused_for_other_families(family, formula):
    with pytest.raises(ModelError, match=f"prior phi_rate applies to the negbinomial family, not {family}"):
        multilevel.Model(formula, small_frame(), family=family, priors={"phi_rate": 1.0})


def test_cli_non_count_response_exits_2(tmp_path):
    path = tmp_path / "d.csv"
    small_frame().assign(y=lambda d: d["y"] + 0.25).to_csv(path, index=False)
    code, _, stderr = run_main(["fit", path, "--formula", "y ~ x + (1 | g)", "--family", "negbinomial",
                                "--chains", 1, "--draws", 10, "--warmup", 10])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "non-integer" in lines[0] and "count" in lines[0], stderr


def test_registry_limits_negbinomial_only():
    """negbinomial has Polya-Gamma and the sharded sampler, for one term and several; the other
    families keep theirs."""
    from multilevel.samplers import registry

    assert registry.available(NB, 1) == registry.available(NB, 2) == ["polya-gamma", "sharded"]
    assert registry.available(check_family("gaussian"), 1) == ["collapsed", "interweaving", "centred", "blocked"]
    assert registry.available(check_family("poisson"), 1) == ["auto", "interweaving", "centred", "sharded"]
    assert registry.available(check_family("bernoulli"), 1)[-2:] == ["polya-gamma", "sharded"]


def test_resumed_run_gives_the_uninterrupted_draws():
    """A run continued from its sampler state (phi and its frozen step included) equals one run."""
    model = multilevel.Model("y ~ x + (1 | g) + (1 | h)", small_frame(), family="negbinomial")
    whole = model.fit(chains=2, draws=40, warmup=30, seed=4, cores=1, progress=False)
    part = model.fit(chains=2, draws=20, warmup=30, seed=4, cores=1, progress=False)
    more = model.resume(part, draws=20, cores=1, progress=False)
    np.testing.assert_array_equal(more.posterior["phi"].values, whole.posterior["phi"].values)
    np.testing.assert_array_equal(more.posterior["alpha"].values, whole.posterior["alpha"].values)


def test_response_draws_stay_finite_for_huge_means_and_small_phi():
    from multilevel.predict import draw_response

    y = draw_response(NB, np.full((1, 200, 2), 45.0), np.random.default_rng(1), sigma2=np.full((1, 200), 0.05))
    assert np.all(y >= 0)
