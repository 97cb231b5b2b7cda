"""``qmprr bench replay``: what replay and the fake QEMU cost, as ratios from one run.

(a) Fake throughput. A synthetic recording of N ``query-status`` exchanges is
served by ``qmprr fake`` (a separate process, as users run it) in strict and
in lenient mode; a raw socket client pipelines all N commands (a sender
thread writes them all while the main thread reads the replies) and counts
exchanges per second. Baselines measured the same way in the same run: a real
QEMU (``-machine none``) and a minimal QMP responder (uvloop, qmprr's stream
decoder, one canned reply per command: the floor for a Python QMP server).

(b) Replay against a real QEMU. A recording of M commands (a mix of cheap
queries) is first made through qmprr's channel against a real QEMU; then it
is replayed by the engine (``--target qemu``, as fast as possible: channel,
write-ahead log, comparisons) and, as the baseline, sent by a raw blocking
client straight to a fresh QEMU (the same private socketpair monitor), one
command at a time, reading each reply.
A middle line (the channel alone, no engine) shows where the cost lies, and
two floors the least a write-ahead replayer costs: one asyncio protocol
callback per reply, recording each command and reply (a hand-made hash chain,
then qmprr's RecordWriter) before sending the next.
Rounds alternate so machine noise hits all of them alike; medians are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from .. import codec

GOAL_FAKE_RATE = 50_000.0
GOAL_REPLAY_RATIO = 1.25
QEMU_NONE = ["-machine", "none", "-nodefaults", "-display", "none"]
#: Cheap queries for the replay benchmark: deterministic replies on ``-machine none``.
MIX: list[dict[str, Any]] = [
    {"execute": "query-status"},
    {"execute": "query-version"},
    {"execute": "query-name"},
    {"execute": "query-kvm"},
    {"execute": "query-uuid"},
    {"execute": "query-target"},
    {"execute": "qom-list", "arguments": {"path": "/machine"}},
    {"execute": "query-iothreads"},
]
RUNNING = {"status": "running", "singlestep": False, "running": True}

ECHO_SERVER = r'''
import asyncio, sys
from qmprr import wire
try:
    import uvloop
except ImportError:
    uvloop = None
GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}
REPLY = {"return": {"status": "running", "singlestep": False, "running": True}}

async def handle(reader, writer):
    # The floor for a Python QMP server: qmprr's stream decoder in, one encoded reply out per message.
    transport = writer.transport
    transport.write(wire.encode(GREETING))
    decoder = wire.StreamDecoder()
    while True:
        data = await reader.read(262144)
        if not data:
            break
        for msg in decoder.feed(data):
            transport.write(wire.encode(REPLY if msg.get("execute") != "qmp_capabilities" else {"return": {}}))
        await writer.drain()
    writer.close()

async def main(path):
    server = await asyncio.start_unix_server(handle, path)
    async with server:
        await server.serve_forever()

if uvloop is not None:
    uvloop.install()
asyncio.run(main(sys.argv[1]))
'''


# -- helpers ------------------------------------------------------------------


def _wait_for(path: str, proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"qmprr bench: {path} did not appear (process status {proc.poll()})")
        time.sleep(0.01)


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _connect(path: str) -> tuple[socket.socket, bytes]:
    """Connect, read the greeting, negotiate; return the socket and bytes read past the reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock, _negotiate(sock)


def _negotiate(sock: socket.socket) -> bytes:
    """Read the greeting, negotiate; return the bytes read past the reply."""
    buf = _line(sock, b"")
    sock.sendall(b'{"execute":"qmp_capabilities"}')
    return _line(sock, buf)


def _line(sock: socket.socket, buf: bytes) -> bytes:
    """Read until *buf* holds a whole line; the bytes after it (SystemExit when QEMU hangs up)."""
    while b"\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("qmprr bench: QEMU closed the monitor")
        buf += data
    return buf.split(b"\n", 1)[1]


def pipelined_rate(path: str, n: int, command: bytes = b'{"execute":"query-status"}') -> float:
    """Exchanges per second of a raw client that sends *n* commands while reading the replies."""
    sock, rest = _connect(path)
    try:
        payload = command * n
        errors: list[BaseException] = []

        def send() -> None:
            try:
                sock.sendall(payload)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        start = time.perf_counter()
        sender.start()
        seen = rest.count(b"\n")
        replies = rest.count(b'"return"') + rest.count(b'"error"')
        while seen < n:
            data = sock.recv(1 << 20)
            if not data:
                raise SystemExit(f"qmprr bench: server closed after {seen} of {n} replies")
            seen += data.count(b"\n")
            if replies == 0 and b'"error"' in data:
                replies = -1
        elapsed = time.perf_counter() - start
        sender.join()
        if errors:
            raise SystemExit(f"qmprr bench: sending failed: {errors[0]}")
        if replies < 0:
            raise SystemExit("qmprr bench: the server answered errors; the benchmark is not measuring replay")
        return n / elapsed
    finally:
        sock.close()


def _synthetic_recording(path: str, n: int) -> None:
    from ..recording import Command, Greeting, Msg, RecordWriter, Reply, new_header

    version = {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "bench"}
    with RecordWriter.create(path, new_header(qemu_version=version), sync="none") as writer:
        writer.append(Greeting(msg=Msg({"QMP": {"version": version, "capabilities": []}})))
        cap = writer.append(Command(src="qmprr", role="internal", msg=Msg({"execute": "qmp_capabilities", "id": "qmprr-0"})))
        writer.append(Reply(cmd=cap.seq, msg=Msg({"return": {}, "id": "qmprr-0"})))
        for i in range(1, n + 1):
            cmd = writer.append(Command(src="primary-1", role="primary", msg=Msg({"execute": "query-status", "id": f"qmprr-{i}"})))
            writer.append(Reply(cmd=cmd.seq, msg=Msg({"return": RUNNING, "id": f"qmprr-{i}"})))


# -- (a) fake throughput -----------------------------------------------------------


def bench_fake(n: int, rounds: int, qemu: str, tmp: str) -> dict[str, float]:
    record = os.path.join(tmp, "fake-bench.jsonl")
    _synthetic_recording(record, n)
    qsock, esock = os.path.join(tmp, "qemu.sock"), os.path.join(tmp, "echo.sock")
    qemu_proc = subprocess.Popen([qemu, *QEMU_NONE, "-qmp", f"unix:{qsock},server=on,wait=off"], stdin=subprocess.DEVNULL)
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, esock], stdin=subprocess.DEVNULL)
    rates: dict[str, list[float]] = {"qemu": [], "echo": [], "fake strict": [], "fake lenient": []}
    try:
        _wait_for(qsock, qemu_proc)
        _wait_for(esock, echo)
        for r in range(rounds):
            rates["qemu"].append(pipelined_rate(qsock, n))
            rates["echo"].append(pipelined_rate(esock, n))
            for mode in ("strict", "lenient"):
                fsock = os.path.join(tmp, f"fake-{mode}-{r}.sock")
                fake = subprocess.Popen(
                    [sys.executable, "-m", "qmprr.cli", "fake", record, "--socket", fsock, "--mode", mode],
                    stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                )
                try:
                    _wait_for(fsock, fake)
                    rates[f"fake {mode}"].append(pipelined_rate(fsock, n))
                    _, err = fake.communicate(timeout=60)
                    if fake.returncode != 0:
                        raise SystemExit(f"qmprr bench: the fake reported problems:\n{err.decode()}")
                finally:
                    _stop(fake)
    finally:
        _stop(qemu_proc)
        _stop(echo)
    return {k: statistics.median(v) for k, v in rates.items()}


# -- (b) replay against a real QEMU ---------------------------------------------------


async def _record_mix(qemu: str, path: str, m: int) -> list[str]:
    """Record *m* commands of the mix through the channel against a real QEMU; return the argv."""
    from ..qemu_channel import qemu_channel
    from ..replay.targets import log_factory

    argv = [qemu, *QEMU_NONE]
    async with qemu_channel(argv, log_factory(path, argv, {"made-by": "qmprr bench replay"})) as (_, channel):
        for i in range(m):
            await channel.execute(MIX[i % len(MIX)], src="primary-1")
    return argv


async def _engine_time(script: Any, argv: list[str], tmp: str, tag: str, engine: bool) -> tuple[float, int]:
    """Seconds to replay *script* through the engine (or, *engine* False, the bare channel)."""
    from ..replay.engine import ReplayOptions, ReplayReport, replay
    from ..replay.targets import log_factory, qemu_target

    out = os.path.join(tmp, f"replay-{tag}.jsonl")
    async with qemu_target(argv, log_factory(out, argv, {}), None) as channel:
        if engine:
            report = ReplayReport(recording="bench", target="qemu")
            start = time.perf_counter()
            await replay(script, channel, ReplayOptions(), report)
            elapsed = time.perf_counter() - start
            matched = report.count("matched")
        else:
            msgs = [ex.msg for ex in script.exchanges]
            start = time.perf_counter()
            for msg in msgs:
                await channel.execute(msg, src="primary-1")
            elapsed = time.perf_counter() - start
            matched = len(msgs)
    os.unlink(out)
    return elapsed, matched


def _raw_time(qemu: str, commands: list[bytes]) -> float:
    """Seconds for a raw blocking client to send each command to a fresh QEMU and read its reply.

    QEMU gets the same kind of monitor the replay target gives it (a private
    socketpair, see :mod:`qmprr.launch`), so only the client side differs.
    """
    from ..launch import monitor_args

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [qemu, *QEMU_NONE, *monitor_args(theirs.fileno())], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
    )
    theirs.close()
    try:
        buf = _negotiate(ours)
        start = time.perf_counter()
        for command in commands:
            ours.sendall(command)
            while b"\n" not in buf:
                buf += ours.recv(1 << 16)
            buf = buf.split(b"\n", 1)[1]
        return time.perf_counter() - start
    finally:
        ours.close()
        _stop(proc)


def _floor_time(qemu: str, commands: list[bytes], log_path: str, *, writer: bool) -> float:
    """Seconds for the least write-ahead replayer on asyncio to run *commands* against a fresh QEMU.

    One protocol callback per reply: the reply recorded, the next command
    recorded and written. The records are a hand-made hash chain, or (*writer*)
    qmprr's :class:`~qmprr.recording.RecordWriter`, which every design keeps.
    """
    from ..launch import monitor_args

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.settimeout(30)
    proc = subprocess.Popen(
        [qemu, *QEMU_NONE, *monitor_args(theirs.fileno())], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
    )
    theirs.close()
    try:
        return _floor_run(ours, commands, log_path, writer)
    finally:
        ours.close()
        _stop(proc)


def _floor_run(ours: socket.socket, commands: list[bytes], log_path: str, writer: bool) -> float:
    """:func:`_floor_time` on a monitor socket already connected to QEMU."""
    import hashlib

    from ..recording import RecordWriter
    from ..recording.header import header_for_greeting

    log = RecordWriter.create(log_path, header_for_greeting({"QMP": {"version": {}, "capabilities": []}})) if writer else None
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if log is None else -1
    state: dict[str, Any] = {"prev": b"0" * 32, "seq": 0}

    def record(kind: bytes, line: bytes) -> None:
        if log is not None:
            msg = codec.loads(line)
            if kind == b"command":
                state["seq"] = log.append_command(src="primary-1", role="primary", msg=msg, encoded=line)
            else:
                log.append_reply(cmd=state["seq"], msg=msg)
            return
        out = b'{"kind":"%b","msg":%b,"prev":"%b"' % (kind, line, state["prev"])
        state["prev"] = hashlib.blake2b(out, digest_size=16).hexdigest().encode()
        os.write(fd, out + b',"h":"%b"}\n' % state["prev"])

    async def replay() -> float:
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        todo = iter(commands)

        class Replayer(asyncio.Protocol):
            buf = b""

            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def send_next(self) -> None:
                command = next(todo, None)
                if command is None:
                    finished.set_result(None)
                    return
                record(b"command", command)
                self.transport.write(command)

            def data_received(self, data: bytes) -> None:
                self.buf += data
                while b"\n" in self.buf:
                    reply, self.buf = self.buf.split(b"\n", 1)
                    record(b"reply", reply)  # the mix sends no events: each line answers the command
                    self.send_next()

            def connection_lost(self, exc: Exception | None) -> None:
                if not finished.done():
                    finished.set_exception(SystemExit("qmprr bench: QEMU closed the monitor"))

        _transport, protocol = await loop.create_connection(Replayer, sock=ours)
        start = time.perf_counter()
        protocol.send_next()
        await finished
        return time.perf_counter() - start

    try:
        _negotiate(ours)
        ours.setblocking(False)
        return float(_run(replay()))
    finally:
        if log is not None:
            log.close()
        else:
            os.close(fd)


def bench_replay(m: int, rounds: int, qemu: str, tmp: str) -> dict[str, float]:
    from ..replay.script import load_script

    record = os.path.join(tmp, "replay-bench.jsonl")
    argv = _run(_record_mix(qemu, record, m))
    script = load_script(record)
    commands = [codec.dumps(ex.msg) for ex in script.exchanges]
    times: dict[str, list[float]] = {"raw": [], "floor": [], "floor writer": [], "channel": [], "engine": []}
    for r in range(rounds):
        times["raw"].append(_raw_time(qemu, commands))
        for key, writer in (("floor", False), ("floor writer", True)):
            floor_log = os.path.join(tmp, f"floor-{r}-{writer}.jsonl")
            times[key].append(_floor_time(qemu, commands, floor_log, writer=writer))
            os.unlink(floor_log)
        elapsed, _ = _run(_engine_time(script, argv, tmp, f"c{r}", engine=False))
        times["channel"].append(elapsed)
        elapsed, matched = _run(_engine_time(script, argv, tmp, f"e{r}", engine=True))
        if matched != len(script.exchanges):
            raise SystemExit(f"qmprr bench: replay diverged ({matched} of {len(script.exchanges)} matched)")
        times["engine"].append(elapsed)
    out = {k: statistics.median(v) for k, v in times.items()}
    ratios = [e / r for e, r in zip(times["engine"], times["raw"])]
    out["ratio min"], out["ratio max"] = min(ratios), max(ratios)
    return out


def _run(coro: Any) -> Any:
    """Run *coro* on uvloop when installed, as ``qmprr replay`` does."""
    factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


# -- entry point ---------------------------------------------------------------------


def run(
    exchanges: int = 20_000,
    commands: int = 10_000,
    rounds: int = 3,
    qemu: str = "qemu-system-x86_64",
    only: str | None = None,
) -> dict[str, float]:
    """Run both benchmarks (or *only* ``fake`` / ``replay``), print figures and ratios, return them."""
    if shutil.which(qemu) is None:
        raise SystemExit(f"qmprr bench: {qemu} not found (apt-get install qemu-system-x86)")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="qmprr-bench-") as tmp:
        if only in (None, "fake"):
            rates = bench_fake(exchanges, rounds, qemu, tmp)
            print(f"qmprr bench replay (a): fake QEMU throughput, {exchanges:,} pipelined query-status "
                  f"exchanges from a raw client, median of {rounds} rounds")
            for key in ("qemu", "echo", "fake strict", "fake lenient"):
                label = {"qemu": "real QEMU", "echo": "minimal responder"}.get(key, f"qmprr {key}")
                print(f"  {label:<20} {rates[key]:>12,.0f} exchanges/s")
            for mode in ("strict", "lenient"):
                rate = rates[f"fake {mode}"]
                print(f"  fake {mode:<8} / real QEMU: {rate / rates['qemu']:.2f}   / minimal responder: "
                      f"{rate / rates['echo']:.2f}   goal >= {GOAL_FAKE_RATE:,.0f}/s: "
                      f"{'met' if rate >= GOAL_FAKE_RATE else 'NOT met'}")
            results.update({f"rate {k}": v for k, v in rates.items()})
        if only in (None, "replay"):
            times = bench_replay(commands, rounds, qemu, tmp)
            print(f"qmprr bench replay (b): replay of a {commands:,}-command recording against a real QEMU "
                  f"(asap), median of {rounds} rounds")
            for key, label in (("raw", "raw client"), ("floor", "floor"), ("floor writer", "floor + writer"),
                               ("channel", "channel only"), ("engine", "replay engine")):
                print(f"  {label:<14} {times[key]:8.3f} s   {times[key] / commands * 1e6:7.1f} us/command")
            print(f"  floor / raw: {times['floor'] / times['raw']:.2f} (the least write-ahead replayer on asyncio);"
                  f" with qmprr's RecordWriter: {times['floor writer'] / times['raw']:.2f}")
            ratio = times["engine"] / times["raw"]
            print(f"  P5 ratio engine/raw: {ratio:.2f}  rounds {times['ratio min']:.2f}–{times['ratio max']:.2f}   "
                  f"channel/raw: {times['channel'] / times['raw']:.2f}   "
                  f"(goal <= {GOAL_REPLAY_RATIO}: {'met' if ratio <= GOAL_REPLAY_RATIO else 'NOT met'})")
            results.update({f"time {k}": v for k, v in times.items()})
            results["ratio engine/raw"] = ratio
    return results


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m qmprr.bench.replay", description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=20_000)
    parser.add_argument("--commands", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("fake", "replay"))
    ns = parser.parse_args()
    run(exchanges=ns.exchanges, commands=ns.commands, rounds=ns.rounds, only=ns.only)
