"""The records of a ``qmprr/1`` recording, as plain attrs classes.

Every record has ``seq`` (0, 1, 2, ... with no gaps), ``t`` (seconds since the
header's start, from a monotonic clock) and ``kind``. The writer assigns
``seq`` and ``t``; callers build records with the other fields. How records
become JSON lines is :mod:`qmprr.recording.convert`'s business, not theirs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, NewType

import attrs

FORMAT = "qmprr/1"

#: A QMP message (a JSON object), kept exactly as it was on the wire.
Msg = NewType("Msg", dict[str, Any])

Role = Literal["primary", "debug", "internal"]


class _Absent:
    """Marks an optional field that is absent, where ``None`` (JSON null) is a value."""

    _instance: ClassVar[_Absent | None] = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()


def _kind(name: str) -> Any:
    return attrs.field(default=name, init=False)


@attrs.define(kw_only=True, eq=True)
class Record:
    """Fields every record has; ``kind`` is fixed by each subclass."""

    if TYPE_CHECKING:  # for mypy: each subclass declares kind as a fixed field

        @property
        def kind(self) -> str: ...

    seq: int = -1
    t: float = 0.0
    #: Where an imported record came from, as its source logged it: "ts" (timestamp
    #: text), "tid" (thread id), "line" (1-based), "file", "caller". None when live.
    #: On disk it is the last member before "h".
    orig: Msg | None = None


@attrs.define(kw_only=True)
class Header(Record):
    """First record: what was recorded, when, where, and how QEMU was started."""

    kind: Literal["header"] = _kind("header")
    format: str = FORMAT
    started: str  # ISO 8601, UTC
    started_epoch: float
    host: str
    qmprr_version: str
    qemu_version: Msg | None = None  # the greeting's "version" object
    qemu_argv: list[str] | None = None
    qemu_env: dict[str, str] | None = None
    domain_xml: str | None = None
    labels: dict[str, str] = attrs.Factory(dict)
    qemu_pid: int | None = None  # QEMU's process id, when qmprr launched it (or reattached to it)
    monitor_socket: str | None = None  # QEMU's listening monitor (launch --keep-vm): where to reattach
    #: The recording this one continues (proxy --reattach): {"file", "final_seq", "final_hash", "torn_bytes"}
    previous: dict[str, Any] | None = None
    #: Sealed recordings: ``{"alg": ..., "key_id": ...}`` (never the key itself).
    seal: Msg | None = None
    #: Written by ``qmprr rechain``/``edit``: ``{"file", "final_hash", "file_sha256", "how", ...}``.
    derived_from: Msg | None = None
    #: Segment sets (rotation, reattach): the id of the whole recording, the same in every segment.
    recording: str | None = None
    #: This segment's number in its set (1 = the first).
    segment: int | None = None
    #: Retention deleted older segments: ``{"deleted": [files], "final_seq", "final_hash"}``
    #: of the newest one deleted (the segment after it names that hash in ``previous``).
    retention: Msg | None = None
    #: The images the argv names, described (never their data): ``[{"path", "format", "virtual_size",
    #: "cluster_size", "backing": [...]}]`` (see :mod:`qmprr.images`); images commands open are in notes.
    images: list[Msg] | None = None


@attrs.define(kw_only=True)
class Greeting(Record):
    """QEMU's greeting, exactly as received."""

    kind: Literal["greeting"] = _kind("greeting")
    msg: Msg


@attrs.define(kw_only=True)
class Command(Record):
    """A command as sent to QEMU (``msg`` carries the wire id).

    ``client_id`` is the client's own id when it differs from the wire id
    (ABSENT when the client sent none; it may be any JSON value, null too).
    ``queued`` is when the command asked for the wire, present when it had to
    wait (another command in flight, or a transaction holding the channel).
    """

    kind: Literal["command"] = _kind("command")
    src: str
    role: Role
    msg: Msg
    client_id: Any = ABSENT
    tx: int | None = None
    queued: float | None = None  # when it asked for the wire, if it had to wait (same clock as t)


@attrs.define(kw_only=True)
class Reply(Record):
    """QEMU's answer (``return`` or ``error``) to the command logged as ``cmd``."""

    kind: Literal["reply"] = _kind("reply")
    cmd: int
    msg: Msg


@attrs.define(kw_only=True)
class Local(Record):
    """A client message qmprr answered itself, never sent to QEMU.

    Negotiation, transaction control, policy refusals, unparsable input.
    ``msg`` is the message as received (absent when it was not JSON) and
    ``reply`` what was sent back. Unparsable input is logged as the SHA-256
    and length of its start (``input_sha256``, ``input_len``): it may hold a
    secret. With ``keep_input`` the bytes themselves are kept in ``input``
    (the writer takes them as bytes or text).
    """

    kind: Literal["local"] = _kind("local")
    src: str
    role: Role
    msg: Msg | None = None
    input: str | None = None
    reply: Msg
    input_sha256: str | None = None
    input_len: int | None = None


@attrs.define(kw_only=True)
class Event(Record):
    """An asynchronous event, in wire order relative to replies."""

    kind: Literal["event"] = _kind("event")
    msg: Msg


@attrs.define(kw_only=True)
class Client(Record):
    """A downstream client connected, left, or was refused (``reason`` says why)."""

    kind: Literal["client"] = _kind("client")
    action: Literal["connect", "disconnect", "refuse"]
    name: str
    role: Role
    peer: str | None = None
    reason: str | None = None  # why qmprr disconnected or refused it (None: the client left)


@attrs.define(kw_only=True)
class Tx(Record):
    """A transaction began, ended, or was aborted (with a reason)."""

    kind: Literal["tx"] = _kind("tx")
    action: Literal["begin", "end", "abort"]
    tx: int
    label: str
    owner: str
    reason: str | None = None


@attrs.define(kw_only=True)
class Taint(Record):
    """The session was tainted (e.g. ``custom-monitor``: a debug client sent a command)."""

    kind: Literal["taint"] = _kind("taint")
    reason: str
    client: str


@attrs.define(kw_only=True)
class Fd(Record):
    """A file descriptor passed with a command; ``placeholder`` names it, never its number.

    ``stat``, when the fd came from a client, says what it was and nothing it
    holds: ``{"type": "file"|"pipe"|"socket"|"char"|"block"|"dir"|"other",
    "mode": "0644"}`` and ``"size"`` for a regular file.
    """

    kind: Literal["fd"] = _kind("fd")
    src: str
    placeholder: str
    cmd: int | None = None
    stat: Msg | None = None


@attrs.define(kw_only=True)
class Note(Record):
    """Free-form remark from qmprr or a user (repairs, dropped events, markers)."""

    kind: Literal["note"] = _kind("note")
    text: str
    data: Msg | None = None


@attrs.define(kw_only=True)
class Close(Record):
    """The upstream connection ended; ``reason`` is a short code, ``detail`` for people."""

    kind: Literal["close"] = _kind("close")
    reason: str
    detail: str | None = None


RECORD_TYPES: dict[str, type[Record]] = {
    str(attrs.fields(cls).kind.default): cls
    for cls in (Header, Greeting, Command, Reply, Local, Event, Client, Tx, Taint, Fd, Note, Close)
}
