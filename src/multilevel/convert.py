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
SAMPLE_STATS = ("loglik",)


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
    dims.update({"y": ["obs"], "X": ["obs", "term"], "Z": ["obs", "fixed_term"], "group_index": ["obs"], "row_label": ["obs"]})
    row_label = label_values(design.row_labels)
    clean_attrs = {k: (v if isinstance(v, (str, int, float)) else json.dumps(v)) for k, v in attrs.items()}
    idata = az.from_dict(
        posterior=posterior,
        sample_stats=sample_stats,
        log_likelihood={"y": log_likelihood} if log_likelihood is not None else None,
        observed_data={"y": np.asarray(design.y)},
        constant_data={"X": design.X, "Z": design.Z, "group_index": design.group, "row_label": row_label},
        coords=coords,
        dims=dims,
    )
    idata.posterior.attrs.update(clean_attrs)
    return idata
