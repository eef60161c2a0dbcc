#!/usr/bin/env Rscript
## lme4 reference estimates for models with several grouping factors (crossed, nested,
## uncorrelated terms) and their GLMM counterparts, on the simulated test data.
##
## Usage (from the repository root):
##   Rscript benchmarks/reference/lme4_crossed_reference.R > benchmarks/reference/lme4_crossed_reference.txt
## (R and lme4 from Debian: apt-get install r-base-core r-cran-lme4)
##
## DATA_DIR (the first argument) holds crossed.csv, nested.csv, uncorrelated.csv,
## crossed_poisson.csv, nested_bernoulli.csv and negbin.csv; it defaults to tests/data,
## where benchmarks/reference/simulate_crossed.py writes them (the true values of every
## model are in that script's docstring).
##
## Gaussian models are fitted by REML, the Poisson and Bernoulli GLMMs by Laplace (lme4
## defaults), the negative binomial by glmer.nb (Laplace, theta = phi estimated by
## alternating with glmer fits). Text columns are read as factors (levels in sorted order).
##
## Factor names as lme4 prints them: (1 | school/class) expands to (1 | school) +
## (1 | class:school), so the nested factor is "class:school" (the project writes it
## "school:class"); (x || g) expands to (1 | g) + (0 + x | g), printed as factors "g" and
## "g.1".
##
## Reruns are not bit-identical: with lme4 1.1-31 / Matrix 1.5-3 and Debian's reference
## BLAS, the crossed model's fit comes out in one of two ways from run to run (with either
## optimizer, nloptwrap or bobyqa, and with one thread), differing by at most 3e-9
## relative, i.e. in the last one or two of the 10 printed digits. The other five models
## were identical in every rerun seen.

suppressPackageStartupMessages(library(lme4))

args <- commandArgs(trailingOnly = TRUE)
if (length(args) >= 1) {
  data_dir <- args[1]
} else {
  ## Repository root = two levels above this script's directory; fall back to cwd.
  file_arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  repo_root <- if (length(file_arg) == 1) {
    normalizePath(file.path(dirname(sub("^--file=", "", file_arg)), "..", ".."))
  } else {
    getwd()
  }
  data_dir <- file.path(repo_root, "tests", "data")
}

read_data <- function(name) {
  read.csv(file.path(data_dir, name), stringsAsFactors = TRUE)
}

fmt <- function(x) sprintf("%.10g", x)

print_fit <- function(label, file, fit) {
  cat(sprintf("==== MODEL: %s ====\n", label))
  cat(sprintf("file: %s\n", file))
  cat(sprintf("formula: %s\n", paste(deparse(formula(fit), width.cutoff = 500L), collapse = " ")))
  fam <- family(fit)
  is_nb <- isGLMM(fit) && grepl("^Negative Binomial", fam$family)
  cat(sprintf("family: %s\nlink: %s\n", fam$family, fam$link))
  cat(sprintf("method: %s\n", if (is_nb) "Laplace (glmer.nb)" else if (isGLMM(fit)) "Laplace"
              else if (isREML(fit)) "REML" else "ML"))
  cat(sprintf("nobs: %d\n", nobs(fit)))
  for (g in names(ngrps(fit))) cat(sprintf("groups: %s %d\n", g, ngrps(fit)[[g]]))
  opt_msgs <- fit@optinfo$conv$lme4$messages
  cat(sprintf("convergence_warnings: %s\n", if (is.null(opt_msgs)) "none" else paste(opt_msgs, collapse = " | ")))
  cat(sprintf("singular: %s\n", isSingular(fit)))

  cat("-- fixed effects (name estimate std_error) --\n")
  fe <- fixef(fit)
  se <- sqrt(diag(as.matrix(vcov(fit))))
  for (i in seq_along(fe)) {
    cat(sprintf("fixef %s %s %s\n", names(fe)[i], fmt(fe[i]), fmt(se[i])))
  }

  cat("-- random-effects covariance (group row col value) --\n")
  vc <- VarCorr(fit)
  for (g in names(vc)) {
    m <- as.matrix(vc[[g]])
    attr(m, "stddev") <- NULL
    attr(m, "correlation") <- NULL
    rn <- rownames(m)
    for (i in seq_len(nrow(m))) for (j in seq_len(ncol(m))) {
      cat(sprintf("cov %s %s %s %s\n", g, rn[i], rn[j], fmt(m[i, j])))
    }
    sds <- attr(vc[[g]], "stddev")
    for (i in seq_along(sds)) cat(sprintf("sd %s %s %s\n", g, names(sds)[i], fmt(sds[i])))
    if (nrow(m) > 1) {
      cr <- attr(vc[[g]], "correlation")
      for (i in 1:(nrow(m) - 1)) for (j in (i + 1):nrow(m)) {
        cat(sprintf("cor %s %s %s %s\n", g, rn[i], rn[j], fmt(cr[i, j])))
      }
    }
  }

  if (!isGLMM(fit)) {
    cat(sprintf("residual_variance %s\n", fmt(sigma(fit)^2)))
    cat(sprintf("residual_sd %s\n", fmt(sigma(fit))))
  }
  if (is_nb) {
    cat(sprintf("nb_theta %s (phi: Var(y) = mu + mu^2 / phi)\n", fmt(getME(fit, "glmer.nb.theta"))))
  }
  ll <- logLik(fit)
  if (isREML(fit)) {
    cat(sprintf("logLik %s (REML log-likelihood; df %d)\n", fmt(as.numeric(ll)), attr(ll, "df")))
    cat(sprintf("REMLcrit %s (= -2 * REML logLik)\n", fmt(REMLcrit(fit))))
    llml <- logLik(refitML(fit))
    cat(sprintf("logLik_ML_refit %s (ML log-likelihood after refitML; df %d)\n",
                fmt(as.numeric(llml)), attr(llml, "df")))
  } else {
    cat(sprintf("logLik %s (%s log-likelihood; df %d)\n", fmt(as.numeric(ll)),
                if (isGLMM(fit)) "Laplace" else "ML", attr(ll, "df")))
    cat(sprintf("minus2logLik %s\n", fmt(-2 * as.numeric(ll))))
  }
  cat(sprintf("AIC %s\n", fmt(AIC(fit))))
  cat("\n")
}

cat("# lme4 reference estimates: several grouping factors (simulated data in tests/data)\n")
cat(sprintf("R_version: %s\n", R.version$version.string))
cat(sprintf("lme4_version: %s\n", as.character(packageVersion("lme4"))))
cat(sprintf("Matrix_version: %s\n", as.character(packageVersion("Matrix"))))
cat(sprintf("MASS_version: %s\n", as.character(packageVersion("MASS"))))
cat(sprintf("platform: %s\n", R.version$platform))
cat("\n")

## ---- Gaussian, REML ----
crossed <- read_data("crossed.csv")
print_fit("crossed", "crossed.csv",
          lmer(y ~ x + z + (x | subj) + (1 | item), data = crossed, REML = TRUE))

nested <- read_data("nested.csv")
print_fit("nested", "nested.csv",
          lmer(y ~ x + (1 | school/class), data = nested, REML = TRUE))

uncorrelated <- read_data("uncorrelated.csv")
print_fit("uncorrelated", "uncorrelated.csv",
          lmer(y ~ x + (x || g), data = uncorrelated, REML = TRUE))

## ---- GLMMs, Laplace ----
crossed_poisson <- read_data("crossed_poisson.csv")
print_fit("crossed_poisson", "crossed_poisson.csv",
          glmer(y ~ x + (1 | subj) + (1 | item), data = crossed_poisson, family = poisson))

nested_bernoulli <- read_data("nested_bernoulli.csv")
print_fit("nested_bernoulli", "nested_bernoulli.csv",
          glmer(y ~ x + (1 | district/village), data = nested_bernoulli, family = binomial))

negbin <- read_data("negbin.csv")
print_fit("negbin", "negbin.csv",
          glmer.nb(y ~ x + (1 | g), data = negbin))
