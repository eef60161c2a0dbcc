r"""R's natural cubic spline basis ``ns(x, df, knots, intercept)`` (package ``splines``), as a
``formulae`` stateful transform: the columns, so the fixed effects, are R's, and a fit's
coefficients of ``ns(x, df = 4)`` are lme4's.

With B the cubic B-spline basis of the knots A = (b_0 x 4, interior knots, b_1 x 4)
(R's ``splineDesign(A, x, 4)``; the boundary knots b_0, b_1 are min x and max x unless
given, ``Boundary.knots``) and
C = (B''(b_0); B''(b_1)) its second derivatives at the boundaries, a natural spline has
C beta = 0. Without ``intercept`` the first column of B and C is dropped. With Q the
complete orthogonal factor of the QR decomposition of C' (Householder, as R's ``qr``), the
basis is B Q without Q's first two columns: the splines whose second derivatives vanish at the
boundaries, df = K + 1 + intercept columns for K interior knots. Beyond the boundary knots
each column continues along its tangent at the nearer boundary, as R's ``ns`` does.

The interior knots are R's ``quantile(x, p)`` (type 7) at p = k / (K + 1), k = 1..K, with
K = df - 1 - intercept, of the values of x inside the boundary knots (:func:`fitted_knots`):
for n values sorted x_(1..n), index = 1 + (n - 1) p,
lo = floor(index), h = index - lo, and the knot is (1 - h) x_(lo) + h x_(lo + 1) (x_(lo)
when h = 0 or the two are equal): R's arithmetic, so R's knots to the last bit
(:func:`r_quantile_of_order_statistics`; over partitions the order statistics are found as
``bs``'s are, :mod:`multilevel.distributed.learn`).

R's B-spline basis ``bs(x, df, knots, degree = 3, intercept = FALSE)`` (:class:`RBSpline`) is
the B-splines of order d + 1 of the knots A = (b_0 x (d + 1), interior knots, b_1 x (d + 1)),
R's ``splineDesign(A, x, d + 1)``, without the first column unless ``intercept``: df = K + d +
intercept columns for K interior knots, K = df - d - intercept of them at R's quantiles as
above. Beyond the boundary knots each column is its degree-d Taylor polynomial
at the pivot k = (3/4) b + (1/4) a, b the nearer boundary knot and a the next knot inward
(A[d + 2] or A[-(d + 2)]), as R's ``bs`` computes it (R 3.2.3 and later).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy.interpolate import BSpline

from .errors import ModelError

ORDER = 4  # cubic


def r_quantile_ranks(n: int, p: np.ndarray) -> np.ndarray:
    """The 0-based rank of x_(lo) of R's type-7 quantile at each p (module doc)."""
    index = 1 + (n - 1) * np.asarray(p, dtype=float)
    return np.clip(np.floor(index).astype(np.int64) - 1, 0, n - 1)


def r_quantile_of_order_statistics(n: int, p: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """R's ``quantile(x, p)`` (type 7) of n values from x_(lo) (``lower``) and x_(lo + 1)
    (``upper``) at the ranks :func:`r_quantile_ranks`."""
    index = 1 + (n - 1) * np.asarray(p, dtype=float)
    h = index - np.floor(index)
    return np.where((h > 0) & (upper != lower), (1 - h) * lower + h * upper, lower)


def r_quantile(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """R's ``quantile(x, p)`` (type 7) of the values ``x``."""
    s = np.sort(np.asarray(x, dtype=float))
    r = r_quantile_ranks(s.size, p)
    return r_quantile_of_order_statistics(s.size, p, s[r], s[np.minimum(r + 1, s.size - 1)])


def given_boundary(name: str, Boundary_knots: Any, lower_bound: Any = None, upper_bound: Any = None) -> tuple[Any, Any]:
    """The boundary knots asked for, as (lo, hi), None where not given (the range of x): R's
    ``Boundary.knots = c(lo, hi)`` (sorted, as R sorts them) or ``lower_bound=``, ``upper_bound=``."""
    if Boundary_knots is None:
        return lower_bound, upper_bound
    if lower_bound is not None or upper_bound is not None:
        raise ModelError(f"{name}(): give Boundary_knots=[lo, hi] or lower_bound= and upper_bound=, not both")
    lo, hi = np.sort(np.asarray(Boundary_knots, dtype=float).ravel())[[0, -1]]
    return lo, hi


#: set while the Dask engine builds its prototype design from a few rows (:func:`template_knots`)
_TEMPLATE = contextvars.ContextVar("template_knots", default=False)


@contextlib.contextmanager
def template_knots() -> Iterator[None]:
    """Within the block, knots from df that the rows cannot place (too few distinct values
    inside the boundary knots) are spread evenly instead: the Dask engine's prototype of a few
    rows needs the basis's columns only, its knots are then learned from every partition
    (:mod:`multilevel.distributed.learn`)."""
    token = _TEMPLATE.set(True)
    try:
        yield
    finally:
        _TEMPLATE.reset(token)


def fitted_knots(name: str, values: np.ndarray, n_inner: int | None, knots: Any, bounds: tuple[Any, Any]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """R's knots from the fitted x (module doc): the boundary knots (``bounds``, or the range of
    x where None) and the interior ones, ``knots`` sorted (``n_inner`` None) or R's quantiles at
    :func:`knot_probabilities` of the values inside the boundary knots, as R's ``ns`` and
    ``bs`` take them (spread evenly within :func:`template_knots` when those are not distinct
    and strictly inside). Returns (interior, boundary)."""
    lo, hi = bounds
    boundary = np.array([values.min() if lo is None else float(lo), values.max() if hi is None else float(hi)])
    if n_inner is None:
        return np.sort(np.asarray(knots, dtype=float).ravel()), boundary
    if not n_inner:
        return np.zeros(0), boundary
    inside = values[(values >= boundary[0]) & (values <= boundary[1])]
    if _TEMPLATE.get():
        inner = r_quantile(inside, knot_probabilities(n_inner)) if inside.size else np.zeros(0)
        if inner.size != n_inner or np.any(np.diff(np.concatenate([boundary[:1], inner, boundary[1:]])) <= 0):
            inner = boundary[0] + (boundary[1] - boundary[0]) * knot_probabilities(n_inner)
        return inner, boundary
    check_inside(name, inside.size, boundary)
    return r_quantile(inside, knot_probabilities(n_inner)), boundary


def check_inside(name: str, count: int, boundary: Any) -> None:
    """Refuse knots from df when no value of x lies inside the boundary knots (R's quantiles of none)."""
    if count == 0:
        raise ModelError(f"{name}(): no value of x lies inside the boundary knots {np.asarray(boundary).tolist()}, "
                         "so df cannot place knots; give boundary knots that hold the data, or knots=")


def knot_probabilities(n_inner: int) -> np.ndarray:
    """p = k / (K + 1), k = 1..K, as R's ``seq.int(0, 1, length.out = K + 2)`` without its ends."""
    return np.arange(1, n_inner + 1) * (1.0 / (n_inner + 1))


def spline_design(knots: np.ndarray, x: np.ndarray, derivative: int = 0, order: int = ORDER) -> np.ndarray:
    """R's ``splineDesign(knots, x, order, derivs)``: the B-splines of ``order`` (cubic: 4) of
    ``knots`` (or their ``derivative``) at x, inside the boundary knots (right end included)."""
    basis = BSpline(knots, np.eye(knots.size - order), order - 1, extrapolate=True)
    return basis(np.asarray(x, dtype=float), nu=derivative)  # derivatives by de Boor: repeated knots allowed, as R


class RNaturalSpline:
    """R's ``ns(x, df = NULL, knots = NULL, intercept = FALSE, Boundary.knots = range(x))``
    (module doc; ``Boundary.knots`` as ``Boundary_knots=[lo, hi]``): the knots and the boundary
    knots are learned from the fitted data and kept for new data (a ``formulae`` stateful
    transform)."""

    __stateful_transform__ = True

    def __init__(self) -> None:
        self.knots: np.ndarray | None = None  # interior
        self.boundary: np.ndarray | None = None
        self.intercept = False

    @staticmethod
    def n_inner(df: Any, knots: Any, intercept: bool) -> int | None:
        """The number of interior knots ``df`` asks for (None: ``knots`` gives them)."""
        if knots is not None:
            return None
        if df is None:
            return 0
        if int(df) != df or df < 1 + intercept:
            raise ModelError(f"ns(): df = {df} must be a whole number of at least {1 + intercept} (the spline's "
                             "columns)")
        return int(df) - 1 - int(intercept)

    def __call__(self, x: Any, df: Any = None, knots: Any = None, intercept: bool = False,
                 Boundary_knots: Any = None) -> np.ndarray:
        values = np.asarray(x, dtype=float)
        if self.boundary is None:
            n_inner = self.n_inner(df, knots, bool(intercept))
            inner, boundary = fitted_knots("ns", values, n_inner, knots, given_boundary("ns", Boundary_knots))
            self.set_state(inner, boundary, bool(intercept))
        return self.basis(values)

    def set_state(self, knots: np.ndarray, boundary: np.ndarray, intercept: bool) -> None:
        """Keep the interior ``knots``, the ``boundary`` knots and ``intercept``, checked."""
        knots, boundary = np.asarray(knots, dtype=float), np.asarray(boundary, dtype=float)
        if not boundary[0] < boundary[1]:
            raise ModelError("ns(): x takes a single value; a spline needs at least two")
        if np.any(knots <= boundary[0]) or np.any(knots >= boundary[1]):
            raise ModelError(f"ns(): the interior knots {np.round(knots, 6).tolist()} must lie strictly between the "
                             f"boundary knots {boundary.tolist()}; give fewer knots (df) or other knots")
        self.knots, self.boundary, self.intercept = knots, boundary, intercept

    def basis(self, x: np.ndarray) -> np.ndarray:
        """The basis at x from the kept state (module doc)."""
        b0, b1 = self.boundary
        all_knots = np.concatenate([[b0] * ORDER, self.knots, [b1] * ORDER])
        inside = np.clip(x, b0, b1)
        basis = spline_design(all_knots, inside)
        for pivot, rows in ((b0, x < b0), (b1, x > b1)):
            if rows.any():  # the tangent at the boundary
                slope = spline_design(all_knots, [pivot], 1)
                basis[rows] = basis[rows] + np.outer(x[rows] - pivot, slope)
        const = spline_design(all_knots, self.boundary, 2)
        if not self.intercept:
            basis, const = basis[:, 1:], const[:, 1:]
        q, _ = np.linalg.qr(const.T, mode="complete")
        return basis @ q[:, 2:]


class RBSpline:
    """R's ``bs(x, df = NULL, knots = NULL, degree = 3, intercept = FALSE)`` (module doc); the
    boundary knots (R's ``Boundary.knots``, default the range of x) as ``Boundary_knots=[lo, hi]``
    or ``lower_bound=``, ``upper_bound=``. The knots are learned from the fitted data and kept
    for new data (a ``formulae`` stateful transform)."""

    __stateful_transform__ = True

    def __init__(self) -> None:
        self.knots: np.ndarray | None = None  # interior
        self.boundary: np.ndarray | None = None
        self.degree = 3
        self.intercept = False

    @staticmethod
    def n_inner(df: Any, knots: Any, degree: int, intercept: bool) -> int | None:
        """The number of interior knots ``df`` asks for (None: ``knots`` gives them)."""
        if knots is not None:
            return None
        if df is None:
            return 0
        if int(df) != df or df < degree + intercept:
            raise ModelError(f"bs(): df = {df} must be a whole number of at least {degree + intercept} (degree "
                             f"{degree}{' plus the intercept' if intercept else ''})")
        return int(df) - degree - int(intercept)

    @staticmethod
    def options(degree: Any, lower_bound: Any, upper_bound: Any, Boundary_knots: Any, center: Any) -> tuple[int, Any]:
        """The degree, checked, and the boundary knots asked for (None: the range of x)."""
        if center:
            raise ModelError("bs() is R's B-spline basis, whose columns are not centred: leave out center=True")
        if int(degree) != degree or degree < 1:
            raise ModelError(f"bs(): degree = {degree} must be a whole number of at least 1")
        return int(degree), given_boundary("bs", Boundary_knots, lower_bound, upper_bound)

    def __call__(self, x: Any, df: Any = None, knots: Any = None, degree: Any = 3, intercept: bool = False,
                 Boundary_knots: Any = None, lower_bound: Any = None, upper_bound: Any = None,
                 center: Any = False) -> np.ndarray:
        values = np.asarray(x, dtype=float)
        if self.boundary is None:
            degree, bounds = self.options(degree, lower_bound, upper_bound, Boundary_knots, center)
            n_inner = self.n_inner(df, knots, degree, bool(intercept))
            inner, boundary = fitted_knots("bs", values, n_inner, knots, bounds)
            self.set_state(inner, boundary, degree, bool(intercept))
        return self.basis(values)

    def set_state(self, knots: Any, boundary: Any, degree: int, intercept: bool) -> None:
        """Keep the interior ``knots``, the ``boundary`` knots, ``degree`` and ``intercept``, checked."""
        knots, boundary = np.asarray(knots, dtype=float), np.asarray(boundary, dtype=float)
        if not boundary[0] < boundary[1]:
            raise ModelError("bs(): x takes a single value (or the boundary knots are not increasing); a spline "
                             "needs at least two")
        if np.any(knots < boundary[0]) or np.any(knots > boundary[1]):
            raise ModelError(f"bs(): the interior knots {np.round(knots, 6).tolist()} must lie between the boundary "
                             f"knots {boundary.tolist()}; give other knots or boundary knots")
        self.knots, self.boundary, self.degree, self.intercept = knots, boundary, int(degree), bool(intercept)

    def basis(self, x: np.ndarray) -> np.ndarray:
        """The basis at x from the kept state (module doc)."""
        order = self.degree + 1
        b0, b1 = self.boundary
        all_knots = np.concatenate([[b0] * order, self.knots, [b1] * order])
        basis = spline_design(all_knots, np.clip(x, b0, b1), order=order)
        factorials = np.cumprod(np.concatenate([[1.0], np.arange(1.0, order)]))
        for rows, pivot in ((x < b0, 0.75 * b0 + 0.25 * all_knots[order]),
                            (x > b1, 0.75 * b1 + 0.25 * all_knots[-order - 1])):
            if rows.any():  # the Taylor polynomial of degree d at the pivot
                derivs = np.vstack([spline_design(all_knots, [pivot], k, order) for k in range(order)]) / factorials[:, None]
                basis[rows] = np.vander(x[rows] - pivot, order, increasing=True) @ derivs
        return basis if self.intercept else basis[:, 1:]


__all__ = ["RBSpline", "RNaturalSpline", "check_inside", "fitted_knots", "given_boundary", "r_quantile",
           "template_knots", "r_quantile_of_order_statistics", "r_quantile_ranks",
           "spline_design"]
