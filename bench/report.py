"""Seconds to write the report page (groundtruth.report) of a comparison, and to render it in headless Chromium.

    .venv/bin/groundtruth compare --draw out/compare/drawings      # the table, with drawings (the whole library)
    .venv/bin/python bench/report.py [out/compare/compare.json] [--runs 5] [--out FILE]

Two figures:
- ``write_report``: wall seconds of the whole call (reading the table, checking every linked file, the
  page, its atomic write), the median of ``--runs`` calls;
- render: wall seconds from ``page.goto(file://...)`` until the load event with every image decoded
  (``wait_until="load"``, then ``img.decode()`` for each and a check that each is complete with a
  nonzero ``naturalWidth``), in Debian's Chromium driven by Playwright with the flags of the test
  (:data:`groundtruth.report.CHROMIUM_ARGS`). Each run opens a new browser context, so no image comes
  from the previous run's memory cache; one warm-up run first (the browser's own start-up, the disk
  cache of the files), then ``--runs`` timed runs, each printed, and their median.

The result is a markdown block (command, commit, date, load, machine, rows, images, the figures) for
``bench/results/``. Run it on an otherwise idle machine: both figures are wall time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Every image decoded and drawable, or an error naming the first that is not (the figure would be a lie).
_DECODED = """() => Promise.all(Array.from(document.images, img => img.decode().then(
    () => img.complete && img.naturalWidth > 0 ? null : img.src, () => img.src)))
    .then(bad => ({images: bad.length, rows: document.querySelectorAll("#report tbody tr").length,
                   bad: bad.filter(b => b !== null)}))"""


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        return f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        return "unknown"


def render_seconds(browser, url: str) -> tuple[float, dict]:
    """One timed render of ``url`` in a fresh context: seconds to the load event with every image decoded."""
    context = browser.new_context()
    try:
        page = context.new_page()
        start = time.perf_counter()
        page.goto(url, wait_until="load")
        seen = page.evaluate(_DECODED)
        seconds = time.perf_counter() - start
    finally:
        context.close()
    if seen["bad"]:
        raise RuntimeError(f"{url}: {len(seen['bad'])} of {seen['images']} images did not decode, "
                           f"e.g. {seen['bad'][0]}")
    return seconds, seen


def main(argv=None) -> int:
    from playwright.sync_api import sync_playwright

    from groundtruth.report import CHROMIUM_ARGS, chromium, write_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("table", nargs="?", type=Path, default=Path("out/compare/compare.json"),
                        help="a compare.json written with --draw (default: out/compare/compare.json)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each, after one warm-up render")
    parser.add_argument("--out", type=Path, default=None, help="the page (default: report.html beside the table)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs {args.runs}: give at least 1")
    load = _run("uptime") or "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())
    try:
        browser_path = chromium()
        write_times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            page_path = write_report(args.table, args.out)
            write_times.append(time.perf_counter() - start)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    url = page_path.resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=list(CHROMIUM_ARGS))
        try:
            render_seconds(browser, url)  # warm-up
            runs = [render_seconds(browser, url) for _ in range(args.runs)]
            version = browser.version
        finally:
            browser.close()
    seen = runs[-1][1]
    render = [s for s, _ in runs]
    commit = _run("git", "rev-parse", "--short", "HEAD") or "unknown"
    if _run("git", "status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    command = shlex.join([".venv/bin/python", "bench/report.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"""# Report page (`bench/report.py`)

| | |
|---|---|
| command | `{command}` |
| commit | {commit} |
| date | {time.strftime('%Y-%m-%d %H:%M %Z')} |
| torch threads | n/a (neither the page nor the browser uses torch) |
| load (`uptime` at the start) | {load} |
| machine | {_run("nproc") or os.cpu_count()} cores (nproc), {_memory_gib()} memory; Chromium {version}, headless |
| table | {args.table} |
| rows | {seen['rows']} |
| images | {seen['images']} |
| render s, each run (goto to load with every image decoded) | {', '.join(f'{s:.3f}' for s in render)} |
| render s, median of {len(render)} | {statistics.median(render):.3f} |
| write_report s, median of {len(write_times)} | {statistics.median(write_times):.4f} |
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
