"""The report page (groundtruth.report) in a real browser: every row rendered, every drawing decoded, every
link to a file that is there, the columns sort; and every bad input refused before anything is written.

The tables come from the real tools (``groundtruth compare`` and ``groundtruth recover`` with drawings),
not from hand-written JSON, so a change in what they record shows here. The browser is Debian's
Chromium driven by Playwright (its own browser downloads need a network): ``apt-get install -y
chromium``, or ``CHROMIUM=path``. Without it the test fails rather than skips, so that CI cannot pass
without having looked at the page.
"""

import json
import re
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from groundtruth.report import CHROMIUM_ARGS, chromium, write_report

_PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def browser():
    try:
        path, missing = chromium(), None
    except FileNotFoundError as err:
        path, missing = None, str(err)
    if missing:  # failed outside the except block, so that the report is this one line and not a chain
        pytest.fail(f"{missing} (the report test renders the page in headless Chromium)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=list(CHROMIUM_ARGS))
        yield b
        b.close()


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    """compare.json of two methods on two programs, with drawings: the real tool's files."""
    from groundtruth.compare import compare

    tmp = tmp_path_factory.mktemp("report")
    compare(["eap", "acdc"], "zero", programs=["reverse", "sort"], out_dir=tmp / "cmp", draw=tmp / "cmp" / "drawings",
            quiet=True)
    return tmp / "cmp" / "compare.json"


class _Page:
    """A report opened in the browser, with every console error, page error and failed request kept."""

    def __init__(self, browser, html: Path):
        self.page = browser.new_page()
        self.problems: list[str] = []

        def console(message):
            if message.type == "error":
                self.problems.append(f"console: {message.text}")

        self.page.on("console", console)
        self.page.on("pageerror", lambda err: self.problems.append(f"page error: {err}"))
        self.page.on("requestfailed", lambda req: self.problems.append(f"request failed: {req.url} ({req.failure})"))
        self.page.goto(html.resolve().as_uri(), wait_until="load")

    def column(self, header: str) -> list[str]:
        """Every body cell of a column, in the DOM's order."""
        return self.page.evaluate("""header => {
            const heads = Array.from(document.querySelectorAll("#report thead th"), th => th.dataset.col);
            const i = heads.indexOf(header);
            if (i < 0) throw new Error("no column " + header + " among " + heads);
            return Array.from(document.querySelectorAll("#report tbody tr"), tr => tr.cells[i].textContent.trim());
        }""", header)

    def sort_keys(self, header: str) -> list[str | None]:
        return self.page.evaluate("""header => {
            const heads = Array.from(document.querySelectorAll("#report thead th"), th => th.dataset.col);
            const i = heads.indexOf(header);
            return Array.from(document.querySelectorAll("#report tbody tr"), tr => tr.cells[i].getAttribute("data-s"));
        }""", header)

    def check_rendered(self, rows: list[dict], names: tuple[str, str]):
        """Every row a <tr> showing its names, every image decoded, every link to a file that is there."""
        assert self.page.locator("#report tbody tr").count() == len(rows)
        shown = sorted(zip(*(self.column(n) for n in names)))
        assert shown == sorted((str(r[names[0]]), str(r[names[1]])) for r in rows)
        images = self.page.evaluate("""() => Promise.all(Array.from(document.images, img =>
            img.decode().catch(() => null).then(() => [img.currentSrc, img.complete, img.naturalWidth,
                                                       img.loading, img.closest("a").href])))""")
        assert len(images) == len(rows)
        for src, complete, width, loading, link in images:
            assert complete and width > 0, src
            assert loading != "lazy", src
            assert link.endswith(".svg") and _file(link).is_file(), link
        links = self.page.evaluate("() => Array.from(document.querySelectorAll('a.circuit'), a => a.href)")
        assert len(links) == len(rows)
        for link in links:
            assert _file(link).is_file(), link
            json.loads(_file(link).read_text())  # a circuit JSON, whole
        assert self.problems == []


def _file(url: str) -> Path:
    parsed = urllib.parse.urlparse(url)
    assert parsed.scheme == "file", url
    return Path(urllib.request.url2pathname(parsed.path))


def test_a_comparison_renders_every_row_and_drawing_and_sorts(browser, compared, tmp_path):
    rows = json.loads(compared.read_text())["rows"]
    # Written away from the table, so that its links have to climb back to the table's files.
    html = write_report(compared, tmp_path / "pages" / "compare.html", title="reverse & sort <zero>")
    view = _Page(browser, html)
    assert view.page.title() == "reverse & sort <zero>"
    view.check_rendered(rows, ("program", "method"))
    assert f"exact after the shared finalizer: {sum(r['exact'] for r in rows)}/{len(rows)} rows" in (
        view.page.inner_text("p.header"))
    assert "groundtruth report" in view.page.inner_text("footer")

    seconds = [r["seconds"] for r in rows]
    header = view.page.locator('#report th[data-col="seconds"]')
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    assert [float(s) for s in view.sort_keys("seconds")] == sorted(seconds)
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    assert [float(s) for s in view.sort_keys("seconds")] == sorted(seconds, reverse=True)
    # A text column sorts as text; the order of the other columns follows the rows.
    view.page.locator('#report th[data-col="method"]').click()
    assert view.column("method") == sorted(r["method"] for r in rows)
    assert sorted(zip(view.column("program"), view.column("method"))) == sorted(
        (r["program"], r["method"]) for r in rows)

    shot = tmp_path / "report.png"
    view.page.screenshot(path=shot, full_page=True)
    assert shot.read_bytes()[:8] == _PNG and shot.stat().st_size > 10_000
    assert view.problems == []
    view.page.close()


def test_empty_cells_sort_last_both_ways(browser, compared, tmp_path):
    table = json.loads(compared.read_text())
    table["rows"][0]["seconds"] = None
    edited = compared.parent / "with-an-empty-cell.json"  # beside the table: its files are relative to it
    edited.write_text(json.dumps(table))
    view = _Page(browser, write_report(edited, tmp_path / "report.html"))
    header = view.page.locator('#report th[data-col="seconds"]')
    rest = [r["seconds"] for r in table["rows"][1:]]
    header.click()
    assert view.column("seconds")[-1] == "-" and [float(s) for s in view.sort_keys("seconds")[:-1]] == sorted(rest)
    header.click()
    assert view.column("seconds")[-1] == "-" and [float(s) for s in view.sort_keys("seconds")[:-1]] == sorted(
        rest, reverse=True)
    assert view.problems == []
    view.page.close()


def test_a_recovery_report_renders(browser, tmp_path):
    from groundtruth.cli import main

    drawings, table = tmp_path / "rec" / "drawings", tmp_path / "rec" / "recovery.json"
    assert main(["recover", "reverse", "--ablations", "zero", "--draw", str(drawings), "--report", str(table),
                 "--quiet"]) in (0, 1)
    results = json.loads(table.read_text())["results"]
    html = write_report(table)
    assert html == table.parent / "report.html"
    view = _Page(browser, html)
    view.check_rendered(results, ("program", "ablation"))
    assert view.column("gt edges") == [str(len(r["ground_truth"])) for r in results]
    assert view.column("exact") == ["yes" if r["exact"] else "NO" for r in results]
    view.page.close()


def _tree(folder: Path) -> list:
    """Every file under ``folder`` with its size and time (a folder's own time changes when a file is renamed)."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*") if p.is_file())


def test_bad_inputs_are_refused_before_anything_is_written(compared, tmp_path):
    shutil.copytree(compared.parent, tmp_path / "cmp")
    good = tmp_path / "cmp" / "compare.json"
    table = json.loads(good.read_text())
    row = table["rows"][1]
    name = re.escape(f"row 2 ({row['program']}, {row['method']})")

    def variant(file: str, edit) -> Path:
        obj = json.loads(good.read_text())
        edit(obj)
        path = good.parent / file
        path.write_text(json.dumps(obj))
        return path

    not_json = good.parent / "broken.json"
    not_json.write_text('{"rows": [')
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "elsewhere.json").write_text(json.dumps(table))  # its files are relative to the table's folder
    (tmp_path / "cmp" / "gone").mkdir()
    recovery = good.parent / "recovery.json"
    recovery.write_text(json.dumps({"pruner": "prune.edge_pruning:edge_pruning", "results": []}))
    (good.parent / "drawings" / "fake.png").write_text("not a picture")
    (good.parent / "drawings" / "fake.svg").write_text("<svg/>")
    cases = [
        (tmp_path / "nothing.json", None, "table .*nothing.json does not exist; give the compare.json"),
        (good.parent, None, "is a folder; give the table JSON file in it, e.g. .*compare.json"),
        (not_json, None, "broken.json is not valid JSON"),
        (variant("keys.json", lambda o: o.clear()), None, "neither 'rows' nor 'results'"),
        (recovery, None, "has no results: nothing to report"),
        (variant("empty.json", lambda o: o.update(rows=[])), None, "has no rows: nothing to report"),
        (variant("old.json", lambda o: o["rows"][1].pop("files")), None,
         f"{name} has no files: the table was written without drawings; rerun `groundtruth compare --draw DIR` "
         r"\(or `groundtruth recover --draw DIR --report FILE`\)"),
        (variant("undrawn.json", lambda o: o["rows"][1]["files"].pop("drawing")), None,
         f"{name} has no drawing: the table was written without drawings"),
        (variant("c.json", lambda o: o["rows"][1]["files"].update(circuit="circuits/gone.json")), None,
         rf"{name} links to the circuit JSON .*circuits/gone.json, which does not exist"),
        (variant("p.json", lambda o: o["rows"][1]["files"].update(drawing="gone/x.png")), None,
         rf"{name} links to the drawing .*gone/x.png, which does not exist"),
        (variant("f.json", lambda o: o["rows"][1]["files"].update(drawing="drawings/fake.png")), None,
         rf"{name} links to the drawing .*fake.png, which is not a PNG"),
        (moved / "elsewhere.json", None, r"row 1 \(.*\) links to the circuit JSON .*moved/circuits/"),
        (good, tmp_path / "cmp", "--out .*cmp is a folder; give a file name"),
        (good, good, "is the table itself"),
        (good, good / "sub" / "r.html", "its folder .*compare.json/sub: .*compare.json is a file, not a folder"),
    ]
    svg = (good.parent / row["files"]["drawing"]).with_suffix(".svg")
    before = _tree(tmp_path)
    for path, out, message in cases:
        with pytest.raises(ValueError, match=message):
            write_report(path, out)
    svg.rename(svg.with_suffix(".svg.away"))
    with pytest.raises(ValueError, match=rf"{name} links to the drawing's SVG .*{svg.name}, which does not exist"):
        write_report(good)
    svg.with_suffix(".svg.away").rename(svg)
    assert _tree(tmp_path) == before  # nothing written, nothing changed
    assert write_report(good).read_text().count("<tr>") == len(table["rows"]) + 1  # the good table still writes
