"""The program library, and programs authored in a user's own file.

``resolve("reverse")`` takes a library name; ``resolve("my_progs.py")`` imports
that file and takes every :class:`Program` defined at its top level;
``resolve("my_progs.py:count_a")`` takes one of them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from groundtruth.program import Program

__all__ = ["library", "load_file", "resolve"]


def library() -> dict[str, Program]:
    from groundtruth.library import LIBRARY

    return dict(LIBRARY)


def load_file(path: str | Path) -> dict[str, Program]:
    """Programs defined at the top level of a Python file, by name.

    The file's folder is on the import path while it runs, so it can import a
    helper module beside it. Refused: a file that does not import, two
    programs with one name, and a program named like a library program (its
    artifact would replace the library's).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no program file at {path}")
    module_name = f"_groundtruth_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # noqa: BLE001 (the user's file: a syntax error, a failed import, an exit)
        where = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
        raise ValueError(f"cannot load program file {path}: {type(err).__name__}: {err}{where}") from None
    finally:
        sys.modules.pop(module_name, None)
        if folder in sys.path:
            sys.path.remove(folder)
    programs: dict[str, Program] = {}
    for p in vars(module).values():
        if not isinstance(p, Program):
            continue
        if p.name in programs and programs[p.name] is not p:
            raise ValueError(f"{path} defines two programs named {p.name!r}; give each its own name "
                             f"(@program(name=...))")
        programs[p.name] = p
    if not programs:
        raise ValueError(
            f"{path} defines no program; decorate a function that returns a RASP SOp with "
            f"@groundtruth.program(vocab=..., max_seq_len=...)"
        )
    lib = library()
    clash = [n for n, p in programs.items() if n in lib and lib[n] is not p]
    if clash:
        raise ValueError(f"{path} defines a program named {clash[0]!r}, like the library's; its artifact would "
                         f"replace the library's: rename it (@program(name=...))")
    return programs


def resolve(spec: str) -> list[Program]:
    """Programs named by ``spec``: a library name, ``FILE.py`` or ``FILE.py:NAME``."""
    file_part, _, name = spec.partition(":") if ".py:" in spec else (spec, "", "")
    if file_part.endswith(".py"):
        programs = load_file(file_part)
        if not name:
            return list(programs.values())
        if name not in programs:
            raise KeyError(f"{file_part} has no program {name!r}; it defines {sorted(programs)}")
        return [programs[name]]
    lib = library()
    if spec not in lib:
        raise KeyError(f"no library program {spec!r}; choose from {list(lib)} or give FILE.py[:NAME]")
    return [lib[spec]]
