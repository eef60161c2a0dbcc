"""The user-facing entry points: :class:`Model`, built once and fitted several times, and :func:`fit`."""

from __future__ import annotations

import json
import numbers
from datetime import datetime, timezone
from typing import Any

import numpy as np

from . import __version__
from .convert import to_inference_data
from .design import NaAction, build_design
from .errors import ModelError
from .families import CODES, check_family, family_response
from .glmfit import glm_estimates
from .formula import parse_formula
from .io import read_data
from .priors import Priors, resolve_priors
from .result import Fit
from .run import run_chains
from .samplers.gibbs import GaussianGibbs
from .samplers.metropolis import PROPOSALS, GLMData, GLMMetropolis
from .suffstats import gaussian_stats

#: Store the pointwise log-likelihood in the InferenceData when chains x draws x rows is
#: at most this (about 240 MB); above it, ``Fit.log_likelihood()`` computes it on demand.
LOGLIK_STORE_LIMIT = 30_000_000


def _count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive integer" if minimum > 0 else "a non-negative integer"
        raise ModelError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ModelError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


class Model:
    """A hierarchical model of ``data`` by ``formula``: design, statistics and priors, built once.

    Parameters
    ----------
    formula : lme4-style formula, e.g. ``"mAch ~ ses + (ses | school)"``.
    data : pandas or polars DataFrame, CSV/Parquet path, or bundled data set name.
    family : ``"gaussian"``, ``"poisson"``, ``"binomial"`` (response ``p(successes, trials)``)
        or ``"bernoulli"`` (see :mod:`multilevel.families`).
    priors : :class:`Priors` or dict of its fields; unset fields take the defaults.
    na_action : ``"drop"`` rows with missing values in used columns (with a warning), or ``"raise"``.
    offset : GLMs: a column name or one value per row added to the linear predictor
        (e.g. ``np.log(exposure)``); ``offset(...)`` in the formula does the same.
    proposal : GLMs: ``"laplace"`` (default, per-group Fisher-information proposals) or
        ``"textbook"`` (the specification's MVN(beta_j, delta Sigma)).
    """

    def __init__(
        self,
        formula: str,
        data: Any,
        family: str = "gaussian",
        priors: Priors | dict | None = None,
        na_action: NaAction = "drop",
        offset: Any = None,
        proposal: str = "laplace",
    ):
        self.family = check_family(family)
        if proposal not in PROPOSALS:
            raise ModelError(f"proposal must be one of {', '.join(PROPOSALS)}, not {proposal!r}")
        if offset is not None and self.family.is_gaussian:
            raise ModelError("offset applies to the poisson, binomial and bernoulli families; for gaussian subtract it from the response")
        spec = parse_formula(formula)
        frame = read_data(data)
        design = build_design(spec, frame, na_action, offset=offset)
        design.y, design.trials = family_response(self.family, design.y, spec.response, design.response_kind, design.response_levels)
        if design.n_groups < 2:
            raise ModelError(
                f"grouping factor {spec.group!r} has {design.n_groups} level; a multilevel model needs at least 2 groups"
            )
        self.spec = spec
        self.design = design
        self.proposal = proposal
        if self.family.is_gaussian:
            self.stats, self.estimates = gaussian_stats(design)
            self.priors = resolve_priors(priors, design, self.estimates, self.family)
            self.kernel = GaussianGibbs(self.stats, self.priors, design.theta_free)
        else:
            self.estimates = glm_estimates(design, self.family)
            self.priors = resolve_priors(priors, design, self.estimates, self.family)
            p = design.X.shape[1]
            data = GLMData(CODES[self.family.name], design.X, design.Z, design.offset,
                           np.asarray(design.y, dtype=float), design.trials, design.starts)
            self.kernel = GLMMetropolis(data, self.priors, design.theta_free, proposal=proposal,
                                        b_start=self.estimates.b_group, alpha_info=self.estimates.info_pool[p:, p:])

    @property
    def sampler(self) -> str:
        return "gibbs" if self.family.is_gaussian else f"metropolis-within-gibbs ({self.proposal} proposal)"

    def fit(
        self,
        chains: int = 4,
        draws: int = 1000,
        warmup: int = 1000,
        seed: int | None = None,
        cores: int | None = None,
        progress: bool = True,
        log_likelihood: bool | str = "auto",
    ) -> Fit:
        """Sample the posterior: ``chains`` chains of ``warmup`` + ``draws`` sweeps.

        ``cores`` worker processes (default: one per chain, capped by the machine's
        cores; 1 runs the chains in this process). The same ``seed`` gives the same draws
        whatever ``cores`` is. ``log_likelihood``: store the pointwise log-likelihood
        (True), not (False), or when chains x draws x rows <= ``LOGLIK_STORE_LIMIT`` ("auto").
        """
        chains = _count(chains, "chains", 1)
        draws = _count(draws, "draws", 1)
        warmup = _count(warmup, "warmup", 0)
        seed = check_seed(seed)
        if cores is not None:
            cores = _count(cores, "cores", 1)
        result = run_chains(self.kernel, chains=chains, draws=draws, warmup=warmup, seed=seed, cores=cores, progress=progress)
        d = self.design
        store = log_likelihood if isinstance(log_likelihood, bool) else chains * draws * d.n_obs <= LOGLIK_STORE_LIMIT
        attrs = {
            "formula": self.spec.formula,
            "family": self.family.name,
            "priors": self.priors.to_json(),
            "multilevel_version": __version__,
            "sampler": self.sampler,
            "seed": result.seed_entropy,
            "warmup": warmup,
            "n_obs": d.n_obs,
            "group_factor": self.spec.group,
            "zero_mean_terms": json.dumps([t for t, f in zip(d.varying_terms, d.theta_free) if not f]),
            "sampling_seconds": result.sampling_seconds,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "log_likelihood": "stored" if store else "on demand",
        }
        fit = Fit(to_inference_data(result.draws, d, None, attrs), design=d)
        if store:
            fit.idata.add_groups(log_likelihood=fit.log_likelihood().to_dataset())
        return fit


def fit(
    formula: str,
    data: Any,
    family: str = "gaussian",
    priors: Priors | dict | None = None,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    seed: int | None = None,
    progress: bool = True,
    cores: int | None = None,
    na_action: NaAction = "drop",
    log_likelihood: bool | str = "auto",
    offset: Any = None,
    proposal: str = "laplace",
) -> Fit:
    """Fit a hierarchical model: ``Model(formula, data, family, priors, ...).fit(...)``."""
    model = Model(formula, data, family=family, priors=priors, na_action=na_action, offset=offset, proposal=proposal)
    return model.fit(chains=chains, draws=draws, warmup=warmup, seed=seed, cores=cores, progress=progress,
                     log_likelihood=log_likelihood)
