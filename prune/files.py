"""Writing files so that a stopped run never leaves a partial one.

:func:`atomic_path` is the project's one way to write a file atomically; the
``atomic_write_*`` helpers and :func:`save_figure` are built on it. Files get
the mode an ordinary ``open()`` would give them (``0o666`` less the umask),
not ``tempfile.mkstemp``'s private ``0o600``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from pathlib import Path

__all__ = ["atomic_path", "atomic_folder", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "read_json", "save_figure", "check_writable_folder"]


def _create_temp(path: Path) -> Path:
    """Create an empty ``.<name>.<random>.tmp`` beside ``path``, mode ``0o666`` less the umask, as open() does."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path`` (named ``.<name>.*.tmp``) to write to.

    On leaving the block normally it is renamed to ``path`` (atomic on one file
    system); on any exception, interrupts included, it is removed and ``path``
    keeps its old contents. The file is created empty, with the mode an
    ordinary ``open()`` gives (``0o666`` less the umask); write to it by name.
    A writer that replaces the file by its own (safetensors makes ``0o600``
    files) has that mode restored before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        mode = stat.S_IMODE(os.stat(tmp).st_mode)  # 0o666 less the umask, as the OS applied it
        yield tmp
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # a writer that made its own file (safetensors: 0o600)
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_folder(folder: str | Path, write, *, suffix: str = ".tmp") -> Path:
    """Write the folder ``folder`` whole or not at all: ``write(tmp)`` fills a temporary folder
    (``.<name>.*<suffix>`` beside it), which is then renamed into place, replacing an old one only once
    the new one is complete. On any exception, interrupts included, nothing is left behind. Files and
    the folder get open()'s and mkdir()'s modes (safetensors and mkdtemp make private ones)."""
    import shutil
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=suffix, dir=folder.parent))
    try:
        write(tmp)
        mask = os.umask(0)
        os.umask(mask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", suffix=suffix, dir=folder.parent))
            os.rename(folder, old / "x")
            os.rename(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj, *, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON (``json.dumps(obj, indent=indent)``, no trailing newline) to ``path`` atomically.

    The object is serialised before anything is created, so an object JSON
    cannot hold leaves no temporary file behind.
    """
    return atomic_write_text(path, json.dumps(obj, indent=indent))


def read_json(path: str | Path, error: type[Exception], *, fix: str = "") -> dict:
    """The JSON object in ``path``; a missing, unreadable or invalid file, or JSON that is not an object,
    raises ``error`` with one line naming it (and ``fix``, what to do about it)."""
    path = Path(path)
    hint = f"; {fix}" if fix else ""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path} is missing{hint}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path} cannot be read ({type(err).__name__}: {err}){hint}") from None
    except json.JSONDecodeError as err:
        raise error(f"{path} is not valid JSON ({err}){hint}") from None
    if not isinstance(obj, dict):
        raise error(f"{path} holds a JSON {type(obj).__name__}, not an object{hint}")
    return obj


def save_figure(fig, path: str | Path, *, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def check_writable_folder(path: str | Path, flag: str) -> Path:
    """Refuse, before any work and without creating anything, a folder ``path`` that could not take files:
    a file, a link to nothing, or a place whose nearest existing folder is not writable. ``ValueError``
    names ``flag`` (the argument it came from). Returns ``path`` as a ``Path``."""
    path = Path(path)
    if os.path.islink(path) and not path.exists():
        raise ValueError(f"{flag} {path} is a link to nothing (or a loop of links); choose a folder")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder; choose a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {path}: {probe} is a file, not a folder; choose a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write in {probe}; choose a writable place")
    return path
