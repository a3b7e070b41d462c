"""perturbglm report: the files it writes on the real screen's results, its refusals (no
matplotlib, not a results folder, an existing folder, unknown perturbations: nothing
written), the null-comparison hook, the pooled figures' streamed counts, and the page in a
headless browser where one is installed."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

import perturbglm
from perturbglm import cli, report
from perturbglm.io import outdir

pytest.importorskip("matplotlib")

TOP6 = ["IFNGR2", "JAK2", "IFNGR1", "STAT1", "SMAD4", "IRF1"]   # most DE genes, real screen


@pytest.fixture(scope="module")
def results(screen, tmp_path_factory):
    """One `perturbglm de` run on the real screen; tests copy it before changing it."""
    out = tmp_path_factory.mktemp("report") / "res"
    perturbglm.de(screen, groupby="gene", control="non-targeting", out=str(out))
    return str(out)


@pytest.fixture(scope="module")
def reported(results, tmp_path_factory):
    """The results with the default report, made by the command line, CD86 named."""
    folder = str(tmp_path_factory.mktemp("reported") / "res")
    shutil.copytree(results, folder)
    assert cli.main(["report", folder, "--perturbations", "CD86,STAT1"]) == 0
    return folder


def _listing(folder):
    return sorted(os.listdir(folder))


def _png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_report_files(reported):
    """The real screen's top 6 by DE genes (summary.csv), then CD86 (named; STAT1, named
    too, is already among them), and the screen-wide figures; no null QQ plot (the run has
    no null comparisons)."""
    folder = os.path.join(reported, "report")
    summary = perturbglm.Result.read(reported).summary
    top = summary.sort_values(["de_genes", "perturbation"], ascending=[False, True])
    assert top["perturbation"].head(6).tolist() == TOP6
    pages = [f"perturbation_{k:02d}_{p}.png" for k, p in enumerate(TOP6 + ["CD86"], 1)]
    assert _listing(folder) == sorted([outdir.MARKER, "index.html", "de_genes.png",
                                       "knockdown.png", "dispersion.png", "pooled.png",
                                       *pages])
    for name in _listing(folder):
        if name.endswith(".png"):
            width, height = _png_size(os.path.join(folder, name))
            assert width >= 800 and height >= 300, (name, width, height)
    page = open(os.path.join(folder, "index.html"), encoding="utf-8").read()
    sources = re.findall(r'src="([^"]+)"', page)
    assert sorted(sources) == sorted(n for n in _listing(folder) if n.endswith(".png"))
    assert "://" not in page and "href=" not in page
    assert "null_qq" not in page and "Null comparisons" not in page
    # the report names the run it was made from
    with open(os.path.join(folder, outdir.MARKER)) as fh:
        assert json.load(fh)["run"] == outdir.results_run(reported)


def test_results_folder_with_report_still_replaceable(reported):
    """`de --overwrite` on a results folder holding its own report replaces it; a report
    folder holding a file perturbglm did not write makes the folder foreign again."""
    outdir.check_destination(reported, overwrite=True)
    extra = os.path.join(reported, "report", "notes.txt")
    open(extra, "w").close()
    try:
        with pytest.raises(perturbglm.InputError, match="report"):
            outdir.check_destination(reported, overwrite=True)
    finally:
        os.unlink(extra)


def test_existing_report_needs_overwrite(reported, capsys):
    folder = os.path.join(reported, "report")
    before = os.stat(os.path.join(folder, "index.html")).st_mtime_ns
    assert cli.main(["report", reported]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert os.stat(os.path.join(folder, "index.html")).st_mtime_ns == before
    foreign = os.path.join(reported, "mine")
    os.mkdir(foreign)
    open(os.path.join(foreign, "keep.txt"), "w").close()
    try:
        assert cli.main(["report", reported, "--out", foreign, "--overwrite"]) == 2
        assert "not a perturbglm results folder" in capsys.readouterr().err
        assert _listing(foreign) == ["keep.txt"]
    finally:
        shutil.rmtree(foreign)


def test_overwrite_and_summary_figures(results, tmp_path, monkeypatch):
    """--overwrite replaces a report; with more perturbations than BAR_LIMIT the DE-genes
    and knockdown figures switch to their summaries (made here by lowering the limit);
    the pooled p-value histogram, streamed in many small batches, counts every tested
    pair of the file."""
    out = str(tmp_path / "rep")
    monkeypatch.setattr(report, "TOP", 1)          # fewer figures: a faster test
    monkeypatch.setattr(report, "BAR_LIMIT", 3)
    monkeypatch.setattr(report, "BATCH_ROWS", 1000)
    res = perturbglm.Result.read(results)
    assert res.report(out) == out
    assert res.report(out, overwrite=True) == out
    page = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    assert "Left: every perturbation, ranked by its DE genes" in page
    p = pq.read_table(os.path.join(results, "results.parquet"), columns=["pvalue"])
    p = p.column("pvalue").to_numpy()
    assert f"({int(np.isfinite(p).sum()):,} of {len(p):,} pairs have one" in page
    assert "every tested pair is drawn" in page        # 7,475 pairs < POOLED_POINTS


def test_refuses_without_matplotlib(results, monkeypatch, capsys):
    """matplotlib made unimportable: one line naming the extra, nothing written."""
    before = _listing(results)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["report", results]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("perturbglm: error: the report needs matplotlib, which is not "
                   "installed: pip install 'perturbglm[plot]'")
    assert _listing(results) == before
    with pytest.raises(perturbglm.InputError, match=r"perturbglm\[plot\]"):
        perturbglm.Result.read(results).report()
    assert _listing(results) == before


@pytest.mark.parametrize("case", ["missing", "empty", "no-run-record", "file"])
def test_refuses_non_results_folder(tmp_path, capsys, case):
    folder = tmp_path / "x"
    if case == "empty":
        folder.mkdir()
    elif case == "no-run-record":
        folder.mkdir()
        for name in outdir.RESULT_FILES:
            (folder / name).write_text("{}")
    elif case == "file":
        folder.write_text("")
    before = _listing(tmp_path)
    inside = _listing(folder) if folder.is_dir() else None
    assert cli.main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "perturbglm de" in err, err
    assert _listing(tmp_path) == before
    if inside is not None:
        assert _listing(folder) == inside


def test_refuses_unknown_perturbation(results, capsys):
    before = _listing(results)
    assert cli.main(["report", results, "--perturbations", "STAT1,NOPE"]) == 2
    assert "NOPE is not among the results' perturbations" in capsys.readouterr().err
    assert _listing(results) == before


def test_in_memory_result(results, tmp_path, monkeypatch):
    """A result without a folder reports from its table; it needs out=."""
    monkeypatch.setattr(report, "TOP", 1)
    res = perturbglm.Result.read(results, in_memory=True)
    with pytest.raises(perturbglm.InputError, match="pass out="):
        res.report()
    out = str(tmp_path / "mem")
    res.report(out, perturbations=["CD86"])
    assert {"perturbation_01_IFNGR2.png", "perturbation_02_CD86.png"} < set(os.listdir(out))


def test_null_comparisons_section(results, tmp_path, monkeypatch):
    """The null-comparison hook: a run.json naming null comparisons gets the QQ plot and
    its section; labels it names that are not in the results are ignored."""
    monkeypatch.setattr(report, "TOP", 1)
    folder = str(tmp_path / "res")
    shutil.copytree(results, folder)
    path = os.path.join(folder, "run.json")
    with open(path) as fh:
        info = json.load(fh)
    info["null_comparisons"] = ["ATF2", "CAV1", "not-a-label"]
    with open(path, "w") as fh:
        json.dump(info, fh)
    perturbglm.Result.read(folder).report()
    assert "null_qq.png" in os.listdir(os.path.join(folder, "report"))
    page = open(os.path.join(folder, "report", "index.html"), encoding="utf-8").read()
    assert "Null comparisons: QQ plot" in page and "the 2 null comparisons" in page


_BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium")
_CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);
  const base = location.href.slice(0, location.href.lastIndexOf("/") + 1);
  const fetched = performance.getEntriesByType("resource").map(e => e.name);
  const outside = fetched.filter(u => !u.startsWith(base));
  const out = document.createElement("pre");
  out.id = "check";
  out.textContent = JSON.stringify({images: imgs.length, bad: bad, fetched: fetched.length,
                                   outside: outside});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(_BROWSER is None, reason="no headless Chromium installed "
                    "(Debian: apt-get install chromium-headless-shell)")
def test_page_in_browser(reported, tmp_path):
    """The page in headless Chromium, served from the report folder by a local HTTP server
    (file:// loads leave no resource timings): every image loads, the page fetched
    exactly its images, all from the folder (the browser's resource timings and the
    server's log agree). A copy of the folder gets a page with a checking script appended
    (the report itself has no script)."""
    import http.server
    import threading
    from functools import partial

    folder = str(tmp_path / "copy")
    shutil.copytree(os.path.join(reported, "report"), folder)
    page = open(os.path.join(folder, "index.html"), encoding="utf-8").read()
    with open(os.path.join(folder, "check.html"), "w", encoding="utf-8") as fh:
        fh.write(page.replace("</body>", _CHECK + "</body>"))
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             partial(Handler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/check.html"
        dom = subprocess.run(
            [_BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
             "--virtual-time-budget=10000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120).stdout
    finally:
        server.shutdown()
        server.server_close()
    found = re.search(r'<pre id="check">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    check = json.loads(found.group(1))
    pngs = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
    assert check == {"images": len(pngs), "bad": [], "fetched": len(pngs), "outside": []}
    # the browser may ask for the site's icon on its own; nothing else is allowed
    assert sorted(set(requested) - {"/check.html", "/favicon.ico"}) == ["/" + n for n in pngs]


def test_reads_by_row_group(results, tmp_path):
    """The report's reader on a file of many row groups (3 perturbations each): a
    perturbation's rows are exactly the table's, row groups outside its range skipped; the
    streamed batches cover every row once."""
    table = pq.read_table(os.path.join(results, "results.parquet"))
    path = str(tmp_path / "groups.parquet")
    pq.write_table(table, path, row_group_size=3 * 299)
    rows = report._ParquetRows(path)
    assert rows.file.metadata.num_row_groups == 9
    full = table.to_pandas()
    for labels in (["STAT1"], ["CD86", "STAT1", "ATF2"], ["STAT5A", "UBE2L6"]):
        got = rows.of(labels, ["gene", "pvalue"])
        want = full.loc[full["perturbation"].isin(labels), ["perturbation", "gene", "pvalue"]]
        assert got.equals(want.reset_index(drop=True)), labels
    assert rows.of(["nothing"], ["gene"]).empty
    seen = np.concatenate([b["pvalue"] for b in rows.batches(["pvalue"])])
    np.testing.assert_array_equal(seen, full["pvalue"].to_numpy())
