"""Random-effects terms of an lme4 formula: ``(expr | factor)``, after lme4's expansions.

lme4 reads any number of terms ``(expr | factor)``; each term k has its own covariance
Sigma_k. Two shorthands expand into several terms, as lme4's ``findbars`` does:

* nesting, ``(x | a/b)`` = ``(x | a) + (x | a:b)`` (and ``a/b/c`` adds ``a:b:c``);
* uncorrelated terms, ``(x || g)`` = ``(1 | g) + (0 + x | g)``: one term per expression of
  the left side (the intercept one of them), so no covariance between them. Like lme4, an
  expression is a formula term, not a design column: ``(c || g)`` of a categorical ``c``
  gives ``(1 | g) + (0 + c | g)``, the levels of ``c`` correlated within their term.

``(1 | a:b)`` is an interaction factor: its levels are the combinations of ``a`` and ``b``
present in the data, so casks ``'a'..'c'`` reused in every batch are different levels of
``batch:cask`` (:mod:`multilevel.factors`).

``formulae`` expands ``/`` inside a group term but flattens every term into (expression,
factor) pairs, so ``(1 + x | g)`` and ``(1 | g) + (0 + x | g)`` read the same there, and it
does not parse ``||``. The terms are therefore read here from the formula text: each
parenthesised ``(lhs | factor)`` or ``(lhs || factor)`` not inside a function call, its
left side's expressions named by ``formulae``, its factor split on ``/`` and ``:``; the
result is checked against ``formulae``'s own pairs (:func:`check_against_formulae`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from formulae import model_description

from .errors import ModelError
from .rformula import display_name

INTERCEPT = "Intercept"

#: a data column as a grouping factor names it: a plain name, or any text in backticks
_COLUMN = re.compile(r"^(?:[A-Za-z_][\w.]*|`[^`]+`)$")
#: R's conversions to a category around a grouping column: no-ops here (:func:`nested_factors`)
_AS_CATEGORY = re.compile(r"^(?:factor|as\.factor|as\.character)\s*\(\s*(`[^`]+`|[A-Za-z_.][\w.]*)\s*\)$")
#: the character before a ``(`` that makes it a call's parenthesis, not a grouping one
_CALL_END = re.compile(r"[\w.\]]")


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects term ``(varying | factor)``: its expressions vary together by the
    levels of ``factor``, with their own covariance Sigma_k (and its own prior).

    Attributes
    ----------
    varying : the term's expressions in ``formulae``'s spelling, ``"Intercept"`` for ``1``
        and first when present (``("Intercept", "x")`` for ``(x | g)``, ``("x",)`` for
        ``(0 + x | g)``).
    factor : the grouping factor's name, its columns joined by ``:`` as written
        (``"g"``, ``"batch:cask"``, ``"dept:service"``).
    factor_columns : the data columns whose combinations are the factor's levels.

    Whether an expression also stands in the fixed part (a population mean theta, or a
    mean fixed at 0) is decided per design column, not here: ``y ~ c + (0 + c | g)`` has
    the levels b and c of ``c`` in both parts but level a only in the varying part
    (:func:`multilevel.design.mean_is_free`).
    """

    varying: tuple[str, ...]
    factor: str
    factor_columns: tuple[str, ...]

    @property
    def has_intercept(self) -> bool:
        return INTERCEPT in self.varying

    def rhs(self) -> str:
        """Right-hand side of the term's covariates alone, for ``formulae``: ``1 + x``, ``0 + x``."""
        return rhs_of(self.varying)

    def __str__(self) -> str:
        """The term as lme4 writes it after expansion, in the user's spelling: ``(1 | g)``,
        ``(1 + x | g)``, ``(0 + scale(x) | g)``."""
        return f"({display_name(rhs_of(self.varying))} | {self.factor})"


def rhs_of(expressions: tuple[str, ...]) -> str:
    """A right-hand side with exactly these expressions, the intercept explicit: ``1 + x``, ``0 + x``."""
    rest = [t for t in expressions if t != INTERCEPT]
    head = "1" if INTERCEPT in expressions else "0"
    return " + ".join([head, *rest])


@dataclass(frozen=True)
class _Bar:
    """A parenthesised ``(lhs | factor)`` of the formula text: its span and parts."""

    start: int  # index of "("
    end: int  # index of ")"
    bar: int  # index of the first "|"
    lhs: str
    double: bool
    factor: str


def _quoted_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"'[^']*'|\"[^\"]*\"|`[^`]*`", text)]


def find_bars(text: str, formula: str) -> list[_Bar]:
    """The random-effects terms of a formula text, as written, in order: each parenthesis
    ``(lhs | factor)`` or ``(lhs || factor)`` that is not a function's argument list (a
    ``|`` inside ``I(a | b)`` is Python's "or"). Quoted text is skipped. ``formula`` (as
    the user wrote it) names the formula in messages.

    Raises :class:`ModelError` for a ``|`` outside parentheses (``y ~ x + 1 | g``, which
    ``formulae`` would silently drop) or a term with two bars (``(1 | a | b)``).
    """
    skip = {i for a, b in _quoted_spans(text) for i in range(a, b)}
    stack: list[tuple[int, bool, list[int]]] = []  # (position, is a call, bars directly inside)
    bars: list[_Bar] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if i in skip:
            pass
        elif ch in "([{":
            before = text[:i].rstrip()
            call = ch != "(" or bool(before) and bool(_CALL_END.match(before[-1]))
            stack.append((i, call, []))
        elif ch in ")]}" and stack:
            start, call, inside = stack.pop()
            if inside and not call:
                if len(inside) > 1:
                    raise ModelError(f"term {text[start:i + 1]!r} of formula {formula!r} has more than one '|'; "
                                     "write one term per factor, such as '(1 | a) + (1 | b)'")
                bar = inside[0]
                double = text.startswith("||", bar)
                bars.append(_Bar(start, i, bar, text[start + 1:bar].strip(), double,
                                 text[bar + (2 if double else 1):i].strip()))
        elif ch == "|":
            if not any(call for _, call, _ in stack):
                if not stack:
                    raise ModelError(f"formula {formula!r} has a '|' outside parentheses; write each "
                                     "random-effects term in parentheses, such as '(1 | group)'")
                stack[-1][2].append(i)
            if text.startswith("||", i):
                i += 1
        i += 1
    return sorted(bars, key=lambda b: b.start)


def _expressions(bar: _Bar, formula: str) -> tuple[str, ...]:
    """The expressions of a term's left side, as ``formulae`` names its common terms,
    ``Intercept`` first when present (implicit unless ``0 +`` or ``-1 +``)."""
    written = f"({bar.lhs} {'||' if bar.double else '|'} {bar.factor})"
    try:
        desc = model_description(bar.lhs)
    except Exception as exc:  # formulae raises several parser error types
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"term {written} of formula {formula!r} does not parse: {detail}") from None
    if desc.response is not None or desc.group_terms:
        raise ModelError(f"term {written} of formula {formula!r} has a '~' or '|' on its left side; "
                         "write it as '(expressions | factor)'")
    names = tuple(t.name for t in desc.common_terms)
    if not names:
        raise ModelError(f"term {written} of formula {formula!r} has no expressions; "
                         f"write '(1 | {bar.factor})' for a varying intercept")
    if INTERCEPT in names:
        names = (INTERCEPT, *[t for t in names if t != INTERCEPT])
    return names


def _strip_parentheses(text: str) -> str:
    while text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        text = text[1:-1].strip()
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def factor_columns_written(text: str) -> list[list[str]]:
    """A term's right side as written, split into its nesting levels (``/``) and each level's
    columns (``:``), outer parentheses and R's ``factor(g)``-like conversions dropped
    (:data:`_AS_CATEGORY`): ``factor(a)/b:c`` -> [[a], [b, c]]."""
    pieces = [p.strip() for p in _strip_parentheses(text.strip()).split("/")]
    return [[_AS_CATEGORY.sub(r"\1", c.strip()) for c in piece.split(":")] for piece in pieces]


def nested_factors(text: str, written: str, formula: str) -> list[tuple[str, ...]]:
    """The factors a term's right side names, each as its data columns: ``g`` -> [(g,)],
    ``a:b`` -> [(a, b)], ``a/b`` -> [(a,), (a, b)], ``a/b/c`` -> [(a,), (a, b), (a, b, c)],
    ``a:b/c`` -> [(a, b), (a, b, c)]. Backticks around a column name are dropped, and so are
    R's ``factor(g)``, ``as.factor(g)`` and ``as.character(g)`` around one, as lme4 users write
    them (a grouping factor is categorical whatever the column holds).

    Raises :class:`ModelError` for anything else (``a + b``, ``a*b``, ``factor(g)``): a
    grouping factor is data columns, crossed with ``:`` or nested with ``/``.
    """
    columns = factor_columns_written(text)
    bad = [c for cols in columns for c in cols if not _COLUMN.match(c)]
    if bad:
        raise ModelError(
            f"grouping factor {text!r} of term {written} in formula {formula!r} is not supported: write data "
            "columns, one (g), an interaction (a:b) or nested (a/b); make any other grouping a column of the data"
        )
    factors, so_far = [], []
    for cols in columns:
        so_far = so_far + [c.strip("`") for c in cols]
        if len(set(so_far)) != len(so_far):
            raise ModelError(f"grouping factor {text!r} of term {written} in formula {formula!r} names a column twice")
        factors.append(tuple(so_far))
    return factors


def expand_bar(bar: _Bar, formula: str) -> list[RandomTerm]:
    """One written term as lme4 expands it: ``||`` into one term per expression first, then
    ``/`` into one term per nesting level: ``(x || a/b)`` -> ``(1 | a)``, ``(1 | a:b)``,
    ``(0 + x | a)``, ``(0 + x | a:b)``."""
    written = f"({bar.lhs} {'||' if bar.double else '|'} {bar.factor})"
    expressions = _expressions(bar, formula)
    blocks = [(e,) for e in expressions] if bar.double else [expressions]
    factors = nested_factors(bar.factor, written, formula)
    return [RandomTerm(block, ":".join(cols), cols) for block in blocks for cols in factors]


def check_terms(terms: list[RandomTerm], formula: str) -> None:
    """Refuse terms lme4 would fit but that cannot be identified: the same term twice
    (``(1 | a/b) + (1 | a)``), or one expression varying by one factor in two terms
    (``(1 | g) + (1 + x | g)``). ``a:b`` and ``b:a`` are the same factor."""
    seen: dict[tuple[frozenset, str], RandomTerm] = {}
    for term in terms:
        for expression in term.varying:
            key = (frozenset(term.factor_columns), expression)
            other = seen.get(key)
            if other is not None:
                shown = "1" if expression == INTERCEPT else display_name(expression)
                what = (f"term {term} appears twice" if other == term else
                        f"{shown!r} varies by {term.factor!r} in two terms, {other} and {term}")
                raise ModelError(f"formula {formula!r}: {what}; an expression may vary by a factor in one term only")
            seen[key] = term


def random_terms(text: str, formula: str) -> tuple[RandomTerm, ...]:
    """The random-effects terms of a formula ``text`` (in ``formulae``'s spelling, see
    :func:`multilevel.rformula.python_spelling`), expanded as lme4 expands them, in formula
    order. ``formula`` (as the user wrote it) names the formula in messages."""
    terms = [term for bar in find_bars(text, formula) for term in expand_bar(bar, formula)]
    check_terms(terms, formula)
    return tuple(terms)


def single_bars(text: str, formula: str) -> str:
    """``text`` with each ``||`` of a random-effects term read as ``|``, and R's ``factor(g)``
    around a grouping column as ``g`` (:func:`nested_factors`): what ``formulae`` parses (it
    expands the left side into the same (expression, factor) pairs; the terms themselves come
    from :func:`random_terms`)."""
    for bar in reversed(find_bars(text, formula)):
        factor = "/".join(":".join(cols) for cols in factor_columns_written(bar.factor))
        text = text[:bar.bar] + "| " + factor + text[bar.end:]
    return text


def check_against_formulae(terms: tuple[RandomTerm, ...], desc: object, formula: str) -> None:
    """Refuse a formula whose terms read here differ from ``formulae``'s (expression,
    factor) pairs: a term ``formulae`` reads differently (``(1 | a*b)``) must not be fitted
    as something else."""
    ours = {(e, frozenset(t.factor_columns)) for t in terms for e in t.varying}
    theirs = {(g.expr.name, frozenset(c.name for c in g.factor.components)) for g in desc.group_terms}
    if ours != theirs:
        raise ModelError(
            f"the random-effects terms of formula {formula!r} could not be read unambiguously "
            f"(read as {', '.join(map(str, terms)) or 'none'}); write each term as '(expressions | factor)'"
        )


__all__ = ["INTERCEPT", "RandomTerm", "check_against_formulae", "check_terms", "expand_bar", "find_bars",
           "nested_factors", "random_terms", "rhs_of", "single_bars"]
