"""One readable line per record: ``qmprr show``.

Columns: time offset, seq, who (client or ``qemu``), a ``|`` gutter while a
transaction holds the channel, direction, command or event name, a short
summary, and latency on replies. Replies are matched to their command as the
stream goes (by the formatter itself, or by a caller's
:class:`~qmprr.analysis.context.Tracker`), so memory holds only commands
still awaiting a reply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from .. import codec, wire
from ..recording.model import (
    Client,
    Close,
    Command,
    Event,
    Fd,
    Greeting,
    Header,
    Local,
    Note,
    Record,
    Reply,
    Taint,
    Tx,
)
from ..recording.pairs import Pending
from .context import CommandInfo

SUMMARY_WIDTH = 96

_RESET = "\x1b[0m"
STYLES = {
    "command": "\x1b[36m",  # cyan
    "debug": "\x1b[35m",  # magenta: injected commands
    "ok": "\x1b[32m",  # green
    "error": "\x1b[1;31m",  # bold red
    "event": "\x1b[33m",  # yellow
    "taint": "\x1b[1;35m",
    "meta": "\x1b[2m",  # dim: header, clients, notes
    "tx": "\x1b[1;34m",
}


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """*text* with control characters as Python escapes (``\\x1b``, ``\\n``): safe on a terminal."""
    return _CONTROLS.sub(lambda m: repr(m.group(0))[1:-1], text)



def summarize(value: Any, width: int = SUMMARY_WIDTH) -> str:
    """Compact JSON of *value*, cut to *width* characters with an ellipsis."""
    text = codec.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


class ShowFormatter:
    """Turns records into lines; feed them in order with :meth:`lines`."""

    def __init__(self, *, color: bool = False, width: int = SUMMARY_WIDTH) -> None:
        self.color = color
        self.width = width
        self._pending: Pending[CommandInfo] = Pending()
        self._open_tx: int | None = None

    def _paint(self, style: str, text: str) -> str:
        return f"{STYLES[style]}{text}{_RESET}" if self.color else text

    def lines(self, records: Iterable[Record]) -> Iterator[str]:
        for record in records:
            yield self.line(record)

    def line(self, r: Record, *, command: CommandInfo | None = None, in_tx: bool | None = None) -> str:
        """The line for one record (control characters escaped: input is untrusted).

        A caller that tracks the stream itself passes the *command* a reply
        answers and whether a transaction holds the channel (*in_tx*);
        otherwise the formatter works both out from the records it is given.
        """
        if in_tx is None:
            in_tx = self._track_tx(r)
        who, arrow, text, style = self._describe(r, command)
        who, text = escape_controls(who), escape_controls(text)
        gutter = "|" if in_tx and not isinstance(r, Tx) else " "
        head = f"{r.t:+12.6f} {r.seq:>6} {who:<14.14} {gutter}{arrow:2}"
        return f"{head} {self._paint(style, text)}"

    def _track_tx(self, r: Record) -> bool:
        if isinstance(r, Tx):
            self._open_tx = r.tx if r.action == "begin" else None
        return self._open_tx is not None

    def _describe(self, r: Record, command: CommandInfo | None) -> tuple[str, str, str, str]:
        w = self.width
        if isinstance(r, Command):
            name = wire.command_name(r.msg) or "?"
            if command is None:
                self._pending.command(r.seq, CommandInfo(r.seq, r.t, str(name), r.src, r.role, r.tx, r.msg))
            tags = ""
            if r.role == "debug":
                tags += " [debug]"
            if r.tx is not None:
                tags += f" [tx {r.tx}]"
            if r.queued is not None:
                tags += f" [waited {1000 * (r.t - r.queued):.1f} ms]"
            args = r.msg.get("arguments")
            text = f"{name}{tags}" + (f" {summarize(args, w)}" if args else "")
            return r.src, "->", text, "debug" if r.role == "debug" else "command"
        if isinstance(r, Reply):
            cmd = command or self._pending.reply(r.cmd)
            name = cmd.name if cmd else f"(seq {r.cmd})"
            who = cmd.src if cmd else "?"
            latency = f"  {1000 * (r.t - cmd.t):.3f} ms" if cmd else ""
            if "error" in r.msg:
                err = r.msg["error"]
                if isinstance(err, dict):
                    detail = f"{err.get('class', '?')}: {err.get('desc', '')}"
                else:
                    detail = summarize(err, w)
                return who, "<-", f"{name} ERROR {detail}{latency}", "error"
            return who, "<-", f"{name} {summarize(r.msg.get('return'), w)}{latency}", "ok"
        if isinstance(r, Local):
            if r.msg is not None:
                name = wire.command_name(r.msg) or "?"
                what = f"{name} (answered by qmprr)"
            else:
                what = (f"unparsable input {r.input!r}" if r.input is not None
                        else f"unparsable input ({r.input_len} bytes, sha256 {str(r.input_sha256)[:16]})")
            if "error" in r.reply:
                err = r.reply["error"]
                detail = f"{err.get('class', '?')}: {err.get('desc', '')}" if isinstance(err, dict) else ""
                return r.src, "<>", f"{what} ERROR {detail}", "error"
            return r.src, "<>", f"{what} {summarize(r.reply.get('return'), w)}", "meta"
        if isinstance(r, Event):
            data = r.msg.get("data")
            text = str(r.msg.get("event", "?")) + (f" {summarize(data, w)}" if data else "")
            return "qemu", "<~", text, "event"
        if isinstance(r, Tx):
            mark = {"begin": "[[", "end": "]]", "abort": "]]"}[r.action]
            text = f"transaction {r.tx} {r.action} {r.label!r} by {r.owner}"
            if r.reason:
                text += f": {r.reason}"
            return r.owner, mark, text, "error" if r.action == "abort" else "tx"
        if isinstance(r, Taint):
            return r.client, "!!", f"TAINTED {r.reason}", "taint"
        if isinstance(r, Client):
            peer = f" from {r.peer}" if r.peer else ""
            verb = {"connect": "connected", "refuse": "refused"}.get(r.action, "disconnected")
            why = f": {r.reason}" if r.reason else ""
            return r.name, "+" if r.action == "connect" else "-", f"{r.role} client {verb}{peer}{why}", "meta"
        if isinstance(r, Greeting):
            version = r.msg.get("QMP", {}).get("version", {}).get("qemu", {})
            caps = r.msg.get("QMP", {}).get("capabilities", [])
            v = ".".join(str(version.get(k, "?")) for k in ("major", "minor", "micro"))
            return "qemu", "<-", f"greeting QEMU {v} capabilities {summarize(caps, w)}", "meta"
        if isinstance(r, Header):
            text = f"recording {r.format} started {r.started} on {r.host} (qmprr {r.qmprr_version})"
            return "qmprr", "##", text, "meta"
        if isinstance(r, Fd):
            for_cmd = f" for seq {r.cmd}" if r.cmd is not None else ""
            return r.src, "->", f"fd {r.placeholder}{for_cmd}", "meta"
        if isinstance(r, Note):
            data = f" {summarize(r.data, w)}" if r.data else ""
            return "qmprr", "##", f"note: {r.text}{data}", "meta"
        if isinstance(r, Close):
            detail = f": {r.detail}" if r.detail else ""
            return "qemu", "xx", f"connection closed ({r.reason}){detail}", "error"
        return "?", "??", summarize(attrs.asdict(r), w), "meta"
