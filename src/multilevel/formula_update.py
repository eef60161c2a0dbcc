"""R's ``update()`` of a formula, as lme4 users change a model: ``. ~ . + x``, ``. ~ . - x``,
``~ . + (1 | h)``, ``log(.) ~ .``.

In the new formula a ``.`` on the left stands for the old response and a ``.`` on the right
for the old right-hand side's terms; a left side left out keeps the old response. The right
side is read as top-level terms joined by ``+`` and ``-`` (parentheses, brackets and quotes
keep what they hold together: ``(1 + x | g)``, ``I(x - 1)`` and ``a*b`` are one term each):
``+ t`` adds t where it is not already there, ``- t`` removes a term written t (spaces
ignored); ``- 1`` and ``+ 0`` remove the intercept and ``+ 1`` restores it. Unlike R, terms are
not expanded first: ``- a:b`` does not take the interaction out of ``a*b``; that is refused in
one line that lists the terms to choose from.
"""

from __future__ import annotations

import re

from .errors import ModelError

_DOT = re.compile(r"(?<![\w.])\.(?![\w.])")
_OPEN, _CLOSE = "([{", ")]}"


def split_formula(formula: str) -> tuple[str, str]:
    """(left side, right side) of ``lhs ~ rhs`` at its top-level ``~`` (left side "" when absent)."""
    parts = top_level_split(formula, "~")
    if len(parts) != 2:
        raise ModelError(f"formula {formula!r} needs one '~' between the response and the terms")
    return parts[0][1].strip(), parts[1][1].strip()


def signed_terms(rhs: str) -> list[tuple[str, str]]:
    """The top-level terms of a right-hand side with their signs: ``"x - 1 + (1 | g)"`` is
    [("+", "x"), ("-", "1"), ("+", "(1 | g)")]."""
    return [(sign or "+", text.strip()) for sign, text in top_level_split(rhs, "+-") if text.strip()]


def top_level_split(text: str, separators: str) -> list[tuple[str, str]]:
    """``text`` split at the characters ``separators`` outside brackets and quotes, each piece
    with the separator before it ("" for the first)."""
    pieces, depth, quote, start, sign = [], 0, None, 0, ""
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"`":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif depth == 0 and ch in separators and not _inside_exponent(text, i):
            pieces.append((sign, text[start:i]))
            sign, start = ch, i + 1
    pieces.append((sign, text[start:]))
    return pieces


def _inside_exponent(text: str, i: int) -> bool:
    """Whether the sign at ``i`` belongs to a number such as ``1e-3``."""
    return i >= 2 and text[i - 1] in "eE" and text[i - 2].isdigit() and text[i] in "+-"


def _key(term: str) -> str:
    return re.sub(r"\s+", "", term)


def update_formula(old: str, new: str) -> str:
    """``old`` changed by ``new`` as R's ``update()`` (module doc)."""
    old_lhs, old_rhs = split_formula(old)
    new_lhs, new_rhs = split_formula(new if "~" in new else f"~ {new}")
    lhs = old_lhs if not new_lhs else _DOT.sub(lambda _: old_lhs, new_lhs)
    terms: list[str] = []
    intercept = True
    for sign, term in signed_terms(new_rhs):
        for s, t in signed_terms(old_rhs) if term == "." else [(sign, term)]:
            if t in ("0", "1"):
                intercept = (s == "+") == (t == "1")
            elif s == "+":
                terms += [] if any(_key(u) == _key(t) for u in terms) else [t]
            elif any(_key(u) == _key(t) for u in terms):
                terms = [u for u in terms if _key(u) != _key(t)]
            else:
                raise ModelError(f"update: cannot remove {t!r} from {old!r}: its terms are {', '.join(terms) or 'none'}; "
                                 "remove one of them as written, or give the new formula in full")
    rhs = " + ".join(terms) if terms else ("1" if intercept else "0")
    return f"{lhs} ~ {rhs}{' - 1' if terms and not intercept else ''}"


__all__ = ["signed_terms", "split_formula", "top_level_split", "update_formula"]
