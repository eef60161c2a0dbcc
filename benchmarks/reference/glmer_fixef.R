#!/usr/bin/env Rscript
## lme4's fixed effects of one GLMM, for the benchmarks' "posterior means of the fixed effects
## within a posterior sd of glmer's" check (benchmarks/glmer_check.py writes the data and calls it):
##
##   Rscript benchmarks/reference/glmer_fixef.R DATA.csv FORMULA FAMILY [FACTOR,COLUMNS]
##
## FAMILY: poisson, binomial (a 0/1 response: Bernoulli) or negbinomial (glmer.nb: NB2, log link).
## FACTOR,COLUMNS: comma-separated columns to read as factors (their levels sorted, as R and
## multilevel both do); text columns are factors anyway. Fits by Laplace (lme4's defaults).
## Prints one line per fixed effect, "fixef NAME ESTIMATE STD_ERROR" (10 significant digits), then
## "lme4 VERSION", "convergence none" or "convergence MESSAGES" (lme4's optimiser warnings) and,
## for glmer.nb, "nb_theta PHI".

suppressPackageStartupMessages(library(lme4))

args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 3) stop("usage: glmer_fixef.R DATA.csv FORMULA FAMILY [FACTOR,COLUMNS]")
d <- read.csv(args[1], stringsAsFactors = TRUE)
if (length(args) >= 4 && nzchar(args[4])) {
  for (v in strsplit(args[4], ",")[[1]]) d[[v]] <- factor(d[[v]])
}
form <- as.formula(args[2])
fit <- switch(args[3],
  poisson = glmer(form, data = d, family = poisson),
  binomial = glmer(form, data = d, family = binomial),
  negbinomial = glmer.nb(form, data = d),
  stop(sprintf("unknown family %s", args[3]))
)
fe <- fixef(fit)
se <- sqrt(diag(as.matrix(vcov(fit))))
for (i in seq_along(fe)) cat(sprintf("fixef %s %.10g %.10g\n", names(fe)[i], fe[i], se[i]))
cat(sprintf("lme4 %s\n", as.character(packageVersion("lme4"))))
msgs <- fit@optinfo$conv$lme4$messages
cat(sprintf("convergence %s\n", if (is.null(msgs)) "none" else paste(msgs, collapse = " | ")))
if (args[3] == "negbinomial") cat(sprintf("nb_theta %.10g\n", getME(fit, "glmer.nb.theta")))
