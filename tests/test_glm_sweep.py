"""The GLM kernel's sweep runs as one compiled call (:func:`multilevel.glmsweep.glm_sweep`);
its move-by-move NumPy form is the tests' reference (:func:`reference_sweeps.glm_sweep_reference`).
Given the same random inputs both must give the same state, for every proposal, family and
sampler, with and without fixed-only effects; and the state's per-group log-likelihood and
score must always be those of its (beta, alpha). (A precision that is not positive definite:
``test_jitter.py``.)"""

from __future__ import annotations

import numpy as np
import pytest

import multilevel
from reference_sweeps import as_reference, glm_inputs, glm_sweep_reference

CASES = {
    "epil_laplace": ("y ~ lbase*trt + lage + V4 + (1 | subject)", "epil", "poisson", "laplace", None),
    "epil_textbook": ("y ~ lbase*trt + lage + V4 + (1 | subject)", "epil", "poisson", "textbook", None),
    "epil_centred": ("y ~ lbase*trt + lage + V4 + (1 | subject)", "epil", "poisson", "laplace", "centred"),
    "epil_interweaving": ("y ~ lbase*trt + lage + V4 + (1 | subject)", "epil", "poisson", "laplace", "interweaving"),
    "cbpp_slope": ("p(incidence, size) ~ period + (1 + period2 | herd)", "cbpp", "binomial", "laplace",
                   "interweaving"),
    "cbpp_textbook": ("p(incidence, size) ~ period + (1 | herd)", "cbpp", "binomial", "textbook", None),
}
FIELDS = ("beta", "alpha", "theta", "Sigma", "Sigma_inv", "ll", "grad", "accept_beta", "accept_alpha", "accept_theta",
          "accept_Sigma")


def _data(name):
    frame = multilevel.load_dataset(name)
    if name == "cbpp":
        frame["period2"] = (frame["period"].astype(str) == "2").astype(float)
    return frame


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    formula, data, family, proposal, sampler = CASES[request.param]
    model = multilevel.Model(formula, _data(data), family=family, proposal=proposal, sampler=sampler)
    kernel = model.kernel
    rng = np.random.default_rng(1)
    state = kernel.init(rng)
    for i in range(40):
        state = kernel.warmup_step(state, rng, i, 80)
    return kernel, state


def test_compiled_sweep_equals_reference_sweep(case):
    kernel, state = case
    for seed in range(6):
        a = kernel.step(state, np.random.default_rng(seed))
        b = glm_sweep_reference(kernel, state, glm_inputs(kernel, state, np.random.default_rng(seed)))
        for name in FIELDS:
            x, y = np.asarray(getattr(a, name), dtype=float), np.asarray(getattr(b, name), dtype=float)
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9, err_msg=name)
        state = a


def test_state_loglik_is_that_of_its_coefficients(case):
    """After every sweep ll_j and the score are those of the state's (beta_j, alpha): a move
    that evaluated its proposal at a stale alpha would break this."""
    kernel, state = case
    rng = np.random.default_rng(4)
    for _ in range(15):
        state = kernel.step(state, rng)
        ll, grad = kernel.loglik_grad(state.beta, state.alpha)
        np.testing.assert_allclose(state.ll, ll, rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(state.grad, grad, rtol=1e-10, atol=1e-8)


def test_reference_kernel_steps_with_the_reference_sweep(case):
    """:class:`reference_sweeps.ReferenceGLM`, the kernel that the tempered-likelihood SBC check and
    the repeated-beta benchmark subclass, makes the reference sweep from the kernel's random inputs."""
    kernel, state = case
    a = as_reference(kernel).step(state, np.random.default_rng(3))
    b = kernel.step(state, np.random.default_rng(3))
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.Sigma, b.Sigma, rtol=1e-9, atol=1e-9)


def test_centred_sampler_makes_no_noncentred_moves():
    model = multilevel.Model("y ~ lbase*trt + lage + V4 + (1 | subject)", "epil", family="poisson", sampler="centred")
    fit = model.fit(chains=1, draws=30, warmup=30, seed=1, cores=1, progress=False, log_likelihood=False)
    assert model.kernel.interweave is False
    assert not fit.idata.sample_stats["accept_theta"].values.any()
    assert not fit.idata.sample_stats["accept_Sigma"].values.any()
    assert "centred" in fit.attrs["sampler"]


@pytest.mark.parametrize("family, sampler", [("poisson", "collapsed"), ("gaussian", "laplace")])
def test_sampler_must_suit_the_family(family, sampler):
    data = "epil" if family == "poisson" else "hsb82"
    formula = "y ~ lbase + (1 | subject)" if family == "poisson" else "mAch ~ ses + (1 | school)"
    with pytest.raises(multilevel.ModelError, match=f"sampler must be one of .* for the {family} family"):
        multilevel.Model(formula, data, family=family, sampler=sampler)


def test_more_alpha_moves_when_a_fixed_only_predictor_is_group_level():
    from multilevel.samplers.metropolis import CONFOUNDED_ALPHA_STEPS, default_alpha_steps

    rng = np.random.default_rng(0)
    starts = np.array([0, 3, 7, 10])
    group_level = np.repeat(rng.standard_normal(3), np.diff(starts))[:, None]  # constant within groups
    row_level = rng.standard_normal((10, 1))
    assert default_alpha_steps(group_level, starts) == CONFOUNDED_ALPHA_STEPS
    assert default_alpha_steps(np.hstack([row_level, group_level]), starts) == CONFOUNDED_ALPHA_STEPS
    within = row_level - np.repeat(np.add.reduceat(row_level, starts[:-1]) / np.diff(starts)[:, None], np.diff(starts),
                                   axis=0)  # group means removed: all variance within groups
    assert default_alpha_steps(within, starts) == 1
    assert default_alpha_steps(np.zeros((10, 0)), starts) == 1
    epil = multilevel.Model("y ~ lbase*trt + lage + V4 + (1 | subject)", "epil", family="poisson")
    assert epil.kernel.alpha_steps == CONFOUNDED_ALPHA_STEPS  # treatment is a subject-level predictor


def _poisson_groups(rng, m, lo, hi, sd):
    import pandas as pd

    sizes = rng.integers(lo, hi + 1, m)
    g = np.repeat(np.arange(m), sizes)
    x = rng.standard_normal(g.size)
    b = np.array([0.5, 0.3]) + sd * rng.standard_normal((m, 2))
    return pd.DataFrame({"y": rng.poisson(np.exp(b[g, 0] + b[g, 1] * x)), "x": x, "g": g})


def test_auto_sampler_interweaves_only_when_groups_inform_their_effects_weakly():
    """Groups of 2 to 5 counts with a small Sigma: the non-centred moves are kept; groups of 60
    to 100 counts with a large Sigma: they are dropped at half of warm-up (they would only
    cost two passes over the rows per sweep)."""
    rng = np.random.default_rng(5)
    for lo, hi, sd, expected in ((2, 5, 0.2, True), (60, 100, 1.0, False)):
        model = multilevel.Model("y ~ x + (x | g)", _poisson_groups(rng, 300, lo, hi, sd), family="poisson")
        assert model.kernel.interweave is None
        fit = model.fit(chains=1, draws=20, warmup=100, seed=1, cores=1, progress=False, log_likelihood=False)
        assert bool(fit.idata.sampler_state["interweave"].values[0]) is expected
        if not expected:  # no non-centred move is made after warm-up, so none is accepted
            assert not fit.idata.sample_stats["accept_Sigma"].values.any()
            assert not fit.idata.sample_stats["accept_theta"].values.any()


def test_group_level_columns_finds_group_level_predictors_and_cross_level_interactions():
    from multilevel.samplers.metropolis import group_level_columns

    rng = np.random.default_rng(2)
    starts = np.array([0, 3, 7, 10])
    sizes = np.diff(starts)
    x = rng.standard_normal(10)
    X = np.column_stack([np.ones(10), x])
    w = rng.standard_normal(3)
    group_level = np.repeat(w, sizes)  # constant within groups: absorbed by the intercept
    cross_level = np.repeat(w, sizes) * x  # w_j x_ij: absorbed by the slope of x
    row_level = rng.standard_normal(10)
    cols, terms, weights = group_level_columns(X, np.column_stack([row_level, group_level, cross_level]), starts)
    assert cols.tolist() == [1, 2] and terms.tolist() == [0, 1]
    np.testing.assert_allclose(weights, np.column_stack([w, w]))
    cols, _, weights = group_level_columns(X, row_level[:, None], starts)
    assert cols.size == 0 and weights.shape == (3, 0)
    epil = multilevel.Model("y ~ lbase*trt + lage + V4 + (1 | subject)", "epil", family="poisson")
    names = [epil.design.fixed_terms[c] for c in epil.kernel.group_level[0]]
    assert names == ["lbase", "trt[progabide]", "lbase:trt[progabide]", "lage"]  # V4 varies within subjects


def test_theta_alpha_gibbs_draws_the_gaussian_conditional():
    """Against dense generalised least squares: stacking b_j - W_j alpha_c ~ N(theta, Sigma)
    over groups gives (theta_f, alpha_c) | b Gaussian with precision prior + D' (I (x) Sigma^-1) D.
    With z = 0 the draw is the conditional mean; with z = e_k it moves by the k-th column of a
    square root of the conditional covariance."""
    from multilevel.glmsweep import theta_alpha_gibbs

    rng = np.random.default_rng(3)
    m, p, r = 7, 2, 3
    beta, alpha = rng.standard_normal((m, p)), rng.standard_normal(r)
    A = rng.standard_normal((p, p))
    Sigma_inv = A @ A.T + p * np.eye(p)
    free = np.array([0, 1])
    theta_prec, theta_shift = np.diag([0.5, 2.0]), np.array([0.3, -0.2])
    cols, terms = np.array([0, 2]), np.array([0, 1])
    weight = rng.standard_normal((m, 2))
    B = rng.standard_normal((r, r))
    alpha_prec, alpha_mean = B @ B.T + np.eye(r), rng.standard_normal(r)
    # dense form: u = (theta, alpha_0, alpha_2); b_j = beta_j + W_j alpha_c (the linear predictor's part)
    D = np.zeros((m, p, 4))
    D[:, 0, 0] = D[:, 1, 1] = 1.0
    D[:, 0, 2], D[:, 1, 3] = weight[:, 0], weight[:, 1]
    b = beta + np.einsum("jpc,c->jp", D[:, :, 2:], alpha[cols])
    big_D = D.reshape(m * p, 4)
    big_prec = np.kron(np.eye(m), Sigma_inv)
    prior_prec = np.zeros((4, 4))
    prior_prec[:2, :2] = theta_prec
    prior_prec[2:, 2:] = alpha_prec[np.ix_(cols, cols)]
    prior_lin = np.concatenate([theta_shift,
                                alpha_prec[cols] @ alpha_mean - alpha_prec[np.ix_(cols, [1])] @ alpha[[1]]])
    P = prior_prec + big_D.T @ big_prec @ big_D
    mean = np.linalg.solve(P, prior_lin + big_D.T @ big_prec @ b.ravel())
    draws = []
    for z in np.vstack([np.zeros(4), np.eye(4)]):
        theta, alpha_new, beta_new, level = theta_alpha_gibbs(beta, alpha, Sigma_inv, free, theta_prec, theta_shift,
                                                              cols, terms, weight, alpha_prec, alpha_mean, z)
        assert level == 0  # P as given, no jitter
        u = np.concatenate([theta, alpha_new[cols]])
        draws.append(u)
        assert alpha_new[1] == alpha[1]  # not a group-level column: untouched
        # the linear predictor's part b_j is unchanged
        np.testing.assert_allclose(beta_new + np.einsum("jpc,c->jp", D[:, :, 2:], alpha_new[cols]), b, atol=1e-12)
    np.testing.assert_allclose(draws[0], mean, rtol=1e-10, atol=1e-12)
    root = np.array(draws[1:]).T - mean[:, None]
    np.testing.assert_allclose(root @ root.T, np.linalg.inv(P), rtol=1e-9, atol=1e-12)
