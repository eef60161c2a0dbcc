"""Response families: link, response checks, log-likelihoods, working weights.

* ``gaussian``: identity link, y ~ N(eta, sigma2), or N(eta, sigma2 / w_i) with precision
  weights (``weights=``, as lme4's; they apply to this family only).
* ``poisson``: log link, y ~ Poisson(exp(eta)), eta including any offset
  (``offset(np.log(exposure))`` in the formula or the ``offset=`` argument).
* ``binomial``: logit link, y ~ Binomial(n, logistic(eta)); the response is written
  ``p(successes, trials) ~ ...`` as in Bambi.
* ``bernoulli``: logit link, y ~ Bernoulli(logistic(eta)); the response may be 0/1,
  boolean, or a two-level category whose *second* level (in sorted order, as R's glm)
  counts as success; write ``y[level] ~ ...`` to choose the success level.
* ``negbinomial`` (NB2; also spelled ``negative_binomial``, ``nbinom2``): log link,
  y ~ NB(mu = exp(eta), phi), Var(y) = mu + mu^2 / phi (lme4's ``glmer.nb`` theta, brms's
  ``shape``, glmmTMB's ``nbinom2``); p(y) = Gamma(y + phi) / (Gamma(phi) y!)
  (phi / (phi + mu))^phi (mu / (phi + mu))^y, the Poisson as phi -> infinity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import gammaln

from .errors import ModelError

FAMILIES = ("gaussian", "poisson", "binomial", "bernoulli", "negbinomial")
#: other spellings users type, as lme4/glmmTMB/brms/statsmodels name the NB2 family
ALIASES = {"negative_binomial": "negbinomial", "negative-binomial": "negbinomial", "nbinom2": "negbinomial",
           "negativebinomial": "negbinomial"}
LINKS = {"gaussian": "identity", "poisson": "log", "negbinomial": "log", "binomial": "logit", "bernoulli": "logit"}
#: integer codes of the families in the compiled log-likelihood kernels
CODES = {"poisson": 0, "binomial": 1, "bernoulli": 1}
#: the negative binomial's code in the sharded kernel's row terms, whose per-row ``n`` then
#: carries phi (:func:`multilevel.samplers.crossed_metropolis._row_terms`)
NEGBINOMIAL_CODE = 2
#: the codes of the families the sharded sampler fits
SHARDED_CODES = {**CODES, "negbinomial": NEGBINOMIAL_CODE}


@dataclass(frozen=True)
class Family:
    name: str
    link: str

    @property
    def is_gaussian(self) -> bool:
        return self.name == "gaussian"

    @property
    def dispersion(self) -> str | None:
        """The posterior variable of the family's dispersion: ``sigma2`` (gaussian), ``phi``
        (negbinomial), None for the families without one."""
        return {"gaussian": "sigma2", "negbinomial": "phi"}.get(self.name)


#: R's family call as lme4 users type it: ``binomial``, ``poisson()``, ``binomial(link = "logit")``
R_FAMILY_CALL = re.compile(r"""^\s*([A-Za-z0-9_.\-]+)\s*(?:\(\s*(?:link\s*=\s*)?(?:["']?([A-Za-z]+)["']?)?\s*\))?\s*$""")

#: what to write instead of families users know from R or statsmodels
FAMILY_HINTS = {"quasipoisson": "family='negbinomial' for overdispersed counts",
                "quasibinomial": "family='binomial' with an observation-level effect, (1 | obs), for overdispersion",
                "negative.binomial": "family='negbinomial' (phi is sampled; lme4's glmer.nb estimates it too)"}


def check_family(family: str) -> Family:
    """Return the family, or refuse an unknown name in one line. R's call spellings are read as
    lme4 users type them: ``poisson()``, ``binomial(link = "logit")``, ``binomial("logit")``,
    with the family's link; another link is refused."""
    match = R_FAMILY_CALL.match(str(family))
    text, link = (match.group(1), match.group(2)) if match else (str(family), None)
    name = ALIASES.get(text.lower(), text.lower())
    if name not in FAMILIES:
        hint = FAMILY_HINTS.get(text.lower())
        raise ModelError(f"unknown family {family!r}; " + (f"write {hint}" if hint else
                                                             f"available families: {', '.join(FAMILIES)}"))
    if link is not None and link.lower() != LINKS[name]:
        raise ModelError(f"family {family!r}: {name} is fitted with its {LINKS[name]} link only, not {link}; write "
                         f"family='{name}'")
    return Family(name, LINKS[name])


def fitting_family(family: Family) -> Family:
    """The family whose maximum-likelihood fits give starting values and default priors:
    Poisson for the negative binomial (same log-link mean; its ML estimates of the fixed effects
    are consistent under NB2 overdispersion), the family itself otherwise."""
    return Family("poisson", "log") if family.name == "negbinomial" else family


def _numeric(y: np.ndarray, name: str, family: str) -> np.ndarray:
    if y.dtype.kind not in "biuf":
        raise ModelError(f"response {name!r} must be numeric for the {family} family, not {y.dtype}")
    return y.astype(float)


def _counts(y: np.ndarray, name: str, what: str) -> np.ndarray:
    if np.any(y < 0):
        raise ModelError(f"{what} {name!r} has negative values; counts must be non-negative integers")
    if np.any(y != np.round(y)):
        raise ModelError(f"{what} {name!r} has non-integer values; counts must be non-negative integers")
    return y


def family_response(family: Family, raw: np.ndarray, name: str, kind: str, levels: list | None) -> tuple[np.ndarray, np.ndarray]:
    """The response ``y`` and the binomial trials ``n`` (ones for other families), checked.

    ``raw`` is the response as ``formulae`` evaluates it: one column, two columns
    (``p(successes, trials)``), or the one-hot columns of a categorical response.
    """
    raw = np.asarray(raw)
    ones = np.ones(raw.shape[0])
    if family.name == "binomial":
        if raw.ndim != 2 or raw.shape[1] != 2 or kind != "proportion":
            raise ModelError(f"the binomial family needs a response written p(successes, trials) "
                             f"or cbind(successes, failures), not {name!r}")
        y = _counts(_numeric(raw[:, 0], name, "binomial"), name, "successes in")
        n = _counts(_numeric(raw[:, 1], name, "binomial"), name, "trials in")
        if np.any(y > n):
            raise ModelError(f"successes exceed trials in {int(np.sum(y > n))} rows of {name!r}; check the column order p(successes, trials)")
        if np.any(n == 0):
            raise ModelError(f"{int(np.sum(n == 0))} rows of {name!r} have zero trials; drop them")
        return y, n
    if kind == "categoric" and raw.ndim == 2:
        if family.name != "bernoulli":
            raise ModelError(f"response {name!r} is categorical; use family='bernoulli' for a two-level response or a numeric column")
        if raw.shape[1] != 2:
            raise ModelError(f"response {name!r} has {raw.shape[1]} levels; the bernoulli family needs exactly 2 (or write {name}[level])")
        return raw[:, 1].astype(float), ones
    if raw.ndim == 2:
        if raw.shape[1] != 1:
            raise ModelError(f"response {name!r} has {raw.shape[1]} columns; the {family.name} family needs one")
        raw = raw[:, 0]
    if raw.dtype.kind == "b":
        raw = raw.astype(float)
    y = _numeric(raw, name, family.name)
    if y.size > 1 and np.ptp(y) == 0:
        raise ModelError(f"response {name!r} is constant ({y[0]:g}); there is nothing to model")
    if family.name == "gaussian":
        return y, ones
    if family.name in ("poisson", "negbinomial"):
        return _counts(y, name, "count response"), ones
    values = np.unique(y)
    if not np.all(np.isin(values, (0.0, 1.0))):
        raise ModelError(f"response {name!r} is not binary (values {values[:5].tolist()}); the bernoulli family needs "
                         "0/1, true/false or two levels (counts of successes: family='binomial' with the response "
                         "written p(successes, trials) or cbind(successes, failures))")
    return y, ones


#: how a binomial response of successes and trials is written (``cbind`` is read as ``p``)
PROPORTION_CALLS = ("p(", "prop(", "proportion(")


def response_family(family: Family, response: str) -> Family:
    """lme4's ``glmer(y ~ ..., family = binomial)`` with a 0/1 (or two-level) response: the
    binomial family of one trial per row, that is, the Bernoulli family. A binomial response
    not written p(successes, trials) (or ``cbind``) is read as Bernoulli, whose check then
    refuses a response that is not binary."""
    if family.name == "binomial" and not response.replace(" ", "").startswith(PROPORTION_CALLS):
        return check_family("bernoulli")
    return family


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) without overflow."""
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def negbinomial_loglik(y: np.ndarray, eta: np.ndarray, phi: np.ndarray | float) -> np.ndarray:
    """log NB2(y | mu = exp(eta), phi) = log Gamma(y + phi) - log Gamma(phi) - log y!
    + phi log phi + y eta - (y + phi) log(phi + exp(eta)), with
    log(phi + exp(eta)) = log phi + softplus(eta - log phi) (no overflow)."""
    log_phi = np.log(phi)
    return (gammaln(y + phi) - gammaln(phi) - gammaln(y + 1.0) + phi * log_phi + y * eta
            - (y + phi) * (log_phi + softplus(eta - log_phi)))


def pointwise_loglik(family: Family, y: np.ndarray, n: np.ndarray, eta: np.ndarray, sigma2: np.ndarray | None = None,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """Pointwise log-likelihood log p(y_i | eta_i), normalising constants included; Gaussian
    precision ``weights`` w_i (None: all 1) make it log N(y_i | eta_i, sigma2 / w_i).
    ``sigma2`` is the family's dispersion (:attr:`Family.dispersion`): the Gaussian variance,
    the negative binomial's phi."""
    if family.name == "gaussian":
        if weights is None:
            return -0.5 * (np.log(2 * np.pi * sigma2) + (y - eta) ** 2 / sigma2)
        return -0.5 * (np.log(2 * np.pi * sigma2 / weights) + weights * (y - eta) ** 2 / sigma2)
    if family.name == "poisson":
        with np.errstate(over="ignore"):
            return y * eta - np.exp(eta) - gammaln(y + 1.0)
    if family.name == "negbinomial":
        return negbinomial_loglik(y, eta, sigma2)
    const = gammaln(n + 1.0) - gammaln(y + 1.0) - gammaln(n - y + 1.0)
    return const + y * eta - n * softplus(eta)


def loglik_by_draws(family: Family, y: np.ndarray, trials: np.ndarray, eta_of: Any, n_chain: int, n_draw: int,
                    dispersion: np.ndarray | None = None, weights: np.ndarray | None = None,
                    chunk: int | None = None) -> np.ndarray:
    """Pointwise log-likelihood (chain, draw, obs) of the rows ``y`` (:func:`pointwise_loglik`),
    ``chunk`` draws at a time (default: about 2e7 values a chunk) so that temporaries stay
    small: ``eta_of(draws)`` gives the linear predictor (chain, draws of the slice, obs) and
    ``dispersion`` is the family's (chain, draw) dispersion draws or None."""
    out = np.empty((n_chain, n_draw, y.shape[0]))
    chunk = chunk or max(1, int(2e7 // (n_chain * max(y.shape[0], 1))))
    for start in range(0, n_draw, chunk):
        sl = slice(start, min(start + chunk, n_draw))
        s2 = dispersion[:, sl, None] if dispersion is not None else None
        out[:, sl] = pointwise_loglik(family, y, trials, eta_of(sl), s2, weights)
    return out


def mean_and_weight(family: Family, n: np.ndarray, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean E[y] and the Fisher weight w = Var[y] / (dmu/deta)^-2 at eta (canonical links)."""
    if family.name == "poisson":
        mu = np.exp(np.minimum(eta, 700.0))
        return mu, mu
    prob = 0.5 * (1.0 + np.tanh(0.5 * eta))
    return n * prob, n * prob * (1.0 - prob)
