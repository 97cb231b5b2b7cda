"""``qmprr launch``, ``proxy``, ``inject`` and ``events``: recording a QEMU's monitor, and talking to it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .base import UsageError, command, count, run_async, seconds
from .options import SERVICE_NOTE, add_domain, add_service, service


def cmd_launch(args: argparse.Namespace) -> int:
    from ..service import run_launch

    argv = list(args.qemu_argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if args.monitor_socket is not None and not args.keep_vm:
        raise UsageError("--monitor-socket goes with --keep-vm (without it QEMU's monitor has no path)")
    keep = {"keep_vm": args.keep_vm, "monitor_socket": args.monitor_socket}
    if args.domain is not None:
        if argv:
            raise UsageError("give either --domain XML or a QEMU command line after '--', not both")
        from ..domain import build_launch

        spec = build_launch(args.domain, ignore_unsupported=args.ignore_unsupported)
        for warning in spec.warnings:
            print(f"qmprr: warning: {warning}", file=sys.stderr)
        options = service(args)
        return run_async(run_launch(spec.argv, options, env=spec.env, domain_xml=spec.xml, **keep))
    if not argv:
        raise UsageError("give the QEMU command line after '--' (e.g. -- qemu-system-x86_64 -machine none), or --domain XML")
    return run_async(run_launch(argv, service(args), **keep))


def cmd_proxy(args: argparse.Namespace) -> int:
    from ..service import run_proxy

    if args.upstream is None and args.reattach is None:
        raise UsageError("give --upstream QEMU_QMP_SOCKET, or --reattach RECORDING (from 'launch --keep-vm')")
    return run_async(run_proxy(args.upstream, service(args), reattach=args.reattach))


def cmd_inject(args: argparse.Namespace) -> int:
    from ..inject import InjectOptions, build_message, pass_fd_option, run

    words = [w for w in (args.qmp_command, *args.arguments) if w is not None]  # intermixed words land in arguments
    command, arguments = (words[0], words[1:]) if words else (None, [])
    pass_fd = pass_fd_option(args.socket, args.pass_fd, args.fdname, args.fdset, args.fd_mode)
    msg = build_message(command, arguments, args.json_arguments, args.hmp, pass_fd)
    return run(InjectOptions(socket=args.socket, msg=msg, hmp=args.hmp is not None, json=args.json,
                             timeout=args.timeout, cancel_on_timeout=args.cancel_on_timeout, pass_fd=pass_fd))


def cmd_events(args: argparse.Namespace) -> int:
    from ..events import EventsOptions, watch

    return watch(EventsOptions(socket=args.socket, filters=tuple(args.filter), json=args.json,
                               count=args.count, timeout=args.timeout))


def register(sub: Any) -> None:
    p = command(
        sub, "launch",
        help="start QEMU with a private monitor, record, and serve QMP sockets",
        description="Start QEMU (the command line after '--') with a private QMP monitor, record "
        "every exchange to FILE, and serve QMP on --socket (and --debug-socket). Exits with "
        "QEMU's exit status. SIGINT/SIGTERM: quit QEMU through the channel (logged); if that "
        "cannot go through (e.g. the log cannot be written) or QEMU lingers 10 s, SIGTERM, then "
        "SIGKILL 10 s later. If qmprr itself is killed, QEMU is killed with it (parent-death "
        "signal), unless --keep-vm. Refused: -daemonize (QEMU would escape qmprr), and -runas "
        "without --keep-vm (it clears the parent-death signal).",
        note=SERVICE_NOTE,
        examples=["qmprr launch --record s.jsonl --socket /tmp/q.sock --debug-socket /tmp/dbg.sock "
                  "-- qemu-system-x86_64 -machine none -display none",
                  "qmprr launch --keep-vm --record s.jsonl --socket /tmp/q.sock -- qemu-system-x86_64 ...",
                  "qmprr launch --record vm.jsonl --rotate-size 64M --compress zstd --keep 30 "
                  "--socket /tmp/q.sock --domain vm.xml",
                  "qmprr launch --record s.jsonl --socket tcp:127.0.0.1:4444 -- qemu-system-x86_64 "
                  "-machine none -display none"],
        exits="QEMU's own exit status once it ran; 2 could not start (bad arguments, the recording "
        "exists, QEMU missing, a socket cannot be created).",
        func=cmd_launch,
    )
    add_service(p)
    add_domain(p)
    p.add_argument("--keep-vm", action="store_true",
                   help="QEMU survives if qmprr is killed: its monitor listens on a socket (mode 0600) "
                   "whose path is in the header, for 'qmprr proxy --reattach FILE'")
    p.add_argument("--monitor-socket", metavar="PATH",
                   help="with --keep-vm: QEMU's monitor socket (default: FILE without .jsonl + .monitor.sock)")
    p.add_argument("qemu_argv", nargs=argparse.REMAINDER, metavar="-- QEMU ARGV...")

    p = command(
        sub, "proxy",
        help="attach to a running QEMU's QMP socket, record, and serve QMP sockets",
        description="Connect to a running QEMU's QMP socket (started with "
        "-qmp unix:PATH,server=on,wait=off), record every exchange, serve QMP to clients. "
        "Runs until QEMU closes the monitor or SIGINT/SIGTERM (QEMU keeps running). "
        "--reattach OLD takes back the monitor of a QEMU started by 'launch --keep-vm' whose "
        "recorder died: it connects to the monitor socket named in OLD's header and starts a new "
        "recording (a segment) whose header names OLD and the hash of its last complete record "
        "(a torn last line is ignored). OLD is not changed.",
        note=SERVICE_NOTE,
        examples=["qmprr proxy --upstream /run/vm1.qmp --record vm1.jsonl --socket /tmp/q.sock "
                  "--debug-socket /tmp/dbg.sock",
                  "qmprr proxy --reattach s.jsonl --record s-2.jsonl --socket /tmp/q.sock "
                  "--debug-socket tcp:127.0.0.1:4445"],
        exits="0 QEMU closed the monitor or SIGINT/SIGTERM; 2 could not start (cannot connect, the "
        "recording exists, bad arguments, a socket cannot be created).",
        func=cmd_proxy,
    )
    p.add_argument("--upstream", metavar="QEMU_QMP_SOCKET",
                   help="QEMU's QMP socket (with --reattach: instead of the one the header names)")
    p.add_argument("--reattach", metavar="RECORDING",
                   help="continue RECORDING (from 'launch --keep-vm' or an earlier --reattach) in a new segment")
    add_service(p)

    p = command(
        sub, "inject",
        help="send one command to a QMP socket and print the reply",
        description="Connect to SOCKET (a qmprr debug socket, any QMP socket, or tcp:HOST:PORT), "
        "negotiate, send one command, print the reply. COMMAND is a JSON object "
        "('{\"execute\": \"query-status\"}') or a command name followed by qmp-shell's KEY=VALUE "
        "arguments: a value is an integer, true/false, a JSON (or Python-literal) object or array "
        "when it starts with { or [, else a string (so 1.5 and null are strings: use -j); a dotted "
        "key nests (cache.direct=true). -j JSON gives arguments as a JSON object, which KEY=VALUE "
        "pairs add to. --pass-fd FILE opens FILE and hands QEMU the fd first, as virsh does: "
        "'getfd' named --fdname NAME (refer to it as fd:NAME or NAME) or 'add-fd' into --fdset ID "
        "(refer to it as /dev/fdset/ID; QEMU drops an unused set when its last client leaves), "
        "then sends COMMAND if given. fds need a UNIX socket; through qmprr, only a primary "
        "socket served with --socket-fd passes them on.",
        examples=["qmprr inject /tmp/dbg.sock blockdev-del node-name=top",
                  "qmprr inject /tmp/dbg.sock --hmp 'info block'",
                  "qmprr inject /run/qemu-qmp.sock --pass-fd vm.dump --fd-mode w --fdname dump "
                  "dump-guest-memory paging=false protocol=fd:dump   (QEMU's own socket)"],
        exits="0 QEMU returned, 1 QEMU answered an error, 2 bad arguments, cannot open --pass-fd "
        "FILE, cannot connect or talk, or no reply within --timeout.",
        func=cmd_inject,
    )
    p.add_argument("socket", metavar="SOCKET", help="a UNIX socket path, or tcp:HOST:PORT")
    p.add_argument("qmp_command", nargs="?", metavar="COMMAND")
    p.add_argument("arguments", nargs="*", metavar="KEY=VALUE", help="qmp-shell style arguments of COMMAND (see above)")
    p.set_defaults(intermixed="arguments")
    p.add_argument("-j", "--json-arguments", metavar="JSON",
                   help="COMMAND's arguments as a JSON object ('{\"node-name\": \"top\"}')")
    p.add_argument("--hmp", metavar="TEXT", help="send an HMP command line (human-monitor-command)")
    p.add_argument("--json", action="store_true", help="print the raw reply as one JSON line")
    p.add_argument("--pass-fd", metavar="FILE", help="open FILE and pass its fd to QEMU before COMMAND (SCM_RIGHTS)")
    p.add_argument("--fdname", metavar="NAME", help="with --pass-fd: 'getfd' under this name")
    p.add_argument("--fdset", type=int, metavar="ID", help="with --pass-fd: 'add-fd' into fd set ID")
    p.add_argument("--fd-mode", choices=("r", "rw", "w", "a"), default="rw",
                   help="how --pass-fd opens FILE: r read, rw read-write (default), w create or truncate, "
                   "a create or append")
    p.add_argument("--timeout", type=seconds, default=30.0,
                   help="seconds to wait for the reply (default 30); when it expires the command may "
                   "still run, and its reply goes to the recording")
    p.add_argument("--cancel-on-timeout", action="store_true",
                   help="when --timeout expires, withdraw the command if it has not reached QEMU yet")

    p = command(
        sub, "events",
        help="print a QMP socket's events as they come (like virsh qemu-monitor-event)",
        description="Connect to SOCKET (a qmprr socket, debug sockets included: listening does not "
        "taint the recording; any QMP socket; tcp:HOST:PORT), negotiate, and print each event on "
        "one line as virsh qemu-monitor-event does: 'event NAME at SECONDS.MICROSECONDS: DATA' "
        "(QEMU's timestamp; the data as JSON, <null> when none), or the event as one JSON line "
        "(--json). Runs until the server closes the connection, SIGINT, --count or --timeout.",
        examples=["qmprr events /tmp/dbg.sock --filter 'BLOCK_JOB_*'",
                  "qmprr events /tmp/dbg.sock --filter STOP --count 1 --timeout 60   (wait for the guest to stop)"],
        exits="0 ended (end of connection, SIGINT, --count reached, --timeout), 1 --count N was "
        "given and fewer events came before the end or --timeout, 2 cannot connect or talk.",
        func=cmd_events,
    )
    p.add_argument("socket", metavar="SOCKET", help="a UNIX socket path, or tcp:HOST:PORT")
    p.add_argument("--filter", action="append", default=[], metavar="NAME",
                   help="only events whose name matches this glob (case-insensitive); repeatable")
    p.add_argument("--json", action="store_true", help="print each event as one JSON line")
    p.add_argument("--count", type=count, metavar="N", help="stop after N events")
    p.add_argument("--timeout", type=seconds, metavar="SECONDS", help="stop after this many seconds")
