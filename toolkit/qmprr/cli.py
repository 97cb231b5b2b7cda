"""The ``qmprr`` command.

Exit status (all subcommands): 0 success; 1 the check found problems
(``verify``); 2 the command could not run (bad arguments, unreadable file,
not a recording, an output that cannot be written); 130 interrupted. Every
error is one line on stderr, ``qmprr: ...``; an internal error (a bug) too,
with exit status 2 (``QMPRR_DEBUG=1`` shows its traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .errors import QmprrError

if TYPE_CHECKING:  # imported when used: the CLI starts fast
    from .replay.engine import ReplayOptions
    from .replay.normalize import Normalizer
    from .replay.run import RunOptions
    from .service import ServiceOptions


class UsageError(QmprrError):
    """The command line is wrong."""

EXIT_OK, EXIT_PROBLEMS, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``qmprr: ...; see 'qmprr CMD --help'``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CANNOT_RUN, f"qmprr: {message}; see '{self.prog} --help'\n")


def seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def size(text: str) -> int:
    """An argparse type: a size in bytes, at least 2: ``65536``, ``64K``, ``8M``, ``1G`` (powers of 1024)."""
    value = text.strip()
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(value[-1:].upper(), 1)
    digits = value[:-1] if scale != 1 else value
    if not digits.isdigit() or int(digits) * scale < 2:
        raise argparse.ArgumentTypeError(f"not a size of at least 2 bytes (e.g. 65536, 64K, 8M): {text!r}")
    return int(digits) * scale


def duration(text: str) -> float:
    """An argparse type: a positive duration: seconds, or a number with s, m, h or d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    mult = units.get(t[-1:].lower())
    try:
        return seconds(t[:-1]) * mult if mult else seconds(t)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 15m, 6h, 7d)") from None


def count(text: str) -> int:
    """An argparse type: a positive whole number."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text!r}")
    return value


# -- subcommands -------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    from . import wire
    from .recording import verify
    from .recording.chain import SealKey

    key = SealKey.from_file(args.key) if args.key else None
    report = verify(args.file, key=key, since=args.since)
    for problem in report.problems:
        print(f"{problem.file or report.path}:{problem.line}: {problem.message}")
    if len(report.files) > 1 or args.since:
        print(f"{report.path}: a set of {len(report.files)} segment(s), {os.path.basename(report.files[0])}"
              f" to {os.path.basename(report.files[-1])}")
    if report.deleted:
        print(f"{report.path}: retention deleted {len(report.deleted)} earlier segment(s) (last: {report.deleted[-1]}),"
              f" whose final hash was {report.header.previous.get('final_hash') if report.header.previous else '?'}")
    if report.torn:
        print(f"{report.path}: the last line is torn (a writer crashed mid-record);"
              " 'qmprr repair' truncates it")
    for cmd in report.in_flight:
        name = wire.command_name(cmd.msg) or "?"
        print(f"{report.path}: in flight when the log ended: seq {cmd.seq} {name} from {cmd.src}")
    header = report.header
    if header.derived_from:
        d = header.derived_from
        print(f"{report.path}: derived ({d.get('how')}) from {d.get('file')}, whose final hash was {d.get('final_hash')}")
    if not report.chain_checked:
        print(f"{report.path}: sealed (key id {header.seal.get('key_id') if header.seal else '?'}): "
              "the chain was not checked; give --key KEYFILE to check it")
    verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
    if key is not None and report.ok:
        verdict += f", sealed with key {key.key_id}"
    print(f"{report.path}: {report.records} records, {verdict}")
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_repair(args: argparse.Namespace) -> int:
    from .recording import Note, RecordWriter, RecordingReader
    from .recording.chain import SealKey
    from .recording.encode import END_SEAL_TEXT

    key = SealKey.from_file(args.seal_key) if args.seal_key else None
    with RecordingReader(args.file, errors="skip", key=key) as reader:
        last = None
        for record in reader:
            last = record
        torn = reader.torn
        sealed = reader.header.seal is not None
    if torn is None and key is not None and sealed and not (isinstance(last, Note) and last.text == END_SEAL_TEXT):
        RecordWriter.append_to(args.file, seal_key=key).close()  # close seals the end
        print(f"{args.file}: sealed the end its writer did not reach")
        return EXIT_OK
    if torn is None:
        print(f"{args.file}: last line is complete; nothing to repair")
        return EXIT_OK
    RecordWriter.append_to(args.file, repair=True, seal_key=key).close()
    print(f"{args.file}: truncated the torn last line ({torn.size} bytes at offset {torn.offset});"
          " a note records the repair")
    return EXIT_OK


def cmd_rechain(args: argparse.Namespace) -> int:
    from .recording.chain import SealKey
    from .recording.rechain import rechain

    key = SealKey.from_file(args.seal_key) if args.seal_key else None
    _check_new_output(args.output)
    result = rechain(args.input, args.output, seal_key=key, how=args.how)
    print(f"{args.output}: {result.records} records rechained from {args.input}"
          f" (final hash {result.source_hash}){f', {result.renumbered} renumbered' if result.renumbered else ''}"
          f"{f', sealed with key {key.key_id}' if key else ''}")
    return EXIT_OK


def cmd_edit(args: argparse.Namespace) -> int:
    import shlex
    import shutil
    import subprocess
    import tempfile

    from .recording.chain import SealKey
    from .recording.rechain import rechain

    key = SealKey.from_file(args.seal_key) if args.seal_key else None
    _check_new_output(args.output)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    command = shlex.split(editor)
    if not command or shutil.which(command[0]) is None:
        raise UsageError(f"editor {editor!r} not found; set VISUAL or EDITOR")
    with tempfile.TemporaryDirectory(prefix="qmprr-edit-") as folder:
        copy = os.path.join(folder, os.path.basename(args.input))
        try:
            shutil.copyfile(args.input, copy)
        except OSError as exc:
            raise UsageError(f"{args.input}: cannot read: {exc.strerror}") from None
        os.chmod(copy, 0o600)
        with open(copy, "rb") as f:
            before = f.read()
        status = subprocess.call([*command, copy])
        if status != 0:
            print(f"qmprr: the editor exited with status {status}; nothing written", file=sys.stderr)
            return EXIT_PROBLEMS
        with open(copy, "rb") as f:
            after = f.read()
        if after == before:
            print(f"{args.input}: unchanged; {args.output} not written")
            return EXIT_OK
        result = rechain(copy, args.output, seal_key=key, how="edited")
    print(f"{args.output}: {result.records} records, edited from {args.input}"
          f"{f', sealed with key {key.key_id}' if key else ''}")
    return EXIT_OK


def _check_new_output(path: str) -> None:
    from .errors import RecordingError

    if os.path.lexists(path):
        raise RecordingError(f"{path}: file exists; recordings are never overwritten, choose another name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RecordingError(f"{path}: folder {folder} does not exist")


def _service_options(args: argparse.Namespace) -> ServiceOptions:
    from .recording import Redactor, SyncPolicy
    from .recording.chain import SealKey
    from .server import Limits
    from .recording.rotate import Rotation
    from .service import ServiceOptions
    from .session import Policy

    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label takes KEY=VALUE, not {item!r}")
        labels[key] = value
    if (args.socket is None) == (args.socket_fd is None):
        raise UsageError("give --socket PATH or --socket-fd N (an inherited listening socket), one of them")
    if args.socket_fd is not None and args.socket_fd < 3:
        raise UsageError(f"--socket-fd {args.socket_fd}: must be an inherited fd, 3 or more")
    limits = Limits(
        output_budget=args.client_output_budget,
        max_clients=args.max_clients,
        max_message=args.max_message,
        debug_max_message=args.debug_max_message,
    )
    return ServiceOptions(
        limits=limits,
        record=args.record,
        socket=args.socket,
        socket_fd=args.socket_fd,
        debug_socket=args.debug_socket,
        sync=SyncPolicy(args.sync),
        policy=Policy.build(deny=args.deny, allow=args.allow),
        tx_idle_timeout=args.tx_timeout,
        labels=labels,
        seal_key=SealKey.from_file(args.seal_key) if args.seal_key else None,
        redactor=Redactor(keep_input=args.keep_input),
        rotation=Rotation(size=args.rotate_size, age=args.rotate_age, compress=args.compress,
                          keep=args.keep, keep_age=args.keep_age),
    )


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
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


def cmd_launch(args: argparse.Namespace) -> int:
    from .service import run_launch

    argv = list(args.qemu_argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if args.monitor_socket is not None and not args.keep_vm:
        raise UsageError("--monitor-socket goes with --keep-vm (without it QEMU's monitor has no path)")
    keep = {"keep_vm": args.keep_vm, "monitor_socket": args.monitor_socket}
    if args.domain is not None:
        if argv:
            raise UsageError("give either --domain XML or a QEMU command line after '--', not both")
        from .domain import build_launch

        spec = build_launch(args.domain, ignore_unsupported=args.ignore_unsupported)
        for warning in spec.warnings:
            print(f"qmprr: warning: {warning}", file=sys.stderr)
        options = _service_options(args)
        return _run_async(run_launch(spec.argv, options, env=spec.env, domain_xml=spec.xml, **keep))
    if not argv:
        raise UsageError("give the QEMU command line after '--' (e.g. -- qemu-system-x86_64 -machine none), or --domain XML")
    return _run_async(run_launch(argv, _service_options(args), **keep))


def cmd_proxy(args: argparse.Namespace) -> int:
    from .service import run_proxy

    if args.upstream is None and args.reattach is None:
        raise UsageError("give --upstream QEMU_QMP_SOCKET, or --reattach RECORDING (from 'launch --keep-vm')")
    return _run_async(run_proxy(args.upstream, _service_options(args), reattach=args.reattach))


def cmd_inject(args: argparse.Namespace) -> int:
    import json

    from . import codec
    from .client import ClientError, QmpClient, ReplyTimeout

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


def _pairs(items: list[str], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} takes KEY=VALUE, not {item!r}")
        out[key] = value
    return out


#: Largest --argv-file read (a QEMU command line is a few KiB).
MAX_ARGV_FILE_BYTES = 1024 * 1024


def check_replay_files(args: argparse.Namespace) -> None:
    """Refuse unusable inputs and outputs of ``replay`` before anything starts (not after the replay)."""
    from .files import check_output, read_text_limited

    if args.argv_file is not None:
        text = read_text_limited(args.argv_file, MAX_ARGV_FILE_BYTES, option="--argv-file",
                                 what="QEMU command line")
        if "\0" in text:
            raise UsageError(f"--argv-file {args.argv_file}: holds a NUL byte, which no argument can")
        if not any(line.strip() for line in text.splitlines()):
            raise UsageError(f"--argv-file {args.argv_file}: no QEMU command line in it"
                             " (one argument per line, the binary first)")
    if args.report is not None:
        check_output(args.report, option="--report", inputs=[args.file])
    if args.record is not None:
        check_output(args.record, option="--record", exist_ok=False)


def _segment_start(path: str, number: int) -> int:
    """The seq of segment *number*'s header in the set *path* stands for."""
    from .recording import RecordingReader, sets

    for file in sets.resolve(path):
        parsed = sets.parse(file)
        if parsed is not None and parsed[1] == number:
            with RecordingReader(file, one_file=True) as reader:
                return reader.header.seq
    raise UsageError(f"{path}: --from-segment {number}: no such segment (give a set: its folder or first segment)")


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay.engine import ReplayOptions
    from .replay.normalize import Normalizer, load_rules
    from .replay.run import RunOptions
    from .replay.safety import PathMap

    check_replay_files(args)

    try:
        path_map = PathMap.parse(args.map_path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    normalizer = Normalizer()
    if args.rules:
        normalizer = normalizer.with_rules(load_rules(args.rules))
    pace = None
    if args.pace != "asap":
        try:
            pace = 1.0 if args.pace == "recorded" else float(args.pace)
        except ValueError:
            raise UsageError(f"--pace takes asap, recorded or a speed factor, not {args.pace!r}") from None
        if not 0 < pace < float("inf"):  # nan and inf too
            raise UsageError(f"--pace factor must be a positive number, not {args.pace!r}")
    options = ReplayOptions(
        keep_going=args.keep_going,
        until=args.until,
        from_seq=_segment_start(args.file, args.from_segment) if args.from_segment is not None else None,
        only_src=tuple(args.only_src),
        pace=pace,
        allow_unsafe=args.allow_unsafe,
        path_map=path_map,
        secrets=_pairs(args.secret, "--secret"),
        normalizer=normalizer,
        event_timeout=args.event_timeout,
        host_differences=args.host_differences,
    )
    run = RunOptions(
        target=args.target,
        qemu=args.qemu,
        argv_file=args.argv_file,
        domain=args.domain,
        ignore_unsupported=args.ignore_unsupported,
        workdir=args.workdir,
        keep_workdir=args.keep_workdir,
        record=args.record,
        report=args.report,
        progress=sys.stderr.isatty(),
    )
    return _run_async(_replay_main(args.file, run, options))


async def _replay_main(path: str, run: RunOptions, options: ReplayOptions) -> int:
    from .replay.run import run_replay

    report = await run_replay(path, run, options)
    return EXIT_OK if report.reproduced else EXIT_PROBLEMS


def cmd_fake(args: argparse.Namespace) -> int:
    from .replay.normalize import Normalizer, load_rules

    normalizer = Normalizer()
    if args.rules:
        normalizer = normalizer.with_rules(load_rules(args.rules))
    return _run_async(_fake_main(args, normalizer))


async def _fake_main(args: argparse.Namespace, normalizer: Normalizer) -> int:
    import asyncio
    import signal

    from .fake import FakeQemu

    fake = FakeQemu.from_recording(args.file, mode=args.mode, reuse=args.reuse, normalizer=normalizer,
                                   external_events=args.external_events)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await fake.serve_unix(args.socket)
    print(f"qmprr: fake QEMU serving {args.file} ({args.mode}) on {args.socket}", file=sys.stderr, flush=True)
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    if not args.keep_serving:
        waits.append(asyncio.ensure_future(fake.wait_session_end()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    await fake.close()
    report = fake.report()
    for line in report.lines():
        print(f"qmprr fake: {line}", file=sys.stderr)
    return EXIT_OK if report.ok(args.mode) else EXIT_PROBLEMS


# -- minimize (issue 12): a thin handler; the logic is in replay/minimize.py ---


def cmd_minimize(args: argparse.Namespace) -> int:
    from .replay.engine import ReplayOptions
    from .replay.minimize import Criterion, Settings, parse_budget, run_minimize
    from .replay.run import RunOptions

    try:
        budget = parse_budget(args.budget)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    settings = Settings(
        run=RunOptions(target=args.target, qemu=args.qemu),
        replay=ReplayOptions(event_timeout=args.event_timeout),
        criterion=Criterion(error_class=args.error_class, event=args.event, predicate=args.predicate),
        jobs=args.jobs or os.cpu_count() or 1, budget=budget, argv=args.argv, progress=sys.stderr.isatty(),
    )
    return _run_async(run_minimize(args.file, args.output, settings))


def cmd_bench_proxy(args: argparse.Namespace) -> int:
    from .bench import proxy

    proxy.run(commands=args.commands, rounds=args.rounds)
    return EXIT_OK


def cmd_bench_analysis(args: argparse.Namespace) -> int:
    from .bench import analysis

    analysis.run(records=args.records, folder=args.dir)
    return EXIT_OK


def cmd_bench_replay(args: argparse.Namespace) -> int:
    from .bench import replay

    replay.run(exchanges=args.exchanges, commands=args.commands, rounds=args.rounds, only=args.only)
    return EXIT_OK


def cmd_bench_fleet(args: argparse.Namespace) -> int:
    from .bench import fleet

    fleet.run(recordings=args.recordings, records=args.records, folder=args.dir, baseline_src=args.baseline_src)
    return EXIT_OK


def cmd_bench_log(args: argparse.Namespace) -> int:
    from .bench import log

    log.run(records=args.records, always_records=args.always_records, folder=args.dir)
    return EXIT_OK


# -- parser ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        epilog="A sealed recording's chain is keyed: without --key it is not checked (said so). "
        "With --key, verify proves the recording was written by a holder of the key: the header "
        "names the key, every link matches, the end seal is there. "
        "Exit status: 0 clean, 1 problems found (each printed with its line; with --key also: not "
        "sealed, sealed with another key, no end seal), 2 unreadable, not a recording, bad key file.",
    )
    p.add_argument("file", help="recording (.jsonl, .jsonl.zst), or a segment set (its folder or first segment)")
    p.add_argument("--key", metavar="KEYFILE", help="check the seal with this key (the file given to --seal-key)")
    p.add_argument("--since", metavar="SEGMENT",
                   help="a set: verify from this segment (its file name or number) on, e.g. the last one verified")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "rechain",
        help="give an edited recording a new, valid chain that names the original",
        description="Read IN (its chain may be broken by an intended edit; every line must still be a "
        "record), renumber seq if lines were deleted or inserted (and the cmd of replies and fds with "
        "it), and write OUT with a new chain whose header says derived_from: the original file, its "
        "final hash and SHA-256, and how (edited). Redaction applies again.",
        epilog="Exit status: 0 written; 2 IN cannot be rechained (the line is named), OUT exists, bad key file.",
    )
    p.add_argument("input", metavar="IN", help="recording to rechain")
    p.add_argument("output", metavar="OUT", help="new recording (must not exist)")
    p.add_argument("--seal-key", metavar="KEYFILE", help="seal OUT with this key")
    p.add_argument("--how", default="edited", help="what was done, for the header (default: edited)")
    p.set_defaults(func=cmd_rechain)

    p = sub.add_parser(
        "edit",
        help="edit a recording in $EDITOR, then rechain it into a new file",
        description="Copy IN to a private temporary file, open it in $VISUAL or $EDITOR (default vi), "
        "and when the editor exits successfully write the result to OUT as 'qmprr rechain' does. IN "
        "is never changed.",
        epilog="Exit status: 0 written (or unchanged: nothing written); 1 the editor failed; 2 the edited "
        "text cannot be rechained, OUT exists, no editor, bad key file.",
    )
    p.add_argument("input", metavar="IN", help="recording to edit")
    p.add_argument("output", metavar="OUT", help="new recording (must not exist)")
    p.add_argument("--seal-key", metavar="KEYFILE", help="seal OUT with this key")
    p.set_defaults(func=cmd_edit)

    from .analysis.commands import register as register_analysis
    from .importers.commands import add_seal_key_option

    register_analysis(sub)

    p = sub.add_parser(
        "repair",
        help="truncate a torn last line left by a crash",
        description="Truncate an incomplete last line (a writer crashed mid-record) and "
        "append a note that says so. Complete records are never touched. A sealed recording "
        "needs its key (--seal-key); with it, a crashed one also gets its end seal.",
        epilog="Exit status: 0 repaired or nothing to repair; 2 unreadable, sealed and no key, bad key file.",
    )
    p.add_argument("file", help="recording (.jsonl)")
    p.add_argument("--seal-key", metavar="KEYFILE", help="the key a sealed recording was written with")
    p.set_defaults(func=cmd_repair)

    service_epilog = (
        "Sockets are created with mode 0600. Debug clients' commands are recorded with role "
        "'debug' and taint the recording; the default policy refuses them quit (QMP and HMP). "
        "Proxy-local commands: qmprr-transaction-begin {\"label\": ...} and "
        "qmprr-transaction-end hold the channel for one client; qmprr-detach keeps a client's "
        "commands running after it leaves (otherwise those not yet sent are withdrawn)."
    )

    def add_service_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--record", required=True, metavar="FILE", help="recording to write (must not exist)")
        p.add_argument("--socket", metavar="PATH", help="QMP socket for the management application")
        p.add_argument("--socket-fd", type=int, metavar="N",
                       help="serve the management application on the listening UNIX socket inherited as fd N "
                       "(instead of --socket; its clients may pass fds with commands, SCM_RIGHTS)")
        p.add_argument("--debug-socket", metavar="PATH", help="QMP socket for injected (debug) commands")
        p.add_argument("--sync", choices=("always", "batch", "none"), default="batch",
                       help="when records are forced to disk (default batch: at most every 100 ms)")
        p.add_argument("--deny", action="append", default=[], metavar="CMD",
                       help="refuse CMD (glob; hmp:WORD for HMP) to debug clients; repeatable")
        p.add_argument("--allow", action="append", default=[], metavar="CMD",
                       help="permit CMD to debug clients even if denied by default; repeatable")
        p.add_argument("--tx-timeout", type=seconds, default=30.0, metavar="SECONDS",
                       help="abort a transaction idle this long (default 30)")
        p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                       help="label stored in the recording's header; repeatable")
        add_seal_key_option(p)
        p.add_argument("--keep-input", action="store_true",
                       help="log the first bytes of unparsable client input as text (default: only their "
                       "SHA-256 and length, since they may hold a secret)")
        p.add_argument("--max-clients", type=count, default=64, metavar="N",
                       help="clients connected at once per socket; more are refused (default 64)")
        p.add_argument("--client-output-budget", type=size, default="8M", metavar="SIZE",
                       help="bytes queued to a client that does not read before it is disconnected "
                       "(default 8M; K, M, G suffixes are powers of 1024)")
        p.add_argument("--max-message", type=size, default="8M", metavar="SIZE",
                       help="largest message from a primary client (default 8M)")
        p.add_argument("--debug-max-message", type=size, default="16K", metavar="SIZE",
                       help="largest message from a debug client (default 16K: QEMU parses big "
                       "arguments slowly, holding the wire for everyone)")
        g = p.add_argument_group("segments (any of these records a set NAME.000001.jsonl, ...; SIGHUP rotates)")
        g.add_argument("--rotate-size", type=size, metavar="SIZE", help="start a new segment at this size (64M, 1G)")
        g.add_argument("--rotate-age", type=duration, metavar="DURATION",
                       help="start a new segment after this long (30s, 15m, 6h, 1d)")
        g.add_argument("--compress", choices=("zstd",), help="compress closed segments in the background")
        g.add_argument("--keep", type=count, metavar="N", help="keep the newest N segments (the live one included)")
        g.add_argument("--keep-age", type=duration, metavar="DURATION",
                       help="delete closed segments older than this")

    p = sub.add_parser(
        "launch",
        help="start QEMU with a private monitor, record, and serve QMP sockets",
        description="Start QEMU (the command line after '--') with a private QMP monitor, record "
        "every exchange to FILE, and serve QMP on --socket (and --debug-socket). Exits with "
        "QEMU's exit status. SIGINT/SIGTERM: quit QEMU through the channel (logged); if that "
        "cannot go through (e.g. the log cannot be written) or QEMU lingers 10 s, SIGTERM, then "
        "SIGKILL 10 s later. If qmprr itself is killed, QEMU is killed with it (parent-death "
        "signal), unless --keep-vm. Refused: -daemonize (QEMU would escape qmprr), and -runas "
        "without --keep-vm (it clears the parent-death signal).",
        epilog=service_epilog + " Example: qmprr launch --record s.jsonl --socket /tmp/q.sock "
        "--debug-socket /tmp/dbg.sock -- qemu-system-x86_64 -machine none -display none. "
        "Surviving a crash of qmprr: qmprr launch --keep-vm --record s.jsonl --socket /tmp/q.sock "
        "-- qemu-system-x86_64 ...; after qmprr died: qmprr proxy --reattach s.jsonl --record "
        "s-2.jsonl --socket /tmp/q.sock",
    )
    add_service_options(p)
    p.add_argument("--domain", metavar="DOMAIN.xml",
                   help="build the QEMU command line from libvirt domain XML (see 'qmprr domain argv')")
    p.add_argument("--ignore-unsupported", action="store_true",
                   help="with --domain: warn about unsupported XML instead of failing")
    p.add_argument("--keep-vm", action="store_true",
                   help="QEMU survives if qmprr is killed: its monitor listens on a socket (mode 0600) "
                   "whose path is in the header, for 'qmprr proxy --reattach FILE'")
    p.add_argument("--monitor-socket", metavar="PATH",
                   help="with --keep-vm: QEMU's monitor socket (default: FILE without .jsonl + .monitor.sock)")
    p.add_argument("qemu_argv", nargs=argparse.REMAINDER, metavar="-- QEMU ARGV...")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser(
        "proxy",
        help="attach to a running QEMU's QMP socket, record, and serve QMP sockets",
        description="Connect to a running QEMU's QMP socket (started with "
        "-qmp unix:PATH,server=on,wait=off), record every exchange, serve QMP to clients. "
        "Runs until QEMU closes the monitor or SIGINT/SIGTERM (QEMU keeps running). "
        "--reattach OLD takes back the monitor of a QEMU started by 'launch --keep-vm' whose "
        "recorder died: it connects to the monitor socket named in OLD's header and starts a new "
        "recording (a segment) whose header names OLD and the hash of its last complete record "
        "(a torn last line is ignored). OLD is not changed.",
        epilog=service_epilog + " Example: qmprr proxy --reattach s.jsonl --record s-2.jsonl "
        "--socket /tmp/q.sock (a segment can be reattached again: --reattach s-2.jsonl ...).",
    )
    p.add_argument("--upstream", metavar="QEMU_QMP_SOCKET",
                   help="QEMU's QMP socket (with --reattach: instead of the one the header names)")
    p.add_argument("--reattach", metavar="RECORDING",
                   help="continue RECORDING (from 'launch --keep-vm' or an earlier --reattach) in a new segment")
    add_service_options(p)
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser(
        "inject",
        help="send one command to a QMP socket and print the reply",
        description="Connect to SOCKET (a qmprr debug socket, or any QMP socket), negotiate, send "
        "one command, print the reply. COMMAND is a JSON object ('{\"execute\": \"query-status\"}') "
        "or a bare command name (query-status).",
        epilog="Exit status: 0 QEMU returned, 1 QEMU answered an error, 2 cannot connect or talk, "
        "or no reply within --timeout.",
    )
    p.add_argument("socket", metavar="SOCKET")
    p.add_argument("qmp_command", nargs="?", metavar="COMMAND")
    p.add_argument("--hmp", metavar="TEXT", help="send an HMP command line (human-monitor-command)")
    p.add_argument("--json", action="store_true", help="print the raw reply as one JSON line")
    p.add_argument("--timeout", type=seconds, default=30.0,
                   help="seconds to wait for the reply (default 30); when it expires the command may "
                   "still run, and its reply goes to the recording")
    p.add_argument("--cancel-on-timeout", action="store_true",
                   help="when --timeout expires, withdraw the command if it has not reached QEMU yet")
    p.set_defaults(func=cmd_inject)

    p = sub.add_parser(
        "replay",
        help="send a recording's commands again and compare the replies and events",
        description="Replay a recording's commands, in recorded order, against a real QEMU started "
        "from the recording's argv (--target qemu), a running QEMU (--target socket:PATH) or the "
        "fake serving the recording (--target fake). Replies are compared after normalization "
        "(same kind, same error class, equal data); events are compared as a set per window "
        "between commands. A recording is untrusted: QEMU runs in a sandbox (QEMU's seccomp "
        "filter; the host read-only but for the work folder and --map-path roots; loopback only), "
        "and commands that run host programs or reach host paths outside those roots are refused "
        "and reported; fds get a placeholder, redacted secrets (without --secret) are skipped. "
        "--allow-unsafe turns the sandbox and the checks off.",
        epilog="Exit status: 0 reproduced with no divergence, 1 diverged, refused or nothing replayed, "
        "2 could not run.",
    )
    p.add_argument("file", help="recording to replay")
    p.add_argument("--target", default="qemu", help="qemu (default), fake, or socket:PATH")
    p.add_argument("--qemu", metavar="BINARY", help="QEMU binary instead of the recorded one")
    p.add_argument("--argv-file", metavar="FILE", help="QEMU command line, one argument per line")
    p.add_argument("--domain", metavar="XML", help="build the QEMU command line from libvirt domain XML")
    p.add_argument("--ignore-unsupported", action="store_true",
                   help="--domain: drop unsupported parts of the XML with a warning")
    p.add_argument("--host-differences", choices=("warn", "diverge"), default="warn",
                   help="differences that depend on the host (CPU model expansion, modules, the monitor): "
                   "warnings (default) or divergences")
    p.add_argument("--workdir", metavar="DIR",
                   help="folder QEMU runs in and may write (relative paths resolve there); default: a fresh temporary one")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary work folder and print where it is")
    p.add_argument("--keep-going", action="store_true", help="do not stop at the first divergence")
    p.add_argument("--until", type=int, metavar="SEQ", help="stop after the command recorded at SEQ")
    p.add_argument("--from-segment", type=count, metavar="N",
                   help="a set: compare from segment N on; the commands before it are still replayed first"
                   " (QEMU needs the state they built) but not compared (status 'prelude')")
    p.add_argument("--only-src", action="append", default=[], metavar="NAME",
                   help="replay only commands from this client (repeatable); others are skipped")
    p.add_argument("--pace", default="asap", help="asap (default), recorded, or a speed FACTOR (2 = twice as fast)")
    p.add_argument("--rules", metavar="FILE", help="normalization rules (TOML), on top of the built-in ones")
    p.add_argument("--map-path", action="append", default=[], metavar="FROM=TO",
                   help="rewrite recorded paths under FROM to TO (argv and arguments); TO is an allowed root")
    p.add_argument("--secret", action="append", default=[], metavar="ID=VALUE",
                   help="value of a redacted secret (by object id, protocol or command)")
    p.add_argument("--allow-unsafe", action="store_true",
                   help="no sandbox and no checks: run the recording's command line and commands as they are")
    p.add_argument("--event-timeout", type=seconds, default=3.0, metavar="SECONDS",
                   help="how long to wait for a window's recorded events (default 3)")
    p.add_argument("--report", metavar="FILE.json", help="write every step as JSON")
    p.add_argument("--record", metavar="OUT.jsonl", help="record the replay itself through the channel")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "minimize",
        help="shrink a failing recording to a smallest one that still fails the same way",
        description="Delta debugging (ddmin) over FILE's commands: each try replays a candidate as "
        "'qmprr replay' does (--target qemu: a fresh sandboxed QEMU from the recorded argv), up to --jobs "
        "at once. Dependencies are kept together: qmp_capabilities, a blockdev-add/device_add/object-add "
        "with every command naming its node or id, a job's start with its job-* commands, a transaction "
        "whole. 'Still fails' is the original's first divergence (command and differences) unless "
        "--error-class, --event or --predicate say otherwise (all given must hold). OUT is a normal "
        "recording whose header's derived_from names FILE's final hash and how it was reduced.",
        epilog="Example: qmprr minimize bug.jsonl -o small.jsonl --target qemu --budget 200 --argv. "
        "Exit status: 0 minimized (OUT written), 1 the original does not fail, 2 could not run.",
    )
    p.add_argument("file", help="recording to minimize (one uncompressed .jsonl)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="minimized recording (must not exist)")
    p.add_argument("--target", default="qemu", help="qemu (default), fake, or socket:PATH")
    p.add_argument("--qemu", metavar="BINARY", help="QEMU binary instead of the recorded one")
    p.add_argument("--error-class", metavar="NAME", help="still failing: some reply is an error of class NAME")
    p.add_argument("--event", metavar="NAME", help="still failing: QEMU still sends event NAME")
    p.add_argument("--predicate", metavar="CMD",
                   help="still failing: CMD, given the replay report as JSON on stdin, exits 0")
    p.add_argument("--jobs", type=count, metavar="N", help="tries at once (default: the number of cores)")
    p.add_argument("--budget", default="1000", metavar="N|TIME",
                   help="stop after N tries or TIME (60s, 5m) with the best so far (default 1000 tries)")
    p.add_argument("--argv", action="store_true", help="also drop QEMU options not needed to reproduce")
    p.add_argument("--event-timeout", type=seconds, default=3.0, metavar="SECONDS",
                   help="how long each try waits for a window's recorded events (default 3)")
    p.set_defaults(func=cmd_minimize)

    p = sub.add_parser(
        "fake",
        help="serve a recording as a fake QEMU on a QMP socket",
        description="Serve FILE as QEMU would: the recorded greeting, negotiation, then the recorded "
        "replies and events. strict: exactly the recorded sequence; ordered: recorded order, "
        "commands may be skipped; lenient: consume-once matching by name and normalized arguments "
        "(--reuse lets consumed commands repeat). Unmatched commands get a QMP error saying what "
        "was expected. Exits when the first client disconnects (unless --keep-serving) with a report.",
        epilog="Exit status: 0 all matched (strict: and all used), 1 otherwise, 2 could not run.",
    )
    p.add_argument("file", help="recording to serve")
    p.add_argument("--socket", required=True, metavar="PATH", help="QMP socket to create (mode 0600)")
    p.add_argument("--mode", choices=("strict", "ordered", "lenient"), default="strict")
    p.add_argument("--reuse", action="store_true", help="lenient: answer consumed commands again")
    p.add_argument("--rules", metavar="FILE", help="normalization rules (TOML) for argument matching")
    p.add_argument("--keep-serving", action="store_true", help="serve until SIGINT/SIGTERM, not one client")
    p.add_argument("--external-events", action="store_true",
                   help="also send events no command caused (libvirt's signal: SHUTDOWN), where they were recorded")
    p.set_defaults(func=cmd_fake)

    p = sub.add_parser("bench", help="benchmarks that print ratios against a same-run baseline")
    bench = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    b = bench.add_parser(
        "log",
        help="recording write and read+verify throughput",
        description="Write a synthetic recording under each sync policy, then read and verify "
        "it, against a plain json.loads loop over the same file; and the reader's peak memory.",
    )
    b.add_argument("--records", type=count, default=1_000_000, help="records to write (default 1,000,000)")
    b.add_argument("--always-records", type=count, default=2_000,
                   help="records to write with sync=always, one fsync each (default 2,000)")
    b.add_argument("--dir", help="folder for the temporary files (default: the system's)")
    b.set_defaults(func=cmd_bench_log)
    b = bench.add_parser(
        "proxy",
        help="client round-trip cost of the recording proxy",
        description="Time query-status round trips four ways against one QEMU: a raw socket client "
        "and qemu.qmp's QMPClient, straight and through 'qmprr proxy'; print medians and ratios.",
    )
    b.add_argument("--commands", type=count, default=2000, help="round trips per way (default 2,000)")
    b.add_argument("--rounds", type=count, default=10, help="interleaved rounds (default 10)")
    b.set_defaults(func=cmd_bench_proxy)
    b = bench.add_parser(
        "replay",
        help="fake QEMU throughput, and replay's cost against a real QEMU",
        description="(a) fake QEMU throughput with a pipelining raw client, against a real QEMU and a "
        "minimal responder; (b) replaying N commands against a real QEMU vs a raw client.",
    )
    b.add_argument("--exchanges", type=count, default=20_000, help="pipelined exchanges for (a)")
    b.add_argument("--commands", type=count, default=10_000, help="commands replayed for (b)")
    b.add_argument("--rounds", type=count, default=3)
    b.add_argument("--only", choices=("fake", "replay"))
    b.set_defaults(func=cmd_bench_replay)

    b = bench.add_parser(
        "analysis",
        help="stats time and memory, show --json throughput against jq",
        description="Build a recording of --records records, then print from one run: stats wall "
        "time and peak memory (a child process), 'show --command ... --json' throughput, and the "
        "same selection counted with jq over the same file.",
    )
    b.add_argument("--records", type=count, default=1_000_000, help="records to write (default 1,000,000)")
    b.add_argument("--dir", help="folder for the temporary file (default: the system's)")
    b.set_defaults(func=cmd_bench_analysis)

    b = bench.add_parser(
        "fleet",
        help="qmprr query over a synthetic fleet (JSONL and Parquet) against jq and per-file stats",
        description="Write a synthetic fleet, then time one question (per-command count, errors, "
        "p50/p99) with qmprr query over the JSONL, over its Parquet export, with a jq pipeline and "
        "(--baseline-src) an older qmprr's stats per file; print ratios, sizes, peak memory.",
    )
    b.add_argument("--recordings", type=count, default=200, help="recordings (default 200)")
    b.add_argument("--records", type=count, default=1_000_000, help="records in all (default 1,000,000)")
    b.add_argument("--baseline-src", metavar="DIR", help="an older qmprr source tree for the stats baseline")
    b.add_argument("--dir", help="folder for the temporary files (default: the system's)")
    b.set_defaults(func=cmd_bench_fleet)

    from .domain.commands import register as register_domain
    from .importers.commands import register as register_import

    register_domain(sub)
    register_import(sub)
    from .libvirt.cli import register as register_libvirt

    register_libvirt(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Options may come between a positional and the next one (inject SOCK --json CMD).
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "func", None) is cmd_inject and args.qmp_command is None and len(extra) == 1:
        args.qmp_command = extra[0]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        status = int(args.func(args))
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


if __name__ == "__main__":
    sys.exit(main())
