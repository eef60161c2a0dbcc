r"""What a formula learns from its rows, learned over partitions: the state of each stateful
transform (``center``, ``scale``, ``standardize``, R's ``bs`` and ``ns``, ``cr``, ``cc``, ``poly``), so
that every partition is coded as the rows in memory would be.

In memory ``formulae`` sets a stateful transform's state from all rows at once. Over
partitions each call has a learner (:func:`learner_of`) that asks for passes: a pass gives, per
partition, a partial result from the values of the call's argument (``partial``), combined in
partition order in a fixed tree (:func:`multilevel.distributed.reduce.tree_reduce`), and the
total advances the learner, which asks for another pass or is done. The calls' passes run
together: a pass reads each partition once for all of them (:func:`learn_states`).

* ``center(x)``, ``standardize(x)``, R's ``scale(x, center, scale)``: one pass of moments
  (count, mean, centred sum of squares, :mod:`multilevel.moments`); the sd with n - 1 (R's
  ``scale``; without centring the root mean square sum x^2 / (n - 1), as R) or n
  (``standardize``).
* R's ``ns(x, df, knots, intercept, Boundary_knots)`` and ``bs(x, df, knots, degree, intercept, Boundary_knots)``
  (:class:`RSplineLearner`): a pass gives (n, min, max), the boundary knots (``bs``: unless
  given); the interior knots are R's ``quantile(x, k / (K + 1))`` of all rows (with given
  boundary knots: of the rows inside them, one more pass counting those outside), each an
  interpolation between the order statistics x_(r) and x_(r + 1) (ranks from 0), and each wanted
  order statistic is found by bracketing (:class:`OrderStatistics`): its bracket [lo, hi) (first
  [min, max]) holds it; a pass counts the values below lo and histograms [lo, hi) in
  :data:`BINS` bins, and the bin holding rank r is the next bracket, until the bracket holds at
  most :data:`GATHER` values (or cannot be split), when a pass gathers its distinct values with
  their counts and the rank is read off; a bracket holding one value repeated is done at once.
  Uniform data of 1e8 rows need two bracketing passes.
* ``poly(x, degree)``: orthonormal polynomials by the three-term recurrence (Stieltjes),
  P_0 = 1, P_k = (x - alpha_{k-1}) P_{k-1} - (N_{k-1} / N_{k-2}) P_{k-2},
  alpha_k = sum x P_k^2 / N_k, N_k = sum P_k^2: pass k gives N_k and sum x P_k^2 from the
  constants of the passes before, degree + 1 passes. ``raw=True`` learns nothing.
* ``cr(x, df, ...)``, ``cc(x, period, df, ...)``: the interior knots are ``np.quantile`` of the
  *distinct* values inside the bounds, which partitions cannot count apart. Each partition
  hashes its distinct values into buckets (:class:`DistinctSplit`, about :data:`BUCKET` values
  a bucket, from a bound on the distinct count), each bucket is de-duplicated over all
  partitions (:func:`merge_bucket`), and the buckets, disjoint, are counted and bracketed as
  the rows of ``bs`` are; a pass over the rows then gives the centring, the rank check and the
  null space (:class:`CubicSplineLearner`). ``tp`` is refused: its basis is an
  eigendecomposition over the distinct values themselves.

The sums differ from the in-memory ones by rounding only; the order statistics, so the knots,
are exact. A learned state is saved with a Dask fit (:func:`transform_state`) and set again
on the prototype of a loaded fit (:func:`restore_state`).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from formulae.transforms import Center, CyclicCubicSpline, NaturalCubicSpline, Polynomial, Scale
from formulae.utils import get_centering_matrix

from ..errors import ModelError
from ..moments import Moments, combine_moments, moments_of
from ..rformula import RScale
from ..rsplines import (RBSpline, RNaturalSpline, check_inside, given_boundary, knot_probabilities,
                        r_quantile_of_order_statistics, r_quantile_ranks)

#: bins of a bracketing pass, and the values a bracket may hold to be gathered
BINS, GATHER = 4096, 200_000
#: distinct values per bucket the de-duplication of a spline's argument aims at
BUCKET = 1_000_000


class StatefulCall(NamedTuple):
    """A stateful transform of a ``formulae`` matrix: the transform object, its first argument,
    its keyword arguments and the environment they are evaluated in, and its other positional
    arguments (lazy values; ``cr(x, 6)``'s 6)."""

    transform: Any
    arg: Any
    kwargs: dict[str, Any]
    env: Any
    rest: tuple[Any, ...] = ()

    @property
    def name(self) -> str:
        return getattr(self.transform, "__transform_name__", "scale" if isinstance(self.transform, RScale)
                       else type(self.transform).__name__)

    def options(self) -> dict[str, Any]:
        """The values of the call's arguments after the first (constants such as ``df=4``), by
        name: positional ones named by the transform's signature."""
        names = list(inspect.signature(type(self.transform).__call__).parameters)[2:]  # after self and x
        return {**{n: v.eval({}, self.env) for n, v in zip(names, self.rest)},
                **{k: v.eval({}, self.env) for k, v in self.kwargs.items()}}


# -- passes: what one partition's argument values give, and how two partitions' results combine


class MomentsPass:
    """Count, mean and centred sum of squares of the values."""

    def partial(self, x: np.ndarray) -> Moments:
        return moments_of(x)

    def combine(self, a: Moments, b: Moments) -> Moments:
        return combine_moments(a, b)


class RangePass:
    """(count, min, max) of the values."""

    def partial(self, x: np.ndarray) -> tuple[int, float, float]:
        return (x.size, float(x.min()), float(x.max())) if x.size else (0, np.inf, -np.inf)

    def combine(self, a: tuple, b: tuple) -> tuple:
        return a[0] + b[0], min(a[1], b[1]), max(a[2], b[2])


@dataclass(frozen=True)
class OutsidePass:
    """(count below lo, count above hi) of the values: the rows outside given boundary knots."""

    lo: float
    hi: float

    def partial(self, x: np.ndarray) -> tuple[int, int]:
        return int(np.count_nonzero(x < self.lo)), int(np.count_nonzero(x > self.hi))

    def combine(self, a: tuple, b: tuple) -> tuple:
        return a[0] + b[0], a[1] + b[1]


class RangeDistinctPass:
    """(count, min, max, sum over partitions of each partition's distinct count): the last
    bounds the distinct count of all rows from above."""

    def partial(self, x: np.ndarray) -> tuple[int, float, float, int]:
        return (*RangePass().partial(x), int(np.unique(x).size))

    def combine(self, a: tuple, b: tuple) -> tuple:
        return (*RangePass().combine(a[:3], b[:3]), a[3] + b[3])


def bin_edges(lo: float, hi: float) -> np.ndarray:
    """The edges of a bracketing pass's bins over [lo, hi): :data:`BINS` equal bins, fewer
    where floating point has no room for them (lo and hi always the first and last)."""
    return np.unique(np.linspace(lo, hi, BINS + 1))


@dataclass(frozen=True)
class BracketPass:
    """For each bracket [lo_t, hi_t): the count of values below lo_t and either the histogram
    of the values inside (:func:`bin_edges`) with their min and max, or (``gather``) the
    distinct values inside and their counts."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]
    gather: tuple[bool, ...]

    def partial(self, x: np.ndarray) -> list[tuple]:
        out = []
        for lo, hi, gather in zip(self.lo, self.hi, self.gather):
            inside = x[(x >= lo) & (x < hi)]
            below = int(np.count_nonzero(x < lo))
            if gather:
                out.append((below, *np.unique(inside, return_counts=True)))
            else:
                edges = bin_edges(lo, hi)
                counts = np.bincount(np.searchsorted(edges, inside, side="right") - 1, minlength=edges.size - 1)
                out.append((below, counts, *((inside.min(), inside.max()) if inside.size else (np.inf, -np.inf))))
        return out

    def combine(self, a: list[tuple], b: list[tuple]) -> list[tuple]:
        out = []
        for gather, u, v in zip(self.gather, a, b):
            if gather:
                values, inverse = np.unique(np.concatenate([u[1], v[1]]), return_inverse=True)
                out.append((u[0] + v[0], values, np.bincount(inverse, np.concatenate([u[2], v[2]])).astype(np.int64)))
            else:
                out.append((u[0] + v[0], u[1] + v[1], min(u[2], v[2]), max(u[3], v[3])))
        return out


@dataclass(frozen=True)
class CubicBasisPass:
    """For a cubic regression spline (``spline``: ``cr`` or ``cc`` with its knots set, not
    centred) and its basis B of the rows: the column sums of B, the R factor of B's QR
    decomposition (the R of stacked R factors is B's: its singular values are B's, for the rank
    check) and the moments of B k, k the knots (``cr``: the covariate the null space spans)."""

    spline: Any

    def partial(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, Moments]:
        basis = self.spline.eval(x)
        knots = self.spline._knots
        linear = basis @ knots if basis.shape[1] == knots.size else np.zeros(0)  # cc's null space has no covariate
        return basis.sum(axis=0), np.linalg.qr(basis, mode="r"), moments_of(linear)

    def combine(self, a: tuple, b: tuple) -> tuple:
        return a[0] + b[0], np.linalg.qr(np.vstack([a[1], b[1]]), mode="r"), combine_moments(a[2], b[2])


@dataclass(frozen=True)
class DistinctSplit:
    """A partition's distinct values of a spline's argument inside [lo, hi] (``cc`` first
    wraps x onto [lo, lo + period)), split into ``buckets`` sets by a hash of their bits: a
    value lands in the same bucket from every partition, so de-duplicating bucket by bucket
    (:func:`merge_bucket`) gives the distinct values of all rows, in disjoint buckets whose
    counts and histograms add up."""

    lo: float
    hi: float
    period: float | None
    buckets: int

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        if self.period is not None:
            x = self.lo + np.mod(x - self.lo, self.period)
        values = np.unique(x[(x >= self.lo) & (x <= self.hi)]) + 0.0  # + 0.0: -0.0 hashes as 0.0
        bucket = (values.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15) >> np.uint64(33)) % np.uint64(self.buckets)
        return [values[bucket == b] for b in range(self.buckets)]


def merge_bucket(splits: list[list[np.ndarray]], b: int) -> np.ndarray:
    """The distinct values of bucket ``b`` over all partitions' :class:`DistinctSplit` s."""
    return np.unique(np.concatenate([split[b] for split in splits]))


@dataclass(frozen=True)
class OverDistinct:
    """A pass (``inner``) over the distinct values of the argument (``split``) rather than over
    its rows."""

    split: DistinctSplit
    inner: Any


def polynomial_column(x: np.ndarray, alpha: tuple[float, ...], norms: tuple[float, ...], k: int) -> np.ndarray:
    """The unnormalised orthogonal polynomial P_k(x) of the recurrence (module doc) from
    alpha_0..alpha_{k-1} and N_0..N_{k-1}."""
    prev, cur = np.zeros_like(x), np.ones_like(x)
    for i in range(1, k + 1):
        prev, cur = cur, (x - alpha[i - 1]) * cur - (norms[i - 1] / norms[i - 2] if i >= 2 else 0.0) * prev
    return cur


@dataclass(frozen=True)
class PolynomialPass:
    """(sum P_k^2, sum x P_k^2) of the values (:func:`polynomial_column`)."""

    alpha: tuple[float, ...]
    norms: tuple[float, ...]
    k: int

    def partial(self, x: np.ndarray) -> np.ndarray:
        p2 = polynomial_column(x, self.alpha, self.norms, self.k) ** 2
        return np.array([p2.sum(), (x * p2).sum()])

    def combine(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b


# -- learners: which passes a call asks for, and its state from their totals


class OrderStatistics:
    """The order statistics x_(r) (ranks from 0, ``ranks``) of the n values in [lo, hi], found by
    bracketing (module doc): :meth:`request` the next pass, :meth:`advance` by its totals.
    ``below``: how many values the passes see below lo (left out, as the rows outside given
    boundary knots)."""

    def __init__(self, ranks: np.ndarray, lo: float, hi: float, n: int | None = None, below: int = 0):
        self.below = int(below)
        self.ranks = np.asarray(ranks, dtype=np.int64)
        t = self.ranks.size
        self.lo, self.hi = np.full(t, lo), np.full(t, np.nextafter(hi, np.inf))
        self.gather = np.full(t, n is not None and n <= GATHER)  # n values in all: few enough to gather at once
        self.values = np.full(t, float(lo))
        self.found = np.full(t, lo == hi)

    @classmethod
    def of_quantiles(cls, n: int, q: np.ndarray, lo: float, hi: float, gather: bool = False,
                     r: bool = False, below: int = 0) -> OrderStatistics:
        """The order statistics that ``np.quantile`` (``r``: R's ``quantile``, type 7) at q of
        the n values in [lo, hi] interpolates between (:meth:`quantiles`); ``gather``: the n
        values are few enough to gather at once; ``below`` as the constructor's."""
        ranks = (r_quantile_ranks if r else quantile_ranks)(n, q)
        return cls(np.unique(np.concatenate([ranks, np.minimum(ranks + 1, n - 1)])), lo, hi, n if gather else None,
                   below)

    def quantiles(self, n: int, q: np.ndarray, r: bool = False) -> np.ndarray:
        """``np.quantile`` (``r``: R's ``quantile``) at q of the n values from the order
        statistics found."""
        ranks = (r_quantile_ranks if r else quantile_ranks)(n, q)
        at = dict(zip(self.ranks.tolist(), self.values.tolist()))
        lower = np.array([at[i] for i in ranks.tolist()])
        upper = np.array([at[min(i + 1, n - 1)] for i in ranks.tolist()])
        return (r_quantile_of_order_statistics if r else quantile_of_order_statistics)(n, q, lower, upper)

    @property
    def done(self) -> bool:
        return bool(self.found.all())

    def request(self) -> BracketPass:
        todo = ~self.found
        return BracketPass(tuple(self.lo[todo]), tuple(self.hi[todo]), tuple(self.gather[todo].tolist()))

    def advance(self, totals: list[tuple]) -> None:
        for t, total in zip(np.flatnonzero(~self.found), totals):
            r = self.ranks[t] + self.below
            if self.gather[t]:
                below, values, counts = total
                self.values[t] = values[np.searchsorted(below + np.cumsum(counts), r, side="right")]
                self.found[t] = True
                continue
            below, counts, low, high = total
            if low == high:  # the bracket holds one value, repeated
                self.values[t], self.found[t] = low, True
                continue
            edges = bin_edges(self.lo[t], self.hi[t])
            b = int(np.searchsorted(below + np.cumsum(counts), r, side="right"))
            self.lo[t], self.hi[t] = edges[b], edges[b + 1]
            self.gather[t] = counts[b] <= GATHER or bin_edges(edges[b], edges[b + 1]).size <= 2


def quantile_of_order_statistics(n: int, q: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``np.quantile(x, q)`` (linear interpolation; ``np.percentile(x, p)`` is q = p / 100) of
    n values from their order statistics x_(r) (``lower``) and x_(r + 1) (``upper``) at
    r = :func:`quantile_ranks`: NumPy's arithmetic, so the same numbers."""
    virtual = (n - 1) * np.asarray(q, dtype=float)
    gamma = virtual - np.floor(virtual)
    diff = upper - lower
    return np.where(gamma >= 0.5, upper - diff * (1 - gamma), lower + diff * gamma)


def quantile_ranks(n: int, q: np.ndarray) -> np.ndarray:
    """The rank r of x_(r) below each quantile q (NumPy's linear method)."""
    return np.clip(np.floor((n - 1) * np.asarray(q, dtype=float)).astype(np.int64), 0, n - 1)


class MomentsLearner:
    """``center``, ``standardize`` and R's ``scale``: one :class:`MomentsPass`."""

    def __init__(self, call: StatefulCall):
        self.call, self.done = call, False
        self.moments: Moments | None = None

    def request(self) -> MomentsPass:
        return MomentsPass()

    def advance(self, total: Moments) -> None:
        self.moments, self.done = total, True

    def apply(self) -> None:
        m = self.moments
        mean, ss = float(np.ravel(m.mean)[0]), float(np.ravel(m.m2)[0])
        t = self.call.transform
        if isinstance(t, RScale):
            opts = self.call.options()
            centre, scale = bool(opts.get("center", True)), bool(opts.get("scale", True))
            spread = ss if centre else ss + m.count * mean * mean
            t.mean = mean if centre else 0.0
            t.sd = float(np.sqrt(spread / max(m.count - 1, 1))) if scale else 1.0
            if t.sd == 0.0:
                raise ModelError("scale(x) of a constant column divides by a zero sd; drop the term or use center(x)")
            return
        t.mean = mean
        if isinstance(t, Scale):
            t.std = float(np.sqrt(ss / max(m.count, 1)))
        t.params_set = True


class PolynomialLearner:
    """``poly``: degree + 1 :class:`PolynomialPass` es (nothing for ``raw=True``)."""

    def __init__(self, call: StatefulCall):
        t = call.transform
        self.call, self.degree = call, int(t.degree)
        self.done = bool(t.raw)
        self.alpha: list[float] = []
        self.norms: list[float] = []

    def request(self) -> PolynomialPass:
        return PolynomialPass(tuple(self.alpha), tuple(self.norms), len(self.norms))

    def advance(self, total: np.ndarray) -> None:
        norm, moment = float(total[0]), float(total[1])
        if len(self.norms) < self.degree:
            self.alpha.append(moment / norm)
        self.norms.append(norm)
        self.done = len(self.norms) > self.degree

    def apply(self) -> None:
        t = self.call.transform
        if not t.raw:
            t.alpha, t.norms2 = dict(enumerate(self.alpha)), dict(enumerate(self.norms))


def set_cubic_state(t: Any, knots: np.ndarray, centering: np.ndarray | None, null: np.ndarray,
                    period: float | None) -> None:
    """Set a ``cr`` (``period`` None) or ``cc`` transform's state from what the rows give:
    its knots (boundaries included), the centring matrix C (``get_centering_matrix`` of the
    basis' column means; None: not centred) and the penalty's null space
    (:func:`cubic_null`). ``formulae`` builds the uncentred spline and its penalty S from the
    knots alone (evaluated at the knots, where the cardinal basis is the identity); centring
    gives C' S C, as ``formulae`` sets them from all rows. The training basis kept for
    ``to_random()`` is left empty: it would be every row's."""
    knots = np.asarray(knots, dtype=float)
    if period is None:
        t._initialize(knots, None, knots[1:-1], float(knots[0]), float(knots[-1]), False)
    else:
        t._initialize(knots[:-1], period, None, knots[1:-1], float(knots[0]), False)
    if centering is not None:
        penalty = centering.T @ t._penalty_matrix @ centering
        t._center, t._centering_matrix, t._penalty_matrix = True, centering, (penalty + penalty.T) / 2
    t._set_random_state(np.empty((0, null.shape[0])), null)


def cubic_null(knots: np.ndarray, centering: np.ndarray | None, linear: tuple[float, float],
               period: float | None) -> np.ndarray:
    """The null space of a ``cr``/``cc`` penalty in basis coordinates: 1 and (``cr``) the
    knots standardised by the mean and sd (divisor n) of B k over the rows (``linear``); when
    centred, C' times the columns after the first."""
    knots = np.asarray(knots, dtype=float)
    if period is None:
        null = np.column_stack([np.ones(knots.size), (knots - linear[0]) / linear[1]])
    else:
        null = np.ones((knots.size - 1, 1))
    return null if centering is None else centering.T @ null[:, 1:]


class CubicSplineLearner:
    """``cr(x, df, knots, lower_bound, upper_bound, center)`` and ``cc(x, period, df, knots,
    lower_bound, center)``: the interior knots are ``np.quantile`` of the *distinct* values
    inside the bounds, at q = k / (K + 1). A :class:`RangeDistinctPass` gives the bounds (min
    and max of x unless given; ``cc``: [lower, lower + period)) and a bound on the distinct
    count, which sets the number of buckets of the de-duplication (:class:`DistinctSplit`);
    over the distinct values a :class:`RangePass` counts them and :class:`OrderStatistics`
    finds the knots' order statistics; a last :class:`CubicBasisPass` over the rows gives the
    centring, the rank check and the null space (:func:`set_cubic_state`)."""

    def __init__(self, call: StatefulCall):
        t, opts = call.transform, call.options()
        self.call, self.done = call, False
        self.period = None if isinstance(t, NaturalCubicSpline) else float(opts["period"])
        self.center = bool(opts.get("center", True))
        self.given_knots = None if opts.get("knots") is None else np.sort(np.asarray(opts["knots"], dtype=float))
        offset = (0 if self.center else 1) if self.period is not None else (1 if self.center else 2)
        self.n_inner = (int(opts.get("df") or 10) - offset) if self.given_knots is None else self.given_knots.size
        self.bounds = opts.get("lower_bound"), opts.get("upper_bound")
        self.rows = self.distinct = 0
        self.split: DistinctSplit | None = None
        self.order: OrderStatistics | None = None
        self.spline: Any = None  # the uncentred spline once the knots are known
        self.centering: np.ndarray | None = None
        self.linear = (0.0, 1.0)  # mean and sd of B k over the rows (cr's null space)

    def _quantiles(self) -> np.ndarray:
        return np.linspace(0, 1, self.n_inner + 2)[1:-1]

    def _refuse(self, why: str) -> ModelError:
        return ModelError(f"{self.call.name}(): {why} (over all rows); give a smaller df or other bounds")

    def request(self) -> Any:
        if self.rows == 0:
            return RangeDistinctPass()
        if self.spline is not None:
            return CubicBasisPass(self.spline)
        return OverDistinct(self.split, RangePass() if self.distinct == 0 else self.order.request())

    def advance(self, total: Any) -> None:
        if self.spline is not None:
            self._finish(total)
            return
        if self.rows == 0:
            self.rows, low, high, distinct_bound = total
            lo = float(low if self.bounds[0] is None else self.bounds[0])
            hi = lo + self.period if self.period is not None else float(high if self.bounds[1] is None else self.bounds[1])
            if lo >= hi:
                raise self._refuse(f"the lower bound {lo} is not below the upper bound {hi}")
            self.split = DistinctSplit(lo, hi, self.period, int(np.clip(-(-distinct_bound // BUCKET), 1, 1024)))
            return
        if self.distinct == 0:
            self.distinct, low, high = total
            required = self.n_inner + (1 if self.period is not None else 2)
            if self.distinct < required:
                raise self._refuse(f"{self.n_inner} interior knots need at least {required} distinct values inside "
                                   f"the bounds, and there are {self.distinct}")
            if self.given_knots is None:
                self.order = OrderStatistics.of_quantiles(self.distinct, self._quantiles(), float(low), float(high),
                                                          gather=True)
        else:
            self.order.advance(total)
        if self.given_knots is not None or self.order.done:
            self.spline = copy.copy(self.call.transform)
            try:
                knots = self._all_knots()
                set_cubic_state(self.spline, knots, None, cubic_null(knots, None, (0.0, 1.0), self.period), self.period)
            except ValueError as e:  # formulae's checks of given knots
                raise self._refuse(str(e).rstrip(".")) from None

    def _all_knots(self) -> np.ndarray:
        if self.given_knots is not None:
            inner = self.given_knots
        else:
            inner = self.order.quantiles(self.distinct, self._quantiles())
        return np.concatenate([[self.split.lo], inner, [self.split.hi]])

    def _finish(self, total: tuple) -> None:
        sums, r, moments = total
        singular = np.linalg.svd(r, compute_uv=False)
        if singular.size < sums.size or singular.min() <= singular.max() * max(self.rows, sums.size) * np.finfo(float).eps:
            raise self._refuse("the spline basis is rank deficient")
        self.centering = get_centering_matrix((sums / self.rows)[None, :]) if self.center else None
        self.linear = ((float(np.ravel(moments.mean)[0]), float(np.sqrt(np.ravel(moments.m2)[0] / moments.count)))
                       if self.period is None else (0.0, 1.0))
        self.done = True

    def apply(self) -> None:
        knots = self.spline._knots
        set_cubic_state(self.call.transform, knots, self.centering,
                        cubic_null(knots, self.centering, self.linear, self.period), self.period)


class RSplineLearner:
    """R's ``ns(x, df, knots, intercept)`` and ``bs(x, df, knots, degree, intercept,
    Boundary_knots)`` (:mod:`multilevel.rsplines`): a :class:`RangePass` gives n and the
    boundary knots (min and max of x, unless ``bs`` is given them), then the interior knots are
    R's ``quantile`` of all rows, from their order statistics (:class:`OrderStatistics`). As R,
    ``ns`` and ``bs`` take them over the rows inside given boundary knots [lo, hi]: when rows lie outside,
    an :class:`OutsidePass` counts those below lo and above hi, and the order statistics are
    those of the rest."""

    def __init__(self, call: StatefulCall):
        opts = call.options()
        self.call, self.done = call, False
        self.intercept = bool(opts.get("intercept", False))
        #: R's name of the spline, for messages
        self.spline = "bs" if isinstance(call.transform, RBSpline) else "ns"
        if self.spline == "bs":
            self.degree, self.bounds = RBSpline.options(opts.get("degree", 3), opts.get("lower_bound"),
                                                        opts.get("upper_bound"), opts.get("Boundary_knots"),
                                                        opts.get("center", False))
            self.n_inner = RBSpline.n_inner(opts.get("df"), opts.get("knots"), self.degree, self.intercept)
        else:
            self.degree = None
            self.bounds = given_boundary("ns", opts.get("Boundary_knots"))
            self.n_inner = RNaturalSpline.n_inner(opts.get("df"), opts.get("knots"), self.intercept)
        self.given = None if self.n_inner is not None else np.sort(np.asarray(opts["knots"], dtype=float).ravel())
        self.n = 0
        self.boundary: np.ndarray | None = None
        self.order: OrderStatistics | None = None

    def _probabilities(self) -> np.ndarray:
        return knot_probabilities(self.n_inner) if self.given is None else np.zeros(0)

    def request(self) -> Any:
        if self.n == 0:
            return RangePass()
        return OutsidePass(*self.boundary) if self.order is None else self.order.request()

    def advance(self, total: Any) -> None:
        if self.n == 0:
            self.n, low, high = total
            lo, hi = (low if b is None else float(b) for b, low in zip(self.bounds, (low, high)))
            self.boundary = np.array([lo, hi], dtype=float)
            if self.given is None and self.n_inner and (low < lo or high > hi):
                return  # the knots are quantiles of the rows inside: an OutsidePass counts the others
            self.order = OrderStatistics.of_quantiles(self.n, self._probabilities(), float(low), float(high), r=True)
        elif self.order is None:
            below, above = total
            inside = self.n - below - above
            check_inside(self.spline, inside, self.boundary)
            self.n = inside
            self.order = OrderStatistics.of_quantiles(inside, self._probabilities(), *self.boundary, r=True, below=below)
        else:
            self.order.advance(total)
        if self.order is not None and self.order.done:
            self.knots = self.given if self.given is not None else self.order.quantiles(self.n, self._probabilities(),
                                                                                      r=True)
            self._state(type(self.call.transform)())  # checks them
            self.done = True

    def _state(self, t: Any) -> None:
        if isinstance(t, RBSpline):
            t.set_state(self.knots, self.boundary, self.degree, self.intercept)
        else:
            t.set_state(self.knots, self.boundary, self.intercept)

    def apply(self) -> None:
        self._state(self.call.transform)


#: the learner of each stateful transform the Dask engine learns over partitions
LEARNERS = {Center: MomentsLearner, Scale: MomentsLearner, RScale: MomentsLearner,
            Polynomial: PolynomialLearner, NaturalCubicSpline: CubicSplineLearner, CyclicCubicSpline: CubicSplineLearner,
            RNaturalSpline: RSplineLearner, RBSpline: RSplineLearner}


def learner_of(call: StatefulCall, formula: str) -> Any:
    """The learner of ``call``, or a one-line refusal naming what to do."""
    learner = LEARNERS.get(type(call.transform))
    if learner is None or call.arg is None:
        why = (": its basis is an eigendecomposition over the distinct values; write cr(x, df=...) or bs(x, df=...) "
               "instead," if hasattr(call.transform, "to_random") else ";")  # formulae's thin-plate spline
        raise ModelError(f"engine='dask' learns center(), scale(), standardize(), bs(), ns(), cr(), cc() and poly() over all "
                         f"rows, not {call.name}() (formula {formula!r}){why} compute that column before fitting, or "
                         "use the in-memory engine")
    return learner(call)


class Combine:
    """How two partitions' partial results of the passes ``passes`` combine (a picklable
    function of two arguments for :func:`multilevel.distributed.reduce.tree_reduce`)."""

    def __init__(self, passes: list[Any]):
        self.passes = passes

    def __call__(self, a: list[Any], b: list[Any]) -> list[Any]:
        return [p.combine(u, v) for p, u, v in zip(self.passes, a, b)]


def learning_pass(frame: Any, plan: Any, arguments: list[tuple[Any, Any]], passes: list[Any]) -> list[Any]:
    """One partition's partial results of ``passes``, each of its call's argument (``arguments``:
    (lazy argument, environment) per pass) evaluated on the partition's rows kept."""
    from .plan import prepare

    kept, _ = prepare(frame, plan)
    return [p.partial(argument_values(kept, arg, env)) for (arg, env), p in zip(arguments, passes)]


def argument_values(kept: Any, arg: Any, env: Any) -> np.ndarray:
    """A call's argument evaluated on the rows ``kept``, as floats."""
    return np.asarray(arg.eval(kept, env), dtype=float).ravel()


def distinct_split(frame: Any, plan: Any, argument: tuple[Any, Any], split: DistinctSplit) -> list[np.ndarray]:
    """One partition's :class:`DistinctSplit` of a call's argument on its rows kept."""
    from .plan import prepare

    kept, _ = prepare(frame, plan)
    return split(argument_values(kept, *argument))


def distinct_total(parts: list[Any], plan: Any, argument: tuple[Any, Any], request: OverDistinct) -> Any:
    """The total of ``request.inner`` over the distinct values of the argument (delayed): each
    partition splits its distinct values into buckets, each bucket is de-duplicated over all
    partitions, and the buckets' partial results combine in a fixed tree."""
    from dask import delayed

    from .reduce import tree_reduce

    splits = [delayed(distinct_split)(p, plan, argument, request.split) for p in parts]
    buckets = [delayed(merge_bucket)(splits, b) for b in range(request.split.buckets)]
    return tree_reduce([delayed(request.inner.partial)(b) for b in buckets], request.inner.combine)


def learn_states(calls: list[StatefulCall], parts: list[Any], plan: Any, compute: Any) -> int:
    """Learn the state of every stateful call over the partitions ``parts`` (delayed frames)
    and set it on the call's transform (module doc). Returns the number of passes made: the
    passes over rows of all calls read each partition once together, a pass over a call's
    distinct values (:class:`OverDistinct`) is one more read, made in the same computation."""
    from dask import delayed

    from .reduce import tree_reduce

    learners = [learner_of(c, plan.spec.formula) for c in calls]
    passes = 0
    while any(not lr.done for lr in learners):
        pending = [lr for lr in learners if not lr.done]
        requests = [lr.request() for lr in pending]
        over_rows = [i for i, r in enumerate(requests) if not isinstance(r, OverDistinct)]
        graphs = [distinct_total(parts, delayed(plan, pure=True), (lr.call.arg, lr.call.env), r)
                  for lr, r in zip(pending, requests) if isinstance(r, OverDistinct)]
        if over_rows:
            rows = [requests[i] for i in over_rows]
            shared = (delayed(plan, pure=True), delayed([(pending[i].call.arg, pending[i].call.env) for i in over_rows],
                                                        pure=True), delayed(rows, pure=True))
            graphs.append(tree_reduce([delayed(learning_pass)(p, *shared) for p in parts], Combine(rows)))
        results = list(compute(graphs))
        totals = dict(zip(over_rows, results.pop() if over_rows else []))
        totals.update(zip((i for i, r in enumerate(requests) if isinstance(r, OverDistinct)), results))
        for i, lr in enumerate(pending):
            lr.advance(totals[i])
        passes += 1
    for lr in learners:
        lr.apply()
    return passes


# -- saved states


def transform_state(t: Any) -> dict[str, Any]:
    """The learned state of a stateful transform as JSON-ready numbers (saved with a Dask fit)."""
    if isinstance(t, RScale):
        return {"kind": "r_scale", "mean": t.mean, "sd": t.sd}
    if isinstance(t, RNaturalSpline):
        return {"kind": "ns", "knots": t.knots.tolist(), "boundary": t.boundary.tolist(), "intercept": t.intercept}
    if isinstance(t, RBSpline):
        return {"kind": "r_bs", "knots": t.knots.tolist(), "boundary": t.boundary.tolist(), "degree": t.degree,
                "intercept": t.intercept}
    if isinstance(t, Scale):
        return {"kind": "scale", "mean": float(t.mean), "std": float(t.std)}
    if isinstance(t, Center):
        return {"kind": "center", "mean": float(t.mean)}
    if isinstance(t, (NaturalCubicSpline, CyclicCubicSpline)):
        return {"kind": t.__transform_name__, "knots": np.asarray(t._knots, dtype=float).tolist(),
                "period": getattr(t, "_period", None), "null": np.asarray(t._random_state["null"]).tolist(),
                "centering": None if t._centering_matrix is None else np.asarray(t._centering_matrix).tolist()}
    if isinstance(t, Polynomial):
        return {"kind": "poly", "degree": int(t.degree), "raw": bool(t.raw),
                "alpha": [float(t.alpha[k]) for k in sorted(t.alpha)], "norms2": [float(t.norms2[k]) for k in sorted(t.norms2)]}
    raise ModelError(f"no saved state for the transform {type(t).__name__}")


def restore_state(t: Any, state: Any) -> None:
    """Set a transform's learned state (:func:`transform_state`; also a fit saved before states
    were dicts: [mean, sd or None] of ``center``/``scale``)."""
    if isinstance(state, list):
        state = {"kind": "center", "mean": state[0]} if state[1] is None else {"kind": "scale", "mean": state[0],
                                                                                 "std": state[1]}
    kind = state["kind"]
    if kind == "r_scale":
        t.mean, t.sd = state["mean"], state["sd"]
    elif kind == "ns":
        t.set_state(state["knots"], state["boundary"], state["intercept"])
        return
    elif kind == "r_bs":
        t.set_state(state["knots"], state["boundary"], state["degree"], state["intercept"])
        return
    elif kind in ("center", "scale"):
        t.mean = state["mean"]
        if kind == "scale":
            t.std = state["std"]
    elif kind in ("cr", "cc"):
        centering = None if state["centering"] is None else np.asarray(state["centering"], dtype=float)
        set_cubic_state(t, np.asarray(state["knots"], dtype=float), centering, np.asarray(state["null"], dtype=float),
                        state["period"])
        return
    elif kind == "poly":
        t.degree, t.raw = state["degree"], state["raw"]
        t.alpha, t.norms2 = dict(enumerate(state["alpha"])), dict(enumerate(state["norms2"]))
        return
    t.params_set = True


__all__ = ["LEARNERS", "StatefulCall", "learn_states", "quantile_of_order_statistics", "restore_state",
           "transform_state"]
