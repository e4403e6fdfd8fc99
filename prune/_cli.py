"""What the project's command lines share: one-line argument errors and validating argument types.

The contract of every command: an input is answered right or refused with one
line ``error: ...`` on stderr (naming the value at fault and what to do) and
exit status 2, without a traceback. :class:`ArgumentParser` makes argparse's own
refusals (an unknown option, a missing one, a bad choice, a value its ``type``
rejects) keep to it; the ``type`` functions below reject values the commands
cannot use, with a message argparse prefixes with the option's name.
"""

from __future__ import annotations

import argparse
import math
import sys

__all__ = ["ArgumentParser", "parse_int", "parse_positive_int", "positive_int", "nonnegative_int", "random_seed",
           "nonempty", "parse_fractions", "parse_args", "run_command"]

# torch.Generator.manual_seed and friends take at most 64 bits; random.Random ignores the sign.
MAX_SEED = 2**63 - 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a refusal is one line ``error: <message> (see <prog> --help)`` and exit status 2.

    Subparsers made with ``add_subparsers`` are of this class too (argparse uses
    the parent's class), so ``prog`` there is e.g. ``prune run``.
    """

    def error(self, message: str):  # noqa: D102 (argparse's hook)
        message = " ".join(str(message).split())  # one line, whatever argparse composed
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)

    def _get_values(self, action, arg_strings):  # noqa: D102 (argparse's hook)
        # Python 3.11 reads `--flag=--` as no value at all and hands the action [] without calling its
        # type, so the command would run with a list where it expects a value: refuse it as argparse
        # refuses a missing value.
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one argument")
        return super()._get_values(action, arg_strings)


def parse_int(text: str, flag: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``text`` as a whole number in [minimum, maximum]; ``argparse.ArgumentTypeError`` naming ``flag`` else.

    ``flag`` may be ``""`` where the caller names the option itself (argparse's
    ``type=`` does: its message starts ``argument --flag:``).
    """
    what = "a whole number"
    if minimum is not None and maximum is not None:
        what += f" from {minimum} to {maximum}"
    elif minimum is not None:
        what += f" >= {minimum}"
    elif maximum is not None:
        what += f" <= {maximum}"
    prefix = f"{flag} " if flag else ""
    try:
        value = int(str(text).strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{prefix}expects {what}, got {text!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise argparse.ArgumentTypeError(f"{prefix}expects {what}, got {text!r}")
    return value


def parse_positive_int(text: str, flag: str = "") -> int:
    """``text`` as a whole number >= 1 (see :func:`parse_int`)."""
    return parse_int(text, flag, minimum=1)


def positive_int(text: str) -> int:
    """argparse ``type``: a whole number >= 1."""
    return parse_int(text, "", minimum=1)


def nonnegative_int(text: str) -> int:
    """argparse ``type``: a whole number >= 0."""
    return parse_int(text, "", minimum=0)


def random_seed(text: str) -> int:
    """argparse ``type``: a random seed, a whole number from 0 to 2**63 - 1."""
    return parse_int(text, "", minimum=0, maximum=MAX_SEED)


def nonempty(text: str) -> str:
    """argparse ``type``: any string but an empty (or all-blank) one."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expects a value, got {text!r}")
    return text


def parse_fractions(text: str, flag: str) -> list[float]:
    """A comma-separated list of numbers in [0, 1] (``"0.9"``, ``"0.5,0.9,0.99"``), in order.

    Raises ``ValueError`` with a one-line message naming ``flag`` and the item at
    fault: an empty list or item, something that is not a number, NaN, or a
    number outside [0, 1]. ``-0.0`` is read as ``0.0``.
    """
    example = f"e.g. {flag} 0.9 or {flag} 0.5,0.9"
    if not text.strip():
        raise ValueError(f"{flag} is empty; give one number in [0, 1] or several, comma-separated ({example})")
    values = []
    for item in text.split(","):
        if not item.strip():
            raise ValueError(f"{flag} {text!r} has an empty item; give numbers in [0, 1], comma-separated ({example})")
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"{flag}: {item.strip()!r} is not a number; give numbers in [0, 1], comma-separated "
                             f"({example})") from None
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise ValueError(f"{flag}: {item.strip()!r} is not in [0, 1]; give numbers in [0, 1], comma-separated "
                             f"({example})")
        values.append(value + 0.0)  # -0.0 -> 0.0
    return values


def parse_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace | int:
    """``parser.parse_args(argv)``, or the exit status where argparse would exit (``--help``: 0; a refusal
    :meth:`ArgumentParser.error` has printed: 2), so that ``main(argv)`` returns instead of raising."""
    try:
        return parser.parse_args(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 0 if done.code is None else 2


def print_refusal(err: BaseException) -> None:
    """The one line ``error: ...`` of a refused command."""
    message = err.args[0] if isinstance(err, KeyError) and err.args else err  # KeyError's str() adds quotes
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def run_command(func, args, *, refused: tuple[type[BaseException], ...], interrupted: str) -> int:
    """``func(args)``; an exception of a ``refused`` type becomes the one line ``error: ...`` and exit status 2,
    Ctrl-C the line ``interrupted`` and 130. Anything else is a bug, and keeps its traceback."""
    try:
        return func(args)
    except refused as err:
        print_refusal(err)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
