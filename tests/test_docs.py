"""The README and docs/ are tested like code: the README's Python runs, it stays short, every
relative link resolves, and ``docs/library.md`` is what ``groundtruth table`` prints today."""

from __future__ import annotations

import linecache
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 200

# Markdown files whose relative links must resolve: the README, docs/ and the committed results.
LINKED_FILES = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bench" / "results").glob("*.md"))]

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_ANY_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(first line number, source)`` of every ```python fenced block, in order."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def _prose(text: str) -> str:
    """The text outside fenced and inline code (links inside code are examples, not links)."""
    return _INLINE_CODE.sub("", _ANY_FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, counts = set(), {}
    for line in _ANY_FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(1))
            n = counts.get(slug, 0)
            anchors.add(f"{slug}-{n}" if n else slug)  # repeated headings get -1, -2, ...
            counts[slug] = n + 1
    return anchors


def _ignored(path: Path) -> bool:
    """Whether git ignores ``path`` (out/, runs/, .venv/, ...): such files are not in the repository."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        return any(part in {"out", "runs", ".venv"} for part in path.relative_to(ROOT).parts)
    return subprocess.run([git, "check-ignore", "-q", str(path)], cwd=ROOT).returncode == 0


def test_readme_python_blocks_compile():
    blocks = python_blocks(README)
    assert blocks, "README.md has no ```python block"
    for line, source in blocks:
        compile(source, f"README.md:{line}", "exec")


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """Every ```python block of the README, in order, in one namespace, from a scratch folder
    (so nothing the blocks write can land in the repository)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(ROOT / "models")  # the README's paths are a clone's: models/gpt2-ioi-gt
    namespace: dict = {"__name__": "__readme__"}
    for line, source in python_blocks(README):
        filename = f"<README.md:{line}>"
        # Registered so that tracebacks (and inspect.getsource) can show the README's lines.
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), namespace)


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, (
        f"README.md has {n} lines, more than {MAX_README_LINES}: move detail to docs/ and results "
        f"to bench/results/, and link to them"
    )


@pytest.mark.parametrize("path", LINKED_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = []
    for target in _LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
        elif not dest.exists():
            broken.append(f"{target} (no such file: {dest.relative_to(ROOT)})")
        elif _ignored(dest):
            broken.append(f"{target} (git-ignored, so not in the repository; commit it under bench/results/)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with anchor #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{path.relative_to(ROOT)} has broken links:\n  " + "\n  ".join(broken)


def test_library_table_is_current(capsys):
    from groundtruth.cli import main

    assert main(["table"]) == 0
    printed = capsys.readouterr().out
    committed = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    assert committed == printed, (
        "docs/library.md is stale: it is not what `groundtruth table` prints from compiled_models/. "
        "Regenerate it with `groundtruth table > docs/library.md` (from the repository root)"
    )
