"""Conversion of draws to ArviZ InferenceData: the one module that knows ArviZ's form.

Posterior variables and their dims:

* ``theta`` (term): population means of the varying terms (0 where a term has no mean);
* ``Sigma`` (term, term_): covariance of the group effects;
* ``sigma2``: residual variance (Gaussian family);
* ``beta`` (group, term): each group's coefficients, labelled by the group labels of the
  data as strings (as lme4 labels factor levels: ``beta.sel(group="1224")`` whether the
  column held numbers or text);
* ``alpha`` (fixed_term): fixed-only effects, left out when the model has none (ArviZ's
  plots fail on empty variables).

A fit keeps these groups as plain xarray Datasets (:func:`fit_groups`); the ArviZ
InferenceData is made from them on first use (:func:`to_inference_data`), so that fitting,
reporting and saving never import ArviZ, which costs about two CPU seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import warnings

import numpy as np
import pandas as pd
import xarray as xr

from .factors import label_key

if TYPE_CHECKING:  # annotations only: reading a saved fit needs no formula parser
    from .design import Design



def arviz() -> Any:
    """The ``arviz`` module, imported on first use (ArviZ 0.2x announces its 1.x refactor on import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as module
    return module


class _LazyArviz:
    """``az.<name>`` imports ArviZ at its first use, not when this package is imported."""

    def __getattr__(self, name: str) -> Any:
        return getattr(arviz(), name)


az = _LazyArviz()

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

SAMPLE_STATS: dict[str, list[str]] = {"loglik": [], "accept_beta": ["group"], "accept_alpha": [], "accept_theta": [], "accept_Sigma": [],
                                      "accept_phi": []}


def label_values(labels: pd.Index) -> np.ndarray:
    """Group labels as strings (:func:`label_key`), whatever the column held (numbers, text or
    categories), so that a label is spelled the same however the data were read (``"1224"``,
    as R spells factor levels)."""
    return np.asarray([label_key(v) for v in np.asarray(labels, dtype=object)], dtype=str)


def index_values(labels: pd.Index) -> np.ndarray:
    """Row labels (a DataFrame's index) as an array NetCDF can store: numbers stay numbers,
    anything else becomes strings."""
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
    }


def _dataset(values: dict[str, np.ndarray], dims: dict[str, list[str]], coords: dict[str, Any],
             leading: tuple[str, ...]) -> xr.Dataset:
    """A Dataset of ``values`` whose dims are ``leading`` then ``dims[name]``, with the coords
    its dims use (``chain`` and ``draw`` numbered from 0, as ArviZ numbers them)."""
    out = {}
    for name, v in values.items():
        v = np.asarray(v)
        names = (*leading, *dims.get(name, [f"{name}_dim_{k}" for k in range(v.ndim - len(leading))]))
        out[name] = xr.DataArray(v, dims=names)
    ds = xr.Dataset(out)
    used = {d: (coords[d] if d in coords else np.arange(ds.sizes[d])) for d in ds.dims
            if d in coords or d in ("chain", "draw")}
    return ds.assign_coords(used)


def fit_groups(draws: dict[str, np.ndarray], design: Design, attrs: dict[str, Any]) -> dict[str, xr.Dataset]:
    """The groups of a fit as xarray Datasets, in ArviZ's layout (draws have shape (chain, draw, ...)):
    ``posterior``, ``sample_stats``, ``observed_data``, ``constant_data`` and ``training_data``.

    Variables with no entries (``alpha`` of a model without fixed-only terms) are left out.
    ``constant_data`` leaves out an offset of zeros and trials of ones (readers default to
    them) and stores the group index as 32-bit integers.
    """
    coords = coords_of(design)
    posterior = {k: v for k, v in draws.items() if k in POSTERIOR_DIMS and np.size(v)}
    sample_stats = {k: v for k, v in draws.items() if k in SAMPLE_STATS}
    n_groups = design.n_groups
    constant = {"X": design.X, "Z": design.Z, "group_index": design.group.astype(np.int32 if n_groups < 2**31 else np.int64),
                "row_label": index_values(design.row_labels)}
    if np.any(design.offset != 0):
        constant["offset"] = design.offset
    if np.any(design.trials != 1):
        constant["trials"] = design.trials
    if design.weights is not None:
        constant["weights"] = design.weights
    data_dims = {"y": ["obs"], "X": ["obs", "term"], "Z": ["obs", "fixed_term"], "group_index": ["obs"],
                 "row_label": ["obs"], "offset": ["obs"], "trials": ["obs"], "weights": ["obs"]}
    clean_attrs = {k: (v if isinstance(v, (str, int, float)) else json.dumps(v)) for k, v in attrs.items()}
    groups = {
        "posterior": _dataset(posterior, POSTERIOR_DIMS, coords, ("chain", "draw")),
        "sample_stats": _dataset(sample_stats, SAMPLE_STATS, coords, ("chain", "draw")),
        "observed_data": _dataset({"y": np.asarray(design.y)}, data_dims, coords, ()),
        "constant_data": _dataset(constant, data_dims, coords, ()),
    }
    groups["posterior"].attrs.update(clean_attrs)
    groups["training_data"] = frame_to_dataset(training_frame(design))
    return groups


def factor_dims(name: str, one: bool) -> tuple[str, str]:
    """The dims of a factor's levels and terms: ``group`` and ``term`` in a one-factor fit,
    else the factor's name and ``<factor>_term`` (``s``, ``s_term``; ``dept:service``, ...)."""
    return ("group", "term") if one else (name, f"{name}_term")


def crossed_fit_groups(draws: dict[str, np.ndarray], design: Any, attrs: dict[str, Any]) -> dict[str, xr.Dataset]:
    """:func:`fit_groups` of a model with several random-effects terms
    (:class:`~multilevel.design.CrossedDesign`): per factor f, ``Sigma_<f>`` (``<f>_term``,
    ``<f>_term_``) and ``beta_<f>`` (``<f>``, ``<f>_term``), labelled by the factor's levels as
    strings; a fit with one factor (``(x || g)``) keeps ``Sigma`` (term, term_) and ``beta``
    (group, term), its theta spanning the factor's terms. ``constant_data`` holds the fixed
    design ``F`` (obs, fixed), and per factor its covariates ``Z_<f>`` and level index
    ``index_<f>``, and as in :func:`fit_groups` a non-zero ``offset`` and trials other than 1
    (GLMs)."""
    one = len(design.factors) == 1
    dims: dict[str, list[str]] = {"sigma2": [], "phi": [], "alpha": ["fixed_term"], "theta": ["term"]}
    coords: dict[str, Any] = {"fixed_term": list(design.alpha_terms), "fixed": list(design.fixed_names)}
    coords["term"] = list(design.factors[0].names) if one else list(design.theta_terms)
    constant = {"F": design.F, "row_label": index_values(design.row_labels)}
    data_dims = {"y": ["obs"], "F": ["obs", "fixed"], "row_label": ["obs"], "weights": ["obs"], "offset": ["obs"],
                 "trials": ["obs"]}
    for f in design.factors:
        level, term = factor_dims(f.name, one)
        sig, beta = ("Sigma", "beta") if one else (f"Sigma_{f.name}", f"beta_{f.name}")
        dims[sig], dims[beta] = [term, f"{term}_"], [level, term]
        coords[level], coords[term], coords[f"{term}_"] = label_values(pd.Index(f.labels)), list(f.names), list(f.names)
        constant[f"Z_{f.name}"] = f.Z
        constant[f"index_{f.name}"] = f.index.astype(np.int32 if f.n_levels < 2**31 else np.int64)
        data_dims[f"Z_{f.name}"], data_dims[f"index_{f.name}"] = ["obs", term], ["obs"]
    if design.weights is not None:
        constant["weights"] = design.weights
    if np.any(design.offset != 0):
        constant["offset"] = design.offset
    if np.any(design.trials != 1):
        constant["trials"] = design.trials
    posterior = {k: v for k, v in draws.items() if k in dims and np.size(v)}
    sample_stats = {k: v for k, v in draws.items() if k in SAMPLE_STATS}
    clean_attrs = {k: (v if isinstance(v, (str, int, float)) else json.dumps(v)) for k, v in attrs.items()}
    groups = {
        "posterior": _dataset(posterior, dims, coords, ("chain", "draw")),
        "sample_stats": _dataset(sample_stats, SAMPLE_STATS, coords, ("chain", "draw")),
    }
    groups["posterior"].attrs.update(clean_attrs)
    if design.in_memory:  # a partitioned design's rows stay where they are (the fit records where)
        groups["observed_data"] = _dataset({"y": np.asarray(design.y)}, data_dims, coords, ())
        groups["constant_data"] = _dataset(constant, data_dims, coords, ())
        groups["training_data"] = frame_to_dataset(training_frame(design))
    else:
        from .distributed.design import CODING_GROUP, coding_dataset

        groups[CODING_GROUP] = coding_dataset(design)
    return groups


def training_frame(design: Any) -> pd.DataFrame:
    """The formula's columns of the rows used, with the ``offset=`` and ``weights=`` arguments
    as columns :data:`OFFSET_COLUMN` and :data:`WEIGHTS_COLUMN` where given."""
    frame = design.frame
    if design.offset_argument is not None:
        frame = frame.assign(**{OFFSET_COLUMN: design.offset_argument})
    if design.weights is not None:
        frame = frame.assign(**{WEIGHTS_COLUMN: design.weights})
    return frame


def to_inference_data(groups: dict[str, xr.Dataset]) -> Any:
    """An ArviZ InferenceData of a fit's groups (the Datasets themselves, not copies)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # groups ArviZ does not know (training_data, sampler_state)
        return arviz().InferenceData(**groups)


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


#: arrays at least this large whose values are integers, booleans or fixed-width text are
#: written compressed (gzip level 1 after byte shuffling: group indices, labels, counts);
#: floating-point draws and data are written as they are, since random doubles do not
#: compress and compressing them would cost more time than it saves space
COMPRESS_MIN_SIZE = 4096


def encoding_of(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """NetCDF encoding of ``ds``'s variables: compression per :data:`COMPRESS_MIN_SIZE`."""
    out = {}
    for name, var in ds.variables.items():
        if var.dtype.kind in "biu" and var.size >= COMPRESS_MIN_SIZE:
            out[name] = {"zlib": True, "complevel": 1, "shuffle": True}
    return out


def write_groups(groups: dict[str, xr.Dataset], path: str | Path, partial: bool = False) -> dict[str, str]:
    """Write each Dataset as a NetCDF group of the file ``path`` (ArviZ's layout, so
    ``az.from_netcdf`` reads it). A group that cannot be written (an attribute HDF5 cannot
    hold, say) raises, or with ``partial`` is left out; returns {group: why} of those left
    out. An ``OSError`` (disk full, no permission) always raises."""
    failed: dict[str, str] = {}
    mode = "w"
    for name, ds in groups.items():
        try:
            ds.to_netcdf(path, mode=mode, group=name, engine="h5netcdf", encoding=encoding_of(ds))
        except OSError:
            raise
        except Exception as exc:
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
            if not partial:
                from .errors import ModelError

                raise ModelError(f"cannot save group {name!r} of the fit: {why}; the fit is unchanged in memory") from None
            failed[name] = why
            if mode == "a":
                _drop_group(path, name)
            continue
        mode = "a"
    return failed


def _drop_group(path: str | Path, name: str) -> None:
    """Remove what a failed write left of group ``name`` in the file."""
    import h5py

    with h5py.File(path, "a") as f:
        if name in f:
            del f[name]


#: groups at most this large (bytes) are read into memory at once; larger ones are read as
#: they are used (the per-group draws of a large fit: a summary never reads them)
EAGER_BYTES = 50_000_000


def read_groups(path: str | Path) -> dict[str, xr.Dataset]:
    """Every group of a NetCDF file written by :func:`write_groups` (or ArviZ). Small groups
    are read into memory; larger ones (:data:`EAGER_BYTES`) stay in the file and are read
    as used. Writing a fit over its own file is safe: the open file keeps its old content."""
    import h5netcdf

    with h5netcdf.File(path, "r") as f:
        names = list(f.groups)
    groups = {}
    for name in names:
        ds = xr.open_dataset(path, group=name, engine="h5netcdf")
        groups[name] = ds.load() if ds.nbytes <= EAGER_BYTES else ds
    return groups
