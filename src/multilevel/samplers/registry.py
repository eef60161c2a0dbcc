"""The sampler registry: a model's kernel chosen by (family, structure).

* family: ``"gaussian"``, or ``"glm"`` for poisson, binomial and bernoulli;
* structure: ``"one term"`` (one random-effects term, one Sigma:
  :class:`~multilevel.design.Design`) or ``"several terms"`` (crossed, nested, uncorrelated:
  :class:`~multilevel.design.CrossedDesign`).

Each entry maps the names a user may pass as ``sampler=`` to a builder; the first name is
the default. A builder takes the design, the user's priors and the model's options and
returns a :class:`Built`: the kernel with the statistics, estimates and resolved priors it
was made from. A structure a family does not have yet (GLMs with several terms) is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import ModelError


@dataclass(frozen=True)
class Built:
    """A kernel and what it was built from."""

    kernel: Any
    priors: Any
    stats: Any = None
    estimates: Any = None


def _gaussian_one_term(name: str) -> Callable[..., Built]:
    def build(design: Any, priors: Any, family: Any, proposal: str) -> Built:
        from ..priors import resolve_priors
        from ..suffstats import gaussian_stats
        from .collapsed import CollapsedGibbs
        from .gibbs import GaussianGibbs
        from .interweaving import InterweavingGibbs

        stats, estimates = gaussian_stats(design)
        resolved = resolve_priors(priors, design, estimates, family)
        if name == "collapsed":
            kernel = CollapsedGibbs(stats, resolved, design.theta_free)
        else:
            centred = GaussianGibbs(stats, resolved, design.theta_free)
            kernel = InterweavingGibbs(centred) if name == "interweaving" else centred
        return Built(kernel, resolved, stats, estimates)

    return build


def _gaussian_several_terms(design: Any, priors: Any, family: Any, proposal: str) -> Built:
    from ..blockstats import block_stats, factor_layout
    from ..priors import resolve_crossed_priors
    from .crossed import CrossedGibbs

    layout = factor_layout(design)
    stats = block_stats(design, layout)
    resolved = resolve_crossed_priors(priors, design)
    return Built(CrossedGibbs(stats, layout, resolved, design), resolved, stats)


def _glm_one_term(name: str) -> Callable[..., Built]:
    def build(design: Any, priors: Any, family: Any, proposal: str) -> Built:
        from ..families import CODES
        from ..glmfit import glm_estimates
        from ..priors import resolve_priors
        from .metropolis import GLMData, GLMMetropolis, default_alpha_steps

        estimates = glm_estimates(design, family)
        resolved = resolve_priors(priors, design, estimates, family)
        p = design.X.shape[1]
        data = GLMData(CODES[family.name], design.X, design.Z, design.offset, np.asarray(design.y, dtype=float),
                       design.trials, design.starts)
        kernel = GLMMetropolis(data, resolved, design.theta_free, proposal=proposal, b_start=estimates.b_group,
                               alpha_info=estimates.info_pool[p:, p:],
                               interweave={"auto": None, "interweaving": True, "centred": False}[name],
                               alpha_steps=default_alpha_steps(design.Z, design.starts))
        return Built(kernel, resolved, None, estimates)

    return build


REGISTRY: dict[tuple[str, str], dict[str, Callable[..., Built]]] = {
    ("gaussian", "one term"): {n: _gaussian_one_term(n) for n in ("collapsed", "interweaving", "centred")},
    ("gaussian", "several terms"): {"collapsed": _gaussian_several_terms},
    ("glm", "one term"): {n: _glm_one_term(n) for n in ("auto", "interweaving", "centred")},
}

#: how a fit names each sampler (its ``sampler`` attribute), by (family, structure)
DESCRIPTIONS = {
    ("gaussian", "one term"): "{name} gibbs",
    ("gaussian", "several terms"): "collapsed blocked gibbs (several factors)",
    ("glm", "one term"): "metropolis-within-gibbs ({proposal} proposal, {name})",
}


def family_kind(family: Any) -> str:
    return "gaussian" if family.is_gaussian else "glm"


def structure_of(n_terms: int) -> str:
    return "one term" if n_terms <= 1 else "several terms"


def choose(family: Any, n_terms: int, sampler: str | None, formula: str, terms: str) -> str:
    """The sampler's name for this family and structure: ``sampler`` if it has one of that
    name, else the default; a one-line error names what is available."""
    key = (family_kind(family), structure_of(n_terms))
    entry = REGISTRY.get(key)
    if entry is None:
        raise ModelError(f"formula {formula!r} has several random-effects terms ({terms}); the {family.name} "
                         "family fits one term so far (several are fitted for the gaussian family): keep one term")
    if sampler is None:
        return next(iter(entry))
    if sampler not in entry:
        others = [k for k, e in REGISTRY.items() if k[0] == key[0] and sampler in e]
        if key[1] == "several terms" and others:
            raise ModelError(f"sampler {sampler!r} fits one random-effects term; formula {formula!r} has several "
                             f"({terms}): leave sampler unset or use one of {', '.join(entry)}")
        raise ModelError(f"sampler must be one of {', '.join(entry)} for the {family.name} family"
                         f"{' with several terms' if key[1] == 'several terms' else ''}, not {sampler!r}")
    return sampler


def build(family: Any, n_terms: int, sampler: str, design: Any, priors: Any, proposal: str) -> Built:
    """The kernel of ``sampler`` (a name :func:`choose` returned) for this design."""
    return REGISTRY[(family_kind(family), structure_of(n_terms))][sampler](design, priors, family, proposal)


def describe(family: Any, n_terms: int, sampler: str, proposal: str) -> str:
    return DESCRIPTIONS[(family_kind(family), structure_of(n_terms))].format(name=sampler, proposal=proposal)


__all__ = ["Built", "REGISTRY", "build", "choose", "describe", "structure_of"]
