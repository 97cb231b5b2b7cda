"""A small piece of management code that talks QMP: the code under test.

In a real project this is your library; the regression suite next to it
(``test_vmctl.py``) checks it against recordings of a real QEMU, served by
qmprr's fake QEMU, so the suite needs no VM.
"""

from __future__ import annotations

from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol


class VmError(Exception):
    """QEMU refused what we asked."""


def pause(socket_path: str, timeout: float = 5.0) -> str:
    """Pause the VM behind *socket_path* if it runs; return its status afterwards.

    Synchronous (qemu.qmp's legacy QEMUMonitorProtocol). Waits for the
    ``STOP`` event, which QEMU may send before ``stop``'s reply.
    """
    mon = QEMUMonitorProtocol(socket_path)
    mon.connect(negotiate=True)
    try:
        status = _status(mon)
        if status != "running":
            return status
        reply = mon.cmd_raw("stop")
        if "error" in reply:
            raise VmError(f"stop failed: {reply['error']['desc']}")
        events = mon.get_events(wait=timeout)
        if not any(e["event"] == "STOP" for e in events):
            raise VmError("no STOP event after stop")
        return _status(mon)
    finally:
        mon.close()


def _status(mon: QEMUMonitorProtocol) -> str:
    reply = mon.cmd_raw("query-status")
    if "error" in reply:
        raise VmError(f"query-status failed: {reply['error']['desc']}")
    return str(reply["return"]["status"])


async def inventory(socket_path: str) -> dict[str, Any]:
    """What the VM is: QEMU version, run state, and its machine's QOM children.

    Asynchronous (qemu.qmp's QMPClient).
    """
    client = QMPClient("vmctl")
    await client.connect(socket_path)
    try:
        version = await client.execute("query-version")
        status = await client.execute("query-status")
        children = await client.execute("qom-list", {"path": "/machine"})
    finally:
        await client.disconnect()
    qemu = version["qemu"]  # type: ignore[index]
    return {
        "qemu": f"{qemu['major']}.{qemu['minor']}.{qemu['micro']}",
        "status": status["status"],  # type: ignore[index]
        "children": sorted(c["name"] for c in children if c["type"].startswith("child<")),  # type: ignore[union-attr]
    }
