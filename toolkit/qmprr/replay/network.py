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

* a socket address of type ``inet`` or ``vsock`` anywhere in the arguments,
  and any object with a ``hostfwd`` or ``guestfwd`` member;
* any string naming a network protocol (``tcp:``, ``udp:``, ``rdma:``,
  ``nbd:``, ``nbd+tcp://``, ``http://`` and the other URL schemes QEMU's block
  layer and migration read; ``host=`` in option strings), and the same inside
  JSON a string holds (``json:`` block filenames);
* netdevs but ``hubport`` (``user`` reaches the host's network, ``socket``,
  ``stream``, ``dgram``, ``tap``, ``vde``, ``l2tpv3`` and the rest open sockets
  or interfaces), network block drivers (``nbd``, ``ssh``, ``http``…), the
  objects ``input-barrier`` and ``can-host-socketcan``;
* HMP: ``hostfwd_add``, ``netdev_add`` (but ``hubport``), ``nbd_server_start``
  (but on a ``unix:`` path), ``chardev-add socket`` with ``host``/``port`` and
  ``udp``, and any line with the strings above.
"""

from __future__ import annotations

import re
from typing import Any

from ..recording.redact import hmp_tokens
from .safety import json_body, read_json

#: Netdev types that open nothing: a hub port joins other netdevs.
_QUIET_NETDEVS = frozenset({"hubport"})
#: Block drivers that connect to a server.
NETWORK_DRIVERS = frozenset({"nbd", "ssh", "http", "https", "ftp", "ftps", "iscsi", "gluster", "rbd", "nfs",
                             "curl", "libiscsi"})
#: QOM types that connect out or reach a host interface.
NETWORK_OBJECTS = frozenset({"input-barrier", "can-host-socketcan"})
#: Members that name a network endpoint, whatever object holds them (``host``/``port`` alone do
#: not: a USB device has a ``port``; every network address among QEMU's types has a ``type``).
_ENDPOINT_KEYS = frozenset({"hostfwd", "guestfwd"})
#: HMP commands that take a chardev spec (``socket,port=4444`` listens on every interface).
_HMP_CHARDEV = frozenset({"chardev-add", "chardev-change"})
#: A network protocol named in a string: URIs, chardev specs, block URLs, option keys.
NETWORK_TEXT = re.compile(
    r"(?:^|[\s=,:\"'(\[])(?:tcp|udp|rdma|telnet|tn3270|websocket|vsock|nbd(?:\+\w+)*|ssh|https?|ftps?"
    r"|iscsi|gluster(?:\+\w+)?|rbd|nfs|sheepdog|vxhs)(?::|://)"
    r"|(?:^|[\s,.])(?:host|hostfwd|guestfwd)=",
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
    return _tree_refusal(args)


def _tree_refusal(node: Any) -> str | None:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if n.get("type") in ("inet", "vsock"):
                return f"a socket address of type {n['type']!r} opens a network socket"
            if n.get("driver") in NETWORK_DRIVERS:
                return f"the block driver {n['driver']!r} connects to a server"
            member = next((k for k in n if k in _ENDPOINT_KEYS), None)
            if member is not None:
                return f"{member!r} names a network endpoint"
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
        elif isinstance(n, str):
            if NETWORK_TEXT.search(n):
                return f"{n!r} names a network endpoint"
            body = json_body(n)  # a json: block filename, a JSON -device/-object value
            if body is not None:
                try:
                    stack.append(read_json(body))
                except ValueError:
                    return f"{n!r} is JSON qmprr cannot read"
    return None


def _hmp_refusal(line: str) -> str | None:
    words = [t[2] for t in hmp_tokens(line)]
    name = words[0] if words else ""
    if name == "hostfwd_add":
        return "HMP hostfwd_add forwards a host port into the guest"
    if name == "netdev_add" and (len(words) < 2 or words[1].split(",")[0] not in _QUIET_NETDEVS):
        return f"HMP netdev_add {words[1] if len(words) > 1 else ''!r} reaches the host's network"
    if name == "nbd_server_start" and not any(w.startswith("unix:") for w in words[1:]):
        return "HMP nbd_server_start listens on a network address"
    if name in _HMP_CHARDEV and len(words) > 1:
        spec = words[-1].split(",")
        if spec[0] == "udp" or (spec[0] == "socket" and any(o.split("=")[0] in ("host", "port") for o in spec[1:])):
            return f"HMP {name} {words[-1]!r} opens a network socket"
    if NETWORK_TEXT.search(line):
        return f"HMP {line!r} names a network endpoint"
    return None
