"""A precision matrix P that is not positive definite, met inside a compiled sweep: the sweep
retries its Cholesky factorisation with P + jitter * mean(|diag P|) * I for jitter in
``JITTERS`` (1e-10, 1e-8, 1e-6), for that matrix (that group) alone, and reports it; the kernel
then warns once per matrix. Past the largest jitter the sweep stops and the kernel raises
FloatingPointError naming the matrix and the group. (Where every matrix is positive definite
the draws are the reference sweeps': ``test_collapsed_sweep.py``, ``test_glm_sweep.py``.)"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

import multilevel
from multilevel.distributions import check_factorisations
from multilevel.glmsweep import theta_alpha_gibbs
from multilevel.linalg import (AS_GIVEN, JITTERS, NOT_PD, cholesky_jittered, copy_into, gaussian_beta_draw,
                               mvn_precision_jittered)

from reference_sweeps import mvn_draw


def near_singular(c: float, eps: float = 1e-9) -> np.ndarray:
    """c [[1, 1 + eps], [1 + eps, 1]]: eigenvalues c (2 + eps) and -c eps, mean diagonal c, so
    that the relative jitter 1e-10 is too small and 1e-8 (level 2) is enough."""
    return c * np.array([[1.0, 1.0 + eps], [1.0 + eps, 1.0]])


def jittered(P: np.ndarray, level: int) -> np.ndarray:
    """P + JITTERS[level - 1] * mean(|diag P|) * I."""
    return P + JITTERS[level - 1] * np.abs(np.diag(P)).mean() * np.eye(P.shape[0])


def caught(action):
    """(result of ``action()``, messages of the warnings it raised)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = action()
    return out, [str(w.message) for w in record]


# -- the compiled pieces ---------------------------------------------------------------------------


def test_cholesky_takes_the_first_jitter_that_works():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 3))
    cases = [(A @ A.T + np.eye(3), 0), (near_singular(3.0), 2), (near_singular(3.0, eps=1e-11), 1),
             (-np.eye(2), NOT_PD), (np.array([[1.0, np.nan], [np.nan, 1.0]]), NOT_PD)]
    for P, expected in cases:
        original = P.copy()
        L = np.empty_like(P)
        level = cholesky_jittered(P, L)
        assert level == expected
        np.testing.assert_array_equal(P, original)  # not modified
        if level != NOT_PD:
            target = jittered(P, level) if level else P
            np.testing.assert_allclose(np.tril(L) @ np.tril(L).T, target, rtol=1e-12)
            np.testing.assert_array_equal(np.triu(L, 1), np.triu(P, 1))  # the strict upper triangle is P's


def test_copy_into_copies_whatever_the_layout():
    """copy_into (the kernels' dst[:] = src) on rows, columns, transposes and strided views:
    dst equals src and nothing else of dst's base is written."""
    P = np.random.default_rng(1).standard_normal((4, 3, 3))
    for make, view, src in [((3, 3), lambda a: a, P[2]), ((5, 3), lambda a: a[1], P[1, :, 0]),
                            ((3, 3), lambda a: a.T, P[0]), ((6, 3), lambda a: a[::2], P[3])]:
        base = np.full(make, np.nan)
        dst = view(base)
        copy_into(dst, src)
        np.testing.assert_array_equal(dst, src)
        assert np.count_nonzero(~np.isnan(base)) == src.size
    with pytest.raises(ValueError, match="differ in shape"):  # never past dst's end
        copy_into(np.zeros(2), P[0, 0, :])


def test_single_draw_with_jitter_is_the_draw_from_the_jittered_precision():
    P, b, z = near_singular(2.0), np.array([0.3, -0.1]), np.array([0.5, 1.5])
    x, level = mvn_precision_jittered(P, b, z)
    assert level == 2
    np.testing.assert_allclose(x, mvn_draw(jittered(P, 2), b, z), rtol=1e-6)
    _, level = mvn_precision_jittered(-P, b, z)
    assert level == NOT_PD


def test_only_the_groups_that_need_it_are_jittered():
    """Of four groups' beta_j draws, group 1 needs the jitter 1e-10 and group 2 1e-8: the report
    is (largest level 2, first group 1, two groups); the others are drawn as given. A group past
    the largest jitter ends the batch, reported with its own index."""
    rng = np.random.default_rng(1)
    m, p, sigma2 = 4, 2, 2.0
    X = rng.standard_normal((m, 6, p))
    XtX = np.einsum("jia,jib->jab", X, X)
    Sigma_inv = np.array([[1.0, 0.2], [0.2, 0.5]])
    XtX[1] = sigma2 * (near_singular(1e6, eps=1e-11) - Sigma_inv)
    XtX[2] = sigma2 * (near_singular(1e6) - Sigma_inv)
    Xty, XtZ, alpha = rng.standard_normal((m, p)), np.zeros((m, p, 0)), np.zeros(0)
    theta, z = np.array([0.5, -0.5]), rng.standard_normal((m, p))
    beta, report = gaussian_beta_draw(XtX, Xty, XtZ, alpha, Sigma_inv, theta, sigma2, z)
    assert report == (2, 1, 2)
    P = Sigma_inv + XtX / sigma2
    P[1], P[2] = jittered(P[1], 1), jittered(P[2], 2)
    np.testing.assert_allclose(beta, mvn_draw(P, Sigma_inv @ theta + Xty / sigma2, z), rtol=1e-6, atol=1e-12)
    XtX[3] = -XtX[3]
    _, report = gaussian_beta_draw(XtX, Xty, XtZ, alpha, Sigma_inv, theta, sigma2, z)
    assert report[:2] == (NOT_PD, 3)


def test_theta_gibbs_draw_with_jitter():
    """theta's Gibbs precision Lambda0^-1 + m Sigma^-1 (GLM sweep), nearly singular through the
    prior: drawn from the jittered precision."""
    m, p = 5, 2
    beta, Sigma_inv = np.zeros((m, p)), np.eye(p)
    theta_prec = near_singular(1e9) - m * Sigma_inv
    no_columns = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((m, 0)))
    z = np.array([0.7, -1.2])
    theta, _, _, level = theta_alpha_gibbs(beta, np.zeros(0), Sigma_inv, np.arange(p), theta_prec, np.zeros(p),
                                           *no_columns, np.zeros((0, 0)), np.zeros(0), z)
    assert level == 2
    np.testing.assert_allclose(theta, mvn_draw(jittered(theta_prec + m * Sigma_inv, 2), np.zeros(p), z),
                               rtol=1e-6, atol=1e-12)


def test_the_report_warns_once_per_matrix_and_raises_naming_the_failure():
    names = (("the precision matrix of beta", True), ("the precision matrix of theta", True),
             ("the inverse-Wishart scale matrix of Sigma", False))
    _, messages = caught(lambda: check_factorisations(((2, 5, 3), (1, -1, 1), AS_GIVEN), names))
    assert messages == [
        "the precision matrix of beta in group 5 (and 2 more groups) was not positive definite; drew with a relative "
        "jitter of up to 1e-08 on its diagonal",
        "the precision matrix of theta was not positive definite; drew with a relative jitter of 1e-10 on its diagonal"]
    _, messages = caught(lambda: check_factorisations((AS_GIVEN, AS_GIVEN, AS_GIVEN), names))
    assert messages == []
    with pytest.raises(FloatingPointError, match=r"^the precision matrix of beta in group 7 is not positive definite, "
                                                 r"even with jitter$"):
        check_factorisations(((NOT_PD, 7, 2), AS_GIVEN, AS_GIVEN), names)
    with pytest.raises(FloatingPointError, match=r"^the inverse-Wishart scale matrix of Sigma is not positive definite$"):
        check_factorisations((AS_GIVEN, AS_GIVEN, (NOT_PD, -1, 0)), names)


# -- the kernels -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collapsed(hsb82):
    """The collapsed kernel on hsb82 after 20 warm-up sweeps, at a state that makes no Sigma
    steps (so the sweep's Sigma^-1 is the state's, to rounding)."""
    kernel = multilevel.Model("mAch ~ ses + (ses | school)", hsb82).kernel
    rng = np.random.default_rng(2)
    state = kernel.init(rng)
    for i in range(20):
        state = kernel.warmup_step(state, rng, i, 40)
    return kernel, state._replace(n_steps=0)


def _with_group_information(kernel, state, H):
    """The collapsed kernel with group 3's X_3'X_3 / sigma2 = H - Sigma^-1, so that its
    P_3 = Sigma^-1 + X_3'X_3 / sigma2 is H (to rounding)."""
    XtX = kernel.stats.XtX.copy()
    XtX[3] = state.sigma2 * (H - state.Sigma_inv)
    return dataclasses.replace(kernel, stats=kernel.stats._replace(XtX=XtX))


def test_collapsed_sweep_jitters_a_nearly_singular_beta_precision(collapsed):
    """Group 3's P_3 slightly indefinite (at a scale that leaves the other blocks' precisions
    positive definite): the sweep jitters it (1e-8) in both steps that factorise it, completes,
    and the kernel warns once."""
    kernel, state = collapsed
    c = 1e12 * np.abs(state.Sigma_inv).max()
    new, messages = caught(lambda: _with_group_information(kernel, state, near_singular(c)).step(
        state, np.random.default_rng(0)))
    assert messages == ["the precision matrix of beta (group effects) in group 3 was not positive definite; drew "
                        "with a relative jitter of 1e-08 on its diagonal"]
    assert all(np.all(np.isfinite(x)) for x in (new.beta, new.theta, new.Sigma, new.sigma2))


def test_collapsed_sweep_names_a_hopeless_beta_precision(collapsed):
    kernel, state = collapsed
    broken = _with_group_information(kernel, state, -np.eye(2))
    with pytest.raises(FloatingPointError, match=r"^the precision matrix of beta \(group effects\) in group 3 is not "
                                                 r"positive definite, even with jitter$"):
        broken.step(state, np.random.default_rng(0))


@pytest.fixture(scope="module")
def glm():
    """The GLM kernel on cbpp with a varying slope (two terms) after 20 warm-up sweeps."""
    frame = multilevel.load_dataset("cbpp")
    frame["period2"] = (frame["period"].astype(str) == "2").astype(float)
    kernel = multilevel.Model("p(incidence, size) ~ period + (1 + period2 | herd)", frame, family="binomial",
                              sampler="interweaving").kernel
    rng = np.random.default_rng(2)
    state = kernel.init(rng)
    for i in range(20):
        state = kernel.warmup_step(state, rng, i, 40)
    return kernel, state


def _with_proposal_precision(state, P):
    """The GLM state with group 3's information H_3 = P - Sigma^-1, so that the precision of
    its beta proposal, Sigma^-1 + H_3, is P (to rounding)."""
    info = state.info.copy()
    info[3, :2, :2] = P - state.Sigma_inv
    return state._replace(info=info)


def test_glm_sweep_jitters_a_nearly_singular_proposal_precision(glm):
    """The proposals of beta_j, alpha and theta stay exact with a jittered Sigma^-1 + H_j."""
    kernel, state = glm
    c = 1e12 * np.abs(state.Sigma_inv).max()
    new, messages = caught(lambda: kernel.step(_with_proposal_precision(state, near_singular(c)),
                                               np.random.default_rng(0)))
    assert messages == ["the precision matrix Sigma^-1 + H_j of beta's proposal in group 3 was not positive "
                        "definite; drew with a relative jitter of 1e-08 on its diagonal"]
    assert all(np.all(np.isfinite(x)) for x in (new.beta, new.theta, new.Sigma, new.ll))


def test_glm_sweep_names_a_hopeless_proposal_precision(glm):
    kernel, state = glm
    with pytest.raises(FloatingPointError, match=r"^the precision matrix Sigma\^-1 \+ H_j of beta's proposal in group "
                                                 r"3 is not positive definite, even with jitter$"):
        kernel.step(_with_proposal_precision(state, -np.eye(2)), np.random.default_rng(0))
