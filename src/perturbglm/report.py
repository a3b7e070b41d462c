"""The report of a results folder: PNG figures and one self-contained HTML page (index.html)
that shows them, written to a new folder (by default DIR/report).

Memory: summary.csv (one row per perturbation) is read whole; results.parquet never is.
Per-perturbation figures read that perturbation's rows only, one row group at a time and
only the row groups whose perturbation range (their statistics; the table is sorted by
perturbation) holds it;
pooled figures stream the file in batches of BATCH_ROWS rows, reading only the columns they
need: the pooled p-value histogram counts into fixed bins, and the pooled volcano keeps a
random sample of the pairs (each pair independently with probability
min(1, POOLED_POINTS / pairs), a fixed seed: the same results give the same figure).

Figures use matplotlib's object interface (Figure + its Agg canvas), never pyplot: making a
report changes no global matplotlib state of the calling program. matplotlib is the optional
extra `perturbglm[plot]`; without it the report is refused before anything is written.
"""

from __future__ import annotations

import html
import json
import os
import re

import numpy as np

from .errors import InputError
from .io import outdir

TOP = 6                    # perturbations with their own volcano / MA / p-value figure
BAR_LIMIT = 60             # up to this many perturbations, one bar each; beyond, a summary
TOP_BARS = 30              # bars of the summary's "top" panel
BATCH_ROWS = 1 << 20       # rows per streamed batch of results.parquet
POOLED_POINTS = 200_000    # expected points of the pooled volcano (a random sample)
SAMPLE_SEED = 0
LABELLED_GENES = 8         # genes named in a volcano: the smallest p-values
DPI = 100
NOT_SIGNIFICANT = "#9a9a9a"
SIGNIFICANT = "#c0392b"
TARGET = "#1f5fbf"
EXTRA = "plot"
INSTALL = f"pip install 'perturbglm[{EXTRA}]'"


def need_matplotlib() -> None:
    """Refuse (one line naming the extra) when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise InputError(f"the report needs matplotlib, which is not installed: "
                         f"{INSTALL}") from None


def check_results_folder(folder: str) -> None:
    """Refuse a FOLDER that is not a `perturbglm de` results folder."""
    missing = [f for f in outdir.RESULT_FILES if not os.path.isfile(os.path.join(folder, f))]
    if not os.path.isdir(folder) or missing:
        what = "does not exist" if not os.path.exists(folder) else \
            "is not a folder" if not os.path.isdir(folder) else f"has no {', '.join(missing)}"
        raise InputError(f"'{folder}' {what}: give the --out folder of a `perturbglm de` "
                         "run (results.parquet, summary.csv, run.json)")
    try:
        with open(os.path.join(folder, "run.json")) as fh:
            ok = "parameters" in json.load(fh)
    except (OSError, ValueError, TypeError):
        ok = False
    if not ok:
        raise InputError(f"'{folder}/run.json' is not a perturbglm run record: give the --out "
                         "folder of a `perturbglm de` run")


class _ParquetRows:
    """results.parquet read a few columns at a time (see the module docstring)."""

    def __init__(self, path: str):
        import pyarrow.parquet as pq

        self.path = path
        self.file = pq.ParquetFile(path)
        self.columns = set(self.file.schema_arrow.names)
        self.n_rows = self.file.metadata.num_rows

    def of(self, labels: list[str], columns: list[str]):
        """The rows of the perturbations LABELS, as a DataFrame of COLUMNS + perturbation:
        one row group at a time, only those whose perturbation range (min/max statistics)
        holds a label, so memory stays at one row group's COLUMNS whatever the file."""
        import pyarrow as pa
        import pyarrow.compute as pc

        cols = ["perturbation"] + [c for c in columns if c != "perturbation"]
        wanted = pa.array(sorted(set(labels)), pa.string())
        meta = self.file.metadata
        key = self.file.schema_arrow.get_field_index("perturbation")
        parts = []
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(key).statistics
            if stats is not None and stats.has_min_max and not any(
                    stats.min <= label <= stats.max for label in wanted.to_pylist()):
                continue
            part = self.file.read_row_group(g, columns=cols)
            parts.append(part.filter(pc.is_in(part["perturbation"], value_set=wanted)))
        if not parts:
            return self.file.schema_arrow.empty_table().select(cols).to_pandas()
        return pa.concat_tables(parts).to_pandas()

    def batches(self, columns: list[str]):
        """Every row, BATCH_ROWS at a time: {column: numpy array}; one row group at a time
        (the reader's own batch iterator reads ahead across row groups)."""
        for g in range(self.file.metadata.num_row_groups):
            for batch in self.file.iter_batches(batch_size=BATCH_ROWS, row_groups=[g],
                                                columns=columns):
                yield {c: batch.column(c).to_numpy(zero_copy_only=False) for c in columns}


class _FrameRows:
    """The same reads from a table in memory (a Result made without a folder)."""

    def __init__(self, table):
        self.table = table
        self.columns = set(table.columns)
        self.n_rows = len(table)

    def of(self, labels, columns):
        cols = ["perturbation"] + [c for c in columns if c != "perturbation"]
        return self.table.loc[self.table["perturbation"].isin(list(labels)), cols] \
            .reset_index(drop=True)

    def batches(self, columns):
        for start in range(0, self.n_rows, BATCH_ROWS):
            part = self.table.iloc[start:start + BATCH_ROWS]
            yield {c: part[c].to_numpy() for c in columns}


def _figure(width: float, height: float, ncols: int = 1, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, **kw)
    return fig, axes


def _save(fig, folder: str, name: str) -> str:
    fig.savefig(os.path.join(folder, name), dpi=DPI)
    return name


def _safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "perturbation"


def _neg_log10(p: np.ndarray) -> np.ndarray:
    """-log10 p, with p = 0 (underflow) shown at 1e-300."""
    return -np.log10(np.maximum(p, 1e-300))


# ----------------------------------------------------------------------------- figures


def _de_genes_figure(summary, fdr: float, folder: str) -> tuple[str, str]:
    s = summary.sort_values(["de_genes", "perturbation"], ascending=[False, True])
    n = len(s)
    if n <= BAR_LIMIT:
        fig, ax = _figure(11, max(3.0, 0.28 * n + 1.2))
        ax.barh(np.arange(n), s["de_genes"], color=TARGET)
        ax.set_yticks(np.arange(n), s["perturbation"])
        ax.invert_yaxis()
        ax.set_xlabel(f"DE genes (padj < {fdr:g})")
        ax.set_title(f"DE genes per perturbation ({n} perturbations, ranked)")
        for y, v in enumerate(s["de_genes"]):
            ax.text(v, y, f" {v}", va="center", fontsize=8)
        ax.margins(x=0.08)
        caption = (f"Genes with padj < {fdr:g} in each perturbation's comparison with the "
                   "control cells, ranked.")
    else:
        top = s.head(TOP_BARS)
        fig, (ax, bx) = _figure(15, 8, ncols=2, width_ratios=[1.4, 1])
        ranks = np.arange(1, n + 1)
        ax.plot(ranks, s["de_genes"], color=TARGET, lw=1.5)
        ax.axvspan(0.5, TOP_BARS + 0.5, color="#f0c419", alpha=0.25,
                   label=f"top {TOP_BARS} (right)")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("rank of the perturbation by DE genes (log scale)")
        ax.set_ylabel(f"DE genes (padj < {fdr:g})")
        with_de = int((s["de_genes"] > 0).sum())
        ax.set_title(f"all {n:,} perturbations ranked: {with_de:,} with at least one DE gene")
        ax.legend(loc="upper right")
        bx.barh(np.arange(len(top)), top["de_genes"], color=TARGET)
        bx.set_yticks(np.arange(len(top)), top["perturbation"], fontsize=8)
        bx.invert_yaxis()
        bx.set_xlabel(f"DE genes (padj < {fdr:g})")
        bx.set_title(f"top {len(top)} perturbations")
        caption = (f"Genes with padj < {fdr:g} per perturbation. Left: every perturbation, "
                   f"ranked by its DE genes (the rank on a log scale, so the few strongest and "
                   f"the long tail both show). Right: the "
                   f"{len(top)} with the most DE genes, named.")
    return _save(fig, folder, "de_genes.png"), caption


def _knockdown_figure(summary, fdr: float, folder: str) -> tuple[str | None, str]:
    measured = summary[summary["target_measured"].astype(bool)
                       & np.isfinite(summary["target_log2fc"].astype(float))]
    n_all = len(summary)
    if measured.empty:
        return None, (f"None of the {n_all:,} perturbations' target genes is measured (a gene "
                      "of the screen with the perturbation's label as its name), so there is "
                      "no on-target knockdown to show.")
    m = measured.sort_values(["target_log2fc", "perturbation"])
    lfc = m["target_log2fc"].to_numpy(float)
    down = (m["target_padj"].to_numpy(float) < fdr) & (lfc < 0)
    colors = np.where(down, TARGET, NOT_SIGNIFICANT)
    n = len(m)
    title = (f"on-target knockdown: {int(down.sum())} of {n:,} measured targets significantly "
             f"down (padj < {fdr:g})")
    if n <= BAR_LIMIT:
        fig, ax = _figure(11, max(3.0, 0.28 * n + 1.4))
        ax.barh(np.arange(n), lfc, color=colors)
        ax.set_yticks(np.arange(n), m["perturbation"])
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.8)
        for y, (v, p) in enumerate(zip(lfc, m["target_padj"].to_numpy(float), strict=True)):
            ax.text(v, y, f" padj {p:.2g} " if np.isfinite(p) else " padj NA ",
                    va="center", ha="left" if v >= 0 else "right", fontsize=8)
        lo, hi = min(float(np.nanmin(lfc)), 0.0), max(float(np.nanmax(lfc)), 0.0)
        pad = 0.3 * max(hi - lo, 0.5)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel("log2 fold change of the targeted gene (perturbed vs control cells)")
    else:
        fig, (ax, bx) = _figure(15, 6, ncols=2, width_ratios=[1.4, 1])
        ranks = np.arange(1, n + 1)
        ax.scatter(ranks[~down], lfc[~down], c=NOT_SIGNIFICANT, s=6, rasterized=True)
        ax.scatter(ranks[down], lfc[down], c=TARGET, s=6, rasterized=True)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("perturbations with a measured target, ranked by its log2 fold change")
        ax.set_ylabel("log2 fold change of the targeted gene")
        finite = lfc[np.isfinite(lfc)]
        lo, hi = np.percentile(finite, [0.5, 99.5])
        bins = np.linspace(min(lo, -1), max(hi, 1), 60)
        bx.hist([np.clip(lfc[down], bins[0], bins[-1]), np.clip(lfc[~down], bins[0], bins[-1])],
                bins=bins, stacked=True, color=[TARGET, NOT_SIGNIFICANT])
        bx.axvline(0, color="black", lw=0.8)
        bx.set_xlabel("log2 fold change of the targeted gene (outermost 0.5% at the edges)")
        bx.set_ylabel("perturbations (stacked)")
    ax.set_title(title)
    from matplotlib.patches import Patch
    handles = [Patch(color=TARGET, label=f"padj < {fdr:g} and down"),
               Patch(color=NOT_SIGNIFICANT, label="not significantly down")]
    if n <= BAR_LIMIT:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(handles=handles, loc="upper left")
        bx.legend(handles=handles, loc="upper right")
    caption = (f"For each perturbation whose target gene is measured ({n:,} of {n_all:,}): "
               "the log2 fold change of the target itself in the perturbed cells against the "
               f"control cells (summary.csv target_log2fc), blue where it is down with padj < "
               f"{fdr:g}. A knockdown that worked is blue and negative; a grey or positive "
               "bar flags a guide that may not have worked (or a target that is not "
               "expressed enough to tell).")
    return _save(fig, folder, "knockdown.png"), caption


def _perturbation_figure(rows, label: str, target_measured: bool, fdr: float, folder: str,
                         name: str) -> str:
    """Volcano, MA plot and p-value histogram of one perturbation."""
    tested = rows[np.isfinite(rows["pvalue"]) & np.isfinite(rows["log2fc"])]
    lfc = tested["log2fc"].to_numpy(float)
    y = _neg_log10(tested["pvalue"].to_numpy(float))
    sig = tested["padj"].to_numpy(float) < fdr
    limit = max(1.0, min(10.0, float(np.max(np.abs(lfc)))) if len(lfc) else 1.0)
    x = np.clip(lfc, -limit, limit)
    is_target = (tested["gene"] == label).to_numpy() if target_measured else \
        np.zeros(len(tested), bool)
    colors = np.where(sig, SIGNIFICANT, NOT_SIGNIFICANT)
    fig, (va, ma, ph) = _figure(16, 5, ncols=3, width_ratios=[1.2, 1.2, 0.8])

    va.scatter(x, y, c=colors, s=7, linewidths=0, rasterized=True)
    _label_points(va, x, y, tested["gene"].to_numpy(), sig, tested["pvalue"].to_numpy(float))
    va.axvline(0, color="black", lw=0.6)
    va.set_xlim(-limit * 1.08, limit * 1.08)
    va.set_xlabel("log2 fold change (perturbed vs control)"
                  + (f"; beyond ±{limit:g} at the edge" if np.any(np.abs(lfc) > limit) else ""))
    va.set_ylabel("-log10 p-value")
    va.set_title(f"{label}: volcano ({int(sig.sum())} of {len(tested):,} tested genes "
                 f"padj < {fdr:g})")

    base = tested["base_mean"].to_numpy(float)
    ma.scatter(np.maximum(base, 1e-4), x, c=colors, s=7, linewidths=0, rasterized=True)
    ma.axhline(0, color="black", lw=0.6)
    ma.set_xscale("log")
    ma.set_xlabel("base mean (mean normalised count, comparison's cells)")
    ma.set_ylabel("log2 fold change")
    ma.set_ylim(-limit * 1.08, limit * 1.08)
    ma.set_title(f"{label}: MA plot")
    for ax in (va, ma):
        if is_target.any():
            i = int(np.flatnonzero(is_target)[0])
            point = (x[i], y[i]) if ax is va else (max(base[i], 1e-4), x[i])
            ax.scatter(*point, s=60, facecolors="none", edgecolors=TARGET, linewidths=1.5,
                       label=f"target {label}")
            ax.legend(loc="best", fontsize=8)

    _pvalue_histogram(ph, *np.histogram(tested["pvalue"].to_numpy(float), bins=20,
                                        range=(0, 1)))
    ph.set_title(f"{label}: p-values")
    return _save(fig, folder, name)


def _label_points(ax, x, y, names, eligible, pvalues) -> None:
    """Name up to LABELLED_GENES eligible points, smallest p-value first, skipping a point
    whose label would land on one already placed (within 8% of the x range and 4% of the y
    range)."""
    if not eligible.any():
        return
    xr = float(np.ptp(x)) or 1.0
    yr = float(np.ptp(y)) or 1.0
    placed = []
    for i in np.argsort(pvalues, kind="stable"):
        if len(placed) == LABELLED_GENES:
            break
        if not eligible[i] or any(abs(x[i] - px) < 0.08 * xr and abs(y[i] - py) < 0.04 * yr
                                  for px, py in placed):
            continue
        ax.annotate(str(names[i]), (x[i], y[i]), fontsize=8, xytext=(3, 2),
                    textcoords="offset points")
        placed.append((x[i], y[i]))


def _pvalue_histogram(ax, counts, edges) -> None:
    """Density histogram of p-values with the uniform (all-null) level marked."""
    total = counts.sum()
    width = np.diff(edges)
    density = counts / (total * width) if total else counts.astype(float)
    ax.bar(edges[:-1], density, width=width, align="edge", color=TARGET, edgecolor="white",
           linewidth=0.5)
    ax.axhline(1, color="black", ls="--", lw=1, label="uniform (no effect)")
    ax.set_xlim(0, 1)
    ax.set_xlabel("p-value")
    ax.set_ylabel("density")
    ax.legend(loc="upper right", fontsize=8)


def _pooled_figure(rows, fdr: float, folder: str) -> tuple[str, str]:
    """One streamed pass: the p-value histogram of every pair and a random sample of pairs
    for the pooled volcano."""
    edges = np.linspace(0, 1, 51)
    counts = np.zeros(50, np.int64)
    n_pairs = n_tested = 0
    keep = min(1.0, POOLED_POINTS / max(rows.n_rows, 1))
    rng = np.random.default_rng(SAMPLE_SEED)
    sample_lfc, sample_p, sample_sig = [], [], []
    for batch in rows.batches(["log2fc", "pvalue", "padj"]):
        p = batch["pvalue"].astype(float)
        n_pairs += len(p)
        ok = np.isfinite(p)
        n_tested += int(ok.sum())
        counts += np.histogram(p[ok], bins=edges)[0]
        chosen = ok & np.isfinite(batch["log2fc"]) & (rng.random(len(p)) < keep)
        sample_lfc.append(batch["log2fc"][chosen].astype(float))
        sample_p.append(p[chosen])
        sample_sig.append(batch["padj"][chosen].astype(float) < fdr)
    lfc = np.concatenate(sample_lfc) if sample_lfc else np.zeros(0)
    p = np.concatenate(sample_p) if sample_p else np.zeros(0)
    sig = np.concatenate(sample_sig) if sample_sig else np.zeros(0, bool)

    fig, (hx, vx) = _figure(15, 5.5, ncols=2)
    _pvalue_histogram(hx, counts, edges)
    hx.set_title(f"p-values of all {n_tested:,} tested pairs (of {n_pairs:,})")
    limit = max(1.0, float(np.percentile(np.abs(lfc), 99.9))) if len(lfc) else 1.0
    vx.scatter(np.clip(lfc, -limit, limit), _neg_log10(p),
               c=np.where(sig, SIGNIFICANT, NOT_SIGNIFICANT), s=3, linewidths=0, alpha=0.6,
               rasterized=True)
    vx.axvline(0, color="black", lw=0.6)
    vx.set_xlabel(f"log2 fold change (|log2fc| > {limit:.3g}, the largest 0.1%, at the edge)")
    vx.set_ylabel("-log10 p-value")
    shown = "all" if keep == 1 else f"a random {len(lfc):,}"
    vx.set_title(f"volcano of all perturbations: {shown} of the tested pairs")
    caption = (f"Left: the p-values of every tested (perturbation, gene) pair pooled "
               f"({n_tested:,} of {n_pairs:,} pairs have one; untested genes, with no counts "
               f"or flagged by Cook's distance, have none). Under no effect they are uniform "
               f"(dashed line); a spike near 0 is the signal, a bulge near 1 conservative "
               f"tests. Right: log2 fold change and p-value of every perturbation's genes "
               f"together, red where padj < {fdr:g}; "
               + ("every tested pair is drawn." if keep == 1 else
                  f"each pair is drawn with probability {keep:.3g} (POOLED_POINTS = "
                  f"{POOLED_POINTS:,} expected points, fixed seed), so point density is "
                  "proportional to the pairs' density."))
    return _save(fig, folder, "pooled.png"), caption


def _dispersion_figure(rows, summary, params: dict, folder: str) -> tuple[str | None, str]:
    needed = ["gene", "base_mean", "dispersion", "dispersion_gene", "dispersion_trend"]
    if not set(needed) <= rows.columns or summary.empty:
        return None, "The results hold no dispersions (dispersion_gene, dispersion_trend)."
    if params.get("dispersion") == "global":
        label = summary["perturbation"].iloc[0]
        which = ("With --dispersion global every comparison shares each gene's dispersions "
                 f"(estimated from all cells at once); shown from the rows of {label}.")
    else:
        best = summary.sort_values(["cells", "perturbation"], ascending=[False, True])
        label = best["perturbation"].iloc[0]
        which = (f"With --dispersion per-comparison each comparison estimates its own "
                 f"dispersions from the control cells and its perturbed cells, so they differ "
                 f"by comparison (mostly little: the control cells, shared by all, dominate). "
                 f"Shown: one representative comparison, {label}, the one with the most "
                 f"perturbed cells ({int(best['cells'].iloc[0]):,}), whose estimates rest on "
                 f"the most cells. Pooling every comparison's points would draw each gene "
                 f"once per perturbation, weighting genes by nothing meaningful.")
    d = rows.of([label], needed)
    d = d[np.isfinite(d["dispersion_gene"]) & (d["base_mean"] > 0)]
    base = d["base_mean"].to_numpy(float)
    gene = d["dispersion_gene"].to_numpy(float)
    final = d["dispersion"].to_numpy(float)
    trend = d["dispersion_trend"].to_numpy(float)
    positive = np.concatenate([gene[gene > 1e-7], final[final > 0], trend[trend > 0]])
    floor = 10 ** np.floor(np.log10(positive.min())) if len(positive) else 1e-8
    fig, ax = _figure(10, 6.5)
    low = gene < floor
    ax.scatter(base[~low], gene[~low], s=10, color="black", linewidths=0, label="gene-wise",
               rasterized=True)
    if low.any():
        ax.scatter(base[low], np.full(low.sum(), floor), s=18, marker="v", color="black",
                   linewidths=0, label=f"gene-wise below {floor:g} (drawn at it)")
    ax.scatter(base, np.maximum(final, floor), s=10, color=TARGET, linewidths=0,
               label="final (shrunk towards the trend)", rasterized=True)
    order = np.argsort(base)
    ax.plot(base[order], trend[order], color=SIGNIFICANT, lw=2, label="trend")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("base mean (mean normalised count)")
    ax.set_ylabel("dispersion")
    ax.set_title(f"mean-dispersion ({label}, {len(d):,} genes)")
    ax.legend(loc="best")
    caption = ("DESeq2's plotDispEsts: each gene's own (gene-wise) dispersion estimate "
               "(black), the fitted mean-dispersion trend (red) and the final dispersion "
               "used in the test, shrunk from the gene-wise estimate towards the trend "
               "(blue), against the base mean. " + which)
    return _save(fig, folder, "dispersion.png"), caption


def null_comparisons(run_info: dict, labels) -> list[str]:
    """The comparisons the run marks as null (e.g. one non-targeting guide against the other
    control cells), whose p-values should be uniform: run.json's "null_comparisons", a list
    of perturbation labels. Runs made without null comparisons have none, and the report
    shows no null QQ section."""
    present = set(labels)
    return [c for c in run_info.get("null_comparisons", []) or [] if c in present]


def _null_figure(rows, nulls: list[str], folder: str) -> tuple[str, str]:
    """QQ plot of the null comparisons' p-values against the uniform distribution."""
    d = rows.of(nulls, ["pvalue"])
    fig, ax = _figure(8, 7)
    pooled = np.sort(d["pvalue"].to_numpy(float)[np.isfinite(d["pvalue"])])
    for _, part in d.groupby("perturbation", sort=True):
        p = np.sort(part["pvalue"].to_numpy(float)[np.isfinite(part["pvalue"])])
        if len(p):
            expected = (np.arange(1, len(p) + 1) - 0.5) / len(p)
            ax.plot(_neg_log10(expected), _neg_log10(p), lw=0.8, alpha=0.5, color="#888888")
    if len(pooled):
        m = len(pooled)
        expected = (np.arange(1, m + 1) - 0.5) / m
        ax.plot(_neg_log10(expected), _neg_log10(pooled), color=TARGET, lw=2,
                label=f"pooled ({m:,} p-values)")
        # pointwise 95% band of uniform order statistics: Beta(i, m - i + 1)
        from scipy.stats import beta

        i = np.arange(1, m + 1)
        ax.fill_between(_neg_log10(expected), _neg_log10(beta.ppf(0.025, i, m - i + 1)),
                        _neg_log10(beta.ppf(0.975, i, m - i + 1)), color="#dddddd",
                        label="95% band under uniformity", zorder=0)
    top = ax.get_xlim()[1]
    ax.plot([0, top], [0, top], color="black", ls="--", lw=1, label="y = x")
    ax.set_xlabel("expected -log10 p (uniform)")
    ax.set_ylabel("observed -log10 p")
    ax.set_title(f"null comparisons: {len(nulls)} (grey: each; blue: pooled)")
    ax.legend(loc="upper left")
    caption = (f"QQ plot of the p-values of the {len(nulls)} null comparisons (labels with no "
               "true effect, e.g. one non-targeting guide against the rest of the control "
               "cells), against the uniform distribution. A calibrated test follows the "
               "diagonal within the band; a curve above it means too many small p-values "
               "(false discoveries).")
    return _save(fig, folder, "null_qq.png"), caption


# ----------------------------------------------------------------------------- page

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1600px; padding: 1em 2em; color: #222; }
h1 { margin-bottom: 0.2em; }
.facts { color: #555; margin-top: 0; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { max-width: 80em; color: #333; margin-top: 0.4em; line-height: 1.4; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #666; font-style: italic; }
"""


def _img(name: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption[:120])}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _top_table(summary, fdr: float) -> str:
    s = summary.sort_values(["de_genes", "perturbation"], ascending=[False, True]).head(20)
    head = ("<tr><th>perturbation</th><th>cells</th><th>genes tested</th>"
            f"<th>DE genes (padj &lt; {fdr:g})</th><th>target log2fc</th>"
            "<th>target padj</th></tr>")

    def num(v):
        return "" if not np.isfinite(v) else f"{v:.3g}"

    body = "".join(
        f"<tr><td>{html.escape(str(r.perturbation))}</td><td>{r.cells:,}</td>"
        f"<td>{r.genes_tested:,}</td><td>{r.de_genes:,}</td>"
        f"<td>{num(float(r.target_log2fc))}</td><td>{num(float(r.target_padj))}</td></tr>"
        for r in s.itertuples())
    return f"<table>{head}{body}</table>"


def _page(run_info: dict, summary, sections: list[tuple[str, str]], fdr: float) -> str:
    params = run_info.get("parameters", {})
    facts = (f"{len(summary):,} perturbations x {run_info.get('n_genes', '?'):,} genes; "
             f"{int(summary['de_genes'].sum()):,} DE pairs at FDR {fdr:g}; "
             f"control '{params.get('control')}' in '{params.get('groupby')}'; "
             f"test {params.get('test')}, dispersion {params.get('dispersion')}, "
             f"outliers {params.get('outliers')}")
    parts = [f"<h2>{html.escape(title)}</h2>{body}" for title, body in sections]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>perturbglm report</title>"
            f"<style>{_STYLE}</style></head><body>"
            "<h1>perturbglm report</h1>"
            f"<p class=\"facts\">{html.escape(facts)}<br>input: "
            f"{html.escape(str(run_info.get('input', '?')))}</p>"
            f"<h2>Top perturbations</h2>{_top_table(summary, fdr)}"
            + "".join(parts) + "</body></html>\n")


# ----------------------------------------------------------------------------- entry


def write(result, out: str, perturbations=None, overwrite: bool = False) -> list[str]:
    """Write the report of RESULT (a perturbglm.Result) to the folder OUT, atomically (a
    folder beside it, renamed into place); an existing OUT is replaced only with
    overwrite=True and only if perturbglm wrote it. PERTURBATIONS: labels to show besides the
    top TOP by DE genes. Returns the files written."""
    need_matplotlib()
    summary = result.summary
    labels = summary["perturbation"].astype(str).tolist()
    named = list(dict.fromkeys(perturbations or []))
    unknown = [p for p in named if p not in set(labels)]
    if unknown:
        raise InputError(f"--perturbations: {', '.join(unknown[:5])} "
                         f"{'is' if len(unknown) == 1 else 'are'} not among the results' "
                         f"perturbations (e.g. {', '.join(labels[:5])}); name tested "
                         "perturbations")
    if result.folder is not None:
        rows = _ParquetRows(os.path.join(result.folder, "results.parquet"))
    else:
        rows = _FrameRows(result.table)
    params = result.run_info.get("parameters", {})
    fdr = float(params.get("fdr", 0.1))
    ranked = summary.sort_values(["de_genes", "perturbation"], ascending=[False, True])
    shown = list(dict.fromkeys(ranked["perturbation"].astype(str).head(TOP).tolist()
                               + named))
    measured = dict(zip(summary["perturbation"].astype(str),
                        summary["target_measured"].astype(bool), strict=True))
    run = outdir.results_run(result.folder) if result.folder is not None else None

    outdir.check_paths(out)
    with outdir.lock(out), outdir.staged(out, overwrite, run) as tmp:
        sections = []
        name, caption = _de_genes_figure(summary, fdr, tmp)
        sections.append(("DE genes per perturbation", _img(name, caption)))
        name, caption = _knockdown_figure(summary, fdr, tmp)
        sections.append(("On-target knockdown", _img(name, caption) if name else
                         f'<p class="note">{html.escape(caption)}</p>'))
        figures = []
        if shown:
            table = rows.of(shown, ["gene", "base_mean", "log2fc", "pvalue", "padj"])
            groups = dict(tuple(table.groupby("perturbation", sort=False)))
            for k, label in enumerate(shown, start=1):
                fname = f"perturbation_{k:02d}_{_safe_name(label)}.png"
                _perturbation_figure(groups[label], label, measured[label], fdr, tmp, fname)
                why = "named with --perturbations" if label not in \
                    ranked["perturbation"].head(TOP).tolist() else f"top {TOP} by DE genes"
                figures.append(_img(fname, (
                    f"{label} ({why}). Left: volcano, -log10 p-value against log2 fold "
                    f"change, red where padj < {fdr:g}, the smallest p-values named; "
                    "middle: MA plot, log2 fold change against the base mean; the target "
                    "gene circled in blue where measured. Right: the perturbation's "
                    "p-value histogram (dashed: uniform, no effect). Genes without a "
                    "p-value (no counts, or a Cook's outlier) are not drawn.")))
        sections.append(("Volcano and MA plots of the top perturbations", "".join(figures)))
        name, caption = _dispersion_figure(rows, summary, params, tmp)
        sections.append(("Mean-dispersion", _img(name, caption) if name else
                         f'<p class="note">{html.escape(caption)}</p>'))
        name, caption = _pooled_figure(rows, fdr, tmp)
        sections.append(("All perturbations pooled: p-values and volcano", _img(name, caption)))
        nulls = null_comparisons(result.run_info, labels)
        if nulls:
            name, caption = _null_figure(rows, nulls, tmp)
            sections.append(("Null comparisons: QQ plot", _img(name, caption)))
        with open(os.path.join(tmp, "index.html"), "w", encoding="utf-8") as fh:
            fh.write(_page(result.run_info, summary, sections, fdr))
        written = sorted(os.listdir(tmp))
    return written
