"""lme4-style formulas: parsing with ``formulae`` into the parts this package models.

A formula ``y ~ fixed part + (varying part | group)`` is split into

* the response expression,
* the common (fixed) terms, evaluated by ``formulae`` into the design ``F``,
* the random-effects terms ``(expr | factor)``, expanded as lme4 expands them
  (:mod:`multilevel.terms`): each term's expressions are evaluated into the per-row
  covariates ``X`` of its varying terms (never into a dense rows x (groups x terms)
  matrix), and its grouping factor's levels index the groups (:mod:`multilevel.factors`).

A formula with several terms (crossed, nested, uncorrelated) gives one object per grouping
factor (:mod:`multilevel.reterms`).
"""

from __future__ import annotations

from dataclasses import dataclass

from formulae import model_description
from formulae.categorical import ENCODINGS

from .errors import ModelError
from .rformula import check_functions, python_spelling
from .terms import INTERCEPT, RandomTerm, check_against_formulae, random_terms, rhs_of, single_bars


@dataclass(frozen=True)
class FormulaSpec:
    """The parts of a parsed multilevel formula.

    Attributes
    ----------
    formula : the formula as written.
    response : the response expression (``"mAch"``, ``"np.log(y)"``, ``"p(s, n)"``).
    common : names of the common terms, ``"Intercept"`` first when present.
    varying : the first random-effects term's expressions, ``"Intercept"`` for ``1``: the
        group-specific expressions of a one-term formula.
    group : the first random-effects term's grouping factor (``"g"``, ``"batch:cask"``).
    variables : every data column the formula uses.
    terms : every random-effects term, in formula order after lme4's expansions
        (``(1 | a/b)`` is ``(1 | a)``, ``(1 | a:b)``; ``(x || g)`` is ``(1 | g)``,
        ``(0 + x | g)``).
    """

    formula: str
    response: str
    common: tuple[str, ...]
    varying: tuple[str, ...]
    group: str
    variables: tuple[str, ...]
    terms: tuple[RandomTerm, ...]

    @property
    def group_columns(self) -> tuple[str, ...]:
        """The data columns of the first term's grouping factor (two for ``batch:cask``)."""
        return self.terms[0].factor_columns

    def fixed_rhs(self) -> str:
        """Right-hand side of the common part alone, for ``formulae``."""
        return rhs_of(self.common)

    def varying_rhs(self) -> str:
        """Right-hand side of the group-specific covariates alone, for ``formulae``."""
        return rhs_of(self.varying)


def _response_expression(term: object) -> str:
    """The response as formulae reads it back, keeping a chosen level: ``y[no]``."""
    components = getattr(term, "components", [])
    if len(components) == 1 and getattr(components[0], "reference", None) is not None:
        return f"{term.name}[{components[0].reference}]"
    return term.name


def _split_arguments(text: str) -> list[str]:
    """The comma-separated arguments of a call's argument text, commas inside brackets kept."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def binomial_response_as_proportion(formula: str) -> str:
    """lme4's binomial response ``cbind(successes, failures) ~ ...`` rewritten in the
    ``p(successes, trials)`` form ``formulae`` reads: ``p(s, (s) + (f)) ~ ...``. Any other
    formula is returned unchanged."""
    lhs, sep, rhs = formula.partition("~")
    head = lhs.strip()
    if not sep or not head.startswith("cbind(") or not head.endswith(")"):
        return formula
    args = _split_arguments(head[len("cbind("):-1])
    if len(args) != 2 or not all(args):
        raise ModelError(f"response {head!r} needs two columns, cbind(successes, failures); "
                         "or write p(successes, trials)")
    s, f = args
    return f"p({s}, ({s}) + ({f})) ~{rhs}"


def binomial_proportion_with_weights(formula: str, weights: str) -> str:
    """lme4's binomial model of a proportion with its trials as weights,
    ``glmer(y ~ ..., weights = n, family = binomial)``, rewritten in the ``p(successes, trials)``
    form: ``a/n ~`` with weights n is ``p(a, n) ~``; any other response y is
    ``p(binomial_successes(y, n), n) ~``, y n checked to be whole numbers
    (:func:`multilevel.rformula.binomial_successes`)."""
    from .formula_update import split_formula, top_level_split

    lhs, rhs = split_formula(formula)
    if lhs.startswith(("p(", "prop(", "proportion(", "cbind(")) or not lhs:
        raise ModelError(f"weights={weights!r} give the trials of a proportion response; the response {lhs!r} "
                         "already names them (or has none): leave weights out")
    ratio = [text.strip() for _, text in top_level_split(lhs, "/")]
    if len(ratio) == 2 and ratio[1] == weights:
        return f"p({ratio[0]}, {weights}) ~ {rhs}"
    return f"p(binomial_successes({lhs}, {weights}), {weights}) ~ {rhs}"


def data_variables(desc: object) -> set[str]:
    """The data columns a parsed ``formulae`` description uses: its variable names without
    the contrast names (``Sum`` in ``C(x, Sum)``), which are not columns."""
    return {v for v in desc.var_names if v and v not in ENCODINGS}


def parse_formula(formula: str) -> FormulaSpec:
    """Parse an lme4-style formula into its parts, with any number of random-effects terms
    (:mod:`multilevel.terms`). A binomial response may be written as in Bambi,
    ``p(successes, trials)``, or as in lme4, ``cbind(successes, failures)``
    (:func:`binomial_response_as_proportion`).

    R spellings are read as their Python ones (:mod:`multilevel.rformula`): ``log(x)``,
    ``factor(x)``, ``as.factor(x)``, ``I(x^2)``, ``poly(x, 2, raw = TRUE)``, ``scale(x)``, ...;
    the spec's terms are in the spelling ``formulae`` evaluates, ``formula`` as written.

    Raises :class:`ModelError` when the formula does not parse, calls an unknown function
    (naming the Python spelling), has no response, no group-specific part, or a
    random-effects term that is not ``(expressions | factor)`` with a factor of data
    columns (``g``, ``a:b``, ``a/b``).
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise ModelError(
            f"formula {formula!r} has no '~'; write it as 'response ~ predictors + (terms | group)'"
        )
    from .formula_update import split_formula, top_level_split

    lhs = split_formula(formula)[0]
    if len(top_level_split(lhs, "/")) == 2:
        num, den = (t.strip() for _, t in top_level_split(lhs, "/"))
        raise ModelError(f"the response {lhs!r} is a proportion: a binomial model needs its trials, as lme4's weights "
                         f"(family='binomial', weights={den!r}; CLI --weights {den}), or write p({num}, {den})")
    text = python_spelling(binomial_response_as_proportion(formula))
    check_functions(text, formula)
    try:
        desc = model_description(single_bars(text, formula))
    except ModelError:
        raise
    except Exception as exc:  # formulae raises several parser error types
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"formula {formula!r} does not parse: {detail}") from None
    if desc.response is None:
        raise ModelError(f"formula {formula!r} has no response on the left of '~'")
    terms = random_terms(text, formula)
    if not terms:
        raise ModelError(
            f"formula {formula!r} has no group-specific part; add one such as '(1 | group)'"
        )
    check_against_formulae(terms, desc, formula)
    common = tuple(t.name for t in desc.common_terms)
    if INTERCEPT in common:
        common = (INTERCEPT, *[t for t in common if t != INTERCEPT])
    return FormulaSpec(
        formula=formula,
        response=_response_expression(desc.response.term),
        common=common,
        varying=terms[0].varying,
        group=terms[0].factor,
        variables=tuple(sorted(data_variables(desc))),
        terms=terms,
    )
