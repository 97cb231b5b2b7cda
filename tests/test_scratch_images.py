"""Scratch images: recordings describe their images, replays bring blank ones.

Real QEMU 7.2 and qemu-img: a session with two block jobs (``block-stream``
of an argv image with a backing chain, ``blockdev-backup`` to an image a
``blockdev-add`` opened) is recorded with ``qmprr launch``, its images are
deleted, and it replays without divergence from another folder on blank
images of the same format, size, cluster size and chain.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

import support
from hypothesis import given, settings
from hypothesis import strategies as st

from qmprr import images
from qmprr.cli import main
from qmprr.recording import RecordingReader
from replay_support import ALL_RECORDINGS, RECORDINGS, ROOT
from support import QEMU_NONE, qmprr_launch


def info(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["qemu-img", "info", "--backing-chain", "--output=json", "-U", str(path)],
                         capture_output=True, check=True).stdout  # fmt: skip
    chain: list[dict[str, Any]] = json.loads(out)
    return chain


# -- finding and describing ------------------------------------------------------------------


def test_images_named_in_argv_and_commands() -> None:
    argv = ["qemu", "-drive", "file=a.qcow2,,x,if=none", "-blockdev", "driver=file,filename=/i/b.img,node-name=f",
            "-blockdev", '{"driver":"qcow2","file":{"driver":"file","filename":"c.qcow2"}}',
            "-drive", "file=nbd:localhost:1", "-blockdev", "driver=host_device,filename=/dev/sda", "-hda", "h.img"]  # fmt: skip
    assert images.named_in_argv(argv) == ["a.qcow2,x", "/i/b.img", "c.qcow2", "h.img"]
    add = {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "n",
                                                    "file": {"driver": "file", "filename": "d.qcow2"}}}  # fmt: skip
    assert images.named_in_command(add) == ["d.qcow2"]
    hmp = {"execute": "human-monitor-command", "arguments": {"command-line": "drive_add 0 file=e.raw,if=none,id=e"}}
    assert images.named_in_command(hmp) == ["e.raw"]
    assert images.named_in_command({"execute": "query-status"}) == []


def test_describe_and_create_keep_format_size_cluster_and_chain(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "base.qcow2", "32M"],
                   cwd=src, check=True)  # fmt: skip
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"],
                   cwd=src, check=True)  # fmt: skip
    desc = images.describe("top.qcow2", str(src))
    assert desc == {"path": "top.qcow2", "format": "qcow2", "virtual_size": 32 * 2**20, "cluster_size": 65536,
                    "backing": [{"path": "base.qcow2", "format": "qcow2", "virtual_size": 32 * 2**20,
                                 "cluster_size": 4096}]}  # fmt: skip
    assert str(tmp_path) not in json.dumps(desc)  # names as given, not where qmprr found them
    out = tmp_path / "out"
    made = images.create(desc, str(out / "top.qcow2"), root=str(out))
    assert made == [str(out / "base.qcow2"), str(out / "top.qcow2")]
    chain = info(out / "top.qcow2")
    assert [(c["format"], c["virtual-size"], c["cluster-size"]) for c in chain] == [
        ("qcow2", 32 * 2**20, 65536), ("qcow2", 32 * 2**20, 4096)]  # fmt: skip
    assert chain[0]["backing-filename"] == "base.qcow2"


def test_a_hostile_description_makes_nothing_outside_the_work_folder(tmp_path: Path) -> None:
    bad = {"path": "x.qcow2", "format": "qcow2", "virtual_size": 2**20,
           "backing": [{"path": "../../escape.qcow2", "format": "raw", "virtual_size": 2**20}]}  # fmt: skip
    assert images.valid(bad)
    root = tmp_path / "root"
    images.create(bad, str(root / "x.qcow2"), root=str(root))
    assert not (tmp_path / "escape.qcow2").exists() and (root / "backing" / "1-escape.qcow2").exists()
    assert info(root / "x.qcow2")[1]["format"] == "raw"  # the overlay names the file made for it
    raw_with_backing = {**bad, "format": "raw"}
    assert not images.valid(raw_with_backing)
    for hostile in ({"path": "a", "format": "vvfat", "virtual_size": 1}, {"path": "a", "format": "raw"},
                    {"path": "nbd:x:1", "format": "raw", "virtual_size": 1},
                    {"path": "a", "format": "qcow2", "virtual_size": 1, "cluster_size": 3}, [1], "x"):  # fmt: skip
        assert not images.valid(hostile)
    with pytest.raises(images.CreateError, match="not a file in the work folder"):
        images.create({"path": "a", "format": "raw", "virtual_size": 1}, str(tmp_path / "a"), root=str(root))


# -- the recordings in recordings/ -------------------------------------------------------------


@pytest.mark.qemu
def test_block_jsonl_replays_from_any_folder_on_scratch_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with RecordingReader(RECORDINGS / "block.jsonl") as reader:
        notes = [r.data for r in reader if r.kind == "note" and r.data and "images" in r.data]
    assert [d["images"][0]["path"] for d in notes] == ["base.qcow2", "top.qcow2"]
    monkeypatch.chdir(tmp_path)  # no base.qcow2 here, nor in the fresh work folder
    report = tmp_path / "r.json"
    status = main(["replay", str(RECORDINGS / "block.jsonl"), "--report", str(report)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "scratch images (blank, made for this replay): base.qcow2 (qcow2, 16 MiB), top.qcow2 (qcow2, 16 MiB)" in out
    assert "reproduced: no divergence" in out
    assert json.loads(report.read_text())["scratch_images"] == ["base.qcow2 (qcow2, 16 MiB)", "top.qcow2 (qcow2, 16 MiB)"]


@pytest.mark.qemu
@pytest.mark.parametrize("name", ALL_RECORDINGS)
def test_every_recording_replays_from_any_folder(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """No images prepared, no --workdir: a fresh temporary one, and the cwd an unrelated folder."""
    monkeypatch.chdir(tmp_path)
    status = main(["replay", str(RECORDINGS / name)])
    out = capsys.readouterr().out
    assert status == 0 and "reproduced: no divergence" in out, out


@pytest.mark.qemu
def test_an_error_text_is_never_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """An image nobody describes: the replay diverges, and QEMU's whole sentence is in the summary."""
    lines = [json.loads(x) for x in (RECORDINGS / "block.jsonl").read_text().splitlines()]
    stripped = tmp_path / "in.jsonl"
    stripped.write_text("".join(json.dumps(x) + "\n" for x in lines if not (x["kind"] == "note" and "images" in (x.get("data") or {}))))
    out_file = tmp_path / "no-images.jsonl"
    assert main(["rechain", str(stripped), str(out_file)]) == 0
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "r.json"
    capsys.readouterr()
    assert main(["replay", str(out_file), "--report", str(report)]) == 1
    out = capsys.readouterr().out
    assert "warning: image base.qcow2 is missing and the recording does not describe it" in out
    assert "got GenericError: \"Could not open 'base.qcow2': No such file or directory\"" in out
    texts = [d["text"] for s in json.loads(report.read_text())["steps"] for d in s["differences"]]
    assert any(t.endswith("No such file or directory\"") for t in texts)


# -- a recording with block jobs, made here --------------------------------------------------


def _make_images(folder: Path) -> None:
    folder.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "base.qcow2", "32M"],
                   cwd=folder, check=True)  # fmt: skip
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"],
                   cwd=folder, check=True)  # fmt: skip
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "extra.qcow2", "32M"], cwd=folder, check=True)


async def _job_gone(qmp: Any) -> None:
    """Wait for the job's last event (status null), so every event of the job is in its command's window."""
    await qmp.event("BLOCK_JOB_COMPLETED")
    while (await qmp.event("JOB_STATUS_CHANGE"))["data"]["status"] != "null":
        pass


async def _jobs(socket_path: str, disks: Path) -> None:
    commit_job = support.load_example("commit_job")
    reader, writer = await asyncio.open_unix_connection(socket_path)
    qmp = commit_job.Client(reader, writer, True, 20.0)
    try:
        await qmp._message()
        await qmp.execute("qmp_capabilities")
        await qmp.execute("block-stream", {"job-id": "s0", "device": "top"})
        await _job_gone(qmp)
        await qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": "extra",
                                           "file": {"driver": "file", "filename": str(disks / "extra.qcow2")}})  # fmt: skip
        await qmp.execute("blockdev-backup", {"job-id": "b0", "device": "top", "target": "extra", "sync": "full"})
        await _job_gone(qmp)
        await qmp.execute("query-version")
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.qemu
def test_a_block_job_recording_replays_on_scratch_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    disks = tmp_path / "disks"
    _make_images(disks)
    argv = [*QEMU_NONE, "-blockdev",
            f"driver=qcow2,node-name=top,file.driver=file,file.filename={disks}/top.qcow2"]  # fmt: skip
    with qmprr_launch(tmp_path, argv) as run:
        asyncio.run(_jobs(run.socket, disks))
        assert run.stop() == 0
    with RecordingReader(run.record) as reader:
        records = list(reader)
    header = records[0]
    assert header.images == [{"path": f"{disks}/top.qcow2", "format": "qcow2", "virtual_size": 32 * 2**20,
                               "cluster_size": 65536, "backing": [{"path": "base.qcow2", "format": "qcow2",
                                                                   "virtual_size": 32 * 2**20, "cluster_size": 4096}]}]  # fmt: skip
    noted = [d for r in records if r.kind == "note" and r.data for d in r.data.get("images", [])]
    assert [d["path"] for d in noted] == [f"{disks}/extra.qcow2"]
    assert main(["verify", str(run.record)]) == 0
    for image in disks.iterdir():
        image.unlink()  # the reporter's disks are not here
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    work = tmp_path / "work"
    work.mkdir()
    capsys.readouterr()
    status = main(["replay", str(run.record), "--workdir", str(work)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "reproduced: no divergence" in out
    assert f"{disks}/top.qcow2 (qcow2, 32 MiB, on base.qcow2)" in out and f"{disks}/extra.qcow2 (qcow2, 32 MiB)" in out
    scratch = work / "scratch" / str(disks).lstrip("/")
    # block-stream ran in the replay too: top no longer has a backing file, but base was made as recorded
    layers = [info(scratch / name)[0] for name in ("top.qcow2", "base.qcow2")]
    assert [(c["format"], c["virtual-size"], c["cluster-size"]) for c in layers] == [
        ("qcow2", 32 * 2**20, 65536), ("qcow2", 32 * 2**20, 4096)]  # fmt: skip
    assert not disks.exists() or not any(disks.iterdir())  # nothing made where the recording named
    # --scratch-images: blank images even where the named ones exist (here: the work folder's own)
    capsys.readouterr()
    again = tmp_path / "work2"
    again.mkdir()
    status = main(["replay", str(run.record), "--workdir", str(again), "--scratch-images"])
    assert status == 0, capsys.readouterr().out
    assert os.path.exists(again / "scratch" / str(disks).lstrip("/") / "extra.qcow2")


# -- record time: what is described, what never is ---------------------------------------------


class _Backend:
    """Stands for the channel: answers every command, keeps the notes."""

    def __init__(self, redactor: Any) -> None:
        self.notes: list[tuple[str, Any]] = []
        self.commands: list[str] = []
        self.log = type("Log", (), {"redactor": redactor})()

    async def execute(self, msg: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.commands.append(msg["execute"])
        return {"return": {}}

    def note(self, text: str, data: Any = None) -> None:
        self.notes.append((text, data))


def _add(path: Path) -> dict[str, Any]:
    return {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "n",
                                                    "file": {"driver": "file", "filename": str(path)}}}  # fmt: skip


async def test_the_watcher_notes_images_after_the_command_never_hidden_ones(tmp_path: Path) -> None:
    from qmprr.image_watch import ImageWatcher
    from qmprr.recording import Redactor
    from qmprr.recording.redact import ArgumentRule

    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "d.qcow2"), "8M"], check=True)
    backend = _Backend(Redactor())
    watcher = ImageWatcher(backend)
    assert await watcher.execute(_add(tmp_path / "d.qcow2")) == {"return": {}}
    assert backend.notes[0][1] == {"images": [{"path": str(tmp_path / "d.qcow2"), "format": "qcow2",
                                               "virtual_size": 8 * 2**20, "cluster_size": 65536}]}  # fmt: skip
    await watcher.execute(_add(tmp_path / "d.qcow2"))  # once per name
    await watcher.execute(_add(tmp_path / "missing.qcow2"))  # nothing to describe
    assert len(backend.notes) == 1 and backend.commands == ["blockdev-add"] * 3
    hidden = _Backend(Redactor().with_rules([ArgumentRule("blockdev-add", ("file", "filename"))]))
    await ImageWatcher(hidden).execute(_add(tmp_path / "d.qcow2"))
    assert hidden.notes == [] and hidden.commands == ["blockdev-add"]


@pytest.mark.qemu
def test_a_recorded_query_named_block_nodes_describes_like_qemu_img(tmp_path: Path) -> None:
    """What replay reads from an import (QEMU's own answer) is what qemu-img says at record time."""
    from qmprr.client import QmpClient

    disks = tmp_path / "disks"
    _make_images(disks)
    argv = [*QEMU_NONE, "-blockdev",
            f"driver=qcow2,node-name=top,file.driver=file,file.filename={disks}/top.qcow2"]  # fmt: skip
    with qmprr_launch(tmp_path, argv) as run:
        with QmpClient(run.socket) as client:
            nodes = client.execute("query-named-block-nodes")["return"]
        run.stop()
    described = images.from_block_nodes(nodes)
    top = images.describe(f"{disks}/top.qcow2")
    assert top is not None and top in described
    assert top["backing"][0]["cluster_size"] == 4096


_segment = st.sampled_from(["..", ".", "", "a", "b.qcow2", "x"])
_name = st.lists(_segment, min_size=1, max_size=4).map("/".join).filter(images._is_file_name)


@settings(max_examples=25, deadline=None)
@given(top=_name, backing=st.lists(_name, max_size=2))
def test_create_never_writes_outside_its_root(tmp_path_factory: pytest.TempPathFactory, top: str,
                                              backing: list[str]) -> None:  # fmt: skip
    base = tmp_path_factory.mktemp("h")
    root = base / "root"
    root.mkdir()
    desc = {"path": top, "format": "qcow2", "virtual_size": 2**20,
            "backing": [{"path": b, "format": "qcow2", "virtual_size": 2**20} for b in backing]}  # fmt: skip
    assert images.valid(desc)
    where = root / "top.qcow2"
    try:
        for made in images.create(desc, str(where), root=str(root)):
            assert Path(made).resolve().is_relative_to(root.resolve())
    except images.CreateError:
        pass  # refusing is fine; writing elsewhere is not
    assert sorted(p.name for p in base.iterdir()) == ["root"]


def test_prepare_keeps_escaping_names_inside_the_work_folder(tmp_path: Path) -> None:
    from qmprr.replay.safety import PathMap
    from qmprr.replay.scratch import prepare
    from qmprr.replay.script import DEFAULT_GREETING, Exchange, Script

    names = ["../../evil.qcow2", "/abs/disk.qcow2", "plain.qcow2", "gone.qcow2"]
    script = Script(greeting=DEFAULT_GREETING, exchanges=[
        Exchange(command="blockdev-add", arguments={"driver": "qcow2", "node-name": f"n{i}",
                                                    "file": {"driver": "file", "filename": n}})
        for i, n in enumerate(names)])  # fmt: skip
    script.images = [{"path": n, "format": "qcow2", "virtual_size": 2**20} for n in names[:3]]
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    done = prepare(script, str(work), PathMap())
    assert dict(done.pairs) == {"../../evil.qcow2": str(work / "scratch" / "evil.qcow2"),
                                "/abs/disk.qcow2": str(work / "scratch" / "abs" / "disk.qcow2")}  # fmt: skip
    assert (work / "plain.qcow2").exists() and not (tmp_path / "a" / "evil.qcow2").exists()
    assert done.created == ["../../evil.qcow2 (qcow2, 1 MiB)", "/abs/disk.qcow2 (qcow2, 1 MiB)", "plain.qcow2 (qcow2, 1 MiB)"]
    assert done.problems == ["image gone.qcow2 is missing and the recording does not describe it"
                             " (record it again with this qmprr, or give it with --map-path)"]  # fmt: skip
    again = prepare(script, str(work), PathMap())  # the same work folder: the scratch images are there already
    assert again.created == [] and again.pairs == done.pairs


def test_an_import_describes_images_where_the_log_says(tmp_path: Path) -> None:
    """libvirt's own query-block answer, in a libvirtd debug log, is a description replay can use."""
    from qmprr.replay.scratch import descriptions
    from qmprr.replay.script import load_script

    out = tmp_path / "out"
    assert main(["import", "libvirt", str(ROOT / "tests" / "data" / "libvirt" / "libvirtd-debug.log"),
                 "-o", str(out), "--all"]) == 0  # fmt: skip
    found = {}
    for path in sorted(out.iterdir()):
        found.update(descriptions(load_script(path)))
    assert found["/tmp/qmprr-lvcap/images/hot.qcow2"] == {
        "path": "/tmp/qmprr-lvcap/images/hot.qcow2", "format": "qcow2", "virtual_size": 16 * 2**20,
        "cluster_size": 65536}  # fmt: skip


async def test_without_qemus_folder_relative_names_are_not_described(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from qmprr.image_watch import ImageWatcher
    from qmprr.recording import Redactor

    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "d.qcow2"), "8M"], check=True)
    monkeypatch.chdir(tmp_path)  # qmprr's own folder holds a d.qcow2: it is not QEMU's
    backend = _Backend(Redactor())
    relative = {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "n",
                                                         "file": {"driver": "file", "filename": "d.qcow2"}}}
    await ImageWatcher(backend).execute(relative)
    assert backend.notes == []
    await ImageWatcher(backend, str(tmp_path)).execute(relative)
    assert backend.notes[0][1]["images"][0]["path"] == "d.qcow2"


@pytest.mark.qemu
def test_the_proxy_reads_relative_image_names_in_qemus_folder_not_its_own(tmp_path: Path) -> None:
    """QEMU opens ``disk.qcow2`` in its folder; a decoy of that name in the proxy's folder is never read."""
    from qmprr.client import QmpClient
    from qmprr.recording import Note, read_records

    support.require_qemu()
    theirs, ours = tmp_path / "qemu-folder", tmp_path / "proxy-folder"
    theirs.mkdir()
    ours.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(theirs / "disk.qcow2"), "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(ours / "disk.qcow2"), "48M"], check=True)
    upstream, record, sock = str(tmp_path / "qemu.sock"), tmp_path / "rec.jsonl", str(tmp_path / "px.sock")
    qemu = subprocess.Popen([*support.QEMU_NONE, "-qmp", f"unix:{upstream},server=on,wait=off"],
                            cwd=theirs, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = None
    try:
        support.wait_for_socket(upstream, proc=qemu)
        proxy = subprocess.Popen([*support.QMPRR, "proxy", "--upstream", upstream, "--record", str(record),
                                  "--socket", sock], cwd=ours, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        support.wait_for_socket(sock, proc=proxy)
        with QmpClient(sock) as client:
            reply = client.execute("blockdev-add", {"driver": "qcow2", "node-name": "n",
                                                    "file": {"driver": "file", "filename": "disk.qcow2"}})
            assert "return" in reply, reply
            client.execute("query-status")  # the note is written before this command's record
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(20) == 0
    finally:
        for proc in (proxy, qemu):
            if proc is not None:
                support.reap(proc)
    notes = [r.data for r in read_records(record) if isinstance(r, Note) and r.data and "images" in r.data]
    assert [image["path"] for note in notes for image in note["images"]] == ["disk.qcow2"]
    assert notes[0]["images"][0]["virtual_size"] == 16 * 2**20  # QEMU's image, not the decoy (48M)


@pytest.mark.qemu
def test_qemus_folder_is_a_running_qemus_only(tmp_path: Path) -> None:
    from qmprr.image_watch import qemu_folder

    assert qemu_folder(os.getpid()) is None  # a socket's peer that is not QEMU (a launcher, a relay)
    assert qemu_folder(None) is None
    with support.qemu_with_qmp(tmp_path) as (qemu, _sock):
        folder = qemu_folder(qemu.pid)
        assert folder is not None and folder.path() == f"/proc/{qemu.pid}/cwd"
        assert os.path.samefile(folder.path(), os.getcwd())
        qemu.kill()
        qemu.wait()
    assert folder.path() is None  # exited: its pid may name another process now
    folder.close()
