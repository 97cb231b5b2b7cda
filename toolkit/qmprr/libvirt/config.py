"""The wrapper's configuration: ``/etc/qmprr/libvirt.toml`` (``QMPRR_LIBVIRT_CONFIG`` moves it).

Keys (all optional)::

    folder = "/var/log/qmprr"        # recordings: FOLDER/NAME/UUID-START.jsonl
    sync = "batch"                   # always | batch | none (as launch --sync)
    qemu = "/usr/bin/qemu-system-x86_64"   # the real QEMU, unless the domain's is below
    strict = false                   # true: a VM that cannot be recorded does not start
    record_probes = false            # capability probes: recorded (true) or passed through
    debug = true                     # serve a debug socket beside each recording
    deny = ["migrate*"]              # refused to debug clients (as launch --deny)
    allow = []                       # permitted to debug clients (as launch --allow)

    [emulators]                      # written by 'qmprr libvirt install DOMAIN'
    "NAME" = "/usr/bin/qemu-system-x86_64"   # the domain's original <emulator>

Only this module reads it (stdlib ``tomllib``; no import of the rest of qmprr,
so a capability probe is passed on fast).
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

DEFAULT_PATH = "/etc/qmprr/libvirt.toml"
DEFAULT_FOLDER = "/var/log/qmprr"
DEFAULT_QEMU = "/usr/bin/qemu-system-x86_64"
_TYPES: dict[str, type | tuple[type, ...]] = {
    "folder": str, "sync": str, "qemu": str, "strict": bool, "record_probes": bool, "debug": bool,
    "deny": list, "allow": list, "emulators": dict,
}


class ConfigError(Exception):
    """The configuration file cannot be used; the message names the file and key."""


def config_path() -> str:
    return os.environ.get("QMPRR_LIBVIRT_CONFIG") or DEFAULT_PATH


def load(path: str | None = None) -> dict[str, Any]:
    """The configuration at *path* (default :func:`config_path`); ``{}`` when there is none."""
    path = path or config_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for key, value in data.items():
        want = _TYPES.get(key)
        if want is None:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(_TYPES))})")
        if not isinstance(value, want):
            raise ConfigError(f"{path}: {key} must be a {getattr(want, '__name__', want)}")
    if data.get("sync", "batch") not in ("always", "batch", "none"):
        raise ConfigError(f"{path}: sync must be always, batch or none")
    return data


def real_qemu(config: dict[str, Any], domain: str | None) -> str:
    """The QEMU binary the wrapper runs for *domain*."""
    emulators = config.get("emulators", {})
    if domain is not None and isinstance(emulators.get(domain), str):
        return str(emulators[domain])
    return str(config.get("qemu", DEFAULT_QEMU))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_emulator(path: str, domain: str, emulator: str | None) -> None:
    """Record (or with None, forget) *domain*'s original emulator in the ``[emulators]`` table.

    The rest of the file is kept as it is; the table is rewritten as the last one.
    """
    load(path)  # refuse to edit a file that does not parse
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    head, _, table = text.partition("[emulators]\n")
    emulators = dict(tomllib.loads("[emulators]\n" + table).get("emulators", {})) if table else {}
    if emulator is None:
        emulators.pop(domain, None)
    else:
        emulators[domain] = emulator
    out = head.rstrip("\n") + ("\n\n" if head.strip() else "")
    if emulators:
        out += "[emulators]\n" + "".join(f"{_quote(k)} = {_quote(v)}\n" for k, v in sorted(emulators.items()))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(out)
    os.replace(tmp, path)
