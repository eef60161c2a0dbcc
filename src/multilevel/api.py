"""The user-facing entry points: :class:`Model`, built once and fitted several times, and :func:`fit`."""

from __future__ import annotations

import json
import numbers
import os
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


from . import __version__
from .convert import (OFFSET_COLUMN, WEIGHTS_COLUMN, crossed_fit_groups, dataset_to_frame, fit_groups,
                      sampler_state_to_dataset)
from .design import (CrossedDesign, NaAction, build_design, check_crossed_identifiable, check_effect_count,
                     check_group_counts, check_identifiable, predictor_lines)
from .errors import ModelError, NumericalError
from .families import check_family, family_response, response_family
from .formula import binomial_proportion_with_weights, parse_formula
from .io import read_data
from .priors import Priors
from .result import Fit, check_writable, load
from .run import ChainDraws, Recording, run_chains
from .samplers import registry
from .samplers.metropolis import PROPOSALS

#: where the rows are while the model is built: read into memory, or left in Dask partitions
ENGINES = ("pandas", "dask")

#: the ``sampler=`` names of one-term models, by family (the registry has every structure)
GAUSSIAN_SAMPLERS = tuple(registry.REGISTRY[("gaussian", "one term")])
GLM_SAMPLERS = tuple(registry.REGISTRY[("glm", "one term")])


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
    family : ``"gaussian"``, ``"poisson"``, ``"binomial"`` (response ``p(successes, trials)``;
        a 0/1 response is fitted as ``"bernoulli"``, as lme4's ``glmer(family = binomial)``), ``"bernoulli"`` or ``"negbinomial"`` (NB2, Var(y) = mu + mu^2 / phi; also spelled
        ``"negative_binomial"``, ``"nbinom2"``; see :mod:`multilevel.families`).
    priors : :class:`Priors` or dict of its fields; unset fields take the defaults.
    na_action : ``"drop"`` rows with missing values in used columns (with a warning), or ``"raise"``.
    offset : GLMs: a column name or one value per row added to the linear predictor
        (e.g. ``np.log(exposure)``); ``offset(...)`` in the formula does the same.
    weights : Gaussian: precision weights, a column name or one value per row, finite and
        positive (as lme4's ``weights``): row i has variance sigma2 / w_i. Zero weights are
        refused (drop those rows); other families refuse weights (binomial trials go in
        ``p(successes, trials)``).
    proposal : GLMs: ``"laplace"`` (default, per-group Fisher-information proposals) or
        ``"textbook"`` (the specification's MVN(beta_j, delta Sigma)).
    sampler : Gaussian: ``"collapsed"`` (default: also moves Sigma, theta and alpha with
        the group effects integrated out, :mod:`multilevel.samplers.collapsed`) or
        ``"interweaving"`` (centred Gibbs interwoven with non-centred draws of theta and Sigma,
        :mod:`multilevel.samplers.interweaving`) or ``"centred"`` (the specification's Gibbs
        sampler, :mod:`multilevel.samplers.gibbs`). GLMs: ``"interweaving"`` (the Gibbs draws
        of theta and Sigma each followed by partially non-centred Metropolis moves), ``"centred"``
        (Gibbs draws only, as in the specification) or ``"auto"`` (default: interweaving when the
        groups inform their effects weakly or the data are small, decided in warm-up);
        see :mod:`multilevel.samplers.metropolis`; binomial and bernoulli also ``"polya-gamma"``
        (Polya-Gamma augmentation, each sweep a Gaussian update of the several-factor sampler,
        :mod:`multilevel.samplers.polya_gamma`; their default with several grouping factors;
        negbinomial's default, with a Metropolis step for phi,
        :mod:`multilevel.samplers.negbinomial`); ``"sharded"`` (GLMs, one factor or several,
        negbinomial included: Metropolis-within-Gibbs over shards of whole levels, the Dask
        engine's GLM sampler, :mod:`multilevel.samplers.sharded`). Several grouping factors: ``"metropolis"``
        (Metropolis-within-Gibbs, all levels of a factor at once,
        :mod:`multilevel.samplers.crossed_metropolis`; Poisson's default, an option for
        binomial and bernoulli). ``None``: the family's default.
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
        sampler: str | None = None,
        weights: Any = None,
        engine: str = "pandas",
    ):
        self.family = check_family(family)
        if engine not in ENGINES:
            raise ModelError(f"engine must be one of {', '.join(map(repr, ENGINES))}, not {engine!r}")
        if proposal not in PROPOSALS:
            raise ModelError(f"proposal must be one of {', '.join(PROPOSALS)}, not {proposal!r}")
        if offset is not None and self.family.is_gaussian:
            raise ModelError("offset applies to the poisson, binomial, bernoulli and negbinomial families; for gaussian subtract it from the response")
        if weights is not None and self.family.name == "binomial" and isinstance(weights, str):
            formula, weights = binomial_proportion_with_weights(formula, weights), None  # lme4's trials as weights
        if weights is not None and self.family.name == "binomial":
            raise ModelError("binomial weights are the trials of a proportion response, as in lme4: give them as a "
                             "column name, weights='n', or write the response p(successes, trials)")
        if weights is not None and not self.family.is_gaussian:
            raise ModelError(f"weights apply to the gaussian family (precision weights) and to a binomial proportion "
                             f"(its trials), not to {self.family.name}; for binomial trials write the response "
                             "p(successes, trials)")
        spec = parse_formula(formula)
        self.family = response_family(self.family, spec.response)  # binomial with a 0/1 response: bernoulli, as glmer
        n_terms = len(spec.terms)
        if engine == "dask":
            sampler = dask_sampler(self.family, n_terms, sampler, spec)
            design = self._partitioned(spec, data, na_action, offset, weights)
        else:
            sampler = registry.choose(self.family, n_terms, sampler, spec.formula, ", ".join(map(str, spec.terms)))
            design = self._in_memory(spec, data, na_action, offset, weights, registry.crossed_design(n_terms, sampler))
        self.engine = engine
        self.spec = spec
        self.design = design
        self.proposal = proposal
        self.sampler_name = sampler
        #: how the fit's attrs name the weights: the column, or "given" for values
        self.weights_label = None if weights is None else (weights if isinstance(weights, str) else "given")
        built = registry.build(self.family, n_terms, sampler, design, priors, proposal)
        self.kernel, self.priors, self.stats, self.estimates = built.kernel, built.priors, built.stats, built.estimates

    def _in_memory(self, spec: Any, data: Any, na_action: NaAction, offset: Any, weights: Any, crossed: bool) -> Any:
        """The design of rows read into memory, checked."""
        frame = read_data(data)
        design = build_design(spec, frame, na_action, offset=offset, weights=weights,
                              gaussian=self.family.is_gaussian, crossed=crossed)
        design.y, design.trials = family_response(self.family, design.y, spec.response, design.response_kind, design.response_levels)
        if isinstance(design, CrossedDesign):
            check_crossed_identifiable(design, self.family.is_gaussian)
        else:
            check_group_counts(design, self.family.is_gaussian)
            check_identifiable(design)
            if design.n_groups < 2:
                raise ModelError(f"grouping factor {spec.group!r} has {design.n_groups} level; a multilevel model "
                                 "needs at least 2 groups")
        return design

    def _partitioned(self, spec: Any, data: Any, na_action: NaAction, offset: Any, weights: Any) -> Any:
        """The design of rows left in their partitions (:mod:`multilevel.distributed`), checked
        as far as no row is read: the response's kind on the first rows, and the counts."""
        from .distributed.design import build_partitioned_design

        if offset is not None:
            raise ModelError("with engine='dask' write the offset in the formula, e.g. y ~ x + offset(log(exposure)) "
                             "+ (1 | g)")
        design = build_partitioned_design(spec, data, na_action, weights=weights, family=self.family.name)
        proto = design.plan.prototype
        family_response(self.family, proto.y, spec.response, proto.response_kind, proto.response_levels)
        check_effect_count(design)
        return design

    @property
    def sampler(self) -> str:
        return registry.describe(self.family, len(self.spec.terms), self.sampler_name, self.proposal)

    def fit(
        self,
        chains: int = 4,
        draws: int = 1000,
        warmup: int = 1000,
        seed: int | None = None,
        cores: int | None = None,
        progress: bool = True,
        log_likelihood: bool = False,
        checkpoint: int | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        posterior_predictive: bool = False,
        group_draws: bool = True,
    ) -> Fit:
        """Sample the posterior: ``chains`` chains of ``warmup`` + ``draws`` sweeps.

        ``cores`` worker processes (default: one per chain, capped by the machine's cores,
        or none when all the sweeps would take under ``multilevel.run.SERIAL_BELOW_SECONDS``
        CPU seconds, as timed on a few sweeps; 1 runs the chains in this process). The same
        ``seed`` gives the same draws whatever ``cores`` is. ``log_likelihood=True`` stores the pointwise log-likelihood
        (chains x draws x rows numbers) in the fit; otherwise :meth:`Fit.loo` and
        :meth:`Fit.waic` compute it when asked and :meth:`Fit.add_log_likelihood` adds it.
        ``checkpoint``: every so many sweeps write the fit so far to ``checkpoint_path``
        (atomically). Ctrl-C stops sampling and returns the draws so far with a warning;
        :meth:`resume` continues such a fit.
        ``group_draws=False`` keeps no per-group draws (``beta``): chains x draws x groups x
        terms numbers, most of a large model's memory and file (1.3 GB at 20,000 groups of
        two terms, 4 x 1000 draws); the fit then has its population parameters only, and
        cannot give per-group results, predictions for seen groups, or be resumed.
        ``posterior_predictive``: also draw replicated responses into the ``posterior_predictive``
        group (:meth:`Fit.posterior_predictive`, seeded from the run's seed).
        """
        chains = _count(chains, "chains", 1)
        draws = _count(draws, "draws", 1)
        warmup = _count(warmup, "warmup", 0)
        seed = check_seed(seed)
        if cores is not None:
            cores = _count(cores, "cores", 1)
        in_process = getattr(self.kernel, "in_process", False)
        if in_process and checkpoint is not None:
            raise ModelError(f"sampler {self.sampler_name!r} keeps no checkpoints (its chains' group effects live "
                             "with their rows): leave checkpoint unset")
        on_checkpoint = self._checkpointer(checkpoint, checkpoint_path)
        kernel = self.kernel if group_draws else Recording(self.kernel, getattr(self.kernel, "group_variables",
                                                                                  frozenset({"beta"})))
        if in_process:
            self.kernel.keep_groups = group_draws
        result = run_chains(kernel, chains=chains, draws=draws, warmup=warmup, seed=seed, cores=cores,
                            progress=progress, checkpoint=checkpoint, on_checkpoint=on_checkpoint)
        if in_process:
            self.kernel.collect(result)
        fit = self.to_fit(result, log_likelihood)
        if posterior_predictive:
            fit.posterior_predictive(seed=result.seed_entropy)
        return fit

    def resume(self, fit: Fit, draws: int | None = None, cores: int | None = None, progress: bool = True,
               log_likelihood: bool = False, checkpoint: int | None = None,
               checkpoint_path: str | os.PathLike | None = None) -> Fit:
        """Continue ``fit`` (a fit of this model): to its planned number of draws if it was
        interrupted, plus ``draws`` more if given. The draws equal those of one uninterrupted run."""
        if getattr(self.kernel, "in_process", False):
            raise ModelError(f"a fit of sampler {self.sampler_name!r} cannot be resumed (its chains' group effects "
                             "lived with their rows): fit again with more draws")
        previous = fit.chain_draws(type(self.kernel).State)
        target = previous.target_draws if draws is None else max(previous.n_draws, previous.target_draws) + _count(draws, "draws", 1)
        if target <= previous.n_draws:
            raise ModelError(f"the fit already has its {previous.n_draws} draws; ask for more with draws=N (--draws N)")
        if cores is not None:
            cores = _count(cores, "cores", 1)
        on_checkpoint = self._checkpointer(checkpoint, checkpoint_path)
        result = run_chains(self.kernel, chains=len(previous.chains), draws=target, warmup=previous.warmup, seed=None,
                            cores=cores, progress=progress, checkpoint=checkpoint, on_checkpoint=on_checkpoint,
                            resume=previous)
        return self.to_fit(result, log_likelihood)

    def _checkpointer(self, checkpoint: int | None, path: str | os.PathLike | None) -> Any:
        if checkpoint is None:
            return None
        _count(checkpoint, "checkpoint", 1)
        if path is None:
            raise ModelError("checkpoint needs checkpoint_path, the file to write (in the CLI: --out)")
        path = Path(path)
        check_writable(path, overwrite=True)
        return lambda result: self.to_fit(result, log_likelihood=False, quiet=True).save(path, overwrite=True)

    def to_fit(self, result: ChainDraws, log_likelihood: bool = False, quiet: bool = False) -> Fit:
        """The :class:`Fit` of a run's draws, with the chains' state for resuming."""
        d = self.design
        if not result.draws:
            if result.error:
                raise NumericalError(result.error)
            raise ModelError("sampling stopped during warm-up: no draws to keep; run again")
        n_draws = result.n_draws
        if not isinstance(log_likelihood, bool):
            raise ModelError(f"log_likelihood must be True or False, got {log_likelihood!r}")
        attrs = {
            "formula": self.spec.formula,
            "family": self.family.name,
            "priors": self.priors.to_json(),
            "multilevel_version": __version__,
            "bs_basis": "R",  # bs() in the formula is R's basis (older fits: formulae's, centred)
            "sampler": self.sampler,
            "proposal": self.proposal,
            "proposal_scale": "angle",  # the Laplace proposal's log_scale is log phi_j (older fits: a Langevin step)
            "sampler_name": self.sampler_name,
            # a drawn entropy has up to 128 bits, more than NetCDF integers hold: kept as its decimal string
            "seed": result.seed_entropy if result.seed_entropy < 2**63 else str(result.seed_entropy),
            "warmup": result.warmup,
            "target_draws": result.target_draws,
            "n_obs": d.n_obs,
            "n_groups": json.dumps(d.n_groups) if isinstance(d, CrossedDesign) else d.n_groups,
            "group_factor": (", ".join(f.name for f in d.factors) if isinstance(d, CrossedDesign)
                             else self.spec.group),
            "predictors": "\n".join(predictor_lines(d)),  # how each predictor was read, for the report
            "zero_mean_terms": json.dumps(zero_mean_terms(d)),
            "sampling_seconds": result.sampling_seconds,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "log_likelihood": "stored" if log_likelihood else "on demand",
            "complete": int(result.complete),
            **({} if getattr(d, "in_memory", True) else {"engine": self.engine, "data_source": d.source,
                                       "partitions": d.n_partitions}),
            **({} if any(k == "beta" or k.startswith("beta_") for k in result.draws) else {"group_draws": "left out"}),
        }
        if self.weights_label is not None:
            attrs["weights"] = self.weights_label
        groups = crossed_fit_groups(result.draws, d, attrs) if isinstance(d, CrossedDesign) else fit_groups(
            result.draws, d, attrs)
        fit = Fit(groups, design=d)
        fit.set_group("sampler_state", sampler_state_to_dataset(result.chains, result.warmup, result.target_draws))
        if log_likelihood:
            fit.add_log_likelihood()
        if result.error and not quiet:
            raise NumericalError(f"{result.error}; the draws up to then are in the error's .fit", fit)
        if result.interrupted and not quiet:
            warnings.warn(f"sampling interrupted: the fit holds {n_draws} of {result.target_draws} draws per chain; "
                          "continue it with multilevel.resume (CLI: multilevel resume)", stacklevel=3)
        return fit


def dask_sampler(family: Any, n_terms: int, sampler: str | None, spec: Any) -> str:
    """The sampler of a model fitted with ``engine="dask"``: Gaussian models by the collapsed
    blocked Gibbs sampler of several factors (``"blocked"`` for one term), which reads only
    statistics summed partition by partition; GLMs (Poisson, binomial, Bernoulli, negative binomial), of one grouping
    factor or several, by ``"sharded"``, whose shards of whole levels (of the factor with the most
    levels) stay on the workers; the negative binomial too, with its phi move
    (:mod:`multilevel.samplers.sharded`)."""
    if family.is_gaussian:
        wanted = "blocked" if n_terms == 1 else "collapsed"
    else:
        wanted = "sharded"
    if sampler not in (None, wanted):
        raise ModelError(f"engine='dask' fits this model with sampler {wanted!r}, not {sampler!r}: leave sampler unset")
    return registry.choose(family, n_terms, wanted, spec.formula, ", ".join(map(str, spec.terms)))


def zero_mean_terms(design: Any) -> list[str]:
    """The varying terms whose population mean is fixed at 0 (one-factor fits, where theta
    spans the factor's terms)."""
    if isinstance(design, CrossedDesign):
        if len(design.factors) > 1:
            return []
        f = design.factors[0]
        return [n for n, i in zip(f.names, f.mean_index) if i < 0]
    return [t for t, f in zip(design.varying_terms, design.theta_free) if not f]


def model_of(fit: Fit) -> Model:
    """Rebuild the :class:`Model` of a fit (same data, priors and sampler) from what it stores."""
    attrs = fit.attrs
    frame = dataset_to_frame(fit.group("training_data"))
    offset = frame.pop(OFFSET_COLUMN).to_numpy() if OFFSET_COLUMN in frame else None
    weights = frame.pop(WEIGHTS_COLUMN).to_numpy() if WEIGHTS_COLUMN in frame else None
    priors = replace(Priors.from_json(attrs["priors"]), fallback=None)
    sampler = attrs.get("sampler_name")
    if sampler == "collapsed" and attrs["family"] != "gaussian":  # GLM fits saved before GLMs had a sampler option
        sampler = None
    model = Model(attrs["formula"], frame, family=attrs["family"], priors=priors, na_action="raise", offset=offset,
                  proposal=str(attrs.get("proposal", "laplace")), sampler=None if sampler is None else str(sampler),
                  weights=weights)
    if weights is not None:
        model.weights_label = str(attrs.get("weights", "given"))
    return model


def update(old: Fit | str | os.PathLike, formula: str | None = None, data: Any = None, **kwargs: Any) -> Fit:
    """lme4's ``update()``: the model fitted again with its formula changed by R's rules
    (:func:`multilevel.formula_update.update_formula`: ``". ~ . + x"``, ``". ~ . - x"``,
    ``"~ . + (1 | h)"``), on other ``data``, or with other settings (``kwargs`` of :func:`fit`).

    ``data`` left out: the fitted rows the fit keeps (the columns its formula used, with its
    weights and offset), so a new formula may use only those columns; a Dask fit reads its
    source (a path) again. With ``data``, weights given as a column name are taken from it;
    weights or an ``offset=`` given as values must be given again. The family, proposal,
    engine, chains, draws, warmup and seed are the fit's unless ``kwargs`` set them; the priors
    and the sampler are the new model's defaults unless set (the fit's belong to its design).
    ``old`` may be a path to a saved fit."""
    old = old if isinstance(old, Fit) else load(old)
    from .formula_update import update_formula

    attrs = old.attrs
    settings: dict[str, Any] = {
        "family": str(attrs["family"]), "proposal": str(attrs.get("proposal", "laplace")),
        "chains": int(old.posterior.sizes["chain"]), "draws": int(attrs.get("target_draws", old.posterior.sizes["draw"])),
        "warmup": int(attrs.get("warmup", 1000)), "seed": int(attrs["seed"]) if "seed" in attrs else None}
    if old.partitioned:
        source = str(attrs.get("data_source", ""))
        if data is None and source.startswith(("dask ", "pandas ", "polars ")):  # a frame, not a path
            raise ModelError(f"update: this Dask fit was made from {source!r}, which is not a path to read again; "
                             "pass data=")
        settings.update(engine="dask", data=source if data is None else data)
        if attrs.get("weights"):
            settings["weights"] = str(attrs["weights"])
    elif data is None:
        frame = dataset_to_frame(old.group("training_data"))
        settings.update(offset=frame.pop(OFFSET_COLUMN).to_numpy() if OFFSET_COLUMN in frame else None,
                        weights=frame.pop(WEIGHTS_COLUMN).to_numpy() if WEIGHTS_COLUMN in frame else None, data=frame)
    else:
        settings["data"] = data
        weights = attrs.get("weights")
        if weights is not None and "weights" not in kwargs:
            if not isinstance(data, str) and weights not in getattr(data, "columns", ()):
                raise ModelError(f"update: the fit had weights ({weights}); with new data give them again: weights=")
            settings["weights"] = str(weights)
        if OFFSET_COLUMN in old.group("training_data") and "offset" not in kwargs:
            raise ModelError("update: the fit had an offset= argument; with new data give it again: offset=")
    settings.update(kwargs)
    new_formula = str(attrs["formula"]) if formula is None else update_formula(str(attrs["formula"]), formula)
    if data is None and not old.partitioned:
        kept = settings["data"].columns
        missing = [v for v in parse_formula(new_formula).variables if v not in kept]
        if missing:
            raise ModelError(f"update: column {missing[0]!r} of {new_formula!r} is not among the columns the fit keeps "
                             f"({', '.join(map(str, kept))}); pass the data again: update(..., data=frame)")
    return fit(new_formula, **settings)


def resume(fit: Fit | str | os.PathLike, draws: int | None = None, **kwargs: Any) -> Fit:
    """Continue a saved or interrupted fit (see :meth:`Model.resume`); ``fit`` may be a path."""
    fit = fit if isinstance(fit, Fit) else load(fit)
    return model_of(fit).resume(fit, draws=draws, **kwargs)


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
    log_likelihood: bool = False,
    offset: Any = None,
    proposal: str = "laplace",
    posterior_predictive: bool = False,
    sampler: str | None = None,
    weights: Any = None,
    group_draws: bool = True,
    engine: str = "pandas",
) -> Fit:
    """Fit a hierarchical model: ``Model(formula, data, family, priors, ...).fit(...)``."""
    model = Model(formula, data, family=family, priors=priors, na_action=na_action, offset=offset, proposal=proposal,
                  sampler=sampler, weights=weights, engine=engine)
    return model.fit(chains=chains, draws=draws, warmup=warmup, seed=seed, cores=cores, progress=progress,
                     log_likelihood=log_likelihood, posterior_predictive=posterior_predictive, group_draws=group_draws)


def _lme4_options(kwargs: dict[str, Any], what: str) -> dict[str, Any]:
    """:func:`fit`'s keywords from an lme4-style call, R's estimation options refused in one line."""
    for name in ("REML", "control", "start", "verbose", "nAGQ", "subset", "contrasts"):
        if name in kwargs:
            raise ModelError(f"{what}({name}=...) is lme4's estimation option; a Bayesian fit has no use for it: leave it "
                             "out (priors=, chains=, draws= and warmup= are this fit's)")
    return kwargs


def lmer(formula: str, data: Any, **kwargs: Any) -> Fit:
    """lme4's ``lmer(formula, data)``: :func:`fit` of the Gaussian family (keywords as :func:`fit`)."""
    if "family" in kwargs:
        raise ModelError("lmer() fits the gaussian family; use glmer(formula, data, family=...) for another")
    return fit(formula, data, family="gaussian", **_lme4_options(kwargs, "lmer"))


def glmer(formula: str, data: Any, family: str = "gaussian", **kwargs: Any) -> Fit:
    """lme4's ``glmer(formula, data, family)``: :func:`fit` (family as R spells it too:
    ``"binomial"``, ``"poisson(link = 'log')"``; keywords as :func:`fit`)."""
    return fit(formula, data, family=family, **_lme4_options(kwargs, "glmer"))


def glmer_nb(formula: str, data: Any, **kwargs: Any) -> Fit:
    """lme4's ``glmer.nb(formula, data)``: :func:`fit` of the negative binomial (NB2) family."""
    if "family" in kwargs:
        raise ModelError("glmer_nb() fits the negative binomial family; use glmer(formula, data, family=...) for another")
    return fit(formula, data, family="negbinomial", **_lme4_options(kwargs, "glmer_nb"))
