#!/usr/bin/env python3
"""Make the libvirt captures in this folder again, from a real libvirtd.

Needs root, Debian 12's ``libvirt-daemon``, ``libvirt-daemon-driver-qemu`` and
``libvirt-clients`` (libvirt 9.0), ``qemu-system-x86`` and ``qemu-utils``, and
``unshare``. No systemd and no KVM: the domain is ``type='qemu'`` (TCG).

The host is not touched: libvirtd runs in a private mount namespace where
``/etc/libvirt``, ``/run/libvirt``, ``/var/lib/libvirt``, ``/var/log/libvirt``
and ``/var/cache/libvirt`` are folders under ``--root`` (default
``/tmp/qmprr-lvcap``; the mount points are created empty when missing).
virsh talks to it through ``qemu:///system?socket=ROOT/run/libvirt-sock``.

The session: libvirtd starts (it probes QEMU's capabilities: monitor
connections of their own), defines ``qmprr-demo`` (128 MiB, TCG, no disk, no
network, no graphics: QEMU gets ``-display none``), starts it, suspends and
resumes it, sends ``qemu-monitor-command`` in QMP and HMP form (libvirt taints
the domain ``custom-monitor``; one is an unknown command, for an error reply),
hot-plugs a qcow2 disk and asks to unplug it (with no guest OS to acknowledge
it, libvirt waits 5 s for ``DEVICE_DELETED`` in vain), dumps the guest's memory
(libvirt passes the file as an fd: ``getfd``), is restarted while the domain
runs (it reconnects to the monitor), then destroys the domain and starts and
destroys it once more (a new monitor).

Output, replacing what is here (``regenerate.py`` itself stays):

``libvirtd-debug.log``
    libvirtd's debug log (filters: :data:`LOG_FILTERS`), bytes as logged
    (``\\r`` included), trimmed from ~3 MB to ~300 KB as
    :func:`trim_debug_log` says: most of the ~400 ``qom-get`` of each start
    and the first capability probe go, probe messages over 1 KB are cut.
``qmprr-demo.log``
    the domain's QEMU log (environment, argv, taint lines).
``caps-x86_64.replies``
    the first exchanges of the ``qemu-system-x86_64`` capability probe
    (``accel=kvm:tcg``) of that log, written as libvirt writes its
    ``tests/qemucapabilitiesdata/*.replies`` files: each message pretty-printed
    with two-space indents (empty objects and arrays over two lines), a blank
    line after each.

Usage: ``sudo .venv/bin/python tests/data/libvirt/regenerate.py [--root DIR] [--out DIR] [--keep]``;
``--raw ROOT/log`` trims a capture kept by ``--keep`` again, without a new session.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOMAIN = "qmprr-demo"
MOUNTS = {  # host path -> folder under the root
    "/etc/libvirt": "etc",
    "/run/libvirt": "run",
    "/var/lib/libvirt": "lib",
    "/var/log/libvirt": "log",
    "/var/cache/libvirt": "cache",
}
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
LOG_FILTERS = (
    "1:qemu.qemu_monitor 1:qemu.qemu_monitor_json 1:qemu.qemu_process "
    "2:qemu.qemu_driver 3:*"
)
DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="/tmp/qmprr-lvcap", help="scratch folder (replaced)")
    ap.add_argument("--out", default=str(HERE), help="where the trimmed captures go")
    ap.add_argument("--keep", action="store_true", help="keep the untrimmed logs in ROOT")
    ap.add_argument("--raw", metavar="DIR", help="no new session: trim the capture kept in DIR by --keep (ROOT/log)")
    args = ap.parse_args()
    if args.raw:
        write_outputs(Path(args.raw), Path(args.out))
        return 0
    if os.geteuid() != 0:
        sys.exit("regenerate.py: must run as root (libvirtd's system instance)")
    for tool in ("libvirtd", "virsh", "qemu-img", "unshare", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            sys.exit(f"regenerate.py: {tool} not found; see the docstring for the packages")
    root = Path(args.root)
    if root.exists():
        shutil.rmtree(root)
    for sub in MOUNTS.values():
        (root / sub).mkdir(parents=True)
    for mount_point in MOUNTS:
        os.makedirs(mount_point, exist_ok=True)
    (root / "images").mkdir()
    _write_configs(root)
    uri = f"qemu:///system?socket={root}/run/libvirt-sock"
    session = Session(root, uri)
    try:
        session.run()
    finally:
        session.stop_daemon()
    write_outputs(root / "log", Path(args.out))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def write_outputs(logs: Path, out: Path) -> None:
    """Trim the capture in *logs* (libvirtd.log, qemu/NAME.log) into *out*, bytes as logged (``\\r`` kept)."""
    raw_log = logs / "libvirtd.log"
    out.mkdir(parents=True, exist_ok=True)
    trimmed = trim_debug_log(raw_log.read_bytes().decode("utf-8", errors="replace"))
    (out / "libvirtd-debug.log").write_bytes(trimmed.encode())
    shutil.copyfile(logs / "qemu" / f"{DOMAIN}.log", out / f"{DOMAIN}.log")
    replies = replies_excerpt(trimmed)
    (out / "caps-x86_64.replies").write_bytes(replies.encode())
    print(f"wrote {out / 'libvirtd-debug.log'} ({len(trimmed)} bytes, from {raw_log.stat().st_size})")
    print(f"wrote {out / (DOMAIN + '.log')}")
    print(f"wrote {out / 'caps-x86_64.replies'} ({len(replies)} bytes)")


def _write_configs(root: Path) -> None:
    etc = root / "etc"
    (etc / "libvirtd.conf").write_text(
        f'log_filters="{LOG_FILTERS}"\n'
        f'log_outputs="1:file:/var/log/libvirt/libvirtd.log"\n'
        'auth_unix_ro="none"\nauth_unix_rw="none"\n'
        'unix_sock_group="root"\n'
    )
    # Without libvirt-daemon-system there is no libvirt-qemu user: run QEMU as
    # root, with no namespaces, cgroups or security driver (a container has
    # none of them), and the QEMU log written by libvirtd itself (no virtlogd).
    (etc / "qemu.conf").write_text(
        'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n'
        'namespaces = []\nsecurity_driver = "none"\nstdio_handler = "file"\n'
        "cgroup_controllers = []\n"
    )
    (etc / "libvirt.conf").write_text("")
    # libvirt 9.0 resolves its built-in QEMU user (libvirt-qemu) before it
    # reads qemu.conf; Debian's libvirt-daemon-system creates it. Inside the
    # namespace, /etc/passwd and /etc/group get copies that have it.
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    if not re.search(r"^libvirt-qemu:", passwd, re.M):
        passwd += "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"
    for name, gid in (("libvirt-qemu", 64055), ("kvm", 64056), ("libvirt", 64057)):
        if not re.search(rf"^{name}:", group, re.M):
            group += f"{name}:x:{gid}:\n"
    (root / "passwd").write_text(passwd)
    (root / "group").write_text(group)


class Session:
    def __init__(self, root: Path, uri: str) -> None:
        self.root = root
        self.uri = uri
        self.daemon: subprocess.Popen[bytes] | None = None

    def start_daemon(self) -> None:
        binds = " && ".join(
            f"mount --bind {self.root / sub} {host}" for host, sub in MOUNTS.items()
        )
        binds += f" && mount --bind {self.root / 'passwd'} /etc/passwd"
        binds += f" && mount --bind {self.root / 'group'} /etc/group"
        script = f"{binds} && exec libvirtd -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid"
        self.daemon = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.DEVNULL,
            env=CLEAN_ENV,  # QEMU inherits it, and its log shows it
            stderr=open(self.root / "libvirtd.stderr", "ab"),  # noqa: SIM115
        )
        sock = self.root / "run" / "libvirt-sock"
        for _ in range(300):
            if sock.exists() and self.virsh("version", check=False).returncode == 0:
                return
            if self.daemon.poll() is not None:
                sys.exit(f"libvirtd exited ({self.daemon.returncode}); see {self.root}/libvirtd.stderr")
            time.sleep(0.1)
        sys.exit("libvirtd did not answer within 30 s")

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True)
        if check and proc.returncode != 0:
            self.stop_daemon()
            sys.exit(f"virsh {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def run(self) -> None:
        images = self.root / "images"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "hot.qcow2"), "16M"], check=True)
        self.start_daemon()
        xml = self.root / f"{DOMAIN}.xml"
        xml.write_text(DOMAIN_XML.format(name=DOMAIN))
        self.virsh("define", str(xml))
        self.virsh("start", DOMAIN)
        self.virsh("suspend", DOMAIN)
        self.virsh("resume", DOMAIN)
        self.virsh("qemu-monitor-command", DOMAIN, '{"execute":"query-status"}')
        self.virsh("qemu-monitor-command", DOMAIN, "--hmp", "info status")
        self.virsh("qemu-monitor-command", DOMAIN, '{"execute":"no-such-command"}', check=False)
        self.virsh("attach-disk", DOMAIN, str(images / "hot.qcow2"), "vdb",
                   "--driver", "qemu", "--subdriver", "qcow2", "--live")
        self.virsh("domblklist", DOMAIN)
        self.virsh("detach-disk", DOMAIN, "vdb", "--live")
        dump = self.root / "images" / "guest.dump"
        self.virsh("dump", DOMAIN, str(dump), "--memory-only")
        dump.unlink()
        # A daemon restart with the domain running: the new libvirtd reconnects.
        self.stop_daemon()
        self.start_daemon()
        self.virsh("domstate", DOMAIN)
        self.virsh("qemu-monitor-command", DOMAIN, "--pretty", '{"execute":"query-name"}')
        self.virsh("destroy", DOMAIN)
        # A second run: a new monitor, often at the address the first one had.
        self.virsh("start", DOMAIN, "--paused")
        self.virsh("destroy", DOMAIN)
        self.virsh("undefine", DOMAIN)


# -- trimming -----------------------------------------------------------------

#: A run of consecutive ``qom-get`` commands on one monitor (libvirt checks
#: every guest-CPU property this way at start: ~400 of them) keeps this many.
QOM_GET_KEPT = 12
#: Messages of capability probes longer than this are cut to a stand-in.
PROBE_MESSAGE_MAX = 1000

_MON = re.compile(r" : (QEMU_MONITOR_\w+): mon=(0x[0-9a-f]+)")
_TID = re.compile(r"^\S+ \S+: (\d+): ")
_ID = re.compile(r'"id": ?"([^"]*)"')
_JSON_AT = re.compile(r"(reply=|event=|msg=|buf=|Line \[)(\{.*\})(\]?)(\r?\n?)$", re.S)


def trim_debug_log(text: str) -> str:
    """The capture made small enough to commit; every kept line is as captured, or cut as below.

    * Each run of consecutive ``qom-get`` exchanges on a monitor keeps its
      first :data:`QOM_GET_KEPT`: the rest go whole (``SEND_MSG`` and its
      continuation line, ``IO_WRITE`` and its continuation, the reply and its
      ``Line [...]`` echo). The importer reports the gap in the ``libvirt-N`` ids.
    * The first capability probe (``qemu-system-i386`` with ``accel=kvm:tcg``,
      from ``qemuProcessQMPNew`` to ``qemuProcessQMPStop``) goes whole: the
      three probes kept after it have the same shape, and the next one reuses
      a monitor address, which the tests want.
    * In the monitors of capability probes, a message longer than
      :data:`PROBE_MESSAGE_MAX` (``query-qmp-schema``'s reply is 200 KB, and
      ``query-cpu-model-expansion`` sends 6 KB) has the largest lists and
      objects in it halved until it fits, as valid JSON, the same way in the
      ``SEND_MSG``/``IO_WRITE`` pair and in a reply and its echo. Those
      messages no longer match a real QEMU's; the VM monitors are not cut.
    """
    out: list[str] = []
    lines = _drop_first_probe(_split_lines(text))
    probes: set[str] = set()
    last_probe_tid: str | None = None
    runs: dict[str, int] = {}  # monitor -> qom-get commands in the current run
    dropped: set[tuple[str, str]] = set()  # (monitor, id)
    skip_next = False
    for line in lines:
        if skip_next:
            skip_next = False
            if line.startswith(" "):  # the continuation of a dropped SEND_MSG / IO_WRITE
                continue
        tid_m = _TID.match(line)
        tid = tid_m.group(1) if tid_m else None
        if "qemuProcessQMPConnectMonitor" in line:
            last_probe_tid = tid
        m = _MON.search(line)
        if m is None:
            out.append(line)
            continue
        what, mon = m.groups()
        if what == "QEMU_MONITOR_NEW":
            probes.discard(mon)
            runs.pop(mon, None)
            if last_probe_tid is not None and tid == last_probe_tid:
                probes.add(mon)
            last_probe_tid = None
        msg_id = _ID.search(line)
        key = (mon, msg_id.group(1)) if msg_id else None
        if what == "QEMU_MONITOR_SEND_MSG":
            if '"execute":"qom-get"' in line:
                runs[mon] = runs.get(mon, 0) + 1
                if runs[mon] > QOM_GET_KEPT and key:
                    dropped.add(key)
                    skip_next = True
                    continue
            else:
                runs[mon] = 0
        elif what == "QEMU_MONITOR_IO_WRITE" and key in dropped:
            skip_next = True
            continue
        elif what == "QEMU_MONITOR_RECV_REPLY" and key in dropped:
            if out and " : Line [" in out[-1] and _ID.search(out[-1]) and _ID.search(out[-1]).group(1) == key[1]:
                out.pop()  # its echo
            continue
        if mon in probes and len(line) > PROBE_MESSAGE_MAX:
            line = _shrink(line)
            if out and " : Line [" in out[-1] and len(out[-1]) > PROBE_MESSAGE_MAX:
                out[-1] = _shrink(out[-1])
        out.append(line)
    return "".join(out)


REPLIES_EXCHANGES = 10


def replies_excerpt(log: str, count: int = REPLIES_EXCHANGES) -> str:
    """The first *count* exchanges of the log's x86_64 kvm:tcg probe, in libvirt's .replies form."""
    probe_tid = probe_mon = None
    messages: list[object] = []
    for line in _split_lines(log):
        if probe_mon is None:
            if "qemuProcessQMPLaunch" in line and "qemu-system-x86_64" in line and "kvm" in line:
                probe_tid = _TID.match(line).group(1)  # type: ignore[union-attr]
            m = _MON.search(line)
            if probe_tid and m and m.group(1) == "QEMU_MONITOR_NEW" and _TID.match(line).group(1) == probe_tid:  # type: ignore[union-attr]
                probe_mon = m.group(2)
            continue
        m = _MON.search(line)
        if m is None or m.group(2) != probe_mon:
            continue
        if m.group(1) == "QEMU_MONITOR_CLOSE" or len(messages) >= 2 * count:
            break
        if m.group(1) in ("QEMU_MONITOR_SEND_MSG", "QEMU_MONITOR_RECV_REPLY"):
            j = _JSON_AT.search(line)
            if j is not None:
                messages.append(json.loads(j.group(2)))
    if not messages:
        raise SystemExit("regenerate.py: no x86_64 capability probe in the log")
    return "".join(_pretty(msg) + "\n\n" for msg in messages)


def _pretty(value: object, indent: int = 0) -> str:
    """libvirt's pretty JSON: two-space indents, an empty object or array over two lines."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict):
        body = ",\n".join(f"{inner}{json.dumps(k)}: {_pretty(v, indent + 1)}" for k, v in value.items())
        return "{\n" + body + ("\n" if body else "") + pad + "}"
    if isinstance(value, list):
        body = ",\n".join(inner + _pretty(v, indent + 1) for v in value)
        return "[\n" + body + ("\n" if body else "") + pad + "]"
    return json.dumps(value)


def _split_lines(text: str) -> list[str]:
    """Lines with their ends; only \\n ends a line (a logged \\r stays in its line)."""
    parts = text.split("\n")
    out = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _drop_first_probe(lines: list[str]) -> list[str]:
    start = next((i for i, line in enumerate(lines) if "qemuProcessQMPNew:" in line), None)
    if start is None:
        return lines
    end = next((i for i in range(start, len(lines)) if "qemuProcessQMPStop:" in lines[i]), None)
    if end is None:
        return lines
    return lines[:start] + lines[end + 1 :]


def _shrink(line: str) -> str:
    m = _JSON_AT.search(line)
    if not m:
        return line
    try:
        msg = json.loads(m.group(2))
    except ValueError:
        return line
    sep = (", ", ": ") if ": " in m.group(2)[:40] else (",", ":")
    while len(json.dumps(msg, separators=sep)) > PROBE_MESSAGE_MAX and _halve_largest(msg.get("return")):
        pass
    return line[: m.start(2)] + json.dumps(msg, separators=sep) + m.group(3) + m.group(4)


def _halve_largest(node: object) -> bool:
    """Drop the second half of the largest list or object in *node*; False when nothing is left to cut."""
    best, best_size = None, 0
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, (list, dict)):
            size = len(json.dumps(cur))
            if len(cur) > 1 and size > best_size:
                best, best_size = cur, size
            stack.extend(cur if isinstance(cur, list) else cur.values())
    if best is None:
        return False
    keep = len(best) // 2
    if isinstance(best, list):
        del best[keep:]
    else:
        for key in list(best)[keep:]:
            del best[key]
    return True


if __name__ == "__main__":
    sys.exit(main())
