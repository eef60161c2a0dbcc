"""The sharded GLM sampler with several grouping factors (multilevel.samplers.sharded).

1. The pieces against NumPy references: the other factors' level moves split between shards
   and kernel (proposals, the shards' sums, acceptance) equal the one-call move; the scale move's
   change of ll for another factor's column; the folded per-level sums of a Poisson factor with
   the intercept alone, and the fixed move's terms from them; the other factors' prior fits by Newton rounds over
   the shards equal the in-memory ones (so the priors agree). (Shards and engines: with the
   one-factor cases in tests/test_sharded.py, 1 and 3 shards give the same draws up to the
   rounding of the sums; the Dask engine (local scheduler, and one and two workers of a
   LocalCluster) gives the in-memory draws exactly.)
2. Simulation-based calibration (tests/sbc.py), truth from proper priors: a crossed Poisson model
   (the other factor's closed-form level moves) and a crossed Bernoulli model with a correlated
   slope (the other factor's proposals evaluated by the shards); long runs under ``make validate``.
3. Agreement with the in-memory several-factor Metropolis kernel's posterior within MCSE.
4. The nested shift move (the sharded factor nested in another, ``(1 | a/b)``): its draw from
   the shards' per-outer-level sums equals the definition's from the effects themselves; 1 and 3
   shards give the same draws; a sweep takes one round more; SBC of a nested Poisson model; the
   posterior of the in-memory kernel (which has the move too) within MCSE.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel.families import CODES, check_family
from multilevel.priors import RowSource
from multilevel.samplers.crossed_metropolis import level_terms
from multilevel.samplers.shard import level_rotation, rotation_accept, rotation_proposals, scale_terms
from multilevel.blockstats import factor_layout
from multilevel.samplers.sharded import (ShardedMetropolis, ShardSource, factor_order, local_shards, nested_shift,
                                         sharded_factor)

import sbc
from test_sharded import assert_means_agree, level_case, reference_level_move, sharded_sbc


# -- 1. the pieces against NumPy references ---------------------------------------------------------

@pytest.mark.parametrize("code,q", [(0, 2), (1, 1)], ids=["poisson slope", "logit intercept"])
def test_split_level_move_equals_the_one_call_move_and_the_reference(code, q):
    """The kernel's split of another factor's move (proposals here, the sums at them from two
    shards of the rows, acceptance here) is the one-call move and the NumPy reference."""
    y, n, eta, Z, index, J, Sinv, z, u = level_case(code, q, rows=3, J=30)
    b = 0.2 * np.ones((J, q))
    ref, D_ref = reference_level_move(code, y, n, eta, Z, index, J, b, Sinv, 0.9, True, z, u)
    ll0, g0, H0 = level_terms(code, y, n, eta, Z, 0, q, index, J, np.zeros((J, q)))
    whole, D_whole = b.copy(), np.zeros((J, q))
    level_rotation(code, y, n, eta, Z, index, J, whole, Sinv, 0.9, True, z, u, False, ll0, g0, H0, D_whole)
    split, D = b.copy(), np.zeros((J, q))
    lp0, M0, Ls, valid = rotation_proposals(split, g0, H0, Sinv, 0.9, z, D)
    halves = [slice(0, 40), slice(40, None)]  # the rows of two shards (levels cut across them)
    parts = [level_terms(code, y[h], n[h], eta[h].copy(), Z[h], 0, q, index[h], J, D) for h in halves]
    ll1, g1, H1 = (parts[0][i] + parts[1][i] for i in range(3))
    rotation_accept(split, D, ll0, ll1, g1, H1, lp0, M0, Ls, valid, Sinv, 0.9, True, u)
    np.testing.assert_allclose(split, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(split, whole, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(D, D_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("code", [0, 1])
def test_scale_terms_of_another_factors_column_match_numpy(code):
    rng = np.random.default_rng(3)
    N, J = 50, 7
    index = rng.integers(0, J, N).astype(np.int32)
    Z = np.column_stack([np.ones(N), rng.standard_normal(N), np.ones(N), rng.standard_normal(N)])
    F = np.column_stack([np.ones(N), rng.standard_normal(N)])
    eta, da = 0.3 * rng.standard_normal(N), np.array([0.1, -0.2])
    n = np.ones(N) if code == 0 else rng.integers(1, 4, N).astype(float)
    y = rng.poisson(1.0, N).astype(float) if code == 0 else np.minimum(rng.poisson(1.0, N), n)
    b, f = 0.5 * rng.standard_normal((J, 2)), 0.3

    def ll(e):
        return np.sum(y * e - np.exp(e)) if code == 0 else np.sum(y * e - n * np.logaddexp(0, e))

    de = f * Z[:, 3] * b[index, 1]  # the second column of the factor whose covariates start at column 2
    want = (ll(eta + de) - ll(eta), ll(eta + F @ da + de) - ll(eta + F @ da))
    got = scale_terms(code, y, n, eta, F, da, Z, 2, 1, index, b, f)
    np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("k", [0, 1])
def test_poisson_scale_pass_matches_the_row_passes(k):
    """Poisson's scale move of a factor with the intercept alone from level sums (one pass, eta
    first taking what it is owed) against the row passes it replaces: the fixed terms at eta + F da
    and :func:`scale_terms` at eta and at eta + F da."""
    from multilevel.samplers.crossed_metropolis import apply_pending, fixed_terms
    from multilevel.samplers.shard import ones_scale_terms, poisson_scale_pass

    rng = np.random.default_rng(8)
    N, Js = 80, np.array([6, 9])
    index = np.ascontiguousarray(np.vstack([rng.integers(0, J, N) for J in Js]), dtype=np.int64)
    F = np.column_stack([np.ones(N), rng.standard_normal(N)])
    Z, q = np.ones((N, 2)), np.array([1, 1])
    z_off, b_off = np.array([0, 1]), np.array([0, Js[0]])
    y = rng.poisson(1.5, N).astype(float)
    eta, da = 0.3 * rng.standard_normal(N), np.array([0.1, -0.2])
    owed = 0.2 * rng.standard_normal(Js.sum())
    b, f = 0.5 * rng.standard_normal((Js[k], 1)), 0.3

    def sync():
        return (F, Z, np.zeros(2), False, z_off, q, index, b_off, owed.copy(), np.array([True, True]),
                np.array([True, True]))

    ref, owing = eta.copy(), sync()
    apply_pending(ref, owing[0], owing[2], owing[3], owing[1], *owing[4:])
    want = fixed_terms(0, y, np.ones(N), ref, F, da)
    want_d = scale_terms(0, y, np.ones(N), ref, F, da, Z, int(z_off[k]), 0, index[k], b, f)
    got_eta = eta.copy()
    ll, g, H, Sy, S0, S1 = poisson_scale_pass(y, got_eta, F, da, index[k], int(Js[k]), sync())
    np.testing.assert_allclose(got_eta, ref, rtol=1e-14)
    np.testing.assert_allclose((ll, *g, *H.ravel()), (want[0], *want[1], *want[2].ravel()), rtol=1e-12)
    np.testing.assert_allclose(ones_scale_terms(Sy, S0, S1, b[:, 0], f), want_d, rtol=1e-10)


def test_level_fixed_sums_match_numpy_and_give_the_fixed_terms():
    """The folded sums of another Poisson factor's levels (eta first taking what it is owed) against
    bincounts, and the fixed move's terms after its levels' changes D from them against a pass."""
    from multilevel.samplers.crossed_metropolis import fixed_terms, fixed_terms_from_levels
    from multilevel.samplers.shard import level_fixed_sums

    rng = np.random.default_rng(5)
    N, J, K = 60, 7, 2
    F = np.column_stack([np.ones(N), rng.standard_normal(N)])
    Z = np.ones((N, K))
    index = np.ascontiguousarray(np.vstack([rng.integers(0, 9, N), rng.integers(0, J, N)]), dtype=np.int32)
    y = rng.poisson(1.5, N).astype(float)
    eta = 0.3 * rng.standard_normal(N)
    owed = 0.2 * rng.standard_normal(9 + J)  # changes owed to both factors' levels
    sync = (F, Z, np.zeros(2), False, np.array([0, 1]), np.array([1, 1]), index, np.array([0, 9]), owed,
            np.ones(2, dtype=np.bool_), np.ones(2, dtype=np.bool_))
    got = level_fixed_sums(y, eta.copy(), F, index[1], J, sync)
    e = eta + owed[index[0]] + owed[9 + index[1]]
    mu = np.exp(e)

    def per_level(w):
        return np.bincount(index[1], w, J)

    want = (per_level(y * e), per_level(y), per_level(mu),
            np.stack([per_level(F[:, c] * y) for c in range(2)], 1),
            np.stack([per_level(F[:, c] * mu) for c in range(2)], 1),
            np.stack([np.stack([per_level(F[:, c] * F[:, d] * mu) if d <= c else np.zeros(J) for d in range(2)], 1)
                      for c in range(2)], 1))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    D = 0.3 * rng.standard_normal(J)
    moved = e + D[index[1]]
    for g, w in zip(fixed_terms_from_levels(*got, D), fixed_terms(0, y, np.ones(N), moved, F, np.zeros(2))):
        np.testing.assert_allclose(g, w, rtol=1e-10)


def crossed_frame(seed: int, Ja: int = 30, Jb: int = 8, rows: int = 5) -> pd.DataFrame:
    """Ja levels of a (rows each) crossed with Jb of b at random; x per row, w per level of a."""
    rng = np.random.default_rng(seed)
    a = np.repeat(np.arange(Ja), rows)
    b = rng.integers(0, Jb, a.size)
    x, w = rng.standard_normal(a.size), rng.standard_normal(Ja)[a]
    expo = rng.uniform(0.5, 2.0, a.size)
    ea, eb, slope = 0.5 * rng.standard_normal(Ja), 0.4 * rng.standard_normal(Jb), 0.3 * rng.standard_normal(Ja)
    eta = 0.2 + 0.4 * x + 0.2 * w + ea[a] + eb[b] + slope[a] * x
    trials = rng.integers(1, 6, a.size)
    return pd.DataFrame({"a": [f"a{k:03d}" for k in a], "b": [f"b{k}" for k in b], "x": x, "w": w, "expo": expo,
                         "y": rng.poisson(np.exp(eta + np.log(expo))), "s": rng.binomial(trials, 1 / (1 + np.exp(-eta))),
                         "n": trials, "yes": rng.binomial(1, 1 / (1 + np.exp(-eta)))}).sample(frac=1, random_state=seed)


def test_priors_from_shards_equal_the_in_memory_ones():
    """The defaults' fits of the factor that is not sharded come from Newton rounds over the shards."""
    model = multilevel.Model("p(s, n) ~ x + (x | a) + (1 | b)", crossed_frame(1), family="binomial")
    d, family = model.design, check_family("binomial")
    assert sharded_factor(d) == 0 and factor_order(d) == [0, 1]
    source, rows = ShardSource(local_shards(d, CODES["binomial"], 3), factor_order(d)), RowSource(d)
    a_ml = rows.pooled_glm(family)[0]
    np.testing.assert_allclose(source.pooled_glm(family)[0], a_ml, rtol=1e-8)
    for k in range(2):
        np.testing.assert_allclose(source.level_fits(family, k, a_ml), rows.level_fits(family, k, a_ml), rtol=1e-6,
                                   atol=1e-8)
        np.testing.assert_allclose(source.z_variance(k), rows.z_variance(k), rtol=1e-10)
    sharded = multilevel.Model("p(s, n) ~ x + (x | a) + (1 | b)", crossed_frame(1), family="binomial",
                               sampler="sharded")
    for name in ("S0", "mu0", "Lambda0"):
        want, got = getattr(model.priors, name), getattr(sharded.priors, name)
        for key in (want if isinstance(want, dict) else [None]):
            np.testing.assert_allclose(got if key is None else got[key], want if key is None else want[key],
                                       rtol=1e-6, err_msg=name)


# -- 2. shards and engines ----------------------------------------------------------------------------

def rounds_of_a_sweep(kernel) -> list[str]:
    """The shard calls of one sweep of ``kernel`` (its local shards), after init's "start"."""
    calls = []
    call = kernel.shards.call
    kernel.shards.call = lambda name, *args: (calls.append(name), call(name, *args))[1]
    kernel.step(kernel.init(np.random.default_rng(1)), np.random.default_rng(2))
    return calls[1:]


def test_three_factors_one_shard_and_three_and_the_rounds():
    """Three factors (sharded on a; b's proposals evaluated by the shards; c last, Poisson's
    intercept alone: folded): 1 and 3 shards give the same draws; a sweep is 4 rounds."""
    from multilevel.run import run_chains
    from test_sharded import sharded_kernel

    df = crossed_frame(4).assign(c=lambda d: [f"c{k % 5}" for k in range(len(d))])
    model = multilevel.Model("y ~ x + (1 | a) + (x | b) + (1 | c)", df, family="poisson", sampler="sharded")
    runs = []
    for n_shards in (1, 3):
        kernel = sharded_kernel(model, n_shards)
        assert kernel.order == [0, 1, 2] and kernel.fold
        res = run_chains(kernel, chains=1, draws=30, warmup=20, seed=3, progress=False)
        kernel.collect(res)
        runs.append(res.draws)
    for name in runs[0]:
        np.testing.assert_allclose(runs[0][name], runs[1][name], rtol=1e-8, atol=1e-10, err_msg=name)
    assert runs[0]["beta_c"].shape == (1, 30, 5, 1) and runs[0]["beta_b"].shape == (1, 30, 8, 2)

    assert rounds_of_a_sweep(kernel) == ["sweep", "terms", "terms", "evaluate"]


# -- 2. simulation-based calibration ------------------------------------------------------------------

SBC_CASES = {
    # 10 x 8 crossed cells, one row each (the sharded factor is s): the other factor's closed form
    "poisson": ("poisson", "y ~ x + (1 | s) + (1 | i)", (10, 8),
                dict(mu0=[0.5], Lambda0=[[0.3]], alpha_mean=[0.3], alpha_cov=[[0.2]], eta0={"s": 6.0, "i": 6.0},
                     S0={"s": [[1.6]], "i": [[1.2]]})),
    # a correlated slope of the sharded factor crossed with i (proposals evaluated by the shards)
    "bernoulli": ("bernoulli", "y ~ x + (x | s) + (1 | i)", (12, 10),
                  dict(mu0=[0.2, 0.5], Lambda0=[[0.5, 0.1], [0.1, 0.3]], eta0={"s": 7.0, "i": 6.0},
                       S0={"s": [[2.0, 0.4], [0.4, 1.2]], "i": [[2.0]]})),
}


def sbc_model(case: str, i_first: bool = False) -> multilevel.Model:
    family, formula, (Js, Ji), priors = SBC_CASES[case]
    rng = np.random.default_rng(31)
    s, i = np.meshgrid(np.arange(Js), np.arange(Ji), indexing="ij")
    df = pd.DataFrame({"s": [f"s{k:02d}" for k in s.ravel()], "i": [f"i{k}" for k in i.ravel()],
                       "x": rng.standard_normal(s.size), "y": rng.integers(0, 2, s.size)})
    return multilevel.Model(formula, df, family=family, priors=priors, sampler="sharded")


def run_crossed_sbc(case: str, n_shards: int, n_reps: int, L: int, thin: int, warmup: int, bins: int, seed: int
                    ) -> sbc.SBCResult:
    """:func:`test_sharded.sharded_sbc` of case ``case``."""
    return sharded_sbc(sbc_model(case), n_shards, n_reps, L, thin, warmup, bins, seed)


#: the small runs on one shard (the draws are those of any number, up to rounding: tests/test_sharded.py), the
#: full ones on two; measured, the Bernoulli case's first 60 replications put theta[Intercept]'s ranks high for
#: the in-memory kernel too (p = 0.02-0.03; the sharded kernel's 2e-4 on 60, 0.009 on 100)
SBC_SMALL = dict(n_shards=1, n_reps=80, L=19, thin=2, warmup=60, bins=5, seed=1501)


@pytest.mark.parametrize("case", list(SBC_CASES))
def test_sharded_crossed_sbc_small(case):
    result = run_crossed_sbc(case, **SBC_SMALL)
    assert result.rejected == [], result.report()


@pytest.mark.validate
@pytest.mark.parametrize("case", list(SBC_CASES))
def test_sharded_crossed_sbc_full(case):
    result = run_crossed_sbc(case, n_shards=2, n_reps=600, L=49, thin=6, warmup=200, bins=10, seed=1502)
    print(result.report())
    assert result.rejected == [], result.report()


# -- 3. agreement with the in-memory several-factor kernel ---------------------------------------------

def test_sharded_agrees_with_the_crossed_metropolis_kernel():
    df = crossed_frame(5, Ja=20, Jb=6, rows=6)
    formula = "y ~ x + w + offset(log(expo)) + (x | a) + (1 | b)"
    fits = [multilevel.fit(formula, df, family="poisson", sampler=s, chains=4, warmup=300, draws=600, seed=9,
                           progress=False, cores=1) for s in ("sharded", "metropolis")]
    assert_means_agree(fits, ("theta", "alpha", "Sigma_a", "Sigma_b", "beta_b"))
    assert fits[0].summary()["r_hat"].max() < 1.02


# -- 4. the nested shift move ------------------------------------------------------------------------

def nested_frame(seed: int, Ja: int = 12, per: int = 3, rows: int = 4) -> pd.DataFrame:
    """``per`` levels of b within each of Ja levels of a (b's labels repeat across a: (1 | a/b)
    makes a:b), ``rows`` rows each; a Poisson y."""
    rng = np.random.default_rng(seed)
    a = np.repeat(np.arange(Ja), per * rows)
    b = np.tile(np.repeat(np.arange(per), rows), Ja)
    x = rng.standard_normal(a.size)
    eta = 0.3 + 0.4 * x + 0.6 * rng.standard_normal(Ja)[a] + 0.4 * rng.standard_normal(Ja * per)[a * per + b]
    return pd.DataFrame({"a": [f"a{k:02d}" for k in a], "b": [f"b{k}" for k in b], "x": x,
                         "y": rng.poisson(np.exp(eta))}).sample(frac=1, random_state=seed)


def test_nested_shift_from_sums_per_outer_level_is_the_definitions():
    """d_l ~ N(lin_l / prec_l, 1 / prec_l), prec_l = (Sigma_out^-1)_dd + n_l (Sigma_in^-1)_cc,
    lin_l = sum_{j in l} (Sigma_in^-1 b_in,j)_c - (Sigma_out^-1 b_out,l)_d, from the effects."""
    rng = np.random.default_rng(4)
    J_out, q_in, q_out, c, d = 5, 2, 2, 1, 0
    parent = rng.integers(0, J_out, 17)
    parent[:J_out] = np.arange(J_out)
    b_in, b_out = rng.standard_normal((17, q_in)), rng.standard_normal((J_out, q_out))
    A, B = rng.standard_normal((q_in, q_in)), rng.standard_normal((q_out, q_out))
    Sinv_in, Sinv_out = A @ A.T + np.eye(q_in), B @ B.T + np.eye(q_out)
    Sbp = np.stack([np.bincount(parent, weights=b_in[:, r], minlength=J_out) for r in range(q_in)], axis=1)
    counts = np.bincount(parent, minlength=J_out).astype(float)
    got_out = b_out.copy()
    shift = nested_shift(np.random.default_rng(9), Sbp, counts, got_out, c, d, Sinv_in, Sinv_out)
    z = np.random.default_rng(9).standard_normal(J_out)
    for l in range(J_out):
        inner = b_in[parent == l]
        prec = Sinv_out[d, d] + len(inner) * Sinv_in[c, c]
        lin = sum(Sinv_in[c] @ bj for bj in inner) - Sinv_out[d] @ b_out[l]
        assert shift[l] == pytest.approx(lin / prec + z[l] / np.sqrt(prec), rel=1e-12)
    np.testing.assert_allclose(got_out[:, d], b_out[:, d] + shift, rtol=1e-14)


def test_nested_pair_one_shard_and_three_and_the_rounds():
    from test_sharded import assert_shard_count_free, sharded_kernel

    model = multilevel.Model("y ~ x + (1 | a/b)", nested_frame(2), family="poisson", sampler="sharded")
    kernel = sharded_kernel(model, 3)
    assert [(p.c, p.d) for p in kernel.nested] == [(0, 0)] and kernel.nested[0].counts.tolist() == [3.0] * 12
    assert_shard_count_free(lambda n_shards: sharded_kernel(model, n_shards), {"beta_a": (12, 1), "beta_a:b": (36, 1)})

    # a is folded; the nested variance moves take three rounds, the first carrying the nested shift move
    assert kernel.joint and rounds_of_a_sweep(kernel) == ["sweep", "joint_terms", "joint_propose", "joint_propose",
                                                         "evaluate"]
    d = model.design
    shards = local_shards(d, CODES["poisson"], 3)
    a_start = ShardSource(shards, factor_order(d)).pooled_glm(model.family)[0]
    without = ShardedMetropolis(shards, d, factor_layout(d, small_columns=0), model.priors, a_start, d.n_obs,
                                nested_scale_moves=False)
    assert not without.joint and rounds_of_a_sweep(without) == ["sweep", "nest", "evaluate"]


def test_level_sums_of_the_touched_levels_add_up_to_the_dense_sums_bit_for_bit():
    """Each shard answers for the levels its rows touch; summed in shard order they are the sums
    of every shard's dense arrays (an untouched level adds 0), to the last bit."""
    from multilevel.samplers.shard import level_part, touched_levels
    from multilevel.samplers.sharded import _summed, level_summed

    rng = np.random.default_rng(3)
    J, dense, parts = 50, [], []
    for rows in (rng.integers(0, 12, 40), rng.integers(10, 30, 40), np.arange(J), rng.integers(25, 50, 7)):
        touched = touched_levels(rows, J)
        sums = (np.zeros(J), np.zeros((J, 2)), np.zeros((J, 2, 2)))
        for x in sums:
            np.add.at(x, rows, rng.standard_normal((rows.size, *x.shape[1:])))
        dense.append(sums)
        parts.append(level_part(sums, touched))
    assert isinstance(parts[2].levels, slice) and parts[0].sums[0].shape == (np.unique(parts[0].levels).size,)
    for got, want in zip(level_summed(parts, J), _summed(dense)):
        assert np.array_equal(got, want)


def test_nested_variance_move_reads_the_current_values_and_returns_the_terms_after_it():
    """The nested variance moves (step 8) from the shards' kept sums: for each move each inner
    level's Smu_j (the kept sum times e^{change of u_j}) is sum exp(eta_i) over its rows at the
    current a and effects (after the nested shift, the outer levels' moves and the first move
    if accepted), and the fixed move's terms the shards return for an accepted move are ll,
    F'(y - mu), F'WF at eta + d_j, computed here from the rows; 1 and 3 shards propose the same b*."""
    from test_sharded import sharded_kernel

    model = multilevel.Model("y ~ x + (1 | a/b)", nested_frame(3), family="poisson", sampler="sharded")
    found = {}
    for n_shards in (1, 3):
        kernel = sharded_kernel(model, n_shards)
        state = kernel.init(np.random.default_rng(1))
        for i in range(3):
            state = kernel.warmup_step(state, np.random.default_rng(i), i, 10)
        call, seen = kernel.shards.call, []

        def spy(name, *args):
            out = call(name, *args)
            if name == "joint_propose":  # the shards' effects: the state the move is made from (the last settled)
                for sh, (_, ll, g, H, *_) in zip(kernel.shards.shards, out):
                    r, slot = sh.rows, sh.chains[bytes(state.key)]
                    eta = r.offset + r.F @ state.t + slot.b[r.index[0], 0] + slot.other[r.index[1]]
                    smu = np.bincount(r.index[0], weights=np.exp(eta), minlength=r.J)
                    np.testing.assert_allclose(sh.joint_sums[2] * np.exp(sh.joint_change), smu, rtol=1e-10)
                    d = sh.joint_new - slot.b[:, 0] + (args[1] - slot.other)[sh.nested[0][3]]
                    eta = r.offset + r.F @ state.t + slot.b[r.index[0], 0] + slot.other[r.index[1]] + d[r.index[0]]
                    mu = np.exp(eta)
                    assert ll == pytest.approx(np.sum(r.y * eta - mu), rel=1e-10)
                    np.testing.assert_allclose(g, r.F.T @ (r.y - mu), rtol=1e-10, atol=1e-9)
                    np.testing.assert_allclose(H, (r.F * mu[:, None]).T @ r.F, rtol=1e-10)
                seen.append((args[1], np.concatenate([sh.joint_new for sh in kernel.shards.shards])))
            return out

        kernel.shards.call = spy
        moves, joint_move = [], kernel._joint_move
        kernel._joint_move = lambda *args: (lambda out: (moves.append(out[0].copy()), out)[1])(joint_move(*args))
        for i in range(6):
            state = kernel.step(state, np.random.default_rng(7 + i))
        assert len(seen) == 12
        assert np.array(moves).any(axis=0).all() and not np.array(moves).all(axis=0).any()  # each accepted and not
        found[n_shards] = seen
    for one, three in zip(found[1], found[3]):
        for x, y in zip(one, three):
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


NESTED_PRIORS = dict(mu0=[0.3], Lambda0=[[0.3]], alpha_mean=[0.4], alpha_cov=[[0.2]], eta0={"a": 6.0, "a:b": 6.0},
                     S0={"a": [[1.5]], "a:b": [[1.0]]})


def nested_sbc(n_reps: int, seed: int, **kw) -> sbc.SBCResult:
    model = multilevel.Model("y ~ x + (1 | a/b)", nested_frame(7, Ja=8, per=3, rows=2), family="poisson",
                             priors=NESTED_PRIORS, sampler="sharded")
    return sharded_sbc(model, n_reps=n_reps, seed=seed, **kw)


def test_nested_sbc_small():
    result = nested_sbc(80, 1503, n_shards=2, L=19, thin=2, warmup=60, bins=5)
    assert result.rejected == [], result.report()


@pytest.mark.validate
def test_sharded_nested_sbc_full():
    result = nested_sbc(600, 1504, n_shards=2, L=49, thin=6, warmup=200, bins=10)
    print(result.report())
    assert result.rejected == [], result.report()


def test_nested_sharded_agrees_with_the_crossed_metropolis_kernel():
    fits = [multilevel.fit("y ~ x + (1 | a/b)", nested_frame(5), family="poisson", sampler=s, chains=4, warmup=300,
                           draws=600, seed=9, progress=False, cores=1) for s in ("sharded", "metropolis")]
    assert_means_agree(fits, ("theta", "alpha", "Sigma_a", "Sigma_a:b", "beta_a"))
