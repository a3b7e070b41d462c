# R DESeq2 references for tests/data (see README.md here). Needs Debian's r-bioc-deseq2
# (DESeq2 1.38.3) and the screen exported by export_for_r.py:
#   python tests/data/export_for_r.py SCREEN.h5ad WORKDIR
#   Rscript tests/data/make_references.R WORKDIR tests/data
# WORKDIR holds counts_genes_by_cells.mtx, genes.txt, cells.csv; the minority-control cells are
# read from OUTDIR/deseq2_fixed_minority_control/control_cells.csv (written by the exporter).
#
# Every reference uses DESeq2's "fixed" pipeline: the comparison's cells alone, sizeFactors
# fixed to obs size_factor, estimateDispersionsGeneEst(minmu = 1e-6, alphaInit = 0.5),
# estimateDispersionsFit (parametric, DESeq2's automatic fallback to a local fit),
# estimateDispersionsMAP, nbinomWaldTest(minmu = 1e-6); results() with cooksCutoff = FALSE.
suppressMessages({library(Matrix); library(DESeq2)})
args <- commandArgs(trailingOnly = TRUE)
work <- args[1]; out <- args[2]
m <- readMM(file.path(work, "counts_genes_by_cells.mtx"))
genes <- readLines(file.path(work, "genes.txt"))
cells <- read.csv(file.path(work, "cells.csv"), row.names = 1, stringsAsFactors = FALSE)
rownames(m) <- genes; colnames(m) <- rownames(cells); m <- as(m, "CsparseMatrix")
TARGETS <- c("ATF2", "CD86", "IFNGR1", "IRF1", "MYC", "NFKBIA", "SPI1", "STAT2")

# keep: the comparison's cells; pert: which of all cells are the perturbed (non-reference) group.
fixed <- function(keep, pert, fml) {
  cd <- cells[keep, ]
  cd$condition <- factor(ifelse(pert[keep], "perturbed", "control"), levels = c("control", "perturbed"))
  cd$bio_rep <- factor(cd$bio_rep)
  counts <- as.matrix(m[, keep]); storage.mode(counts) <- "integer"
  dds <- DESeqDataSetFromMatrix(counts, cd, fml)
  sizeFactors(dds) <- cd$size_factor
  dds <- estimateDispersionsGeneEst(dds, minmu = 1e-6, quiet = TRUE, alphaInit = 0.5)
  dds <- estimateDispersionsFit(dds, quiet = TRUE)
  dds <- estimateDispersionsMAP(dds, quiet = TRUE)
  nbinomWaldTest(dds, minmu = 1e-6, quiet = TRUE)
}
full_table <- function(dds, res) data.frame(gene = rownames(res), baseMean = res$baseMean,
  log2FoldChange = res$log2FoldChange, lfcSE = res$lfcSE, stat = res$stat, pvalue = res$pvalue,
  padj = res$padj, dispersion = dispersions(dds), dispGeneEst = mcols(dds)$dispGeneEst,
  dispFit = mcols(dds)$dispFit)
plain_results <- function(dds) results(dds, name = "condition_perturbed_vs_control",
  cooksCutoff = FALSE, independentFiltering = FALSE)
save <- function(df, dir, name) {
  dir.create(file.path(out, dir), showWarnings = FALSE, recursive = TRUE)
  write.csv(df, file.path(out, dir, name), row.names = FALSE)
}

# 1. ~ bio_rep + condition, the 3 largest targets each vs a fixed 300 non-targeting cells.
ctrl <- read.csv(file.path(out, "deseq2_fixed_minority_control", "control_cells.csv"),
                 stringsAsFactors = FALSE)$cell
stopifnot(length(ctrl) == 300, all(cells[ctrl, "gene"] == "non-targeting"))
sizes <- sort(table(cells$gene[cells$gene != "non-targeting"]), decreasing = TRUE)
largest <- names(sizes)[1:3]
for (t in largest) {
  keep <- rownames(cells) %in% ctrl | cells$gene == t
  dds <- fixed(keep, cells$gene == t, ~ bio_rep + condition)
  save(full_table(dds, plain_results(dds)), "deseq2_fixed_minority_control", paste0("deseq2_", t, ".csv"))
}

# 2. ~ guide_umi_fraction + condition (numeric covariate as given), 8 targets vs all non-targeting.
for (t in TARGETS) {
  keep <- cells$gene %in% c("non-targeting", t)
  dds <- fixed(keep, cells$gene == t, ~ guide_umi_fraction + condition)
  save(full_table(dds, plain_results(dds)), "deseq2_fixed_numeric_covariate", paste0("deseq2_", t, ".csv"))
}

# 3. Perturbation vs perturbation, ~ condition: A's cells against B's, B the reference level.
for (p in list(c("STAT1", "JAK2"), c("IRF1", "IFNGR1"))) {
  keep <- cells$gene %in% p
  dds <- fixed(keep, cells$gene == p[1], ~ condition)
  save(full_table(dds, plain_results(dds)), "deseq2_contrasts", paste0("deseq2_", p[1], "_vs_", p[2], ".csv"))
}

# 4. ~ condition, 8 targets vs all non-targeting, results() with independent filtering
#    (alpha 0.1), Cook's off.
thr <- NULL
for (t in TARGETS) {
  keep <- cells$gene %in% c("non-targeting", t)
  dds <- fixed(keep, cells$gene == t, ~ condition)
  res <- results(dds, name = "condition_perturbed_vs_control", cooksCutoff = FALSE,
                 independentFiltering = TRUE, alpha = 0.1)
  save(data.frame(gene = rownames(res), baseMean = res$baseMean, pvalue = res$pvalue, padj = res$padj),
       "deseq2_independent_filtering", paste0("deseq2_", t, ".csv"))
  md <- metadata(res)
  thr <- rbind(thr, data.frame(target = t, filterThreshold = unname(md$filterThreshold),
    filterTheta = md$filterTheta, alpha = md$alpha, n_filtered = sum(is.na(res$padj) & !is.na(res$pvalue)),
    n_rejected = sum(res$padj < md$alpha, na.rm = TRUE)))
}
save(thr, "deseq2_independent_filtering", "filter_threshold.csv")

# 5. ~ bio_rep + group on ALL cells at once (one dispersion per gene, perturbglm's
#    dispersion = "global" with covariates; every target and the non-targeting cells one
#    factor, non-targeting the reference level), Wald test of each of the 8 targets vs
#    non-targeting.
grp <- ifelse(cells$gene == "non-targeting", "NT", make.names(cells$gene))
cd <- data.frame(group = relevel(factor(grp), ref = "NT"), bio_rep = factor(cells$bio_rep),
                 row.names = rownames(cells))
counts <- as.matrix(m); storage.mode(counts) <- "integer"
dds <- DESeqDataSetFromMatrix(counts, cd, ~ bio_rep + group)
sizeFactors(dds) <- cells$size_factor
dds <- estimateDispersionsGeneEst(dds, minmu = 1e-6, quiet = TRUE, alphaInit = 0.5)
dds <- estimateDispersionsFit(dds, quiet = TRUE)
dds <- estimateDispersionsMAP(dds, quiet = TRUE)
dds <- nbinomWaldTest(dds, minmu = 1e-6, quiet = TRUE)
for (t in TARGETS) {
  res <- results(dds, contrast = c("group", make.names(t), "NT"), cooksCutoff = FALSE,
                 independentFiltering = FALSE)
  save(full_table(dds, res), "deseq2_fixed_global_rep", paste0("deseq2_", t, ".csv"))
}
cat("DESeq2", as.character(packageVersion("DESeq2")), "; largest targets:", largest, "\n")
