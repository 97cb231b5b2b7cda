"""``qmprr bench proxy`` against a real QEMU: the proxy and its floors, measured side by side."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import orjson
import pytest
from qmprr.bench import floors, proxy

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")


def test_bench_prints_the_proxy_and_its_floors(capsys: pytest.CaptureFixture[str]) -> None:
    medians = proxy.run(commands=40, rounds=2, clients=2, each=5)
    out = capsys.readouterr().out
    assert re.search(r"P2 ratio raw \(proxy/straight\): +\d+\.\d\d  rounds", out)
    assert re.search(r"floor, a byte relay in Python .*: ratio \d+\.\d\d  rounds .*, CPU \d+\.\d us/command", out)
    assert re.search(r"floor, the least write-ahead recorder .*: ratio \d+\.\d\d", out)
    assert medians["floor_relay"] > 0 and medians["floor_recorder_cpu_us"] > 0
    assert ("floor_socat" in medians) == (shutil.which("socat") is not None)


def test_the_recorder_floor_writes_each_record_before_passing_its_message_on(tmp_path: str) -> None:
    folder = str(tmp_path)
    floor = next(f for f in floors.argvs(folder) if f.name == "recorder")
    qemu = subprocess.Popen(["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
                             "-qmp", f"unix:{floor.upstream},server=on,wait=off"], stdin=subprocess.DEVNULL)
    rec = None
    try:
        proxy._wait_for(floor.upstream, qemu)
        rec = subprocess.Popen(floor.argv, stdin=subprocess.DEVNULL)
        proxy._wait_for(floor.socket, rec)
        client = proxy.RawClient(floor.socket)
        client.timed(3)
        client.close()
        lines = [orjson.loads(line) for line in open(os.path.join(folder, "recorder.jsonl"), "rb")]
    finally:
        for p in (rec, qemu):
            if p is not None:
                p.kill()
                p.wait()
    kinds = [line["kind"] for line in lines]
    assert kinds == ["command", "reply"] * 4  # qmp_capabilities, then 3 query-status
    assert all(line["prev"] == before["h"] for before, line in zip(lines, lines[1:]))
    assert lines[-2]["msg"]["execute"] == "query-status" and lines[-2]["msg"]["id"].startswith("qmprr-")


def test_the_replay_floors_record_every_command_and_reply(tmp_path: str) -> None:
    from qmprr.bench import replay as bench_replay
    from qmprr.recording import read_records

    commands = [b'{"execute":"query-status"}', b'{"execute":"query-name"}'] * 3
    hand, ours = os.path.join(tmp_path, "hand.jsonl"), os.path.join(tmp_path, "ours.jsonl")
    assert bench_replay._floor_time("qemu-system-x86_64", commands, hand, writer=False) > 0
    assert bench_replay._floor_time("qemu-system-x86_64", commands, ours, writer=True) > 0
    lines = [orjson.loads(line) for line in open(hand, "rb")]
    assert [line["kind"] for line in lines] == ["command", "reply"] * 6
    assert all(line["prev"] == before["h"] for before, line in zip(lines, lines[1:]))
    kinds = [r.kind for r in read_records(ours)]
    assert kinds.count("command") == 6 and kinds.count("reply") == 6
