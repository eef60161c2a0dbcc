#!/usr/bin/env Rscript
## lme4 reference estimates for the benchmark data sets.
##
## Usage (from the repository root):
##   Rscript benchmarks/reference/lme4_reference.R > benchmarks/reference/lme4_reference.txt
## (R and lme4 from Debian: apt-get install r-base-core r-cran-lme4)
##
## DATA_DIR holds hsb82.csv, sleepstudy.csv, epil.csv and cbpp.csv; it defaults to the
## package's bundled copies, src/multilevel/datasets.
##
## Gaussian models are fitted by REML, GLMMs by Laplace (lme4 defaults).
## Factor reference levels follow the R packages the data come from:
##   hsb82 sector: Public (reference), Catholic          (mlmRev::Hsb82)
##   epil trt:     placebo (reference), progabide        (MASS::epil)
##   cbpp period:  1 (reference), 2, 3, 4                (lme4::cbpp)

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
  data_dir <- file.path(repo_root, "src", "multilevel", "datasets")
}

read_data <- function(name) {
  read.csv(file.path(data_dir, name), stringsAsFactors = FALSE)
}

fmt <- function(x) sprintf("%.10g", x)

print_fit <- function(label, fit) {
  cat(sprintf("==== MODEL: %s ====\n", label))
  cat(sprintf("formula: %s\n", paste(deparse(formula(fit), width.cutoff = 500L), collapse = " ")))
  fam <- family(fit)
  cat(sprintf("family: %s\nlink: %s\n", fam$family, fam$link))
  cat(sprintf("method: %s\n", if (isGLMM(fit)) "Laplace" else if (isREML(fit)) "REML" else "ML"))
  cat(sprintf("nobs: %d\n", nobs(fit)))
  for (g in names(ngrps(fit))) cat(sprintf("groups: %s %d\n", g, ngrps(fit)[[g]]))
  opt_msgs <- fit@optinfo$conv$lme4$messages
  cat(sprintf("convergence_warnings: %s\n", if (is.null(opt_msgs)) "none" else paste(opt_msgs, collapse = " | ")))

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

cat("# lme4 reference estimates\n")
cat(sprintf("R_version: %s\n", R.version$version.string))
cat(sprintf("lme4_version: %s\n", as.character(packageVersion("lme4"))))
cat(sprintf("Matrix_version: %s\n", as.character(packageVersion("Matrix"))))
cat(sprintf("platform: %s\n", R.version$platform))
cat("\n")

## ---- hsb82 (mlmRev::Hsb82) ----
hsb <- read_data("hsb82.csv")
hsb$school <- factor(hsb$school)
hsb$sector <- factor(hsb$sector, levels = c("Public", "Catholic"))
print_fit("hsb82 random slope",
          lmer(mAch ~ ses + (ses | school), data = hsb, REML = TRUE))
print_fit("hsb82 random intercept",
          lmer(mAch ~ ses + (1 | school), data = hsb, REML = TRUE))
print_fit("hsb82 random slope + sector",
          lmer(mAch ~ ses + sector + (ses | school), data = hsb, REML = TRUE))

## ---- sleepstudy (lme4::sleepstudy) ----
sleep <- read_data("sleepstudy.csv")
sleep$Subject <- factor(sleep$Subject)
print_fit("sleepstudy random slope",
          lmer(Reaction ~ Days + (Days | Subject), data = sleep, REML = TRUE))

## ---- epil (MASS::epil) ----
epil <- read_data("epil.csv")
epil$trt <- factor(epil$trt, levels = c("placebo", "progabide"))
epil$subject <- factor(epil$subject)
print_fit("epil poisson",
          glmer(y ~ lbase * trt + lage + V4 + (1 | subject), data = epil, family = poisson))

## ---- cbpp (lme4::cbpp) ----
cbpp <- read_data("cbpp.csv")
cbpp$herd <- factor(cbpp$herd)
cbpp$period <- factor(cbpp$period, levels = sort(unique(cbpp$period)))
print_fit("cbpp binomial",
          glmer(cbind(incidence, size - incidence) ~ period + (1 | herd),
                data = cbpp, family = binomial))
