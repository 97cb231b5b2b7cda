"""Normalization: what may differ between two runs of the same session.

A :class:`Rule` names a field by path and says what to do with it: ``ignore``
it (drop it before comparing) or replace values matching a ``pattern`` by a
placeholder. Paths are dotted keys; ``*`` matches one key or list index,
``**`` any number of levels (``**.thread-id``). A rule applies to every
message, or only to replies of commands matching ``command`` (a glob), or to
events matching ``event``. Paths start at the message's payload: ``return``
(or ``error``) for replies, ``data`` for events, ``arguments`` for commands.

Built-in rules cover QEMU's run-to-run noise: event timestamps, thread ids,
auto-generated node names (``#block123``), socket and temporary paths, job
progress counters. ``version.package`` differing is reported as a warning,
not a divergence (see :func:`package_warning`).

User rules come from a TOML file (``--rules FILE``)::

    [[rule]]
    path = "**.filename"          # ignore every 'filename' field
    action = "ignore"

    [[rule]]
    command = "query-block"
    path = "*.inserted.file"
    action = "pattern"
    pattern = "^/srv/images/"     # this part of a value may differ
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Iterable
from typing import Any, Literal

import attrs

from .. import validate
from ..errors import QmprrError
from ..files import InputError, read_text_limited

PLACEHOLDER = "<normalized>"


class RulesError(QmprrError):
    """A rules file cannot be read or has an invalid rule."""


@attrs.frozen
class Rule:
    """One normalization rule (see the module docstring)."""

    path: str
    action: Literal["ignore", "pattern"] = "ignore"
    pattern: str | None = None
    command: str | None = None
    event: str | None = None
    _parts: tuple[_Part | None, ...] = attrs.field(init=False, repr=False, eq=False)  # None: ``**``
    _regex: re.Pattern[str] | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        parts = tuple(None if p == "**" else _Part.parse(p) for p in self.path.split(".")) if self.path else ()
        object.__setattr__(self, "_parts", parts)
        regex = re.compile(self.pattern) if self.pattern is not None else None
        object.__setattr__(self, "_regex", regex)

    def applies(self, command: str | None, event: str | None) -> bool:
        if self.command is not None and (command is None or not fnmatch.fnmatchcase(command, self.command)):
            return False
        if self.event is not None and (event is None or not fnmatch.fnmatchcase(event, self.event)):
            return False
        return True

    def apply(self, value: Any) -> Any:
        """*value* (a payload, changed in place where possible) with this rule applied."""
        return _apply(value, self._parts, self)

    def _transform(self, value: Any) -> Any:
        if self._regex is None:
            return PLACEHOLDER
        if isinstance(value, str):
            return self._regex.sub(PLACEHOLDER, value)
        return value


_DROP = object()


def _apply(node: Any, parts: tuple[_Part | None, ...], rule: Rule) -> Any:
    if not parts:
        return _DROP if rule.action == "ignore" and rule._regex is None else rule._transform(node)
    part, rest = parts[0], parts[1:]
    if part is None:  # **
        node = _apply(node, rest, rule)  # zero levels
        if node is _DROP:
            return node
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in list(children):
            _set(node, key, _apply(child, parts, rule))
        return node
    for key in part.keys(node):
        _set(node, key, _apply(node[key], rest, rule))
    return node


def _set(node: Any, key: Any, value: Any) -> None:
    if value is _DROP:
        if isinstance(node, dict):
            node.pop(key, None)
        else:
            node[key] = PLACEHOLDER  # keep list positions
    else:
        node[key] = value


_SELECT = re.compile(r"\[([^=\]]+)=([^\]]*)\]")


@attrs.frozen
class _Part:
    """One part of a rule's path, worked out once per rule: the keys (or list indexes) it picks in a node."""

    text: str
    item_key: str | None = None  # [item_key=glob]: the list items whose item_key matches
    glob: re.Pattern[str] | None = None  # None: a plain key (looked up), or ``*``
    index: int | None = None  # a list position

    @classmethod
    def parse(cls, text: str) -> _Part:
        select = _SELECT.fullmatch(text)
        if select is not None:
            return cls(text, select[1], _glob(select[2]))
        glob = _glob(text) if text != "*" and any(c in text for c in "*?[") else None
        return cls(text, None, glob, int(text) if text.isdecimal() else None)

    def keys(self, node: Any) -> list[Any]:
        if self.item_key is not None:
            key, glob = self.item_key, self.glob
            assert glob is not None
            return [i for i, item in enumerate(node) if isinstance(item, dict) and key in item
                    and glob.match(str(item[key]))] if isinstance(node, list) else []
        if isinstance(node, dict):
            if self.glob is not None:
                return [k for k in node if self.glob.match(k)]
            return list(node) if self.text == "*" else [self.text] if self.text in node else []
        if isinstance(node, list):
            if self.text in ("*", "[]"):
                return list(range(len(node)))
            return [self.index] if self.index is not None and self.index < len(node) else []
        return []


def _glob(pattern: str) -> re.Pattern[str]:
    """What ``fnmatch.fnmatchcase(name, pattern)`` matches, compiled once."""
    return re.compile(fnmatch.translate(pattern))


_TMP_PATH = r"(?:unix:|file:)?(?:/tmp|/var/tmp|/run|/dev/shm)/[^,\s\"']*"

BUILTIN_RULES: tuple[Rule, ...] = (
    Rule("**.thread-id"),
    Rule("**", action="pattern", pattern=r"#block\d+"),
    Rule("**", action="pattern", pattern=_TMP_PATH),
    Rule("**.offset", command="query-*jobs"),
    Rule("**.len", command="query-*jobs"),
    Rule("**.current-progress", command="query-jobs"),
    Rule("**.total-progress", command="query-jobs"),
    Rule("**.busy", command="query-*jobs"),
    Rule("offset", event="BLOCK_JOB_*"),
    Rule("len", event="BLOCK_JOB_*"),
    Rule("**.package", command="query-version"),
    # I/O timing: nanoseconds QEMU spent, different on every run and host.
    *(Rule(f"**.{name}", command="query-blockstats")
      for name in ("rd_total_time_ns", "wr_total_time_ns", "zone_append_total_time_ns",
                   "flush_total_time_ns", "idle_time_ns", "timed_stats")),
    Rule("*.stats.[name=*_time_ns].value", command="query-stats"),
    Rule("*.stats.[name=timed_stats].value", command="query-stats"),
)

#: Named rule sets ``--rules NAME`` switches on (docs/replay.md, Normalization).
RULE_SETS: dict[str, tuple[Rule, ...]] = {
    # What the guest did meanwhile (firmware reading its disk while commands run): counts of I/O.
    "guest-progress": (
        *(Rule(f"**.{name}", command="query-blockstats")
          for name in ("rd_bytes", "wr_bytes", "zone_append_bytes", "unmap_bytes", "rd_operations",
                       "wr_operations", "zone_append_operations", "flush_operations", "unmap_operations",
                       "rd_merged", "wr_merged", "zone_append_merged", "unmap_merged", "wr_highest_offset",
                       "unmap_total_time_ns")),
        Rule("*.stats.[name=*_bytes].value", command="query-stats"),
        Rule("*.stats.[name=*_operations].value", command="query-stats"),
        Rule("*.stats.[name=*_merged].value", command="query-stats"),
        Rule("*.stats.[name=wr_highest_offset].value", command="query-stats"),
    ),
}


@attrs.frozen
class Normalizer:
    """Applies built-in and user rules to replies, events and command arguments."""

    rules: tuple[Rule, ...] = BUILTIN_RULES
    #: The rules that apply to each (command, event), worked out once per name.
    _applying: dict[tuple[str | None, str | None], tuple[Rule, ...]] = attrs.field(
        factory=dict, init=False, eq=False, repr=False)

    def with_rules(self, rules: Iterable[Rule]) -> Normalizer:
        return Normalizer(self.rules + tuple(rules))

    def _run(self, payload: Any, command: str | None, event: str | None) -> Any:
        rules = self._applying.get((command, event))
        if rules is None:
            rules = tuple(r for r in self.rules if r.applies(command, event))
            if len(self._applying) < 4096:  # names come from recordings: bounded
                self._applying[(command, event)] = rules
        if not rules:
            return payload
        payload = _copy(payload)
        for rule in rules:
            payload = rule.apply(payload)
            if payload is _DROP:
                return PLACEHOLDER
        return payload

    def reply(self, command: str | None, msg: dict[str, Any]) -> tuple[str, Any]:
        """``("return", payload)`` or ``("error", class)``: what replay compares."""
        if "error" in msg:
            err = msg["error"]
            return "error", err.get("class") if isinstance(err, dict) else err
        return "return", self._run(msg.get("return"), command, None)

    def event(self, msg: dict[str, Any]) -> tuple[str, Any]:
        """``(name, data)`` of an event, without its timestamp, normalized."""
        name = str(msg.get("event"))
        return name, self._run(msg.get("data"), None, name)

    def arguments(self, command: str | None, arguments: Any) -> Any:
        """Command arguments as matching compares them (paths, node names)."""
        return self._run(arguments, command, None) if arguments else arguments


def _copy(value: Any) -> Any:
    """A copy of a JSON value for the rules to change in place: its dicts and lists (the rest is immutable)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


@attrs.frozen
class RuleTable:
    """A ``[[rule]]`` table as a rules file writes it (checked by :func:`qmprr.validate.check`)."""

    path: str
    action: Literal["ignore", "pattern"] | None = None
    pattern: str | None = None
    command: str | None = None
    event: str | None = None


#: Largest rules file read (a rules file is a few lines).
MAX_RULES_BYTES = 1024 * 1024


def load_rules(path: str) -> list[Rule]:
    """Read ``[[rule]]`` tables from a TOML file (UTF-8, at most :data:`MAX_RULES_BYTES`),
    or name a built-in set (:data:`RULE_SETS`)."""
    if path in RULE_SETS and not os.path.exists(path):
        return list(RULE_SETS[path])
    try:
        data = tomllib.loads(read_text_limited(path, MAX_RULES_BYTES, what="rules file"))
    except InputError as exc:
        hint = "" if os.path.exists(path) else f" (built-in sets: {', '.join(RULE_SETS)})"
        raise RulesError(f"{exc}{hint}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{path}: invalid TOML: {exc}") from None
    unknown_top = set(data) - {"rule"}
    if unknown_top:
        raise RulesError(f"{path}: unknown table(s) {sorted(unknown_top)}; rules are [[rule]] tables")
    tables = data.get("rule", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise RulesError(f"{path}: 'rule' must be an array of tables: write [[rule]] before each rule")
    rules = []
    for i, table in enumerate(tables, 1):
        try:
            rule = validate.check(table, RuleTable)
        except validate.Invalid as exc:
            raise RulesError(f"{path}: rule {i}: {exc}") from None
        action = rule.action or ("pattern" if rule.pattern is not None else "ignore")
        if (action == "pattern") != (rule.pattern is not None):
            raise RulesError(f"{path}: rule {i}: 'action' must be 'ignore', or 'pattern' with a 'pattern'")
        try:
            rules.append(Rule(rule.path, action, rule.pattern, rule.command, rule.event))
        except re.error as exc:
            raise RulesError(f"{path}: rule {i}: invalid pattern: {exc}") from None
    return rules


def package_warning(recorded: dict[str, Any] | None, actual: dict[str, Any] | None) -> str | None:
    """A warning when two QEMU version objects differ only in ``package`` (the build)."""
    if not recorded or not actual:
        return None
    if recorded.get("qemu") == actual.get("qemu") and recorded.get("package") != actual.get("package"):
        return f"QEMU build differs: recorded {recorded.get('package')!r}, now {actual.get('package')!r}"
    return None
