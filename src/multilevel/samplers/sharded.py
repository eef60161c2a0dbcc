r"""Metropolis-within-Gibbs for a GLM whose rows are spread over shards of whole levels of one
grouping factor (the Dask engine's GLM sampler; also an in-memory option, ``sampler="sharded"``).

Model: that of :mod:`multilevel.samplers.crossed_metropolis`, one grouping factor or several,
eta_i = offset_i + F_i a + sum_k Z_ki b_k,j_k(i), b_kj ~ MVN(0, Sigma_k), Sigma_k's blocks
inverse-Wishart, a Gaussian; Poisson, binomial, Bernoulli, or the negative binomial (below).

**What the rows are sharded on.** The rows are cut into shards of whole levels of one factor,
the *sharded factor* s (:func:`sharded_factor`): the one with the most levels (the first in the
formula on ties). Its level moves need all of a level's rows, and its per-level sums, O(J_s q_s^2)
numbers, would be the largest message of all; kept in the shards they are never sent: the shards
keep b_s and return sums over its levels. Every other factor k has at most J_s levels; its
levels' rows are spread over the shards, so its level moves are made here from per-level sums
that every shard adds up over its rows, O(J_k q_k^2) numbers per shard per round: with several
factors those, not O(p^2), are a sweep's messages. Each shard's rows carry every factor's level
and covariates (:class:`multilevel.samplers.shard.ShardRows`); the shards keep a copy of the
other factors' b (sent with the messages after this kernel changes it), so their eta is the
full linear predictor. This kernel keeps a, the Sigma_k, the tuning and the other factors' b.

A sweep, with the moves' numbers those of the crossed kernel's module docstring:

1. the sharded factor's level moves (step 2, on the shards, their random numbers keyed by
   (chain, sweep, level)); the shards return sum_j b_j, sum_j b_j b_j', the shift moves' sums
   and either the fixed move's terms at a (ll, F'(y - mu), F'WF; one factor) or the first other
   factor's per-level sums at the current values (ll_j, Z_j'(y - mu), Z_j'WZ_j);
2. **Sigma_s | b_s**, conjugate per block from sum_j b_j b_j' (IW(eta_b + J, S0_b + sum_j b_jb b_jb'));
3. each other factor k in formula order (step 2 of the crossed kernel, all its levels at once):
   its per-level sums at the current values (from the round before: step 1's for the first,
   for the next ones a round that also brings the shards' copy of the previous factor's b up to
   date), the rotation proposals drawn here with random numbers keyed by (chain, sweep, factor,
   level) (:func:`multilevel.samplers.keyed.factor_stream`), a round that returns the per-level
   sums at the proposals (ll, and g, H for the Hastings term of the reverse proposal), each
   level accepted here; Poisson with the intercept alone takes the closed form from Sy_j and
   Smu_j (g0 + H0 and H0): no round at the proposals. Then **Sigma_k | b_k** here;
4. with several factors, a round that gives the shards the last factor's changes and returns
   the fixed move's terms at a; none when the last factor is Poisson's intercept alone (the
   fold below);
5. the **fixed move** (step 1: a* from the rotation about a's Newton point) and one **scale
   move** (step 4, the one-column blocks of every factor in turn, sweep by sweep: b_kc -> e^s
   b_kc, Sigma_k,cc -> e^{2s} Sigma_k,cc), both proposed here and evaluated by the shards in one
   message (ll at a*, and the scale move's change of ll at a and at a*); the fixed move is
   accepted first, then the scale move from wherever a is;
6. one **shift move** of the sharded factor (step 5, exact Gibbs, no row read: a_D + d,
   b_jc - w_j'd for the fixed columns D that are level multiples of covariate c), the shift
   moves in turn sweep by sweep, from the shards' sums sum_j w_j b_j' and sum_j w_j w_j'; and
   every other factor's shift moves, here, for its columns equal to their term's fixed column
   in every row (w_j = 1: the intercept, a slope with its fixed term; :func:`other_shifts`). A
   level-level predictor of another factor is left out: finding it and its weights w_j would
   need each level's rows from every shard.
7. the **nested shift move** (the crossed kernel's step 6, exact Gibbs) when the sharded factor
   is nested in another factor k (each of its levels' rows in one level of k, in every shard:
   ``(1 | a/b)``'s a:b in a) and a column c of it and d of k hold the same covariate in every
   row (:func:`nested_pairs`, one pair a sweep in turn): b_k[l, d] + d_l, b_s[j, c] - d_parent(j),
   which leaves eta as it is, d_l ~ N(lin_l / prec_l, 1 / prec_l) with prec_l =
   (Sigma_k^-1)_dd + n_l (Sigma_s^-1)_cc and lin_l = (Sigma_s^-1 sum_{j in l} b_s,j)_c -
   (Sigma_k^-1 b_k,l)_d (:func:`nested_shift`), made right after step 2 from the per-outer-level
   sums of b_s that step 1's answer carries (J_k q_s numbers), the shards told d in a round of
   its own (:meth:`multilevel.samplers.shard.LevelShard.nest`; they owe both changes to eta,
   where they cancel); the shift moves' sums sum_j w_j b_j' then lose sum_{j in l} w_j d_l in
   column c. Measured on 100 groups of a with 5 of b each, 20 rows a level (Poisson,
   ``y ~ x + (1 | a/b)``, 2 chains x 1000): the bulk ESS a draw of Sigma_a:b went from 0.17 to
   0.37 (Sigma_a's 0.53 to 0.65); the in-memory kernel, with its nested variance moves (step 8
   here), 0.90.

8. the **nested variance moves** (the crossed kernel's step 7) when there are two factors, both
   Poisson's intercept alone, the sharded one nested in the other (``(1 | a/b)``'s a:b in a),
   made after step 3 (so before the fixed move): a random walk on log tau_in, then one on
   log tau_out, each moving the effects of both factors with it along the Laplace
   approximation's standardised residuals. The shards hold the inner levels, so the move is
   split where its sums are: step 1's pass keeps, per inner level of each shard, the fold's
   sums (:func:`multilevel.samplers.shard.level_fixed_sums` by inner level, summed per outer
   level for step 3); a first round (carrying step 7's shift) takes the outer levels' moves,
   updates each inner level's Smu_j by e^{its change of u_j} (no pass over the rows), computes
   H_j, h_j and returns their parts of S_l and S_l m_l per outer level at tau_in and at its
   proposal (:func:`~multilevel.samplers.crossed_metropolis.nested_laplace_sums`); here b*_out
   (:func:`~multilevel.samplers.crossed_metropolis.nested_outer_map`), then per move a round in
   which the shards map their inner levels
   (:func:`~multilevel.samplers.crossed_metropolis.nested_inner_map`) and return their part of
   the log ratio and, for the move accepted, the fixed move's terms at a (the kept sums with the
   levels' changes, :func:`~multilevel.samplers.crossed_metropolis.fixed_terms_from_levels`) and
   the shift moves' sums; the next round carries the decision. The steps h adapt towards 0.44
   as the crossed kernel's (the last two entries of the state's ``log_step``). The crossed kernel
   makes the pair :data:`~multilevel.samplers.crossed_metropolis.NESTED_REPEATS` times a sweep
   with shift moves between; here once, since each repeat would take two rounds more.
   Measured (``python benchmarks/run.py --only dask_nested_poisson``: ``nested_scale_moves=False``
   against the default, 4 shards, 2 chains x (1000 + 1000), grouseticks-shaped data, four
   seeds): bulk ESS a draw of the brood variance 0.10 -> 0.23, of the location variance
   0.14 -> 0.25, theta's and alpha's as before, for 1.5 times the CPU a sweep on these 403 rows.

**The fold.** When the last other factor k is Poisson's intercept alone, its level j's move
changes eta by D_j on its rows only, so mu_i -> e^{D_j} mu_i there, and the fixed move's terms
after the move follow from per-level sums at the current values
(:func:`multilevel.samplers.crossed_metropolis.fixed_terms_from_levels`: sum_j Syeta_j + D_j Sy_j
- e^{D_j} Smu_j, sum_j SFy_j - e^{D_j} SFmu_j, sum_j e^{D_j} SFFmu_j), as the in-memory kernel's
``paired_pass`` does: the shards return those sums (:func:`multilevel.samplers.shard.level_fixed_sums`,
J_k (3 + 2p + p^2) numbers, Sy_j and Smu_j among them) instead of the level sums, and step 4's
round and its pass over the rows go; the last factor's changes reach the shards with step 5's
message. For other factors the same fold would need F'(y - mu) and F'WF per level at the
current values and at the proposals (J_k (p + p^2) numbers each way per shard, more than a
round's latency for J_k in the thousands): not done.

Rounds of one message to every shard per sweep: 2 with one factor; with factors s, k_1..k_m,
2 + m plus one for each k_i that is not Poisson's intercept alone, less one when k_m is (the
fold), plus one when there is a nested pair (step 7), two more when it takes step 8: 2 for two
factors when the other is Poisson's intercept alone ((1 | a) + (1 | b); 5 for (1 | a/b), 3
without step 8), 4 otherwise ((x | a) + (1 | b),
binomial); the negative binomial adds the phi move's round and has no closed form: 3 + 2 m (3
with one factor, 5 with two). What goes out: a round's few numbers (a, Sigma_s^-1,
the angle, the changes owed to b_s: O(p + q_s^2)) and the other factors' b, sum_k J_k q_k
numbers, where they changed (the proposals' round sends the factor's J_k q_k proposals
instead); what comes back: O(p^2 + q_s^2) numbers, or the per-level sums of one other factor,
J_k (1 + q_k + q_k^2) (J_k (3 + 2p + p^2) folded), for the levels of factor k the shard's rows
touch (:class:`~multilevel.samplers.shard.LevelPart`): all of them when k is crossed with the
sharded factor, J_k / (number of shards) or so when the sharded factor is nested in k (measured
once, ``(1 | a/b)`` Poisson with 2e4 levels of a and 1e5 of a:b, 2e6 rows, 2 workers of 8
shards: the first round's answers took 105 ms from the workers to the client as all J_k levels,
17 ms as the levels touched; a sweep 458 -> 341 ms; ``dask_nested_poisson`` times that fit).

**The negative binomial (NB2).** y_i ~ NB(mu_i = e^eta_i, phi), Var = mu + mu^2 / phi,
1 / sqrt(phi) ~ Exponential(phi_rate): the model and priors of
:mod:`multilevel.samplers.negbinomial` (:func:`multilevel.priors.default_crossed_glm_priors`),
so both samplers target the same posterior. Given phi, the moves above are unchanged but for the
row terms: the part of log NB(y_i | mu_i, phi) that depends on eta_i, y_i eta_i - (y_i + phi)
log(phi + mu_i), its score phi (y_i - mu_i) / (phi + mu_i) and Fisher weight phi mu_i / (phi + mu_i)
(family code :data:`multilevel.families.NEGBINOMIAL_CODE` of
:func:`~multilevel.samplers.crossed_metropolis._row_terms`, whose per-row n carries phi: the
shards set it from the phi of each sweep's first message); Poisson's closed forms (the intercept
alone, the fold) are not used. Then, after step 5, :data:`PHI_STEPS` **phi moves**, each
log phi* = log phi + h z_t, z_t ~ N(0, 1) from the chain's generator, accepted with probability
min(1, r),

    log r = l(phi*) - l(phi) + log p(log phi*) - log p(log phi),
    l(phi) = sum_i [lgamma(y_i + phi) - lgamma(phi) + phi log phi + y_i eta_i - (y_i + phi) log(phi + mu_i)],

log p(log phi) = -phi_rate phi^-1/2 - log phi / 2 the prior's density of log phi
(:func:`multilevel.priors.log_prior_phi`; its - log phi / 2 holds the log-scale Jacobian, the
random walk being symmetric in log phi): :func:`dispersion_log_ratio`. The steps' increments
are drawn first, so the points the steps can reach are known before any is taken: log phi plus
each subset of the increments, 2^PHI_STEPS of them (:func:`reachable_points`). The shards return
l at all of them, summed over their rows in one pass
(:meth:`multilevel.samplers.shard.LevelShard.dispersion_terms`, the in-memory sampler's
:func:`~multilevel.samplers.negbinomial.nb_phi_loglik`), and the steps are then taken here one
after the other, each from wherever the last left phi: the same chain as PHI_STEPS rounds of
one step, in one round. This at eta of the
state the move is made from: the one after step 5's accepted fixed and scale moves, which the
message carries (a's change, the scale move's column and factor e^s - 1); step 6 leaves every eta
as it is, so the move may come before it. It is a round of its own: the state it is made from is
known only once step 5's answer is accepted, and the next sweep's first round needs phi to move
the levels. h adapts in warm-up towards 0.44 as the in-memory sampler's phi steps (three steps
a sweep here, from one round whose pass evaluates l at 8 points, where three rounds of one step
would evaluate it at 6; four steps there, a pass each). ``loglik`` is the full NB log-likelihood at the accepted phi (log y!
included); ``phi`` and ``accept_phi`` (the share of the sweep's steps accepted) are recorded as
the in-memory sampler records them.

The changes of b_s owed by 5 and 6 are sent with the next sweep's first message (and with
:meth:`ShardedMetropolis.collect`'s after the last), so the shards' b are those of the state
once they are made. Each move leaves the posterior invariant, whatever the shards; the sums are
combined in shard order and a level's random numbers do not depend on its shard (those of the
other factors' levels are drawn here), so the draws depend on neither the number of workers nor
(up to the rounding of the sums) the number of shards. The population moves draw from the
chain's generator.

The state (:class:`ShardedState`) holds the population values, tuning and the other factors' b;
the chain's b_s lives in the shards under its key, so the kernel is run in one process, chain by
chain (``in_process``), and a run's kept b_s are gathered at its end (:meth:`ShardedMetropolis.collect`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..blockstats import BlockStats, FactorLayout
from ..families import NEGBINOMIAL_CODE
from ..priors import log_prior_phi
from .crossed import CrossedGibbs, _inverse_wishart
from .crossed_metropolis import (GREEDY_SHARE, PHI_MAX, SCALE_OFF, SCALE_SHARE, SCALE_TARGET, TARGET,
                                 fixed_terms_from_levels, laplace_of_sums, laplace_point, nested_outer_map,
                                 rotation_draw, rotation_log_ratio, shift_move, variance_log_ratio)
from .keyed import chain_key, factor_stream, level_draws
from .negbinomial import PHI_TARGET, phi_of_moments
from .shard import LevelPart, LevelShard, ShardRows, SweepMessage, ones_rotation, rotation_accept, rotation_proposals


#: the negative binomial's random-walk steps on log phi a sweep, made from one round
#: (:func:`reachable_points`): measured on 300 groups of 30 rows, phi's ESS a sweep went from
#: 0.21 with one step to 0.47 with three (ESS a second of sampling 23 -> 59, the other parameters alike)
PHI_STEPS = 3


class ShardedState(NamedTuple):
    """A chain's population values and tuning, and the other factors' effects ``b`` (flat, factor
    after factor, level-major; empty with one factor); the sharded factor's b lives in the shards
    under ``key``. ``scale``/``shift``: the changes of that b the last sweep's moves owe the
    shards; ``kept``: the last sweep was a kept draw (its b is kept once they are made). The
    negative binomial's log phi, the log of its random walk's step (tuning) and whether the last
    sweep's phi move was accepted (``log_dispersion``, ``dispersion_step``, ``accept_dispersion``;
    unused by the other families); ``moved``: the last sweep's fixed move was accepted (what a
    shard that carries its level sums starts from, :mod:`multilevel.samplers.shard`)."""

    key: np.ndarray
    sweep: int
    t: np.ndarray
    Sigma: np.ndarray
    log_phi: np.ndarray  # per factor (formula order), then a's
    log_step: np.ndarray  # per covariance block
    ll: float
    scale: np.ndarray
    shift: np.ndarray
    kept: bool
    b: np.ndarray
    log_dispersion: float = 0.0
    dispersion_step: float = float(np.log(0.3))
    accept_dispersion: float = 0.0
    moved: bool = False


class LocalShards:
    """Shards in this process: ``call(name, *args)`` runs a method of every shard, in order."""

    def __init__(self, shards: list[LevelShard]):
        self.shards = shards

    def call(self, name: str, *args: Any) -> list[Any]:
        return [getattr(s, name)(*args) for s in self.shards]


def sharded_factor(design: Any) -> int:
    """The factor the rows are sharded on: the one with the most levels (the first on ties)."""
    return int(np.argmax([int(f.n_levels) for f in design.factors]))


def factor_order(design: Any) -> list[int]:
    """The factors in the shards' order: the sharded one (:func:`sharded_factor`), then the others
    in formula order."""
    s = sharded_factor(design)
    return [s] + [k for k in range(len(design.factors)) if k != s]


def level_cuts(counts: np.ndarray, n_shards: int) -> np.ndarray:
    """Level boundaries lo_0 = 0 < lo_1 < ... < lo_S = J of at most ``n_shards`` shards with
    about equal numbers of rows (levels kept whole)."""
    J = counts.shape[0]
    n_shards = max(1, min(int(n_shards), J))
    cum = np.cumsum(counts)
    targets = cum[-1] * np.arange(1, n_shards) / n_shards
    inner = np.searchsorted(cum, targets, side="left") + 1
    return np.unique(np.concatenate([[0], np.clip(inner, 1, J - 1) if J > 1 else [], [J]]).astype(np.int64))


def shard_rows(y: np.ndarray, n: np.ndarray, offset: np.ndarray, F: np.ndarray, Z: np.ndarray, index: np.ndarray,
               q: np.ndarray, levels: np.ndarray, lo: int, hi: int) -> ShardRows:
    """The :class:`ShardRows` of the rows whose level of the sharded factor (``index[0]``) is in
    [lo, hi), sorted (stably) by it; Z and ``index`` (K, N) hold every factor's covariates and
    levels in the shards' order (:func:`factor_order`), ``q`` and ``levels`` their sizes."""
    level = index[0]
    keep = np.flatnonzero((level >= lo) & (level < hi))
    order = keep[np.argsort(level[keep], kind="stable")]
    idx = np.array(index[:, order], dtype=np.int32)
    idx[0] -= lo
    return ShardRows(np.ascontiguousarray(y[order], dtype=float), np.ascontiguousarray(n[order], dtype=float),
                     np.ascontiguousarray(offset[order], dtype=float), np.ascontiguousarray(F[order], dtype=float),
                     np.ascontiguousarray(Z[order], dtype=float), np.ascontiguousarray(idx), int(lo), int(hi - lo),
                     np.asarray(q, dtype=np.int64), np.asarray(levels, dtype=np.int64))


def design_rows(design: Any) -> tuple[np.ndarray, ...]:
    """A :class:`~multilevel.design.CrossedDesign`'s rows as :func:`shard_rows` takes them: y, n,
    offset, F, Z and index (K, N) of the factors in the shards' order, q and levels."""
    fs = [design.factors[k] for k in factor_order(design)]
    return (np.asarray(design.y, dtype=float), np.asarray(design.trials, dtype=float),
            np.asarray(design.offset, dtype=float), np.asarray(design.F, dtype=float),
            np.hstack([np.asarray(f.Z, dtype=float) for f in fs]),
            np.vstack([np.asarray(f.index, dtype=np.int64) for f in fs]),
            np.array([f.q for f in fs], dtype=np.int64), np.array([f.n_levels for f in fs], dtype=np.int64))


def local_shards(design: Any, code: int, n_shards: int = 1) -> LocalShards:
    """The rows of a :class:`~multilevel.design.CrossedDesign` in memory cut into ``n_shards``
    shards of whole levels of the sharded factor (:func:`level_cuts`)."""
    y, n, off, F, Z, index, q, levels = design_rows(design)
    cuts = level_cuts(np.bincount(index[0], minlength=int(levels[0])), n_shards)
    return LocalShards([LevelShard(shard_rows(y, n, off, F, Z, index, q, levels, lo, hi), code)
                        for lo, hi in zip(cuts[:-1], cuts[1:])])


class ShardSource:
    """The GLM defaults' fits (:func:`multilevel.priors.default_crossed_glm_priors`) from shards:
    the pooled fit by Newton steps whose terms are sums over the shards; the sharded factor's
    levels' own fits gathered from them (once, O(levels) numbers), another factor's by Newton
    steps for all its levels at once whose per-level terms are sums over the shards
    (:func:`multilevel.glmfit.newton_levels`). ``order``: the factors in the shards' order
    (:func:`factor_order`; default one factor)."""

    def __init__(self, shards: Any, order: list[int] | None = None):
        from functools import reduce

        from ..moments import combine_moments

        self.shards = shards
        self.order = [0] if order is None else list(order)
        parts = shards.call("summary")
        self.n_obs = int(sum(s["rows"] for s in parts))
        self.y_sum, self.n_sum = sum(s["y"] for s in parts), sum(s["n"] for s in parts)
        self.F_moments = reduce(combine_moments, [s["F"] for s in parts])
        self.Z_moments = [reduce(combine_moments, [s["Z"][k] for s in parts]) for k in range(len(self.order))]
        #: per factor (shards' order): its levels, and whether it is Poisson's intercept alone in every row
        self.levels = np.asarray(parts[0]["levels"], dtype=np.int64)
        self.ones = np.logical_and.reduce([s["ones"] for s in parts])
        self.F_min = np.min([s["F_min"] for s in parts], axis=0)
        self.F_max = np.max([s["F_max"] for s in parts], axis=0)
        self.F_abs = np.max([s["F_abs"] for s in parts], axis=0)
        self.F_first = next(s["F_first"] for s in parts if s["F_first"] is not None)
        self._pooled: dict[str, tuple[np.ndarray, np.ndarray, bool]] = {}

    def pooled_glm(self, family: Any) -> tuple[np.ndarray, np.ndarray, bool]:
        """:func:`multilevel.glmfit.pooled_glm` over the shards (computed once per family)."""
        if family.name not in self._pooled:
            self._pooled[family.name] = self._pooled_glm(family)
        return self._pooled[family.name]

    def _pooled_glm(self, family: Any) -> tuple[np.ndarray, np.ndarray, bool]:
        from ..glmfit import newton_fit, penalty_of_columns, pooled_start

        def terms(coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            parts = self.shards.call("pooled_terms", coef)
            return sum(g for g, _ in parts), sum(H for _, H in parts)

        start = pooled_start(family, self.y_sum, self.n_sum, self.n_obs, self.F_min == self.F_max, self.F_first)
        coef, info, converged = newton_fit(terms, start)
        if not converged:
            sd = np.sqrt(np.maximum(self.F_moments.variance, 0.0))
            coef, info, _ = newton_fit(terms, start, penalty=penalty_of_columns(sd, self.F_abs, self.F_first))
        return coef, info, converged

    def level_fits(self, family: Any, k: int, a_ml: np.ndarray) -> np.ndarray:
        """Factor k's levels' own fits that count (:func:`multilevel.glmfit.group_fits`'s rule)."""
        from ..glmfit import newton_levels

        pos = self.order.index(k)
        if pos == 0:
            fits = self.shards.call("level_fits", family, a_ml)
            return np.concatenate(fits) if fits else np.zeros((0, 1))
        qk, Jk = int(np.size(self.Z_moments[pos].variance)), int(self.levels[pos])
        counts = sum(c for _, _, c in self.shards.call("fit_terms", pos, a_ml, np.zeros((Jk, qk))))

        def terms(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            parts = self.shards.call("fit_terms", pos, a_ml, b)
            return sum(g for g, _, _ in parts), sum(H for _, H, _ in parts)

        fits, own = newton_levels(terms, counts, np.zeros(qk))
        return fits[own]

    def z_variance(self, k: int) -> np.ndarray:
        return np.atleast_1d(np.asarray(self.Z_moments[self.order.index(k)].variance, dtype=float))

    def dispersion_moments(self, a: np.ndarray) -> tuple[float, float]:
        """:func:`multilevel.priors.dispersion_moments` at eta = offset + F a, summed over the shards."""
        return _summed(self.shards.call("dispersion_moments", a))

    def negbinomial_information(self, a_ml: np.ndarray) -> np.ndarray:
        """:func:`multilevel.priors._negbinomial_information` over the shards (two rounds: the
        moment sums, then F'WF with their phi)."""
        return sum(self.shards.call("negbinomial_information", a_ml, *self.dispersion_moments(a_ml)))


def shift_moves(shards: Any, q: int) -> tuple[list[tuple[int, np.ndarray]], list[np.ndarray]]:
    """The shift moves (column c, fixed columns D) whose columns are level multiples of c in
    every shard, and per move sum_j w_j w_j'."""
    found = shards.call("multiples")
    groups = []
    for c in range(q):
        common = set(found[0][c].tolist()) if found else set()
        for f in found[1:]:
            common &= set(f[c].tolist())
        if common:
            groups.append((c, np.array(sorted(common), dtype=np.int64)))
    WW = shards.call("set_shifts", groups)
    return groups, [sum(w[g] for w in WW) for g in range(len(groups))]


class NestedPair(NamedTuple):
    """The sharded factor nested in the factor ``order[pos]``, column ``c`` of the one and ``d``
    of the other the same covariate in every row; ``counts`` (J_k,) the sharded factor's levels
    in each level of the outer one; ``Wp`` per shift move of the sharded factor the sums of its
    weights w_j over the levels of each outer level (J_k, D)."""

    pos: int
    c: int
    d: int
    counts: np.ndarray
    Wp: list


def nested_pairs(shards: Any, order: list[int], layout: FactorLayout) -> list[NestedPair]:
    """The nested shift moves' pairs (module docstring, step 7): for each other factor the
    sharded factor is nested in (each of its levels' rows in one level of the other, in every
    shard), each pair of columns with the same covariate; the shards keep them
    (:meth:`multilevel.samplers.shard.LevelShard.set_nested`)."""
    J = int(layout.J[order[0]])
    found = []
    for pos in range(1, len(order)):
        answers = sorted(shards.call("nesting", pos), key=lambda x: x[0])
        parent = np.concatenate([x[1] for x in answers]) if answers else np.zeros(0, dtype=np.int64)
        if parent.shape[0] != J or np.any(parent < 0):
            continue
        equal = np.logical_and.reduce([x[2] for x in answers])
        counts = np.bincount(parent, minlength=int(layout.J[order[pos]])).astype(float)
        found += [(pos, int(c), int(d), counts) for c, d in zip(*np.nonzero(equal))]
    if not found:
        return []
    Wp = shards.call("set_nested", [(pos, c, d) for pos, c, d, _ in found])
    return [NestedPair(pos, c, d, counts, [sum(w[i][m] for w in Wp) for m in range(len(Wp[0][i]))])
            for i, (pos, c, d, counts) in enumerate(found)]


def nested_shift(rng: np.random.Generator, Sbp: np.ndarray, counts: np.ndarray, b_out: np.ndarray, c: int, d: int,
                 Sinv_in: np.ndarray, Sinv_out: np.ndarray) -> np.ndarray:
    """The nested shift move (module docstring, step 7): b_out[l, d] + d_l for every outer level
    l and b_in[j, c] - d_parent(j) for the inner levels, d_l ~ N(lin_l / prec_l, 1 / prec_l),
    prec_l = (Sigma_out^-1)_dd + n_l (Sigma_in^-1)_cc, lin_l = (Sigma_in^-1 sum_{j in l} b_in,j)_c
    - (Sigma_out^-1 b_out,l)_d, from the inner levels' sums per outer level ``Sbp`` (J_out, q_in)
    and their numbers ``counts``: the crossed kernel's
    :func:`~multilevel.samplers.crossed_metropolis.nested_move`. ``b_out`` updated in place;
    returns d."""
    prec = Sinv_out[d, d] + counts * Sinv_in[c, c]
    lin = Sbp @ Sinv_in[c, :] - b_out @ Sinv_out[d, :]
    shift = lin / prec + rng.standard_normal(counts.shape[0]) / np.sqrt(prec)
    b_out[:, d] += shift
    return shift


def other_shifts(shards: Any, design: Any, order: list[int]) -> list[tuple[int, int, int]]:
    """The other factors' shift moves (factor k, column c, fixed column m): those whose column is
    the fixed column of its term's population mean (``mean_index``) and equal to it in every row
    of every shard, so that w_j = 1 for every level (the intercept, a slope with its fixed term).
    A level-level predictor of another factor is not looked for: its weights w_j would need the
    level's rows from every shard."""
    pairs = [(pos, c, int(m)) for pos, k in enumerate(order) if pos
             for c, m in enumerate(np.asarray(design.factors[k].mean_index)) if m >= 0]
    if not pairs:
        return []
    found = np.logical_and.reduce([np.asarray(f, dtype=bool) for f in shards.call("same_columns", pairs)])
    return [(order[pos], c, m) for (pos, c, m), ok in zip(pairs, found) if ok]


class ShardedMetropolis:
    """The kernel (module docstring): ``init(rng)``, ``warmup_step(state, rng, i, n_warmup)``,
    ``step(state, rng)``, ``record(state)`` over :class:`ShardedState`, and ``collect(result)``
    to add the kept b from the shards to a run's draws.

    Parameters
    ----------
    shards : the shards (:class:`LocalShards`, or the Dask engine's actors), with ``call``; their
        factors in the order of :func:`factor_order`.
    design : the :class:`~multilevel.design.CrossedDesign` (its names and levels; rows not read).
    layout : :func:`multilevel.blockstats.factor_layout` of it with every factor large.
    priors : resolved priors (:func:`multilevel.priors.resolve_crossed_priors`).
    a_start : the fixed effects the chains start near (the pooled ML fit).
    n_obs : rows in the shards.
    code : the shards' family code (:data:`multilevel.families.SHARDED_CODES`); the negative
        binomial's adds the phi move (module docstring), its prior ``priors.phi_rate``.
    nested_scale_moves : make step 8's moves where the design has them (:attr:`joint`).
    """

    in_process = True

    def __init__(self, shards: Any, design: Any, layout: FactorLayout, priors: Any, a_start: np.ndarray, n_obs: int,
                 code: int = 0, nested_scale_moves: bool = True):
        from .polya_gamma import singleton_groups

        self.shards, self.layout, self.priors = shards, layout, priors
        #: the factors in the shards' order: the sharded one, then the others
        self.order = factor_order(design)
        s = self.order[0]
        p, q, J = design.F.shape[1], int(layout.q[s]), int(layout.J[s])
        nb = int(np.sum(layout.J * layout.q))
        zeros_ptr = np.zeros(nb + 1, dtype=np.int64)
        template = BlockStats(G=np.zeros((p, p)), Xty_t=np.zeros(p), Xty_b=np.zeros(nb), A=np.zeros(0),
                              W_ptr=zeros_ptr, W_col=np.zeros(0, dtype=np.int32), W_val=np.zeros(0), C_ptr=zeros_ptr,
                              C_col=np.zeros(0, dtype=np.int32), C_val=np.zeros(0), u_ref_t=np.zeros(p), rtr=0.0,
                              Xtr_t=np.zeros(p), Xtr_b=np.zeros(nb), n_obs=n_obs, logw=0.0, p=p)
        self.inner = CrossedGibbs(template, layout, priors, design, sigma2_known=1.0,
                                  groups=singleton_groups(layout, nb, p))
        self.p, self.q, self.J = p, q, J
        self.names = self.inner.names
        self.sigma_names, self.beta_names = self.inner.sigma_names, self.inner.beta_names
        self.group_variables = self.inner.group_variables
        self.mean_index = [np.asarray(m) for m in self.inner.mean_index]
        self.theta_index, self.alpha_index = self.inner.theta_index, self.inner.alpha_index
        self.shift_groups, self.shift_WW = shift_moves(shards, q)
        #: where each shift move's d starts in the state's ``shift``, and its length
        self.shift_start = np.concatenate([[0], np.cumsum([len(cols) for _, cols in self.shift_groups])]).astype(int)
        self.shift_size = int(self.shift_start[-1])
        #: the other factors' effects in the state's b: factor order[pos] from b_off[pos]
        others = self.order[1:]
        sizes = [int(layout.J[k] * layout.q[k]) for k in others]
        self.b_off = dict(zip(others, np.concatenate([[0], np.cumsum(sizes)]).astype(int)))
        self.b_size = int(np.sum(sizes))
        summaries = shards.call("summary")
        #: per other factor: Poisson with the intercept alone in every row (the closed-form level moves)
        self.ones = dict(zip(others, (bool(x) for x in np.logical_and.reduce([s["ones"] for s in summaries])[1:])))
        #: the negative binomial: its phi move, prior rate, start (the pooled moment estimate) and sum log y!
        self.negbinomial = int(code) == NEGBINOMIAL_CODE
        if self.negbinomial:
            self.phi_rate = float(priors.phi_rate)
            self.phi_start = phi_of_moments(*_summed(shards.call("dispersion_moments", np.asarray(a_start, float))))
            self.log_y_factorial = float(sum(s["log_y_factorial"] for s in summaries))
        self.other_shifts = other_shifts(shards, design, self.order)
        #: the nested shift moves (step 7), one pair a sweep in turn
        self.nested = nested_pairs(shards, self.order, layout)
        #: the last other factor is Poisson's intercept alone: its current sums come with the fixed
        #: move's per level (module docstring), no round for the fixed move's terms at a
        self.fold = len(self.order) > 1 and self.ones[self.order[-1]]
        #: the covariance blocks of one column (the scale moves' blocks)
        self.scale_blocks = np.flatnonzero(layout.block_size == 1)
        #: the nested variance move (step 8): two factors, both Poisson's intercept alone, the
        #: sharded one nested in the other; its two steps follow the blocks' in the state's log_step
        self.joint = (nested_scale_moves and len(self.order) == 2 and self.fold and bool(self.nested)
                      and all(bool(x["ones"][0]) for x in summaries) and self.q == 1 and int(layout.q[others[0]]) == 1)
        self.n_steps = layout.block_start.shape[0] + (2 if self.joint else 0)
        self.keep_groups = True
        self._a0 = np.asarray(a_start, dtype=float)

    # -- the kernel ------------------------------------------------------------------------------
    def init(self, rng: np.random.Generator) -> ShardedState:
        """Start near the pooled fit (:meth:`CrossedGibbs.start`): b = 0, angles pi / 2, scale
        steps 0.3; the chain's key drawn from its generator."""
        t, _, Sigma = self.inner.start(rng, self._a0)
        key = chain_key(rng)
        self.shards.call("start", key)
        state = ShardedState(key, 0, t, Sigma, np.full(len(self.names) + 1, np.log(PHI_MAX)),
                             np.full(self.n_steps, np.log(0.3)), 0.0, np.ones(self.q),
                             np.zeros(self.shift_size), False, np.zeros(self.b_size))
        if self.negbinomial:  # as the in-memory sampler: the moment estimate times a factor in [0.5, 2]
            state = state._replace(log_dispersion=float(np.log(self.phi_start) + rng.uniform(-np.log(2.0), np.log(2.0))))
        return state

    def step(self, state: ShardedState, rng: np.random.Generator) -> ShardedState:
        """One sweep with the tuning frozen, a kept draw."""
        return self.sweep(state, rng, True, True)[0]

    def warmup_step(self, state: ShardedState, rng: np.random.Generator, i: int, n_warmup: int) -> ShardedState:
        """One sweep, then Robbins-Monro steps of the tuning as
        :meth:`multilevel.samplers.crossed_metropolis.CrossedMetropolis.warmup_step` (greedy
        first :data:`GREEDY_SHARE` of warm-up, scale moves off at its end where the levels leave
        less than :data:`SCALE_SHARE` of the variance to the prior); the negative binomial's phi
        step every warm-up sweep as the in-memory sampler's
        (:meth:`multilevel.samplers.negbinomial.NegBinomialGibbs.warmup_step`: gain (i + 1)^-0.6
        towards acceptance :data:`~multilevel.samplers.negbinomial.PHI_TARGET`, within [-10, 3])."""
        greedy = i < GREEDY_SHARE * n_warmup
        new, acc, acc_scale, shares = self.sweep(state, rng, not greedy, False)
        log_phi, log_step = new.log_phi, new.log_step
        if not greedy:
            gain = (i + 1.0) ** -0.6
            log_phi = np.minimum(log_phi + gain * (acc - TARGET), np.log(PHI_MAX))
            log_step = np.where(acc_scale >= 0, log_step + gain * (acc_scale - SCALE_TARGET), log_step)
        if i == n_warmup - 1:
            log_step = np.where(shares < SCALE_SHARE, SCALE_OFF, log_step)
        new = new._replace(log_phi=log_phi, log_step=log_step)
        if self.negbinomial:
            step = new.dispersion_step + (i + 1.0) ** -0.6 * (new.accept_dispersion - PHI_TARGET)
            new = new._replace(dispersion_step=float(np.clip(step, -10.0, 3.0)))
        return new

    def _sigma(self, Sigma: np.ndarray, k: int) -> np.ndarray:
        """Factor k's q_k x q_k block of the flat Sigma (a view)."""
        L = self.layout
        qk, o = int(L.q[k]), int(L.sig_off[k])
        return Sigma[o:o + qk * qk].reshape(qk, qk)

    def _effects(self, b: np.ndarray, k: int) -> np.ndarray:
        """Other factor k's effects (J_k, q_k), a view of the state's b."""
        L = self.layout
        qk, Jk, o = int(L.q[k]), int(L.J[k]), self.b_off[k]
        return b[o:o + Jk * qk].reshape(Jk, qk)

    def _block_shares(self, shares: np.ndarray, column_shares: np.ndarray, k: int) -> None:
        """Per one-column block of factor k, its columns' prior share (``shares`` per block)."""
        L = self.layout
        for bl in np.flatnonzero((L.block_factor == k) & (L.block_size == 1)):
            shares[bl] = column_shares[int(L.block_start[bl])]

    def sweep(self, state: ShardedState, rng: np.random.Generator, hastings: bool, keep: bool
              ) -> tuple[ShardedState, np.ndarray, np.ndarray, np.ndarray]:
        """One sweep (module docstring). Returns the new state, the acceptance rates (per factor,
        then a), per block the scale move's (-1: none this sweep) and the levels' mean prior share
        mean_j 1 / (1 + tau_c H_j,cc) (inf for blocks of several columns)."""
        L, g = self.layout, self.inner
        p, q, J, s = self.p, self.q, self.J, self.order[0]
        a, Sigma, bo = state.t.copy(), state.Sigma.copy(), state.b.copy()
        S = self._sigma(Sigma, s)
        last = len(self.order) - 1
        message = SweepMessage(state.key, state.sweep, a, np.linalg.inv(S), float(np.exp(state.log_phi[s])), hastings,
                               state.scale, state.shift, state.kept, np.diagonal(S).copy(), bo, min(last, 1),
                               self.fold and last == 1, float(np.exp(state.log_dispersion)), self.joint, state.moved)
        parts = self.shards.call("sweep", message)
        acc = np.zeros(len(self.names) + 1)
        acc[s] = sum(x.accepted for x in parts) / max(J, 1)
        Sbb = sum(x.Sbb for x in parts)
        Swb = [sum(x.Swb[k] for x in parts) for k in range(len(self.shift_groups))]
        shares = np.full(self.n_steps, np.inf)
        self._block_shares(shares, sum(x.shares for x in parts) / max(J, 1), s)
        self._conjugate(rng, s, Sbb, Sigma)
        nest = None
        if self.nested:  # step 7: the pair of this sweep, in a round of its own (step 8's first with it)
            i = state.sweep % len(self.nested)
            pair = self.nested[i]
            k = self.order[pair.pos]
            d = nested_shift(rng, sum(x.Sbp[i] for x in parts), pair.counts, self._effects(bo, k), pair.c, pair.d,
                             np.linalg.inv(self._sigma(Sigma, s)), np.linalg.inv(self._sigma(Sigma, k)))
            if self.joint:
                nest = (i, d)
            else:
                self.shards.call("nest", state.key, i, d)
            for m, Wp in enumerate(pair.Wp):  # the shift moves' sums of w_j b_j' in column c
                Swb[m][:, pair.c] -= Wp.T @ d
        acc_scale = np.full(self.n_steps, -1.0)
        joint, joint_terms = None, None
        if last:
            sums = level_summed([x.levels for x in parts], int(L.J[self.order[1]]))
            for pos, k in enumerate(self.order[1:], 1):
                folded = self.fold and pos == last
                if pos > 1:
                    sums = level_summed(self.shards.call("terms", state.key, bo, pos, None, folded), int(L.J[k]))
                # folded: the closed form's sums g0 = Sy - Smu, H0 = Smu from the fixed move's per level
                level_sums = (None, (sums[1] - sums[2])[:, None], sums[2][:, None, None]) if folded else sums
                acc[k], D = self._other_levels(state, k, pos, bo, Sigma, level_sums, hastings, shares)
                bk = self._effects(bo, k)
                self._conjugate(rng, k, bk.T @ bk, Sigma)
            if self.joint:  # step 8
                accepted, joint_terms, Swb_joint = self._joint_move(rng, state, Sigma, bo, nest)
                acc_scale[-2:] = accepted
                joint = bool(accepted[1])  # the second move, which the evaluation round settles
                if joint_terms is not None:
                    Swb = Swb_joint
            if joint_terms is not None:  # the fixed move's terms at a after the nested variance moves, the shards'
                ll0, g0, H0 = joint_terms
            elif self.fold:  # the fixed move's terms at a, the last factor's changes D taken per level
                ll0, g0, H0 = fixed_terms_from_levels(*sums, np.ascontiguousarray(D[:, 0]))
            else:
                ll0, g0, H0 = _summed(self.shards.call("terms", state.key, bo, 0, None))
        else:
            ll0, g0, H0 = sum(x.ll for x in parts), sum(x.g for x in parts), sum(x.H for x in parts)
        # the fixed move's proposal and a scale move, evaluated in one message
        phi_a = float(np.exp(state.log_phi[-1]))
        xs, ok0 = a, False
        if p:
            lp0, m0, L0, ok0 = laplace_point(a, g0, H0, g._Pi_fixed, g._Pim_fixed)
            if ok0:
                xs = rotation_draw(rng, a, m0, L0, phi_a)
        bl, k, c, step = -1, s, -1, 0.0
        live = [b for b in self.scale_blocks if state.log_step[b] > SCALE_OFF]
        if live:
            bl = int(live[state.sweep % len(live)])
            k, c = int(L.block_factor[bl]), int(L.block_start[bl])
            step = float(np.exp(state.log_step[bl]) * rng.standard_normal())
        ll = ll0
        dll = 0.0
        scale = np.ones(q)
        a_before, scaled = a.copy(), None  # what the phi move takes: the fixed move's change, the scale move's f
        if ok0 or c >= 0:
            evals = self.shards.call("evaluate", state.key, xs - a, self.order.index(k), c, float(np.expm1(step)),
                                     bo if self.fold else np.zeros(0), joint)  # folded: the last factor's changes
            ll1, g1, H1 = sum(e[0] for e in evals), sum(e[1] for e in evals), sum(e[2] for e in evals)
            d0, d1 = sum(e[3] for e in evals), sum(e[4] for e in evals)
            dll = d0
            if ok0:
                lp1, m1, L1, ok1 = laplace_point(xs, g1, H1, g._Pi_fixed, g._Pim_fixed)
                if ok1 and np.log(rng.random()) < rotation_log_ratio(a, xs, ll0, ll1, lp0, lp1, m0, L0, m1, L1, phi_a,
                                                                     hastings):
                    a, ll, dll, acc[-1] = xs, ll1, d1, 1.0
            if c >= 0:
                pos = int(L.sig_off[k]) + c * int(L.q[k]) + c
                tau, tau_new = Sigma[pos], Sigma[pos] * np.exp(2.0 * step)
                log_r = dll + variance_log_ratio(0, g._blk_eta[bl], g._S0[pos], step, tau, tau_new)
                accepted = bool(np.log(rng.random()) < log_r)
                acc_scale[bl] = float(accepted)
                if accepted:
                    Sigma[pos] = tau_new
                    scaled = float(np.expm1(step))
                    if k == s:
                        scale[c] = np.exp(step)
                    else:
                        self._effects(bo, k)[:, c] *= np.exp(step)
                    ll += dll
        elif joint is not None:  # no evaluation round: the nested variance move's answer in one of its own
            self.shards.call("joint_settle", state.key, joint)
        log_disp, acc_disp = state.log_dispersion, 0.0
        if self.negbinomial:
            log_disp, acc_disp, ll = self._dispersion_move(rng, state, a - a_before, self.order.index(k),
                                                           -1 if scaled is None else c, scaled or 0.0)
        shift = np.zeros(self.shift_size)
        if self.shift_groups:
            m = state.sweep % len(self.shift_groups)
            shift[self.shift_start[m]:self.shift_start[m + 1]] = self._shift(rng, m, a, Swb[m] * scale[None, :], Sigma)
        self._other_shift_moves(rng, a, bo, Sigma)
        new = state._replace(sweep=state.sweep + 1, t=a, Sigma=Sigma, ll=float(ll), scale=scale, shift=shift,
                             kept=keep and self.keep_groups, b=bo, log_dispersion=log_disp, accept_dispersion=acc_disp,
                             moved=bool(acc[-1]))
        return new, acc, acc_scale, shares

    def _joint_move(self, rng: np.random.Generator, state: ShardedState, Sigma: np.ndarray, bo: np.ndarray,
                    nest: tuple | None) -> tuple[np.ndarray, tuple | None, list]:
        """The nested variance moves (module docstring, step 8), the inner variance's then the
        outer's, in three rounds: the shards' parts of the Laplace approximation's S_l, S_l m_l
        at tau_in and at its proposal (``nest``: step 7's shift made first), then per move b*_out
        here and the shards' part of its log ratio (the second round settling the first move).
        Sigma and the outer effects in ``bo`` updated in place. Returns the two moves' acceptances
        and, if either was accepted, the fixed move's terms at a and the shift moves' sums after
        them (the shards'; None and [] otherwise)."""
        L, g = self.layout, self.inner
        s, k = self.order
        nb = L.block_start.shape[0]
        s_in, s_out = np.exp(state.log_step[nb:nb + 2]) * rng.standard_normal(2)
        pos_in, pos_out = int(L.sig_off[s]), int(L.sig_off[k])
        tau_in, tau_out = Sigma[pos_in], Sigma[pos_out]
        tin, tout = tau_in * np.exp(2.0 * s_in), tau_out * np.exp(2.0 * s_out)
        S_in0, r_in0, S_in1, r_in1 = level_summed(self.shards.call("joint_terms", state.key, nest, bo, tau_in, tin),
                                                  int(L.J[k]))
        b_out = self._effects(bo, k)[:, 0]
        accepted, terms, Swb, previous = np.zeros(2, dtype=bool), None, [], None
        for m in range(2):  # the inner variance's move, then the outer's from where the first left tau_in
            t_in = Sigma[pos_in]
            if m == 0:
                t_new, u_new, sums0, sums1 = tin, tau_out, (S_in0, r_in0), (S_in1, r_in1)
                prior = variance_log_ratio(int(L.J[s]), g._blk_eta[self._block_of(s)], g._S0[pos_in], s_in, tau_in, tin)
            else:
                t_new, u_new = t_in, tout
                sums0 = sums1 = (S_in1, r_in1) if accepted[0] else (S_in0, r_in0)
                prior = variance_log_ratio(int(L.J[k]), g._blk_eta[self._block_of(k)], g._S0[pos_out], s_out, tau_out,
                                           tout)
            new_out, log_r = nested_outer_map(b_out, *laplace_of_sums(tau_out, *sums0), *laplace_of_sums(u_new, *sums1),
                                              tau_out, u_new, True)
            answers = self.shards.call("joint_propose", state.key, new_out, t_in, t_new, previous)
            log_r += prior + sum(x[0] for x in answers)
            accepted[m] = previous = bool(np.log(rng.random()) < log_r)
            if accepted[m]:
                Sigma[pos_in], Sigma[pos_out] = t_new, u_new
                b_out[:] = new_out
                terms = _summed([x[1:4] for x in answers])
                Swb = [sum(x[4 + i] for x in answers) for i in range(len(self.shift_groups))]
        return accepted, terms, Swb

    def _block_of(self, k: int) -> int:
        """The covariance block of factor k (one column)."""
        return int(np.flatnonzero(self.layout.block_factor == k)[0])

    def _dispersion_move(self, rng: np.random.Generator, state: ShardedState, da: np.ndarray, pos: int, c: int,
                         f: float) -> tuple[float, float, float]:
        """The negative binomial's phi moves (module docstring), a round of their own:
        :data:`PHI_STEPS` random-walk steps log phi -> log phi + h z_t (the z_t and the uniforms
        from the chain's generator), the shards' sums of the likelihood at every point the steps
        can reach (log phi plus each subset of the increments, at the state after the fixed and
        scale moves: ``da`` the fixed move's accepted change, ``c``, ``f`` the scale move's
        accepted column of the factor at position ``pos`` and its b_kc -> (1 + f) b_kc; c < 0:
        none), each step accepted by :func:`dispersion_log_ratio` in turn. Returns log phi, the
        share of steps accepted and the log-likelihood at phi (log y! included)."""
        steps = float(np.exp(state.dispersion_step)) * rng.standard_normal(PHI_STEPS)
        log_u = np.log(rng.random(PHI_STEPS))
        points = reachable_points(state.log_dispersion, steps)
        (ll,) = _summed(self.shards.call("dispersion_terms", state.key, da, pos, c, f, points))
        at, accepted = 0, 0
        for t in range(PHI_STEPS):  # the point of subset `at`, then of `at` with step t
            to = at | (1 << t)
            if log_u[t] < dispersion_log_ratio(ll[at], ll[to], points[at], points[to], self.phi_rate):
                at, accepted = to, accepted + 1
        return float(points[at]), accepted / PHI_STEPS, float(ll[at]) - self.log_y_factorial

    def _other_levels(self, state: ShardedState, k: int, pos: int, bo: np.ndarray, Sigma: np.ndarray,
                      sums: tuple[Any, np.ndarray, np.ndarray], hastings: bool, shares: np.ndarray
                      ) -> tuple[float, np.ndarray]:
        """Other factor k's level moves (module docstring, step 2) from its per-level sums at the
        current values (summed over the shards), its random numbers keyed by (chain, sweep,
        factor, level): the rotation proposals drawn here, their sums from the shards (none for
        Poisson's intercept alone: the closed form), each level accepted here; b (in ``bo``)
        updated in place, the levels' prior shares written to ``shares``. Returns the share accepted
        and the accepted changes (J_k, q_k)."""
        ll0, g0, H0 = sums
        bk = self._effects(bo, k)
        Jk, qk = bk.shape
        Sk = self._sigma(Sigma, k)
        Sinv = np.linalg.inv(Sk)
        phi = float(np.exp(state.log_phi[k]))
        self._block_shares(shares, np.mean(1.0 / (1.0 + np.diagonal(Sk)[None, :] *
                                                   np.diagonal(H0, axis1=1, axis2=2)), axis=0), k)
        z, u = level_draws(state.key, state.sweep, 0, Jk, qk, factor_stream(k))
        D = np.zeros((Jk, qk))
        if self.ones[k]:
            accepted = ones_rotation(bk, float(Sinv[0, 0]), phi, g0, H0, z, u, hastings, D)
        else:
            lp0, M0, Ls, valid = rotation_proposals(bk, g0, H0, Sinv, phi, z, D)
            ll1, g1, H1 = level_summed(self.shards.call("terms", state.key, np.zeros(0), pos, D), Jk)  # b as they have it
            accepted = rotation_accept(bk, D, ll0, ll1, g1, H1, lp0, M0, Ls, valid, Sinv, phi, hastings, u)
        return accepted / max(Jk, 1), D

    def _conjugate(self, rng: np.random.Generator, k: int, Sbb: np.ndarray, Sigma: np.ndarray) -> None:
        """Sigma_k | b_k per block, in place in the flat Sigma: IW(eta_b + J_k, S0_b + sum_j b_jb b_jb')
        (one column: its inverse-gamma)."""
        L, g = self.layout, self.inner
        qk, Jk = int(L.q[k]), int(L.J[k])
        S0 = self._sigma(g._S0, k)
        block = self._sigma(Sigma, k)
        block[:] = 0.0
        for bl in np.flatnonzero(L.block_factor == k):
            s0, n = int(L.block_start[bl]), int(L.block_size[bl])
            S = S0[s0:s0 + n, s0:s0 + n] + Sbb[s0:s0 + n, s0:s0 + n]
            if n == 1:
                draw = np.array([[0.5 * S[0, 0] / rng.gamma(0.5 * (g._blk_eta[bl] + Jk), 1.0)]])
            else:
                draw, ok = _inverse_wishart(rng, g._blk_eta[bl] + Jk, np.ascontiguousarray(S), n)
                if not ok:
                    raise FloatingPointError(f"the covariance of factor {self.names[k]!r} became not positive definite")
            block[s0:s0 + n, s0:s0 + n] = draw

    def _shift(self, rng: np.random.Generator, k: int, a: np.ndarray, Swb: np.ndarray, Sigma: np.ndarray) -> np.ndarray:
        """Shift move k of the sharded factor in place on a: d | rest ~ N(Q^-1 l, Q^-1),
        Q = Pi_DD + (Sigma^-1)_cc sum_j w_j w_j', l = (Pi m0 - Pi a)_D + sum_j w_j (Sigma^-1 b_j)_c;
        returns d (b_jc - w_j'd owed to the shards)."""
        g = self.inner
        c, cols = self.shift_groups[k]
        Sinv = np.linalg.inv(self._sigma(Sigma, self.order[0]))
        Q = g._Pi_fixed[np.ix_(cols, cols)] + Sinv[c, c] * self.shift_WW[k]
        lin = g._Pim_fixed[cols] - g._Pi_fixed[cols] @ a + Swb @ Sinv[c]
        Lq = np.linalg.cholesky(Q)
        d = np.linalg.solve(Lq.T, np.linalg.solve(Lq, lin) + rng.standard_normal(cols.shape[0]))
        a[cols] += d
        return d

    def _other_shift_moves(self, rng: np.random.Generator, a: np.ndarray, bo: np.ndarray, Sigma: np.ndarray) -> None:
        """The other factors' shift moves (:func:`other_shifts`), every sweep, here (their b is
        here; the shards take it with the next message):
        :func:`~multilevel.samplers.crossed_metropolis.shift_move` with w_j = 1."""
        g, L = self.inner, self.layout
        for k, c, m in self.other_shifts:
            qk, Jk = int(L.q[k]), int(L.J[k])
            Sinv = np.ascontiguousarray(np.linalg.inv(self._sigma(Sigma, k)))
            if not shift_move(rng, a, g._Pi_fixed, g._Pim_fixed, bo, self.b_off[k], Jk, qk, c,
                              np.array([m], dtype=np.int64), np.ones((Jk, 1)), Sinv):
                raise FloatingPointError("the precision of a shift move of the fixed effects became not positive "
                                         "definite")

    def _mean(self, a: np.ndarray, k: int) -> np.ndarray:
        """Factor k's population means a[mean_index] (0 where none), a (..., p)."""
        mi = self.mean_index[k]
        return np.where(mi >= 0, a[..., np.maximum(mi, 0)] if a.shape[-1] else 0.0, 0.0)

    def record(self, state: ShardedState) -> dict[str, np.ndarray]:
        """theta, alpha, the Sigma, the other factors' beta (= the population mean + b_kj) and the
        log-likelihood (the sharded factor's b stays in the shards: :meth:`collect`)."""
        a = state.t
        theta = self._mean(a, 0) if len(self.names) == 1 else a[self.theta_index]
        out = {"theta": theta, "alpha": a[self.alpha_index]}
        for k, name in enumerate(self.sigma_names):
            out[name] = self._sigma(state.Sigma, k).copy()
        for k in self.order[1:]:
            out[self.beta_names[k]] = self._effects(state.b, k) + self._mean(a, k)
        out["loglik"] = np.float64(state.ll)
        if self.negbinomial:
            out["phi"] = np.float64(np.exp(state.log_dispersion))
            out["accept_phi"] = np.float64(state.accept_dispersion)
        return out

    def collect(self, result: Any) -> None:
        """Add each chain's kept b of the sharded factor (+ the population mean, lme4's coef) to
        ``result.draws``, after the shards make what the last sweep owes; the shards then forget
        the chains."""
        n, s = result.n_draws, self.order[0]
        per_chain = []
        for chain in result.chains:
            st = chain.state
            self.shards.call("flush", st.key, st.scale, st.shift, bool(st.kept))
            per_chain.append(np.concatenate(self.shards.call("group_draws", st.key, n), axis=1))
            self.shards.call("release", st.key)
        if n and self.keep_groups:
            theta, alpha = result.draws["theta"], result.draws["alpha"]
            if len(self.names) == 1:
                mean = theta
            else:
                a = np.zeros((*theta.shape[:2], self.p))
                a[..., self.theta_index], a[..., self.alpha_index] = theta, alpha
                mean = self._mean(a, s)
            result.draws[self.beta_names[s]] = np.stack(per_chain) + mean[:, :, None, :]


def reachable_points(log_phi: float, steps: np.ndarray) -> np.ndarray:
    """Every value of log phi that random-walk steps ``steps`` from ``log_phi`` can reach, each
    accepted or not: entry m is log_phi plus the steps t with bit t of m set (entry 0 log_phi
    itself), 2^len(steps) values."""
    masks = np.arange(2 ** steps.size)
    chosen = (masks[:, None] >> np.arange(steps.size)) & 1
    return log_phi + np.array([float(np.sum(steps[row == 1])) for row in chosen])


def dispersion_log_ratio(ll_a: float, ll_b: float, log_phi_a: float, log_phi_b: float, rate: float) -> float:
    """The phi move's log Metropolis ratio from log phi_a to log phi_b: the likelihood's change
    ll_b - ll_a plus that of the prior density of log phi
    (:func:`multilevel.priors.log_prior_phi`, which holds the log-scale Jacobian: the proposal is
    symmetric in log phi)."""
    return ll_b - ll_a + log_prior_phi(log_phi_b, rate) - log_prior_phi(log_phi_a, rate)


def level_summed(parts: list[LevelPart], J: int) -> tuple[np.ndarray, ...]:
    """The shards' per-level sums of a factor of J levels (each shard's for the levels its rows
    touch, :class:`~multilevel.samplers.shard.LevelPart`) summed in shard order: the numbers of
    summing every shard's sums over all J levels (a level a shard does not touch adds 0)."""
    out = tuple(np.zeros((J, *x.shape[1:])) for x in parts[0].sums)
    for part in parts:
        for total, x in zip(out, part.sums):
            total[part.levels] += x
    return out


def _summed(parts: list[tuple]) -> tuple:
    """The shards' answers (tuples of arrays) summed in shard order."""
    return tuple(sum(x[i] for x in parts) for i in range(len(parts[0])))


__all__ = ["LocalShards", "PHI_STEPS", "ShardSource", "ShardedMetropolis", "ShardedState", "dispersion_log_ratio",
           "factor_order", "reachable_points",
           "level_cuts", "level_summed", "local_shards", "shard_rows", "sharded_factor", "shift_moves"]
