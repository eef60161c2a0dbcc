"""The ``multilevel`` command line: fit, summary, demo.

Bad input gives a one-line message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from .errors import ModelError

DEMO_FORMULA = "mAch ~ ses + (ses | school)"


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _progress(no_progress: bool) -> bool:
    return not no_progress and sys.stderr.isatty()


def _print_fit(fit: Any) -> None:
    click.echo(fit.report(), nl=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="multilevel")
def cli() -> None:
    """Bayesian hierarchical (multilevel) regression with lme4-style formulas."""


@cli.command("fit")
@click.argument("data")
@click.option("--formula", "-f", required=True, help="lme4-style formula, e.g. 'mAch ~ ses + (ses | school)'.")
@click.option("--family", default="gaussian", show_default=True,
              help="Response family: gaussian, poisson, binomial (response p(successes, trials)) or bernoulli.")
@click.option("--offset", default=None, help="GLMs: column added to the linear predictor, e.g. a log exposure.")
@click.option("--proposal", type=click.Choice(["laplace", "textbook"]), default="laplace", show_default=True,
              help="GLMs: Metropolis proposal for the group effects.")
@click.option("--chains", default=4, show_default=True, type=int, help="Number of chains.")
@click.option("--draws", default=1000, show_default=True, type=int, help="Kept draws per chain.")
@click.option("--warmup", default=1000, show_default=True, type=int, help="Warm-up sweeps per chain, discarded.")
@click.option("--seed", default=None, type=int, help="Random seed; the same seed gives the same draws.")
@click.option("--cores", default=None, type=int, help="Worker processes (default: one per chain, up to the machine's cores).")
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False), help="Save the fit to this NetCDF file.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--na-action", type=click.Choice(["drop", "raise"]), default="drop", show_default=True,
              help="Rows with missing values in used columns: drop them with a warning, or refuse.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def fit_command(data: str, formula: str, family: str, offset: str | None, proposal: str, chains: int, draws: int, warmup: int, seed: int | None,
                cores: int | None, out: str | None, overwrite: bool, na_action: str, no_progress: bool) -> None:
    """Fit FORMULA to DATA (a CSV or Parquet file, or a bundled data set: hsb82, sleepstudy, epil, cbpp)."""
    from .api import Model
    from .result import check_writable

    if out is not None:
        check_writable(Path(out), overwrite)
    model = Model(formula, data, family=family, na_action=na_action, offset=offset, proposal=proposal)
    fit = model.fit(chains=chains, draws=draws, warmup=warmup, seed=seed, cores=cores, progress=_progress(no_progress))
    _print_fit(fit)
    if out is not None:
        fit.save(out, overwrite=overwrite)
        click.echo(f"saved fit to {out}", err=True)


def _json_value(v: Any) -> Any:
    v = float(v)
    return None if math.isnan(v) else v


@cli.command("summary")
@click.argument("fit_path", metavar="FIT.nc")
@click.option("--json", "as_json", is_flag=True, help="Print the summary table as JSON rows.")
def summary_command(fit_path: str, as_json: bool) -> None:
    """Print the summary of a saved fit."""
    from .result import load

    fit = load(fit_path)
    if as_json:
        table = fit.summary()
        rows = [{"param": name, **{col: _json_value(val) for col, val in row.items()}} for name, row in table.iterrows()]
        click.echo(json.dumps(rows, indent=2))
    else:
        _print_fit(fit)


@cli.command("demo")
@click.option("--seed", default=1, show_default=True, type=int, help="Random seed.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def demo_command(seed: int, no_progress: bool) -> None:
    """Fit mAch ~ ses + (ses | school) to the bundled High School and Beyond data."""
    from .api import Model

    click.echo(f"Fitting {DEMO_FORMULA} to hsb82 (7185 students in 160 schools)\n", err=True)
    model = Model(DEMO_FORMULA, "hsb82")
    fit = model.fit(seed=seed, progress=_progress(no_progress))
    _print_fit(fit)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning bad input into a one-line message and exit status 2."""
    warnings.showwarning = _show_warning
    try:
        cli.main(args=argv, prog_name="multilevel", standalone_mode=False)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Abort:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except FloatingPointError as exc:
        print(f"error: numerical failure: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
