"""Launch the domain in ``lab.xml`` through qmprr and look at it over QMP.

What it shows: a libvirt domain XML with a disk, a ``<qemu:commandline>``
passthrough and structured options becomes a QEMU command line
(``qmprr.domain.build_launch``); ``qmprr launch`` starts that QEMU with a
private monitor and records the session; a QMP client sees the disks the XML
described; the recording's header keeps how QEMU was launched.

Run it from the repository root (needs qemu-system-x86_64 and qemu-img)::

    .venv/bin/python examples/domain/launch_lab.py

The disk images are created in a temporary folder (QEMU runs there, so the
XML's relative paths point into it), removed at the end.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qmprr.client import QmpClient
from qmprr.domain import build_launch

HERE = Path(__file__).resolve().parent
DOMAIN = HERE / "lab.xml"
QMPRR = [sys.executable, "-m", "qmprr.cli"]
IMAGES = [("qcow2", "lab-root.qcow2", "64M"), ("raw", "lab-seed.img", "1M"), ("raw", "scratch, the 2nd.img", "1M")]


def wait_for(path: str, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"qmprr launch did not come up (status {proc.poll()})")
        time.sleep(0.01)


def launch_command(record: str, sock: str) -> tuple[list[str], dict[str, str]]:
    """``qmprr launch --domain`` when this qmprr has it; else the argv built here, after ``--``."""
    base = [*QMPRR, "launch", "--record", record, "--socket", sock]
    helptext = subprocess.run([*QMPRR, "launch", "--help"], capture_output=True, text=True).stdout
    if "--domain" in helptext:
        return [*base, "--domain", str(DOMAIN)], dict(os.environ)
    spec = build_launch(DOMAIN)
    return [*base, "--", *spec.argv], {**os.environ, **spec.env}


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    spec = build_launch(DOMAIN)
    print("QEMU command line for lab.xml:")
    print("  " + shlex.join([f"{k}={v}" for k, v in spec.env.items()] + spec.argv))
    with tempfile.TemporaryDirectory(prefix="qmprr-domain-") as tmp:
        for fmt, name, size in IMAGES:
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, os.path.join(tmp, name), size], check=True)
        record, sock = os.path.join(tmp, "lab.jsonl"), os.path.join(tmp, "qmp.sock")
        command, env = launch_command(record, sock)
        proc = subprocess.Popen(command, cwd=tmp, env=env, stdin=subprocess.DEVNULL)
        try:
            wait_for(sock, proc)
            with QmpClient(sock) as app:
                print("\nstatus:", app.execute("query-status")["return"]["status"])
                print("name:", app.execute("query-name")["return"].get("name"))
                for block in app.execute("query-block")["return"]:
                    inserted = block.get("inserted", {})
                    print(f"  disk {block.get('qdev')}: node {inserted.get('node-name')}"
                          f" file {inserted.get('file')!r} read-only {inserted.get('ro')}")  # fmt: skip
        finally:
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(30)
        with open(record, encoding="utf-8") as f:
            header = json.loads(f.readline())
        print(f"\nqmprr launch exited with status {status}")
        print("recording header keeps the argv:", header.get("qemu_argv") is not None,
              "| the domain XML:", header.get("domain_xml") is not None)  # fmt: skip
        return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
