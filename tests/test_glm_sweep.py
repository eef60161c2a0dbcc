"""The GLM kernel's sweep runs as one compiled call (:func:`multilevel.glmsweep.glm_sweep`);
its NumPy form (``GLMMetropolis(compiled=False)``, :meth:`GLMMetropolis.sweep_numpy`) is the
reference and the fallback. Given the same random inputs both must give the same state, for
every proposal, family and sampler, with and without fixed-only effects; and the state's
per-group log-likelihood and score must always be those of its (beta, alpha)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import multilevel

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


def test_compiled_sweep_equals_numpy_sweep(case):
    kernel, state = case
    numpy_form = dataclasses.replace(kernel, compiled=False)
    for seed in range(6):
        a = kernel.step(state, np.random.default_rng(seed))
        b = numpy_form.step(state, np.random.default_rng(seed))
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


def test_failed_compiled_sweep_falls_back_to_numpy(case, monkeypatch):
    import multilevel.samplers.metropolis as metropolis

    kernel, state = case
    expected = kernel.step(state, np.random.default_rng(9))
    real = metropolis.glm_sweep
    monkeypatch.setattr(metropolis, "glm_sweep", lambda *args: (*real(*args)[:-1], 1))
    again = kernel.step(state, np.random.default_rng(9))
    np.testing.assert_allclose(again.beta, expected.beta, rtol=1e-9, atol=1e-9)


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
