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

import hashlib
import fnmatch
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from .. import codec, qemuopts, wire
from .pairs import Pending

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


# -- QEMU's own tokenizers (HMP arguments, keyval option strings) -------------
#
# Option strings are read by :mod:`qmprr.qemuopts`, the one parser replay's checks use too.

_HMP_SPACE = " \t\n\r\v\f"  # qemu_isspace
_HMP_ESCAPES = {"n": "\n", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


def hmp_tokens(line: str) -> list[tuple[int, int, str]]:
    """HMP's arguments as QEMU's ``get_str`` reads them: ``(start, end, text)`` each.

    A token is a run of non-space characters, or a double-quoted string with
    ``\\n \\r \\\\ \\' \\"`` escapes (an unterminated quote runs to the end).
    """
    tokens: list[tuple[int, int, str]] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _HMP_SPACE:
            i += 1
        if i >= n:
            return tokens
        start = i
        if line[i] == '"':
            i += 1
            text = []
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n:
                    text.append(_HMP_ESCAPES.get(line[i + 1], line[i + 1]))
                    i += 2
                else:
                    text.append(line[i])
                    i += 1
            i = min(i + 1, n)
            tokens.append((start, i, "".join(text)))
        else:
            while i < n and line[i] not in _HMP_SPACE:
                i += 1
            tokens.append((start, i, line[start:i]))


def _replace_tokens(line: str, tokens: list[tuple[int, int, str]]) -> str:
    for start, end, _ in sorted(tokens, reverse=True):
        line = line[:start] + REDACTED + line[end:]
    return line


#: Words that may follow an HMP password and are kept (``set_password``'s
#: ``connected`` values and display flag); every other token is redacted.
_HMP_KEPT_WORDS = frozenset({"keep", "fail", "disconnect", "-d"})
#: QOM properties whose value is a secret wherever they appear.
SECRET_PROPERTIES = frozenset({"data", "password"})


@attrs.frozen
class HmpPasswordRule:
    """Every token of HMP ``set_password``, ``change vnc password``, ``block_passwd``.

    Tokens are found as HMP reads them, however quoted; from the password on,
    every token but ``keep``/``fail``/``disconnect``/``-d`` is redacted.
    """

    def apply_found(self, line: str) -> tuple[str, set[str]]:
        tokens = hmp_tokens(line)
        words = [t[2] for t in tokens]
        first = None
        if words[:1] == ["set_password"]:
            # The protocol is kept only as a bare vnc/spice: anything else may be a misplaced secret.
            bare_protocol = len(words) > 1 and words[1] in ("vnc", "spice") and line[tokens[1][0]] != '"'
            first = 2 if bare_protocol else 1
        elif words[:1] == ["block_passwd"]:
            first = 2
        elif words[:2] == ["change", "vnc"]:
            first = 3 if len(words) > 2 and words[2] in ("password", "passwd") else 2
        if first is None or len(tokens) <= first:
            return line, set()
        hit = [t for t in tokens[first:] if t[2] not in _HMP_KEPT_WORDS or t is tokens[first]]
        hit = [t for t in hit if t[2] != REDACTED]
        return _replace_tokens(line, hit), {t[2] for t in hit} | {line[t[0]:t[1]] for t in hit}

    def apply(self, line: str) -> str:
        return self.apply_found(line)[0]


def redact_object_spec(spec: str) -> tuple[str, set[str], set[str]]:
    """An ``-object``/``object_add`` argument with a secret's ``data`` (and any ``password``) redacted.

    Returns the new text, the values taken out, and the ids of secret objects.
    QEMU reads JSON when it starts with ``{`` (libvirt 9.0's ``-object {"qom-type":...}``),
    else keyval (first bare word is the ``qom-type``, ``,,`` a literal comma).
    """
    if spec.lstrip().startswith("{"):
        try:
            obj = codec.loads(spec)  # QEMU's grammar: single quotes too
        except codec.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            # Not JSON this parser reads, yet QEMU may: the whole argument goes, to be safe.
            return REDACTED, {spec}, set()
        values: set[str] = set()
        is_secret = obj.get("qom-type") == "secret"
        for key in list(obj):
            if (key == "data" and is_secret) or key == "password":
                if obj[key] != REDACTED:
                    values |= _strings(obj[key])
                    obj[key] = REDACTED
        ids = {obj["id"]} if is_secret and isinstance(obj.get("id"), str) else set()
        return (json.dumps(obj, separators=(",", ":")) if values else spec), values, ids
    items = qemuopts.parse(spec, implied=True)
    qom_type = obj_id = None
    for item in items:
        if item.key is None:
            qom_type = item.value
        elif item.key == "qom-type":
            qom_type = item.value
        elif item.key == "id":
            obj_id = item.value
    values = set()
    out = []
    for item in items:
        key = item.key
        if (key is not None and not item.flag and item.value != REDACTED
                and ((key == "data" and qom_type == "secret") or key.rsplit(".", 1)[-1] == "password")):
            values.add(item.value)
            item = qemuopts.Item(key, REDACTED)
        out.append(item)
    ids = {obj_id} if qom_type == "secret" and obj_id else set()
    return (qemuopts.unparse(out) if values else spec), values, ids


@attrs.frozen
class HmpObjectAddRule:
    """``data`` of HMP ``object_add`` creating a ``secret`` (any syntax), and ``password=``."""

    def apply_found(self, line: str) -> tuple[str, set[str]]:
        m = re.match(r"(\s*object_add\s+)(.*)", line, re.S)
        if m is None:
            return line, set()
        new, values, _ = redact_object_spec(m.group(2))
        return (m.group(1) + new if values else line), values

    def apply(self, line: str) -> str:
        return self.apply_found(line)[0]


HmpObjectAddSecretRule = HmpObjectAddRule  # the name before issue 10


def _hmp_apply(rule: Any, line: str) -> tuple[str, set[str]]:
    if hasattr(rule, "apply_found"):
        found: tuple[str, set[str]] = rule.apply_found(line)
        return found
    new = rule.apply(line)
    if new == line:
        return line, set()
    return new, {m.group("secret") for m in rule.pattern.finditer(line) if m.group("secret")}


def redact_argv(argv: list[str]) -> tuple[list[str], set[str], set[str]]:
    """A QEMU command line with its secrets redacted; also the values and secret ids found.

    ``-object``/``--object`` arguments: a secret's ``data`` (keyval or JSON);
    any option argument: ``password=`` (``-spice``, ``-iscsi``).
    """
    out, values, ids = list(argv), set(), set()
    for i in range(1, len(argv)):
        arg = argv[i]
        if argv[i - 1] in ("-object", "--object"):
            new, found, new_ids = redact_object_spec(arg)
            ids |= new_ids
        elif "password=" in arg and not arg.startswith("-"):
            new, found, _ = redact_object_spec(arg)
        else:
            continue
        if found:
            out[i] = new
            values |= found
    return out, values, ids


def redact_domain_xml(xml: str, values: set[str]) -> tuple[str, set[str], set[str]]:
    """Domain XML with secrets of ``<qemu:arg value=...>`` and ``<graphics passwd=...>`` redacted.

    *values* (already known secrets, e.g. from the argv) are taken out of the
    text too. Returns the XML, the values found, and the secret ids.
    """
    found: set[str] = set()
    ids: set[str] = set()
    try:
        from lxml import etree

        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        root = etree.fromstring(xml.encode("utf-8"), parser)
    except Exception:  # not XML: only the known values are taken out
        root = None
    if root is not None:
        args = root.findall(".//{http://libvirt.org/schemas/domain/qemu/1.0}arg")
        argv = [a.get("value", "") for a in args]
        new, found, ids = redact_argv(["qemu"] + argv)
        for el, old, value in zip(args, argv, new[1:], strict=True):
            if old != value:
                el.set("value", value)
        for el in root.iter("graphics"):
            for attr in ("passwd", "password"):
                if el.get(attr) not in (None, REDACTED):
                    found.add(el.get(attr))
                    el.set(attr, REDACTED)
        if found:
            xml = etree.tostring(root, encoding="unicode")
    return scrub_text(xml, values | found, xml_escape=True), found, ids


def scrub_text(text: str, values: Iterable[str], *, xml_escape: bool = False) -> str:
    """*text* with every occurrence of *values* (longest first) replaced by :data:`REDACTED`."""
    from xml.sax.saxutils import escape, quoteattr

    marker = escape(REDACTED) if xml_escape else REDACTED  # XML stays well-formed
    for value in sorted(set(values), key=len, reverse=True):
        if not value:
            continue
        forms = {value}
        if xml_escape:
            forms |= {escape(value), quoteattr(value)[1:-1], escape(value, {'"': "&quot;", "'": "&apos;"})}
        for form in sorted(forms, key=len, reverse=True):
            if form in text:
                text = text.replace(form, marker)
    return text


def scrub(node: Any, values: Iterable[str]) -> Any:
    """A copy of a JSON value with every string's occurrences of *values* replaced."""
    values = sorted({v for v in values if v}, key=len, reverse=True)
    if not values:
        return node
    return map_strings(node, lambda n: scrub_text(n, values) if any(v in n for v in values) else n)


def map_strings(root: Any, fn: Callable[[str], str]) -> Any:
    """A copy of a JSON value with *fn* applied to every string (keys too), at any depth.

    Iterative: QEMU accepts nesting 1024 deep, past Python's recursion limit.
    """
    if isinstance(root, str):
        return fn(root)
    if not isinstance(root, (dict, list)):
        return root
    top: dict[str, Any] | list[Any] = {} if isinstance(root, dict) else []
    stack: list[tuple[Any, Any]] = [(root, top)]
    key: Any  # a str where dst is a dict
    while stack:
        src, dst = stack.pop()
        for key, value in (src.items() if isinstance(src, dict) else enumerate(src)):
            if isinstance(value, (dict, list)):
                new: Any = {} if isinstance(value, dict) else []
                stack.append((value, new))
            else:
                new = fn(value) if isinstance(value, str) else value
            if isinstance(dst, dict):
                dst[fn(key)] = new
            else:
                dst.append(new)
    return top


def _strings(node: Any) -> set[str]:
    """Every string value in a JSON value (not keys), at any depth."""
    found: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
        elif isinstance(n, str):
            found.add(n)
    return found


DEFAULT_ARGUMENT_RULES = (
    ArgumentRule("object-add", ("data",), {"qom-type": "secret"}),
    ArgumentRule("object-add", ("props", "data"), {"qom-type": "secret"}),
    ArgumentRule("set_password", ("password",)),
    ArgumentRule("change-vnc-password", ("password",)),
    ArgumentRule("block_passwd", ("password",)),
)

DEFAULT_HMP_RULES = (HmpPasswordRule(), HmpObjectAddRule())

#: A value is taken out of *every* later record only from this length on
#: (shorter ones would eat ordinary words); echoes in the reply of the very
#: command it came from are taken out from :data:`MIN_ECHO_LEN` on.
MIN_GLOBAL_LEN = 4
MIN_ECHO_LEN = 3


@attrs.frozen
class Redactor:
    """Redaction rules and options; :meth:`session` makes the per-recording state.

    *values*: secrets known up front (replay's ``--secret`` values), taken out
    of every record. *keep_input*: log the raw bytes of unparsable input
    (default: only their SHA-256 and length, since they may hold a secret).
    *builtin*: the rules that need no configuration (argv, domain XML, QOM
    reads and writes of secrets, echoes); off only in :data:`NO_REDACTION`.
    """

    argument_rules: tuple[ArgumentRule, ...] = DEFAULT_ARGUMENT_RULES
    hmp_rules: tuple[Any, ...] = DEFAULT_HMP_RULES
    values: frozenset[str] = frozenset()
    keep_input: bool = False
    builtin: bool = True

    def with_rules(self, rules: Iterable[ArgumentRule | HmpRule]) -> Redactor:
        """A redactor with *rules* added to these."""
        rules = list(rules)
        return attrs.evolve(
            self,
            argument_rules=self.argument_rules + tuple(r for r in rules if isinstance(r, ArgumentRule)),
            hmp_rules=self.hmp_rules + tuple(r for r in rules if not isinstance(r, ArgumentRule)),
        )

    def with_values(self, values: Iterable[str]) -> Redactor:
        """A redactor that also takes *values* out of every record."""
        return attrs.evolve(self, values=self.values | {v for v in values if v})

    def redact(self, msg: dict[str, Any]) -> dict[str, Any]:
        """*msg* with its secrets replaced (the same object when there are none)."""
        return self.redact_found(msg)[0]

    def redact_found(self, msg: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
        """:meth:`redact`, and the secret values it took out."""
        name = wire.command_name(msg)
        arguments = msg.get("arguments")
        if not isinstance(name, str) or not isinstance(arguments, dict):
            return msg, set()
        if name == "human-monitor-command":
            line = arguments.get("command-line")
            if not isinstance(line, str):
                return msg, set()
            new_line, values = line, set()
            for rule in self.hmp_rules:
                new_line, found = _hmp_apply(rule, new_line)
                values |= found
            if new_line == line:
                return msg, set()
            return {**msg, "arguments": {**arguments, "command-line": new_line}}, values
        out, values, changed = None, set(), False
        for rule in self.argument_rules:
            if not fnmatch.fnmatchcase(name, rule.command):
                continue
            if out is None:
                out = map_strings(msg, str)  # a deep copy at any depth
            before = _at(out["arguments"], rule.path)
            if rule.apply(name, out["arguments"]):
                changed = True
                values |= _strings(before)
        return (out, values) if out is not None and changed else (msg, set())

    def session(self) -> RecordScrubber:
        """Fresh per-recording state (which commands touch secrets, which values are known)."""
        return RecordScrubber(self)


def _at(node: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _object_name(path: Any) -> str | None:
    return path.rstrip("/").rsplit("/", 1)[-1] if isinstance(path, str) else None


#: Commands the stateful rules look at (besides the argument rules' commands).
_STATEFUL_COMMANDS = frozenset({"human-monitor-command", "object-add", "qom-get", "qom-set", "qom-list-properties"})

#: Record kinds whose ``msg`` is a client's command, and so may hold secrets.
COMMAND_KINDS = frozenset({"command", "local"})


class RecordScrubber:
    """Takes secrets out of a recording's records (on-disk dicts), one after another.

    It remembers what it learns: secret object ids (argv, ``object-add``),
    secret values (to take out of every later record), and for each command
    in flight the values redacted from it and whether its reply returns a
    secret (``qom-get`` of a secret's ``data``), to redact its reply.
    """

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.values: set[str] = {v for v in redactor.values if len(v) >= MIN_ECHO_LEN}  # given: trusted
        self.secret_ids: set[str] = set()
        self._pending: Pending[tuple[set[str], bool]] = Pending()
        self._enc: dict[str, bytes] = {}
        self._passes: dict[str, bool] = {}  # command name -> passes_command
        patterns = {r.command for r in redactor.argument_rules}
        self._globs = tuple(p for p in patterns if any(c in p for c in "*?["))
        self._names = frozenset(patterns - set(self._globs)) | _STATEFUL_COMMANDS

    def record(self, d: dict[str, Any]) -> dict[str, Any]:
        """*d* (a record's on-disk dict, not changed) with its secrets taken out."""
        kind = d.get("kind")
        echo: set[str] = set()
        if not self.redactor.builtin:
            if kind in COMMAND_KINDS and isinstance(d.get("msg"), dict):
                d = {**d, "msg": self.redactor.redact(d["msg"])}
            return d
        if kind == "header":
            d = self._header(d)
        elif kind in COMMAND_KINDS and isinstance(d.get("msg"), dict) and self._may_hold(d["msg"]):
            msg, echo, reads = self._command(d["msg"])
            if msg is not d["msg"]:
                d = {**d, "msg": msg}
            if kind == "command" and (echo or reads):
                self._pending.command(d.get("seq", -1), (echo, reads))
            elif kind == "local" and isinstance(d.get("reply"), dict) and reads:
                d = {**d, "reply": _redact_return(d["reply"])}
        elif kind == "reply" and self._pending:
            echo, reads = self._pending.reply(d.get("cmd")) or (echo, False)
            if reads and isinstance(d.get("msg"), dict):
                d = {**d, "msg": _redact_return(d["msg"])}
        if kind == "local" and d.get("input") is not None and not self.redactor.keep_input:
            d = _hash_input(d)
        elif kind == "local" and isinstance(d.get("input"), bytes):
            d = {**d, "input": d["input"].decode("utf-8", "backslashreplace")}
        values = (self.values | {v for v in echo if len(v) >= MIN_ECHO_LEN}) if echo else self.values
        if values and kind != "header":
            body = codec.dumps(d)  # one fast look at the whole record, keys too
            if any(self._encoded(v) in body for v in values):
                d = scrub(d, values)
        return d

    # -- the writer's hot path asks first whether :meth:`record` would change anything --

    def passes_command(self, msg: dict[str, Any]) -> bool:
        """Whether a ``command`` record of *msg* goes through unchanged (but for :meth:`echoes`)."""
        name = msg.get("execute")
        passes = self._passes.get(name) if isinstance(name, str) else None
        if passes is None:
            passes = self.redactor.builtin and not self._may_hold(msg)
            if isinstance(name, str) and len(self._passes) < 4096:  # names come from clients: bounded
                self._passes[name] = passes
        return passes

    def passes_reply(self, cmd: int) -> bool:
        """Whether the ``reply`` record to *cmd* goes through unchanged (but for :meth:`echoes`)."""
        return cmd not in self._pending

    def echoes(self, body: bytes) -> bool:
        """Whether a record's JSON bytes hold one of the secret values known so far."""
        return any(self._encoded(v) in body for v in self.values)

    def _may_hold(self, msg: dict[str, Any]) -> bool:
        """Whether a rule could apply to *msg* (the fast path skips all others)."""
        name = wire.command_name(msg)
        if not isinstance(name, str):
            return False
        return name in self._names or any(fnmatch.fnmatchcase(name, g) for g in self._globs)

    def _encoded(self, value: str) -> bytes:
        """*value* as it appears inside a JSON string (escaping is per character)."""
        enc = self._enc.get(value)
        if enc is None:
            enc = self._enc[value] = codec.dumps(value)[1:-1]
        return enc

    def _header(self, d: dict[str, Any]) -> dict[str, Any]:
        d = dict(d)
        if isinstance(d.get("qemu_argv"), list) and all(isinstance(a, str) for a in d["qemu_argv"]):
            d["qemu_argv"], found, ids = redact_argv(d["qemu_argv"])
            self._learn(found, ids)
        if isinstance(d.get("domain_xml"), str):
            d["domain_xml"], found, ids = redact_domain_xml(d["domain_xml"], self.values)
            self._learn(found, ids)
        return scrub(d, self.values) if self.values else d

    def _learn(self, values: set[str], ids: set[str]) -> None:
        self.values |= {v for v in values if len(v) >= MIN_GLOBAL_LEN}
        self.secret_ids |= ids

    def _command(self, msg: dict[str, Any]) -> tuple[dict[str, Any], set[str], bool]:
        """The logged copy of a command, the values taken out, and whether its reply is secret."""
        msg, values = self.redactor.redact_found(msg)
        name = wire.command_name(msg)
        args = msg.get("arguments")
        if not isinstance(args, dict):
            args = {}
        reads = False
        if name == "object-add" and args.get("qom-type") == "secret" and isinstance(args.get("id"), str):
            self.secret_ids.add(args["id"])
        elif name in ("qom-get", "qom-set"):
            touches = args.get("property") in SECRET_PROPERTIES or _object_name(args.get("path")) in self.secret_ids
            if touches and name == "qom-get":
                reads = True
            elif touches and "value" in args and args["value"] != REDACTED:
                values |= _strings(args["value"])
                msg = {**msg, "arguments": {**args, "value": REDACTED}}
        elif name == "qom-list-properties":
            reads = True  # a default-value of data/password is redacted, not the list
        elif name == "human-monitor-command" and isinstance(args.get("command-line"), str):
            msg, found, reads = self._hmp_qom(msg, args["command-line"])
            values |= found
            m = re.match(r"\s*object_add\s+(.*)", args["command-line"], re.S)
            if m:
                self.secret_ids |= redact_object_spec(m.group(1))[2]
        self._learn(values, set())
        return msg, values, reads

    def _hmp_qom(self, msg: dict[str, Any], line: str) -> tuple[dict[str, Any], set[str], bool]:
        tokens = hmp_tokens(line)
        words = [t[2] for t in tokens]
        if words[:1] not in (["qom-get"], ["qom-set"]):
            return msg, set(), False
        at = 2 if words[1:2] == ["-j"] else 1
        if len(words) < at + 2:
            return msg, set(), False
        touches = words[at + 1] in SECRET_PROPERTIES or _object_name(words[at]) in self.secret_ids
        if not touches:
            return msg, set(), False
        if words[0] == "qom-get":
            return msg, set(), True
        hit = [t for t in tokens[at + 2 :] if t[2] != REDACTED]
        if not hit:
            return msg, set(), False
        new = _replace_tokens(line, hit)
        values = {t[2] for t in hit} | {line[t[0] : t[1]] for t in hit}
        return {**msg, "arguments": {**msg["arguments"], "command-line": new}}, values, False


def _redact_return(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply whose ``return`` is a secret: a string becomes :data:`REDACTED`;
    in a property list, ``default-value`` of ``data``/``password``."""
    if "return" not in reply:
        return reply
    ret = reply["return"]
    if isinstance(ret, list):
        ret = [
            {**p, "default-value": REDACTED}
            if isinstance(p, dict) and p.get("name") in SECRET_PROPERTIES and "default-value" in p
            else p
            for p in ret
        ]
    elif ret != {}:
        ret = REDACTED
    return {**reply, "return": ret}


def _hash_input(d: dict[str, Any]) -> dict[str, Any]:
    raw = d["input"]
    raw = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "surrogateescape")
    d = {k: v for k, v in d.items() if k != "input"}
    d["input_sha256"] = hashlib.sha256(raw).hexdigest()
    d["input_len"] = len(raw)
    if "orig" in d:
        d["orig"] = d.pop("orig")
    return d


#: Redaction that changes nothing (for tests and for users who must keep secrets).
NO_REDACTION = Redactor((), (), keep_input=True, builtin=False)
