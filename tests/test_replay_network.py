"""A QEMU on the host's network (someone else's) is never made to open a network socket.

``replay --target socket:`` and ``fake --forward-unmatched --upstream`` talk to
a QEMU qmprr did not start, so no network namespace confines it: the checks of
:mod:`qmprr.replay.network` are the wall. A QEMU qmprr starts in its sandbox
may open sockets (only loopback is there).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from qmprr.recording import RecordingReader
from qmprr.replay import network
from qmprr.replay.policy import ReplayPolicy
from qmprr.replay.script import Exchange
from replay_support import RECORDINGS, fake_process
from support import qemu_with_qmp, require_qemu


def _inet(port: int = 4444) -> dict[str, Any]:
    return {"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}}


REFUSED = [
    ("chardev-add", {"id": "c", "backend": {"type": "socket", "data": {"addr": _inet(), "server": True}}}),
    ("chardev-add", {"id": "c", "backend": {"type": "udp", "data": {"remote": _inet()}}}),
    ("nbd-server-start", {"addr": _inet(10809)}),
    ("migrate", {"uri": "tcp:127.0.0.1:4444"}),
    ("migrate-incoming", {"uri": "rdma:0:4444"}),
    ("migrate-recover", {"uri": "tcp:[::]:4444"}),
    ("netdev_add", {"type": "user", "id": "n"}),
    ("netdev-add", {"type": "socket", "id": "n", "listen": "127.0.0.1:5555"}),
    ("netdev_add", {"type": "stream", "id": "n", "addr": {"type": "inet", "host": "0", "port": "1"}}),
    ("blockdev-add", {"node-name": "b", "driver": "nbd", "server": {"type": "unix", "path": "x"}, "export": "e"}),
    ("blockdev-add", {"node-name": "b", "driver": "ssh", "server": {"host": "h"}, "path": "/p"}),
    ("blockdev-add", {"node-name": "b", "driver": "raw", "file": {"driver": "https", "url": "https://h/x"}}),
    ("blockdev-change-medium", {"id": "cd", "filename": "nbd://127.0.0.1:10809/x"}),
    ("blockdev-change-medium", {"id": "cd", "filename":
                                'json:{"driver":"nbd","server":{"type":"inet","host":"h","port":"1"}}'}),
    ("object-add", {"qom-type": "input-barrier", "id": "i", "name": "x", "server": "h"}),
    ("display-update", {"type": "vnc", "addresses": [{"type": "inet", "host": "0.0.0.0", "port": "5900"}]}),
    ("device_add", {"driver": "virtio-net", "netdev": "n", "guestfwd": "tcp:10.0.2.1:80-cmd:x"}),
    ("human-monitor-command", {"command-line": "hostfwd_add tcp::2222-:22"}),
    ("human-monitor-command", {"command-line": "netdev_add user,id=n"}),
    ("human-monitor-command", {"command-line": "nbd_server_start 0.0.0.0:10809"}),
    ("human-monitor-command", {"command-line": "chardev-add socket,id=c,host=,port=4444,server=on,wait=off"}),
    ("human-monitor-command", {"command-line": "chardev-add udp,id=c,host=1.2.3.4,port=5"}),
    ("human-monitor-command", {"command-line": "migrate -d tcp:1.2.3.4:4444"}),
    ("human-monitor-command", {"command-line": "drive_add 0 if=none,id=d,file=nbd:1.2.3.4:10809"}),
    # found by review: each was let through, and QEMU 7.2 listened or connected
    ("human-monitor-command", {"command-line": "gdbserver"}),
    ("blockdev-change-medium", {"id": "cd", "filename": 'json:{"driver":"raw","file.driver":"nbd",'
                                                        '"file.host":"127.0.0.1","file.port":"10809"}'}),
    ("human-monitor-command", {"command-line": 'drive_add 0 if=none,id=d1,file=json:{"driver":"nbd",,'
                                               '"server":{"type":"inet",,"host":"127.0.0.1",,"port":"1"},,'
                                               '"export":"x"}'}),
    ("human-monitor-command", {"command-line": "object_add input-barrier,id=b0,name=g,server=h,port=24800"}),
    ("object-add", {"qom-type": "dbus-vmstate", "id": "d", "addr": "unix:abstract=x;tcp:host=127.0.0.1,port=5"}),
    ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "qmprr-nbd", "abstract": True}}}),
    ("human-monitor-command", {"command-line": "chardev-add socket,id=c,path=x,abstract=on,server=on"}),
    ("human-monitor-command", {"command-line": "chardev-add backend=udp,id=u0,port=5555"}),
    # found by a second review
    ("human-monitor-command", {"command-line": "netdev_add hubport,id=n,type=user"}),
    ("human-monitor-command", {"command-line": "chardev-add null,id=u,backend=udp,port=5555,localport=7777"}),
    ("human-monitor-command", {"command-line": "chardev-change c0 udp,port=5555,localport=7778"}),
    ("blockdev-change-medium", {"id": "cd0", "filename": 'blkdebug::json:{"driver":"nbd","server":'
                                                         '{"type":"inet","host":"127.0.0.1","port":"1"}}'}),
    ("human-monitor-command", {"command-line": "drive_add 0 if=none,id=d2,format=iscsi,portal=1.2.3.4:3260"}),
    ("blockdev-change-medium", {"id": "cd", "filename": "iser://127.0.0.1/iqn.x/0"}),
    ("device_add", {"driver": "vhost-vsock-pci", "guest-cid": 3}),
]

ALLOWED = [
    ("query-status", {}),
    ("chardev-add", {"id": "c", "backend": {"type": "null", "data": {}}}),
    ("chardev-add", {"id": "c", "backend": {"type": "socket", "data": {"addr": {"type": "unix",
                                                                                 "data": {"path": "m.sock"}}}}}),
    ("netdev_add", {"type": "hubport", "id": "n", "hubid": 0}),
    ("device_add", {"driver": "usb-tablet", "id": "t", "bus": "usb.0", "port": "1"}),
    ("blockdev-add", {"node-name": "b", "driver": "qcow2", "file": {"driver": "file", "filename": "d.qcow2"}}),
    ("migrate", {"uri": "unix:mig.sock"}),
    ("qom-set", {"path": "/machine", "property": "host", "value": "tcp:x"}),
    ("human-monitor-command", {"command-line": "info network"}),
    ("human-monitor-command", {"command-line": "nbd_server_start unix:nbd.sock"}),
    ("human-monitor-command", {"command-line": "chardev-add file,id=c,path=log.txt"}),
    ("human-monitor-command", {"command-line": "device_add usb-tablet,port=1"}),
    ("human-monitor-command", {"command-line": "gdbserver none"}),
    ("human-monitor-command", {"command-line": 'drive_add 0 if=none,id=d,file=json:{"driver":"qcow2",,'
                                               '"file":{"driver":"file",,"filename":"d.qcow2"}}'}),
    ("human-monitor-command", {"command-line": "object_add iothread,id=io0"}),
]


@pytest.mark.parametrize(("command", "arguments"), REFUSED)
def test_a_command_that_opens_a_network_socket_is_named(command: str, arguments: dict[str, Any]) -> None:
    assert network.refusal(command, arguments) is not None


@pytest.mark.parametrize(("command", "arguments"), ALLOWED)
def test_a_command_that_opens_nothing_passes(command: str, arguments: dict[str, Any]) -> None:
    assert network.refusal(command, arguments) is None


def test_the_policy_refuses_them_only_for_a_qemu_on_the_hosts_network() -> None:
    ex = Exchange(command=REFUSED[0][0], arguments=REFUSED[0][1], src="primary-1", role="primary")
    refused = ReplayPolicy().decide(ex)
    assert refused.action == "refuse" and "host's network" in (refused.reason or "")
    assert ReplayPolicy(network=True).decide(ex).action == "send"  # qmprr's sandbox: only loopback
    assert ReplayPolicy(checks=False).decide(ex).action == "send"  # --allow-unsafe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _listener(port: int, name: str) -> dict[str, Any]:
    return {"execute": "chardev-add", "arguments": {"id": name, "backend": {"type": "socket", "data": {
        "addr": _inet(port), "server": True, "wait": False}}}}


@pytest.mark.qemu
def test_a_client_of_the_hybrid_fake_cannot_open_a_listener_in_the_upstream_qemu(tmp_path: Path) -> None:
    require_qemu()
    sock, out = tmp_path / "f.sock", tmp_path / "forwarded.jsonl"
    port, control = _free_port(), _free_port()
    with qemu_with_qmp(tmp_path) as (_qemu, upstream):
        with fake_process(RECORDINGS / "lifecycle.jsonl", sock, "--mode", "lenient", "--forward-unmatched",
                          "--upstream", upstream, "--record", str(out)) as proc:
            mon = QEMUMonitorProtocol(str(sock))
            mon.connect(negotiate=True)
            reply = mon.cmd_obj(_listener(port, "hostile"))
            hmp = mon.cmd_obj({"execute": "human-monitor-command", "arguments": {
                "command-line": f"chardev-add socket,id=h,host=127.0.0.1,port={port},server=on,wait=off"}})
            listening = _listening(port)
            mon.close()
            proc.communicate(timeout=30)
        # The control: the same command sent straight to that QEMU does open a listener.
        direct = QEMUMonitorProtocol(upstream)
        direct.connect(negotiate=True)
        assert "return" in direct.cmd_obj(_listener(control, "control"))
        assert _listening(control)
        direct.close()
    assert not listening
    assert "error" in reply and "host's network" in reply["error"]["desc"]
    assert "error" in hmp and "host's network" in hmp["error"]["desc"]
    with RecordingReader(out) as reader:
        records = list(reader)
    refusals = [r for r in records if r.kind == "local" and "host's network" in str(r.reply)]
    assert len(refusals) == 2  # each refusal is in the log
    assert not [r for r in records if r.kind == "command" and r.msg.get("execute") == "chardev-add"]
