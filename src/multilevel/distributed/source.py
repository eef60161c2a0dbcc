"""Open a model's data as a Dask DataFrame: one given, or files read partition by partition."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ModelError

#: rows per partition when an in-memory frame is handed to the Dask engine
PARTITION_ROWS = 1_000_000
_CSV = {".csv", ".txt", ".tsv"}
_PARQUET = {".parquet", ".pq"}


def data_files(source: str | Path) -> list[Path]:
    """The files a path, directory or glob names, sorted (a directory: its Parquet or CSV files)."""
    text = str(source)
    if any(c in text for c in "*?["):
        files = [Path(p) for p in sorted(glob.glob(text)) if Path(p).is_file()]
        if not files:
            raise ModelError(f"no files match {text!r}; give a Parquet or CSV file, directory or glob")
        return files
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _PARQUET | _CSV)
        if not files:
            raise ModelError(f"directory {text!r} holds no .parquet or .csv files")
        return files
    if not path.exists():
        raise ModelError(f"data path {text!r} not found; give a Parquet or CSV file, directory or glob")
    return [path]


def file_format(files: list[Path]) -> str:
    """``"parquet"`` or ``"csv"``: the one format of ``files`` (mixed formats are refused)."""
    kinds = {"parquet" if f.suffix.lower() in _PARQUET else "csv" if f.suffix.lower() in _CSV else f.suffix
             for f in files}
    if len(kinds) > 1 or not kinds <= {"parquet", "csv"}:
        raise ModelError(f"data files must all be .parquet or all .csv, found {', '.join(sorted(map(str, kinds)))}")
    return kinds.pop()


def open_dask(source: Any, columns: list[str] | None = None) -> Any:
    """``source`` as a Dask DataFrame: a Dask DataFrame as it is, a pandas (or polars) frame or a
    bundled data set split into partitions of :data:`PARTITION_ROWS` rows, or the files of a path, directory or
    glob (Parquet read by row group ranges, CSV by blocks), only ``columns`` read when given."""
    import dask.dataframe as dd

    if isinstance(source, dd.DataFrame):
        return source
    if hasattr(source, "to_pandas") and hasattr(source, "columns") and not isinstance(source, pd.DataFrame):
        source = source.to_pandas()
    if isinstance(source, str) and not Path(source).exists():
        from ..datasets import NAMES, load_dataset

        if source in NAMES:  # a bundled data set
            source = load_dataset(source)
    if isinstance(source, pd.DataFrame):
        return dd.from_pandas(source, npartitions=max(1, -(-len(source) // PARTITION_ROWS)), sort=False)
    if not isinstance(source, (str, Path)):
        raise ModelError(f"data for engine='dask' must be a Dask or pandas DataFrame or a Parquet/CSV path, "
                         f"directory or glob; got {type(source).__name__}")
    files = data_files(source)
    try:
        if file_format(files) == "parquet":
            return dd.read_parquet([str(f) for f in files], columns=columns)
        return dd.read_csv([str(f) for f in files], usecols=columns, sep="\t" if files[0].suffix == ".tsv" else ",")
    except ModelError:
        raise
    except (ValueError, OSError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot read {str(source)!r}: {first}") from None


def describe_source(source: Any) -> str:
    """How a fit records where its data came from."""
    if isinstance(source, (str, Path)):
        return str(source)
    return f"{type(source).__module__.split('.')[0]} {type(source).__name__}"


__all__ = ["PARTITION_ROWS", "data_files", "describe_source", "file_format", "open_dask"]
