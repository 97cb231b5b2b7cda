"""The ``qmprr`` command.

Exit status (all subcommands): 0 success; 1 the check found problems
(``verify``); 2 the command could not run (bad arguments, unreadable file,
not a recording); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import QmprrError

EXIT_OK, EXIT_PROBLEMS, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 130


def _use_color(stream) -> bool:  # type: ignore[no-untyped-def]
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


# -- subcommands -------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    from .recording import verify

    report = verify(args.file)
    for problem in report.problems:
        print(f"{report.path}:{problem.line}: {problem.message}")
    if report.torn:
        print(f"{report.path}: the last line is torn (a writer crashed mid-record);"
              " 'qmprr repair' truncates it")
    for cmd in report.in_flight:
        name = cmd.msg.get("execute", cmd.msg.get("exec-oob", "?"))
        print(f"{report.path}: in flight when the log ended: seq {cmd.seq} {name} from {cmd.src}")
    verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"{report.path}: {report.records} records, {verdict}")
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_show(args: argparse.Namespace) -> int:
    from .analysis.show import ShowFormatter
    from .recording import RecordingReader

    formatter = ShowFormatter(color=_use_color(sys.stdout) if args.color == "auto" else args.color == "always")
    out = sys.stdout
    with RecordingReader(args.file, errors="skip") as reader:
        for line in formatter.lines(reader):
            out.write(line + "\n")
        for problem in reader.problems:
            print(f"qmprr: {reader.path}:{problem}", file=sys.stderr)
    return EXIT_OK


def cmd_repair(args: argparse.Namespace) -> int:
    from .recording import RecordWriter, RecordingReader

    with RecordingReader(args.file, errors="skip") as reader:
        for _ in reader:
            pass
        torn = reader.torn
    if torn is None:
        print(f"{args.file}: last line is complete; nothing to repair")
        return EXIT_OK
    RecordWriter.append_to(args.file, repair=True).close()
    print(f"{args.file}: truncated the torn last line ({torn.size} bytes at offset {torn.offset});"
          " a note records the repair")
    return EXIT_OK


def cmd_bench_log(args: argparse.Namespace) -> int:
    from .bench import log

    log.run(records=args.records, always_records=args.always_records, folder=args.dir)
    return EXIT_OK


# -- parser ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qmprr",
        description="Record and replay QEMU monitor (QMP) sessions.",
        epilog="Exit status: 0 ok, 1 problems found, 2 could not run. "
        "See 'qmprr COMMAND --help' for each command.",
    )
    parser.add_argument("--version", action="version", version=f"qmprr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "verify",
        help="check a recording's integrity",
        description="Check a recording: JSON, record schema, seq continuity, the hash chain "
        "(edits, deletions, insertions, reordering), and that every reply names an earlier "
        "command. Lists commands still in flight when the log ended.",
        epilog="Exit status: 0 clean, 1 problems found (each printed with its line), "
        "2 unreadable or not a recording.",
    )
    p.add_argument("file", help="recording (.jsonl)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "show",
        help="print one readable line per record",
        description="Print a recording, one line per record: time offset, seq, client, "
        "direction (-> command, <- reply, <~ event, [[ ]] transaction), name, summary, "
        "and latency on replies.",
    )
    p.add_argument("file", help="recording (.jsonl)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour output (auto: on a terminal, unless NO_COLOR is set)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "repair",
        help="truncate a torn last line left by a crash",
        description="Truncate an incomplete last line (a writer crashed mid-record) and "
        "append a note that says so. Complete records are never touched.",
    )
    p.add_argument("file", help="recording (.jsonl)")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("bench", help="benchmarks that print ratios against a same-run baseline")
    bench = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    b = bench.add_parser(
        "log",
        help="recording write and read+verify throughput",
        description="Write a synthetic recording under each sync policy, then read and verify "
        "it, against a plain json.loads loop over the same file; and the reader's peak memory.",
    )
    b.add_argument("--records", type=int, default=1_000_000, help="records to write (default 1,000,000)")
    b.add_argument("--always-records", type=int, default=2_000,
                   help="records to write with sync=always, one fsync each (default 2,000)")
    b.add_argument("--dir", help="folder for the temporary files (default: the system's)")
    b.set_defaults(func=cmd_bench_log)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
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


if __name__ == "__main__":
    sys.exit(main())
