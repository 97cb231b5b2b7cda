"""The hybrid fake: answer from the recording, forward the rest to a real QEMU.

mitmproxy's server-replay "forward", for QMP (``qmprr fake --forward-unmatched``
and the pytest plugin's ``new_episodes``). A command the recording answers
(the fake's matching, its mode and matchers) is answered from it; any other
(never recorded, already consumed, or recorded without a reply) is decided
by the replay policy (:class:`~qmprr.replay.policy.ReplayPolicy`: a command
that would run a host program or reach a host path outside QEMU's work
folder is refused; an fd command gets a placeholder fd) and sent to a real
QEMU through a :class:`~qmprr.channel.Channel`, whose log is the recording
of what was forwarded (the normal format; events the real QEMU sends reach
the clients). That QEMU is started from the recorded command line as
``qmprr replay`` starts it (the local binary, the argv checks, the sandbox,
a fresh work folder; :func:`qmprr.replay.targets.qemu_target`), or is one
already running (``--upstream SOCKET``).

The real QEMU has run only the forwarded commands, not those answered from
the recording: its state is a fresh QEMU's plus theirs.

:class:`HybridReport` says, command by command, where each answer came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, TextIO

import attrs

from . import wire
from .channel import Channel
from .errors import QmprrError
from .fake import FakeQemu, FakeReport, Response, Unmatched, _FakeBackend
from .recording import ABSENT, RecordingReader, Record, sets
from .recording.verify import scan_segment
from .replay.policy import ReplayPolicy
from .replay.safety import PLACEHOLDER_FD, PathMap
from .replay.script import Exchange, Script
from .replay.targets import TargetError, log_factory, qemu_argv, qemu_target, socket_target
from .sandbox import Sandbox, SandboxError, probe
from .server import QmpServer

Source = Literal["recording", "qemu", "refused"]
#: On a terminal, the report shows at most this many unused commands (and forwarded answers).
TERMINAL_LINES = 20
#: Records (client connects, local answers) held until a lazily started QEMU's log exists.
MAX_HELD_RECORDS = 1000


#: The policy for the QEMU :func:`upstream_qemu` starts: in qmprr's network namespace.
SANDBOXED = ReplayPolicy(network=True)


class ForwardError(QmprrError):
    """The hybrid fake cannot reach or start its real QEMU."""


@attrs.define
class Answer:
    """One command a client sent, and where its answer came from."""

    command: str
    source: Source
    seq: int | None = None  # recording: the recorded exchange's seq; qemu: the command's seq in --record
    reason: str | None = None  # why it was not answered from the recording (the near miss), or refused

    def line(self) -> str:
        where = {"recording": "from the recording", "qemu": "from QEMU", "refused": "refused"}[self.source]
        seq = ""
        if self.seq is not None:
            seq = f" (recorded seq {self.seq})" if self.source == "recording" else f" (seq {self.seq} of --record)"
        why = f": {self.reason}" if self.reason else ""
        return f"{where}: {self.command}{seq}{why}"


@attrs.define
class HybridReport:
    """The fake's report, and every answer's source."""

    fake: FakeReport
    answers: list[Answer] = attrs.Factory(list)
    record: str | None = None  # the recording of what was forwarded (written once QEMU was reached)

    def count(self, source: Source) -> int:
        return sum(1 for a in self.answers if a.source == source)

    def ok(self) -> bool:
        """Nothing refused, nothing unmatched: every command had an answer from the recording or QEMU."""
        return not self.fake.unmatched and self.count("refused") == 0

    def summary(self) -> str:
        return (
            f"{self.count('recording')} answer(s) from the recording, {self.count('qemu')} from QEMU"
            f" (forwarded), {self.count('refused')} refused"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "answered_from_recording": self.count("recording"),
            "forwarded_to_qemu": self.count("qemu"),
            "refused": self.count("refused"),
            "record": self.record,
            "answers": [attrs.asdict(a) for a in self.answers],
        }


Upstream = Callable[[], AbstractAsyncContextManager[Channel]]


def continuation(recording: str) -> tuple[str, dict[str, Any]]:
    """Where the segment continuing *recording* (a file or a set) goes, and its link for :func:`log_factory`."""
    last = sets.resolve(recording)[-1]
    scanned = scan_segment(last)
    if scanned.problems or scanned.torn:
        raise ForwardError(f"{last}: cannot continue it: it does not verify (qmprr verify {last})")
    t_offset = 0.0
    with RecordingReader(last, one_file=True) as reader:
        for record in reader:
            t_offset = max(t_offset, record.t)
    header = scanned.header
    link = {
        "recording": header.recording,
        "segment": (header.segment or 1) + 1,
        "previous": {"file": os.path.basename(last), "final_seq": scanned.final_seq, "final_hash": scanned.final_hash},
        "first_seq": scanned.final_seq + 1,
        "t_offset": t_offset,
    }
    return sets.continuation(last), link


def upstream_socket(path: str, record: str, labels: dict[str, str]) -> Upstream:
    """A QEMU someone started, listening on QMP socket *path*; what is forwarded is recorded into *record*."""
    return lambda: socket_target(path, log_factory(record, None, labels))


def upstream_qemu(
    script: Script,
    record: str,
    labels: dict[str, str],
    *,
    qemu: str | None = None,
    link: dict[str, Any] | None = None,
) -> Upstream:
    """A QEMU started from *script*'s recorded command line as ``qmprr replay`` starts one (sandboxed, checked)."""
    if script.header is None or not script.header.qemu_argv:
        raise ForwardError(
            "the recording has no QEMU command line (made with 'qmprr proxy'?): give --upstream SOCKET"
            " of a running QEMU to forward to"
        )

    @contextlib.asynccontextmanager
    async def start() -> AsyncIterator[Channel]:
        try:
            probe()
        except SandboxError as exc:
            raise ForwardError(f"cannot sandbox QEMU: {exc}") from None
        with tempfile.TemporaryDirectory(prefix="qmprr-forward-", ignore_cleanup_errors=True) as workdir:
            try:
                argv = qemu_argv(script, qemu=qemu, argv_file=None, path_map=PathMap(), workdir=workdir)
            except TargetError as exc:  # its hints name replay's options; the fake's way out is --upstream
                text = str(exc).replace(" (use --map-path)", "").replace(" (--allow-unsafe to run it anyway)", "")
                raise ForwardError(f"{text}; to forward anyway, start a QEMU yourself and give --upstream SOCKET") from None
            make_log = log_factory(record, argv, labels, link=link)
            async with qemu_target(argv, make_log, workdir, {"TMPDIR": workdir}, sandbox=Sandbox((workdir,))) as channel:
                yield channel

    return start


class ForwardingBackend(_FakeBackend):
    """The fake's backend, forwarding what the recording cannot answer (see the module docstring).

    With *lazy*, the real QEMU starts at the first forwarded command (and
    nothing is recorded when nothing is forwarded).
    """

    def __init__(self, fake: FakeQemu, upstream: Upstream, policy: ReplayPolicy, *, lazy: bool = True) -> None:
        super().__init__(fake)
        self.upstream = upstream
        self.policy = policy
        self.lazy = lazy
        self.answers: list[Answer] = []
        self.channel: Channel | None = None
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()
        self._held: list[Record] = []
        self._dropped = 0
        self._start_error: str | None = None

    # -- the record: what went through the channel, and what the serve loop said itself

    def record(self, record: Record) -> None:
        super().record(record)
        if self.channel is not None:
            self.channel.record(record)
        elif len(self._held) < MAX_HELD_RECORDS:
            self._held.append(record)
        else:
            self._dropped += 1

    def note(self, text: str, data: dict[str, Any] | None = None) -> None:
        if self.channel is not None:
            self.channel.note(text, data)

    async def open(self) -> Channel:
        """The channel to the real QEMU, started on first use."""
        async with self._lock:
            if self.channel is None:
                if self._start_error is not None:
                    raise ForwardError(self._start_error)
                try:
                    channel = await self._stack.enter_async_context(self.upstream())
                except QmprrError as exc:
                    self._start_error = f"cannot forward to QEMU: {exc}"
                    raise ForwardError(self._start_error) from None
                channel.subscribe("hybrid-fake", deliver=self._deliver)
                for record in self._held:
                    channel.record(record)
                if self._dropped:
                    channel.note(f"{self._dropped} record(s) from before QEMU started were not kept")
                self._held.clear()
                self.channel = channel
            return self.channel

    async def aclose(self) -> None:
        self.channel = None
        await self._stack.aclose()

    def _deliver(self, event: dict[str, Any]) -> bool:
        self._broadcast(event)
        return True

    # -- one command -------------------------------------------------------------

    async def execute(self, msg: dict[str, Any], *, src: str, role: str, client_id: Any, tx: Any) -> dict[str, Any]:
        name = wire.command_name(msg) or ""
        found = self.fake.match(msg)
        if isinstance(found, Response) and found.refused is None:
            self.answers.append(Answer(name, "recording", found.seq))
            for event in found.events_before:
                self._broadcast(event)
            self._after = list(found.events_after)
            return _with_id(found.reply, client_id)
        self._after = []
        near_miss = found.reason if isinstance(found, Unmatched) else found.refused
        decision = self.policy.decide(Exchange(command=name, arguments=msg.get("arguments"), src=src, role=role))
        if not decision.sends:
            self.answers.append(Answer(name, "refused", None, decision.reason))
            raise QmprrError(f"qmprr fake: not in the recording, and not forwarded to QEMU: {decision.reason}")
        try:
            channel = await self.open()
        except ForwardError as exc:
            self.answers.append(Answer(name, "refused", None, str(exc)))
            raise
        out: dict[str, Any] = {"execute": name}
        if decision.arguments is not None:
            out["arguments"] = decision.arguments
        seq = channel.log.next_seq
        placeholder = os.open(PLACEHOLDER_FD, os.O_RDWR) if decision.action == "placeholder" else None
        try:
            reply = await channel.execute(
                out, src=src, role=role, client_id=client_id, fds=(placeholder,) if placeholder is not None else ()
            )
        except QmprrError as exc:  # QEMU went away, or the log cannot be written
            self.answers.append(Answer(name, "refused", None, f"forwarding failed: {exc}"))
            raise
        finally:
            if placeholder is not None:
                os.close(placeholder)
        self.answers.append(Answer(name, "qemu", seq, near_miss))
        return reply


def _with_id(reply: dict[str, Any], client_id: Any) -> dict[str, Any]:
    reply = dict(reply)
    if client_id is not ABSENT:
        reply["id"] = client_id
    return reply


class HybridFake:
    """A :class:`FakeQemu` served with a :class:`ForwardingBackend`: ``serve_unix``, ``close``, ``report``."""

    def __init__(
        self,
        fake: FakeQemu,
        upstream: Upstream,
        *,
        policy: ReplayPolicy | None = None,
        lazy: bool = True,
        record: str | None = None,
    ) -> None:
        self.fake = fake
        self.record = record
        self.backend = ForwardingBackend(fake, upstream, policy or ReplayPolicy(), lazy=lazy)  # default: host network
        self.server = QmpServer(self.backend, limits=fake.limits)

    async def start(self) -> None:
        """Start the real QEMU now unless lazy (so that it cannot start is known before serving)."""
        if not self.backend.lazy:
            await self.backend.open()

    async def serve_unix(self, path: str, *, listen_any: bool = False) -> None:
        await self.server.listen(path, "primary", listen_any=listen_any)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.server.serve(reader, writer, "primary")

    async def wait_session_end(self) -> None:
        await self.fake.wait_session_end()

    async def close(self) -> None:
        """Disconnect the clients, then close the channel and its log and stop the real QEMU."""
        await self.server.close()
        await self.backend.aclose()

    def report(self) -> HybridReport:
        return HybridReport(self.fake.report(), list(self.backend.answers), self.record)



def hybrid_from_options(
    fake: FakeQemu, recording: str, *, record: str, upstream: str | None, lazy: bool = False
) -> HybridFake:
    """``qmprr fake --forward-unmatched``: the hybrid fake for *recording*, forwarding to *upstream* or a new QEMU."""
    if os.path.exists(record):
        raise ForwardError(f"--record {record}: file exists; recordings are never overwritten")
    if not os.path.isdir(os.path.dirname(os.path.abspath(record))):
        raise ForwardError(f"--record {record}: its folder does not exist")
    labels = {"made-by": "qmprr fake --forward-unmatched", "forwarded-from": os.path.basename(recording)}
    if upstream is not None:  # someone else's QEMU, on the host's network
        return HybridFake(fake, upstream_socket(upstream, record, labels), lazy=lazy, record=record)
    source = upstream_qemu(fake.script, record, labels)
    return HybridFake(fake, source, lazy=lazy, record=record, policy=SANDBOXED)


def write_report(path: str, fake: FakeReport, hybrid: HybridReport | None = None) -> None:
    """``--report FILE``: the whole report as JSON (every unused and unmatched command, every answer's source)."""
    from . import codec

    data = fake.to_json()
    if hybrid is not None:
        data["forwarding"] = hybrid.to_json()
    try:
        with open(path, "wb") as f:
            f.write(codec.dumps(data))
            f.write(b"\n")
    except OSError as exc:
        raise QmprrError(f"--report {path}: cannot write: {exc.strerror}") from None


def finish_report(
    fake: FakeReport, hybrid: HybridReport | None, *, mode: str, report_file: str | None, out: TextIO
) -> bool:
    """``qmprr fake``'s report on *out* (capped on a terminal), and ``--report``; True when all went well."""
    limit = TERMINAL_LINES if out.isatty() else None
    for line in fake.lines(limit):
        print(f"qmprr fake: {line}", file=out)
    if hybrid is not None:
        print(f"qmprr fake: {hybrid.summary()}; forwarded commands recorded in {hybrid.record}", file=out)
        shown = hybrid.answers if limit is None else [a for a in hybrid.answers if a.source != "recording"]
        for answer in shown[:limit]:
            print(f"qmprr fake: {answer.line()}", file=out)
        if limit is not None and len(shown) > limit:
            print(f"qmprr fake: {len(shown) - limit} more forwarded or refused (--report FILE lists all)", file=out)
    if report_file:
        write_report(report_file, fake, hybrid)
    return fake.ok(mode) and (hybrid is None or hybrid.ok())
