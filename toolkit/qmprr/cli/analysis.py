"""``qmprr show``, ``stats``, ``report``, ``export`` and ``diff``: reading recordings."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..recording.reader import Problem
from .base import EXIT_OK, EXIT_PROBLEMS, UsageError, command
from .options import add_color, add_rules, bytes_writer, color, normalizer, write_bytes

POSITION_HELP = ("a seq (120) or a time offset since the start: +1.5, +1.5s, 250ms, +2m, 1h, +30us; "
                 "inclusive")


def _problem_printer(path: str) -> Any:
    """Prints each problem as ``qmprr: FILE:line N: ...`` on stderr, as it is found."""

    def report(problem: Problem) -> None:
        print(f"qmprr: {problem.file or path}:{problem}", file=sys.stderr, flush=True)

    return report


# -- handlers -------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    from ..recording import convert
    from ..analysis.filters import Filter
    from ..analysis.selection import select
    from ..analysis.show import ShowFormatter
    from ..analysis.source import Scanner, field_problem

    flt = Filter.build(kinds=args.kind, src=args.src, roles=args.role, command=args.command,
                       event=args.event, errors=args.errors, tx=args.tx, start=args.start,
                       end=args.end, grep=args.grep)
    report = _problem_printer(args.file)
    out = sys.stdout
    with Scanner(args.file, check_chain=True, follow=args.follow, on_problem=report) as scanner:
        if args.json:
            write = bytes_writer(out)  # bound once: the loop below runs per line
            if flt.kinds_only:  # no record's context needed: the fast path
                assert flt.kinds is not None  # kinds_only: kinds are given
                for raw in scanner.kind_raw(flt.kinds, flt.grep, fields=True):
                    write(raw)
                    if args.follow:
                        out.flush()
                return EXIT_OK
            for item in select(scanner, flt):
                problem = field_problem(item.raw, item.record)  # as plain show: reported, not printed
                if problem is not None:
                    scanner.report(problem)
                    continue
                write(item.raw)
                if args.follow:
                    out.flush()
            return EXIT_OK
        formatter = ShowFormatter(color=color(args, out))
        for item in select(scanner, flt):
            try:
                record = convert.structure(item.record)
            except convert.RecordSchemaError as exc:
                scanner.report(str(exc))
                continue
            out.write(formatter.line(record, command=item.command, in_tx=item.in_tx) + "\n")
            if args.follow:
                out.flush()
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    from ..analysis.stats import compute_many

    from ..analysis.query.stats import problem_lines

    stats = compute_many(args.files)
    for line in problem_lines(stats):
        print(line, file=sys.stderr)
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        from ..analysis.stats_table import render

        render(stats, sys.stdout, color=color(args, sys.stdout))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from ..analysis.report import write_report

    summary = write_report(args.file, args.output, title=args.title)
    print(f"{args.output}: {summary.spans:,} command spans, {summary.events:,} events, "
          f"{summary.transactions:,} transactions, {summary.lanes:,} lanes")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "parquet":
        from .query import cmd_export_parquet

        return cmd_export_parquet(args)
    if len(args.files) != 1:
        raise UsageError("--format chrome-trace converts one recording")
    if args.verified:
        raise UsageError("--verified goes with --format parquet")
    from ..analysis.export import write_chrome_trace

    count = write_chrome_trace(args.files[0], args.output)
    if args.output != "-":
        print(f"{args.output}: {count:,} trace events (open in https://ui.perfetto.dev or chrome://tracing)")
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from ..analysis.diff import diff_recordings, render, to_json

    result = diff_recordings(args.a, args.b, normalizer=normalizer(args), internal=args.internal)
    if args.json:
        write_bytes(to_json(result))
    else:
        render(result, sys.stdout, color=color(args, sys.stdout))
    return EXIT_OK if result.equivalent else EXIT_PROBLEMS


# -- parsers --------------------------------------------------------------------


def _add_show(sub: Any) -> None:
    p = command(
        sub, "show",
        help="print one readable line per record (filters, JSON, follow)",
        description="Print a recording, one line per record: time offset, seq, client, a '|' while "
        "a transaction holds the channel, direction (-> command, <- reply, <~ event, <> answered "
        "by qmprr, [[ ]] transaction, !! taint), name, summary, and latency on replies. "
        "Filters combine: every given filter must match; repeated values (or comma-separated "
        "ones) are alternatives; --command and --event together select either. A reply belongs "
        "to its command (client, role, name, transaction). Problems (broken hash chain, torn "
        "last line) are reported on stderr and the bad line skipped.",
        examples=["qmprr show rec.jsonl --role debug",
                  "qmprr show rec.jsonl --errors",
                  "qmprr show rec.jsonl --command 'query-*' --from +1.5s --to +3s",
                  "qmprr show rec.jsonl --command block-commit --json | jq .msg",
                  "qmprr show --follow /var/log/qmprr/vm1/"],
        exits="0 shown (problems in the file are printed on stderr), 2 unreadable or not a recording.",
        func=cmd_show,
    )
    p.add_argument("file", help="recording (.jsonl, .jsonl.zst), or a segment set (its folder or first segment)")
    add_color(p)
    f = p.add_argument_group("filters")
    f.add_argument("--kind", action="append", default=[], metavar="KIND",
                   help="record kind: command, reply, event, local, tx, taint, client, fd, note, close, "
                   "greeting, header")
    f.add_argument("--src", action="append", default=[], metavar="GLOB",
                   help="client name (primary-1, debug-*, qmprr)")
    f.add_argument("--role", action="append", default=[], choices=("primary", "debug", "internal"),
                   help="client role")
    f.add_argument("--command", action="append", default=[], metavar="GLOB",
                   help="command name, with its replies and qmprr's own answers (query-*, block-*)")
    f.add_argument("--event", action="append", default=[], metavar="GLOB", help="event name (BLOCK_JOB_*)")
    f.add_argument("--errors", action="store_true",
                   help="error replies, errors qmprr answered, aborted transactions, an upstream connection error")
    f.add_argument("--tx", type=int, metavar="N",
                   help="everything from transaction N's begin to its end")
    f.add_argument("--from", dest="start", metavar="POS", help="start at POS: " + POSITION_HELP)
    f.add_argument("--to", dest="end", metavar="POS", help="stop after POS: " + POSITION_HELP)
    f.add_argument("--grep", metavar="TEXT", help="records whose JSON line contains TEXT (case-sensitive)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true",
                   help="print the selected records as JSON Lines, exactly as in the file (for jq)")
    o.add_argument("--follow", "-f", action="store_true",
                   help="keep reading as the recording grows (like tail -f), across segments; Ctrl-C to stop")


def register(sub: Any) -> None:
    """Add show, stats, report, export and diff to ``qmprr``'s subparsers."""
    _add_show(sub)

    p = command(
        sub, "stats",
        help="what recordings hold: commands, latencies, errors, events, clients, transactions",
        description="Per command: count, errors by class, latency p50/p95/p99/max (exact). Events by "
        "name; clients with roles and command counts; taint; transactions (count, longest hold, how "
        "long others waited: exact where commands carry queued); the busiest second; commands without "
        "a reply. SQL over the 'qmprr query' views (DuckDB); over several recordings (or folders) the "
        "figures add up. The hash chain is not checked (qmprr verify does).",
        examples=["qmprr stats session.jsonl",
                  "qmprr stats /var/log/qmprr/ --json | jq '.commands | map_values(select(.errors != {}))'"],
        exits="0 computed (unreadable lines are named on stderr), 2 no recording could be read.",
        func=cmd_stats,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="recording (.jsonl, .jsonl.zst) or folder of them")
    p.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    add_color(p)

    p = command(
        sub, "report",
        help="write a self-contained HTML timeline of a recording",
        description="Write one HTML file that works offline: a summary table (from stats) above a "
        "zoomable timeline with a lane per client, each command drawn from send to reply, events "
        "on their own lane, transactions shaded (clients seen waiting for them hatched), errors in "
        "red; hover or click for the JSON. Wheel zooms, drag pans, double-click fits.",
        examples=["qmprr report session.jsonl -o session.html && xdg-open session.html"],
        exits="0 written, 2 unreadable or not a recording, the output cannot be written.",
        func=cmd_report,
    )
    p.add_argument("file", help="recording (.jsonl)")
    p.add_argument("-o", "--output", required=True, metavar="HTML",
                   help="file to write (replaced; mode 0600, never through a link)")
    p.add_argument("--title", help="page title (default: the recording's file name)")

    p = command(
        sub, "export",
        help="convert a recording for trace viewers (Perfetto), or recordings to a Parquet dataset",
        description="chrome-trace: write the recording in Chrome's Trace Event format: a thread per client with "
        "each command as a slice from send to reply (JSON of command and reply in its args), "
        "events as instants on a 'QEMU events' thread, transactions and waits as slices. "
        "parquet: write the query views of every recording under FILES (folders searched recursively) "
        "as a Hive-partitioned (date=/host=), zstd-compressed Parquet dataset in folder -o DIR, for "
        "'qmprr query --dataset', Spark or Trino (docs/query.md); incremental: recordings already in "
        "DIR are skipped.",
        examples=["qmprr export session.jsonl -o trace.json   # open in https://ui.perfetto.dev",
                  "qmprr export --format parquet /var/log/qmprr/ -o /srv/qmp-dataset --verified"],
        exits="0 written, 2 unreadable input, the output cannot be written, bad arguments.",
        func=cmd_export,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="recording (.jsonl); parquet: recordings or folders")
    p.add_argument("--format", choices=("chrome-trace", "parquet"), default="chrome-trace",
                   help="output format (default chrome-trace)")
    p.add_argument("--verified", action="store_true", help="parquet: only recordings whose chain verifies")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="file to write (mode 0600, never through a link), or - for stdout; parquet: the dataset folder")

    p = command(
        sub, "diff",
        help="compare two recordings of the same session (say, the original and its replay)",
        description="Align two recordings by their command sequence (command name and normalized "
        "arguments) and compare them as replay does, after the same normalization (built-in rules "
        "and --rules): arguments and replies field by field (error replies by class), and the events "
        "of each window (from a command to the next) as multisets, rate-limited events by presence. "
        "Prints the first divergence with context, then every difference, one per line: "
        "'seq A / seq B  command: what'. A command only A has is 'missing in B', one only B has "
        "'extra in B'. qmprr's own commands (role internal: its quit) are left out with their "
        "windows unless --internal.",
        examples=["qmprr replay rec.jsonl --target fake --record replay.jsonl; qmprr diff rec.jsonl replay.jsonl",
                  "qmprr diff before.jsonl after.jsonl --rules rules.toml --json | jq .differences"],
        exits="0 equivalent, 1 different, 2 a file cannot be read or is not a recording.",
        func=cmd_diff,
    )
    p.add_argument("a", metavar="A", help="recording (.jsonl), the reference")
    p.add_argument("b", metavar="B", help="recording (.jsonl) compared with it")
    add_rules(p, help="normalization rules (TOML, as replay --rules), on top of the built-in ones")
    p.add_argument("--internal", action="store_true", help="compare qmprr's own commands too")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_color(p)
