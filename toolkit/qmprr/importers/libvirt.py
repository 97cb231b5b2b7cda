"""From parsed libvirt logs to recordings: headers, QEMU-log merging, file names.

One recording per monitor connection. Its header says where it came from
(``labels``: ``import``, ``source``, ``monitor``, ``connection``, ``vm`` or
``probe``, ``libvirt``, ``daemon``, ``lines``), ``started`` is the time of its
first record (``QEMU_MONITOR_NEW``, or a taint logged just before it), and
``qemu_version`` is the greeting's. With the VM's QEMU log, ``qemu_argv`` and
``qemu_env`` come from the run that was going on when the connection opened:
the argv minus the monitor libvirt talked through (a replay brings its own),
which a ``note`` right after the header lists, and the log's taint lines
become ``taint`` records (unless the debug log already had them). A capability
probe's argv is libvirt's probe command line (``qemuProcessQMPLaunch``) without
its ``-qmp``, ``-pidfile`` and ``-daemonize``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import attrs

from ..recording import Header, Msg, Note, Taint
from ..recording.header import greeting_version, new_header
from .libvirt_log import Connection, LibvirtLogParser
from .qemu_log import QemuLog, QemuRun
from .writer import ImportWriter, Item, LogImportError

#: libvirt 9.0's capability probe: ``qemuProcessQMPLaunch`` runs BINARY with these
#: (and ``-qmp unix:...``, ``-pidfile ...``, ``-daemonize``, which a replay does not want).
PROBE_ARGS = ["-S", "-no-user-config", "-nodefaults", "-nographic"]

#: Two taint lines with the same reason this close in time are the same taint.
_SAME_TAINT_SECONDS = 1.0


@attrs.define
class Written:
    """One recording written by an import."""

    conn: Connection
    path: str
    records: int
    qemu_log: str | None = None  # basename of the QEMU log used
    warnings: list[str] = attrs.Factory(list)


@attrs.define
class QemuMatch:
    log: QemuLog
    run: QemuRun
    first_of_run: bool


def output_name(conn: Connection) -> str:
    """``NNN-LABEL-0xADDR.jsonl``: in log order, the VM (or probe) by name, the monitor."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", conn.label.replace("probe:", "probe-")).strip("-") or "unknown"
    return f"{conn.index:03d}-{slug}-{conn.mon}.jsonl"


def match_qemu_log(conn: Connection, parser: LibvirtLogParser, logs: list[QemuLog], warnings: list[str]) -> QemuMatch | None:
    """The QEMU log run that belongs to *conn*, if one of *logs* has it."""
    if not logs or conn.probe:
        return None
    candidates = []
    for log in logs:
        run = log.run_for(conn.start)
        if run is None:
            continue
        guest = run.guest_name
        if conn.name and guest and guest != conn.name:
            continue
        candidates.append((log, run))
    if not candidates:
        if len(logs) == 1 and conn.name and conn.name not in {r.guest_name for r in logs[0].runs}:
            warnings.append(f"{logs[0].name} is the log of another VM ({_guests(logs[0])}), not of {conn.name}: not used")
        elif len(logs) == 1:
            warnings.append(f"{logs[0].name} has no QEMU run going on at {conn.stamp}: not used")
        return None
    if len(candidates) > 1 and not conn.name:
        warnings.append("several QEMU logs fit a connection whose VM name the log does not tell: none used")
        return None
    log, run = candidates[0]
    first = not any(
        other is not conn
        and other.index < conn.index
        and other.name == (conn.name or run.guest_name)
        and other.start >= run.started - 0.5
        for other in parser.connections
    )
    return QemuMatch(log, run, first)


def _guests(log: QemuLog) -> str:
    return ", ".join(sorted({r.guest_name or "?" for r in log.runs})) or "no runs"


def recording_items(conn: Connection, match: QemuMatch | None) -> list[Item]:
    """The connection's items, with the QEMU log's argv note and taints merged in time order."""
    items = list(conn.items)
    if match is None:
        return items
    run = match.run
    low = run.started - 0.5 if match.first_of_run else conn.start
    high = conn.end if conn.closed else float("inf")
    for taint in run.taints:
        if not low <= taint.at <= high:
            continue
        if any(r == taint.reason and abs(at - taint.at) <= _SAME_TAINT_SECONDS for r, at in conn.taint_reasons):
            continue  # the debug log has it already
        item = Item(
            Taint(reason=taint.reason, client="libvirt"),
            taint.at,
            {"ts": taint.stamp, "line": taint.line, "file": match.log.name},
        )
        position = next((i for i, it in enumerate(items) if it.at is not None and it.at > taint.at), len(items))
        items.insert(position, item)
        conn.taints += 1
    _, removed = run.replay_argv()
    note = Note(
        text=f"QEMU command line and environment from {match.log.name} (the run started {run.stamp});"
        " the monitor libvirt used (and its -sandbox) is left out of qemu_argv: a replay gives QEMU its own",
        data=Msg({"qemu_log": match.log.name, "line": run.line, "started": run.stamp, "removed": removed}),
    )
    items.insert(0, Item(note, None, {"ts": run.stamp, "line": run.line, "file": match.log.name}))
    return items


def build_header(conn: Connection, parser: LibvirtLogParser, items: list[Item], match: QemuMatch | None,
                 domain_xml: str | None = None) -> Header:
    times = [conn.start] + [i.at for i in items if i.at is not None]
    started = min(times)
    daemon = conn.daemon - 1
    stats = parser.stats
    labels = {
        "import": "libvirt-debug-log",
        "source": os.path.basename(parser.path),
        "monitor": conn.mon,
        "connection": str(conn.index),
        "lines": f"{conn.first_line}-{conn.last_line}",
        "daemon": str(conn.daemon),
    }
    if 0 <= daemon < len(stats.versions):
        labels["libvirt"] = stats.versions[daemon]
    if conn.name:
        labels["vm"] = conn.name
    if conn.probe:
        labels["probe"] = conn.probe
    if conn.reconnect:
        labels["reconnect"] = "libvirtd reconnected to a QEMU already running: its state comes from before this log"
    if conn.implicit:
        labels["partial"] = "the log starts in the middle of this connection"
    version = greeting_version(conn.greeting) if conn.greeting is not None else None
    argv = env = None
    if match is not None:
        argv, _ = match.run.replay_argv()
        env = dict(match.run.env)
        labels["qemu-log"] = match.log.name
    elif conn.probe:
        argv = [conn.probe, *PROBE_ARGS]
        if conn.machine:
            argv += ["-machine", conn.machine]
        labels["qemu-argv"] = "reconstructed: libvirt's probe command line without -qmp, -pidfile, -daemonize"
    return new_header(
        started_epoch=started,
        host=stats.hosts[daemon] if 0 <= daemon < len(stats.hosts) else "unknown",
        qemu_version=version,
        qemu_argv=argv or None,
        qemu_env=env or None,
        domain_xml=domain_xml if domain_xml is not None and not conn.probe else None,
        labels=labels,
    )


def write_connection(
    conn: Connection, parser: LibvirtLogParser, path: str, qemu_logs: list[QemuLog], seal_key: Any = None,
    domains: dict[str, str] | None = None,
) -> Written:
    """Write one connection as a recording at *path* (sealed with *seal_key*, a ``SealKey``).

    *domains* maps VM names to their domain XML (``--domain-xml``): the header's ``domain_xml``.
    """
    warnings: list[str] = []
    match = match_qemu_log(conn, parser, qemu_logs, warnings)
    items = recording_items(conn, match)
    header = build_header(conn, parser, items, match, (domains or {}).get(conn.name or ""))
    with ImportWriter.create(path, header, seal_key=seal_key) as writer:
        writer.extend(items)
        records = writer.next_seq
    return Written(conn, path, records, match.log.name if match else None, warnings)


def parse_selector(text: str) -> int | str:
    """``--monitor``: a connection number from ``--list`` or a ``0x...`` address."""
    text = text.strip()
    if re.fullmatch(r"0x[0-9a-fA-F]+", text):
        return text.lower()
    if text.lstrip("#").isdigit():
        return int(text.lstrip("#"))
    raise LogImportError(f"--monitor takes a connection number from --list or a 0x... address, not {text!r}")


def selects(conn: Connection, selector: int | str) -> bool:
    return conn.index == selector if isinstance(selector, int) else conn.mon.lower() == selector


def read_domain_xml(path: str) -> tuple[str, str]:
    """``(name, XML)`` of the domain in *path*: a domain XML, ``virsh dumpxml`` output, or libvirt's
    status file (``/run/libvirt/qemu/NAME.xml``: the ``<domain>`` inside ``<domstatus>``)."""
    from lxml import etree

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise LogImportError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False))
    except etree.XMLSyntaxError as exc:
        raise LogImportError(f"{path}: not XML: {exc}") from None
    if root.tag == "domstatus":
        root = root.find("domain")
    if root is None or root.tag != "domain" or not (root.findtext("name") or "").strip():
        raise LogImportError(f"{path}: no <domain> with a <name> in it (a domain XML or libvirt's status file)")
    return (root.findtext("name") or "").strip(), etree.tostring(root, encoding="unicode")
