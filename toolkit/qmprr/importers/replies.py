"""libvirt's ``.replies`` files (``tests/qemucapabilitiesdata/*.replies``).

A capability probe as libvirt's test suite replays it: pretty-printed JSON
objects, a command then its reply, separated by blank lines::

    {
      "execute": "qmp_capabilities",
      "id": "libvirt-1"
    }

    {
      "return": {},
      "id": "libvirt-1"
    }

Older files write an empty object over two lines (``"return": {`` then
``}``). There is no greeting, no event and no time. The objects are read as
a JSON stream (blank lines are only separators), so both forms read the
same; an object that is not JSON is reported with its line and skipped up to
the next blank line. Replies go to commands in order, checked by ``id``.

The recording: ``qmp_capabilities`` with role ``internal`` (every replay
target negotiates for itself), every other command from ``libvirt`` with
role ``primary``, each record's ``orig`` the line its object starts on, every
``t`` 0 (the file has no times), and the header's ``qemu_version`` from the
reply to ``query-version`` when there is one. libvirt's corpora hold a KVM
phase then a TCG phase, each opened by ``qmp_capabilities``: a later one is
preceded by a ``note`` (``data.session``: 2, …) that marks the new monitor
session, so replay and ``qmprr show`` can tell.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import attrs

from ..files import open_regular
from ..recording import Command, Event, Msg, Note, Reply
from ..recording.header import new_header
from .libvirt_log import Problem
from .writer import ImportWriter, Item, LogImportError

#: The note before a later ``qmp_capabilities`` (``data.session``: its number, from 1).
SESSION_NOTE = ("monitor session {n} starts here: libvirt probed again (its TCG phase after KVM) with a new QEMU"
                " and a new negotiation")

_BLANK_LINE = re.compile(r"\n[ \t\r]*\n")
_decoder = json.JSONDecoder()


@attrs.define
class RepliesImport:
    """What a ``.replies`` file held."""

    path: str
    items: list[Item] = attrs.Factory(list)
    problems: list[Problem] = attrs.Factory(list)
    commands: int = 0
    replies: int = 0
    events: int = 0
    unanswered: int = 0
    qemu_version: dict[str, Any] | None = None
    sessions: int = 1  # monitor sessions (phases): one more for each later qmp_capabilities


def _objects(text: str, problems: list[Problem]) -> Iterator[tuple[int, Any]]:
    """``(line, object)`` for every JSON value in *text*, skipping what is not JSON."""
    pos, line, n = 0, 1, len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n":
            if text[pos] == "\n":
                line += 1
            pos += 1
        if pos >= n:
            return
        try:
            value, end = _decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            problems.append(Problem(line, f"not JSON ({exc.msg} at line {exc.lineno}); skipped to the next blank line"))
            gap = _BLANK_LINE.search(text, pos)
            end = gap.end() if gap else n
        else:
            yield line, value
        line += text.count("\n", pos, end)
        pos = end


def read_replies(path: str) -> RepliesImport:
    """Parse a ``.replies`` file into items."""
    try:
        with open_regular(path) as f:  # a FIFO or a device would block or never end
            data = f.read()
    except OSError as exc:
        raise LogImportError(f"{path}: cannot read: {exc.strerror}") from None
    text = data.decode("utf-8", errors="replace")
    result = RepliesImport(path=path)
    pending: list[Item] = []
    for line, obj in _objects(text, result.problems):
        orig = {"line": line}
        if not isinstance(obj, dict):
            result.problems.append(Problem(line, "not a JSON object; skipped"))
            continue
        if "execute" in obj or "exec-oob" in obj:
            role = "internal" if obj.get("execute") == "qmp_capabilities" else "primary"
            if role == "internal" and result.commands:
                result.sessions += 1  # libvirt's next probe phase (TCG after KVM): a new QEMU, a new negotiation
                result.items.append(Item(Note(text=SESSION_NOTE.format(n=result.sessions),
                                              data=Msg({"session": result.sessions})), None, orig))
            item = Item(Command(src="libvirt", role=role, msg=Msg(obj)), None, orig)  # type: ignore[arg-type]  # role is the log's; Record.role names the known ones
            result.items.append(item)
            pending.append(item)
            result.commands += 1
        elif "return" in obj or "error" in obj:
            target = _answered(pending, obj.get("id"))
            if target is None:
                result.problems.append(Problem(line, f"reply (id {obj.get('id')!r}) to no command waiting for one; skipped"))
                continue
            result.items.append(Item(Reply(cmd=-1, msg=Msg(obj)), None, orig, ref=target))
            result.replies += 1
            if target.record.msg.get("execute") == "query-version" and isinstance(obj.get("return"), dict):  # type: ignore[attr-defined]  # this item holds a Command
                result.qemu_version = obj["return"]
        elif "event" in obj:
            result.items.append(Item(Event(msg=Msg(obj)), None, orig))
            result.events += 1
        else:
            result.problems.append(Problem(line, "neither a command, a reply nor an event; skipped"))
    result.unanswered = len(pending)
    if not result.commands:
        raise LogImportError(f"{path}: no QMP commands found; is it a libvirt .replies file?")
    return result


def _answered(pending: list[Item], reply_id: object) -> Item | None:
    if not pending:
        return None
    if reply_id is None or pending[0].record.msg.get("id") == reply_id:  # type: ignore[attr-defined]  # this item holds a Command
        return pending.pop(0)
    for i, item in enumerate(pending):
        if item.record.msg.get("id") == reply_id:  # type: ignore[attr-defined]  # this item holds a Command
            return pending.pop(i)
    return None


_ARCH = re.compile(r"(?:^|[_.-])(x86_64|i386|aarch64|armv7l|ppc64le|ppc64|s390x|riscv64|mips64|mips|sparc64|sparc)(?:[_.-]|$)")


def probe_argv(path: str) -> list[str] | None:
    """libvirt's probe command line for the architecture the file name gives (``caps_7.2.0_x86_64.replies``)."""
    from .libvirt import PROBE_ARGS

    m = _ARCH.search(os.path.basename(path))
    if m is None:
        return None
    arch = {"armv7l": "arm", "ppc64le": "ppc64"}.get(m.group(1), m.group(1))
    return [f"qemu-system-{arch}", *PROBE_ARGS, "-machine", "none,accel=kvm:tcg"]


def write_replies(result: RepliesImport, out: str, seal_key: Any = None) -> int:
    """Write the recording; returns its number of records."""
    now = time.time()
    labels = {
        "import": "libvirt-replies",
        "source": os.path.basename(result.path),
        "timing": "none: a .replies file records no times (every t is 0; started is the import's time)",
    }
    argv = probe_argv(result.path)
    if argv is not None:
        labels["qemu-argv"] = "reconstructed: libvirt's probe command line, the binary named by the file's architecture"
    header = new_header(
        started_epoch=now,
        host="unknown",
        qemu_version=result.qemu_version or None,
        labels=labels,
        qemu_argv=argv,
    )
    with ImportWriter.create(out, header, seal_key=seal_key) as writer:
        writer.extend(result.items)
        return writer.next_seq
