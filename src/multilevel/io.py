"""Reading user data: DataFrames, CSV and Parquet files, bundled data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .datasets import NAMES, load_dataset
from .errors import ModelError

_CSV = {".csv", ".txt", ".tsv"}
_PARQUET = {".parquet", ".pq"}


def read_data(source: Any) -> pd.DataFrame:
    """Return ``source`` as a pandas DataFrame.

    ``source`` may be a pandas DataFrame, a polars DataFrame, a path to a CSV or Parquet
    file, a directory or glob of such files (read in name order, one frame), or the name of a
    bundled data set (``hsb82``, ``sleepstudy``, ``epil``, ``cbpp``).
    """
    if isinstance(source, pd.DataFrame):
        return source
    if hasattr(source, "to_pandas") and hasattr(source, "columns"):  # polars, pyarrow
        return source.to_pandas()
    if isinstance(source, (str, Path)):
        text = str(source)
        if text in NAMES and not Path(text).exists():
            return load_dataset(text)
        if Path(text).is_dir() or (any(c in text for c in "*?[") and not Path(text).exists()):
            from .distributed.source import data_files, file_format

            files = data_files(text)
            file_format(files)
            return pd.concat([_read_file(f) for f in files], ignore_index=True)
        return _read_file(Path(text))
    raise ModelError(
        f"data must be a pandas DataFrame, a CSV or Parquet path, or a bundled data set name; "
        f"got {type(source).__name__}"
    )


def _read_file(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ModelError(
            f"data file {str(path)!r} not found; give a CSV or Parquet path or one of the "
            f"bundled data sets: {', '.join(NAMES)}"
        )
    suffix = path.suffix.lower()
    try:
        if suffix in _CSV:
            sep = "\t" if suffix == ".tsv" else ","
            frame = pd.read_csv(path, sep=sep)
        elif suffix in _PARQUET:
            frame = pd.read_parquet(path)
        else:
            raise ModelError(
                f"unsupported data format {suffix or '(no extension)'!r} for {str(path)!r}; "
                "use a .csv or .parquet file"
            )
    except ModelError:
        raise
    except PermissionError:
        raise ModelError(f"cannot read {str(path)!r}: permission denied") from None
    except pd.errors.EmptyDataError:
        raise ModelError(f"data file {str(path)!r} is empty; it needs a header row and data") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot parse {str(path)!r} as {suffix[1:]}: {first}") from None
    if frame.shape[0] == 0:
        raise ModelError(f"data file {str(path)!r} has no rows")
    return frame
