"""``qmprr launch``, ``proxy`` and ``inject``: recording a QEMU's monitor, and talking to it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .base import EXIT_OK, EXIT_PROBLEMS, UsageError, command, run_async, seconds
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
    import json

    from .. import codec
    from ..client import ClientError, QmpClient, ReplyTimeout

    if args.hmp is not None:
        if args.qmp_command is not None:
            raise UsageError("give either a JSON command or --hmp, not both")
        msg = {"execute": "human-monitor-command", "arguments": {"command-line": args.hmp}}
    elif args.qmp_command is None:
        raise UsageError("give a command: 'JSON', a command name, or --hmp 'TEXT'")
    else:
        text = args.qmp_command
        try:
            msg = codec.loads(text)
        except codec.JSONDecodeError:
            if not text.replace("-", "").replace("_", "").isalnum():
                raise UsageError(f"not JSON and not a command name: {text!r}") from None
            msg = {"execute": text}
        if not isinstance(msg, dict) or not isinstance(msg.get("execute"), str):
            raise UsageError('the command must be a JSON object with "execute", e.g. \'{"execute": "query-status"}\'')
    with QmpClient(args.socket, timeout=args.timeout) as client:
        if not args.cancel_on_timeout:
            client.detach()  # if we time out and leave, qmprr still runs the command
        try:
            reply = client.execute_msg(msg)
        except ReplyTimeout:
            if args.cancel_on_timeout:  # leaving withdraws it, if it is still queued
                raise ClientError(
                    f"no reply within {args.timeout:g} s; timed out: withdrawn if it had not reached"
                    " QEMU (see the recording: a command record from this client means it had)"
                ) from None
            raise ClientError(
                f"no reply within {args.timeout:g} s: the command may still run (it is queued behind"
                " other commands, or in flight in QEMU); its reply will be in the recording"
                " (--cancel-on-timeout withdraws a queued one instead)"
            ) from None
    reply.pop("id", None)
    if args.json:
        print(codec.dumps(reply).decode())
    elif args.hmp is not None and isinstance(reply.get("return"), str):
        sys.stdout.write(reply["return"])
    else:
        print(json.dumps(reply.get("return", reply), indent=2, ensure_ascii=False))
    if "error" in reply:
        err = reply["error"]
        print(f"qmprr: error reply {err.get('class')}: {err.get('desc')}", file=sys.stderr)
        return EXIT_PROBLEMS
    return EXIT_OK


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
                  "--socket /tmp/q.sock --domain vm.xml"],
        exits="QEMU's own exit status once it ran; 2 could not start (bad arguments, the recording "
        "exists, QEMU missing).",
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
                  "qmprr proxy --reattach s.jsonl --record s-2.jsonl --socket /tmp/q.sock"],
        exits="0 QEMU closed the monitor or SIGINT/SIGTERM; 2 could not start (cannot connect, the "
        "recording exists, bad arguments).",
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
        description="Connect to SOCKET (a qmprr debug socket, or any QMP socket), negotiate, send "
        "one command, print the reply. COMMAND is a JSON object ('{\"execute\": \"query-status\"}') "
        "or a bare command name (query-status).",
        examples=["qmprr inject /tmp/dbg.sock query-block",
                  "qmprr inject /tmp/dbg.sock --hmp 'info block'"],
        exits="0 QEMU returned, 1 QEMU answered an error, 2 cannot connect or talk, "
        "or no reply within --timeout.",
        func=cmd_inject,
    )
    p.add_argument("socket", metavar="SOCKET")
    p.add_argument("qmp_command", nargs="?", metavar="COMMAND")
    p.set_defaults(intermixed="qmp_command")
    p.add_argument("--hmp", metavar="TEXT", help="send an HMP command line (human-monitor-command)")
    p.add_argument("--json", action="store_true", help="print the raw reply as one JSON line")
    p.add_argument("--timeout", type=seconds, default=30.0,
                   help="seconds to wait for the reply (default 30); when it expires the command may "
                   "still run, and its reply goes to the recording")
    p.add_argument("--cancel-on-timeout", action="store_true",
                   help="when --timeout expires, withdraw the command if it has not reached QEMU yet")
