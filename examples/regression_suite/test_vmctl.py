"""Regression suite for vmctl: each test runs against a recording of a real QEMU.

Run it with ``pytest examples/regression_suite``: qmprr's pytest plugin
(installed with qmprr, entry point ``pytest11``) serves each marked recording
from a fake QEMU on ``qmp_fake.socket``. No VM is started.

The recordings were made by the same tests against a real QEMU with
``pytest examples/regression_suite --qmp-record-mode=once`` (records the
missing ones); ``--qmp-record-mode=rewrite`` makes them all again.
"""

from __future__ import annotations

import pytest
import vmctl

from qmprr.fake import FakeQemu


@pytest.mark.qmp_recording("recordings/pause.jsonl", mode="strict")
def test_pause_stops_a_running_vm(qmp_fake):
    # strict: vmctl.pause must send exactly the recorded commands, in order.
    assert vmctl.pause(qmp_fake.socket) == "paused"
    if qmp_fake.fake is not None:  # None while recording against a real QEMU
        assert qmp_fake.fake.report().answered == 3


@pytest.mark.asyncio
@pytest.mark.qmp_recording("recordings/inventory.jsonl", mode="lenient")
async def test_inventory(qmp_fake):
    # lenient: the order of the queries does not matter, only that each was recorded.
    info = await vmctl.inventory(qmp_fake.socket)
    assert info["qemu"].startswith("7.")
    assert info["status"] == "running"
    assert "peripheral" in info["children"]


def test_pause_reports_a_refused_stop(qmp_serve):
    # A case no real QEMU shows on demand: build the fake's script in code.
    fake = (
        FakeQemu.builder()
        .expect("query-status").returns({"status": "running", "singlestep": False, "running": True})
        .expect("stop").fails("Operation not permitted while migrating")
        .build(mode="strict")
    )
    with pytest.raises(vmctl.VmError, match="while migrating"):
        vmctl.pause(qmp_serve(fake).socket)


def test_pause_leaves_a_paused_vm_alone(qmp_serve):
    fake = (
        FakeQemu.builder()
        .expect("query-status").returns({"status": "paused", "singlestep": False, "running": False})
        .build()
    )
    assert vmctl.pause(qmp_serve(fake).socket) == "paused"
