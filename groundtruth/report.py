"""One static HTML page of a comparison or recovery table: sortable, each row linked to its drawing and circuit.

::

    groundtruth compare --draw out/compare/drawings          # out/compare/compare.json, rows with "files"
    groundtruth report out/compare/compare.json              # -> out/compare/report.html

    groundtruth recover reverse --draw out/rec/drawings --report out/rec/recovery.json
    groundtruth report out/rec/recovery.json --out out/rec/index.html --title "reverse, seed 0"

A table JSON is what our tools write: ``compare.json`` of ``groundtruth compare`` (``rows``, one per
program and method) or the ``--report`` file of ``groundtruth recover`` (``results``, one per program,
ablation and seed). The kind is told by those keys. Every row must name its files (``files``: the
circuit JSON and the drawing's PNG, relative to the table's folder; the SVG lies beside the PNG), which
the tools record when they are asked to draw (``--draw DIR``).

The page is one HTML file with its CSS and a few lines of JavaScript inline (the column sort) and
nothing fetched from elsewhere: no server, no network, no fonts, so it opens from a zip or a CI
artifact as it does here. It shows a header line (tool, ablations, seeds, methods or pruner, how many
rows are exact) and one table, a row per table row: the scalar columns (list-valued fields of a
recovery as their lengths), a thumbnail of the drawing linking to its SVG, and a link to the circuit
JSON. Every link is relative to the page's folder, so the folder can be moved or zipped as a whole
(the page can also be written elsewhere: its links then climb to the table's files). Each column
sorts by a click on its header, numerically where the column holds numbers, again for descending;
empty cells (``-``) stay last either way.

Everything that would make a broken page is refused with ``ValueError`` before anything is written: a
table that is missing, not JSON or of neither kind, no rows, a row without drawings, a linked file
that is not there, an ``out`` that is a folder. The page is written atomically
(:func:`prune.files.atomic_write_text`), and holds no date, so the same table gives the same bytes.
It is checked in headless Chromium by ``tests/test_report.py``; ``bench/report.py`` times it.
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import shlex
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from prune.files import atomic_write_text, check_writable_folder, read_json

__all__ = ["write_report", "cmd_report", "chromium", "CHROMIUM_ARGS", "DEFAULT_NAME"]

DEFAULT_NAME = "report.html"  # written beside the table JSON unless ``out`` says otherwise

# Headless Chromium as the test and the benchmark run it, here so that the two cannot drift apart.
# --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start. The networking flags
# stop Chromium's own background traffic (updates, sync, QUIC probes), which on a machine without a
# network stalls or logs errors that are not the page's.
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")

_NO_DRAWINGS = ("was written without drawings; rerun `groundtruth compare --draw DIR` "
                "(or `groundtruth recover --draw DIR --report FILE`)")
_WHAT_TABLE = "give the compare.json of `groundtruth compare` or the --report FILE of `groundtruth recover`"
_PNG = b"\x89PNG\r\n\x1a\n"


def chromium() -> str:
    """The Chromium that renders reports headless: ``$CHROMIUM``, else ``/usr/bin/chromium``.

    Raises ``FileNotFoundError`` saying how to get one when it is not there (Playwright's own browser
    downloads need a network; Debian's Chromium does not).
    """
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise FileNotFoundError(f"no Chromium at {path}: install it (`apt-get install -y chromium`) or set CHROMIUM "
                                f"to a Chromium executable")
    return path


@dataclasses.dataclass(frozen=True)
class _Column:
    """One column of the page: its header and the cell's value in a row (raw: bool, number, str or None)."""

    header: str
    value: Callable[[dict], object]


def _key(name: str) -> _Column:
    return _Column(name, lambda row: row.get(name))


def _length(header: str, name: str) -> _Column:
    """A list-valued field shown as its length (the lists themselves are in the circuit files)."""
    return _Column(header, lambda row: len(v) if isinstance(v := row.get(name), list | tuple) else v)


@dataclasses.dataclass(frozen=True)
class _Kind:
    """A kind of table JSON: which tool writes it, where its rows are and what the page shows of them."""

    tool: str  # the command that writes it
    rows_key: str
    columns: tuple[_Column, ...]
    row_name: Callable[[int, dict], str]  # "row 3 (reverse, eap)": how a refusal names a row
    header: Callable[[dict, list[dict]], list[str]]  # the header line's parts


def _compare_header(table: dict, rows: list[dict]) -> list[str]:
    exact = sum(r.get("exact") is True for r in rows)
    own = sum(r.get("own exact") is True for r in rows)
    return [f"{table.get('ablation')} ablation", f"seed {table.get('seed')}",
            f"methods {', '.join(map(str, table.get('methods') or [])) or '-'}",
            f"exact after the shared finalizer: {exact}/{len(rows)} rows", f"own rule exact: {own}/{len(rows)}"]


def _recovery_header(table: dict, rows: list[dict]) -> list[str]:
    exact = sum(r.get("exact") is True for r in rows)
    return [f"pruner {table.get('pruner')}",
            f"ablations {', '.join(map(str, table.get('ablations') or [])) or '-'}",
            f"seeds {', '.join(map(str, table.get('seeds') or [])) or '-'}", f"exact: {exact}/{len(rows)} runs"]


_KINDS = {
    "rows": _Kind(
        tool="groundtruth compare", rows_key="rows",
        columns=tuple(_key(c) for c in ("program", "method", "gt edges", "own", "own exact", "final", "exact",
                                        "evals", "own evals", "precision", "recall", "auroc", "faithfulness",
                                        "seconds", "final s")),
        row_name=lambda i, r: f"row {i + 1} ({r.get('program')}, {r.get('method')})",
        header=_compare_header),
    "results": _Kind(
        tool="groundtruth recover", rows_key="results",
        columns=(_key("program"), _key("ablation"), _key("seed"), _length("gt edges", "ground_truth"),
                 _length("found", "found"), _length("extra", "only_found"), _length("missed", "only_ground_truth"),
                 _key("precision"), _key("recall"), _key("reproduces"),
                 _Column("own exact", lambda r: r.get("own_exact")), _key("exact"), _key("seconds")),
        row_name=lambda i, r: f"result {i + 1} ({r.get('program')}, {r.get('ablation')}, seed {r.get('seed')})",
        header=_recovery_header),
}


@dataclasses.dataclass(frozen=True)
class _Files:
    """A row's files, as paths to open here (beside the table) and as links from the page."""

    circuit: Path
    png: Path
    svg: Path


def _table(table: Path) -> tuple[dict, _Kind, list[dict]]:
    """The table JSON, its kind and its rows; refused, naming the file, if it is none of ours."""
    if not table.exists():
        raise ValueError(f"table {table} does not exist; {_WHAT_TABLE}")
    if table.is_dir():
        inside = next((table / n for n in ("compare.json", "recovery.json") if (table / n).is_file()), None)
        hint = f", e.g. {inside}" if inside else ""
        raise ValueError(f"table {table} is a folder; give the table JSON file in it{hint}")
    if not table.is_file():
        raise ValueError(f"table {table} is not a file; {_WHAT_TABLE}")
    obj = read_json(table, ValueError, fix=_WHAT_TABLE)
    kinds = [k for key, k in _KINDS.items() if key in obj]
    if len(kinds) != 1:
        what = "both 'rows' and 'results'" if kinds else f"neither 'rows' nor 'results' (its keys: {sorted(obj)})"
        raise ValueError(f"table {table} has {what}: it is neither a compare.json (`groundtruth compare`) nor a "
                         f"recovery report (`groundtruth recover --report FILE`); {_WHAT_TABLE}")
    kind = kinds[0]
    rows = obj[kind.rows_key]
    if not isinstance(rows, list):
        raise ValueError(f"table {table}: {kind.rows_key!r} is a {type(rows).__name__}, not a list of rows; "
                         f"rewrite it with `{kind.tool}`")
    if not rows:
        raise ValueError(f"table {table} has no {kind.rows_key}: nothing to report; rerun `{kind.tool}` on programs "
                         f"whose ground truth is not empty")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"table {table}: {kind.rows_key} entry {i + 1} is a {type(row).__name__}, not an "
                             f"object; rewrite the table with `{kind.tool}`")
    return obj, kind, rows


def _files(table: Path, kind: _Kind, i: int, row: dict) -> _Files:
    """A row's circuit JSON, PNG and SVG, each checked to be there (the page would show a broken link)."""
    name = kind.row_name(i, row)
    files = row.get("files")
    if files is None or (isinstance(files, dict) and "drawing" not in files):
        raise ValueError(f"table {table}: {name} has no {'files' if files is None else 'drawing'}: the table "
                         f"{_NO_DRAWINGS}")
    if not isinstance(files, dict) or not all(isinstance(files.get(k), str) and files.get(k)
                                              for k in ("circuit", "drawing")):
        raise ValueError(f"table {table}: {name} has files {files!r}, not {{'circuit': PATH, 'drawing': PATH.png}}; "
                         f"rewrite the table with `{kind.tool}`")
    if not files["drawing"].endswith(".png"):
        raise ValueError(f"table {table}: {name} names the drawing {files['drawing']!r}, not its PNG; rewrite the "
                         f"table with `{kind.tool}`")
    folder = table.parent
    found = _Files(circuit=folder / files["circuit"], png=folder / files["drawing"],
                   svg=(folder / files["drawing"]).with_suffix(".svg"))
    for what, path in (("circuit JSON", found.circuit), ("drawing", found.png), ("drawing's SVG", found.svg)):
        if not path.is_file():
            raise ValueError(f"table {table}: {name} links to the {what} {path}, which "
                             f"{'is not a file' if path.exists() else 'does not exist'}; rerun `{kind.tool}` with "
                             f"--draw DIR to write it again, or restore it")
    with open(found.png, "rb") as f:
        if f.read(len(_PNG)) != _PNG:
            raise ValueError(f"table {table}: {name} links to the drawing {found.png}, which is not a PNG; rerun "
                             f"`{kind.tool}` with --draw DIR to write it again")
    return found


def _out(table: Path, out) -> Path:
    """Where the page goes; refused, before anything is written, where no file can be written."""
    out = table.parent / DEFAULT_NAME if out is None else Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, e.g. {out / DEFAULT_NAME}")
    if out.exists() and out.resolve() == table.resolve():
        raise ValueError(f"--out {out} is the table itself; give another file name, e.g. "
                         f"{table.parent / DEFAULT_NAME}")
    check_writable_folder(out.parent, f"--out {out}: its folder")
    return out


def _href(path: Path, page_folder: Path) -> str:
    """``path`` as a link from a page in ``page_folder``: relative (the folder moves as a whole), URL-quoted."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(page_folder))
    return urllib.parse.quote(Path(rel).as_posix())


def _text(value) -> str:
    """A cell's text, as ``groundtruth compare`` prints its markdown: yes/NO, 3 significant digits, ``-``."""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3g}"
    return "-" if value is None else str(value)


def _sort_key(value) -> str | None:
    """What a cell sorts by (``data-s``): the exact number, or the text; None for an empty cell (sorted last)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"  # what JavaScript's parseFloat reads
    return repr(value) if isinstance(value, int | float) else str(value)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value))


def _cell(value) -> str:
    key = _sort_key(value)
    attrs = "" if key is None else f' data-s="{html.escape(key)}"'
    if isinstance(value, bool):
        attrs += f' class="{"yes" if value else "no"}"'
    elif value is None:
        attrs += ' class="na"'
    elif _is_number(value):
        attrs += ' class="num"'
    return f"<td{attrs}>{html.escape(_text(value))}</td>"


_CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .3em; }
p.header { margin: 0 0 1em; color: #444; }
p.header span + span::before { content: " \\00b7  "; color: #999; }  /* two spaces: the escape eats one */
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: middle; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { position: sticky; top: 0; background: #f4f4f4; }
th button { all: inherit; cursor: pointer; padding: 0; }
th[aria-sort="ascending"] button::after { content: " \\25b2"; }
th[aria-sort="descending"] button::after { content: " \\25bc"; }
tbody tr:nth-child(even) { background: #fafafa; }
tbody tr:hover { background: #eef4ff; }
td.yes { color: #1a7f37; font-weight: 600; }
td.no { color: #c62828; font-weight: 600; }
td.na { color: #999; }
img.thumb { display: block; max-height: 160px; max-width: 260px; height: auto; border: 1px solid #eee; }
footer { margin-top: 1.5em; color: #666; font-size: .9em; }
code { font-family: ui-monospace, monospace; }
"""

# Sorting: numbers by value where the column is numeric, text otherwise; a stable sort (ties keep the
# table's order); empty cells (no data-s) last in both directions, so flipping the order does not bring
# the missing values to the top.
_JS = """
(function () {
  "use strict";
  var table = document.getElementById("report");
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(body.rows, function (row, i) { row.setAttribute("data-i", i); });
  function key(row, col, numeric) {
    var s = row.cells[col].getAttribute("data-s");
    if (s === null) return null;
    if (!numeric) return s;
    var x = parseFloat(s);
    return isNaN(x) ? null : x;
  }
  function sortBy(col) {
    var th = heads[col];
    var numeric = th.getAttribute("data-type") === "num";
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, col, numeric), y = key(b, col, numeric), c;
      if (x === null || y === null) {
        c = (x === null) - (y === null);
      } else {
        c = dir * (numeric ? (x < y ? -1 : x > y ? 1 : 0) : x.localeCompare(y));
      }
      return c || a.getAttribute("data-i") - b.getAttribute("data-i");
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(heads, function (th, col) {
    th.querySelector("button").addEventListener("click", function () { sortBy(col); });
  });
})();
"""


def _command(table: Path, out: Path, title: str | None) -> str:
    """The command that writes this page again, run in the page's folder."""
    folder = out.parent
    words = ["groundtruth", "report", _relative(table, folder)]
    if out.name != DEFAULT_NAME or os.path.abspath(folder) != os.path.abspath(table.parent):
        words += ["--out", out.name]
    if title is not None:
        words += ["--title", title]
    return shlex.join(words)


def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(folder))).as_posix()


def _page(table: Path, out: Path, obj: dict, kind: _Kind, rows: list[dict], files: list[_Files],
          title: str | None) -> str:
    page_title = title if title is not None else f"{kind.tool}: {table.name}"
    folder = out.parent
    values = [[c.value(r) for c in kind.columns] for r in rows]
    numeric = [all(_is_number(v) for v in col if v is not None) for col in zip(*values, strict=True)]
    heads = [(c.header, "num" if n else "text") for c, n in zip(kind.columns, numeric, strict=True)]
    heads += [("drawing", "text"), ("circuit", "text")]
    e = html.escape
    out_lines = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No request may leave the page: everything it needs is inline or a file beside it.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' file:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        f"<title>{e(page_title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>{e(page_title)}</h1>",
        '<p class="header">' + "".join(f"<span>{e(part)}</span>"
                                       for part in [kind.tool, *kind.header(obj, rows)]) + "</p>",
    ]
    skipped = obj.get("skipped") or []
    if skipped:
        out_lines.append(f'<p class="header">skipped: {e(", ".join(map(str, skipped)))}</p>')
    out_lines += ['<table id="report">', "<thead><tr>"]
    out_lines += [f'<th data-col="{e(h)}" data-type="{t}"><button type="button">{e(h)}</button></th>'
                  for h, t in heads]
    out_lines += ["</tr></thead>", "<tbody>"]
    for i, (row, vals, f) in enumerate(zip(rows, values, files, strict=True)):
        png, svg, circuit = (_href(p, folder) for p in (f.png, f.svg, f.circuit))
        alt = f"drawing of {kind.row_name(i, row)}"
        cells = "".join(_cell(v) for v in vals)
        cells += (f'<td data-s="{e(png)}"><a class="drawing" href="{e(svg)}">'
                  f'<img class="thumb" src="{e(png)}" alt="{e(alt)}" loading="eager"></a></td>')
        cells += (f'<td data-s="{e(circuit)}"><a class="circuit" href="{e(circuit)}">'
                  f"{e(f.circuit.name)}</a></td>")
        out_lines.append(f"<tr>{cells}</tr>")
    out_lines += ["</tbody>", "</table>",
                  f"<footer>Written from {e(_relative(table, folder))} by "
                  f"<code>{e(_command(table, out, title))}</code> (run in this page's folder). Click a column's "
                  f"header to sort by it, again for descending; a drawing opens its SVG.</footer>",
                  f"<script>{_JS}</script>", "</body>", "</html>", ""]
    return "\n".join(out_lines)


def write_report(table, out=None, *, title: str | None = None) -> Path:
    """Write one static HTML page of ``table`` (a compare.json or a recovery report) and return its path.

    Args:
      table: the table JSON (``groundtruth compare``'s ``compare.json`` or ``groundtruth recover
        --report FILE``), whose rows name their files (``--draw DIR``).
      out: the page; default ``report.html`` beside the table. Its folder is created if missing.
      title: the page's title; default the tool and the table's name.

    Raises ``ValueError``, naming the value and what to do, before anything is written: a table
    missing, not a file, not JSON or of neither kind; no rows; a row without drawings; a circuit JSON,
    PNG or SVG that is not there; an ``out`` that is a folder or the table itself.
    """
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title= must be text, got a {type(title).__name__} ({title!r})")
    table = Path(table)
    obj, kind, rows = _table(table)
    files = [_files(table, kind, i, row) for i, row in enumerate(rows)]
    out = _out(table, out)
    return atomic_write_text(out, _page(table, out, obj, kind, rows, files, title))


def cmd_report(args) -> int:
    """``groundtruth report TABLE [--out FILE] [--title TEXT]``: write the page, print ``report: PATH``."""
    path = write_report(args.table, getattr(args, "out", None), title=getattr(args, "title", None))
    print(f"report: {path}")
    return 0
