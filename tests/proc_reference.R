#!/usr/bin/env Rscript
# Reference numbers from R's pROC for tests/test_stats.py, for every *.csv (columns y, a, b) in the
# directory given: one CSV line each on stdout. One R process for all files, because loading R and
# pROC costs about a second.
#   Rscript tests/proc_reference.R DIR
suppressPackageStartupMessages(library(pROC))
dir <- commandArgs(trailingOnly = TRUE)[1]
files <- sort(list.files(dir, pattern = "\\.csv$", full.names = TRUE))
f17 <- function(x) sprintf("%.17g", x)
cat("name,auc_a,lo_a,hi_a,auc_b,lo_b,hi_b,z,p,youden_a\n")
for (f in files) {
  d <- read.csv(f)
  # levels and direction fixed: pROC's "auto" direction would flip a curve with AUC < 0.5
  ra <- roc(d$y, d$a, levels = c(0, 1), direction = "<", quiet = TRUE)
  rb <- roc(d$y, d$b, levels = c(0, 1), direction = "<", quiet = TRUE)
  ca <- ci.auc(ra, method = "delong", conf.level = 0.95)
  cb <- ci.auc(rb, method = "delong", conf.level = 0.95)
  t <- roc.test(ra, rb, method = "delong", paired = TRUE)
  # all thresholds tied for the best J come back; medmtl takes the lowest
  best <- coords(ra, "best", best.method = "youden", ret = "threshold", transpose = FALSE)
  cat(paste(sub("\\.csv$", "", basename(f)), f17(ca[2]), f17(ca[1]), f17(ca[3]), f17(cb[2]), f17(cb[1]),
            f17(cb[3]), f17(t$statistic), f17(t$p.value), f17(min(best$threshold)), sep = ","), "\n", sep = "")
}
