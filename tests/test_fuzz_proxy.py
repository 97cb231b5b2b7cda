"""Hostile clients against a real ``qmprr launch``: nothing crashes, nothing is misrouted.

Many concurrent clients on the primary and the debug socket send a bounded,
seeded stream of hostile input -- garbage, cut and deeply nested JSON, 0xFF
bytes, single quotes, duplicate and odd ids (including the well-behaved
client's own), stray transaction commands, clients that disconnect mid-message
or never read -- while one well-behaved client loops ``query-status``.

Afterwards: the proxy is still up and quits QEMU cleanly, its stderr holds no
traceback, every reply any client received carried an id that client sent (or
none), the good client got exactly its own replies in order, and the recording
verifies. The run's figures (inputs sent, the good client's latency
percentiles) are printed; ``python tests/test_fuzz_proxy.py`` runs it alone.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

import support
from qmprr import wire

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

#: Hostile inputs in all (across clients); the issue asks for at least 10,000.
TOTAL_INPUTS = 12_000
HOSTILE_CLIENTS = 8  # half on the primary socket, half on the debug socket
SEED = 20261202

#: Harmless commands for QEMU -machine none (never quit: the primary may run it).
SAFE_COMMANDS = [
    "query-status", "query-version", "query-name", "query-uuid", "query-kvm", "query-commands",
    "query-chardev", "query-events", "query-iothreads", "query-block", "no-such-command",
    "qom-list", "query-machines",
]


def _hostile_items(rng: random.Random, client: int, debug: bool) -> list[tuple[str, bytes, Any]]:
    """(kind, bytes, id or None) for one client; ids carry the client number so misrouting shows."""
    items: list[tuple[str, bytes, Any]] = []
    n = 0
    # The debug policy refuses HMP quit; the primary client is trusted to quit, so it is not sent there.
    hmp_lines = ["info status", "info version", "x", *(["q", "quit"] if debug else [])]

    def cid() -> Any:
        nonlocal n
        n += 1
        return rng.choice([f"h{client}-{n}", [client, n], {"c": client, "n": n}, client * 1_000_000 + n])

    makers = [
        ("command", lambda: _command(rng.choice(SAFE_COMMANDS), cid())),
        ("garbage", lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))),
        ("cut", lambda: _command(rng.choice(SAFE_COMMANDS), cid())[: rng.randrange(1, 20)]),
        ("deep", lambda: b'{"execute":"query-status","arguments":{"a":' + b"[" * rng.randrange(200, 1100)
         + b"]" * rng.randrange(0, 1100) + b"}}"),
        ("ff", lambda: b'{"execute":"query-status","id":"\xff' + bytes([rng.randrange(256)]) + b'"}'),
        # QEMU reads single-quoted strings: this is a command with the id h<client>-q<N>.
        ("single-quote", lambda: b"{'execute':'query-status','id':'" + f"h{client}-q{rng.randrange(9**6)}".encode() + b"'}"),
        ("stolen-id", lambda: _command("query-status", f"good-{rng.randrange(1000)}")),
        ("not-object", lambda: rng.choice([b"42", b"[1,2]", b'"x"', b"null", b"}", b"]"])),
        ("bad-shape", lambda: json.dumps({"execute": rng.choice([1, None, [], "query-status"]),
                                          "arguments": rng.choice([[], "x", 3, {}]), "extra": 1}).encode()),
        ("tx", lambda: _command(rng.choice(["qmprr-transaction-begin", "qmprr-transaction-end"]), cid())),
        ("hmp", lambda: _command("human-monitor-command", cid(),
                                 {"command-line": rng.choice(hmp_lines)})),
        ("string", lambda: b'{"execute":"query-status","arguments":{"s":"' + b"A" * rng.randrange(1, 70000) + b'"}}'),
    ]
    while len(items) < TOTAL_INPUTS // HOSTILE_CLIENTS:
        kind, make = rng.choice(makers)
        data = make()
        sent_id = None
        if kind in ("command", "stolen-id", "tx", "hmp"):
            sent_id = json.loads(data)["id"]
        elif kind == "single-quote":
            sent_id = data.decode().split("'id':'")[1].rstrip("'}")
        items.append((kind, data + rng.choice([b"", b"\n", b"\r\n", b" "]), sent_id))
    return items


def _command(name: str, cid: Any, arguments: dict[str, Any] | None = None) -> bytes:
    msg: dict[str, Any] = {"execute": name, "id": cid}
    if arguments is not None:
        msg["arguments"] = arguments
    return json.dumps(msg).encode()


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@attrs.define
class ClientResult:
    sent_ids: set[str] = attrs.field(factory=set)
    received_ids: list[str] = attrs.field(factory=list)
    inputs: int = 0
    disconnected: bool = False


async def _negotiate(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(path, limit=64 * 1024 * 1024)
    await reader.readline()  # greeting
    writer.write(b'{"execute":"qmp_capabilities"}\r\n')
    await reader.readline()
    return reader, writer


async def _read_replies(reader: asyncio.StreamReader, result: ClientResult) -> None:
    decoder = wire.StreamDecoder(max_message=256 * 1024 * 1024)
    while data := await reader.read(1 << 16):
        for item in decoder.feed(data):
            if isinstance(item, dict) and "event" not in item and "id" in item:
                result.received_ids.append(_key(item["id"]))


async def _hostile(path: str, items: list[tuple[str, bytes, Any]], rng: random.Random) -> ClientResult:
    result = ClientResult()
    never_reads = rng.random() < 0.25
    pos = 0
    while pos < len(items):
        try:
            reader, writer = await _negotiate(path)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            result.disconnected = True
            await asyncio.sleep(0.01)
            continue
        reading = None if never_reads else asyncio.create_task(_read_replies(reader, result))
        burst = rng.randrange(20, 400)
        try:
            for kind, data, sent_id in items[pos : pos + burst]:
                if sent_id is not None:
                    result.sent_ids.add(_key(sent_id))
                writer.write(data)
                result.inputs += 1
                if rng.random() < 0.05:
                    await writer.drain()
            pos += burst
            await asyncio.wait_for(writer.drain(), 5)
            if reading is not None:
                await asyncio.sleep(rng.random() * 0.05)
        except (ConnectionError, OSError, TimeoutError):
            result.disconnected = True  # the proxy may cut a client that floods or never reads
            pos += burst
        finally:
            writer.close()
            if reading is not None:
                try:
                    await asyncio.wait_for(reading, 10)
                except (TimeoutError, ConnectionError, OSError):
                    reading.cancel()
    return result


async def _good(path: str, stop: asyncio.Event) -> tuple[list[float], list[str]]:
    reader, writer = await _negotiate(path)
    decoder = wire.StreamDecoder()
    latencies: list[float] = []
    problems: list[str] = []
    n = 0
    while not stop.is_set():
        n += 1
        want = f"good-{n}"
        t0 = time.perf_counter()
        writer.write(_command("query-status", want) + b"\r\n")
        got: dict[str, Any] | None = None
        while got is None:
            data = await asyncio.wait_for(reader.read(1 << 16), 60)
            if not data:
                problems.append("the proxy closed the good client's connection")
                return latencies, problems
            for item in decoder.feed(data):
                if isinstance(item, dict) and "event" not in item:
                    got = item
        latencies.append(time.perf_counter() - t0)
        if got.get("id") != want or got.get("return", {}).get("status") not in ("running", "paused"):
            problems.append(f"good client asked {want}, got {got}")
    writer.close()
    return latencies, problems


async def _alone(socket_path: str, commands: int) -> list[float]:
    """The good client's latencies with nobody else on the channel: the same run's baseline."""
    stop = asyncio.Event()
    task = asyncio.create_task(_good(socket_path, stop))
    while True:
        await asyncio.sleep(0.05)
        if task.done() or commands <= 0:
            break
        commands -= 50
    stop.set()
    latencies, problems = await task
    assert problems == []
    return latencies


async def _fuzz(socket_path: str, debug_path: str) -> dict[str, Any]:
    rng = random.Random(SEED)
    baseline = await _alone(socket_path, 400)
    stop = asyncio.Event()
    good = asyncio.create_task(_good(socket_path, stop))
    tasks = []
    for c in range(HOSTILE_CLIENTS):
        crng = random.Random(rng.randrange(1 << 30))
        path = socket_path if c % 2 == 0 else debug_path
        tasks.append(asyncio.create_task(_hostile(path, _hostile_items(crng, c, path == debug_path), crng)))
    results = await asyncio.gather(*tasks)
    stop.set()
    latencies, problems = await good
    misrouted = [
        (c, rid) for c, r in enumerate(results) for rid in r.received_ids if rid not in r.sent_ids
    ]
    return {"results": results, "latencies": latencies, "problems": problems, "misrouted": misrouted,
            "baseline": baseline}


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else (values or [0.0])[0]


def run_fuzz(tmp_path: Path) -> dict[str, Any]:
    """Launch, fuzz, stop; returns the figures and what went wrong."""
    argv = [*support.QEMU_NONE, "-name", f"fuzz-{SEED}"]
    with support.qmprr_launch(tmp_path, argv) as launched:
        out = asyncio.run(_fuzz(launched.socket, launched.debug_socket))
        alive = launched.proc.poll() is None
        status = launched.stop()
        stderr = launched.proc.stderr.read().decode(errors="replace")
    verify = subprocess.run(
        [*support.QMPRR, "verify", str(launched.record)], capture_output=True, text=True, timeout=120
    )
    out.update(alive=alive, status=status, stderr=stderr, verify=verify, record=launched.record)
    return out


def test_fuzz_hostile_clients_beside_a_good_one(tmp_path: Path) -> None:
    out = run_fuzz(tmp_path)
    inputs = sum(r.inputs for r in out["results"])
    lat, base = out["latencies"], out["baseline"]
    kinds: dict[str, int] = {}
    for line in out["record"].read_bytes().splitlines():
        kind = json.loads(line)["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
    print(
        f"\nfuzz: {inputs} hostile inputs from {HOSTILE_CLIENTS} clients;"
        f" good client alone: {len(base)} commands, p50 {_percentile(base, 50) * 1e3:.2f} ms,"
        f" p99 {_percentile(base, 99) * 1e3:.2f} ms; beside them: {len(lat)} commands,"
        f" p50 {_percentile(lat, 50) * 1e3:.2f} ms, p99 {_percentile(lat, 99) * 1e3:.2f} ms,"
        f" max {max(lat) * 1e3:.1f} ms; misrouted {len(out['misrouted'])}; records by kind {kinds}"
    )
    assert inputs >= 10_000
    assert out["alive"], "the proxy died under hostile input"
    assert out["status"] == 0, out["stderr"]
    assert "Traceback" not in out["stderr"] and "Exception" not in out["stderr"], out["stderr"]
    assert out["misrouted"] == []
    assert out["problems"] == []
    assert len(lat) > 0
    assert out["verify"].returncode == 0, out["verify"].stdout + out["verify"].stderr


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(pytest.main([__file__, "-q", "-s", "--basetemp", tmp]))
