"""libvirt's QEMU log, and an imported VM session replayed against a real QEMU 7.2.

The replay shows what an import can and cannot give back, each divergence
for a known reason:

* ``query-chardev``: libvirt's monitor (``charmonitor``, a socket under
  ``/var/lib/libvirt``) is not in the replayed argv; QEMU lists qmprr's own;
* ``getfd``: a log cannot carry a file descriptor, so a placeholder
  (``/dev/null``) stands in; ``dump-guest-memory`` to ``fd:dump`` then
  writes there, and matches (with its ``DUMP_COMPLETED``).

The disk image path needs ``--map-path`` (its file is made here with
qemu-img); libvirt's master-key file is gone with its domain, so the argv
is given with ``--argv-file`` pointing at a key made here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from support import QEMU, require_qemu
from import_support import LOG, QEMU_LOG, run_import

from qmprr.importers.qemu_log import read_qemu_log
from qmprr.recording import RecordingReader
from qmprr.replay.engine import ReplayOptions
from qmprr.replay.run import RunOptions, run_replay
from qmprr.replay.safety import PathMap

#: Where regenerate.py kept the hot-plugged image (its default --root).
CAPTURE_IMAGES = "/tmp/qmprr-lvcap/images"


def test_runs_argv_env_taints_and_ends() -> None:
    log = read_qemu_log(str(QEMU_LOG))
    assert len(log.runs) == 2 and not log.problems
    first, second = log.runs
    assert first.argv[0] == "/usr/bin/qemu-system-x86_64" and first.argv[-2:] == ["-msg", "timestamp=on"]
    assert first.env["LC_ALL"] == "C" and list(first.env)[0] == "LC_ALL"
    assert first.guest_name == "qmprr-demo" and first.banner.startswith("libvirt version: 9.0.0")
    # Shell quoting undone: the JSON -object arguments are whole.
    secret = first.argv[first.argv.index("-object") + 1]
    assert secret.startswith('{"qom-type":"secret","id":"masterKey0"')
    assert [t.reason for t in first.taints] == ["high-privileges", "custom-monitor"]
    assert [t.reason for t in second.taints] == ["high-privileges"]
    assert first.end_reason == second.end_reason == "destroyed"
    assert first.started < first.ended < second.started < second.ended  # type: ignore[operator]
    argv, removed = first.replay_argv()
    assert [removed[0], removed[2]] == ["-chardev", "-mon"] and "id=charmonitor" in removed[1]
    assert removed[4:] == ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    assert len(argv) == len(first.argv) - 6  # replay sets QEMU's sandbox itself
    assert log.run_for(first.started + 1) is first and log.run_for(second.ended + 10) is None  # type: ignore[operator]


def test_older_one_line_command_and_qmp_option(tmp_path: Path) -> None:
    path = tmp_path / "old.log"
    path.write_text(
        "2015-03-02 10:00:00.123+0000: starting up libvirt version: 1.2.9\n"
        "LC_ALL=C PATH=/usr/bin QEMU_AUDIO_DRV=none /usr/bin/qemu-system-x86_64 -name old,debug-threads=on -m 128 "
        "-chardev socket,id=charmonitor,path=/var/lib/libvirt/qemu/old.monitor,server,nowait "
        "-mon chardev=charmonitor,id=monitor,mode=control -drive 'file=/srv/a b.img,if=none,id=d0'\n"
        "char device redirected to /dev/pts/3 (label charserial0)\n"
        "2015-03-02 10:00:05.000+0000: shutting down\n"
    )
    run = read_qemu_log(str(path)).runs[0]
    assert run.env == {"LC_ALL": "C", "PATH": "/usr/bin", "QEMU_AUDIO_DRV": "none"}
    assert run.guest_name == "old" and "file=/srv/a b.img,if=none,id=d0" in run.argv
    argv, removed = run.replay_argv()
    assert "-mon" not in argv and "-chardev" not in argv and len(removed) == 4


@pytest.mark.qemu
async def test_an_imported_vm_session_replays_against_qemu(tmp_path: Path) -> None:
    require_qemu()
    recording = tmp_path / "vm.jsonl"
    status, text = run_import("libvirt", LOG, "--monitor", "4", "--qemu-log", QEMU_LOG, "-o", recording)
    assert status == 0, text
    with RecordingReader(recording) as reader:
        argv = list(reader.header.qemu_argv or [])
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "hot.qcow2"), "16M"], check=True)
    key = tmp_path / "master-key.aes"
    key.write_bytes(bytes(range(32)))
    argv = [re.sub(r"/var/lib/libvirt/qemu/[^\"]*/master-key\.aes", str(key), a) for a in argv]
    argv[0] = QEMU
    argv_file = tmp_path / "argv"
    argv_file.write_text("\n".join(argv) + "\n")
    report = await run_replay(
        str(recording),
        RunOptions(target="qemu", argv_file=str(argv_file), workdir=str(tmp_path)),
        ReplayOptions(keep_going=True, path_map=PathMap.parse([f"{CAPTURE_IMAGES}={images}"]), event_timeout=2.0),
    )
    assert report.error is None
    outcome = {s.command: (s.status, sorted({d.what + " " + d.path for d in s.differences}))
               for s in report.steps if s.status != "matched"}
    assert outcome == {}
    assert len(report.steps) == 38 and report.count("matched") == 38
    chardev = next(s for s in report.steps if s.command == "query-chardev")  # qmprr's monitor, not libvirt's
    assert chardev.differences and all(d.host and d.host.startswith("qmprr-monitor") for d in chardev.differences)
    getfd = next(s for s in report.steps if s.command == "getfd")
    assert getfd.reason and "placeholder" in getfd.reason
    # The hot-plug went to the mapped image, and matched.
    blockdev = [s for s in report.steps if s.command == "blockdev-add"]
    assert [s.status for s in blockdev] == ["matched", "matched"]
