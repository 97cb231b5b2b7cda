"""A recording is untrusted input: what replay refuses to send to a real QEMU.

* ``migrate`` / ``migrate-incoming`` with an ``exec:`` URI, and HMP
  ``migrate exec:…``: they run host programs;
* file paths in arguments outside the mapped roots (``--map-path FROM=TO``
  rewrites recorded paths; the rewritten ones are allowed);
* file descriptors (``getfd``, ``add-fd``) cannot come from a log: a
  placeholder (``/dev/null``) is passed instead, and the step says so;
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

#: Commands that pass a file descriptor with them: replay sends a placeholder.
FD_COMMANDS = frozenset({"getfd", "add-fd"})
PLACEHOLDER_FD = "/dev/null"
_HMP_EXEC_MIGRATE = re.compile(r"^\s*migrate(?:_incoming)?\s+(?:-\w+\s+)*\"?exec:")
#: Keys whose values are host paths (QMP arguments, -option key=value, HMP key=value).
_PATH_KEYS = frozenset(
    {"filename", "file", "path", "protocol", "uri", "out", "in", "target", "snapshot-file",
     "mem-path", "backing-file", "mountpoint", "logfile", "dir", "fsdev", "sock", "socket",
     "device", "smb", "tftp", "romfile", "evdev", "serial", "parallel", "monitor", "incoming"}
)
#: Keys whose values name a host program QEMU runs (netdev tap/bridge).
_PROGRAM_KEYS = frozenset({"script", "downscript", "helper", "guestfwd"})
#: Value prefixes that make QEMU run a host program.
_PROGRAM_VALUES = ("exec:", "|")
_PROGRAM_MARKERS = ("-cmd:",)
#: Host paths any replay may use: devices and QEMU's own firmware folders.
SAFE_ROOTS = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/usr/share/qemu",
              "/usr/share/seabios", "/usr/share/ovmf", "/usr/share/OVMF", "/usr/lib/ipxe")
#: Program names a recorded QEMU command line may start with.
_QEMU_BINARY = re.compile(r"^qemu-(?:system-[\w.-]+|kvm)$")


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
                value = pattern.sub(lambda _m, d=dst: d, value)  # type: ignore[misc]
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

    Kinds: ``unsafe`` (``--allow-unsafe`` lifts it), ``secret``.
    """
    args = arguments if isinstance(arguments, dict) else {}
    if _contains(args, REDACTED) and not _secret_for(command, args, secrets):
        what = args.get("id") or command
        return "secret", f"a redacted secret ({what}); give it with --secret {what}=VALUE"
    if allow_unsafe:
        return None
    if command in ("migrate", "migrate-incoming") and str(args.get("uri", "")).startswith("exec:"):
        return "unsafe", f"{command} with an exec: URI runs a host program: {args['uri']!r}"
    if command in ("migrate", "migrate-incoming") and ("transport", "exec") in set(_pairs(args)):
        return "unsafe", f"{command} with an exec transport runs a host program"
    line = args.get("command-line") if command == "human-monitor-command" else None
    if isinstance(line, str):
        if _HMP_EXEC_MIGRATE.match(line):
            return "unsafe", f"HMP migrate to exec: runs a host program: {line!r}"
        return _check_pairs(_hmp_pairs(line), roots)
    if command.startswith("qom-"):  # QOM paths are not host paths
        return None
    return _check_pairs(_pairs(args), roots)


def argv_refusal(argv: list[str], roots: list[str]) -> str | None:
    """Why a recorded QEMU command line must not run here, or None.

    Its program must be a QEMU (``qemu-system-*``, ``qemu-kvm``), and its
    options must not name host programs or paths outside the mapped roots.
    """
    if not argv or not _QEMU_BINARY.match(os.path.basename(argv[0])):
        return f"the recorded command line does not start QEMU: {argv[:1]!r}"
    pairs = [pair for arg in argv[1:] for pair in _keyval_pairs(arg)]
    found = _check_pairs(pairs, roots)
    return found[1] if found else None


def _check_pairs(pairs: Iterable[tuple[str, str]], roots: list[str]) -> tuple[str, str] | None:
    for key, value in pairs:
        if key in _PROGRAM_KEYS and value not in ("", "no"):
            return "unsafe", f"{key}={value!r} runs a host program"
        if value.startswith(_PROGRAM_VALUES) or any(m in value for m in _PROGRAM_MARKERS):
            return "unsafe", f"{value!r} runs a host program"
        if value.startswith("json:"):
            found = _check_pairs(_keyval_pairs(value[len("json:") :]), roots)
            if found:
                return found
            continue
        if key not in _PATH_KEYS and key != "":
            continue
        path = value.split(":", 1)[1] if value.startswith(("file:", "unix:", "pipe:")) else value
        if path.startswith("/"):
            norm = os.path.normpath(path)
            if not any(norm == r or norm.startswith(r.rstrip("/") + "/") for r in (*roots, *SAFE_ROOTS)):
                return "unsafe", f"reaches host path {path!r} outside the mapped roots (use --map-path)"
        elif key and ".." in path.split("/"):
            return "unsafe", f"reaches {path!r} outside the replay's folder"
    return None


def _pairs(node: Any, key: str | None = None) -> Iterable[tuple[str, str]]:
    """``(key, value)`` for every string value of a JSON tree, by its nearest key."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _pairs(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _pairs(v, key)
    elif isinstance(node, str) and key is not None:
        yield key, node


def _keyval_pairs(text: str) -> Iterable[tuple[str, str]]:
    """``key=value`` pairs of a QEMU option string (JSON options too); bare paths as key ''."""
    if text.startswith("{"):
        try:
            import json

            yield from _pairs(json.loads(text))
        except ValueError:
            pass
        return
    for part in re.split(r"(?<!,),(?!,)", text):
        key, sep, value = part.partition("=")
        if sep:
            yield key.rsplit(".", 1)[-1], value.replace(",,", ",")
        elif part.startswith(("/", "file:", "pipe:", "exec:", "unix:")):
            yield "", part


def _hmp_pairs(line: str) -> Iterable[tuple[str, str]]:
    """Pairs of an HMP command line: its key=value options, and bare absolute paths."""
    for token in line.split()[1:]:
        yield from _keyval_pairs(token.strip("'\""))


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
    hmp_id = None
    line = args.get("command-line")
    if isinstance(line, str):
        m = re.search(r"(?:^|[\s,])id=((?:[^,\s]|,,)+)", line)
        hmp_id = m.group(1) if m else None
    for key in (args.get("id"), hmp_id, args.get("protocol"), command):
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
