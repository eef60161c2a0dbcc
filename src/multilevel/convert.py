"""Conversion of draws to ArviZ InferenceData: the one module that knows ArviZ's form.

Posterior variables and their dims:

* ``theta`` (term): population means of the varying terms (0 where a term has no mean);
* ``Sigma`` (term, term_): covariance of the group effects;
* ``sigma2``: residual variance (Gaussian family);
* ``beta`` (group, term): each group's coefficients, labelled by the real group labels;
* ``alpha`` (fixed_term): fixed-only effects.
"""

from __future__ import annotations

import json
from typing import Any

import warnings

import numpy as np
import pandas as pd
import xarray as xr

from .design import Design

with warnings.catch_warnings():  # ArviZ 0.2x announces its 1.x refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

POSTERIOR_DIMS: dict[str, list[str]] = {
    "theta": ["term"],
    "Sigma": ["term", "term_"],
    "sigma2": [],
    "beta": ["group", "term"],
    "alpha": ["fixed_term"],
}
#: sample_stats: ``loglik`` the total log-likelihood of the draw (for GLMs up to the
#: constants log y! and log binomial(n, y)); ``accept_beta`` (group) and ``accept_theta``
#: whether each Metropolis proposal of the draw's sweep was accepted (GLMs), ``accept_alpha``
#: and ``accept_Sigma`` the share of its joint alpha moves and of its Sigma moves accepted
#: (GLMs and the collapsed Gaussian sampler).
#: the training-data column that holds an ``offset=`` argument (not a formula term)
OFFSET_COLUMN = "(offset argument)"
#: the training-data column that holds the ``weights=`` argument (Gaussian precision weights);
#: a weighted fit also has ``weights`` (obs) in constant_data
WEIGHTS_COLUMN = "(weights argument)"

SAMPLE_STATS: dict[str, list[str]] = {"loglik": [], "accept_beta": ["group"], "accept_alpha": [], "accept_theta": [], "accept_Sigma": []}


def label_values(labels: pd.Index) -> np.ndarray:
    """Group labels as an array NetCDF can store: numbers stay numbers, the rest strings."""
    if isinstance(labels, pd.CategoricalIndex):
        labels = pd.Index(np.asarray(labels.astype(labels.categories.dtype)))
    values = np.asarray(labels)
    if values.dtype.kind in "biuf":
        return values
    return np.asarray([str(v) for v in values], dtype=str)


def coords_of(design: Design) -> dict[str, Any]:
    return {
        "term": list(design.varying_terms),
        "term_": list(design.varying_terms),
        "group": label_values(design.group_labels),
        "fixed_term": list(design.fixed_terms),
        "obs": np.arange(design.n_obs),
    }


def to_inference_data(
    draws: dict[str, np.ndarray],
    design: Design,
    log_likelihood: np.ndarray | None,
    attrs: dict[str, Any],
) -> az.InferenceData:
    """Build the InferenceData of a fit from the chains' draws (shapes (chain, draw, ...))."""
    coords = coords_of(design)
    posterior = {k: v for k, v in draws.items() if k in POSTERIOR_DIMS}
    sample_stats = {k: v for k, v in draws.items() if k in SAMPLE_STATS}
    dims = {k: POSTERIOR_DIMS[k] for k in posterior}
    dims.update({k: SAMPLE_STATS[k] for k in sample_stats})
    dims.update({"y": ["obs"], "X": ["obs", "term"], "Z": ["obs", "fixed_term"], "group_index": ["obs"], "row_label": ["obs"],
                 "offset": ["obs"], "trials": ["obs"], "weights": ["obs"]})
    row_label = label_values(design.row_labels)
    clean_attrs = {k: (v if isinstance(v, (str, int, float)) else json.dumps(v)) for k, v in attrs.items()}
    idata = az.from_dict(
        posterior=posterior,
        sample_stats=sample_stats,
        log_likelihood={"y": log_likelihood} if log_likelihood is not None else None,
        observed_data={"y": np.asarray(design.y)},
        constant_data={"X": design.X, "Z": design.Z, "group_index": design.group, "row_label": row_label,
                       "offset": design.offset, "trials": design.trials,
                       **({"weights": design.weights} if design.weights is not None else {})},
        coords=coords,
        dims=dims,
    )
    idata.posterior.attrs.update(clean_attrs)
    frame = design.frame
    if design.offset_argument is not None:
        frame = frame.assign(**{OFFSET_COLUMN: design.offset_argument})
    if design.weights is not None:
        frame = frame.assign(**{WEIGHTS_COLUMN: design.weights})
    idata.add_groups(training_data=frame_to_dataset(frame))
    return idata


def frame_to_dataset(frame: pd.DataFrame) -> xr.Dataset:
    """The formula's columns as a Dataset (dim ``obs``) that NetCDF can store.

    Numbers and booleans stay as they are; other columns become strings, and a
    categorical column keeps its categories (in order) in the variable's attributes.
    """
    out = {}
    for name, col in frame.items():
        attrs = {}
        if isinstance(col.dtype, pd.CategoricalDtype):
            attrs["categories"] = json.dumps([str(c) for c in col.cat.categories])
            attrs["ordered"] = int(bool(col.cat.ordered))
            values = np.asarray(col.astype(str), dtype=str)
        elif pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            values = col.to_numpy()
        else:
            values = np.asarray(col.astype(str), dtype=str)
        out[str(name)] = xr.DataArray(values, dims=("obs",), attrs=attrs)
    return xr.Dataset(out)


def dataset_to_frame(ds: xr.Dataset) -> pd.DataFrame:
    """Inverse of :func:`frame_to_dataset`."""
    cols = {}
    for name, var in ds.data_vars.items():
        values = var.values
        if "categories" in var.attrs:
            cats = json.loads(var.attrs["categories"])
            cols[name] = pd.Categorical(values.astype(str), categories=cats, ordered=bool(var.attrs.get("ordered", 0)))
        elif values.dtype.kind in "US":
            cols[name] = values.astype(str).astype(object)
        else:
            cols[name] = values
    return pd.DataFrame(cols)


def sampler_state_to_dataset(chains: list[Any], warmup: int, target_draws: int) -> xr.Dataset:
    """Each chain's kernel state and generator, to resume the run exactly.

    A state is a NamedTuple of arrays: field ``f`` becomes variable ``f`` with dims
    (chain, f_0, f_1, ...); the generators' states are JSON in the attributes.
    """
    first = chains[0].state
    out = {}
    for name in first._fields:
        values = np.stack([np.asarray(getattr(c.state, name)) for c in chains])
        out[name] = xr.DataArray(values, dims=("chain", *[f"{name}_{k}" for k in range(values.ndim - 1)]))
    attrs = {
        "state_type": type(first).__name__,
        "rng_states": json.dumps([c.rng.bit_generator.state for c in chains]),
        "iteration": int(chains[0].iteration),
        "warmup": int(warmup),
        "target_draws": int(target_draws),
    }
    return xr.Dataset(out, attrs=attrs)


def sampler_state_from_dataset(ds: xr.Dataset, state_type: Any) -> list[Any]:
    """Inverse of :func:`sampler_state_to_dataset`: a list of :class:`~multilevel.run.ChainState`."""
    from .run import ChainState

    rng_states = json.loads(ds.attrs["rng_states"])
    chains = []
    for c, rng_state in enumerate(rng_states):
        fields = {}
        for name in state_type._fields:
            v = np.asarray(ds[name].values[c])
            fields[name] = v.item() if v.ndim == 0 and v.dtype.kind in "fb" else v
        bit_generator = getattr(np.random, rng_state["bit_generator"])()
        bit_generator.state = rng_state
        chains.append(ChainState(state_type(**fields), np.random.Generator(bit_generator), int(ds.attrs["iteration"])))
    return chains
