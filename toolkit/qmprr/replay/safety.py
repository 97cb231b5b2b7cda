"""A recording is untrusted input: what replay refuses to send to a real QEMU.

This is the second wall (the first is :mod:`qmprr.sandbox`): it reports
*what* was refused and why, before anything runs. Conservative by design: a
string is scanned as raw text as well as through QEMU's own option syntax
(:mod:`qmprr.qemuopts`) and JSON, so a harmless value may be refused, but a
value QEMU reads as a host path or program is not let through.

* ``exec:`` anywhere (migrations, QMP or HMP, however quoted) runs a host program;
  so do the netdev keys ``script``/``downscript``/``helper``/``guestfwd``/``smb``;
* a host path (any piece of a value starting with ``/``, after splitting on
  QEMU's separators) outside the roots (the work folder, ``--map-path``
  targets, QEMU's firmware folders and a few devices); a relative path with
  ``..`` leaves the work folder;
* on the command line: options that escape qmprr (``-daemonize``,
  ``-readconfig``, ``-plugin``, ``-add-fd``, ``-runas``, ``-chroot``, ``-sandbox``,
  ``-s``), fd numbers (``fd=``), and network monitors and serial ports
  (``-qmp tcp:``, ``-chardev socket,host=``);
* file descriptors (``getfd``, ``add-fd``) cannot come from a log: a
  placeholder (``/dev/null``) is passed instead, and the step says so;
* redacted secrets: sent only with ``--secret ID=VALUE``, never as the marker.

:class:`~qmprr.replay.policy.ReplayPolicy` applies these; ``--allow-unsafe``
turns them (and the sandbox) off.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from .. import codec, qemuopts
from ..recording import REDACTED
from ..recording.redact import hmp_tokens

#: Commands that pass a file descriptor with them: replay sends a placeholder.
FD_COMMANDS = frozenset({"getfd", "add-fd"})
PLACEHOLDER_FD = "/dev/null"
#: Keys whose value names a host program QEMU runs (or a host service it starts).
_PROGRAM_KEYS = frozenset({"script", "downscript", "helper", "guestfwd", "smb"})
#: Keys whose value is an fd number of QEMU's: never meaningful in a recording.
_FD_KEYS = frozenset({"fd", "fds", "vhostfd", "vhostfds", "sock_fd"})
#: Keys whose values are QOM paths or names, not host paths.
_NAME_KEYS = frozenset({"id", "qom-path"})
#: Host paths any replay may use: devices and QEMU's own firmware folders.
SAFE_ROOTS = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/usr/share/qemu",
              "/usr/share/seabios", "/usr/share/ovmf", "/usr/share/OVMF", "/usr/lib/ipxe")
#: Program names a recorded QEMU command line may start with.
QEMU_BINARY = re.compile(r"^qemu-system-[A-Za-z0-9_.-]+$")
#: Command-line options refused outright, and why.
_REFUSED_OPTIONS = {
    "-daemonize": "detaches QEMU from qmprr",
    "-readconfig": "reads options from a file qmprr does not check",
    "-plugin": "loads host code into QEMU",
    "-add-fd": "passes a file descriptor, which cannot come from a recording",
    "-runas": "changes QEMU's user",
    "-chroot": "changes QEMU's root",
    "-sandbox": "replay sets QEMU's sandbox itself",
    "-s": "opens a gdb server on a TCP port",
}
#: Options whose value is a character device spec (``tcp:...``, ``mon:...``).
_CHARDEV_SPEC_OPTIONS = frozenset({"-qmp", "-qmp-pretty", "-monitor", "-serial", "-parallel", "-debugcon", "-gdb", "-incoming"})
_NETWORK_SPECS = ("tcp:", "telnet:", "udp:", "websocket:", "tls:")
#: Options whose value is text for the guest, not for the host.
_GUEST_TEXT_OPTIONS = frozenset({"-append", "-name"})
#: Separators QEMU's option, URI and JSON syntaxes use: a path ends at any of them.
_PIECES = re.compile(r"""[\s=,:"'{}\[\]()<>|;]+""")


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
                value = pattern.sub(lambda _m, d=dst: d, value)  # type: ignore[misc]  # default argument binds this dst
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


def secret_missing(command: str, arguments: Any, secrets: dict[str, str]) -> str | None:
    """Why a command with a redaction marker cannot be sent (no ``--secret`` for it), or None."""
    args = arguments if isinstance(arguments, dict) else {}
    if _contains(args, REDACTED) and not _secret_for(command, args, secrets):
        what = args.get("id") or command
        return f"a redacted secret ({what}); give it with --secret {what}=VALUE"
    return None


def refusal(command: str, arguments: Any, roots: Iterable[str]) -> str | None:
    """Why a QMP command must not be sent to a real QEMU (runs a program, reaches the host), or None."""
    roots = [*roots, *SAFE_ROOTS]
    args = arguments if isinstance(arguments, dict) else {}
    if command in ("migrate", "migrate-incoming"):
        if str(args.get("uri", "")).startswith("exec:"):
            return f"{command} with an exec: URI runs a host program: {args['uri']!r}"
        if ("transport", "exec") in set(_pairs(args)):
            return f"{command} with an exec transport runs a host program"
    line = args.get("command-line") if command == "human-monitor-command" else None
    if isinstance(line, str):
        return _hmp_refusal(line, roots)
    if command.startswith("qom-"):  # QOM paths are not host paths
        return None
    for key, value in _pairs(args):
        if key in _PROGRAM_KEYS and value not in ("", "no"):
            return f"{key}={value!r} runs a host program"
        if key not in _NAME_KEYS:
            found = scan(value, roots)
            if found:
                return found
    return None


def _hmp_refusal(line: str, roots: list[str]) -> str | None:
    words = hmp_tokens(line)  # QEMU's own HMP tokenizer, the one redaction uses
    name = words[0][2] if words else ""
    if "exec:" in line and name.startswith("migrate"):
        return f"HMP migrate to exec: runs a host program: {line!r}"
    if name in ("qom-get", "qom-list", "qom_get", "qom_list", "device_del", "info", "help", "?"):
        return None  # they read, or remove a device; nothing they take names a host file
    for key, value in qemuopts_pairs(line):
        if key in _PROGRAM_KEYS and value not in ("", "no"):
            return f"{key}={value!r} runs a host program"
    return scan(line, roots)


def argv_refusal(args: list[str], roots: Iterable[str]) -> str | None:
    """Why a recorded QEMU command line (its options, after the program) must not run here, or None."""
    roots = [*roots, *SAFE_ROOTS]
    option = None
    for arg in args:
        name = "-" + arg[2:] if arg.startswith("--") and len(arg) > 2 else arg
        if name in _REFUSED_OPTIONS:
            return f"{name} {_REFUSED_OPTIONS[name]}"
        if option in _GUEST_TEXT_OPTIONS:
            option = None
            continue
        if option in _CHARDEV_SPEC_OPTIONS and arg.removeprefix("mon:").startswith(_NETWORK_SPECS):
            return f"{option} {arg!r} opens a network socket"
        for key, value in qemuopts_pairs(arg):
            if key in _PROGRAM_KEYS and value not in ("", "no"):
                return f"{key}={value!r} runs a host program"
            if key in _FD_KEYS:
                return f"{key}={value!r}: a file descriptor cannot come from a recording"
        if option == "-chardev":
            items = qemuopts.parse(arg, implied=True)
            keys = {item.key for item in items}
            backend = items[0].value if items else ""
            if backend == "udp" or (backend == "socket" and keys & {"host", "port"}):
                return f"-chardev {arg!r} opens a network socket"
        found = scan(arg, roots)
        if found:
            return found
        option = name if name.startswith("-") else None
    return None


def json_body(text: str) -> str | None:
    """The JSON QEMU reads in *text*, or None when QEMU reads it as an option string.

    Block filenames ``json:...`` are JSON after the prefix, whatever whitespace
    follows it (``parse_json_filename``); ``-object``/``-device``/``-blockdev``
    values are JSON when their first byte is ``{``.
    """
    if text.startswith("json:"):
        return text[len("json:") :]
    return text if text.startswith("{") else None


def read_json(body: str) -> Any:
    """*body* decoded as QEMU decodes it (single quotes, ``\\/``...); ValueError if it cannot."""
    try:
        return codec.loads(body)
    except codec.JSONDecodeError:
        raise ValueError(f"not JSON QEMU's parser reads: {body[:80]!r}") from None


def qemuopts_pairs(text: str) -> Iterator[tuple[str, str]]:
    """``(key, value)`` of *text* read as a QEMU option string, and of JSON in it (innermost keys)."""
    body = json_body(text)
    if body is not None:
        try:
            yield from _pairs(read_json(body))
        except ValueError:
            pass  # scan() refuses what cannot be read
        return
    for item in qemuopts.parse(text, implied=True):
        if item.key is not None and not item.flag:
            yield item.key.rsplit(".", 1)[-1], item.value


def scan(text: str, roots: list[str]) -> str | None:
    """Why *text* reaches outside the roots or runs a program, or None.

    Every piece of *text* between QEMU's separators is checked, then every
    value QEMU's option parser and JSON read from it (``,,`` unescaped,
    ``\\/`` decoded), so no spelling of a path hides it.
    """
    if "exec:" in text or text.lstrip().startswith("|"):
        return f"{text!r} runs a host program"
    for piece in _PIECES.split(text):
        found = _path_problem(piece, roots)
        if found:
            return found
    body = json_body(text)
    if body is not None:
        # QEMU reads it as JSON, not as an option string (whose comma-split
        # fragments of JSON would be unreadable JSON); the pieces above caught paths.
        decoded = _json_strings(body)
        if decoded is None:
            return f"{text[:80]!r}: JSON qmprr cannot read, so cannot check"
    else:
        decoded = qemuopts.values(text)
    for value in decoded:
        found = scan(value, roots) if value != text else None
        if found:
            return found
    return None


def _path_problem(piece: str, roots: list[str]) -> str | None:
    if piece.startswith("/"):
        norm = "/" + os.path.normpath(piece).lstrip("/")
        if not any(norm == r or norm.startswith(r.rstrip("/") + "/") for r in roots):
            return f"reaches host path {piece!r} outside the mapped roots (use --map-path)"
    elif ".." in piece.split("/"):
        return f"reaches {piece!r} outside the work folder"
    return None


def _json_strings(text: str) -> list[str] | None:
    """Every key and string of the JSON in *text*; None when it is not JSON QEMU's parser reads."""
    try:
        node = read_json(text)
    except ValueError:
        return None
    out: list[str] = []
    for key, value in _pairs(node):
        out += [key, value]
    return out


def resolve_qemu(recorded: str, qemu: str | None) -> str:
    """The local QEMU to run for a recorded ``argv[0]``: ``--qemu``, else the same-named emulator on PATH.

    A recorded path is never run: only its name counts, and it must be a
    QEMU system emulator. Raises ValueError saying why not, LookupError when it is not installed.
    """
    if qemu is not None:
        found = shutil.which(qemu)
        if found is None:
            raise LookupError(f"QEMU binary {qemu!r} not found: install qemu-system-x86 or use --qemu BINARY")
        return found
    name = os.path.basename(recorded)
    if not QEMU_BINARY.match(name):
        raise ValueError(f"the recorded command line does not start a QEMU system emulator: {recorded!r}")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if os.path.isabs(p))
    found = shutil.which(name, path=path)
    if found is None:
        raise LookupError(f"QEMU binary {name!r} not found on PATH: install qemu-system-x86 or use --qemu BINARY")
    return found


def _pairs(node: Any, key: str | None = None) -> Iterable[tuple[str, str]]:
    """``(key, value)`` for every string value of a JSON tree, by its nearest key (at any depth)."""
    stack = [(node, key)]
    while stack:
        n, k = stack.pop()
        if isinstance(n, dict):
            stack.extend((v, name) for name, v in reversed(n.items()))
        elif isinstance(n, list):
            stack.extend((v, k) for v in reversed(n))
        elif isinstance(n, str) and k is not None:
            yield k, n


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
