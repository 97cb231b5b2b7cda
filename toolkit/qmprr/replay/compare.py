"""Comparing what QEMU said in two runs: replies field by field, events by key.

Shared by the replay engine (recorded against live) and ``qmprr diff``
(recording A against recording B). Everything here is pure: values in,
:class:`Difference` items out, after normalization by a
:class:`~qmprr.replay.normalize.Normalizer`.
"""

from __future__ import annotations

import collections
import difflib
import fnmatch
from typing import Any

import attrs

from .. import codec
from .normalize import Normalizer

#: Events QEMU rate-limits (coalesces): only their presence is compared.
RATE_LIMITED_EVENTS = frozenset(
    {"RTC_CHANGE", "BALLOON_CHANGE", "WATCHDOG", "ACPI_DEVICE_OST", "QUORUM_FAILURE",
     "QUORUM_REPORT_BAD", "VSERPORT_CHANGE", "MEMORY_DEVICE_SIZE_CHANGE", "MEMORY_FAILURE"}
)


#: Commands whose list answers are unordered: compared as sets (by key when the items have one).
UNORDERED_COMMANDS = frozenset(
    {"qom-list-types", "query-commands", "qom-list", "query-qmp-schema", "query-cpu-definitions",
     "query-command-line-options", "query-machines", "device-list-properties", "qom-list-properties",
     "query-migrate-capabilities", "query-events", "query-chardev", "query-chardev-backends",
     "query-fdsets", "query-memdev", "query-iothreads", "query-named-block-nodes", "query-cpu-model-baseline",
     "query-stats-schemas"}
)

#: Keys that identify an item of a reply list, tried in this order.
ITEM_KEYS = ("node-name", "qom-path", "id", "device", "qdev", "name", "label", "capability", "parameter", "option")


@attrs.define
class Difference:
    """One way a step differed: ``what`` (reply, error-class, missing-event, extra-event), where, values.

    ``summary`` replaces the default ``recorded X, got Y`` text (list alignment:
    ``1 entry only in the replay: {…}``); ``host`` names the :class:`HostRule`
    that classified the difference as host-dependent (a warning, not a divergence).
    """

    what: str
    path: str
    recorded: Any
    actual: Any
    summary: str | None = None
    host: str | None = None

    def describe(self, a: str = "recorded", b: str = "got", a_name: str = "the recorded", b_name: str = "the replay",
                 *, width: int | None = 80) -> str:
        """The difference in words: values as ``{a} X, {b} Y``, one-sided entries ``only in {a_name}``.

        Values are cut to *width* (None: never), but an error text (QMP ``desc``) never is.
        """
        if self.summary is not None:
            text = f"{self.what} {self.path}: {self.summary.format(a=a, b=b, a_name=a_name, b_name=b_name)}"
        else:
            width = None if self.path.endswith("desc") else width
            text = f"{self.what} {self.path}: {a} {short(self.recorded, width)}, {b} {short(self.actual, width)}"
        return text if self.host is None else f"{text} [host difference: {self.host}]"

    def __str__(self) -> str:
        return self.describe()


@attrs.frozen
class HostRule:
    """Differences that depend on the host QEMU runs on, not on the commands replayed.

    Matches a reply difference of a command matching ``command`` (a glob)
    whose path matches ``path`` (a glob over the dotted path), and, when
    ``when`` is given, only if that predicate of the recorded reply and the
    command's arguments holds.
    """

    name: str
    command: str
    path: str
    why: str
    when: Any = None  # (arguments, recorded reply, difference) -> bool

    def matches(self, command: str, arguments: Any, recorded: Any, diff: Difference) -> bool:
        if not fnmatch.fnmatchcase(command, self.command) or not fnmatch.fnmatchcase(diff.path, self.path):
            return False
        return self.when is None or bool(self.when(arguments or {}, recorded, diff))


def _cpu_model_is_host(arguments: dict[str, Any], recorded: Any, diff: Difference) -> bool:
    model = arguments.get("model") if isinstance(arguments, dict) else None
    name = model.get("name") if isinstance(model, dict) else None
    if name is None and isinstance(recorded, dict):
        name = (recorded.get("return") or {}).get("model", {}).get("name")
    # libvirt expands host/max statically, then "base" with those props: the host's CPU either way
    return name in ("host", "max") or (name == "base" and bool(isinstance(model, dict) and model.get("props")))


def _module_entry(arguments: dict[str, Any], recorded: Any, diff: Difference) -> bool:
    """Every entry only on one side is a type QEMU loads from a module (``hw-display-qxl.so``)."""
    items = diff.recorded if diff.recorded is not MISSING else diff.actual
    names = [i.get("name") for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    return bool(names) and len(names) == len(items) and all(_is_module_type(str(n)) for n in names)


def _qmprr_monitor(arguments: dict[str, Any], recorded: Any, diff: Difference) -> bool:
    """Entries (or fields of entries) of monitor chardevs only: libvirt's, QEMU's ``-qmp`` or qmprr's own."""
    if "[label=" in diff.path:
        return _is_monitor_label(diff.path.split("[label=", 1)[1].split("]", 1)[0])
    sides = [side for side in (diff.recorded, diff.actual) if side is not MISSING]
    return bool(sides) and all(
        isinstance(side, list) and all(isinstance(i, dict) and _is_monitor_label(str(i.get("label"))) for i in side)
        for side in sides
    )


def _is_monitor_label(label: str) -> bool:
    return label in ("charmonitor", "qmprr-monitor", "monitor") or label.startswith("compat_monitor")


#: Type-name prefixes of QEMU 7.2's loadable modules (its ``modinfo``: hw-display-*, hw-usb-*,
#: chardev-*, ui-*, audio-*, block-*): present only where the module package is installed.
MODULE_TYPE_PREFIXES = (
    "qxl", "virtio-gpu-gl", "virtio-gpu-rutabaga", "virtio-vga-gl", "vhost-user-gpu", "vhost-user-vga",
    "virtio-gpu-ccw", "usb-redir", "usb-host", "ccid-card", "usb-ccid", "chardev-spice", "chardev-spiceport",
    "chardev-baum", "spice-app", "chardev-braille", "virtio-gpu-pci", "virtio-vga", "virtio-gpu-device",
    "virtio-gpu-base", "virtio-gpu-gl-pci", "vhost-user-gpu-pci", "s390-ccw-virtio", "pci-ipmi", "qtest",
    "dbus-display", "chardev-qemu-vdagent", "qemu-vdagent", "u2f", "usb-u2f",
)


def _is_module_type(name: str) -> bool:
    return name.startswith(MODULE_TYPE_PREFIXES)


#: The built-in host rules (see docs/replay.md, "Host differences").
HOST_RULES: tuple[HostRule, ...] = (
    HostRule("cpu-model-expansion", "query-cpu-model-expansion", "return.model.*",
             "the properties of -cpu host/max (and of base with their props) are the host CPU's", _cpu_model_is_host),
    HostRule("cpu-unavailable-features", "query-cpu-definitions", "return*unavailable-features*",
             "which CPU features are unavailable depends on the host CPU and the accelerator"),
    HostRule("kvm-availability", "query-kvm", "return.*", "whether KVM is present and enabled is the host's"),
    HostRule("loadable-modules", "*", "return", "types from QEMU's loadable modules exist only where the"
             " module is installed", _module_entry),
    HostRule("qmprr-monitor", "query-chardev", "return*", "the monitor chardev is qmprr's own, not the"
             " recorded session's", _qmprr_monitor),
)


def classify_host(command: str, arguments: Any, recorded: Any, diffs: list[Difference],
                  rules: tuple[HostRule, ...] = HOST_RULES) -> list[Difference]:
    """*diffs* with ``host`` set on those a host rule explains."""
    for d in diffs:
        if d.host is None and d.what == "reply":
            rule = next((r for r in rules if r.matches(command, arguments, recorded, d)), None)
            if rule is not None:
                d.host = f"{rule.name}: {rule.why}"
    return diffs


def compare_replies(command: str, recorded: dict[str, Any], actual: dict[str, Any], norm: Normalizer,
                    arguments: Any = None) -> list[Difference]:
    """How *actual* differs from *recorded* after normalization: kind, error class, or each differing field.

    Lists are aligned (see :func:`list_differences`); differences a host rule
    explains carry its name in ``host``.
    """
    if "return" in recorded and "return" in actual and recorded["return"] == actual["return"]:
        return []  # equal before normalization, so equal after: the common case costs no copy
    r_kind, r_value = norm.reply(command, recorded)
    a_kind, a_value = norm.reply(command, actual)
    if r_kind != a_kind:
        return [Difference("reply", f"{r_kind} vs {a_kind}", recorded.get(r_kind), actual.get(a_kind))]
    if r_kind == "error":
        return [] if r_value == a_value else [Difference("error-class", "error.class", r_value, a_value)]
    diffs = list_differences(r_value, a_value, "return", unordered=command in UNORDERED_COMMANDS)
    return classify_host(command, arguments, recorded, diffs)


def event_key(norm: Normalizer, msg: dict[str, Any]) -> tuple[str, str]:
    """``(name, canonical JSON of the normalized data)``: what makes two events the same."""
    name, data = norm.event(msg)
    return name, codec.dumps(data, sort_keys=True).decode() if data is not None else "{}"


def field_differences(recorded: Any, actual: Any, path: str) -> list[tuple[str, Any, Any]]:
    """``(path, recorded, actual)`` for every leaf that differs (lists compared by position)."""
    out: list[tuple[str, Any, Any]] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in list(a) + [k for k in b if k not in a]:
                walk(a.get(key, MISSING), b.get(key, MISSING), f"{where}.{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{i}]")
        elif a != b:
            out.append((where, a, b))

    walk(recorded, actual, path)
    return out


def list_differences(recorded: Any, actual: Any, path: str, *, unordered: bool = False) -> list[Difference]:
    """Every difference between two values, with lists aligned rather than compared by position.

    A list whose items are objects with a unique key (:data:`ITEM_KEYS`) is
    aligned by it: ``N entries only in the recorded / only in the replay`` and
    the changes inside ``[key=value]``; items that are all there but in
    another order are one difference, unless *unordered*. Other lists are
    compared as multisets when *unordered*, else aligned as sequences
    (difflib), so one extra item is one difference, not a shifted tail.
    """
    out: list[Difference] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in list(a) + [k for k in b if k not in a]:
                walk(a.get(key, MISSING), b.get(key, MISSING), f"{where}.{key}")
        elif isinstance(a, list) and isinstance(b, list):
            if a != b:
                lists(a, b, where)
        elif a != b:
            out.append(Difference("reply", where, a, b))

    def lists(a: list[Any], b: list[Any], where: str) -> None:
        key = _item_key(a, b)
        if key is not None:
            ka, kb = {x[key]: x for x in a}, {y[key]: y for y in b}
            only(where, [x for k, x in ka.items() if k not in kb], [y for k, y in kb.items() if k not in ka], key)
            for k, x in ka.items():
                if k in kb:
                    walk(x, kb[k], f"{where}[{key}={k}]")
            common_a = [k for k in ka if k in kb]
            common_b = [k for k in kb if k in ka]
            if not unordered and common_a != common_b:
                out.append(Difference("reply", where, common_a, common_b,
                                      summary="same entries in another order: {a} "
                                      + _esc(short(common_a, 60)) + ", {b} " + _esc(short(common_b, 60))))
            return
        if unordered:
            ca = collections.Counter(_canon(x) for x in a)
            cb = collections.Counter(_canon(y) for y in b)
            only(where, _surplus(a, ca - cb), _surplus(b, cb - ca), None)
            return
        if len(a) == len(b) and not (_all_scalars(a) and _all_scalars(b)):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{i}]")
            return
        matcher = difflib.SequenceMatcher(None, [_canon(x) for x in a], [_canon(y) for y in b], autojunk=False)
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            if op == "equal":
                continue
            if op == "replace" and i2 - i1 == j2 - j1:
                for i, j in zip(range(i1, i2), range(j1, j2)):
                    walk(a[i], b[j], f"{where}[{i}]")
            else:
                only(f"{where}[{i1}]", a[i1:i2], b[j1:j2], None)

    def only(where: str, in_a: list[Any], in_b: list[Any], key: str | None) -> None:
        if in_a:
            out.append(Difference("reply", where, in_a, MISSING, summary=_only_text(in_a, "{a_name}", key)))
        if in_b:
            out.append(Difference("reply", where, MISSING, in_b, summary=_only_text(in_b, "{b_name}", key)))

    walk(recorded, actual, path)
    return out


def _item_key(a: list[Any], b: list[Any]) -> str | None:
    items = a + b
    if not items or not all(isinstance(x, dict) for x in items):
        return None
    for key in ITEM_KEYS:
        values_a = [x.get(key) for x in a]
        values_b = [y.get(key) for y in b]
        if all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values_a + values_b) \
                and len(set(values_a)) == len(a) and len(set(values_b)) == len(b):
            return key
    return None


def _canon(value: Any) -> str:
    return codec.dumps(value, sort_keys=True).decode()


def _surplus(items: list[Any], extra: collections.Counter[str]) -> list[Any]:
    left, out = collections.Counter(extra), []
    for x in items:
        c = _canon(x)
        if left[c] > 0:
            left[c] -= 1
            out.append(x)
    return out


def _all_scalars(items: list[Any]) -> bool:
    return all(not isinstance(x, (dict, list)) for x in items)


def _only_text(items: list[Any], side: str, key: str | None) -> str:
    """``1 entry only in {side}: {…}``, cut to a few entries."""
    n = len(items)
    shown = [short(x, 60) for x in items[:5]]
    more = f", … ({n - 5} more)" if n > 5 else ""
    noun = "entry" if n == 1 else "entries"
    return f"{n} {noun} only in {side}: " + _esc(", ".join(shown)) + more


def _esc(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


class _Missing:
    """A field one side has and the other has not."""

    def __repr__(self) -> str:
        return "(absent)"


MISSING: Any = _Missing()


def short(value: Any, width: int | None = 80) -> str:
    """``repr`` of *value*, cut to *width* characters (None: whole); a QMP error's text is never cut."""
    if isinstance(value, dict) and isinstance(value.get("desc"), str) and set(value) <= {"class", "desc"}:
        return f"{value.get('class')}: {value['desc']!r}"  # an error: the whole sentence
    text = repr(value)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"
