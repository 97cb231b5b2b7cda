"""``qmprr diff A B``: two recordings of the same session, compared as replay compares.

Both recordings are read as scripts (:func:`~qmprr.replay.script.load_script`):
one exchange per command with its reply and the events in its window (from
the command to the next command). The exchanges are aligned by their command
sequence -- :class:`difflib.SequenceMatcher` over ``(command name, normalized
arguments)`` (in windows, see :func:`align`) -- so a command only one side
has shows as missing (in B) or extra (in B), and the rest pair up. Within a
stretch that does not align, commands with the same name still pair (their
arguments differ).

Each pair is compared after the replay's normalization
(:class:`~qmprr.replay.normalize.Normalizer`, built-in rules plus the user's):
arguments and replies field by field (:func:`~qmprr.replay.compare.compare_replies`),
events per window as multisets (rate-limited events by presence). An event
one side lacks and the other has with the same name is reported as that event
changed, field by field. Events QEMU sent before the first command form a
window of their own.

qmprr's own exchanges (role ``internal``: its ``quit`` at the end) are left
out, with the events of their windows, unless ``internal=True``.
"""

from __future__ import annotations

import collections
import difflib
import os
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, TextIO

import attrs

from .. import codec
from ..replay.compare import RATE_LIMITED_EVENTS, compare_replies, event_key, field_differences
from ..replay.normalize import Normalizer
from ..replay.script import DEFAULT_GREETING, Exchange, Script, load_script
from .show import escape_controls

#: Alignment windows: first and largest size, and the run of equal keys that ends a mismatch (see :func:`align`).
WINDOW, MAX_WINDOW, MIN_RUN = 256, 16384, 8
#: Aligned commands shown before the first divergence.
CONTEXT = 3
#: Width of values quoted in a difference's text.
VALUE_WIDTH = 80

_RESET = "\x1b[0m"
STYLES = {
    "head": "\x1b[1m",  # bold
    "missing": "\x1b[31m",  # red: only in A
    "extra": "\x1b[32m",  # green: only in B
    "changed": "\x1b[33m",  # yellow
    "mark": "\x1b[1;31m",  # bold red: the first divergence
    "meta": "\x1b[2m",  # dim
}


@attrs.define
class Item:
    """One difference.

    ``kind``: ``missing`` / ``extra`` (a command only A / only B has),
    ``arguments``, ``reply``, ``error-class``, ``no-reply`` (one side
    recorded no reply), ``event`` (an event changed), ``missing-event`` /
    ``extra-event``. ``seq_a``/``seq_b`` are the command records' seqs (None
    on the side that lacks it, and both None for the window before the first
    command, whose ``command`` is None). ``path`` is the field
    (``return.status``, ``arguments.id``, ``RESET.data.guest``) or the event's
    name; ``a``/``b`` the values on each side (a missing or extra command's
    arguments; the counts of a missing or extra event).
    """

    kind: str
    seq_a: int | None
    seq_b: int | None
    command: str | None
    text: str
    path: str = ""
    a: Any = None
    b: Any = None


@attrs.define
class Row:
    """One step of the alignment: an exchange of A, of B, or of both."""

    a: Exchange | None
    b: Exchange | None
    items: list[Item] = attrs.Factory(list)

    @property
    def status(self) -> str:
        if self.a is None:
            return "extra"
        if self.b is None:
            return "missing"
        return "differs" if self.items else "same"

    @property
    def command(self) -> str:
        return (self.a or self.b).command  # type: ignore[union-attr]  # a pair always has one side


@attrs.frozen
class Counts:
    """The alignment in figures."""

    commands_a: int
    commands_b: int
    aligned: int
    same: int
    differs: int
    missing: int
    extra: int
    differences: int


@attrs.frozen
class Aligned:
    """One step of the alignment in the JSON form: the seqs on each side and how they compare."""

    seq_a: int | None
    seq_b: int | None
    command: str
    status: str


@attrs.define
class DiffReport:
    """A :class:`DiffResult` as ``qmprr diff --json`` writes it (:mod:`qmprr.results` reads it back)."""

    a: str
    b: str
    equivalent: bool
    internal: bool
    counts: Counts
    warnings: list[str]
    first_divergence: Item | None
    differences: list[Item]
    alignment: list[Aligned]


@attrs.define
class DiffResult:
    """The alignment of two recordings and every difference, in order."""

    a: str
    b: str
    rows: list[Row]
    initial: list[Item]  # differences in the window before the first command
    warnings: list[str] = attrs.Factory(list)
    internal: bool = False

    @property
    def items(self) -> list[Item]:
        return self.initial + [item for row in self.rows for item in row.items]

    @property
    def equivalent(self) -> bool:
        return not self.initial and not any(row.items for row in self.rows)

    @property
    def first(self) -> Item | None:
        return next(iter(self.items), None)

    def counts(self) -> Counts:
        status = collections.Counter(row.status for row in self.rows)
        return Counts(
            commands_a=sum(1 for r in self.rows if r.a is not None),
            commands_b=sum(1 for r in self.rows if r.b is not None),
            aligned=status["same"] + status["differs"],
            same=status["same"],
            differs=status["differs"],
            missing=status["missing"],
            extra=status["extra"],
            differences=len(self.items),
        )

    def report(self) -> DiffReport:
        """The typed JSON form."""
        return DiffReport(
            a=self.a, b=self.b, equivalent=self.equivalent, internal=self.internal, counts=self.counts(),
            warnings=self.warnings, first_divergence=self.first, differences=self.items,
            alignment=[Aligned(r.a.seq if r.a else None, r.b.seq if r.b else None, r.command, r.status)
                       for r in self.rows],
        )


# -- comparing ------------------------------------------------------------------


def diff_recordings(
    path_a: str | os.PathLike[str],
    path_b: str | os.PathLike[str],
    *,
    normalizer: Normalizer | None = None,
    internal: bool = False,
) -> DiffResult:
    """Compare recording *path_a* with *path_b* (raises :class:`~qmprr.errors.QmprrError` if one is unreadable)."""
    a, b = load_script(path_a), load_script(path_b)
    return diff_scripts(a, b, os.fspath(path_a), os.fspath(path_b), normalizer=normalizer, internal=internal)


def diff_scripts(
    a: Script, b: Script, name_a: str = "A", name_b: str = "B", *, normalizer: Normalizer | None = None,
    internal: bool = False,
) -> DiffResult:
    """Compare two scripts (see the module docstring)."""
    norm = normalizer or Normalizer()
    ex_a = [e for e in a.exchanges if internal or e.role != "internal"]
    ex_b = [e for e in b.exchanges if internal or e.role != "internal"]
    result = DiffResult(name_a, name_b, rows=[], internal=internal,
                        initial=_events(None, None, None, a.initial_events, b.initial_events, norm))
    result.warnings += _version_warnings(a, b)
    if not internal:
        skipped = (len(a.exchanges) - len(ex_a), len(b.exchanges) - len(ex_b))
        if skipped[0] != skipped[1]:
            result.warnings.append(f"qmprr's own commands left out: {skipped[0]} in A, {skipped[1]} in B "
                                   "(--internal compares them)")
    keys_a = [_key(norm, e) for e in ex_a]
    keys_b = [_key(norm, e) for e in ex_b]
    for tag, i1, i2, j1, j2 in align(keys_a, keys_b):
        if tag == "equal":
            for x, y in zip(ex_a[i1:i2], ex_b[j1:j2]):
                result.rows.append(_pair(x, y, norm, same_arguments=True))
        else:
            result.rows += _unaligned(ex_a[i1:i2], ex_b[j1:j2], norm)
    return result


def align(a: Sequence[Hashable], b: Sequence[Hashable]) -> list[tuple[str, int, int, int, int]]:
    """Opcodes (``equal`` or ``replace``, either side possibly empty) turning *a* into *b*.

    :class:`difflib.SequenceMatcher` takes time quadratic in the lengths when
    few keys repeat a lot (``query-status`` polled every second), so it is not
    run on whole recordings: runs of equal keys (the common prefix and suffix
    first) pair off directly, and at each mismatch it aligns windows of the
    next :data:`WINDOW` keys of each side, growing them up to
    :data:`MAX_WINDOW` until a run of :data:`MIN_RUN` equal keys shows where
    the two sides meet again. Recordings that differ in a few places cost
    linear time; the alignment is SequenceMatcher's wherever the windows
    reach the ends.
    """
    ops: list[tuple[str, int, int, int, int]] = []
    end_a, end_b = len(a), len(b)
    tail = 0
    while tail < end_a and tail < end_b and a[end_a - 1 - tail] == b[end_b - 1 - tail]:
        tail += 1
    n, m = end_a - tail, end_b - tail
    i = j = 0
    while i < n or j < m:
        run = 0
        while i + run < n and j + run < m and a[i + run] == b[j + run]:
            run += 1
        if run:
            ops.append(("equal", i, i + run, j, j + run))
            i, j = i + run, j + run
            continue
        window = WINDOW
        while True:
            wa, wb = a[i:min(i + window, n)], b[j:min(j + window, m)]
            whole = i + window >= n and j + window >= m
            codes = difflib.SequenceMatcher(None, wa, wb, autojunk=False).get_opcodes()
            long_run = next((c for c in codes if c[0] == "equal" and c[2] - c[1] >= MIN_RUN), None)
            if whole:
                take = codes  # the rest of both: SequenceMatcher's alignment
            elif long_run is not None:
                take = codes[:codes.index(long_run)]  # up to where they meet again
            elif window >= MAX_WINDOW:  # no long run anywhere: up to the last equal key, or all of it
                last = max((k for k, c in enumerate(codes) if c[0] == "equal"), default=len(codes) - 1)
                take = codes[:last + 1]
            else:
                window *= 4
                continue
            break
        for tag, i1, i2, j1, j2 in take:
            ops.append(("equal" if tag == "equal" else "replace", i + i1, i + i2, j + j1, j + j2))
        i, j = i + take[-1][2], j + take[-1][4]
    if tail:
        ops.append(("equal", n, end_a, m, end_b))
    return ops


def _key(norm: Normalizer, ex: Exchange) -> tuple[str, str]:
    return ex.command, _canonical(_arguments(norm, ex))


def _arguments(norm: Normalizer, ex: Exchange) -> Any:
    args = ex.arguments
    return {} if args is None else norm.arguments(ex.command, args)


def _canonical(value: Any) -> str:
    return codec.dumps(value, sort_keys=True).decode()


def _unaligned(xs: list[Exchange], ys: list[Exchange], norm: Normalizer) -> list[Row]:
    """Rows for a stretch that did not align: same-named commands pair (arguments differ), the rest don't."""
    rows: list[Row] = []
    names = difflib.SequenceMatcher(None, [e.command for e in xs], [e.command for e in ys], autojunk=False)
    for tag, i1, i2, j1, j2 in names.get_opcodes():
        if tag == "equal":
            for x, y in zip(xs[i1:i2], ys[j1:j2]):
                rows.append(_pair(x, y, norm, same_arguments=False))
            continue
        for x in xs[i1:i2]:
            rows.append(Row(x, None, [Item("missing", x.seq, None, x.command, "missing in B" + _args_text(x),
                                         a=x.arguments)]))
        for y in ys[j1:j2]:
            rows.append(Row(None, y, [Item("extra", None, y.seq, y.command, "extra in B" + _args_text(y),
                                         b=y.arguments)]))
    return rows


def _args_text(ex: Exchange) -> str:
    return f", arguments {_summary(ex.arguments)}" if ex.arguments else ""


def _pair(x: Exchange, y: Exchange, norm: Normalizer, *, same_arguments: bool) -> Row:
    row = Row(x, y)
    name, sa, sb = x.command, x.seq, y.seq
    if not same_arguments:
        for path, va, vb in field_differences(_arguments(norm, x), _arguments(norm, y), "arguments"):
            row.items.append(Item("arguments", sa, sb, name, f"{path}: A {_short(va)}, B {_short(vb)}", path, va, vb))
    if x.reply is None or y.reply is None:
        if x.reply is not y.reply:
            side, other = ("A", y.reply) if x.reply is None else ("B", x.reply)
            row.items.append(Item("no-reply", sa, sb, name, f"no reply recorded in {side} "
                                  f"(the other has {_summary(other)})", "reply", x.reply, y.reply))
    else:
        for d in compare_replies(name, x.reply, y.reply, norm):
            text = d.describe("A", "B", "A", "B") if d.summary or d.host else \
                f"{d.what} {d.path}: A {_short(d.recorded)}, B {_short(d.actual)}"
            row.items.append(Item(d.what, sa, sb, name, text, d.path, d.recorded, d.actual))
    row.items += _events(sa, sb, name, x.events_before + x.events_after, y.events_before + y.events_after, norm)
    return row


def _events(
    sa: int | None, sb: int | None, command: str | None, msgs_a: Iterable[dict[str, Any]],
    msgs_b: Iterable[dict[str, Any]], norm: Normalizer,
) -> list[Item]:
    """The differences between two windows of events: multisets, rate-limited events by presence."""
    keys_a = [event_key(norm, m) for m in msgs_a]
    keys_b = [event_key(norm, m) for m in msgs_b]
    count_a, count_b = collections.Counter(keys_a), collections.Counter(keys_b)
    if count_a == count_b:
        return []

    def surplus(
        keys: list[tuple[str, str]], mine: collections.Counter[tuple[str, str]], theirs: collections.Counter[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        out = []
        for key in dict.fromkeys(keys):  # in order of first appearance
            if key[0] in RATE_LIMITED_EVENTS:
                n = 0 if key in theirs else 1
            else:
                n = mine[key] - theirs[key]
            out += [key] * max(n, 0)
        return out

    only_a, only_b = surplus(keys_a, count_a, count_b), surplus(keys_b, count_b, count_a)
    items: list[Item] = []
    # An event A has and B lacks, where B has another of the same name instead: that event changed.
    for key in list(only_a):
        other = next((k for k in only_b if k[0] == key[0]), None)
        if other is None:
            continue
        only_a.remove(key)
        only_b.remove(other)
        for path, va, vb in field_differences(codec.loads(key[1]), codec.loads(other[1]), "data"):
            items.append(Item("event", sa, sb, command, f"event {key[0]} {path}: A {_short(va)}, B {_short(vb)}",
                              path=f"{key[0]}.{path}", a=va, b=vb))
    for kind, keys in (("missing-event", only_a), ("extra-event", only_b)):
        for key in dict.fromkeys(keys):
            items.append(_event_item(kind, sa, sb, command, key, count_a[key], count_b[key]))
    return items


def _event_item(kind: str, sa: int | None, sb: int | None, command: str | None, key: tuple[str, str],
                na: int, nb: int) -> Item:
    name, data = key
    shown = "" if data == "{}" else f" {_cut(data)}"
    if name in RATE_LIMITED_EVENTS:
        where = "A" if kind == "missing-event" else "B"
        text = f"event {name}{shown} only in {where} (rate-limited: presence compared)"
    elif kind == "missing-event" and nb == 0:
        text = f"event {name}{shown} missing in B" + (f" ({na} in A)" if na > 1 else "")
    elif kind == "extra-event" and na == 0:
        text = f"extra event {name}{shown} in B" + (f" ({nb} in B)" if nb > 1 else "")
    else:
        text = f"event {name}{shown}: {na} in A, {nb} in B"
    return Item(kind, sa, sb, command, text, path=name, a=na, b=nb)


def _version_warnings(a: Script, b: Script) -> list[str]:
    va, vb = _qemu_version(a), _qemu_version(b)
    if va is None or vb is None:
        return []
    if va.get("qemu") != vb.get("qemu"):
        return [f"QEMU version differs: A {_version(va)}, B {_version(vb)}"]
    if va.get("package") != vb.get("package"):  # as replay: a warning, not a divergence
        return [f"QEMU build differs: A {va.get('package')!r}, B {vb.get('package')!r}"]
    return []


def _qemu_version(script: Script) -> dict[str, Any] | None:
    """The greeting's version object (the header's when the recording has no greeting)."""
    version: Any = None
    if script.greeting is not DEFAULT_GREETING:  # load_script's stand-in when there is none
        qmp = script.greeting.get("QMP") if isinstance(script.greeting, dict) else None
        version = qmp.get("version") if isinstance(qmp, dict) else None
    elif script.header is not None:
        version = script.header.qemu_version
    return version if isinstance(version, dict) else None


def _version(v: dict[str, Any]) -> str:
    q = v.get("qemu")
    if isinstance(q, dict):
        return f"{q.get('major')}.{q.get('minor')}.{q.get('micro')}"
    return repr(q)


def _short(value: Any) -> str:
    text = repr(value)
    return _cut(text)


def _cut(text: str, width: int = VALUE_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _summary(value: Any) -> str:
    return _cut(codec.dumps(value).decode())


# -- printing -------------------------------------------------------------------


def _seq(seq: int | None) -> str:
    return "-" if seq is None else f"seq {seq}"


def _where(item: Item) -> str:
    if item.command is None:
        return f"{'start':>10} / {'start':<10} (before the first command)"
    return f"{_seq(item.seq_a):>10} / {_seq(item.seq_b):<10} {item.command}"


def _style(kind: str) -> str:
    if kind in ("missing", "missing-event"):
        return "missing"
    return "extra" if kind in ("extra", "extra-event") else "changed"


def render(result: DiffResult, out: TextIO, *, color: bool = False) -> None:
    """The human form: a header with counts, warnings, the first divergence with context, every difference."""

    def paint(style: str, text: str) -> str:
        return f"{STYLES[style]}{text}{_RESET}" if color else text

    def line(text: str, style: str | None = None) -> None:
        text = escape_controls(text)  # recorded strings are untrusted
        out.write((paint(style, text) if style else text) + "\n")

    c = result.counts()
    head = (f"{result.a} vs {result.b}: {c.commands_a} / {c.commands_b} commands, {c.aligned} aligned "
            f"({c.differs} differ), {c.missing} missing in B, {c.extra} extra in B")
    verdict = "equivalent" if result.equivalent else f"{c.differences} difference(s)"
    line(f"{head}: {verdict}", "head")
    for warning in result.warnings:
        line(f"warning: {warning}", "meta")
    first = result.first
    if first is None:
        return
    line("")
    where = "before the first command" if first.command is None else (
        f"{_seq(first.seq_a)} / {_seq(first.seq_b)}  {first.command}")
    line(f"first divergence: {where}", "mark")
    first_row = next((r for r in result.rows if first in r.items), None)
    for item in result.initial if first_row is None else first_row.items:
        line(f"  {item.text}", _style(item.kind))
    if first_row is not None:
        line("context:")
        at = result.rows.index(first_row)
        for row in result.rows[max(0, at - CONTEXT): at + 1]:
            mark = ">>" if row is first_row else "  "
            seqs = f"{_seq(row.a.seq if row.a else None):>10} / {_seq(row.b.seq if row.b else None):<10}"
            line(f"  {mark} {seqs} {row.command:<28} {row.status}", "mark" if row is first_row else None)
    line("")
    line("differences:")
    for item in result.items:
        line(f"{_where(item)}: {item.text}", _style(item.kind))


def to_json(result: DiffResult) -> bytes:
    """The result as one JSON object (indented), for machines."""
    import orjson

    from ..results import unstructure

    return orjson.dumps(unstructure(result.report()), option=orjson.OPT_INDENT_2, default=repr) + b"\n"
