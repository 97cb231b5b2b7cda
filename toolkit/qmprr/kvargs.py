"""qmp-shell's ``key=value`` command arguments, for ``qmprr inject``.

``blockdev-del node-name=top`` is ``{"execute": "blockdev-del", "arguments":
{"node-name": "top"}}``. The rules are qmp-shell's (``QMPShell._parse_value``
and ``QMPShell._cli_expr`` in qemu.qmp 0.0.6, ``qemu/qmp/qmp_shell.py``), so a
line that works there works here:

- a value is an integer when Python's ``int()`` takes it (``3``, ``-1``);
- ``true`` / ``false`` in any case are booleans;
- a value starting with ``{`` or ``[`` is JSON, or failing that a Python
  literal with ``true``/``false``/``null`` allowed (``{'a':1}``);
- anything else is a string, as written: ``1.5``, ``null`` and quotes stay
  text (give such values with ``-j '{...}'``);
- a dotted key nests: ``a.b=1 a.c=2`` is ``{"a": {"b": 1, "c": 2}}``; a key
  set twice, or used both as a leaf and as an object, is an error.

Deviations, all where qmp-shell would crash or send nonsense: every key
nests from the top (qmp-shell 0.0.6 stays inside the object of the last
dotted key, so its ``file.driver=null-co file.size=1`` sends
``{"file": {"driver": "null-co", "file": {"size": 1}}}``); a value that is
neither JSON nor a literal (``{[1]:2}``, too deep) is a string; an empty key
or key part (``=1``, ``a..b=1``) is an error. The shell has
already split the words, so qmp-shell's own quoting does not apply.
``-j`` arguments are the starting object that ``key=value`` pairs add to.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable
from typing import Any

from . import codec
from .errors import QmprrError


class ArgumentsError(QmprrError):
    """Command-line arguments that do not make a QMP command."""


class _FuzzyJSON(ast.NodeTransformer):
    """qmp-shell's ``FuzzyJSON``: the names true, false and null as Python constants."""

    def visit_Name(self, node: ast.Name) -> ast.AST:  # noqa: N802 (ast's naming)
        values = {"true": True, "false": False, "null": None}
        if node.id in values:
            return ast.Constant(value=values[node.id])
        return node


def parse_value(text: str) -> Any:
    """One ``key=value`` value, by qmp-shell's rules (see the module docstring)."""
    try:
        return int(text)
    except ValueError:
        pass
    if text.lower() == "true":
        return True
    if text.lower() == "false":
        return False
    if text.startswith(("{", "[")):
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            pass
        try:
            return ast.literal_eval(_FuzzyJSON().visit(ast.parse(text, mode="eval")))
        except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
            pass
    return text


def add_pairs(words: Iterable[str], arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """*arguments* (a new dict by default) with each ``key=value`` of *words* set in it."""
    out: dict[str, Any] = arguments if arguments is not None else {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ArgumentsError(f"expected a key=value pair, got {word!r}")
        path = key.split(".")
        if not all(path):
            raise ArgumentsError(f"{word!r}: an empty key, or an empty part of a dotted key")
        parent = out
        for depth, part in enumerate(path[:-1]):
            child = parent.setdefault(part, {})
            if not isinstance(child, dict):
                raise ArgumentsError(f'cannot use "{".".join(path[:depth + 1])}" as both leaf and non-leaf key')
            parent = child
        leaf = path[-1]
        if leaf in parent:
            if isinstance(parent[leaf], dict):
                raise ArgumentsError(f'cannot use "{key}" as both leaf and non-leaf key')
            raise ArgumentsError(f'cannot set "{key}" multiple times')
        parent[leaf] = parse_value(value)
    return out


def _name_like(text: str) -> bool:
    return bool(text) and text.replace("-", "").replace("_", "").isalnum()


def build_command(
    command: str | None, pairs: Iterable[str] = (), json_arguments: str | None = None
) -> dict[str, Any] | None:
    """The message for ``inject COMMAND [KEY=VALUE ...] [-j JSON]``; None when there is no COMMAND.

    COMMAND is a whole JSON message (``{"execute": ...}``; nothing may be
    added to it) or a command name.
    """
    pairs = list(pairs)
    if command is None:
        if pairs or json_arguments is not None:
            raise ArgumentsError("arguments given but no command name before them")
        return None
    try:
        msg = codec.loads(command)
    except codec.JSONDecodeError:
        msg = None
    if msg is not None:
        if not isinstance(msg, dict) or not isinstance(msg.get("execute"), str):
            raise ArgumentsError('the command must be a JSON object with "execute", e.g. \'{"execute": "query-status"}\'')
        if pairs or json_arguments is not None:
            raise ArgumentsError("key=value and -j go with a command name, not with a whole JSON message")
        return dict(msg)
    if not _name_like(command):
        raise ArgumentsError(f"not JSON and not a command name: {command!r}")
    arguments: dict[str, Any] = {}
    if json_arguments is not None:
        try:
            given = codec.loads(json_arguments)
        except codec.JSONDecodeError as exc:
            raise ArgumentsError(f"-j: not JSON: {exc}") from None
        if not isinstance(given, dict):
            raise ArgumentsError("-j takes a JSON object of arguments, e.g. -j '{\"node-name\": \"top\"}'")
        arguments = given
    add_pairs(pairs, arguments)
    msg = {"execute": command}
    if arguments or json_arguments is not None:
        msg["arguments"] = arguments
    return msg
