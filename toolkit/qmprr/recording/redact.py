"""Redaction: secrets are taken out of commands before they reach the log.

QEMU still receives the real command; only the logged copy changes. Each
secret is replaced by :data:`REDACTED`, a fixed marker that carries nothing
derived from the secret and that replay recognises (it refuses to send it and
asks for ``--secret ID=VALUE`` instead).

Default rules:

* ``object-add`` with ``qom-type`` ``secret``: ``data`` (also under ``props``);
* ``set_password`` and ``change-vnc-password``: ``password``;
* HMP (``human-monitor-command``): ``set_password PROTO SECRET``,
  ``change vnc password SECRET``, ``object_add secret,...,data=SECRET``.

Add rules with :meth:`Redactor.with_rules`.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

#: What a redacted secret becomes in the log.
REDACTED = "<qmprr-redacted>"


@attrs.frozen
class ArgumentRule:
    """Redact ``arguments[path...]`` of commands named like *command* (a glob).

    *when* lists argument values that must all match for the rule to apply.
    """

    command: str
    path: tuple[str, ...]
    when: Mapping[str, Any] = attrs.field(factory=dict)

    def apply(self, name: str, arguments: dict[str, Any]) -> bool:
        """Redact in place; True when something was replaced."""
        if not fnmatch.fnmatchcase(name, self.command):
            return False
        if any(arguments.get(k) != v for k, v in self.when.items()):
            return False
        node: Any = arguments
        for key in self.path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        last = self.path[-1]
        if isinstance(node, dict) and last in node and node[last] != REDACTED:
            node[last] = REDACTED
            return True
        return False


@attrs.frozen
class HmpRule:
    """Redact the ``secret`` group of a regular expression over an HMP command line."""

    pattern: re.Pattern[str]

    def apply(self, line: str) -> str:
        """The line with every match's ``secret`` group replaced."""

        def replace(m: re.Match[str]) -> str:
            start, end = m.span("secret") if m.group("secret") is not None else (0, 0)
            if start == end:
                return m.group(0)
            base = m.start(0)
            return m.group(0)[: start - base] + REDACTED + m.group(0)[end - base :]

        return self.pattern.sub(replace, line)


@attrs.frozen
class HmpObjectAddSecretRule:
    """Redact ``data`` of HMP ``object_add`` creating a ``secret``, in any syntax QEMU takes.

    QEMU parses the argument as JSON when it starts with ``{``, and otherwise
    as ``key=value`` pairs split on single commas (``,,`` is a literal comma)
    whose first bare word is the ``qom-type``.
    """

    def apply(self, line: str) -> str:
        m = re.match(r"(\s*object_add\s+)(.*)", line, re.S)
        if m is None:
            return line
        prefix, spec = m.groups()
        if spec.lstrip().startswith("{"):
            try:
                obj = json.loads(spec)
            except ValueError:
                return line
            if isinstance(obj, dict) and obj.get("qom-type") == "secret" and "data" in obj:
                obj["data"] = REDACTED
                return prefix + json.dumps(obj)
            return line
        parts = _split_keyval(spec)
        qom_type = None
        for i, part in enumerate(parts):
            key, sep, value = part.partition("=")
            if not sep and i == 0:
                qom_type = key
            elif key == "qom-type":
                qom_type = value
        if qom_type != "secret":
            return line
        redacted = [f"data={REDACTED}" if p.partition("=")[0] == "data" and "=" in p else p for p in parts]
        return prefix + ",".join(p.replace(",", ",,") for p in redacted)


def _split_keyval(spec: str) -> list[str]:
    """Split QEMU keyval text on single commas; ``,,`` stands for a literal comma."""
    parts, current, i = [], [], 0
    while i < len(spec):
        if spec[i] == ",":
            if spec[i + 1 : i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(spec[i])
        i += 1
    parts.append("".join(current))
    return parts


DEFAULT_ARGUMENT_RULES = (
    ArgumentRule("object-add", ("data",), {"qom-type": "secret"}),
    ArgumentRule("object-add", ("props", "data"), {"qom-type": "secret"}),
    ArgumentRule("set_password", ("password",)),
    ArgumentRule("change-vnc-password", ("password",)),
)

DEFAULT_HMP_RULES = (
    HmpRule(re.compile(r"^\s*set_password\s+\S+\s+(?P<secret>\S+)")),
    HmpRule(re.compile(r"^\s*change\s+vnc\s+password\s+(?P<secret>\S+)")),
    HmpObjectAddSecretRule(),
)


@attrs.frozen
class Redactor:
    """Applies redaction rules to a command message, copying it only when it changes."""

    argument_rules: tuple[ArgumentRule, ...] = DEFAULT_ARGUMENT_RULES
    hmp_rules: tuple[HmpRule | HmpObjectAddSecretRule, ...] = DEFAULT_HMP_RULES

    def with_rules(self, rules: Iterable[ArgumentRule | HmpRule]) -> Redactor:
        """A redactor with *rules* added to these."""
        rules = list(rules)
        return Redactor(
            self.argument_rules + tuple(r for r in rules if isinstance(r, ArgumentRule)),
            self.hmp_rules + tuple(r for r in rules if isinstance(r, HmpRule)),
        )

    def redact(self, msg: dict[str, Any]) -> dict[str, Any]:
        """*msg* with its secrets replaced (the same object when there are none)."""
        name = msg.get("execute", msg.get("exec-oob"))
        arguments = msg.get("arguments")
        if not isinstance(name, str) or not isinstance(arguments, dict):
            return msg
        if name == "human-monitor-command":
            line = arguments.get("command-line")
            if not isinstance(line, str):
                return msg
            new_line = line
            for rule in self.hmp_rules:
                new_line = rule.apply(new_line)
            if new_line == line:
                return msg
            out = dict(msg)
            out["arguments"] = {**arguments, "command-line": new_line}
            return out
        out = None
        for rule in self.argument_rules:
            if not fnmatch.fnmatchcase(name, rule.command):
                continue
            if out is None:
                out = copy.deepcopy(msg)
            rule.apply(name, out["arguments"])
        return msg if out is None or out == msg else out


#: Redaction that changes nothing (for tests and for users who must keep secrets).
NO_REDACTION = Redactor((), ())
