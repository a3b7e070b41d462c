# R references for perturbglm's results() filters (see README.md here). Needs Debian's
# r-bioc-deseq2 (DESeq2 1.38.3, R 4.2) and, for part 3, the screen exported by export_for_r.py:
#   python tests/data/export_for_r.py SCREEN.h5ad WORKDIR
#   Rscript tests/data/make_filtering_references.R WORKDIR tests/data
# Numbers are written with 17 significant digits (R's write.csv keeps 15), so that the tests
# read exactly the doubles R used and computed; inputs made up here are rounded first, so
# that both sides start from the same short decimals.
suppressMessages({library(Matrix); library(DESeq2)})
args <- commandArgs(trailingOnly = TRUE)
work <- args[1]; out <- args[2]
shortest <- function(x) {   # 15 significant digits where they give x back, else 17
  s <- sprintf("%.15g", x)
  long <- !is.na(x) & suppressWarnings(as.numeric(s)) != x
  s[long] <- sprintf("%.17g", x[long])
  s[is.na(x)] <- NA
  s
}
exact <- function(df) {
  for (k in names(df)) if (is.double(df[[k]])) df[[k]] <- shortest(df[[k]])
  df
}
save <- function(df, dir, name) {
  dir.create(file.path(out, dir), showWarnings = FALSE, recursive = TRUE)
  write.csv(exact(df), file.path(out, dir, name), row.names = FALSE, quote = FALSE)
}

# 1. stats::lowess on made-up data: the smoother DESeq2's independent filtering fits.
set.seed(20261202)
lw <- NULL
add_lowess <- function(case, x, y, f, iter = 3L) {
  x <- signif(x, 6); y <- signif(y, 6)
  fit <- lowess(x, y, f = f, iter = iter)
  lw <<- rbind(lw, data.frame(case = case, f = f, iter = iter, x = fit$x,
                              y = y[order(x)], fit = fit$y))
}
theta <- seq(0, 0.95, length = 50)
add_lowess("numrej_curve", theta, round(200 * theta * exp(-3 * theta) + rnorm(50, 0, 3)), 1/5)
add_lowess("random", runif(40), rnorm(40), 2/3)
add_lowess("ties", sample(1:10, 60, replace = TRUE) / 10, rnorm(60), 0.3)
add_lowess("outliers", theta, sin(6 * theta) + c(rep(0, 45), 8, -9, 0, 0, 0)[sample(50)], 1/5)
add_lowess("dense_interpolated", runif(300), rnorm(300), 0.1)
add_lowess("flat", theta, rep(7, 50), 1/5)
add_lowess("no_robustness", runif(30), rexp(30), 0.5, iter = 0L)
add_lowess("two_points", c(0.2, 0.9), c(1, 4), 1/5)
add_lowess("constant_x", rep(0.5, 20), rnorm(20), 1/5)
save(lw, "r_lowess", "lowess.csv")

# 2. DESeq2's pvalueAdjustment (results()' independent filtering) on made-up baseMean and
#    p-values: the padj, the threshold and theta chosen, and the rejections on the grid.
adjust <- function(baseMean, pvalue, alpha) {
  res <- DESeqResults(DataFrame(baseMean = baseMean, pvalue = pvalue))
  mcols(res) <- DataFrame(type = rep("input", 2), description = rep("", 2))
  DESeq2:::pvalueAdjustment(res, independentFiltering = TRUE, alpha = alpha,
                            pAdjustMethod = "BH")
}
cases <- NULL; choice <- NULL; grid <- NULL
add_case <- function(case, baseMean, pvalue, alpha = 0.1) {
  baseMean <- signif(baseMean, 6); pvalue <- signif(pvalue, 6)
  res <- adjust(baseMean, pvalue, alpha)
  md <- metadata(res)
  cases <<- rbind(cases, data.frame(case = case, baseMean = baseMean, pvalue = pvalue,
                                    padj = res$padj))
  choice <<- rbind(choice, data.frame(case = case, alpha = alpha,
    filterThreshold = unname(md$filterThreshold), filterTheta = md$filterTheta,
    n_filtered = sum(is.na(res$padj) & !is.na(pvalue))))
  grid <<- rbind(grid, data.frame(case = case, theta = md$filterNumRej$theta,
                                  numRej = md$filterNumRej$numRej, lowess = md$lo.fit$y))
}
# signal only among genes of higher mean, uniform p-values below: filtering pays
G <- 1000
bm <- exp(rnorm(G, 1, 2))
signal <- bm > 5 & runif(G) < 0.3
p <- ifelse(signal, rbeta(G, 0.05, 1), runif(G))
add_case("filters", bm, p)
add_case("filters_alpha_0.05", bm, p, alpha = 0.05)
add_case("no_signal", bm, runif(G))
# genes without counts (baseMean 0, no p-value) and p-values removed (Cook's rule)
zero <- runif(G) < 0.3
p2 <- ifelse(zero | runif(G) < 0.05, NA, p)
add_case("zeros_and_missing", ifelse(zero, 0, bm), p2)
# 96% of the genes without counts: the grid runs to 1
G2 <- 2000
bm3 <- c(rep(0, 1910), exp(rnorm(90, 2, 1)))
p3 <- c(rep(NA, 1910), ifelse(runif(90) < 0.6, rbeta(90, 0.02, 1), runif(90)))
add_case("mostly_zero", bm3, p3)
# few distinct means: the cutoff chosen falls on a tie (kept: filter >= cutoff)
set.seed(3)
bm4 <- sample(c(0.5, 1, 2, 4, 8, 16, 32), G, replace = TRUE,
              prob = c(0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05))
p4 <- ifelse(bm4 >= 8 & runif(G) < 0.3, rbeta(G, 0.2, 1), runif(G))
add_case("tied_means", bm4, p4)
save(cases, "deseq2_pvalue_adjustment", "cases.csv")
save(choice, "deseq2_pvalue_adjustment", "choice.csv")
save(grid, "deseq2_pvalue_adjustment", "grid.csv")

# 3. The real screen: the targets where results()' default filtering removes genes (BRD4,
#    CUL3, SMAD4), each vs all non-targeting cells, DESeq2's "fixed" pipeline as in
#    make_references.R, ~ condition, results(alpha = 0.1, independentFiltering = TRUE):
#    Wald with cooksCutoff = FALSE; BRD4 also with nbinomLRT(reduced = ~ 1). (No target of
#    the screen has both a p-value removed by the Cook's rule and genes filtered.)
m <- readMM(file.path(work, "counts_genes_by_cells.mtx"))
genes <- readLines(file.path(work, "genes.txt"))
cells <- read.csv(file.path(work, "cells.csv"), row.names = 1, stringsAsFactors = FALSE)
rownames(m) <- genes; colnames(m) <- rownames(cells); m <- as(m, "CsparseMatrix")
fixed_dispersions <- function(target) {
  keep <- cells$gene %in% c("non-targeting", target)
  cd <- cells[keep, ]
  cd$condition <- factor(ifelse(cd$gene == target, "perturbed", "control"),
                         levels = c("control", "perturbed"))
  counts <- as.matrix(m[, keep]); storage.mode(counts) <- "integer"
  dds <- DESeqDataSetFromMatrix(counts, cd, ~ condition)
  sizeFactors(dds) <- cd$size_factor
  dds <- estimateDispersionsGeneEst(dds, minmu = 1e-6, quiet = TRUE, alphaInit = 0.5)
  dds <- estimateDispersionsFit(dds, quiet = TRUE)
  estimateDispersionsMAP(dds, quiet = TRUE)
}
real <- NULL
add_real <- function(name, target, test, res) {
  md <- metadata(res)
  save(data.frame(gene = rownames(res), baseMean = res$baseMean, stat = res$stat,
                  pvalue = res$pvalue, padj = res$padj),
       "deseq2_independent_filtering_active", paste0("deseq2_", name, ".csv"))
  real <<- rbind(real, data.frame(name = name, target = target, test = test,
    filterThreshold = unname(md$filterThreshold), filterTheta = md$filterTheta,
    alpha = md$alpha, n_filtered = sum(is.na(res$padj) & !is.na(res$pvalue)),
    n_rejected = sum(res$padj < md$alpha, na.rm = TRUE)))
}
for (t in c("BRD4", "CUL3", "SMAD4")) {
  dds <- fixed_dispersions(t)
  wald <- nbinomWaldTest(dds, minmu = 1e-6, quiet = TRUE)
  add_real(t, t, "wald", results(wald, name = "condition_perturbed_vs_control",
           cooksCutoff = FALSE, independentFiltering = TRUE, alpha = 0.1))
  if (t == "BRD4") {
    lrt <- nbinomLRT(dds, reduced = ~ 1, minmu = 1e-6, quiet = TRUE)
    add_real("BRD4_lrt", t, "lrt", results(lrt, name = "condition_perturbed_vs_control",
             cooksCutoff = FALSE, independentFiltering = TRUE, alpha = 0.1))
  }
}
save(real, "deseq2_independent_filtering_active", "filter_threshold.csv")
cat("DESeq2", as.character(packageVersion("DESeq2")), "\n")
