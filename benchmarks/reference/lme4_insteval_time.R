# Time lme4's REML fit of InstEval's y ~ service + (1 | s) + (1 | d) + (1 | dept:service):
#   Rscript benchmarks/reference/lme4_insteval_time.R PATH/TO/insteval.csv
# Prints one line: "fit_cpu_s fit_wall_s" of lmer() alone (the CSV read and factor coding apart),
# then the estimates, for the benchmark crossed_insteval to quote beside multilevel's time to ESS 1000.
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
for (v in c("s", "d", "dept", "service")) d[[v]] <- factor(d[[v]])
t <- system.time(m <- lmer(y ~ service + (1 | s) + (1 | d) + (1 | dept:service), data = d, REML = TRUE))
cat(sprintf("%.3f %.3f\n", t[["user.self"]] + t[["sys.self"]], t[["elapsed"]]))
print(fixef(m))
print(as.data.frame(VarCorr(m))[, c("grp", "vcov")])
