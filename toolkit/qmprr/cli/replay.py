"""``qmprr replay`` and ``qmprr fake``: a recording's commands sent again, or served as QEMU would."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .base import EXIT_OK, EXIT_PROBLEMS, UsageError, choice, command, count, run_async, seconds
from .options import FakeMode, add_domain, add_listen_any, add_replay, add_rules, normalizer, replay_options

if TYPE_CHECKING:
    from ..replay.engine import ReplayOptions
    from ..replay.normalize import Normalizer
    from ..replay.run import RunOptions


#: Largest --argv-file read (a QEMU command line is a few KiB).
MAX_ARGV_FILE_BYTES = 1024 * 1024


def check_replay_files(args: argparse.Namespace) -> None:
    """Refuse unusable inputs and outputs of ``replay`` before anything starts (not after the replay)."""
    from ..files import check_output, read_text_limited

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
    from ..recording import RecordingReader, sets

    for file in sets.resolve(path):
        parsed = sets.parse(file)
        if parsed is not None and parsed[1] == number:
            with RecordingReader(file, one_file=True) as reader:
                return reader.header.seq
    raise UsageError(f"{path}: --from-segment {number}: no such segment (give a set: its folder or first segment)")


def cmd_replay(args: argparse.Namespace) -> int:
    from ..replay.run import RunOptions

    check_replay_files(args)

    pace = None
    if args.pace != "asap":
        try:
            pace = 1.0 if args.pace == "recorded" else float(args.pace)
        except ValueError:
            raise UsageError(f"--pace takes asap, recorded or a speed factor, not {args.pace!r}") from None
        if not 0 < pace < float("inf"):  # nan and inf too
            raise UsageError(f"--pace factor must be a positive number, not {args.pace!r}")
    options = replay_options(
        args,
        keep_going=args.keep_going,
        until=args.until,
        from_seq=_segment_start(args.file, args.from_segment) if args.from_segment is not None else None,
        only_src=tuple(args.only_src),
        pace=pace,
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
        scratch_images=args.scratch_images,
    )
    return run_async(_replay_main(args.file, run, options))


async def _replay_main(path: str, run: RunOptions, options: ReplayOptions) -> int:
    from ..replay.run import run_replay

    report = await run_replay(path, run, options)
    return EXIT_OK if report.reproduced else EXIT_PROBLEMS


def cmd_fake(args: argparse.Namespace) -> int:
    return run_async(_fake_main(args, normalizer(args)))


async def _fake_main(args: argparse.Namespace, norm: Normalizer) -> int:
    import asyncio
    import signal

    from ..fake import FakeQemu

    fake = FakeQemu.from_recording(args.file, mode=args.mode.value, reuse=args.reuse, normalizer=norm,
                                   external_events=args.external_events, chaos=_chaos(args))
    served: Any = fake
    if args.forward_unmatched or args.upstream or args.record:  # the hybrid fake: qmprr.fake_forward
        from ..fake_forward import hybrid_from_options

        if not args.forward_unmatched or not args.record:
            raise UsageError("--upstream and --record go with --forward-unmatched, which needs --record OUT")
        served = hybrid_from_options(fake, args.file, record=args.record, upstream=args.upstream)
        await served.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await served.serve_unix(args.socket, listen_any=args.listen_any)
    print(f"qmprr: fake QEMU serving {args.file} ({args.mode}) on {args.socket}", file=sys.stderr, flush=True)
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    if not args.keep_serving:
        waits.append(asyncio.ensure_future(fake.wait_session_end()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    await served.close()
    from ..fake_forward import finish_report

    hybrid = served.report() if served is not fake else None
    ok = finish_report(fake.report(), hybrid, mode=args.mode.value, report_file=args.report, out=sys.stderr)
    for line in fake.chaos.lines() if fake.chaos is not None else []:
        print(f"qmprr fake: {line}", file=sys.stderr)
    return EXIT_OK if ok else EXIT_PROBLEMS


def _chaos(args: argparse.Namespace) -> Any:
    """``fake --chaos SEED [--chaos-max-delay S]``: the chaos schedule (qmprr.fake_chaos), or None."""
    from ..fake_chaos import DEFAULT_MAX_DELAY, Chaos

    if args.chaos is None:
        if args.chaos_max_delay is not None:
            raise UsageError("--chaos-max-delay needs --chaos SEED")
        return None
    return Chaos(args.chaos, args.chaos_max_delay if args.chaos_max_delay is not None else DEFAULT_MAX_DELAY)


def register(sub: Any) -> None:
    p = command(
        sub, "replay",
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
        examples=["qmprr replay session.jsonl",
                  "qmprr replay session.jsonl --target fake --keep-going --report steps.json",
                  "qmprr replay vm.jsonl --map-path /var/lib/images=$PWD/images --secret sec0=hunter2",
                  "qmprr replay recordings/block.jsonl --scratch-images   # blank disks from the recorded descriptions"],
        exits="0 reproduced with no divergence, 1 diverged, refused or nothing replayed, 2 could not run.",
        func=cmd_replay,
    )
    p.add_argument("file", help="recording to replay")
    add_replay(p)
    p.add_argument("--argv-file", metavar="FILE", help="QEMU command line, one argument per line")
    add_domain(p)
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
    p.add_argument("--report", metavar="FILE.json", help="write every step as JSON")
    p.add_argument("--record", metavar="OUT.jsonl", help="record the replay itself through the channel")
    p.add_argument("--scratch-images", action="store_true",
                   help="replay on blank images made from the recording's image descriptions (format, size, "
                   "cluster size, backing chain) in the work folder, for every described image; without it "
                   "only missing images are made")

    p = command(
        sub, "fake",
        help="serve a recording as a fake QEMU on a QMP socket",
        description="Serve FILE as QEMU would: the recorded greeting, negotiation, then the recorded "
        "replies and events. strict: exactly the recorded sequence; ordered: recorded order, "
        "commands may be skipped; lenient: consume-once matching by name and normalized arguments "
        "(--reuse lets consumed commands repeat). Unmatched commands get a QMP error saying what "
        "was expected. Exits when the first client disconnects (unless --keep-serving) with a report. "
        "--forward-unmatched forwards what the recording cannot answer to a real QEMU and records it.",
        examples=["qmprr fake session.jsonl --socket /tmp/fake.sock &  qmp-shell /tmp/fake.sock",
                  "qmprr fake libvirt-probe.jsonl --socket /tmp/fake.sock --mode lenient --reuse --keep-serving",
                  "qmprr fake lifecycle.jsonl --socket /tmp/q.sock --mode lenient --forward-unmatched --record new.jsonl",
                  "qmprr fake recordings/block.jsonl --socket /tmp/qmp.sock --chaos 7   # chaos mode, seed 7"],
        exits="0 all matched (strict: and all used; forwarding: nothing refused), 1 otherwise, 2 could not run.",
        func=cmd_fake,
    )
    p.add_argument("file", help="recording to serve")
    p.add_argument("--socket", required=True, metavar="PATH",
                   help="QMP socket to create (mode 0600), or tcp:HOST:PORT (unauthenticated: loopback only)")
    add_listen_any(p)
    choice(p, "--mode", FakeMode, FakeMode.STRICT, "how commands are matched (default strict)")
    p.add_argument("--reuse", action="store_true", help="lenient: answer consumed commands again")
    add_rules(p, help="normalization rules (TOML) for argument matching")
    p.add_argument("--keep-serving", action="store_true", help="serve until SIGINT/SIGTERM, not one client")
    p.add_argument("--external-events", action="store_true",
                   help="also send events no command caused (libvirt's signal: SHUTDOWN), where they were recorded")
    p.add_argument("--report", metavar="FILE.json",
                   help="write the whole report as JSON (a terminal shows at most 20 unused commands)")
    p.add_argument("--forward-unmatched", action="store_true",
                   help="the hybrid fake: forward commands the recording cannot answer to a real QEMU, started "
                   "from the recorded command line (sandboxed, as replay does) unless --upstream")
    p.add_argument("--upstream", metavar="SOCKET", help="--forward-unmatched: forward to this running QEMU's QMP socket")
    p.add_argument("--record", metavar="OUT.jsonl",
                   help="--forward-unmatched (required): record what was forwarded (a normal recording)")
    p.add_argument("--chaos", type=int, metavar="SEED",
                   help="chaos mode: move the events a command caused across its reply, delay replies and "
                   "output, cut and glue writes anywhere; the same SEED, the same schedule (printed at the end)")
    p.add_argument("--chaos-max-delay", type=seconds, metavar="SECONDS",
                   help="--chaos: the longest random pause (default 0.02)")
