"""What would make a QEMU outside qmprr's network namespace open a network socket.

A QEMU qmprr starts for a replay or the hybrid fake runs in a network
namespace with only loopback (:mod:`qmprr.sandbox`): what a recording or a
client makes it listen on or connect to stays inside. A QEMU someone else
started (``replay --target socket:``, ``fake --forward-unmatched --upstream``)
has the host's network, and nothing structural confines it, so these checks
are the only wall there: a command that would open a listener, connect out or
give the guest a way to the host's network is refused, and the reason says
which part of it.

Conservative, as :mod:`qmprr.replay.safety` is: a harmless value may be
refused, a network endpoint is not let through. Refused:

* a socket address of type ``inet`` or ``vsock`` anywhere in the arguments, an
  abstract UNIX socket (``abstract``: it lives in the network namespace, open
  to every local user), and any ``hostfwd`` or ``guestfwd`` member; keys are
  read by their last part, so ``file.driver`` is a ``driver``;
* any string naming a network protocol (``tcp:``, ``udp:``, ``rdma:``,
  ``nbd:``, ``nbd+tcp://``, ``http://`` and the other URL schemes QEMU's block
  layer and migration read; ``host=`` in option strings), and the same inside
  JSON a string holds (``json:`` block filenames);
* netdevs but ``hubport`` (``user`` reaches the host's network, ``socket``,
  ``stream``, ``dgram``, ``tap``, ``vde``, ``l2tpv3`` and the rest open sockets
  or interfaces), network block drivers (``nbd``, ``ssh``, ``http``…), the
  objects ``input-barrier``, ``can-host-socketcan`` and ``dbus-vmstate``;
* HMP: ``gdbserver`` (but ``none`` or a ``unix:`` path), ``hostfwd_add``,
  ``netdev_add`` (but ``hubport``), ``nbd_server_start`` (but on a ``unix:``
  path), ``object_add`` of the objects above, ``chardev-add``/``chardev-change``
  of ``udp`` or of ``socket`` with ``host``/``port``; every argument is read
  as QEMU's option syntax and JSON (``json:`` filenames), and checked as above.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .. import qemuopts
from ..recording.redact import hmp_tokens
from .safety import json_body, read_json

#: Netdev types that open nothing: a hub port joins other netdevs.
_QUIET_NETDEVS = frozenset({"hubport"})
#: Block drivers that connect to a server.
NETWORK_DRIVERS = frozenset({"nbd", "ssh", "http", "https", "ftp", "ftps", "iscsi", "gluster", "rbd", "nfs",
                             "curl", "libiscsi", "iser"})
#: QOM types that connect out or reach a host interface (``dbus-vmstate`` takes D-Bus addresses).
NETWORK_OBJECTS = frozenset({"input-barrier", "can-host-socketcan", "dbus-vmstate"})
#: Members that name a network endpoint, whatever object holds them (``host``/``port`` alone do
#: not: a USB device has a ``port``; every network address among QEMU's types has a ``type``).
_ENDPOINT_KEYS = frozenset({"hostfwd", "guestfwd"})
#: Socket address types that reach past a UNIX socket.
_NETWORK_TYPES = frozenset({"inet", "vsock"})
_TRUE = frozenset({"on", "yes", "true", "y"})
#: HMP commands that take a chardev spec.
_HMP_CHARDEV = frozenset({"chardev-add", "chardev-change"})
#: A network protocol named in a string: URIs, chardev specs, block URLs, D-Bus addresses, option keys.
NETWORK_TEXT = re.compile(
    r"(?:^|[\s=,:;\"'(\[-])(?:tcp|udp|rdma|telnet|tn3270|websocket|vsock|nbd(?:\+\w+)*|ssh|https?|ftps?"
    r"|iscsi|iser|gluster(?:\+\w+)?|rbd|nfs|sheepdog|vxhs|autolaunch)(?::|://)"
    r"|[^\s=,\"']json:"  # JSON inside another filename (blkdebug::json:{...}) is not read here: refused
    r"|(?:^|[\s,.:;])(?:host|hostfwd|guestfwd)=",
    re.IGNORECASE,
)


def refusal(command: str, arguments: Any) -> str | None:
    """Why *command* would open a network socket in a QEMU on the host's network, or None."""
    args = arguments if isinstance(arguments, dict) else {}
    if command == "human-monitor-command":
        line = args.get("command-line")
        return _hmp_refusal(line) if isinstance(line, str) else None
    if command.startswith("qom-"):
        return None  # QOM paths and property names, not endpoints
    if command in ("netdev_add", "netdev-add") and args.get("type") not in _QUIET_NETDEVS:
        return f"a netdev of type {args.get('type')!r} reaches the host's network"
    if command == "object-add" and args.get("qom-type") in NETWORK_OBJECTS:
        return f"an object of type {args['qom-type']!r} connects to the host's network"
    return _first(_pair_refusal(k, v) for k, v in _leaves(args))


def _leaves(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """``(key, value)`` for every scalar of a JSON tree, by the last part of its nearest key.

    A string that holds JSON (``json:`` filenames, JSON option values) is read
    and its leaves follow it.
    """
    stack: list[tuple[Any, str]] = [(node, key)]
    while stack:
        n, k = stack.pop()
        if isinstance(n, dict):
            stack.extend((v, str(name).rsplit(".", 1)[-1]) for name, v in n.items())
        elif isinstance(n, list):
            stack.extend((v, k) for v in n)
        else:
            yield k, n
            body = json_body(n) if isinstance(n, str) else None
            if body is not None:
                try:
                    stack.append((read_json(body), ""))
                except ValueError:
                    yield "", "json: that qmprr cannot read"


def _pair_refusal(key: str, value: Any) -> str | None:
    text = str(value).lower() if isinstance(value, (str, bool)) else ""
    if key in ("type", "backend") and text in _NETWORK_TYPES:
        return f"a socket address of type {value!r} opens a network socket"
    if key in ("driver", "format") and text in NETWORK_DRIVERS:
        return f"the block driver {value!r} connects to a server"
    if key == "abstract" and text in _TRUE:
        return "an abstract UNIX socket is open to every local user"
    if key in _ENDPOINT_KEYS:
        return f"{key!r} names a network endpoint"
    if key == "driver" and text.startswith("vhost-vsock"):
        return f"the device {value!r} gives the guest the host's vsock services"
    if key == "qom-type" and text in NETWORK_OBJECTS:
        return f"an object of type {value!r} connects to the host's network"
    if value == "json: that qmprr cannot read":
        return "a JSON value qmprr cannot read"
    if isinstance(value, str) and NETWORK_TEXT.search(value):
        return f"{value!r} names a network endpoint"
    return None


def _first(reasons: Iterator[str | None]) -> str | None:
    return next((r for r in reasons if r is not None), None)


def _hmp_refusal(line: str) -> str | None:
    words = [t[2] for t in hmp_tokens(line)]
    name = words[0] if words else ""
    specs = words[2:] if name == "chardev-change" else words[1:]  # chardev-change ID SPEC
    options = [qemuopts.parse(w, implied=True) for w in specs]
    first = options[0] if options else []
    implied = first[0].value if first and first[0].key is None else None
    keys = {item.key: item.value for opts in options for item in opts if item.key is not None}
    kinds = [implied] + [keys[k] for k in ("backend", "type", "qom-type") if k in keys]
    kind = kinds[-1]  # QEMU keeps the last value of a key; the first bare word is one more
    if len({k for k in kinds if k is not None}) > 1:
        return f"HMP {name} names its type twice ({', '.join(str(k) for k in kinds if k)})"
    if name == "gdbserver" and not (words[1:] and (words[1] == "none" or words[1].startswith("unix:"))):
        return "HMP gdbserver listens on a network port (tcp::1234 by default)"
    if name == "hostfwd_add":
        return "HMP hostfwd_add forwards a host port into the guest"
    if name == "netdev_add" and kind not in _QUIET_NETDEVS:
        return f"HMP netdev_add of type {kind!r} reaches the host's network"
    if name == "nbd_server_start" and not any(w.startswith("unix:") for w in words[1:]):
        return "HMP nbd_server_start listens on a network address"
    if name == "object_add" and kind in NETWORK_OBJECTS:
        return f"HMP object_add of {kind!r} connects to the host's network"
    if name in _HMP_CHARDEV and (kind == "udp" or (kind == "socket" and keys.keys() & {"host", "port"})):
        return f"HMP {name} of a {kind} chardev opens a network socket"
    if NETWORK_TEXT.search(line):
        return f"HMP {line!r} names a network endpoint"
    found = _first(_pair_refusal(k, v) for opts in options for item in opts
                   for k, v in _leaves(item.value, (item.key or "").rsplit(".", 1)[-1]))
    return f"HMP {name}: {found}" if found is not None else None
