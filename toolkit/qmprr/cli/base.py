"""What every ``qmprr`` subcommand shares: exit statuses, the parser, converters, the error wrapper.

One place for each decision: :func:`command` declares a subcommand (its help ends
with examples and exit statuses, always), the converters check values once, and
:func:`run` maps what a handler raises to one line on stderr and an exit status.
"""

from __future__ import annotations

import argparse
import enum
import os
import sys
import textwrap
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn, TypeVar

from ..errors import QmprrError

EXIT_OK, EXIT_PROBLEMS, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 130

#: A handler: parsed arguments in, exit status out.
Handler = Callable[[argparse.Namespace], int]


class UsageError(QmprrError):
    """The command line is wrong."""


class Formatter(argparse.HelpFormatter):
    """argparse's formatter, but paragraphs (blank lines) stay apart and indented lines stay as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for para in text.split("\n\n"):
            lines: list[str] = []
            prose: list[str] = []
            for line in para.splitlines() + [""]:
                if line.startswith("  ") or not line:
                    if prose:
                        lines.append(textwrap.fill(" ".join(" ".join(prose).split()), width,
                                                   initial_indent=indent, subsequent_indent=indent,
                                                   break_on_hyphens=False, break_long_words=False))
                        prose = []
                    if line:
                        lines.append(indent + line)
                else:
                    prose.append(line)
            paragraphs.append("\n".join(lines))
        return "\n\n".join(paragraphs)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``qmprr: ...; see 'qmprr CMD --help'``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CANNOT_RUN, f"qmprr: {message}; see '{self.prog} --help'\n")


def epilog(examples: Sequence[str], exits: str, note: str = "") -> str:
    """The end of every command's help: an optional note, examples (one per line), exit statuses."""
    parts = [note] if note else []
    parts.append("Examples:\n" + "\n".join(f"  {line}" for line in examples))
    parts.append("Exit status: " + exits)
    return "\n\n".join(parts)


def command(sub: Any, name: str, *, help: str, description: str, examples: Sequence[str], exits: str,
            func: Handler | None = None, note: str = "") -> Parser:
    """Declare subcommand *name*: its help, its examples and exit statuses (required), its handler."""
    p: Parser = sub.add_parser(name, help=help, description=description, formatter_class=Formatter,
                               epilog=epilog(examples, exits, note))
    if func is not None:
        p.set_defaults(func=func)
    return p


def group(sub: Any, name: str, *, help: str, description: str, dest: str, metavar: str) -> Any:
    """Declare a subcommand that only holds subcommands (``bench``, ``import``, ...); its subparsers."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=Formatter)
    return p.add_subparsers(dest=dest, metavar=metavar, required=True)


# -- converters (argparse types): each checks one kind of value, with one message ---------------


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def size(text: str) -> int:
    """A size in bytes, at least 2: ``65536``, ``64K``, ``8M``, ``1G`` (powers of 1024)."""
    value = text.strip()
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(value[-1:].upper(), 1)
    digits = value[:-1] if scale != 1 else value
    if not digits.isdigit() or int(digits) * scale < 2:
        raise argparse.ArgumentTypeError(f"not a size of at least 2 bytes (e.g. 65536, 64K, 8M): {text!r}")
    return int(digits) * scale


def duration(text: str) -> float:
    """A positive duration: seconds, or a number with s, m, h or d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    mult = units.get(t[-1:].lower())
    try:
        return seconds(t[:-1]) * mult if mult else seconds(t)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 15m, 6h, 7d)") from None


def count(text: str) -> int:
    """A positive whole number."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text!r}")
    return value


def pairs(items: Sequence[str], option: str) -> dict[str, str]:
    """``KEY=VALUE`` words as a dict; a word without ``=`` or key is a usage error naming *option*."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} takes KEY=VALUE, not {item!r}")
        out[key] = value
    return out


E = TypeVar("E", bound=enum.Enum)


def choice(p: Any, flag: str, kind: type[E], default: E | None, help: str, **kw: Any) -> None:
    """An option whose values are the members of the enum *kind* (by value); the parsed value is the member."""
    values = [str(m.value) for m in kind]

    def convert(text: str) -> E:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(values)})") from None

    convert.__name__ = flag.lstrip("-")
    p.add_argument(flag, type=convert, default=default, metavar="{" + ",".join(values) + "}", help=help, **kw)


# -- running ---------------------------------------------------------------------------------


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run *coro* on uvloop when it is installed (QMPRR_EVENT_LOOP=asyncio opts out)."""
    import asyncio

    factory = None
    if os.environ.get("QMPRR_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return int(runner.run(coro))


def run(func: Handler, args: argparse.Namespace) -> int:
    """Call a handler; every error becomes one ``qmprr: ...`` line on stderr and its exit status."""
    try:
        status = int(func(args))
        sys.stdout.flush()  # inside the try: a closed pipe must not surface at exit
        return status
    except QmprrError as exc:
        print(f"qmprr: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (e.g. 'qmprr show f | head').
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # a file or socket problem no command foresaw: still one line
        print(f"qmprr: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except Exception as exc:  # a bug: still one line (tests fail on it); QMPRR_DEBUG=1 for the traceback
        if os.environ.get("QMPRR_DEBUG"):
            raise
        text = " ".join(str(exc).split())[:300]
        print(f"qmprr: internal error (a bug; QMPRR_DEBUG=1 shows where): {type(exc).__name__}: {text}",
              file=sys.stderr)
        return EXIT_CANNOT_RUN
