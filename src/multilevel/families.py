"""Response families: response checks and pointwise log-likelihoods.

Only the Gaussian family (identity link) is implemented so far; Poisson (log link),
binomial with trials and Bernoulli (logit link) are planned and refused with a clear
message until then.
"""

from __future__ import annotations

import numpy as np

from .errors import ModelError

FAMILIES = ("gaussian",)
PLANNED = ("poisson", "binomial", "bernoulli")


def check_family(family: str) -> str:
    """Return the family's canonical name, or refuse it."""
    name = str(family).lower()
    if name in FAMILIES:
        return name
    if name in PLANNED:
        raise ModelError(f"family {family!r} is not implemented yet; available families: {', '.join(FAMILIES)}")
    raise ModelError(f"unknown family {family!r}; available families: {', '.join(FAMILIES)}")


def gaussian_response(y: np.ndarray, name: str) -> np.ndarray:
    """The response of a Gaussian model as floats: numeric, not constant."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ModelError(f"response {name!r} must be one numeric column for the gaussian family")
    if y.dtype.kind not in "biuf":
        raise ModelError(f"response {name!r} must be numeric for the gaussian family, not {y.dtype}")
    y = y.astype(float)
    if y.size > 1 and np.ptp(y) == 0:
        raise ModelError(f"response {name!r} is constant ({y[0]:g}); there is nothing to model")
    return y


def gaussian_loglik(y: np.ndarray, mu: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """Pointwise log N(y | mu, sigma2); ``sigma2`` broadcasts against ``mu``."""
    return -0.5 * (np.log(2 * np.pi * sigma2) + (y - mu) ** 2 / sigma2)
