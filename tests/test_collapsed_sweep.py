"""The collapsed Gaussian kernel's sweep runs in one compiled call
(:func:`multilevel.linalg.collapsed_sweep`); its step-by-step NumPy form is the tests'
reference (:func:`reference_sweeps.collapsed_sweep_reference`). Given the same random inputs
both must give the same state, on real data and on designs with fixed-only terms and
zero-mean varying terms. (A precision that is not positive definite: ``test_jitter.py``.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import multilevel
from multilevel.samplers.collapsed import CollapsedGibbs
from reference_sweeps import collapsed_sweep_reference


def _kernel_and_state(formula, data, sweeps=30):
    model = multilevel.Model(formula, data)
    kernel = model.kernel
    assert isinstance(kernel, CollapsedGibbs)
    rng = np.random.default_rng(3)
    state = kernel.init(rng)
    for i in range(sweeps):
        state = kernel.warmup_step(state, rng, i, 2 * sweeps)
    return kernel, state


@pytest.fixture(params=["hsb82", "fixed_only", "zero_mean"])
def case(request, simulate, hsb82):
    if request.param == "hsb82":
        return _kernel_and_state("mAch ~ ses + (ses | school)", hsb82)
    df = simulate(np.random.default_rng(5), 40, 6, theta=[1.0, -0.5], Sigma=[[0.5, 0.1], [0.1, 0.3]], sigma2=1.0,
                  alpha=[0.7])
    if request.param == "fixed_only":
        return _kernel_and_state("y ~ x + z + (x | g)", df)
    return _kernel_and_state("y ~ 1 + z + (0 + x | g)", df)


def test_compiled_sweep_equals_reference_sweep(case):
    kernel, state = case
    for seed in range(4):
        inputs = kernel.draw_inputs(np.random.default_rng(seed), state.n_steps)
        beta, alpha, theta, Sigma, Sigma_inv, sigma2, ssr, accepted = collapsed_sweep_reference(kernel, state, inputs)
        new = kernel.step(state, np.random.default_rng(seed))  # the compiled sweep, same inputs
        scale = max(1.0, float(np.abs(beta).max()))
        np.testing.assert_allclose(new.beta, beta, rtol=1e-10, atol=1e-10 * scale)
        np.testing.assert_allclose(new.alpha, alpha, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(new.theta, theta, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(new.Sigma, Sigma, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(new.Sigma_inv, Sigma_inv, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(new.sigma2, sigma2, rtol=1e-10)
        np.testing.assert_allclose(new.ssr, ssr, rtol=1e-9)
        assert new.accept_Sigma == accepted / state.n_steps
        state = new


def test_state_ssr_is_the_residual_sum_of_squares(case):
    from multilevel.suffstats import residual_sum_of_squares

    kernel, state = case
    state = kernel.step(state, np.random.default_rng(0))
    assert state.ssr == pytest.approx(residual_sum_of_squares(kernel.stats, state.beta, state.alpha), rel=1e-9)


def test_warmup_sets_proposal_scales_from_the_third_quarter(hsb82):
    kernel, state = _kernel_and_state("mAch ~ ses + (ses | school)", hsb82, sweeps=0)
    rng = np.random.default_rng(1)
    n_warmup = 200
    for i in range(n_warmup):
        state = kernel.warmup_step(state, rng, i, n_warmup)
        if i + 1 == n_warmup // 2:
            assert np.all(state.v_scale == 1.0)
    assert state.v_scale.shape == (3,)
    assert np.all(state.v_scale > 0) and not np.all(state.v_scale == 1.0)
    # after R = chol(mean Sigma) the coordinates are about 0 with a spread well below 1
    assert np.all(state.v_scale < 1.0)


def test_sigma_steps_follow_how_weakly_groups_inform_their_effects(hsb82, simulate):
    """hsb82's ses slopes are informed weakly by each school (many steps); 100 rows per group
    with a large Sigma inform the effects well (one step); a fixed number is kept."""
    from multilevel.samplers.collapsed import MAX_SIGMA_STEPS

    kernel, state = _kernel_and_state("mAch ~ ses + (ses | school)", hsb82, sweeps=0)
    assert kernel.choose_sigma_steps(np.array([[4.8, -0.1], [-0.1, 0.5]]), 36.8) >= MAX_SIGMA_STEPS - 2
    df = simulate(np.random.default_rng(2), 200, 100, theta=[1.0, -0.5], Sigma=[[1.0, 0.2], [0.2, 0.5]], sigma2=1.0)
    strong, _ = _kernel_and_state("y ~ x + (x | g)", df, sweeps=0)
    assert strong.choose_sigma_steps(np.array([[1.0, 0.2], [0.2, 0.5]]), 1.0) == 1
    rng = np.random.default_rng(0)
    state = strong.init(rng)
    for i in range(40):
        state = strong.warmup_step(state, rng, i, 40)
    assert state.n_steps == 1
    fixed = dataclasses.replace(strong, sigma_steps=4)
    state = fixed.init(rng)
    for i in range(40):
        state = fixed.warmup_step(state, rng, i, 40)
    assert state.n_steps == 4
