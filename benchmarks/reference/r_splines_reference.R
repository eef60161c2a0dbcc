#!/usr/bin/env Rscript
## R's splines, splines::ns and splines::bs, as reference figures for multilevel's ns() and bs().
##
## Usage (from the repository root):
##   Rscript benchmarks/reference/r_splines_reference.R > benchmarks/reference/r_splines_reference.txt
## writes tests/data/r_ns_basis.csv (long format: case, set, row, x, column, value; set is
## "fit" for the rows the basis was made from and "new" for ns's predict() at new values,
## some beyond the boundary knots), tests/data/r_bs_basis.csv (the same for bs), tests/data/r_tied_knots_basis.csv
## (ns and bs of heavily tied x, whose knots coincide) and prints lme4's fit of a model with ns() on hsb82
## (REML), whose fixed effects tests/test_rsplines.py compares with the posterior.
## (R and lme4 from Debian: apt-get install r-base-core r-cran-lme4)

suppressPackageStartupMessages({library(splines); library(lme4)})

x <- round(exp(sin(1:60) * 1.5) * 3, 1)  # skewed, with ties
new <- c(min(x) - 1, min(x), 2.5, 7.25, max(x), max(x) + 2)
cases <- list(df3 = function(v) ns(v, df = 3),
              df4_intercept = function(v) ns(v, df = 4, intercept = TRUE),
              knots = function(v) ns(v, knots = c(2, 5, 9)),
              df1 = function(v) ns(v),
              boundary = function(v) ns(v, df = 3, Boundary.knots = c(2, 10)))
basis_rows <- function(cases) {
rows <- list()
for (name in names(cases)) {
  b <- cases[[name]](x)
  for (set in c("fit", "new")) {
    m <- if (set == "fit") unclass(b)[, , drop = FALSE] else unclass(predict(b, new))[, , drop = FALSE]
    v <- if (set == "fit") x else new
    rows[[length(rows) + 1]] <- data.frame(case = name, set = set, row = rep(seq_along(v) - 1, ncol(m)),
                                           x = rep(v, ncol(m)), column = rep(seq_len(ncol(m)) - 1, each = nrow(m)),
                                           value = as.vector(m))
  }
}
out <- do.call(rbind, rows)
out$x <- sprintf("%.17g", out$x)
out$value <- sprintf("%.17g", out$value)
out
}
write.csv(basis_rows(cases), "tests/data/r_ns_basis.csv", row.names = FALSE, quote = FALSE)
bs_cases <- list(df5 = function(v) bs(v, df = 5),
                 df6_degree2_intercept = function(v) bs(v, df = 6, degree = 2, intercept = TRUE),
                 knots = function(v) bs(v, knots = c(2, 5, 9)),
                 df_null = function(v) bs(v),
                 boundary = function(v) bs(v, df = 4, Boundary.knots = c(0, 20)),
                 boundary_inside = function(v) bs(v, df = 5, Boundary.knots = c(2, 10)))
write.csv(basis_rows(bs_cases), "tests/data/r_bs_basis.csv", row.names = FALSE, quote = FALSE)
## heavy ties: df's interior knots coincide (all at 2), which R's splineDesign allows
x <- c(0, 0.5, rep(2, 50), 3, 4)
new <- c(-1, 1, 2, 3.5, 5)
write.csv(basis_rows(list(ns_tied = function(v) ns(v, df = 4), bs_tied = function(v) bs(v, df = 6))),
          "tests/data/r_tied_knots_basis.csv", row.names = FALSE, quote = FALSE)

hsb <- read.csv("src/multilevel/datasets/hsb82.csv")
fit <- lmer(mAch ~ ns(ses, df = 3) + (1 | school), data = hsb, REML = TRUE)
cat(sprintf("R %s, splines %s, lme4 %s\n", getRversion(), packageVersion("splines"), packageVersion("lme4")))
cat("lmer(mAch ~ ns(ses, df = 3) + (1 | school), hsb82, REML): fixef estimate, std. error\n")
print(format(data.frame(estimate = fixef(fit), se = sqrt(diag(as.matrix(vcov(fit))))), digits = 10))
print(VarCorr(fit), digits = 10)
