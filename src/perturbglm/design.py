"""The comparison design: which cells form which group, covariates, and their validation."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import InputError
from .io.reader import is_numeric, levels


@dataclass
class Design:
    labels: list[str]              # group labels; index = group code
    control: int                   # code of the control group
    cell_group: np.ndarray         # per cell: group code, or -1 when the cell is not analysed
    covariates: np.ndarray         # cells x q, categorical one-hot (first level dropped) + numeric
    covariate_names: list[str]
    categorical_only: bool         # strata are finite when every covariate is categorical
    skipped: dict[str, int] = field(default_factory=dict)   # groups below --min-cells
    dropped_cells: int = 0         # cells with no group label
    sources: dict = field(default_factory=dict)   # covariate name -> its obs column
    contrasts: list[tuple[str, str]] = field(default_factory=list)   # (A, B) labels, as given

    @property
    def n_groups(self) -> int:
        return len(self.labels)

    @property
    def perturbations(self) -> list[int]:
        return [k for k in range(self.n_groups) if k != self.control]

    def code(self, label: str) -> int:
        """The group code of a perturbation label."""
        return self.labels.index(label)

    def with_reference(self, label: str) -> Design:
        """The design with perturbation `label` as the reference group in the control's
        place (a contrast's B: the kernels take the reference as `control`); the covariate
        columns are unchanged (on_analysed_cells checked them against its cells)."""
        return replace(self, control=self.code(label))

    def without(self, drop) -> Design:
        """The design with the perturbation groups `drop` removed (their cells unanalysed)."""
        keep = [k for k in range(self.n_groups) if k not in set(drop)]
        remap = np.full(self.n_groups + 1, -1, dtype=np.int64)   # remap[-1] stays -1
        remap[keep] = np.arange(len(keep))
        return replace(self, labels=[self.labels[k] for k in keep],
                       control=int(remap[self.control]), cell_group=remap[self.cell_group])

    def on_analysed_cells(self) -> Design:
        """The design with its covariates checked and built on the cells `cell_group`
        analyses now. `build` calls it on the labelled cells, to refuse a bad covariate
        before the read pass; the pipeline again once the cells without counts are dropped,
        so that the data are accepted or refused, and fitted, as the same data without
        those cells: a level whose only control cells have no counts is refused, a level
        with no analysed cells gets no column, and numeric covariates are standardised over
        the analysed cells. (The early call also refuses a missing value, or a level without
        control cells, in cells that turn out to have no counts.)"""
        z, names, categorical_only = _covariates(self.sources, self.cell_group, self.control)
        for a, b in self.contrasts:
            lost = [x for x in (a, b) if x not in self.labels]
            if lost:
                raise InputError(f"--contrast '{a}{CONTRAST_SEPARATOR}{b}': no cell of "
                                 f"'{lost[0]}' has counts; drop this contrast")
        if self.sources:
            # a contrast's reference stands in the control's place: the same conditions
            for b in dict.fromkeys(b for _, b in self.contrasts):
                _covariates(self.sources, self.cell_group, self.code(b),
                            f"'{b}' (a --contrast reference)")
        return replace(self, covariates=z, covariate_names=names,
                       categorical_only=categorical_only)


POOL_SEPARATOR = "+"    # joins the labels of a pooled control into its group's name
CONTRAST_SEPARATOR = ":"   # A:B on the command line
CONTRAST_JOIN = " vs "     # a contrast's name in the table: "A vs B"


def control_labels(control) -> list[str]:
    """The control labels `--control` / `control=` names: a label, several separated by
    commas ("NTg1,NTg2", as the command line gives them), or a list or tuple of labels (a
    label holding a comma can only be given so). Empty items (a trailing comma) are
    ignored and a label given twice counts once; the order given is kept."""
    if isinstance(control, str):
        items = control.split(",")
    elif isinstance(control, (list, tuple)) and all(isinstance(c, str) for c in control):
        items = list(control)
    else:
        raise InputError(f"--control / control={control!r}: give a label, labels separated "
                         "by commas, or a list of labels")
    labels = list(dict.fromkeys(c for c in items if c))
    if not labels:
        raise InputError(f"--control / control={control!r}: give at least one label")
    return labels


def control_name(labels: list[str]) -> str:
    """The name of the control group (`Design.labels[0]`): its label, or for several the
    labels joined by '+' in the order given ("NTg1+NTg2"). The control is no comparison, so
    the name appears in messages and the command line's summary, not in the table."""
    return POOL_SEPARATOR.join(labels)


def contrast_pairs(contrasts) -> list[tuple[str, str]]:
    """The contrasts `--contrast A:B` / `contrasts=` names, as (A, B) label pairs: each an
    "A:B" string (as the command line gives them; neither label may hold ':') or, from
    Python, a pair of labels (which may). Refuses a malformed item, A == B, and a contrast
    given twice."""
    if isinstance(contrasts, (str, bytes)) or not isinstance(contrasts, (list, tuple)):
        raise InputError(f"--contrast / contrasts={contrasts!r}: give a list of 'A:B' strings "
                         "or (A, B) pairs")
    pairs = []
    for item in contrasts:
        if isinstance(item, str):
            parts = item.split(CONTRAST_SEPARATOR)
        elif isinstance(item, (list, tuple)) and all(isinstance(x, str) for x in item):
            parts = list(item)
        else:
            parts = []
        if len(parts) != 2 or not all(parts):
            raise InputError(f"--contrast / contrasts: {item!r} is not A:B (two labels, the "
                             "perturbation and its reference, separated by one ':'; a label "
                             "holding ':' can be given from Python as a pair (A, B))")
        a, b = parts
        if a == b:
            raise InputError(f"--contrast '{a}{CONTRAST_SEPARATOR}{b}' compares '{a}' with "
                             "itself; give two different labels")
        if (a, b) in pairs:
            raise InputError(f"--contrast '{a}{CONTRAST_SEPARATOR}{b}' is given twice; give "
                             "each contrast once")
        pairs.append((a, b))
    return pairs


def contrast_name(a: str, b: str) -> str:
    """A contrast's name in the table's perturbation column and the summary: "A vs B"."""
    return f"{a}{CONTRAST_JOIN}{b}"


def build(obs: dict, columns: list[str], groupby: str, control: list[str],
          covariates: list[str], min_cells: int,
          contrasts: list[tuple[str, str]] = ()) -> Design:
    """obs holds the columns the design uses (reader.read_obs); `columns` names every obs
    column of the file. Groups are the labels as text. The cells of every label in `control`
    (control_labels) are pooled into one control group, code 0, as if the column gave them
    one label: DESeq2 run on a condition factor whose control level merges those labels."""
    listing = ", ".join(columns)
    if groupby not in obs:
        raise InputError(f"--groupby '{groupby}' is not an obs column; obs columns are: "
                         f"{listing}")
    codes, categories = levels(obs[groupby])
    present = codes >= 0
    text = np.array([str(c) for c in categories], dtype=object)
    uniq, text_index = np.unique(text, return_inverse=True) if text.size else (text, text)
    label_index = np.asarray(text_index, dtype=np.int64).ravel()[codes[present]]
    counts = np.bincount(label_index, minlength=uniq.size)
    uniq, counts = uniq[counts > 0], counts[counts > 0]
    if uniq.size == 0:
        raise InputError(f"--groupby '{groupby}' has no labelled cells")
    uniq = [str(u) for u in uniq]
    unknown = [c for c in control if c not in uniq]
    if unknown:
        raise InputError("; ".join(_unknown_control(c, uniq, groupby) for c in unknown))
    name = control_name(control)
    if set(uniq) <= set(control):
        only = "one label only" if len(uniq) == 1 else "control labels only"
        raise InputError(f"'{groupby}' has {only} ('{name}'); a screen needs control cells "
                         "and at least one perturbation")
    n_by = dict(zip(uniq, counts, strict=True))
    n_control = sum(int(n_by[c]) for c in control)
    if n_control < 2:
        raise InputError(f"control '{name}' has {n_control} cell; at least 2 control "
                         "cells are needed to estimate dispersions")
    if n_control < min_cells:
        raise InputError(f"control '{name}' has {n_control} cells, fewer than "
                         f"--min-cells {min_cells}; lower --min-cells or pick another control")
    others = [u for u in uniq if u not in control]
    skipped = {u: int(n_by[u]) for u in others if n_by[u] < min_cells}
    kept = [name] + [u for u in others if u not in skipped]
    if len(kept) == 1:
        raise InputError(f"every perturbation has fewer than --min-cells {min_cells} cells; "
                         "lower --min-cells")
    position = {u: i for i, u in enumerate(kept[1:], start=1)} | dict.fromkeys(control, 0)
    to_kept = np.array([position.get(str(t), -1) for t in text] or [-1], dtype=np.int64)
    code = np.full(codes.shape[0], -1, dtype=np.int64)
    code[present] = to_kept[codes[present]]
    for cov in covariates:
        if cov not in obs:
            raise InputError(f"--covariates '{cov}' is not an obs column; obs columns are: "
                             f"{listing}")
        if cov == groupby:
            raise InputError(f"--covariates '{cov}' is the --groupby column itself; a "
                             "covariate confounded with the perturbation cannot be adjusted for")
    _check_contrasts(contrasts, uniq, control, skipped, groupby, min_cells)
    return Design(kept, 0, code, np.zeros((code.size, 0)), [], True, skipped,
                  int((~present).sum()), {cov: obs[cov] for cov in covariates},
                  list(contrasts)).on_analysed_cells()


def _check_contrasts(contrasts, uniq: list[str], control: list[str], skipped: dict,
                     groupby: str, min_cells: int) -> None:
    """Refuse a contrast (A, B) whose label is not one of `groupby`'s (with the closest
    labels), is a control label (A against the control is A's own row of the table), has
    fewer than --min-cells cells, or whose name "A vs B" is a label itself (the table could
    not tell the two apart)."""
    for a, b in contrasts:
        given = f"--contrast '{a}{CONTRAST_SEPARATOR}{b}'"
        for label in (a, b):
            if label not in uniq:
                close = difflib.get_close_matches(label, uniq, n=3, cutoff=0.4)
                hint = (f"; did you mean {', '.join(repr(c) for c in close)}?" if close else
                        f"; labels include {', '.join(repr(u) for u in uniq[:5])}")
                raise InputError(f"{given}: '{label}' is not a label of '{groupby}'{hint}")
            if label in control:
                raise InputError(
                    f"{given}: '{label}' is the control; every perturbation is compared "
                    "with the control already (its own rows, log2fc = log2(perturbation / "
                    "control)); a contrast compares two perturbations")
            if label in skipped:
                raise InputError(f"{given}: '{label}' has {skipped[label]} cells, fewer than "
                                 f"--min-cells {min_cells}; lower --min-cells or drop the "
                                 "contrast")
        if contrast_name(a, b) in uniq:
            raise InputError(f"{given}: its name in the table, '{contrast_name(a, b)}', is a "
                             f"label of '{groupby}' too; rename that label")


def _unknown_control(label: str, uniq: list[str], groupby: str) -> str:
    """The refusal of a --control label that `groupby` lacks, with its closest labels."""
    close = difflib.get_close_matches(label, uniq, n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else (
        f"; labels include {', '.join(repr(u) for u in uniq[:5])}")
    return f"--control '{label}' is not a label of '{groupby}'{hint}"


def _covariates(sources: dict, cell_group: np.ndarray, control: int, whose: str = "control"):
    """The covariate matrix of `Design.on_analysed_cells` (cells x columns; only the
    analysed cells' rows are used), its column names and whether every covariate is
    categorical; refuses covariates the analysed cells cannot estimate. A numeric covariate
    enters as (x - mean) / sd over the analysed cells: the model is the same for any affine
    change of x, and standardised so is its fit, whose start (coefficients 0), step cap,
    coefficient bounds, ridge, convergence tolerance and collinearity check are on the
    coefficients' scale (in x's own units they made the results depend on x's units and
    origin, and a large offset look collinear). `whose` names group `control` in the
    refusals (a contrast's reference is checked as the control is)."""
    blocks, names = [], []
    categorical_only = True
    analysed = cell_group >= 0
    control_cells = cell_group == control
    for cov, col in sources.items():
        if is_numeric(col):
            vals = col.astype(np.float64)[analysed]
            if not np.all(np.isfinite(vals)):
                raise InputError(f"--covariates '{cov}' has missing or infinite values")
            mean = vals.mean()
            sd = np.sqrt(np.mean((vals - mean) ** 2))
            if not sd > 0:
                raise _one_value(cov)
            z = np.zeros(cell_group.size)
            z[analysed] = (vals - mean) / sd
            blocks.append(z[:, None])
            names.append(cov)
            categorical_only = False
            continue
        codes, categories = levels(col)
        if (codes[analysed] < 0).any():
            raise InputError(f"--covariates '{cov}' has missing values")
        levels_all = list(categories)
        used = np.unique(codes[analysed])
        levels_used = [levels_all[i] for i in used]
        in_control = set(np.unique(codes[control_cells]))
        missing = [levels_all[i] for i in used if i not in in_control]
        if missing:
            raise InputError(f"--covariates '{cov}': level(s) {missing} have no {whose} cells, "
                             "so their effect is confounded with the perturbations there; drop "
                             "those cells or the covariate")
        for lev_i in used[1:]:
            blocks.append((codes == lev_i).astype(np.float64)[:, None])
            names.append(f"{cov}[{levels_all[lev_i]}]")
        if len(levels_used) < 2:
            raise _one_value(cov)
    if not blocks:
        return np.zeros((len(cell_group), 0)), names, True
    z = np.hstack(blocks)
    zc = np.hstack([np.ones((control_cells.sum(), 1)), z[control_cells]])
    if np.linalg.matrix_rank(zc) < zc.shape[1]:
        raise InputError(f"--covariates {', '.join(sources)} are confounded with each other "
                         f"in the {whose} cells (collinear); drop one")
    return z, names, categorical_only


def _one_value(cov: str) -> InputError:
    return InputError(f"--covariates '{cov}' takes one value only in the analysed cells; it "
                      "cannot be estimated, drop it")
