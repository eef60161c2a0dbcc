"""The sampler registry: a model's kernel chosen by (family, structure).

* family: ``"gaussian"``, or ``"glm"`` for poisson, binomial, bernoulli and negbinomial;
* structure: ``"one term"`` (one random-effects term, one Sigma:
  :class:`~multilevel.design.Design`) or ``"several terms"`` (crossed, nested, uncorrelated:
  :class:`~multilevel.design.CrossedDesign`).

Each entry maps the names a user may pass as ``sampler=`` to a builder; the first name is
the default. A builder takes the design, the user's priors and the model's options and
returns a :class:`Built`: the kernel with the statistics, estimates and resolved priors it
was made from. :data:`SAMPLER_FAMILIES` limits a sampler to some families (Polya-Gamma
augmentation: binomial, bernoulli and negbinomial; the several-factor Metropolis kernel:
families with a likelihood code; the sharded one: those and negbinomial) and
:data:`FAMILY_SAMPLERS` a family to some samplers (negbinomial: Polya-Gamma, its default, and the
sharded sampler, for one term too), so a family may have no sampler for a
structure; :data:`CROSSED_SAMPLERS` run on a
:class:`~multilevel.design.CrossedDesign` even for one term.
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
    from ..blockstats import factor_layout
    from ..priors import resolve_crossed_priors
    from .crossed import CrossedGibbs

    layout = factor_layout(design)
    statistics = design.statistics(layout)  # in memory, or partition by partition
    resolved = resolve_crossed_priors(priors, design, statistics=statistics)
    return Built(CrossedGibbs(statistics.stats, layout, resolved, design), resolved, statistics.stats)


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


def _glm_polya_gamma(design: Any, priors: Any, family: Any, proposal: str) -> Built:
    from ..blockstats import factor_layout
    from ..glmfit import pooled_glm
    from ..priors import resolve_crossed_priors
    from ..families import fitting_family
    from .negbinomial import NegBinomialGibbs
    from .polya_gamma import PolyaGammaGibbs

    layout = factor_layout(design)
    resolved = resolve_crossed_priors(priors, design, family)
    a_start = pooled_glm(fitting_family(family), design.F, np.asarray(design.y, dtype=float), design.trials,
                         design.offset)[0]
    kernel = NegBinomialGibbs if family.name == "negbinomial" else PolyaGammaGibbs
    return Built(kernel(design, layout, resolved, a_start), resolved)


def _glm_crossed_metropolis(design: Any, priors: Any, family: Any, proposal: str) -> Built:
    from ..blockstats import factor_layout
    from ..families import CODES
    from ..glmfit import pooled_glm
    from ..priors import resolve_crossed_priors
    from .crossed_metropolis import CrossedMetropolis

    if family.name not in CODES:
        raise ModelError(f"sampler 'metropolis' fits poisson, binomial and bernoulli models, not {family.name}: leave "
                         "sampler unset")
    layout = factor_layout(design, small_columns=0)
    resolved = resolve_crossed_priors(priors, design, family)
    a_start = pooled_glm(family, design.F, np.asarray(design.y, dtype=float), design.trials, design.offset)[0]
    return Built(CrossedMetropolis(design, layout, resolved, a_start, CODES[family.name]), resolved)


def _glm_sharded(design: Any, priors: Any, family: Any, proposal: str) -> Built:
    from ..blockstats import factor_layout
    from ..families import SHARDED_CODES, fitting_family
    from ..priors import resolve_crossed_priors
    from .sharded import ShardedMetropolis, ShardSource, factor_order, local_shards

    if family.name not in SHARDED_CODES:
        raise ModelError(f"sampler 'sharded' fits poisson, binomial, bernoulli and negbinomial models, not "
                         f"{family.name}: leave sampler unset")
    code = SHARDED_CODES[family.name]
    shards = local_shards(design, code) if getattr(design, "in_memory", True) else design.level_shards(code)
    source = ShardSource(shards, factor_order(design))
    layout = factor_layout(design, small_columns=0)
    resolved = resolve_crossed_priors(priors, design, family, source=source)
    a_start = source.pooled_glm(fitting_family(family))[0]
    return Built(ShardedMetropolis(shards, design, layout, resolved, a_start, source.n_obs, code), resolved)


REGISTRY: dict[tuple[str, str], dict[str, Callable[..., Built]]] = {
    ("gaussian", "one term"): {**{n: _gaussian_one_term(n) for n in ("collapsed", "interweaving", "centred")},
                               "blocked": _gaussian_several_terms},
    ("gaussian", "several terms"): {"collapsed": _gaussian_several_terms},
    ("glm", "one term"): {**{n: _glm_one_term(n) for n in ("auto", "interweaving", "centred")},
                          "polya-gamma": _glm_polya_gamma, "sharded": _glm_sharded},
    ("glm", "several terms"): {"polya-gamma": _glm_polya_gamma, "metropolis": _glm_crossed_metropolis,
                               "sharded": _glm_sharded},
}

#: the families a sampler fits, where not every family of its registry entries
SAMPLER_FAMILIES = {"polya-gamma": ("binomial", "bernoulli", "negbinomial"),
                    "metropolis": ("poisson", "binomial", "bernoulli"),
                    "sharded": ("poisson", "binomial", "bernoulli", "negbinomial")}
#: the samplers a family is limited to, where not every sampler of its registry entries
FAMILY_SAMPLERS = {"negbinomial": ("polya-gamma", "sharded")}
#: samplers that run on a CrossedDesign whatever the number of terms
CROSSED_SAMPLERS = frozenset({"polya-gamma", "blocked", "sharded"})

#: how a fit names each sampler (its ``sampler`` attribute), by (family, structure), or by name
DESCRIPTIONS = {
    ("gaussian", "one term"): "{name} gibbs",
    ("gaussian", "several terms"): "collapsed blocked gibbs (several factors)",
    ("glm", "one term"): "metropolis-within-gibbs ({proposal} proposal, {name})",
    "blocked": "collapsed blocked gibbs",
    "polya-gamma": "polya-gamma augmented collapsed blocked gibbs",
    "polya-gamma negbinomial": "polya-gamma augmented collapsed blocked gibbs, metropolis phi",
    "metropolis": "metropolis-within-gibbs (laplace proposals per factor level, shift and scale moves)",
    "sharded": "metropolis-within-gibbs over shards of whole levels (laplace proposals per level, shift and scale moves)",
    "sharded negbinomial": "metropolis-within-gibbs over shards of whole levels (laplace proposals per level, shift "
                           "and scale moves), metropolis phi",
}


def family_kind(family: Any) -> str:
    return "gaussian" if family.is_gaussian else "glm"


def structure_of(n_terms: int) -> str:
    return "one term" if n_terms <= 1 else "several terms"


def available(family: Any, n_terms: int) -> list[str]:
    """The samplers of this family and structure, the default first."""
    entry = REGISTRY.get((family_kind(family), structure_of(n_terms)), {})
    return [n for n in entry if family.name in SAMPLER_FAMILIES.get(n, (family.name,))
            and n in FAMILY_SAMPLERS.get(family.name, (n,))]


def choose(family: Any, n_terms: int, sampler: str | None, formula: str, terms: str) -> str:
    """The sampler's name for this family and structure: ``sampler`` if it has one of that
    name, else the default; a one-line error names what is available."""
    from ..families import FAMILIES, check_family

    key = (family_kind(family), structure_of(n_terms))
    entry = available(family, n_terms)
    if not entry:
        several = [f for f in FAMILIES if available(check_family(f), 2)]
        raise ModelError(f"formula {formula!r} has several random-effects terms ({terms}); the {family.name} "
                         f"family fits one term so far (several are fitted for the {', '.join(several[:-1])} and "
                         f"{several[-1]} families): keep one term")
    if sampler is None:
        return entry[0]
    if sampler in SAMPLER_FAMILIES and family.name not in SAMPLER_FAMILIES[sampler]:
        fits = ", ".join(SAMPLER_FAMILIES[sampler][:-1]) + " and " + SAMPLER_FAMILIES[sampler][-1]
        raise ModelError(f"sampler {sampler!r} fits {fits} models, not {family.name}: leave sampler unset or use "
                         f"one of {', '.join(entry)}")
    if family.name in FAMILY_SAMPLERS and sampler not in FAMILY_SAMPLERS[family.name]:
        raise ModelError(f"the {family.name} family is fitted by sampler {' or '.join(map(repr, entry))} only, not "
                         f"{sampler!r}: leave sampler unset")
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
    text = DESCRIPTIONS.get(f"{sampler} {family.name}") or DESCRIPTIONS.get(sampler) or DESCRIPTIONS[(family_kind(family), structure_of(n_terms))]
    return text.format(name=sampler, proposal=proposal) + (" (several factors)" if sampler in DESCRIPTIONS and
                                                           n_terms > 1 else "")


def crossed_design(n_terms: int, sampler: str) -> bool:
    """Whether the model's design is a :class:`~multilevel.design.CrossedDesign`."""
    return n_terms > 1 or sampler in CROSSED_SAMPLERS


__all__ = ["Built", "CROSSED_SAMPLERS", "FAMILY_SAMPLERS", "REGISTRY", "SAMPLER_FAMILIES", "available", "build", "choose",
           "crossed_design", "describe", "structure_of"]
