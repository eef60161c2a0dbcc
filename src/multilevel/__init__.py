"""multilevel: Bayesian hierarchical (multilevel) regression by fast Gibbs sampling.

>>> import multilevel
>>> fit = multilevel.fit("mAch ~ ses + (ses | school)", multilevel.load_dataset("hsb82"))
>>> print(fit)

The heavy modules load on first use, so worker processes that only run samplers start fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "fit": "api",
    # lme4's fitting functions, as R users call them: lmer, glmer, glmer.nb
    "lmer": "api",
    "glmer": "api",
    "glmer_nb": "api",
    "Model": "api",
    "resume": "api",
    "update": "api",
    "Fit": "result",
    "load": "result",
    "Priors": "priors",
    "ModelError": "errors",
    "NumericalError": "errors",
    "load_dataset": "datasets",
    "compare": "comparison",
    # lme4's accessors as functions too, as R users call them: fixef(fit), VarCorr(fit), confint(fit), ...
    "fixef": "accessors",
    "ranef": "accessors",
    "coef": "accessors",
    "VarCorr": "accessors",
    "fitted": "accessors",
    "residuals": "accessors",
    "nobs": "accessors",
    "ngrps": "accessors",
    "sigma": "accessors",
    "confint": "accessors",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'multilevel' has no attribute {name!r}")
