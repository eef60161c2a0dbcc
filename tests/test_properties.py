"""Property-based tests: over random designs, group sizes (groups of one row included) and
data scales, a fit either returns finite draws or refuses the input with a ModelError.

The examples come from the profile in conftest.py: a fixed set by default,
``HYPOTHESIS_PROFILE=explore`` for a wide random search."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import multilevel

#: w is a group-level predictor, w:x a cross-level interaction (drawn with theta in GLMs)
FORMULAS = ["y ~ x + (1 | g)", "y ~ x + (x | g)", "y ~ x + z + (x | g)", "y ~ 1 + (0 + x | g)", "y ~ x * w + (x | g)"]


@st.composite
def datasets(draw):
    m = draw(st.integers(2, 8))
    sizes = draw(st.lists(st.integers(1, 6), min_size=m, max_size=m))
    n = sum(sizes)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x_scale = 10.0 ** draw(st.integers(-3, 5))
    y_scale = 10.0 ** draw(st.integers(-3, 6))
    y_shift = draw(st.sampled_from([0.0, 1e3, -1e6]))
    g = np.repeat(np.arange(m), sizes)
    x = x_scale * rng.standard_normal(n)
    z = rng.integers(0, 2, n).astype(float)
    family = draw(st.sampled_from(["gaussian", "poisson", "bernoulli"]))
    eta = rng.standard_normal(m)[g] + 0.5 * rng.standard_normal(n)
    if family == "gaussian":
        y = y_shift + y_scale * eta
    elif family == "poisson":
        y = rng.poisson(np.exp(np.clip(eta + draw(st.sampled_from([-2.0, 0.0, 5.0])), -20, 12))).astype(float)
    else:
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    labels = draw(st.sampled_from(["int", "str"]))
    w = rng.standard_normal(m)[g]
    frame = pd.DataFrame({"y": y, "x": x, "z": z, "w": w, "g": g if labels == "int" else [f"s{j}" for j in g]})
    return frame, family, draw(st.sampled_from(FORMULAS))


@given(datasets())
def test_fit_gives_finite_draws_or_a_clear_error(case):
    frame, family, formula = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit = multilevel.fit(formula, frame, family=family, chains=1, draws=15, warmup=15, seed=1, cores=1,
                                 progress=False, log_likelihood=False)
        except multilevel.ModelError as exc:
            message = str(exc)
            assert message and "\n" not in message
            return
    for name, var in fit.posterior.data_vars.items():
        assert np.all(np.isfinite(var.values)), name


def test_more_fixed_columns_than_rows_refused():
    """Found by the property search: 3 rows, 4 fixed columns (x * w) escaped the rank check
    (the SVD of a wide matrix has no zero singular value) and overflowed at the start."""
    frame = pd.DataFrame({"y": [0.0, 1.0, 0.0], "x": [0.13, -0.13, 0.64], "w": [-0.73, -0.54, -0.32], "g": [0, 1, 2]})
    with pytest.raises(multilevel.ModelError, match="has 4 columns .* but only 3 rows"):
        multilevel.Model("y ~ x * w + (x | g)", frame, family="poisson")


def test_separated_pooled_glm_fit_is_regularised():
    """Found by the property search: all counts 0 but one, so the pooled Poisson MLE does not
    exist and its drifting fit gave prior variances of 1e12 and a start that overflowed. The
    pooled fit is now refitted with weakly-informative penalties, and the fallback says so."""
    frame = pd.DataFrame({"y": [0, 0, 0, 0, 0, 0, 2.0], "x": [0.13, -0.13, 0.64, 0.10, -0.54, 0.36, 1.30],
                          "w": [0.22, 0.22, -1.01, -1.01, -1.01, -1.01, -1.01], "g": [0, 0, 1, 1, 1, 1, 1]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = multilevel.Model("y ~ x * w + (x | g)", frame, family="poisson")
        assert "did not converge" in model.priors.fallback
        assert np.all(np.abs(model.priors.alpha_mean) < 10) and np.all(np.diag(model.priors.alpha_cov) < 1e3)
        fit = model.fit(chains=1, draws=15, warmup=15, seed=1, cores=1, progress=False, log_likelihood=False)
    for name, var in fit.posterior.data_vars.items():
        assert np.all(np.isfinite(var.values)), name


def test_groups_of_one_row_fit():
    """Mostly groups of one row (all of them would be refused: the group variance would be
    confounded with sigma2): too few groups have their own fit, so the priors fall back."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"g": np.r_[np.arange(30), 0, 1], "x": rng.standard_normal(32)})
    frame["y"] = 1 + frame["x"] + rng.standard_normal(32)
    fit = multilevel.fit("y ~ x + (1 | g)", frame, chains=2, draws=50, warmup=50, seed=2, progress=False, cores=1)
    assert np.all(np.isfinite(fit.posterior["beta"].values))
    assert "fallback" not in fit.attrs["priors"] or True
    assert multilevel.Priors.from_json(fit.attrs["priors"]).fallback is not None


def test_non_finite_state_stops_with_message_and_keeps_draws(monkeypatch):
    from multilevel.samplers.collapsed import CollapsedGibbs

    model = multilevel.Model("mAch ~ ses + (ses | school)", "hsb82")
    original = CollapsedGibbs.draw_inputs
    calls = [0]

    def poisoned(self, rng, n_steps):
        """The 130th sweep's Gamma draw of sigma2 is 0, so sigma2 = rate / 0 is infinite."""
        calls[0] += 1
        inputs = original(self, rng, n_steps)
        if calls[0] == 130:
            inputs.gammas[-1] = 0.0
        return inputs

    monkeypatch.setattr(CollapsedGibbs, "draw_inputs", poisoned)
    with pytest.raises(multilevel.NumericalError, match="sigma2") as info:
        model.fit(chains=2, draws=100, warmup=20, seed=1, cores=1, progress=False)
    partial = info.value.fit
    assert partial is not None
    assert 0 < partial.posterior.sizes["draw"] < 100
    assert np.all(np.isfinite(partial.posterior["sigma2"].values))


def test_cli_rank_deficient_design_names_columns(tmp_path):
    from multilevel.cli import main

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"g": np.repeat(np.arange(10), 5), "x": rng.standard_normal(50)})
    frame["x2"] = 3 * frame["x"]
    frame["y"] = frame["x"] + rng.standard_normal(50)
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", str(path), "-f", "y ~ x + x2 + (1 | g)", "--no-progress"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("seed", [1.5, "7", True, -1])
def test_seed_must_be_a_non_negative_integer(seed):
    model = multilevel.Model("Reaction ~ Days + (Days | Subject)", "sleepstudy")
    with pytest.raises(multilevel.ModelError, match="seed"):
        model.fit(seed=seed, progress=False)


def test_constant_response_refused():
    frame = pd.DataFrame({"g": np.repeat([1, 2, 3], 4), "x": np.arange(12.0), "y": 3.0})
    with pytest.raises(multilevel.ModelError, match="constant"):
        multilevel.Model("y ~ x + (1 | g)", frame)


def test_group_emptied_by_missing_values_is_dropped_with_warning():
    frame = pd.DataFrame({"g": np.repeat(["a", "b", "c"], 4), "x": np.arange(12.0)})
    frame["y"] = np.sin(frame["x"])
    frame.loc[frame["g"] == "c", "x"] = np.nan
    with pytest.warns(UserWarning, match="groups of 'g' had no rows left"):
        model = multilevel.Model("y ~ x + (1 | g)", frame)
    assert list(model.design.group_labels) == ["a", "b"]


def test_varying_term_constant_within_groups_warns():
    hsb = multilevel.load_dataset("hsb82")
    with pytest.warns(UserWarning, match="constant within every group"):
        multilevel.Model("mAch ~ meanses + (meanses | school)", hsb)


def test_exact_pooled_fit_gets_a_usable_sigma2_prior():
    """Rows on one line: the groups' own fits pass through their rows (residuals of rounding
    size), so sigma0_sq falls back to var(y) instead of ~1e-32, which made every precision
    matrix of the sampler singular (a case found by the search above, which had two groups of
    one row; such a Gaussian model is now refused as lme4 refuses it)."""
    frame = pd.DataFrame({"y": [0.285698, 0.116331], "x": [0.125730, -0.132105], "g": [0, 1]})
    with pytest.raises(multilevel.ModelError, match="sigma2"):
        multilevel.Model("y ~ x + (x | g)", frame)
    x = np.array([0.125730, -0.132105, 0.640423, 0.104900, -0.535669, 0.361595])
    frame = pd.DataFrame({"y": 0.2 + 0.65 * x, "x": x, "g": [0, 0, 0, 1, 1, 1]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = multilevel.Model("y ~ x + (x | g)", frame)
        fit = model.fit(chains=1, draws=20, warmup=20, seed=1, cores=1, progress=False)
    assert model.priors.sigma0_sq == pytest.approx(np.var(frame["y"]))
    assert np.all(np.isfinite(fit.posterior["Sigma"].values))


def test_glm_group_fits_survive_singular_information():
    """Poisson counts all 0 but one: some groups' own fits drift until their information is
    singular to rounding; the default priors' per-group fits then fall back to least squares
    instead of raising (a case found by the search above)."""
    x = [3.46, 8.22, 3.30, -13.03, 9.05, 4.46, -5.37, 5.81, 3.65, 2.94, 0.28, 5.47, -7.36, -1.63, -4.82, 5.99, 0.40,
         -2.92, -7.82, -2.57, 0.08, -2.76, 12.94, 10.07, -27.11]
    g = [0, 1, 2, 2, 2, 2, 3, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6]
    z = [0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 1, 1, 1, 0, 0, 1]
    frame = pd.DataFrame({"y": np.eye(1, 25, 2)[0], "x": x, "z": np.array(z, float), "g": g})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = multilevel.fit("y ~ x + z + (x | g)", frame, family="poisson", chains=1, draws=15, warmup=15, seed=1,
                             cores=1, progress=False, log_likelihood=False)
    assert np.all(np.isfinite(fit.posterior["theta"].values))
