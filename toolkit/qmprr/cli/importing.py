"""``qmprr import libvirt`` and ``qmprr import replies``.

Exit status: 0 imported, every line read; 1 imported, but some lines could
not be read (each printed with its number); 2 nothing imported (unreadable
input, no monitor traffic, ambiguous choice, output exists).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from ..files import check_output
from .base import EXIT_OK, EXIT_PROBLEMS, command, group
from .options import add_seal_key, load_key


def register(subparsers: Any) -> None:
    """Add ``import`` (with ``libvirt`` and ``replies``) to the ``qmprr`` subcommands."""
    kinds = group(subparsers, "import", help="turn libvirt logs and .replies files into recordings",
                  description="Import QMP traffic logged by other programs as qmprr/1 recordings, "
                  "ready for verify, show, replay and fake.", dest="import_kind", metavar="SOURCE")
    q = command(
        kinds, "libvirt",
        help="a libvirtd / virtqemud debug log: one recording per monitor connection",
        description="Read a libvirtd (or virtqemud) debug log written with log_filters that include "
        "1:qemu.qemu_monitor and 1:qemu.qemu_monitor_json, and write a monitor connection as a "
        "recording: greeting, commands in the order libvirt sent them, replies, events in logged "
        "order, fd passes, taints, the close; each record keeps its original timestamp, thread id "
        "and line ('orig'). A log holds many connections (VMs, capability probes, reconnections "
        "after a daemon restart): --list shows them, --monitor picks one, --all writes each.",
        examples=["qmprr import libvirt /var/log/libvirt/libvirtd.log --list",
                  "qmprr import libvirt libvirtd.log --monitor 5 --qemu-log /var/log/libvirt/qemu/vm1.log -o vm1.jsonl"],
        exits="0 imported; 1 imported, but some lines could not be read; 2 nothing imported.",
        func=cmd_import_libvirt,
    )
    q.add_argument("log", metavar="DEBUG.log", help="libvirtd debug log")
    q.add_argument(
        "--qemu-log",
        action="append",
        default=[],
        metavar="NAME.log",
        help="libvirt's QEMU log of a VM (/var/log/libvirt/qemu/NAME.log): argv, environment and taints "
        "into the recordings of that VM; repeatable",
    )
    q.add_argument(
        "--domain-xml",
        action="append",
        default=[],
        metavar="FILE",
        help="the VM's domain XML (virsh dumpxml output, or libvirt's status file /run/libvirt/qemu/NAME.xml) "
        "into the header's domain_xml of that VM's recordings; repeatable",
    )
    which = q.add_mutually_exclusive_group()
    which.add_argument("--monitor", metavar="N|0xADDR", help="the connection to import: its number in --list, or its address")
    which.add_argument("--all", action="store_true", help="write every connection into the folder OUT")
    which.add_argument("--list", action="store_true", help="list the connections and import nothing")
    q.add_argument("-o", "--output", metavar="OUT", help="recording to write (a folder with --all); must not exist")
    add_seal_key(q)

    r = command(
        kinds, "replies",
        help="a libvirt .replies capability corpus (tests/qemucapabilitiesdata)",
        description="Read a libvirt .replies file (pretty-printed command, blank line, reply, blank line, "
        "...; no greeting, events or times) and write it as a recording whose fake replays libvirt's "
        "capability probe.",
        examples=["qmprr import replies tests/qemucapabilitiesdata/caps_7.2.0_x86_64.replies -o caps.jsonl "
                  "&& qmprr fake caps.jsonl --socket /tmp/caps.sock"],
        exits="0 imported; 1 imported, but some objects could not be read; 2 nothing imported.",
        func=cmd_import_replies,
    )
    r.add_argument("file", metavar="FILE.replies")
    r.add_argument("-o", "--output", metavar="OUT", required=True, help="recording to write (must not exist)")
    add_seal_key(r)


# -- libvirt debug logs ------------------------------------------------------------


def cmd_import_libvirt(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from ..importers.libvirt import output_name, parse_selector, read_domain_xml, selects, write_connection
    from ..importers.libvirt_log import Connection, LibvirtLogParser
    from ..importers.qemu_log import read_qemu_log
    from ..importers.writer import LogImportError

    out = out or sys.stdout
    if not args.list and not args.output:
        raise LogImportError("give -o OUT (a folder with --all), or --list to see the connections")
    if args.list and args.output:
        raise LogImportError("--list writes nothing: drop -o")
    if not os.path.isfile(args.log):
        raise LogImportError(f"{args.log}: no such file")
    seal_key = load_key(args.seal_key)
    qemu_logs = [read_qemu_log(path) for path in args.qemu_log]
    domains = dict(read_domain_xml(path) for path in args.domain_xml)
    selector = parse_selector(args.monitor) if args.monitor else None
    written = []
    chosen: list[Connection] = []

    if args.all:
        folder = args.output
        if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
            raise LogImportError(f"{folder}: exists and is not an empty folder; --all writes a new folder")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise LogImportError(f"{folder}: cannot create the folder: {exc.strerror}") from None

        def keep(conn: Connection) -> bool:
            return True

        def finished(conn: Connection) -> None:
            written.append(write_connection(conn, parser, os.path.join(folder, output_name(conn)), qemu_logs, seal_key,
                                            domains))
            conn.items = []  # written: memory holds only the connections still open

    elif args.list:

        def keep(conn: Connection) -> bool:
            return False

        finished = None  # type: ignore[assignment]  # no output folder when only listing
    else:
        check_output(args.output, exist_ok=False)  # before the log is read, not after

        def keep(conn: Connection) -> bool:
            return conn.index == 1 if selector is None else selects(conn, selector)

        def finished(conn: Connection) -> None:
            if conn.keep:
                chosen.append(conn)

    parser = LibvirtLogParser(args.log, keep=keep, on_finished=finished)
    parser.parse()
    stats = parser.stats
    if stats.entries == 0:
        raise LogImportError(f"{args.log}: no libvirt log lines in it (DATE TIME+ZONE: TID: LEVEL : ...)")
    if not parser.connections:
        raise LogImportError(
            f"{args.log}: no QEMU monitor traffic in it; libvirtd must log with "
            'log_filters="1:qemu.qemu_monitor 1:qemu.qemu_monitor_json" (and log_outputs to a file)'
        )
    if args.list:
        print_listing(parser, out)
        return EXIT_PROBLEMS if parser.problems else EXIT_OK
    if not args.all:
        if selector is None and len(parser.connections) > 1:
            print_listing(parser, out)
            raise LogImportError(
                f"{args.log} holds {len(parser.connections)} monitor connections: pick one with "
                "--monitor N (listed above), or write them all with --all"
            )
        if not chosen:
            raise LogImportError(f"no connection {args.monitor} in {args.log}; see --list")
        if len(chosen) > 1:
            numbers = ", ".join(str(c.index) for c in chosen)
            raise LogImportError(
                f"{args.monitor} names {len(chosen)} connections (the address was reused): {numbers}; "
                "give --monitor N"
            )
        written.append(write_connection(chosen[0], parser, args.output, qemu_logs, seal_key, domains))
    print_summary(parser, written, qemu_logs, out)
    return EXIT_PROBLEMS if parser.problems or any(q.problems for q in qemu_logs) else EXIT_OK


def print_listing(parser: Any, out: TextIO) -> None:
    """One line per connection: number, address, VM, when, lines, counts, first commands."""
    print(f"{parser.path}: {len(parser.connections)} monitor connection(s), "
          f"{max(parser.stats.daemons, 1)} libvirtd start(s)", file=out)
    print(f"{'#':>3}  {'monitor':<16} {'vm':<28} {'opened (log time)':<28} {'lines':<13} "
          f"{'cmds':>5} {'evts':>5}  first commands", file=out)
    for c in parser.connections:
        end = "" if c.closed else " (open when the log ends)"
        lines = f"{c.first_line}-{c.last_line}"
        firsts = ", ".join(c.first_commands[:4]) + (", ..." if c.commands > 5 else "")
        label = c.label + (" (reconnect)" if c.reconnect else "")
        print(f"{c.index:>3}  {c.mon:<16} {_cut(label, 28):<28} {c.stamp:<28} {lines:<13} "
              f"{c.commands:>5} {c.events:>5}  {firsts}{end}", file=out)
    _print_problems(parser, out)


def print_summary(parser: Any, written: list[Any], qemu_logs: list[Any], out: TextIO) -> None:
    stats = parser.stats
    print(f"{parser.path}: {stats.lines} lines, {max(stats.daemons, 1)} libvirtd start(s), "
          f"{len(parser.connections)} monitor connection(s)", file=out)
    for w in written:
        c = w.conn
        extra = f", {c.fds} fd(s)" if c.fds else ""
        extra += f", {c.taints} taint(s)" if c.taints else ""
        extra += f", {c.unanswered} without reply" if c.unanswered else ""
        extra += f", {c.missing_ids} absent from the log (id gaps)" if c.missing_ids else ""
        extra += f", argv from {w.qemu_log}" if w.qemu_log else ""
        print(f"  #{c.index} {c.label} {c.mon}: {c.commands} commands, {c.replies} replies, "
              f"{c.events} events{extra} -> {w.path} ({w.records} records)", file=out)
        for warning in w.warnings:
            print(f"    warning: {warning}", file=out)
    totals = (sum(w.conn.commands for w in written), sum(w.conn.replies for w in written),
              sum(w.conn.events for w in written))
    if len(written) > 1:
        print(f"  in all: {len(written)} recordings, {totals[0]} commands, {totals[1]} replies, "
              f"{totals[2]} events", file=out)
    print(f"  lines of other sources and levels: {stats.other_entries} messages skipped"
          + (f"; {stats.foreign_lines} lines not in libvirt's format" if stats.foreign_lines else ""), file=out)
    for log in qemu_logs:
        for line, message in log.problems:
            print(f"  problem: {log.path}:{line}: {message}", file=out)
    _print_problems(parser, out)


def _print_problems(parser: Any, out: TextIO) -> None:
    if parser.stats.cut_at_end:
        print("  the last line has no newline: the log was cut (or is still being written)", file=out)
    for reason, count in sorted(parser.skipped.items()):
        print(f"  skipped in the log: {count} {reason}", file=out)
    for problem in parser.problems:
        print(f"  problem: {parser.path}:{problem.line}: {problem.message}", file=out)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# -- .replies ----------------------------------------------------------------------


def cmd_import_replies(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from ..importers.replies import read_replies, write_replies

    out = out or sys.stdout
    check_output(args.output, exist_ok=False)
    seal_key = load_key(args.seal_key)
    result = read_replies(args.file)
    records = write_replies(result, args.output, seal_key)
    print(f"{args.file}: {result.commands} commands, {result.replies} replies"
          + (f", {result.events} events" if result.events else "")
          + (f", {result.unanswered} without reply" if result.unanswered else "")
          + f" -> {args.output} ({records} records)", file=out)
    for problem in result.problems:
        print(f"  problem: {args.file}:{problem.line}: {problem.message}", file=out)
    return EXIT_PROBLEMS if result.problems else EXIT_OK
