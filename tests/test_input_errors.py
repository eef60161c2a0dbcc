"""Issue 5, point 1: each kind of bad input gets one clear line (ModelError in Python; exit
status 2 and no traceback from the command line) naming what is wrong."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import multilevel
from multilevel.cli import main


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    return info.value.code, err


def small_frame(n_groups=6, per=5, seed=0):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    x = rng.standard_normal(g.size)
    return pd.DataFrame({"g": g, "x": x, "y": 1 + x + rng.standard_normal(g.size),
                         "count": rng.poisson(2, g.size), "flag": rng.integers(0, 2, g.size),
                         "word": np.where(rng.uniform(size=g.size) < 0.5, "yes", "no")})


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name,content,fragment", [
    ("empty.csv", "", "empty"),
    ("data.xlsx", "a,b\n1,2\n", "unsupported data format"),
    ("bad.csv", 'y,x,g\n1,2,3\n"unterminated,4,5\n', "cannot parse"),
])
def test_unusable_data_files(tmp_path, capsys, name, content, fragment):
    path = write(tmp_path, name, content)
    code, err = run_cli(["fit", path, "-f", "y ~ x + (1 | g)", "--no-progress"], capsys)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_data_path_is_a_directory(tmp_path, capsys):
    code, err = run_cli(["fit", tmp_path, "-f", "y ~ x + (1 | g)"], capsys)
    assert code == 2 and "directory" in err


@pytest.mark.parametrize("formula,family,fragment", [
    ("word ~ x + (1 | g)", "gaussian", "numeric"),
    ("x ~ 1 + (1 | g)", "poisson", "negative|non-integer"),
    ("y ~ x + (1 | g)", "bernoulli", "not binary"),
    ("count ~ x + (1 | g)", "nosuch", "unknown family"),
])
def test_bad_responses_name_the_problem(formula, family, fragment):
    with pytest.raises(multilevel.ModelError, match=fragment):
        multilevel.Model(formula, small_frame(), family=family)


@pytest.mark.parametrize("family, name", [
    ('poisson(link = "log")', "poisson"), ("poisson()", "poisson"), ("binomial(link='logit')", "binomial"),
    ('binomial("logit")', "binomial"), ("gaussian", "gaussian"), ("Poisson", "poisson"), ("nbinom2()", "negbinomial"),
])
def test_r_family_calls_as_lme4_users_type_them(family, name):
    """glmer(..., family = poisson(link = "log")): R's call, with the family's own link."""
    from multilevel.families import check_family

    assert check_family(family).name == name
    if name != "binomial":  # a count response
        assert multilevel.Model("count ~ x + (1 | g)", small_frame(), family=family).family.name == name


@pytest.mark.parametrize("family, fragments", [
    ('binomial(link = "probit")', ["binomial is fitted with its logit link only, not probit", "family='binomial'"]),
    ('poisson(link = "sqrt")', ["poisson is fitted with its log link only"]),
    ("quasipoisson", ["write family='negbinomial' for overdispersed counts"]),
    ("Gamma()", ["unknown family", "available families: gaussian, poisson"]),
])
def test_other_links_and_families_are_refused_in_one_line(family, fragments, capsys):
    from multilevel.families import check_family

    with pytest.raises(multilevel.ModelError) as info:
        check_family(family)
    assert "\n" not in str(info.value) and all(f in str(info.value) for f in fragments)
    code, err = run_cli(["fit", "epil", "-f", "y ~ lbase + (1 | subject)", "--family", family], capsys)
    assert code == 2 and all(f in err for f in fragments) and len(err.strip().splitlines()) == 1


def test_negative_counts_refused():
    frame = small_frame()
    frame.loc[0, "count"] = -1
    with pytest.raises(multilevel.ModelError, match="negative"):
        multilevel.Model("count ~ x + (1 | g)", frame, family="poisson")


def test_successes_above_trials_refused():
    frame = small_frame()
    frame["trials"] = frame["count"] - 1
    frame.loc[frame["trials"] < 1, "trials"] = 1
    with pytest.raises(multilevel.ModelError, match="exceed trials|greater than .trials."):
        multilevel.Model("p(count, trials) ~ x + (1 | g)", frame, family="binomial")


def test_fewer_than_two_groups_refused():
    frame = small_frame(n_groups=1)
    with pytest.raises(multilevel.ModelError, match="at least 2 groups"):
        multilevel.Model("y ~ x + (1 | g)", frame)


@pytest.mark.parametrize("kwargs,fragment", [
    ({"chains": 0}, "chains"), ({"chains": 1.5}, "chains"), ({"draws": -3}, "draws"),
    ({"warmup": -1}, "warmup"), ({"warmup": "10"}, "warmup"), ({"seed": "x"}, "seed"),
])
def test_sampling_arguments_validated(kwargs, fragment):
    model = multilevel.Model("y ~ x + (1 | g)", small_frame())
    with pytest.raises(multilevel.ModelError, match=fragment):
        model.fit(progress=False, **kwargs)


def test_cli_non_integer_seed_one_line(capsys):
    code, err = run_cli(["fit", "sleepstudy", "-f", "Reaction ~ Days + (Days | Subject)", "--seed", "1.5"], capsys)
    assert code == 2 and "seed" in err and len(err.strip().splitlines()) == 1


def test_more_varying_terms_than_groups_can_identify_warns():
    """In a GLM (no residual variance); a Gaussian model is refused (below)."""
    frame = small_frame(n_groups=8, per=2)
    with pytest.warns(UserWarning, match="more rows than the 2 varying terms"):
        multilevel.Model("count ~ x + (x | g)", frame, family="poisson")


def test_gaussian_observation_level_effect_refused():
    """lme4's checkNlevels: as many levels as rows confounds the group variance with sigma2."""
    frame = small_frame(n_groups=30, per=1)
    with pytest.raises(multilevel.ModelError, match=r"'g' has 30 levels for 30 rows.*sigma2.*\(1 \| g\).*GLM"):
        multilevel.Model("y ~ x + (1 | g)", frame)


def test_gaussian_no_more_rows_than_group_effects_refused():
    """lme4's checkZdims: rows <= groups x varying terms (here 16 <= 8 x 2) is refused; one
    row more is accepted."""
    frame = small_frame(n_groups=8, per=2)
    with pytest.raises(multilevel.ModelError, match="16 rows are no more than the 16 group effects"):
        multilevel.Model("y ~ x + (x | g)", frame)
    extra = pd.concat([frame, frame.iloc[:1]], ignore_index=True)
    assert multilevel.Model("y ~ x + (x | g)", extra).design.n_obs == 17


def test_cli_gaussian_observation_level_effect_one_line(tmp_path, capsys):
    path = write(tmp_path, "d.csv", small_frame(n_groups=10, per=1).to_csv(index=False))
    code, err = run_cli(["fit", path, "-f", "y ~ x + (1 | g)"], capsys)
    assert code == 2 and "sigma2" in err and len(err.strip().splitlines()) == 1


def test_unreadable_data_file(tmp_path, capsys, monkeypatch):
    """Root can read any file, so permission is denied by the reader itself here."""
    import pandas

    path = write(tmp_path, "locked.csv", "y,x,g\n1,2,3\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pandas, "read_csv", denied)
    code, err = run_cli(["fit", path, "-f", "y ~ x + (1 | g)"], capsys)
    assert code == 2 and "permission denied" in err and "Traceback" not in err
