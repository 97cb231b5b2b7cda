"""A recording is untrusted input: what replay refuses to send to a real QEMU.

* ``migrate`` / ``migrate-incoming`` with an ``exec:`` URI, and HMP
  ``migrate exec:…``: they run host programs;
* file paths in arguments outside the mapped roots (``--map-path FROM=TO``
  rewrites recorded paths; the rewritten ones are allowed);
* file descriptors (``getfd``, ``add-fd``): they cannot come from a log;
* redacted secrets: sent only with ``--secret ID=VALUE``, never as the marker.

``--allow-unsafe`` lifts the first two refusals.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

import attrs

from ..recording import REDACTED

FD_COMMANDS = frozenset({"getfd", "add-fd", "closefd", "remove-fd"})
_HMP_EXEC_MIGRATE = re.compile(r"^\s*migrate(?:_incoming)?\s+(?:-\w+\s+)*\"?exec:")
_PATH_KEYS = frozenset({"filename", "file", "path", "protocol", "uri"})


@attrs.frozen
class PathMap:
    """``FROM=TO`` prefixes: recorded host paths and where they live here."""

    pairs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, items: Iterable[str]) -> PathMap:
        pairs = []
        for item in items:
            src, sep, dst = item.partition("=")
            if not sep or not src or not dst:
                raise ValueError(f"--map-path takes FROM=TO, not {item!r}")
            pairs.append((src.rstrip("/") or "/", dst.rstrip("/") or "/"))
        return cls(tuple(pairs))

    def rewrite(self, value: Any) -> Any:
        """*value* with recorded paths under a FROM prefix moved to TO (recursively).

        A path is recognised at the start of a string or after ``=``, ``:`` or
        ``"`` (so ``file.filename=/x``, ``file:/x`` and JSON option strings are
        covered), and must end there or continue with ``/``, ``,`` or ``"``.
        """
        if isinstance(value, str):
            for pattern, dst in self._patterns():
                value = pattern.sub(lambda m: dst, value)
            return value
        if isinstance(value, dict):
            return {k: self.rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.rewrite(v) for v in value]
        return value

    def _patterns(self) -> list[tuple[re.Pattern[str], str]]:
        return [
            (re.compile(r'(?:(?<=^)|(?<=[=:"]))' + re.escape(src) + r'(?=$|[/,"])'), dst)
            for src, dst in self.pairs
        ]

    def allowed_roots(self) -> list[str]:
        return [dst for _, dst in self.pairs]


def refusal(
    command: str,
    arguments: Any,
    *,
    allow_unsafe: bool,
    roots: list[str],
    secrets: dict[str, str],
) -> tuple[str, str] | None:
    """``(kind, reason)`` when the command must not be sent, else None.

    Kinds: ``unsafe`` (``--allow-unsafe`` lifts it), ``fd``, ``secret``.
    """
    args = arguments if isinstance(arguments, dict) else {}
    if command in FD_COMMANDS:
        return "fd", f"{command} passes a file descriptor, which a recording cannot carry"
    if _contains(args, REDACTED) and not _secret_for(command, args, secrets):
        what = args.get("id") or command
        return "secret", f"a redacted secret ({what}); give it with --secret {what}=VALUE"
    if allow_unsafe:
        return None
    if command in ("migrate", "migrate-incoming") and str(args.get("uri", "")).startswith("exec:"):
        return "unsafe", f"{command} with an exec: URI runs a host program: {args['uri']!r}"
    line = args.get("command-line") if command == "human-monitor-command" else None
    if isinstance(line, str) and _HMP_EXEC_MIGRATE.match(line):
        return "unsafe", f"HMP migrate to exec: runs a host program: {line!r}"
    for path in () if command.startswith("qom-") else _paths(args):  # QOM paths are not host paths
        if not any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots):
            return "unsafe", f"reaches host path {path!r} outside the mapped roots (use --map-path)"
    return None


def fill_secrets(command: str, arguments: Any, secrets: dict[str, str]) -> Any:
    """*arguments* with redaction markers replaced by the ``--secret`` value for them."""
    value = _secret_for(command, arguments if isinstance(arguments, dict) else {}, secrets)
    if value is None:
        return arguments

    def fill(node: Any) -> Any:
        if node == REDACTED:
            return value
        if isinstance(node, str) and REDACTED in node:
            return node.replace(REDACTED, value)
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        return node

    return fill(arguments)


def _secret_for(command: str, args: dict[str, Any], secrets: dict[str, str]) -> str | None:
    for key in (args.get("id"), args.get("protocol"), command):
        if isinstance(key, str) and key in secrets:
            return secrets[key]
    return None


def _contains(node: Any, needle: str) -> bool:
    if isinstance(node, str):
        return needle in node
    if isinstance(node, dict):
        return any(_contains(v, needle) for v in node.values())
    if isinstance(node, list):
        return any(_contains(v, needle) for v in node)
    return False


def _paths(node: Any, key: str | None = None) -> Iterable[str]:
    """Absolute host paths among the values of path-like keys."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _paths(v, key)
    elif isinstance(node, str) and key in _PATH_KEYS:
        value = node.split(":", 1)[1] if node.startswith(("file:", "unix:")) else node
        if value.startswith("/"):
            yield os.path.normpath(value)
