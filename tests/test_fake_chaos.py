"""Chaos mode for the fake: only legal perturbations, deterministic per seed, and it finds a real race.

The race is ``examples/commit_job.py``: a client that drops the events it
reads while waiting for a reply passes against the plain fake and fails
under some seed; its careful version passes under every seed tried.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import support
from hypothesis import given
from hypothesis import strategies as st

from qmprr.fake import FakeQemu
from qmprr.fake_chaos import Chaos, coalesce, relay
from replay_support import RECORDINGS, ROOT

BLOCK = RECORDINGS / "block.jsonl"
SEEDS = range(20)
DELAY = 0.005

pytest_plugins = ["pytester"]


commit_job = support.load_example("commit_job")


async def _run(tmp_path: Path, seed: int | None, careful: bool) -> tuple[bool, FakeQemu]:
    """The example client against the fake of block.jsonl (chaos *seed*, or plain); True when it got through."""
    fake = FakeQemu.from_recording(BLOCK, chaos=None if seed is None else Chaos(seed, DELAY))
    path = str(tmp_path / f"qmp-{seed}-{careful}.sock")
    await fake.serve_unix(path)
    try:
        await commit_job.commit(path, careful=careful, event_timeout=1.0)
        ok = True
    except commit_job.JobTimeout:
        ok = False
    finally:
        await fake.close()
    return ok, fake


async def test_the_race_passes_plain_fails_under_chaos_and_its_fix_passes(tmp_path: Path) -> None:
    ok, fake = await _run(tmp_path, None, careful=False)
    assert ok and fake.report().ok("strict")
    failing = None
    for seed in SEEDS:
        ok, fake = await _run(tmp_path, seed, careful=False)
        if not ok:
            failing = seed
            lines = fake.chaos.lines() if fake.chaos else []
            assert lines[0].startswith(f"chaos seed {seed} ") and f"--chaos {seed}" in lines[0]
            assert any("before the reply" in line for line in lines[1:])
            break
    assert failing is not None, f"no seed in {SEEDS} exposed the race"
    ok, _ = await _run(tmp_path, failing, careful=False)
    assert not ok, "the same seed must fail again"
    for seed in range(failing + 1):
        ok, fake = await _run(tmp_path, seed, careful=True)
        assert ok and fake.report().ok("strict"), f"the careful client failed under seed {seed}"


async def test_replies_are_unchanged_and_events_keep_their_order(tmp_path: Path) -> None:
    """Under chaos every reply is the recorded one, in command order; the events are the recorded ones, in order."""
    plain = await _messages(tmp_path, None)
    for seed in range(5):
        chaotic = await _messages(tmp_path, seed)
        assert [m for m in chaotic if "event" not in m] == [m for m in plain if "event" not in m]
        assert [m for m in chaotic if "event" in m] == [m for m in plain if "event" in m]


async def _messages(tmp_path: Path, seed: int | None) -> list[dict[str, Any]]:
    fake = FakeQemu.from_recording(BLOCK, chaos=None if seed is None else Chaos(seed, DELAY), mode="lenient")
    path = str(tmp_path / f"m-{seed}.sock")
    await fake.serve_unix(path)
    reader, writer = await asyncio.open_unix_connection(path)
    out: list[dict[str, Any]] = []
    try:
        await reader.readline()
        names = ["qmp_capabilities", "blockdev-add", "block-commit", "job-complete", "job-dismiss"]
        for name in names:  # lenient: by name; a command's events all arrive before the next reply at the latest
            writer.write(json.dumps({"execute": name, "id": name}).encode() + b"\n")
            await writer.drain()
            while True:
                msg = json.loads(await reader.readline())
                if "event" in msg:
                    msg.pop("timestamp", None)
                out.append(msg)
                if msg.get("id") == name:
                    break
    finally:
        writer.close()
        await fake.close()
    return out


def test_the_same_seed_gives_the_same_schedule() -> None:
    events = [{"event": f"E{i}"} for i in range(6)]
    runs = []
    for _ in range(2):
        chaos = Chaos(11)
        runs.append([chaos.place("x", events[:2], events[2:]) for _ in range(10)] + [chaos.decisions])
    assert runs[0] == runs[1]
    assert Chaos(12).place("x", events[:2], events[2:]) != runs[0][0] or Chaos(13).place(
        "x", events[:2], events[2:]) != runs[0][0]  # fmt: skip


@given(seed=st.integers(), before=st.integers(0, 5), after=st.integers(0, 5))
def test_placement_keeps_every_event_in_order(seed: int, before: int, after: int) -> None:
    events = [{"event": "X", "data": {"n": i}} for i in range(before + after)]
    b, a, delay = Chaos(seed, 0.5).place("x", events[:before], events[before:])
    assert b + a == events and 0 <= delay <= 0.5


def _rtc(seconds: int, us: int, offset: int) -> dict[str, Any]:
    return {"event": "RTC_CHANGE", "data": {"offset": offset}, "timestamp": {"seconds": seconds, "microseconds": us}}


@given(seed=st.integers())
def test_only_the_middle_of_a_throttled_burst_is_dropped(seed: int) -> None:
    import random

    burst = [_rtc(100, 0, 1), _rtc(100, 300_000, 2), _rtc(100, 600_000, 3), _rtc(100, 900_000, 4)]
    out = coalesce(burst, random.Random(seed))
    assert out[0] == burst[0] and out[-1] == burst[-1] and all(e in burst for e in out)
    assert [e["data"]["offset"] for e in out] == sorted(e["data"]["offset"] for e in out)
    spread = [_rtc(100, 0, 1), _rtc(102, 0, 2), _rtc(104, 0, 3)]  # a second or more apart: QEMU sends them all
    assert coalesce(spread, random.Random(seed)) == spread
    others = [{"event": "STOP"}, {"event": "STOP"}, {"event": "STOP"}]  # not rate-limited
    assert coalesce(others, random.Random(seed)) == others


def test_some_seed_coalesces_a_burst() -> None:
    import random

    burst = [_rtc(100, 0, 1), _rtc(100, 300_000, 2), _rtc(100, 600_000, 3)]
    assert any(len(coalesce(burst, random.Random(seed))) == 2 for seed in range(20))


@given(seed=st.integers(0, 2**32), data=st.binary(min_size=1, max_size=3000))
def test_the_relay_delivers_every_byte_in_order(seed: int, data: bytes) -> None:
    chaos = Chaos(seed, 0.0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    async def main() -> bytes:
        ours, theirs = socket.socketpair()
        r, w = await asyncio.open_unix_connection(sock=theirs)
        relaying = asyncio.create_task(relay(r, w, chaos, serve))
        cr, cw = await asyncio.open_unix_connection(sock=ours)
        got = await cr.read(-1)
        cw.close()
        await relaying
        return got

    assert asyncio.run(main()) == data
    assert chaos.pieces >= 1


def test_a_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="finite number"):
        Chaos(1, -1.0)


def test_cli_chaos_prints_the_schedule_and_refuses_a_bad_delay(tmp_path: Path) -> None:
    qmprr = [sys.executable, "-m", "qmprr.cli"]
    bad = subprocess.run([*qmprr, "fake", str(BLOCK), "--socket", str(tmp_path / "s"), "--chaos-max-delay", "-1"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) >= 1 and "Traceback" not in bad.stderr
    alone = subprocess.run([*qmprr, "fake", str(BLOCK), "--socket", str(tmp_path / "s"), "--chaos-max-delay", "1"],
                           capture_output=True, text=True)  # fmt: skip
    assert alone.returncode == 2 and alone.stderr.startswith("qmprr: --chaos-max-delay needs --chaos")
    sock = tmp_path / "q.sock"
    proc = subprocess.Popen([*qmprr, "fake", str(BLOCK), "--socket", str(sock), "--chaos", "3"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stderr is not None
        assert "serving" in proc.stderr.readline()
        assert asyncio.run(commit_job.commit(str(sock), careful=True, event_timeout=5.0))[-1] == "cleaned up"
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "qmprr fake: chaos seed 3 (max delay 0.02 s): re-run with --chaos 3" in err


def test_pytest_plugin_chaos_prints_the_seed_on_failure(pytester: pytest.Pytester) -> None:
    (pytester.path / "block.jsonl").write_bytes(BLOCK.read_bytes())
    (pytester.path / "commit_job.py").write_bytes((ROOT / "examples" / "commit_job.py").read_bytes())
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_job='''
import asyncio, pytest, commit_job

@pytest.mark.qmp_recording("block.jsonl")
def test_racy(qmp_fake):
    asyncio.run(commit_job.commit(qmp_fake.socket, careful=False, event_timeout=1.0))
''')
    args = ["-p", "qmprr.pytest_plugin"] if "qmprr" not in _entry_points() else []
    assert pytester.runpytest(*args).ret == 0  # the plain fake
    failing = None
    for seed in SEEDS:
        result = pytester.runpytest(*args, f"--qmp-chaos={seed}", "--qmp-chaos-max-delay=0.005")
        if result.ret != 0:
            failing = seed
            break
    assert failing is not None
    result.stdout.fnmatch_lines([f"*chaos seed {failing} (max delay 0.005 s): re-run with*--qmp-chaos={failing}*"])


def _entry_points() -> set[str]:
    import importlib.metadata

    return {ep.name for ep in importlib.metadata.entry_points(group="pytest11")}


def test_cli_chaos_stops_cleanly_with_a_client_connected(tmp_path: Path) -> None:
    import signal

    sock = tmp_path / "k.sock"
    proc = subprocess.Popen([sys.executable, "-m", "qmprr.cli", "fake", str(BLOCK), "--socket", str(sock),
                             "--chaos", "5", "--keep-serving"], stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stderr is not None and "serving" in proc.stderr.readline()
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(sock))
        f = client.makefile("rwb")
        assert b"QMP" in f.readline()
        f.write(b'{"execute":"qmp_capabilities"}\n')
        f.flush()
        assert json.loads(f.readline()) == {"return": {}}
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        client.close()
    finally:
        proc.kill()
    assert proc.returncode == 1  # strict: the recorded commands were never sent
    assert "Traceback" not in err and "chaos seed 5" in err
