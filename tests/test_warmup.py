"""``python -m multilevel.warmup`` (``make test`` runs it first): every tiny fit it makes is a
model this version builds, with the sampler it names, so that a renamed sampler or family
fails here rather than leaving its kernels to be compiled by every test process."""

from __future__ import annotations

import pytest

import multilevel
from multilevel.warmup import GROUPS


@pytest.mark.parametrize("job", [job for group in GROUPS for job in group], ids=lambda job: f"{job[0]} {job[2]}")
def test_every_warmup_fit_is_a_model_of_its_sampler(job):
    formula, name, options = job
    options = {k: v for k, v in options.items() if k != "loo"}
    model = multilevel.Model(formula, multilevel.load_dataset(name).head(3000), **options)
    if "sampler" in options:
        assert model.sampler == options["sampler"] or model.sampler_name == options["sampler"]


def test_the_groups_cover_every_family():
    families = {options.get("family", "gaussian") for group in GROUPS for _, _, options in group}
    assert families == {"gaussian", "poisson", "binomial", "negbinomial"}
