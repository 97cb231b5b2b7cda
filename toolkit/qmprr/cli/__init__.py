"""The ``qmprr`` command: a module per group of subcommands, each registering its parsers.

Exit status (all subcommands): 0 success; 1 the check found problems
(``verify``, a divergence, a difference); 2 the command could not run (bad
arguments, unreadable file, not a recording, an output that cannot be
written); 130 interrupted. Every error is one line on stderr, ``qmprr: ...``;
an internal error (a bug) too, with exit status 2 (``QMPRR_DEBUG=1`` shows its
traceback). Shared pieces live in :mod:`.base` (parser, converters, the error
wrapper) and :mod:`.options` (options several commands take).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .. import __version__
from .base import EXIT_CANNOT_RUN, EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEMS, Formatter, Parser, UsageError, run

__all__ = ["EXIT_CANNOT_RUN", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PROBLEMS", "UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from . import analysis, bench, domain, importing, libvirt, query, recordings, replay, service, triage

    parser = Parser(
        prog="qmprr",
        description="Record and replay QEMU monitor (QMP) sessions.",
        epilog="Exit status: 0 ok, 1 problems found, 2 could not run, 130 interrupted. "
        "See 'qmprr COMMAND --help' for each command.",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"qmprr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (recordings, analysis, query, service, replay, triage, bench, domain, importing, libvirt):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # A command may take positionals after its options (inject SOCK --json CMD): those left over
    # go to the destination it names with set_defaults(intermixed=DEST).
    args, extra = parser.parse_known_args(argv)
    into = getattr(args, "intermixed", None)
    if extra and into and not any(word.startswith("-") for word in extra):
        current = getattr(args, into)
        if isinstance(current, list):
            current.extend(extra)
            extra = []
        elif current is None and len(extra) == 1:
            setattr(args, into, extra[0])
            extra = []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return run(args.func, args)
