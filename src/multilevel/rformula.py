"""R spellings in formulas: what lme4 users type, read as its Python spelling would be.

Two mechanisms, so that one formula string works wherever it is parsed or evaluated
(fitting, predictions on new data, a saved fit loaded again):

* R's functions are provided by name in the namespace where ``formulae`` evaluates the
  formula (:data:`FORMULA_NAMESPACE`): ``log(x)`` is ``np.log(x)``, ``factor(x)`` and
  ``as.factor(x)`` are ``C(x)``, ``relevel(x, ref = "b")`` is ``C(x, Treatment("b"))``.
  Their terms keep the user's spelling (``log(x)``, ``factor(YEAR)[96]``).
* R syntax ``formulae`` cannot read is rewritten in the text before parsing
  (:func:`python_spelling`): ``^`` becomes ``**`` (power inside a call such as ``I(x^2)``,
  crossing of terms outside, as in R; ``formulae``'s ``**`` means both), ``TRUE``/``FALSE``
  become ``True``/``False``, and ``scale(`` becomes ``r_scale(``, R's scale (centre, divide
  by the *sample* sd), because ``formulae``'s own ``scale`` divides by the population sd.

Column labels are shown as the user wrote them (:func:`display_labels`): ``r_scale`` reads
``scale`` again, and the columns of ``poly(x, 2)`` are numbered by degree from 1, as in R.
``poly`` itself is ``formulae``'s, R's orthogonal polynomials (the three-term recurrence of
R's ``poly``, basis kept from the fitted data for new data); ``raw = TRUE`` gives powers.
``ns(x, df)`` and ``bs(x, df, degree)`` are R's natural spline and B-spline
(:mod:`multilevel.rsplines`), columns and so coefficients as lme4's.
"""

from __future__ import annotations

import re
from functools import reduce
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from formulae.categorical import ENCODINGS, CategoricalBox, Treatment
from formulae.transforms import TRANSFORMS, C

from .errors import ModelError
from .rsplines import RBSpline, RNaturalSpline


class RScale:
    """R's ``scale(x)``: ``(x - mean) / sd`` with the sample sd (n - 1), both kept from the
    fitted data for new data (a ``formulae`` stateful transform)."""

    __stateful_transform__ = True

    def __init__(self) -> None:
        self.mean: float | None = None
        self.sd: float | None = None

    def __call__(self, x: Any, center: bool = True, scale: bool = True) -> np.ndarray:
        values = np.asarray(x, dtype=float)
        if self.mean is None:
            self.mean = float(np.mean(values)) if center else 0.0
            spread = np.sqrt(np.sum((values - self.mean) ** 2) / max(values.size - 1, 1))
            self.sd = float(spread) if scale else 1.0
            if self.sd == 0.0:
                raise ModelError("scale(x) of a constant column divides by a zero sd; drop the term or use center(x)")
        return (values - self.mean) / self.sd


def r_log(x: Any, base: float | None = None) -> Any:
    """R's ``log(x, base)``: the natural log, or the log to ``base``."""
    return np.log(x) if base is None else np.log(x) / np.log(base)


def plogis(x: Any) -> Any:
    """R's ``plogis``: the logistic function 1 / (1 + exp(-x))."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=float)))


def qlogis(p: Any) -> Any:
    """R's ``qlogis``: the logit log(p / (1 - p))."""
    p = np.asarray(p, dtype=float)
    return np.log(p) - np.log1p(-p)


def relevel(x: Any, ref: Any) -> CategoricalBox:
    """R's ``relevel(x, ref = "b")``: ``x`` as a category with treatment contrasts against
    ``ref``. ``ref`` may be written as a string for a numeric column (``ref = "96"``), as in R."""
    box = C(x)
    levels = box.levels if box.levels is not None else sorted(pd.unique(np.asarray(box.data)).tolist())
    match = [v for v in levels if v == ref or str(v) == str(ref)]
    if not match:
        shown = ", ".join(map(str, levels[:12]))
        raise ModelError(f"relevel: reference level {ref!r} is not a level of the column (levels: {shown})")
    return C(box, Treatment(match[0]))


def binomial_successes(y: Any, n: Any) -> pd.Series:
    """The successes y n of a proportion y out of n trials (lme4's binomial proportion with
    ``weights = n``), refused unless whole numbers (to 1e-8): lme4 warns of "non-integer
    #successes"."""
    successes = pd.Series(np.asarray(y, dtype=float) * np.asarray(n, dtype=float), index=getattr(y, "index", None))
    whole = successes.round()
    if not np.allclose(successes, whole, rtol=0, atol=1e-8):
        raise ModelError("a binomial proportion times its trials (weights) must be whole numbers of successes; "
                         "check that the weights are the trials")
    return whole


def r_c(*values: Any) -> np.ndarray:
    """R's ``c(...)``: the values joined into one vector, as in ``ns(x, knots = c(2, 5, 9))``."""
    return np.concatenate([np.ravel(np.asarray(v)) for v in values]) if values else np.zeros(0)


def _as_numeric(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=float)


def _as_character(x: Any) -> np.ndarray:
    return np.asarray(x).astype(str)


#: R functions by their R names, as lme4 users write them, with NumPy's meaning
R_FUNCTIONS: dict[str, Any] = {
    "log": r_log, "log10": np.log10, "log2": np.log2, "log1p": np.log1p, "exp": np.exp, "expm1": np.expm1,
    "sqrt": np.sqrt, "abs": np.abs, "sign": np.sign, "floor": np.floor, "ceiling": np.ceil, "trunc": np.trunc,
    "round": np.round, "sin": np.sin, "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos,
    "atan": np.arctan, "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh,
    "pmin": lambda *xs: reduce(np.minimum, xs), "pmax": lambda *xs: reduce(np.maximum, xs),
    "plogis": plogis, "qlogis": qlogis, "c": r_c,
    "factor": C, "relevel": relevel, "r_scale": RScale, "ns": RNaturalSpline, "r_bs": RBSpline,
    "as": SimpleNamespace(factor=C, numeric=_as_numeric, character=_as_character),
}

#: everything a formula's functions may name besides formulae's own transforms
FORMULA_NAMESPACE: dict[str, Any] = {**R_FUNCTIONS, "np": np, "numpy": np, "pd": pd, "pandas": pd,
                                     "binomial_successes": binomial_successes}

#: the Python spelling of functions users write that are not known here
HINTS = {
    "logit": "qlogis(x) (R's name) or np.log(x / (1 - x))",
    "inv.logit": "plogis(x)", "invlogit": "plogis(x)", "inv_logit": "plogis(x)", "expit": "plogis(x)",
    "s": "ns(x, df=4) (R's natural spline), bs(x, df=4) or cr(x, df=4)",
    "interaction": "a:b for the interaction of a and b",
    "ordered": "factor(x) (ordered-factor contrasts are not supported)",
    "as.integer": "np.trunc(x)", "as.double": "as.numeric(x)",
    "cbind": "cbind(successes, failures) only as the response of a binomial model",
}

_QUOTED = re.compile(r"('[^']*'|\"[^\"]*\"|`[^`]*`)")
_REWRITES = (
    (re.compile(r"\^"), "**"),
    (re.compile(r"(?<![\w.])TRUE(?![\w.])"), "True"),
    (re.compile(r"(?<![\w.])FALSE(?![\w.])"), "False"),
    (re.compile(r"(?<![\w.])scale(?=\s*\()"), "r_scale"),
    (re.compile(r"(?<![\w.])bs(?=\s*\()"), "r_bs"),
    (re.compile(r"(?<![\w.])Boundary\.knots(?=\s*=)"), "Boundary_knots"),
)

#: R's functions that formulae has under the same name, renamed inside (:func:`python_spelling`)
INTERNAL_NAMES = {"r_scale": "scale", "r_bs": "bs"}
_CALLEE = re.compile(r"(?<![\w.])([A-Za-z_][\w.]*)\s*\(")


def _unquoted(text: str, edit: Any) -> str:
    """``text`` with ``edit`` applied to the parts outside quotes and backticks."""
    parts = _QUOTED.split(text)
    return "".join(part if i % 2 else edit(part) for i, part in enumerate(parts))


def python_spelling(formula: str) -> str:
    """The formula with R-only syntax rewritten for ``formulae``: ``^`` as ``**``,
    ``TRUE``/``FALSE`` as ``True``/``False``, ``scale(`` and ``bs(`` as R's ``r_scale(`` and ``r_bs(``
    (:data:`INTERNAL_NAMES`), the argument name ``Boundary.knots =`` as ``Boundary_knots =``.
    Quoted text is kept."""
    def edit(part: str) -> str:
        for pattern, repl in _REWRITES:
            part = pattern.sub(repl, part)
        return part

    return _unquoted(formula, edit)


def _resolves(name: str) -> bool:
    """Whether a function name (``log``, ``np.log``, ``as.factor``) is known when evaluating."""
    root, *attrs = name.split(".")
    if root in TRANSFORMS or root in ENCODINGS:
        return not attrs
    if root not in FORMULA_NAMESPACE:
        return False
    obj = FORMULA_NAMESPACE[root]
    for attr in attrs:
        if not hasattr(obj, attr):
            return False
        obj = getattr(obj, attr)
    return callable(obj)


def unknown_function_hint(name: str) -> str:
    """What to write instead of the unknown function ``name``."""
    if name in HINTS:
        return f"write {HINTS[name]}"
    if name.startswith(("np.", "numpy.")):
        return "check the spelling of the NumPy function"
    last = name.split(".")[-1]
    if callable(getattr(np, name, None)):
        return f"use NumPy's spelling np.{name}(x)"
    return ("use NumPy's functions as np.<name>(x), formulae's C, I, center, poly, cr, offset, "
            f"or R's {', '.join(INTERNAL_NAMES.get(k, k) for k in R_FUNCTIONS if k != 'as')}, as.factor, as.numeric, "
            "as.character"
            + (f" (did you mean np.{last}?)" if callable(getattr(np, last, None)) else ""))


def check_functions(text: str, formula: str | None = None) -> None:
    """Refuse a formula ``text`` calling a function that is not known, naming what to write
    instead (and ``formula``, the formula as the user wrote it, when given)."""
    formula = text if formula is None else formula
    parts = _QUOTED.split(python_spelling(text))[::2]
    names = [name for part in parts for name in _CALLEE.findall(part)]
    for name in dict.fromkeys(names):
        if not _resolves(name):
            shown = INTERNAL_NAMES.get(name, name)
            raise ModelError(f"function {shown!r} in formula {formula!r} is unknown; {unknown_function_hint(shown)}")


def display_labels(term: Any) -> list[str]:
    """A ``formulae`` term's column labels as the user wrote them: ``scale`` for ``r_scale``,
    and the columns of ``poly(x, k)``, ``ns(x, df)`` and ``bs(x, df)`` numbered from 1 as in R (formulae counts
    from 0)."""
    labels = list(term.labels)
    for component in getattr(term, "components", []):
        call = getattr(component, "call", None)
        if getattr(call, "callee", None) in ("poly", "ns", "r_bs"):
            index = re.compile(re.escape(component.name) + r"\[(\d+)\]")
            labels = [index.sub(lambda m: f"{component.name}[{int(m.group(1)) + 1}]", s) for s in labels]
    return [display_name(s) for s in labels]


def display_name(text: str) -> str:
    """A term or expression as the user wrote it: R's ``scale`` and ``bs`` for the internal
    ``r_scale`` and ``r_bs``."""
    return re.sub(r"(?<![\w.])(r_scale|r_bs)\(", lambda m: INTERNAL_NAMES[m.group(1)] + "(", text)


__all__ = ["FORMULA_NAMESPACE", "R_FUNCTIONS", "RScale", "check_functions", "display_labels", "display_name",
           "python_spelling", "unknown_function_hint"]
