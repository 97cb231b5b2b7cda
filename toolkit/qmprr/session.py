"""One client's QMP session, as QEMU would conduct it. No I/O.

A :class:`ClientSession` takes each item the client's :class:`~qmprr.wire.StreamDecoder`
produced and says what to do with it: answer locally (:class:`Answer`),
forward to QEMU through the channel (:class:`Forward`), or begin/end a
transaction (:class:`BeginTx` / :class:`EndTx`), or keep this client's
queued commands when it disconnects (:class:`Detach`). The serve loop in
:mod:`qmprr.server` carries the actions out. Error shapes and texts are QEMU 7.2's, so a client cannot
tell the proxy from QEMU except by the ``qmprr-*`` commands it adds.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Iterable
from typing import Any

import attrs

from . import codec, wire
from .recording import ABSENT

TX_BEGIN = "qmprr-transaction-begin"
TX_END = "qmprr-transaction-end"
#: Asks that this client's unanswered commands still run after it disconnects
#: (by default they are withdrawn if not yet sent); ``qmprr inject`` sends it on timeout.
DETACH = "qmprr-detach"
#: Capabilities QEMU 7.2 knows (it offers ``oob``; qmprr offers none).
KNOWN_CAPABILITIES = frozenset({"oob"})

#: Commands the default policy refuses to debug clients (globs; ``hmp:`` = HMP command).
DEFAULT_DEBUG_DENY = ("quit", "hmp:quit", "hmp:q")


def client_greeting(greeting: dict[str, Any]) -> dict[str, Any]:
    """QEMU's greeting as clients see it: its version, but no capabilities.

    qmprr runs every command in order on one channel, so it cannot offer
    out-of-band execution; advertising ``oob`` would make clients such as
    qemu.qmp's QMPClient negotiate a capability whose commands then fail.
    """
    qmp = greeting.get("QMP")
    if not isinstance(qmp, dict):
        return greeting
    return {**greeting, "QMP": {**qmp, "capabilities": []}}


def qmp_error(desc: str, cls: str = "GenericError", id: Any = ABSENT) -> dict[str, Any]:
    """A QMP error reply, with *id* when the command had one."""
    reply: dict[str, Any] = {"error": {"class": cls, "desc": desc}}
    if id is not ABSENT:
        reply["id"] = id
    return reply


def qmp_return(value: Any = None, id: Any = ABSENT) -> dict[str, Any]:
    """A QMP success reply (``{}`` when *value* is None)."""
    reply: dict[str, Any] = {"return": {} if value is None else value}
    if id is not ABSENT:
        reply["id"] = id
    return reply


@attrs.frozen
class Policy:
    """Which commands debug clients may send. ``allow`` wins over ``deny``.

    Names are globs matched against the QMP command name, and, for
    ``human-monitor-command``, against ``hmp:`` plus the HMP command word.
    """

    deny: tuple[str, ...] = DEFAULT_DEBUG_DENY
    allow: tuple[str, ...] = ()

    @classmethod
    def build(cls, deny: Iterable[str] = (), allow: Iterable[str] = ()) -> Policy:
        """The default policy with *deny* added and *allow* overriding."""
        return cls(DEFAULT_DEBUG_DENY + tuple(deny), tuple(allow))

    def refusal(self, msg: dict[str, Any]) -> str | None:
        """The name that makes this policy refuse *msg*, or None if it is allowed."""
        names = [wire.command_name(msg) or ""]
        if names[0] == "human-monitor-command":
            line = (msg.get("arguments") or {}).get("command-line")
            if isinstance(line, str) and line.split():
                names.append("hmp:" + line.split()[0])
        for name in names:
            if any(fnmatch.fnmatchcase(name, p) for p in self.allow):
                continue
            if any(fnmatch.fnmatchcase(name, p) for p in self.deny):
                return name
        return None


_COMMAND_KEYS = frozenset({"execute", "arguments", "id"})


def check_shape(msg: dict[str, Any]) -> str | None:
    """QEMU's complaint about a command's top-level shape, or None if it is well formed.

    Checked before negotiation and before the command name, as QEMU does.
    ``exec-oob`` is unexpected because no client negotiates ``oob`` here.
    """
    if not _COMMAND_KEYS.issuperset(msg):
        key = next(k for k in msg if k not in _COMMAND_KEYS)
        return f"QMP input member '{key}' is unexpected"
    if "execute" not in msg:
        return "QMP input lacks member 'execute'"
    if not isinstance(msg["execute"], str):
        return "QMP input member 'execute' must be a string"
    if "arguments" in msg and not isinstance(msg["arguments"], dict):
        return "QMP input member 'arguments' must be an object"
    return None


def command_body(msg: dict[str, Any]) -> bytes:
    """*msg* as the channel sends it, before qmprr's id: compact JSON without the client's ``id``."""
    if "id" in msg:
        msg = dict(msg)
        del msg["id"]
    return codec.dumps(msg)


def qemu_would_split(msg: dict[str, Any], body: bytes | None = None) -> str | None:
    """QEMU's limit error if *msg*, as the channel sends it (its id replaced by
    qmprr's), would be over QEMU's parser limits; else None.

    The decoder checked the client's bytes; re-encoding can grow a message
    (``1e9`` becomes ``1000000000.0``, ``\xC0\x80`` becomes ``\u0000``) and
    qmprr's id adds tokens, so the bytes QEMU will read are checked too. QEMU
    answers such input without an id, and so does this refusal. *body* is
    :func:`command_body` of *msg*, when the caller has it.
    """
    if body is None:
        body = command_body(msg)
    return wire.limit_error(body, extra_tokens=wire.ID_TOKENS, extra_bytes=wire.ID_BYTES)


# -- actions -------------------------------------------------------------------


@attrs.frozen
class Answer:
    """Send *reply* to the client; QEMU never sees this input (logged as ``local``)."""

    reply: dict[str, Any]
    msg: dict[str, Any] | None = None  # the client's message, when it was JSON
    input: bytes | None = None  # the start of the raw input, when it was not


@attrs.define  # built for every command: not frozen, which costs 3x as much
class Forward:
    """Run *msg* on QEMU through the channel; reply with *client_id* restored.

    *body* is :func:`command_body` of *msg* (checked against QEMU's limits;
    the channel sends it, with its id, without encoding *msg* again).
    """

    msg: dict[str, Any]
    client_id: Any = ABSENT
    body: bytes | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class BeginTx:
    label: str
    msg: dict[str, Any]
    client_id: Any = ABSENT


@attrs.frozen
class EndTx:
    msg: dict[str, Any]
    client_id: Any = ABSENT


@attrs.frozen
class Detach:
    """Keep running this client's queued commands after it leaves (answered at once)."""

    msg: dict[str, Any]
    client_id: Any = ABSENT


Action = Answer | Forward | BeginTx | EndTx | Detach


class State(enum.Enum):
    GREETED = "greeted"  # greeting sent; only qmp_capabilities works
    NEGOTIATED = "negotiated"  # commands flow, events are delivered


class ClientSession:
    """The negotiation state machine and message triage for one client."""

    def __init__(self, greeting: dict[str, Any], *, role: str = "primary", policy: Policy | None = None) -> None:
        self.role = role
        self.policy = policy or Policy()
        self.state = State.GREETED
        self.capabilities: list[str] = []
        qmp = greeting.get("QMP", {}) if isinstance(greeting, dict) else {}
        self._offered = set(qmp.get("capabilities", []) if isinstance(qmp, dict) else [])

    @property
    def negotiated(self) -> bool:
        return self.state is State.NEGOTIATED

    def handle(self, item: dict[str, Any] | wire.FramingError) -> Action:
        """Decide what to do with one decoded item from the client."""
        if isinstance(item, wire.FramingError):
            return Answer(item.qmp_error(), input=item.excerpt)
        msg = item
        cid = msg.get("id", ABSENT)
        shape_error = check_shape(msg)
        if shape_error is not None:
            return Answer(qmp_error(shape_error, id=cid), msg=msg)
        name = msg.get("execute")
        if self.state is State.GREETED:
            if name != "qmp_capabilities":
                return Answer(
                    qmp_error(
                        "Expecting capabilities negotiation with 'qmp_capabilities'",
                        "CommandNotFound",
                        id=cid,
                    ),
                    msg=msg,
                )
            return self._negotiate(msg, cid)
        if name == "qmp_capabilities":
            refusal = self._check_capabilities(msg.get("arguments", {}))
            if refusal is not None:
                return Answer(qmp_error(refusal, id=cid), msg=msg)
            return Answer(
                qmp_error(
                    "Capabilities negotiation is already complete, command ignored",
                    "CommandNotFound",
                    id=cid,
                ),
                msg=msg,
            )
        if name == TX_BEGIN:
            arguments = msg.get("arguments", {})
            label = arguments.get("label", "") if isinstance(arguments, dict) else None
            if not isinstance(label, str):
                return Answer(
                    qmp_error("Invalid parameter type for 'label', expected: string", id=cid), msg=msg
                )
            return BeginTx(label, msg, cid)
        if name == TX_END:
            return EndTx(msg, cid)
        if name == DETACH:
            return Detach(msg, cid)
        if self.role == "debug":
            refused = self.policy.refusal(msg)
            if refused is not None:
                return Answer(
                    qmp_error(
                        f"qmprr policy refuses '{refused}' from debug clients"
                        f" (start qmprr with --allow '{refused}' to permit it)",
                        id=cid,
                    ),
                    msg=msg,
                )
        body = command_body(msg)
        too_big = qemu_would_split(msg, body)
        if too_big is not None:
            return Answer(qmp_error(too_big), msg=msg)
        return Forward(msg, cid, body)

    def _negotiate(self, msg: dict[str, Any], cid: Any) -> Action:
        refusal = self._check_capabilities(msg.get("arguments", {}))
        if refusal is not None:
            return Answer(qmp_error(refusal, id=cid), msg=msg)
        self.capabilities = list(msg.get("arguments", {}).get("enable", []))
        self.state = State.NEGOTIATED
        return Answer(qmp_return(id=cid), msg=msg)

    def _check_capabilities(self, arguments: dict[str, Any]) -> str | None:
        """QEMU's complaint about ``qmp_capabilities`` arguments, or None."""
        unexpected = [k for k in arguments if k != "enable"]
        if unexpected:
            return f"Parameter '{unexpected[0]}' is unexpected"
        enable = arguments.get("enable", [])
        if not isinstance(enable, list):
            return "Invalid parameter type for 'enable', expected: array"
        for i, capability in enumerate(enable):
            if not isinstance(capability, str):
                return f"Invalid parameter type for 'enable[{i}]', expected: string"
            if capability not in KNOWN_CAPABILITIES:
                return f"Parameter 'null' does not accept value '{capability}'"
        missing = [c for c in enable if c not in self._offered]
        if missing:
            return f"Capability {', '.join(missing)} not available"
        return None
