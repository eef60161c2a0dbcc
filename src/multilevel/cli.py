"""The ``multilevel`` command line: fit, summary, resume, predict, plot, loo, compare, demo.

Bad input gives a one-line message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations


import json
import math
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from .errors import ModelError, NumericalError, require_fit_file

DEMO_FORMULA = "mAch ~ ses + (ses | school)"


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _progress(no_progress: bool) -> bool:
    return not no_progress and sys.stderr.isatty()


def _fit_files(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A FIT.nc argument (or several), refused at once when missing: before the command imports
    what reading a fit takes (a couple of seconds)."""
    for path in value if isinstance(value, tuple) else (value,):
        require_fit_file(path)
    return value


def _print_fit(fit: Any) -> None:
    click.echo(fit.report(), nl=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="multilevel")
def cli() -> None:
    """Bayesian hierarchical (multilevel) regression with lme4-style formulas."""


def dask_options(command: Any) -> Any:
    """The options of a command that runs on Dask: --scheduler, --workers, --worker-memory."""
    options = [
        click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="dask: the scheduler to run on (tcp://host:8786); default: a local cluster for this command."),
        click.option("--workers", default=None, type=int, help="dask: worker processes of the local cluster (default 2)."),
        click.option("--worker-memory", default=None, metavar="SIZE",
                     help="dask: memory limit of each local worker, e.g. 600MB (default: shared out of the machine's)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _check_dask_options(engine: str, scheduler: str | None, workers: int | None, worker_memory: str | None) -> None:
    """Refuse the cluster options without ``--engine dask``."""
    if engine != "dask" and (scheduler or workers is not None or worker_memory):
        raise ModelError("--scheduler, --workers and --worker-memory apply to --engine dask; add it or leave them out")


@cli.command("fit")
@click.argument("data")
@click.option("--formula", "-f", required=True, help="lme4-style formula, e.g. 'mAch ~ ses + (ses | school)'.")
@click.option("--family", default="gaussian", show_default=True,
              help="Response family: gaussian, poisson, binomial (response p(successes, trials)), bernoulli or "
                   "negbinomial (NB2, Var = mu + mu^2 / phi).")
@click.option("--offset", default=None, help="GLMs: column added to the linear predictor, e.g. a log exposure.")
@click.option("--weights", default=None, metavar="COLUMN",
              help="Gaussian: column of precision weights (row i has variance sigma2 / w_i, as lme4's weights).")
@click.option("--proposal", type=click.Choice(["laplace", "textbook"]), default="laplace", show_default=True,
              help="GLMs: Metropolis proposal for the group effects.")
@click.option("--sampler", type=click.Choice(["collapsed", "interweaving", "centred", "blocked", "auto", "polya-gamma",
                                                             "metropolis", "sharded"]),
              default=None,
              help="Gaussian: collapsed moves of Sigma, theta and alpha (default), centred Gibbs interwoven with "
              "non-centred moves, the plain centred Gibbs sampler, or blocked (the collapsed blocked sampler of "
              "several factors, which reads statistics only; the dask engine's). GLMs: auto (default: interweaving when "
              "groups inform their effects weakly or the data are small), interweaving or centred; binomial and "
              "bernoulli also polya-gamma (Polya-Gamma augmentation; their default with several terms). Several terms: "
              "metropolis (Metropolis-within-Gibbs per factor; poisson's default, an option for binomial and "
              "bernoulli). GLMs also sharded (Metropolis-within-Gibbs over shards of whole groups; the dask "
              "engine's GLM sampler).")
@click.option("--chains", default=4, show_default=True, type=int, help="Number of chains.")
@click.option("--draws", default=1000, show_default=True, type=int, help="Kept draws per chain.")
@click.option("--warmup", default=1000, show_default=True, type=int, help="Warm-up sweeps per chain, discarded.")
@click.option("--seed", default=None, type=int, help="Random seed; the same seed gives the same draws.")
@click.option("--cores", default=None, type=int, help="Worker processes (default: one per chain, up to the machine's cores; none for runs of under 2 CPU seconds).")
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False), help="Save the fit to this NetCDF file.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--checkpoint", default=None, type=int,
              help="Write the fit so far to --out every N sweeps (atomically); resume it with 'multilevel resume'.")
@click.option("--na-action", type=click.Choice(["drop", "raise"]), default="drop", show_default=True,
              help="Rows with missing values in used columns: drop them with a warning, or refuse.")
@click.option("--log-likelihood", "log_likelihood", is_flag=True,
              help="Store the pointwise log-likelihood in --out (chains x draws x rows numbers; az.loo reads it). "
              "Without it, 'multilevel' computes it when needed.")
@click.option("--no-group-draws", is_flag=True,
              help="Keep no per-group draws (much less memory and a much smaller --out for many groups; no "
              "per-group results, seen-group predictions or resuming).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--engine", type=click.Choice(["pandas", "dask"]), default="pandas", show_default=True,
              help="pandas: read the data into memory; dask: leave it in partitions and sum the model's statistics "
              "partition by partition (Gaussian models; data beyond memory).")
@dask_options
def fit_command(data: str, formula: str, family: str, offset: str | None, weights: str | None, proposal: str, sampler: str | None, chains: int, draws: int, warmup: int, seed: int | None,
                cores: int | None, out: str | None, overwrite: bool, checkpoint: int | None, na_action: str,
                log_likelihood: bool, no_group_draws: bool, no_progress: bool, engine: str, scheduler: str | None,
                workers: int | None, worker_memory: str | None) -> None:
    """Fit FORMULA to DATA (a CSV or Parquet file, a directory or glob of them, or a bundled data
    set: hsb82, sleepstudy, epil, cbpp, insteval)."""
    from .api import Model
    from .result import check_writable

    _check_dask_options(engine, scheduler, workers, worker_memory)
    if out is not None:
        check_writable(Path(out), overwrite)
    if checkpoint is not None and out is None:
        raise ModelError("--checkpoint needs --out, the file the checkpoints go to")
    if log_likelihood and out is None:
        raise ModelError("--log-likelihood applies to the file --out writes; add --out FILE")

    def sample(model: Any) -> Any:
        return model.fit(chains=chains, draws=draws, warmup=warmup, seed=seed, cores=cores,
                         progress=_progress(no_progress), checkpoint=checkpoint, checkpoint_path=out,
                         log_likelihood=log_likelihood, group_draws=not no_group_draws)

    options = dict(family=family, na_action=na_action, offset=offset, proposal=proposal, sampler=sampler,
                   weights=weights)
    try:
        if engine == "dask":
            from .distributed.cluster import dask_client

            fit = None
            with dask_client(scheduler, workers, worker_memory):
                model = Model(formula, data, engine=engine, **options)
                if not model.family.is_gaussian:  # the rows stay on the workers for the sweeps
                    fit = sample(model)
            if fit is None:  # Gaussian: the statistics passes ran on the cluster, the sweeps read them alone
                fit = sample(model)
        else:
            fit = sample(Model(formula, data, **options))
    except NumericalError as exc:
        if exc.fit is not None and out is not None:
            _save(exc.fit, out, overwrite=True)
            click.echo(f"saved the draws before the failure to {out}", err=True)
        raise
    _finish(fit, out, overwrite or checkpoint is not None, group_draws=not no_group_draws)


def _save(fit: Any, out: str, overwrite: bool, group_draws: bool = True) -> None:
    """Save ``fit`` to ``out``, writing what can be written: a part of the fit that cannot be
    saved is left out with an error line (exit status 1), so the draws are never lost."""
    try:
        fit.save(out, overwrite=overwrite, group_draws=group_draws, partial=True)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


def _finish(fit: Any, out: str | None, overwrite: bool, group_draws: bool = True) -> None:
    """Print the report and save the fit; an interrupted fit is saved (when --out was given)
    and the command exits with status 130."""
    _print_fit(fit)
    if out is not None:
        _save(fit, out, overwrite, group_draws)
        click.echo(f"saved fit to {out}", err=True)
    if not int(fit.attrs.get("complete", 1)):
        click.echo("interrupted: " + (f"resume with 'multilevel resume {out}'" if out else "nothing saved (no --out)"), err=True)
        sys.exit(130)


@cli.command("resume")
@click.argument("fit_path", metavar="FIT.nc", callback=_fit_files)
@click.option("--draws", default=None, type=int, help="Draws per chain to add (default: finish an interrupted run).")
@click.option("--cores", default=None, type=int, help="Worker processes.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the result here instead of over FIT.nc.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--checkpoint", default=None, type=int, help="Write the fit every N sweeps.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def resume_command(fit_path: str, draws: int | None, cores: int | None, out: str | None, overwrite: bool,
                   checkpoint: int | None, no_progress: bool) -> None:
    """Continue a saved or interrupted fit; the draws equal those of one uninterrupted run."""
    from .api import resume
    from .result import check_writable

    target = out or fit_path
    if out is not None:
        check_writable(Path(out), overwrite=overwrite)
    fit = resume(fit_path, draws=draws, cores=cores, progress=_progress(no_progress), checkpoint=checkpoint,
                 checkpoint_path=target if checkpoint else None)
    _finish(fit, target, overwrite=True)


def _json_value(v: Any) -> Any:
    v = float(v)
    return None if math.isnan(v) else v


@cli.command("summary")
@click.argument("fit_path", metavar="FIT.nc", callback=_fit_files)
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


def _fit_names(paths: tuple[str, ...], names: str | None) -> list[str]:
    """The table's names of the fits: ``--names`` (comma-separated, one a fit) or the files'
    names without their suffix; refused in one line when they repeat or do not match."""
    if names is None:
        chosen = [Path(p).stem for p in paths]
        if len(set(chosen)) < len(chosen):
            raise ModelError(f"the fits' file names repeat ({', '.join(chosen)}); name them with --names a,b,...")
        return chosen
    chosen = [n.strip() for n in names.split(",")]
    if len(chosen) != len(paths) or len(set(chosen)) < len(chosen) or not all(chosen):
        raise ModelError(f"--names needs {len(paths)} different names, comma-separated (one a fit), not {names!r}")
    return chosen


SCALE_CHOICE = click.Choice(["log", "negative_log", "deviance"])


def _load_for_loo(path: str) -> Any:
    """A saved fit whose pointwise log-likelihood can be had: stored, or computed from its rows;
    a Dask fit saved without it is refused in one line (its rows stay in their files)."""
    from .result import load

    fit = load(path)
    if fit.partitioned and fit.group("log_likelihood") is None:
        raise ModelError(f"{path} is a Dask fit saved without its pointwise log-likelihood, which needs its rows; "
                         "fit it again with --log-likelihood (or compute loo() in the session that made it)")
    return fit


@cli.command("loo")
@click.argument("fit_path", metavar="FIT.nc", callback=_fit_files)
@click.option("--scale", type=SCALE_CHOICE, default="log", show_default=True, help="Scale of elpd_loo, as ArviZ's.")
@click.option("--json", "as_json", is_flag=True, help="Print the estimates as a JSON object.")
def loo_command(fit_path: str, scale: str, as_json: bool) -> None:
    """PSIS leave-one-out cross-validation of a saved fit: elpd_loo, its standard error, p_loo
    and the Pareto k diagnostics (ArviZ's numbers; the log-likelihood computed from the draws
    and the fit's rows unless the file holds it)."""
    fit = _load_for_loo(fit_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the Pareto k table below says it
        res = fit.loo(scale=scale)
    if not as_json:
        click.echo(str(res))
        return
    k = res.pareto_k.values
    click.echo(json.dumps({"elpd_loo": float(res.elpd_loo), "se": float(res.se), "p_loo": float(res.p_loo),
                           "n_samples": int(res.n_samples), "n_data_points": int(res.n_data_points),
                           "scale": res.scale, "good_k": float(res.good_k), "warning": bool(res.warning),
                           "pareto_k_above_good_k": int((k > res.good_k).sum()), "pareto_k_max": _json_value(k.max())},
                          indent=2))


@cli.command("compare")
@click.argument("fit_paths", metavar="FIT.nc FIT.nc...", nargs=-1, required=True, callback=_fit_files)
@click.option("--names", default=None, help="The fits' names in the table, comma-separated (default: file names).")
@click.option("--ic", type=click.Choice(["loo", "waic"]), default="loo", show_default=True,
              help="Information criterion: PSIS-LOO or WAIC.")
@click.option("--scale", type=SCALE_CHOICE, default="log", show_default=True, help="Scale of the elpd, as ArviZ's.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON rows.")
def compare_command(fit_paths: tuple[str, ...], names: str | None, ic: str, scale: str, as_json: bool) -> None:
    """Rank saved fits of the same data by expected log predictive density (ArviZ's compare
    table: rank, elpd, p, elpd_diff, weight, se, dse, warning, scale), best first."""
    from .comparison import compare

    if len(fit_paths) < 2:
        raise ModelError("compare needs at least two fits: multilevel compare a.nc b.nc")
    labels = _fit_names(fit_paths, names)
    fits = {name: _load_for_loo(path) for name, path in zip(labels, fit_paths)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the table's warning column says it
        table = compare(fits, ic=ic, scale=scale)
    if as_json:
        rows = json.loads(table.rename_axis("model").reset_index().to_json(orient="records", double_precision=15))
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(table.to_string())


DEMO_PLOTS = ("trace", "caterpillar", "shrinkage", "ppc")


@cli.command("demo")
@click.option("--seed", default=1, show_default=True, type=int, help="Random seed.")
@click.option("--plots-dir", default="multilevel-demo", show_default=True,
              help="Folder (created if needed) for the trace, caterpillar, shrinkage and ppc plots; its PNGs are replaced.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def demo_command(seed: int, plots_dir: str, no_progress: bool) -> None:
    """Fit mAch ~ ses + (ses | school) to the bundled High School and Beyond data, and plot it."""
    from .api import Model

    folder = _plots_folder(Path(plots_dir))
    click.echo(f"Fitting {DEMO_FORMULA} to hsb82 (7185 students in 160 schools)\n", err=True)
    model = Model(DEMO_FORMULA, "hsb82")
    fit = model.fit(seed=seed, progress=_progress(no_progress), log_likelihood=False)
    _print_fit(fit)
    for kind in DEMO_PLOTS:
        _save_figure(fit.plot(kind), folder / f"{kind}.png", overwrite=True)
    click.echo(f"wrote {', '.join(f'{k}.png' for k in DEMO_PLOTS)} to {folder}/", err=True)


# -- plots and predictions (issue 4) ------------------------------------------------------------

def _agg() -> None:
    """Draw off-screen: the command line writes image files and needs no display."""
    import matplotlib

    matplotlib.use("Agg")


def _plots_folder(folder: Path) -> Path:
    if folder.exists() and not folder.is_dir():
        raise ModelError(f"--plots-dir {str(folder)!r} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create folder {str(folder)!r}: {exc.strerror or type(exc).__name__}") from None
    if not os.access(folder, os.W_OK):
        raise ModelError(f"cannot write to folder {str(folder)!r}")
    return folder


def _image_format(out: Path) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise ModelError(f"cannot tell the image format of {str(out)!r}: end the name with .png, .pdf or .svg")
    return suffix


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _write_atomically(out: Path, write: Any) -> None:
    """``write(path)`` to a temporary file beside ``out``, then rename it over ``out``: a write
    that fails leaves ``out`` as it was."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=out.parent if str(out.parent) else ".", prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_workers_see(client: Any, tmp: str, out: Path) -> None:
    """Refuse, before any partition is predicted, an ``--out`` whose directory (``tmp``, made
    here) the cluster's workers do not see: they would write their files elsewhere."""
    seen = client.run(os.path.isdir, os.path.abspath(tmp))
    blind = sorted(w for w, ok in seen.items() if not ok)
    if blind:
        raise ModelError(f"--out {str(out)!r} is not on a path the Dask workers see ({len(blind)} of {len(seen)} "
                         f"workers, e.g. {blind[0]}); with --scheduler, give a directory they share")


def _write_directory_atomically(out: Path, write: Any) -> None:
    """``write(path)`` into a temporary directory beside ``out``, then put it in the place of
    ``out`` (an existing ``out`` is moved aside first and removed last): a write that fails
    leaves ``out`` as it was."""
    import shutil
    import tempfile

    parent = out.parent if str(out.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp"))
    old = None
    try:
        write(str(tmp))
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old / out.name, out)
        raise
    finally:
        for path in (tmp, old):
            if path is not None and path.exists():
                shutil.rmtree(path, ignore_errors=True)


def _save_figure(fig: Any, out: Path, overwrite: bool, dpi: int = 120) -> None:
    """Write ``fig`` to ``out`` atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    from .result import check_writable

    _agg()
    check_writable(out, overwrite)
    fmt = _image_format(out)
    try:
        _write_atomically(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
    finally:
        plt.close(fig)


PLOT_KINDS = ("trace", "rank", "caterpillar", "shrinkage", "ppc", "pairs")


@cli.command("plot")
@click.argument("fit_path", metavar="FIT.nc", callback=_fit_files)
@click.option("--kind", default="trace", show_default=True, help="trace, rank, caterpillar, shrinkage, ppc or pairs.")
@click.option("--out", default=None, help="Image file to write: .png, .pdf, .svg, ...")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the replicated data of the ppc plot.")
@click.option("--dpi", default=120, show_default=True, type=int, help="Resolution of raster images.")
@click.option("--factor", default=None,
              help="Caterpillar, shrinkage: the grouping factor whose levels are plotted (default: the first in "
              "the formula), e.g. --factor item.")
@click.option("--groups", "groups", multiple=True,
              help="Caterpillar, shrinkage: only these groups (levels of the factor), labels separated by commas "
              "(repeatable).")
@click.option("--top", default=None, type=int,
              help="Caterpillar: the N/2 highest and N/2 lowest groups of each term; shrinkage: the N most shrunk "
              "(default above 300 groups: 40).")
def plot_command(fit_path: str, kind: str, out: str | None, overwrite: bool, seed: int, dpi: int,
                 factor: str | None, groups: tuple[str, ...], top: int | None) -> None:
    """Plot a saved fit: trace, rank (population parameters), caterpillar (group effects),
    shrinkage (own estimates against posterior means), ppc (posterior predictive check) or pairs."""
    from .result import check_writable, load

    if kind not in PLOT_KINDS:
        raise ModelError(f"unknown plot kind {kind!r}; choose one of {', '.join(PLOT_KINDS)}")
    if out is None:
        raise ModelError("give the image file to write with --out, e.g. --out trace.png")
    out_path = Path(out)
    check_writable(out_path, overwrite)
    _image_format(out_path)
    if dpi < 1:
        raise ModelError(f"--dpi must be a positive integer, got {dpi}")
    options: dict[str, Any] = {"seed": seed} if kind == "ppc" else {}
    if groups or top is not None:
        if kind not in ("caterpillar", "shrinkage"):
            raise ModelError(f"--groups and --top choose groups of the caterpillar and shrinkage plots, not of {kind}")
        if groups and top is not None:
            raise ModelError("give --groups or --top, not both")
        if top is not None and top < 1:
            raise ModelError(f"--top must be a positive integer, got {top}")
        labels = [g.strip() for text in groups for g in text.split(",") if g.strip()]
        if groups and not labels:
            raise ModelError("--groups is empty: give group labels separated by commas, e.g. --groups a,b,c")
        options.update({"groups": labels} if groups else {"top": top})
    if factor is not None:
        if kind not in ("caterpillar", "shrinkage"):
            raise ModelError("--factor chooses the grouping factor of the caterpillar and shrinkage plots, "
                             f"not of {kind}")
        options["factor"] = factor
    _agg()
    fit = load(fit_path)
    fig = fit.plot(kind, **options)
    _save_figure(fig, out_path, overwrite, dpi=dpi)
    click.echo(f"wrote {kind} plot to {out}", err=True)




def _re_form_factors(fit: Any, re_form: str | None, no_group_effects: bool) -> list[str]:
    """The grouping factors whose effects --re-form (or --no-group-effects) includes: all by
    default, none for '~0', '~1' or 'NA', else those of the formula's bars, which must name one."""
    from .predict_crossed import resolve_re_form

    if re_form is None or no_group_effects:
        return resolve_re_form(fit, None, include_group_effects=not no_group_effects)
    text = re_form.replace(" ", "")
    example = f"e.g. --re-form '~(1 | {next(iter(fit.sigma_variables()))})', or '~0' for none"
    if not text.startswith("~") and text != "NA":
        raise ModelError(f"--re-form {re_form!r} is not a formula; write {example}")
    try:
        return resolve_re_form(fit, re_form)
    except ModelError as err:
        raise ModelError(f"--{err}".replace("--re_form", "--re-form", 1)) from None


@cli.command("predict")
@click.argument("fit_path", metavar="FIT.nc", callback=_fit_files)
@click.argument("new_data", metavar="[NEW.csv]", required=False)
@click.option("--out", default=None, help="CSV (or .parquet) file for the predictions; default: print CSV.")
@click.option("--kind", default="mean", show_default=True,
              help="mean (inverse link; probability for binomial), linear (predictor; lme4's link) or response "
                   "(new draws).")
@click.option("--no-group-effects", is_flag=True, help="Population-level predictions (beta = theta); no group column needed.")
@click.option("--re-form", "re_form", default=None, metavar="FORMULA",
              help="Which grouping factors' effects to include, as lme4's re.form: '~(1 | subj)' (those in the "
              "formula; the others' columns are not needed), '~0' (none, as --no-group-effects); default: all.")
@click.option("--draws", default=None, type=int, help="Use this many evenly spaced draws per chain (default: all).")
@click.option("--seed", default=None, type=int, help="Seed of new groups' effects and of response draws.")
@click.option("--hdi-prob", default=0.94, show_default=True, type=float, help="Probability of the HDI columns.")
@click.option("--offset", default=None, help="Column of NEW with the offset, for fits made with --offset.")
@click.option("--weights", default=None, metavar="COLUMN",
              help="Gaussian --kind response: column of NEW with the rows' precision weights (default 1).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--engine", type=click.Choice(["pandas", "dask"]), default="pandas", show_default=True,
              help="pandas: read NEW into memory; dask: read it partition by partition (a Parquet or CSV file, "
              "directory or glob) and write --out as a directory of Parquet files, partition by partition.")
@dask_options
def predict_command(fit_path: str, new_data: str | None, out: str | None, kind: str, no_group_effects: bool,
                    re_form: str | None, draws: int | None, seed: int | None, hdi_prob: float, offset: str | None,
                    weights: str | None, overwrite: bool, engine: str, scheduler: str | None, workers: int | None,
                    worker_memory: str | None) -> None:
    """Predict the rows of NEW.csv (CSV or Parquet) from a saved fit: one output row per input
    row, the input's columns followed by mean, sd and the HDI bounds (hdi_3%, hdi_97%).
    Rows of groups not in the fit get new group effects drawn from MVN(theta, Sigma).
    With several grouping factors, --re-form chooses whose effects are included.
    Without NEW.csv: the fitted values of the rows used in fitting, by row label.
    With --engine dask: NEW read partition by partition, --out a directory of Parquet files."""
    from .result import load

    from .predict import prediction_kind

    kind = prediction_kind(kind)
    _check_dask_options(engine, scheduler, workers, worker_memory)
    out_path = Path(out) if out is not None else None
    if engine == "dask":
        _check_dask_prediction(new_data, out_path, overwrite)
    elif out_path is not None:
        _check_table_output(out_path, overwrite)
    if new_data is None and (offset is not None or weights is not None):
        raise ModelError("--offset and --weights describe the rows of NEW.csv; without it the fitted rows use their own")
    if re_form is not None and no_group_effects:
        raise ModelError("give --re-form or --no-group-effects, not both (--no-group-effects is --re-form '~0')")
    fit = load(fit_path)
    if new_data is None and fit.partitioned:
        raise ModelError(f"{fit_path} was fitted with --engine dask and keeps no rows: pass the data again as NEW "
                         "(with --engine dask for data beyond memory)")
    factors = _re_form_factors(fit, re_form, no_group_effects)
    options = dict(kind=kind, include_group_effects=bool(factors), draws=draws, seed=seed, summary=True,
                   hdi_prob=hdi_prob, offset=offset, weights=weights,
                   re_form=factors if fit.several_terms else None)  # a one-factor fit takes include_group_effects
    if engine == "dask":
        _predict_on_dask(fit, new_data, out_path, options, (scheduler, workers, worker_memory))
        return
    _predict_in_memory(fit, new_data, out_path, options)


def _check_table_output(out_path: Path, overwrite: bool) -> None:
    """Refuse an output file of the pandas engine's predictions before any work."""
    from .result import check_writable

    check_writable(out_path, overwrite)
    if out_path.suffix.lower() not in (".csv", ".txt", ".parquet", ".pq"):
        raise ModelError(f"cannot tell the format of {str(out_path)!r}: end the name with .csv or .parquet")


def _check_dask_prediction(new_data: str | None, out_path: Path | None, overwrite: bool) -> None:
    """Refuse, before any work, what --engine dask cannot predict or write."""
    if new_data is None:
        raise ModelError("--engine dask predicts the rows of NEW (a Parquet or CSV file, directory or glob); a saved "
                         "fit has no handle on its fitted rows: pass the data again as NEW")
    if out_path is None:
        raise ModelError("--engine dask writes the predictions as a directory of Parquet files: add --out DIR")
    if out_path.exists() and not overwrite:
        raise ModelError(f"output {str(out_path)!r} exists; choose another name or pass --overwrite")
    if out_path.exists() and not out_path.is_dir():
        raise ModelError(f"output {str(out_path)!r} is a file; --engine dask writes a directory of Parquet files: "
                         "choose another name")
    parent = out_path.parent if str(out_path.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ModelError(f"cannot write {str(out_path)!r}: folder {str(parent)!r} does not exist or is not writable")


def _predict_in_memory(fit: Any, new_data: str | None, out_path: Path | None, options: dict[str, Any]) -> None:
    """Predict in memory and print them as CSV or write ``out_path`` (CSV or Parquet) atomically."""
    from .distributed.posterior import with_columns
    from .io import read_data

    data = read_data(new_data) if new_data is not None else None
    table = fit.predict(data, **options)
    result = table.reset_index() if data is None else with_columns(data.reset_index(drop=True), table)
    if out_path is None:
        click.echo(result.to_csv(index=False), nl=False)
        return
    parquet = out_path.suffix.lower() in (".parquet", ".pq")
    try:
        _write_atomically(out_path, lambda tmp: result.to_parquet(tmp, index=False) if parquet
                          else result.to_csv(tmp, index=False))
    except OSError as exc:
        raise ModelError(f"cannot write {str(out_path)!r}: {exc.strerror or type(exc).__name__}") from None
    click.echo(f"wrote {len(result)} predictions ({options['kind']}) to {out_path}", err=True)


def _predict_on_dask(fit: Any, new_data: str, out_path: Path, options: dict[str, Any],
                     cluster: tuple[str | None, int | None, str | None]) -> None:
    """Predict the rows of ``new_data`` partition by partition on a Dask cluster and write them,
    with their columns, as a directory of Parquet files (one a partition), atomically."""
    from .distributed.cluster import dask_client
    from .distributed.posterior import predict_partitions
    from .distributed.source import open_dask

    data = open_dask(new_data)  # lazy: a bad path is refused before a cluster starts
    with dask_client(*cluster) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a first partition of fewer rows
            probe = data.head(5, npartitions=1)
        if len(probe):  # bad columns or values refused here, in one line, before any partition is predicted
            fit.predict(probe, **options)
        rest = {k: v for k, v in options.items() if k not in ("seed", "summary", "hdi_prob")}
        result = predict_partitions(fit, data, options["seed"], True, options["hdi_prob"], columns=True, **rest)

        def write(tmp: str) -> None:
            _check_workers_see(client, tmp, out_path)
            result.to_parquet(os.path.abspath(tmp), write_index=False)  # the workers' working directory may differ
            written = len(list(Path(tmp).glob("*.parquet")))
            if written != data.npartitions:  # the workers wrote elsewhere: nothing is put in out's place
                raise ModelError(f"the workers wrote {written} of {data.npartitions} partitions' files where this "
                                 f"command sees {str(out_path)!r}; give --out a path they share")

        try:
            _write_directory_atomically(out_path, write)
        except OSError as exc:
            raise ModelError(f"cannot write {str(out_path)!r}: {exc.strerror or type(exc).__name__}") from None
    click.echo(f"wrote the predictions ({options['kind']}) of {data.npartitions} partitions of {new_data} to "
               f"{out_path}/", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning bad input into a one-line message and exit status 2."""
    warnings.showwarning = _show_warning
    # Ctrl-C / SIGINT stops sampling and keeps the draws, even where the shell started us
    # with SIGINT ignored (background jobs of a non-interactive shell)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cli.main(args=argv, prog_name="multilevel", standalone_mode=False)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Abort:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(2)
    except click.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"error: {exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}", file=sys.stderr)
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
