"""Exact posterior: with Sigma and sigma2 held fixed, the Gibbs sampler of (theta, beta, alpha)
must reproduce the Gaussian posterior, whose mean and covariance are computed here in
closed form from the raw rows with plain numpy (a dense joint precision matrix, no
sufficient statistics), independently of the package.

Joint density of u = (theta_f, beta_1..beta_m, alpha) given Sigma, sigma2:

    log p = -1/2 [ (theta_f - mu0)' Lambda0^-1 (theta_f - mu0)
                   + sum_j (beta_j - E theta_f)' Sigma^-1 (beta_j - E theta_f)
                   + (alpha - a0)' A0^-1 (alpha - a0)
                   + ||y - D u||^2 / sigma2 ] + const,

E the p x q selection of the varying terms with a population mean, D the dense row
design (zeros for theta, block columns X_j for beta_j, Z for alpha): a Gaussian with
precision Q = K_prior + D'D / sigma2 and mean Q^-1 (h_prior + D'y / sigma2).

A second part runs the full sweep (Sigma and sigma2 drawn too) on a random-intercept
model and compares the marginal posteriors of Sigma and sigma2 with two-dimensional
quadrature of their exact joint density (theta and the beta_j integrated out by hand).
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

import multilevel
from multilevel.run import run_chains
from multilevel.samplers.gibbs import GaussianGibbs

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import arviz as az

#: |estimate - exact| / MCSE above this rejects. Each case compares d means and
#: d (d + 1) / 2 covariances, d <= 15, so at most 135 z-scores: under a correct sampler
#: P(any |z| > 4.5) ~ 135 * 7e-6 ~ 1e-3 (and the seeds are fixed).
Z_MAX = 4.5

CHAINS, DRAWS, WARMUP = 4, 5000, 500

SIGMA = np.array([[1.0, 0.3], [0.3, 0.5]])
SIGMA2 = 1.5
# Small, unequal groups so that the prior (Sigma, Lambda0) matters as much as the data.
SIZES = np.array([2, 3, 4, 5, 7, 9])

CASES = {
    # formula, update, theta_free, true alpha
    "intercept+slope": ("y ~ x + (x | g)", {"beta", "theta"}, [True, True], None),
    "with fixed-only z": ("y ~ x + z + (x | g)", {"beta", "theta", "alpha"}, [True, True], 0.7),
    "zero-mean slope": ("y ~ 1 + (1 + x | g)", {"beta", "theta"}, [True, False], None),
}


def make_priors(free: np.ndarray, r: int) -> multilevel.Priors:
    q = int(free.sum())
    return multilevel.Priors(
        mu0=np.array([0.5, -0.3])[:q],
        Lambda0=np.array([[0.8, 0.2], [0.2, 0.6]])[:q, :q],
        eta0=5.0,
        S0=np.eye(2),
        nu0=2.0,
        sigma0_sq=1.0,
        alpha_mean=np.full(r, 0.2),
        alpha_cov=np.full((r, r), 0.5),
    )


def closed_form(df, free, r, priors, Sigma, sigma2):
    """Mean and covariance of (theta_f, beta_1..beta_m, alpha) | Sigma, sigma2, y, by dense algebra."""
    free = np.asarray(free, dtype=bool)
    p, q = free.shape[0], int(free.sum())
    g = df["g"].to_numpy()
    m = int(g.max()) + 1
    N = len(df)
    X = np.column_stack([np.ones(N), df["x"].to_numpy()])[:, :p]
    Z = df[["z"]].to_numpy()[:, :r]
    y = df["y"].to_numpy()
    d = q + m * p + r
    D = np.zeros((N, d))
    for i in range(N):
        D[i, q + g[i] * p: q + (g[i] + 1) * p] = X[i]
    D[:, q + m * p:] = Z

    Si = np.linalg.inv(Sigma)
    E = np.eye(p)[:, free]
    L0i = np.linalg.inv(priors.Lambda0)
    K = np.zeros((d, d))
    h = np.zeros(d)
    K[:q, :q] = L0i + m * E.T @ Si @ E
    h[:q] = L0i @ priors.mu0
    for j in range(m):
        b = slice(q + j * p, q + (j + 1) * p)
        K[b, b] = Si
        K[:q, b] = -E.T @ Si
        K[b, :q] = -Si @ E
    if r:
        A0i = np.linalg.inv(priors.alpha_cov)
        K[q + m * p:, q + m * p:] = A0i
        h[q + m * p:] = A0i @ priors.alpha_mean
    Q = K + D.T @ D / sigma2
    cov = np.linalg.inv(Q)
    return cov @ (h + D.T @ y / sigma2), cov


def mcse_of_means(series: np.ndarray) -> np.ndarray:
    """Monte Carlo standard error of the mean of each series (chain, draw, k): sd / sqrt(ESS)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = az.mcse(az.convert_to_dataset({"s": series}), method="mean")
    return out["s"].values


def z_scores(u: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-scores of the sampler's means and covariances against (mean, cov); u is (chain, draw, d).

    Covariance entry (a, b) is the mean of the series (u_a - ubar_a)(u_b - ubar_b), so its
    MCSE is that series' sd / sqrt(its ESS), like the means'.
    """
    d = u.shape[-1]
    ubar = u.mean(axis=(0, 1))
    z_mean = (ubar - mean) / mcse_of_means(u)
    c = u - ubar
    ia, ib = np.tril_indices(d)
    prod = c[..., ia] * c[..., ib]
    z_cov = (prod.mean(axis=(0, 1)) - cov[ia, ib]) / mcse_of_means(prod)
    return z_mean, z_cov


@pytest.fixture(scope="module", params=list(CASES))
def exact_case(request, simulate):
    formula, update, free, alpha = CASES[request.param]
    free = np.asarray(free)
    r = 1 if alpha is not None else 0
    rng = np.random.default_rng([2024, list(CASES).index(request.param)])
    df = simulate(rng, len(SIZES), SIZES, theta=[1.0, 2.0], Sigma=SIGMA, sigma2=SIGMA2, alpha=alpha)
    priors = make_priors(free, r)
    model = multilevel.Model(formula, df, priors=priors)
    assert list(model.design.theta_free) == list(free)
    assert model.design.Z.shape[1] == r
    kernel = GaussianGibbs(
        model.stats, model.priors, model.design.theta_free,
        update=frozenset(update), start={"Sigma": SIGMA, "sigma2": SIGMA2},
    )
    res = run_chains(kernel, chains=CHAINS, draws=DRAWS, warmup=WARMUP, seed=11, cores=1, progress=False)
    dr = res.draws
    # Held blocks must not move.
    assert np.all(dr["Sigma"] == SIGMA)
    assert np.all(dr["sigma2"] == SIGMA2)
    if not free.all():
        assert np.all(dr["theta"][..., ~free] == 0.0)
    u = np.concatenate(
        [dr["theta"][..., free], dr["beta"].reshape(CHAINS, DRAWS, -1), dr["alpha"]], axis=-1
    )
    return df, free, r, priors, u


def test_sampler_matches_closed_form(exact_case):
    df, free, r, priors, u = exact_case
    mean, cov = closed_form(df, free, r, priors, SIGMA, SIGMA2)
    z_mean, z_cov = z_scores(u, mean, cov)
    assert np.abs(z_mean).max() < Z_MAX, f"means off: z = {np.round(z_mean, 2)}"
    assert np.abs(z_cov).max() < Z_MAX, f"covariances off: max |z| = {np.abs(z_cov).max():.2f}"
    # the sampler's posterior sds agree with the exact ones to a few per cent (a readable summary
    # of the covariance check above)
    sd = u.std(axis=(0, 1))
    np.testing.assert_allclose(sd, np.sqrt(np.diag(cov)), rtol=0.03)


@pytest.mark.parametrize("wrong", ["Sigma doubled", "Sigma x 1.2", "sigma2 x 1.1", "prior of theta ignored"])
def test_criterion_rejects_wrong_closed_form(exact_case, wrong):
    """The same criterion must reject a closed form that is slightly wrong, or the test above
    proves nothing. (Measured: max |z| about 8-20 for the 10-20 % errors, 45-80 for Sigma doubled.)"""
    df, free, r, priors, u = exact_case
    Sigma, sigma2 = SIGMA, SIGMA2
    if wrong == "Sigma doubled":
        Sigma = 2 * SIGMA
    elif wrong == "Sigma x 1.2":
        Sigma = 1.2 * SIGMA
    elif wrong == "sigma2 x 1.1":
        sigma2 = 1.1 * SIGMA2
    else:
        priors = replace(priors, Lambda0=1e6 * priors.Lambda0)
    mean, cov = closed_form(df, free, r, priors, Sigma, sigma2)
    z_mean, z_cov = z_scores(u, mean, cov)
    assert max(np.abs(z_mean).max(), np.abs(z_cov).max()) > Z_MAX


# -- the full sweep (Sigma and sigma2 too) against two-dimensional quadrature ---------------------
#
# Random-intercept model y_ij = beta_j + e_ij: given (Sigma, sigma2) = (S, s2) the group means
# and theta integrate out in closed form, so the marginal posterior of (S, s2) is a
# two-dimensional density evaluated on a grid. With C_j = S J + s2 I (Woodbury):
#   1'C_j^-1 1 = n_j / (s2 + n_j S),  1'C_j^-1 y_j = Y_j / (s2 + n_j S),
#   y_j'C_j^-1 y_j = (y_j'y_j - S Y_j^2 / (s2 + n_j S)) / s2,  log|C_j| = (n_j - 1) log s2 + log(s2 + n_j S),
# (Y_j the group sum), and theta ~ N(mu0, L0) integrates out of exp(-(A th^2 - 2 b th + c) / 2).

RI_PRIORS = multilevel.Priors(mu0=[1.0], Lambda0=[[1.0]], eta0=6.0, S0=[[4.0]], nu0=10.0, sigma0_sq=1.0)


def ri_log_marginal(df, priors, S, s2):
    """log p(y | S, s2) of the random-intercept model with theta integrated out (any array shapes)."""
    mu0, L0 = float(priors.mu0[0]), float(priors.Lambda0[0][0])
    A = b = c = logdet = 0.0
    for _, yj in df.groupby("g")["y"]:
        y = yj.to_numpy()
        n, Y, yy = len(y), y.sum(), y @ y
        d = s2 + n * S
        A = A + n / d
        b = b + Y / d
        c = c + (yy - S * Y**2 / d) / s2
        logdet = logdet + (n - 1) * np.log(s2) + np.log(d)
    N = len(df)
    P = A + 1.0 / L0
    return (-0.5 * (N * np.log(2 * np.pi) + logdet + c + mu0**2 / L0) - 0.5 * np.log(L0 * P)
            + 0.5 * (b + mu0 / L0) ** 2 / P)


def ri_posterior_grid(df, priors, n=500):
    """Normalised posterior weights of (S, s2) on a log-spaced grid, and the grid."""
    S = np.exp(np.linspace(np.log(1e-3), np.log(1e2), n))[:, None]
    s2 = np.exp(np.linspace(np.log(1e-2), np.log(1e2), n))[None, :]
    logp = (ri_log_marginal(df, priors, S, s2)
            + stats.invgamma.logpdf(S, priors.eta0 / 2, scale=float(priors.S0[0][0]) / 2)
            + stats.invgamma.logpdf(s2, priors.nu0 / 2, scale=priors.nu0 * priors.sigma0_sq / 2)
            + np.log(S) + np.log(s2))  # Jacobian of the log-spaced grid
    w = np.exp(logp - logp.max())
    w /= w.sum()
    # the grid must hold the whole posterior
    assert w[[0, -1], :].sum() + w[:, [0, -1]].sum() < 1e-8
    return S[:, 0], s2[0], w


@pytest.fixture(scope="module")
def ri_case(simulate):
    rng = np.random.default_rng(77)
    df = simulate(rng, 8, np.array([3, 4, 5, 5, 6, 6, 7, 8]), theta=[1.0], Sigma=[[0.8]], sigma2=1.2)
    model = multilevel.Model("y ~ 1 + (1 | g)", df, priors=RI_PRIORS)
    res = run_chains(model.kernel, chains=4, draws=10000, warmup=1000, seed=3, cores=1, progress=False)
    return df, res.draws["Sigma"][..., 0, 0], res.draws["sigma2"]


def ri_z_scores(S_draws, s2_draws, S, s2, w):
    """z-scores of the sampler's means, variances and marginal CDFs (at the exact quartiles)."""
    wS, ws2 = w.sum(axis=1), w.sum(axis=0)
    z = []
    for draws, grid, marg in ((S_draws, S, wS), (s2_draws, s2, ws2)):
        mean = marg @ grid
        var = marg @ (grid - mean) ** 2
        cdf = np.cumsum(marg) - 0.5 * marg  # P(X <= grid point): half of its own cell (midpoint rule)
        idx = [np.searchsorted(cdf, q) for q in (0.1, 0.25, 0.5, 0.75, 0.9)]
        series = [draws, (draws - draws.mean()) ** 2] + [(draws <= grid[i]).astype(float) for i in idx]
        exact = [mean, var] + [cdf[i] for i in idx]
        for s, e in zip(series, exact):
            z.append((s.mean() - e) / mcse_of_means(s[..., None])[0])
    return np.array(z)


def test_full_sweep_matches_quadrature(ri_case):
    df, S_draws, s2_draws = ri_case
    # self-check of the Woodbury algebra against a dense Gaussian density
    g = df["g"].to_numpy()
    same = (g[:, None] == g[None, :]).astype(float)
    for S_, s2_ in [(0.5, 1.0), (2.0, 0.3)]:
        C = RI_PRIORS.Lambda0[0][0] + S_ * same + s2_ * np.eye(len(df))
        dense = stats.multivariate_normal(np.full(len(df), RI_PRIORS.mu0[0]), C).logpdf(df["y"].to_numpy())
        assert ri_log_marginal(df, RI_PRIORS, S_, s2_) == pytest.approx(dense, rel=1e-10)
    S, s2, w = ri_posterior_grid(df, RI_PRIORS)
    z = ri_z_scores(S_draws, s2_draws, S, s2, w)
    assert np.abs(z).max() < Z_MAX, np.round(z, 2)


@pytest.mark.parametrize("wrong", ["eta0 + 2", "nu0 + 4"])
def test_quadrature_criterion_rejects_wrong_prior(ri_case, wrong):
    """A posterior with a slightly different prior on Sigma or sigma2 must be rejected.
    (Measured: max |z| about 60 for eta0 + 2 and 11 for nu0 + 4; 1.1 for the right one.)"""
    df, S_draws, s2_draws = ri_case
    priors = replace(RI_PRIORS, eta0=RI_PRIORS.eta0 + 2) if wrong == "eta0 + 2" else replace(RI_PRIORS, nu0=RI_PRIORS.nu0 + 4)
    S, s2, w = ri_posterior_grid(df, priors)
    assert np.abs(ri_z_scores(S_draws, s2_draws, S, s2, w)).max() > Z_MAX
