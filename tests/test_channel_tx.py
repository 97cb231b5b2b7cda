"""A transaction aborted while its command is on the wire never lets a second command out."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from qmprr.channel import Channel, TransactionAborted
from qmprr.recording import Command, RecordingReader, RecordWriter, Reply, Tx, verify

import support


async def test_abort_during_in_flight_command_waits_for_its_reply(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    log = tmp_path / "rec.jsonl"
    with support.qemu_with_qmp(tmp_path) as (_qemu, sock):
        channel = await Channel.open_unix(sock, lambda g: RecordWriter.create(log))
        tx = await channel.begin_transaction("dump", owner="owner")
        # pmemsave blocks QEMU opening the FIFO until someone reads it.
        stuck = asyncio.create_task(
            tx.execute({"execute": "pmemsave", "arguments": {"val": 0, "size": 16, "filename": str(fifo)}}, src="owner")
        )
        await asyncio.to_thread(support.wait_until, lambda: b'"pmemsave"' in log.read_bytes(), "pmemsave on the wire")
        channel.abort_transactions_of("owner", "its owner disconnected")
        other = asyncio.create_task(channel.execute({"execute": "query-status"}, src="other"))
        second_in_tx = asyncio.create_task(tx.execute({"execute": "query-name"}, src="owner"))
        await asyncio.sleep(0.3)  # the scenario: time passes, both stay queued
        assert not other.done() and not stuck.done()
        sent = [r for r in RecordingReader(log) if isinstance(r, Command)]
        assert [r.src for r in sent][-1] == "owner", "a command went out while another was in flight"
        drained = threading.Thread(target=lambda: open(fifo, "rb").read())
        drained.start()
        assert (await asyncio.wait_for(stuck, 5)) == {"return": {}}
        assert (await asyncio.wait_for(other, 5))["return"]["status"] == "running"
        try:
            await second_in_tx
        except TransactionAborted:
            pass
        else:
            raise AssertionError("a command of the aborted transaction was sent")
        drained.join(5)
        await channel.close()
        channel.log.close()
    records = list(RecordingReader(log))
    kinds = [(type(r).__name__, getattr(r, "src", getattr(r, "action", None))) for r in records
             if isinstance(r, (Command, Reply, Tx))]
    pmem = next(i for i, k in enumerate(kinds) if k == ("Command", "owner") and i > 2)
    assert kinds[pmem + 1][0] == "Reply"
    assert kinds[pmem + 2] == ("Tx", "abort")
    assert kinds[pmem + 3] == ("Command", "other")
    assert verify(log).ok


async def test_a_command_that_waited_records_when_it_asked_and_stats_measure_the_wait(tmp_path: Path) -> None:
    import json
    import subprocess

    log = tmp_path / "rec.jsonl"
    with support.qemu_with_qmp(tmp_path) as (_qemu, sock):
        channel = await Channel.open_unix(sock, lambda g: RecordWriter.create(log))
        await channel.execute({"execute": "query-name"}, src="quick")  # nothing in its way
        async with channel.transaction("hold", owner="owner") as tx:
            waiter = asyncio.create_task(channel.execute({"execute": "query-status"}, src="waiter"))
            await asyncio.sleep(0.3)  # the scenario: the waiter waits behind the transaction
            await tx.execute({"execute": "query-name"})
        await asyncio.wait_for(waiter, 5)
        await channel.close()
        channel.log.close()
    commands = {r.src: r for r in RecordingReader(log) if isinstance(r, Command) and r.src in ("quick", "waiter")}
    assert commands["quick"].queued is None
    waited = commands["waiter"].t - commands["waiter"].queued
    assert 0.25 < waited < 2.0, waited
    stats = json.loads(subprocess.run([*support.QMPRR, "stats", str(log), "--json"], check=True,
                                      capture_output=True, text=True).stdout)
    wait = stats["transactions"]["waits"]["longest"][0]
    assert wait["client"] == "waiter" and abs(wait["seconds"] - waited) < 0.01, wait
