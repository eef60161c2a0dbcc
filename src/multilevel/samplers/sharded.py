r"""Metropolis-within-Gibbs for a one-factor GLM whose levels are spread over shards (the Dask
engine's GLM sampler; also an in-memory option, ``sampler="sharded"``).

Model: that of :mod:`multilevel.samplers.crossed_metropolis` with one factor,
eta_i = offset_i + F_i a + Z_i b_j(i), b_j ~ MVN(0, Sigma), Sigma's blocks inverse-Wishart, a
Gaussian. The rows are cut into shards of whole levels (:class:`multilevel.samplers.shard.LevelShard`),
which keep the b_j; this kernel keeps a, Sigma and the tuning, and a sweep is two messages to
every shard, each answered with O(p^2) numbers:

1. the levels' moves (step 2 of the crossed kernel, on the shards, their random numbers keyed by
   (chain, sweep, level)); the shards return sum_j b_j, sum_j b_j b_j', the shift moves' sums and
   the fixed move's terms at a (ll, F'(y - mu), F'WF);
2. **Sigma | b**, conjugate per block from sum_j b_j b_j' (IW(eta_b + J, S0_b + sum_j b_jb b_jb'));
3. the **fixed move** (step 1: a* from the rotation about a's Newton point) and one **scale
   move** (step 4, one-column blocks in turn, sweep by sweep: b_jc -> e^s b_jc,
   Sigma_cc -> e^{2s} Sigma_cc), both proposed here and evaluated by the shards in one message
   (ll at a*, and the scale move's change of ll at a and at a*); the fixed move is accepted
   first, then the scale move from wherever a is;
4. one **shift move** (step 5, exact Gibbs, no row read: a_D + d, b_jc - w_j'd for the fixed
   columns D that are level multiples of covariate c), the shift moves in turn sweep by sweep,
   from the shards' sums sum_j w_j b_j' and sum_j w_j w_j'.

The changes of b owed by 3 and 4 are sent with the next sweep's first message (and with
:meth:`ShardedMetropolis.collect`'s after the last), so the shards' b are those of the state
once they are made. Each move leaves the posterior invariant, whatever the shards; the sums are
combined in shard order and a level's random numbers do not depend on its shard, so the draws
depend on neither the number of workers nor (up to the rounding of the sums) the number of
shards. The population moves draw from the chain's generator.

The state (:class:`ShardedState`) holds the population values and tuning; the chain's b lives in
the shards under its key, so the kernel is run in one process, chain by chain
(``in_process``), and a run's kept b are gathered at its end (:meth:`ShardedMetropolis.collect`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..blockstats import BlockStats, FactorLayout
from .crossed import CrossedGibbs, _inverse_wishart
from .crossed_metropolis import (GREEDY_SHARE, PHI_MAX, SCALE_OFF, SCALE_SHARE, SCALE_TARGET, TARGET, laplace_point,
                                 rotation_draw, rotation_log_ratio)
from .keyed import chain_key
from .shard import LevelShard, ShardRows, SweepMessage


class ShardedState(NamedTuple):
    """A chain's population values and tuning; its b lives in the shards under ``key``.
    ``scale``/``shift``: the changes of b the last sweep's moves owe the shards; ``kept``: the
    last sweep was a kept draw (its b is kept once they are made)."""

    key: np.ndarray
    sweep: int
    t: np.ndarray
    Sigma: np.ndarray
    log_phi: np.ndarray  # the levels' angle, then a's
    log_step: np.ndarray  # per covariance block
    ll: float
    scale: np.ndarray
    shift: np.ndarray
    kept: bool


class LocalShards:
    """Shards in this process: ``call(name, *args)`` runs a method of every shard, in order."""

    def __init__(self, shards: list[LevelShard]):
        self.shards = shards

    def call(self, name: str, *args: Any) -> list[Any]:
        return [getattr(s, name)(*args) for s in self.shards]


def level_cuts(counts: np.ndarray, n_shards: int) -> np.ndarray:
    """Level boundaries lo_0 = 0 < lo_1 < ... < lo_S = J of at most ``n_shards`` shards with
    about equal numbers of rows (levels kept whole)."""
    J = counts.shape[0]
    n_shards = max(1, min(int(n_shards), J))
    cum = np.cumsum(counts)
    targets = cum[-1] * np.arange(1, n_shards) / n_shards
    inner = np.searchsorted(cum, targets, side="left") + 1
    return np.unique(np.concatenate([[0], np.clip(inner, 1, J - 1) if J > 1 else [], [J]]).astype(np.int64))


def shard_rows(y: np.ndarray, n: np.ndarray, offset: np.ndarray, F: np.ndarray, Z: np.ndarray, level: np.ndarray,
               lo: int, hi: int) -> ShardRows:
    """The :class:`ShardRows` of the rows whose level is in [lo, hi), sorted (stably) by level."""
    keep = np.flatnonzero((level >= lo) & (level < hi))
    order = keep[np.argsort(level[keep], kind="stable")]
    return ShardRows(np.ascontiguousarray(y[order], dtype=float), np.ascontiguousarray(n[order], dtype=float),
                     np.ascontiguousarray(offset[order], dtype=float), np.ascontiguousarray(F[order], dtype=float),
                     np.ascontiguousarray(Z[order], dtype=float),
                     np.ascontiguousarray(level[order] - lo, dtype=np.int32), int(lo), int(hi - lo))


def local_shards(design: Any, code: int, n_shards: int = 1) -> LocalShards:
    """The rows of a one-factor :class:`~multilevel.design.CrossedDesign` in memory cut into
    ``n_shards`` shards of whole levels (:func:`level_cuts`)."""
    f = design.factors[0]
    level = np.asarray(f.index)
    cuts = level_cuts(np.bincount(level, minlength=f.n_levels), n_shards)
    y, n, off, F, Z = (np.asarray(design.y, dtype=float), np.asarray(design.trials, dtype=float),
                       np.asarray(design.offset, dtype=float), np.asarray(design.F, dtype=float), np.asarray(f.Z, dtype=float))
    return LocalShards([LevelShard(shard_rows(y, n, off, F, Z, level, lo, hi), code)
                        for lo, hi in zip(cuts[:-1], cuts[1:])])


class ShardSource:
    """The GLM defaults' fits (:func:`multilevel.priors.default_crossed_glm_priors`) from shards:
    the pooled fit by Newton steps whose terms are sums over the shards, the levels' own fits
    gathered from them (once, O(levels) numbers)."""

    def __init__(self, shards: Any):
        from functools import reduce

        from ..moments import combine_moments

        self.shards = shards
        parts = shards.call("summary")
        self.n_obs = int(sum(s["rows"] for s in parts))
        self.y_sum, self.n_sum = sum(s["y"] for s in parts), sum(s["n"] for s in parts)
        self.F_moments = reduce(combine_moments, [s["F"] for s in parts])
        self.Z_moments = reduce(combine_moments, [s["Z"] for s in parts])
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
        fits = self.shards.call("level_fits", family, a_ml)
        return np.concatenate(fits) if fits else np.zeros((0, 1))

    def z_variance(self, k: int) -> np.ndarray:
        return np.atleast_1d(np.asarray(self.Z_moments.variance, dtype=float))


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


class ShardedMetropolis:
    """The kernel (module docstring): ``init(rng)``, ``warmup_step(state, rng, i, n_warmup)``,
    ``step(state, rng)``, ``record(state)`` over :class:`ShardedState`, and ``collect(result)``
    to add the kept b from the shards to a run's draws.

    Parameters
    ----------
    shards : the shards (:class:`LocalShards`, or the Dask engine's actors), with ``call``.
    design : the one-factor :class:`~multilevel.design.CrossedDesign` (its names and levels;
        rows not read).
    layout : :func:`multilevel.blockstats.factor_layout` of it with the factor large.
    priors : resolved priors (:func:`multilevel.priors.resolve_crossed_priors`).
    a_start : the fixed effects the chains start near (the pooled ML fit).
    n_obs : rows in the shards.
    """

    in_process = True

    def __init__(self, shards: Any, design: Any, layout: FactorLayout, priors: Any, a_start: np.ndarray, n_obs: int):
        from .polya_gamma import singleton_groups

        if len(design.factors) != 1:
            raise ValueError("the sharded kernel fits one grouping factor")
        self.shards, self.layout, self.priors = shards, layout, priors
        p, q, J = design.F.shape[1], int(layout.q[0]), int(layout.J[0])
        nb = J * q
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
        self.mean_index = np.asarray(self.inner.mean_index[0])
        self.alpha_index = self.inner.alpha_index
        self.shift_groups, self.shift_WW = shift_moves(shards, q)
        #: where each shift move's d starts in the state's ``shift``, and its length
        self.shift_start = np.concatenate([[0], np.cumsum([len(cols) for _, cols in self.shift_groups])]).astype(int)
        self.shift_size = int(self.shift_start[-1])
        #: the covariance blocks of one column (the scale moves' blocks)
        self.scale_blocks = np.flatnonzero(layout.block_size == 1)
        self.keep_groups = True
        self._a0 = np.asarray(a_start, dtype=float)

    # -- the kernel ------------------------------------------------------------------------------
    def init(self, rng: np.random.Generator) -> ShardedState:
        """Start near the pooled fit (:meth:`CrossedGibbs.start`): b = 0, angles pi / 2, scale
        steps 0.3; the chain's key drawn from its generator."""
        t, _, Sigma = self.inner.start(rng, self._a0)
        key = chain_key(rng)
        self.shards.call("start", key)
        return ShardedState(key, 0, t, Sigma, np.full(2, np.log(PHI_MAX)),
                            np.full(self.layout.block_start.shape[0], np.log(0.3)), 0.0, np.ones(self.q),
                            np.zeros(self.shift_size), False)

    def step(self, state: ShardedState, rng: np.random.Generator) -> ShardedState:
        """One sweep with the tuning frozen, a kept draw."""
        return self.sweep(state, rng, True, True)[0]

    def warmup_step(self, state: ShardedState, rng: np.random.Generator, i: int, n_warmup: int) -> ShardedState:
        """One sweep, then Robbins-Monro steps of the tuning as
        :meth:`multilevel.samplers.crossed_metropolis.CrossedMetropolis.warmup_step` (greedy
        first :data:`GREEDY_SHARE` of warm-up, scale moves off at its end where the levels leave
        less than :data:`SCALE_SHARE` of the variance to the prior)."""
        greedy = i < GREEDY_SHARE * n_warmup
        new, acc, acc_scale, shares = self.sweep(state, rng, not greedy, False)
        log_phi, log_step = new.log_phi, new.log_step
        if not greedy:
            gain = (i + 1.0) ** -0.6
            log_phi = np.minimum(log_phi + gain * (acc - TARGET), np.log(PHI_MAX))
            log_step = np.where(acc_scale >= 0, log_step + gain * (acc_scale - SCALE_TARGET), log_step)
        if i == n_warmup - 1:
            block_shares = np.array([shares[int(self.layout.block_start[bl])] if self.layout.block_size[bl] == 1
                                     else np.inf for bl in range(log_step.shape[0])])
            log_step = np.where(block_shares < SCALE_SHARE, SCALE_OFF, log_step)
        return new._replace(log_phi=log_phi, log_step=log_step)

    def sweep(self, state: ShardedState, rng: np.random.Generator, hastings: bool, keep: bool
              ) -> tuple[ShardedState, np.ndarray, np.ndarray, np.ndarray]:
        """One sweep (module docstring). Returns the new state, the acceptance rates (levels, a),
        per block the scale move's (-1: none this sweep) and per column the levels' mean prior
        share mean_j 1 / (1 + tau_c H_j,cc)."""
        L, g = self.layout, self.inner
        p, q, J = self.p, self.q, self.J
        a, Sigma = state.t.copy(), state.Sigma.copy()
        S = Sigma.reshape(q, q)
        message = SweepMessage(state.key, state.sweep, a, np.linalg.inv(S), float(np.exp(state.log_phi[0])), hastings,
                               state.scale, state.shift, state.kept, np.diagonal(S).copy())
        parts = self.shards.call("sweep", message)
        acc = np.zeros(2)
        acc[0] = sum(s.accepted for s in parts) / max(J, 1)
        Sbb = sum(s.Sbb for s in parts)
        Swb = [sum(s.Swb[k] for s in parts) for k in range(len(self.shift_groups))]
        shares = sum(s.shares for s in parts) / max(J, 1)
        ll0, g0, H0 = sum(s.ll for s in parts), sum(s.g for s in parts), sum(s.H for s in parts)
        Sigma = self._conjugate(rng, Sbb)
        # the fixed move's proposal and a scale move, evaluated in one message
        phi_a = float(np.exp(state.log_phi[1]))
        xs, ok0 = a, False
        if p:
            lp0, m0, L0, ok0 = laplace_point(a, g0, H0, g._Pi_fixed, g._Pim_fixed)
            if ok0:
                xs = rotation_draw(rng, a, m0, L0, phi_a)
        acc_scale = np.full(L.block_start.shape[0], -1.0)
        bl, c, s = -1, -1, 0.0
        live = [b for b in self.scale_blocks if state.log_step[b] > SCALE_OFF]
        if live:
            bl = int(live[state.sweep % len(live)])
            c = int(L.block_start[bl])
            s = float(np.exp(state.log_step[bl]) * rng.standard_normal())
        ll = ll0
        dll = 0.0
        scale = np.ones(q)
        if ok0 or c >= 0:
            evals = self.shards.call("evaluate", state.key, xs - a, c, float(np.expm1(s)))
            ll1, g1, H1 = sum(e[0] for e in evals), sum(e[1] for e in evals), sum(e[2] for e in evals)
            d0, d1 = sum(e[3] for e in evals), sum(e[4] for e in evals)
            dll = d0
            if ok0:
                lp1, m1, L1, ok1 = laplace_point(xs, g1, H1, g._Pi_fixed, g._Pim_fixed)
                if ok1 and np.log(rng.random()) < rotation_log_ratio(a, xs, ll0, ll1, lp0, lp1, m0, L0, m1, L1, phi_a,
                                                                     hastings):
                    a, ll, dll, acc[1] = xs, ll1, d1, 1.0
            if c >= 0:
                pos = c * q + c
                tau, tau_new = Sigma[pos], Sigma[pos] * np.exp(2.0 * s)
                log_r = dll - g._blk_eta[bl] * s - 0.5 * g._S0[pos] * (1.0 / tau_new - 1.0 / tau)
                accepted = bool(np.log(rng.random()) < log_r)
                acc_scale[bl] = float(accepted)
                if accepted:
                    Sigma[pos] = tau_new
                    scale[c] = np.exp(s)
                    ll += dll
        shift = np.zeros(self.shift_size)
        if self.shift_groups:
            k = state.sweep % len(self.shift_groups)
            shift[self.shift_start[k]:self.shift_start[k + 1]] = self._shift(rng, k, a, Swb[k] * scale[None, :], Sigma)
        new = state._replace(sweep=state.sweep + 1, t=a, Sigma=Sigma, ll=float(ll), scale=scale, shift=shift,
                             kept=keep and self.keep_groups)
        return new, acc, acc_scale, shares

    def _conjugate(self, rng: np.random.Generator, Sbb: np.ndarray) -> np.ndarray:
        """Sigma | b per block: IW(eta_b + J, S0_b + sum_j b_jb b_jb') (one column: its inverse-gamma)."""
        L, g, q = self.layout, self.inner, self.q
        Sigma = np.zeros(q * q)
        S0 = g._S0.reshape(q, q)
        for bl in range(L.block_start.shape[0]):
            s0, n = int(L.block_start[bl]), int(L.block_size[bl])
            S = S0[s0:s0 + n, s0:s0 + n] + Sbb[s0:s0 + n, s0:s0 + n]
            if n == 1:
                draw = np.array([[0.5 * S[0, 0] / rng.gamma(0.5 * (g._blk_eta[bl] + self.J), 1.0)]])
            else:
                draw, ok = _inverse_wishart(rng, g._blk_eta[bl] + self.J, np.ascontiguousarray(S), n)
                if not ok:
                    raise FloatingPointError(f"the covariance of factor {self.names[0]!r} became not positive definite")
            block = Sigma.reshape(q, q)
            block[s0:s0 + n, s0:s0 + n] = draw
        return Sigma

    def _shift(self, rng: np.random.Generator, k: int, a: np.ndarray, Swb: np.ndarray, Sigma: np.ndarray) -> np.ndarray:
        """Shift move k in place on a: d | rest ~ N(Q^-1 l, Q^-1), Q = Pi_DD + (Sigma^-1)_cc sum_j w_j w_j',
        l = (Pi m0 - Pi a)_D + sum_j w_j (Sigma^-1 b_j)_c; returns d (b_jc - w_j'd owed to the shards)."""
        g = self.inner
        c, cols = self.shift_groups[k]
        Sinv = np.linalg.inv(Sigma.reshape(self.q, self.q))
        Q = g._Pi_fixed[np.ix_(cols, cols)] + Sinv[c, c] * self.shift_WW[k]
        lin = g._Pim_fixed[cols] - g._Pi_fixed[cols] @ a + Swb @ Sinv[c]
        Lq = np.linalg.cholesky(Q)
        d = np.linalg.solve(Lq.T, np.linalg.solve(Lq, lin) + rng.standard_normal(cols.shape[0]))
        a[cols] += d
        return d

    def record(self, state: ShardedState) -> dict[str, np.ndarray]:
        """theta, alpha, Sigma and the log-likelihood (b stays in the shards: :meth:`collect`)."""
        a, mi = state.t, self.mean_index
        theta = np.where(mi >= 0, a[np.maximum(mi, 0)] if a.size else 0.0, 0.0)
        return {"theta": theta, "alpha": a[self.alpha_index], self.sigma_names[0]: state.Sigma.reshape(self.q, self.q),
                "loglik": np.float64(state.ll)}

    def collect(self, result: Any) -> None:
        """Add each chain's kept b (+ the population mean, lme4's coef) to ``result.draws`` as
        ``beta``, after the shards make what the last sweep owes; the shards then forget the chains."""
        n = result.n_draws
        per_chain = []
        for chain in result.chains:
            st = chain.state
            self.shards.call("flush", st.key, st.scale, st.shift, bool(st.kept))
            per_chain.append(np.concatenate(self.shards.call("group_draws", st.key, n), axis=1))
            self.shards.call("release", st.key)
        if n and self.keep_groups:
            result.draws[self.beta_names[0]] = np.stack(per_chain) + result.draws["theta"][:, :, None, :]


__all__ = ["LocalShards", "ShardSource", "ShardedMetropolis", "ShardedState", "level_cuts", "local_shards",
           "shard_rows", "shift_moves"]
