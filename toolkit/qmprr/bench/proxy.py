"""``qmprr bench proxy``: what the recording proxy costs a client, per command.

One QEMU (``-machine none``) with two QMP monitors: one for the clients that
go straight to QEMU, one for a ``qmprr proxy`` process recording it (default
sync policy); a QMP socket serves one client at a time. ``query-status`` round trips are timed four ways, in
interleaved rounds so machine noise hits all of them alike: a raw socket
client and qemu.qmp's ``QMPClient``, each straight to QEMU and through the
proxy. Prints per-command medians and the ratios proxy/straight (P2 raw, P1
QMPClient) with their spread (min–max of the per-round ratios), the proxy's
CPU time per command (user+sys of all its threads, from ``/proc``, over the
raw rounds), and the throughput of 50 concurrent raw clients through the
proxy against one raw client alone straight to QEMU. Beside the proxy, in the
same rounds, the floors of :mod:`qmprr.bench.floors` (a native and a Python
byte relay, the least write-ahead recorder): what any proxy costs here.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from .. import wire
from . import floors

QUERY = b'{"execute":"query-status","id":1}'

def _wait_for(path: str, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"qmprr bench: {path} did not appear (process status {proc.poll()})")
        time.sleep(0.01)


class RawClient:
    """A blocking client: send one command, read to the end of one reply."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(30)  # a proxy or floor that died must not hang the benchmark
        self.decoder = wire.StreamDecoder()
        self._recv_one()  # greeting
        self.sock.sendall(b'{"execute":"qmp_capabilities"}')
        self._recv_one()

    def _recv_one(self) -> object:
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise SystemExit("qmprr bench: the connection closed (did the proxy or a floor die?)")
            items = self.decoder.feed(data)
            if items:
                return items[0]

    def timed(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            self.sock.sendall(QUERY)
            self._recv_one()
            out.append(time.perf_counter() - start)
        return out

    def close(self) -> None:
        self.sock.close()


async def _qmpclient_times(direct: str, proxied: str, n: int, rounds: int) -> tuple[list[float], list[float]]:
    """Round-trip times of two QMPClients (straight, through the proxy), alternating rounds."""
    from qemu.qmp import QMPClient

    clients = [QMPClient("bench-direct"), QMPClient("bench-proxied")]
    await clients[0].connect(direct)
    await clients[1].connect(proxied)
    times: tuple[list[float], list[float]] = ([], [])
    try:
        for client in clients:  # warm-up
            for _ in range(50):
                await client.execute("query-status")
        for _ in range(rounds):
            for client, out in zip(clients, times):
                for _ in range(n):
                    start = time.perf_counter()
                    await client.execute("query-status")
                    out.append(time.perf_counter() - start)
        return times
    finally:
        for client in clients:
            await client.disconnect()


GOALS = {"ratio_raw": 1.25, "ratio_qmp": 1.08, "cpu_us": 25.0, "throughput": 0.90}


def cpu_seconds(pid: int) -> float:
    """CPU time (user+sys) of every thread of *pid* so far, in seconds (schedstat: nanoseconds)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total / 1e9


def concurrent_rate(path: str, clients: int, each: int) -> float:
    """Commands per second of *clients* raw clients at once, each sending *each* commands one by one."""
    socks = []
    for _ in range(clients):
        client = RawClient(path)
        client.sock.setblocking(False)
        socks.append(client)
    sel = selectors.DefaultSelector()
    left = {}
    start = time.perf_counter()
    for client in socks:
        sel.register(client.sock, selectors.EVENT_READ, client)
        left[client] = each
        client.sock.send(QUERY)
    busy = clients
    while busy:
        for key, _ in sel.select():
            client = key.data
            data = client.sock.recv(65536)
            if not data:
                raise SystemExit("qmprr bench: the proxy closed a client")
            for _item in client.decoder.feed(data):
                left[client] -= 1
                if left[client]:
                    client.sock.send(QUERY)
                else:
                    busy -= 1
                    sel.unregister(client.sock)
    elapsed = time.perf_counter() - start
    for client in socks:
        client.close()
    return clients * each / elapsed


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}"


def run(commands: int = 2000, rounds: int = 10, qemu: str = "qemu-system-x86_64",
        clients: int = 50, each: int = 200) -> dict[str, float]:
    """Run the benchmark, print its figures, return the medians (seconds) and ratios."""
    if shutil.which(qemu) is None:
        raise SystemExit(f"qmprr bench: {qemu} not found (apt-get install qemu-system-x86)")
    per_round = max(1, commands // rounds)
    with tempfile.TemporaryDirectory() as tmp:
        qsock, upstream, psock, record = (
            os.path.join(tmp, n) for n in ("qemu.sock", "upstream.sock", "proxy.sock", "bench.jsonl"))
        floor_argv = floors.argvs(tmp)
        qemu_proc = subprocess.Popen(
            [qemu, "-machine", "none", "-nodefaults", "-display", "none",
             *(a for sock in (qsock, upstream, *(f.upstream for f in floor_argv))
               for a in ("-qmp", f"unix:{sock},server=on,wait=off"))],
            stdin=subprocess.DEVNULL,
        )
        proxy = None
        running: list[tuple[floors.Floor, subprocess.Popen[bytes]]] = []
        try:
            for sock in (qsock, upstream, *(f.upstream for f in floor_argv)):
                _wait_for(sock, qemu_proc)
            for floor in floor_argv:
                running.append((floor, subprocess.Popen(floor.argv, stdin=subprocess.DEVNULL)))
                _wait_for(floor.socket, running[-1][1])
            proxy = subprocess.Popen(
                [sys.executable, "-m", "qmprr.cli", "proxy", "--upstream", upstream,
                 "--record", record, "--socket", psock],
                stdin=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait_for(psock, proxy)
            raw_direct, raw_proxy = RawClient(qsock), RawClient(psock)
            floor_clients = [RawClient(floor.socket) for floor, _proc in running]
            times: dict[str, list[float]] = {k: [] for k in ("raw", "raw+proxy", "qmp", "qmp+proxy")}
            for client in (raw_direct, raw_proxy, *floor_clients):
                client.timed(50)  # warm-up
            ratios: dict[str, list[float]] = {"ratio_raw": [], "ratio_qmp": [], "throughput": []}
            cpu: list[float] = []
            floor_ratios: list[list[float]] = [[] for _ in running]
            floor_cpu: list[list[float]] = [[] for _ in running]
            for _ in range(rounds):
                direct = raw_direct.timed(per_round)
                before = cpu_seconds(proxy.pid)
                proxied = raw_proxy.timed(per_round)
                cpu.append((cpu_seconds(proxy.pid) - before) / per_round * 1e6)
                times["raw"] += direct
                times["raw+proxy"] += proxied
                ratios["ratio_raw"].append(statistics.median(proxied) / statistics.median(direct))
                for i, ((_floor, proc), client) in enumerate(zip(running, floor_clients)):
                    before = cpu_seconds(proc.pid)
                    relayed = client.timed(per_round)
                    floor_cpu[i].append((cpu_seconds(proc.pid) - before) / per_round * 1e6)
                    floor_ratios[i].append(statistics.median(relayed) / statistics.median(direct))
            for client in floor_clients:
                client.close()
            raw_direct.close()
            raw_proxy.close()
            times["qmp"], times["qmp+proxy"] = asyncio.run(_qmpclient_times(qsock, psock, per_round, rounds))
            for r in range(rounds):
                part = slice(r * per_round, (r + 1) * per_round)
                ratios["ratio_qmp"].append(
                    statistics.median(times["qmp+proxy"][part]) / statistics.median(times["qmp"][part]))
            alone: list[float] = []
            together: list[float] = []
            cpu_many: list[float] = []
            for _ in range(max(1, rounds // 2)):
                single = RawClient(qsock)
                t0 = time.perf_counter()
                single.timed(clients * each // 4)
                alone.append(clients * each // 4 / (time.perf_counter() - t0))
                single.close()
                before = cpu_seconds(proxy.pid)
                together.append(concurrent_rate(psock, clients, each))
                cpu_many.append((cpu_seconds(proxy.pid) - before) / (clients * each) * 1e6)
                ratios["throughput"].append(together[-1] / alone[-1])
        finally:
            if proxy is not None:
                proxy.send_signal(signal.SIGTERM)
                proxy.wait(10)
            for _floor, proc in running:
                proc.kill()
                proc.wait()
            qemu_proc.kill()
            qemu_proc.wait()
        records = sum(1 for _ in open(record, "rb"))
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"qmprr bench proxy: {per_round * rounds:,} query-status round trips per way, "
          f"{rounds} interleaved rounds; proxy sync policy: batch; {records:,} records logged")
    for key in ("raw", "raw+proxy", "qmp", "qmp+proxy"):
        print(f"  {key:<10} median {medians[key] * 1e6:8.1f} us")
    medians["ratio_raw"] = medians["raw+proxy"] / medians["raw"]
    medians["ratio_qmp"] = medians["qmp+proxy"] / medians["qmp"]
    medians["cpu_us"] = statistics.median(cpu)
    medians["throughput"] = statistics.median(ratios["throughput"])

    def verdict(key: str, value: float) -> str:
        ok = value >= GOALS[key] if key == "throughput" else value <= GOALS[key]
        return f"goal {'>=' if key == 'throughput' else '<='} {GOALS[key]:g}: {'met' if ok else 'NOT met'}"

    print(f"  P2 ratio raw (proxy/straight):        {medians['ratio_raw']:.2f}  rounds {_spread(ratios['ratio_raw'])}"
          f"   ({verdict('ratio_raw', medians['ratio_raw'])})")
    print(f"  P1 ratio QMPClient (proxy/straight):  {medians['ratio_qmp']:.2f}  rounds {_spread(ratios['ratio_qmp'])}"
          f"   ({verdict('ratio_qmp', medians['ratio_qmp'])})")
    print(f"  proxy CPU per command (user+sys):     {medians['cpu_us']:.1f} us  rounds {min(cpu):.1f}–{max(cpu):.1f}"
          f"   ({verdict('cpu_us', medians['cpu_us'])})")
    for (floor, _proc), f_ratios, f_cpu in zip(running, floor_ratios, floor_cpu):
        medians[f"floor_{floor.name}"] = statistics.median(f_ratios)
        medians[f"floor_{floor.name}_cpu_us"] = statistics.median(f_cpu)
        print(f"  floor, {floor.title}: ratio {statistics.median(f_ratios):.2f}"
              f"  rounds {_spread(f_ratios)}, CPU {statistics.median(f_cpu):.1f} us/command")
    if not any(floor.name == "socat" for floor, _proc in running):
        print("  (no native floor: socat is not installed; apt-get install socat)")
    print(f"  {clients} clients x {each} commands through the proxy: {statistics.median(together):,.0f}/s;"
          f" one raw client alone straight: {statistics.median(alone):,.0f}/s;"
          f" proxy CPU {statistics.median(cpu_many):.1f} us/command")
    print(f"  throughput ratio:                     {medians['throughput']:.2f}  rounds {_spread(ratios['throughput'])}"
          f"   ({verdict('throughput', medians['throughput'])})")
    return medians
