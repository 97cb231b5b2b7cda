"""Fidelity of import, replay, stats and the report, on the real libvirt captures (issue 17).

Every test starts from a capture in ``tests/data/libvirt`` (libvirtd 9.0,
QEMU 7.2; ``regenerate.py``): the debug log, the VM's QEMU log, the
``.replies`` excerpt, and libvirt's own XML of the same domain
(``qmprr-demo-dumpxml.xml``: ``virsh dumpxml`` of it running;
``qmprr-demo-status.xml``: libvirt's status file, ``/run/libvirt/qemu/NAME.xml``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import QEMU, qemu_with_qmp
from import_support import DATA, LOG, QEMU_LOG, REPLIES, lines, run_import

from qmprr.analysis.stats import compute
from qmprr.cli import main
from qmprr.client import QmpClient
from qmprr.fake import FakeQemu
from qmprr.replay.compare import compare_replies, list_differences
from qmprr.replay.engine import ReplayOptions
from qmprr.replay.normalize import Normalizer, RulesError, load_rules
from qmprr.replay.run import RunOptions, run_replay
from qmprr.replay.script import load_script

DUMPXML = DATA / "qmprr-demo-dumpxml.xml"
STATUS = DATA / "qmprr-demo-status.xml"
NORM = Normalizer()


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    out = tmp_path_factory.mktemp("fidelity") / "all"
    status, text = run_import("libvirt", LOG, "--all", "--qemu-log", QEMU_LOG, "--domain-xml", STATUS, "-o", out)
    assert status == 0, text
    return {int(p.name[:3]): p for p in sorted(out.iterdir())}


def _reply(path: Path, command: str) -> dict[str, Any]:
    """The first recorded reply to *command* in a recording (without its id)."""
    recs = lines(path)
    seq = next(r["seq"] for r in recs if r["kind"] == "command" and r["msg"]["execute"] == command)
    msg = next(r["msg"] for r in recs if r["kind"] == "reply" and r["cmd"] == seq)
    return {k: v for k, v in msg.items() if k != "id"}


def _texts(diffs: list) -> list[str]:
    return [str(d) for d in diffs]


# -- lists in diffs -----------------------------------------------------------------


def test_a_set_answer_with_one_entry_less_is_one_difference_naming_it(imported: dict[int, Path]) -> None:
    recorded = _reply(imported[2], "qom-list-types")
    entries = recorded["return"]
    gone = entries[3]
    actual = {"return": list(reversed(entries[:3] + entries[4:]))}  # another order too: a set
    assert _texts(compare_replies("qom-list-types", recorded, actual, NORM)) == [
        f"reply return: 1 entry only in the recorded: {gone!r}"
    ]
    assert _texts(compare_replies("qom-list-types", actual, recorded, NORM)) == [
        f"reply return: 1 entry only in the replay: {gone!r}"
    ]


def test_a_keyed_list_reports_changes_at_the_key(imported: dict[int, Path]) -> None:
    recorded = _reply(imported[4], "query-migrate-capabilities")
    caps = recorded["return"]
    changed = json.loads(json.dumps(caps))
    changed[1]["state"] = not changed[1]["state"]
    changed.reverse()  # another order: no difference, the answer is unordered
    name = caps[1]["capability"]
    assert _texts(compare_replies("query-migrate-capabilities", recorded, {"return": changed}, NORM)) == [
        f"reply return[capability={name}].state: recorded {caps[1]['state']!r}, got {not caps[1]['state']!r}"
    ]
    extra = {"return": caps + [{"state": True, "capability": "extra-cap"}]}
    assert _texts(compare_replies("query-migrate-capabilities", recorded, extra, NORM)) == [
        "reply return: 1 entry only in the replay: {'state': True, 'capability': 'extra-cap'}"
    ]
    # an ordered answer with the same entries swapped: one difference, not one per field
    swapped = caps[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    diffs = _texts(list_differences(caps, swapped, "return"))
    assert len(diffs) == 1 and diffs[0].startswith("reply return: same entries in another order: recorded ["), diffs


def test_an_ordered_list_with_one_extra_item_is_one_difference(imported: dict[int, Path]) -> None:
    recorded = _reply(imported[4], "qom-get")  # a plain value list is made from a real reply
    values = [recorded["return"], "x", "y", "z"]
    diffs = _texts(compare_replies("query-foo", {"return": values}, {"return": values[:2] + ["new"] + values[2:]}, NORM))
    assert diffs == ["reply return[2]: 1 entry only in the replay: 'new'"]


@pytest.mark.qemu
async def test_probe_replay_against_qemu_is_set_aware_and_host_aware(tmp_path: Path) -> None:
    """The .replies excerpt against a real QEMU: readable set differences, query-kvm a host difference."""
    rec = tmp_path / "caps.jsonl"
    assert run_import("replies", REPLIES, "-o", rec)[0] == 0
    argv = tmp_path / "argv"
    argv.write_text("\n".join([QEMU, "-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none,accel=tcg"]))
    report = await run_replay(str(rec), RunOptions(target="qemu", argv_file=str(argv)), ReplayOptions(keep_going=True))
    steps = {s.command: s for s in report.steps}
    kvm = steps["query-kvm"]  # KVM when recorded, TCG here
    assert kvm.status == "matched" and kvm.differences and all(d.host for d in kvm.differences)
    assert any("kvm-availability" in w for w in report.warnings)
    schema = steps["query-qmp-schema"]  # the capture is trimmed: most of the schema is only in the replay
    assert schema.status == "diverged" and len(schema.differences) == 1
    text = str(schema.differences[0])
    assert "entries only in the replay: {" in text and len(text) < 600, text
    strict = await run_replay(str(rec), RunOptions(target="qemu", argv_file=str(argv)),
                              ReplayOptions(keep_going=True, host_differences="diverge"))
    assert next(s for s in strict.steps if s.command == "query-kvm").status == "diverged"


def test_host_rules_cpu_expansion_and_qmprrs_monitor(imported: dict[int, Path]) -> None:
    recs = lines(imported[2])  # libvirt's full expansion of -cpu host (the capture cut its props)
    command = next(r for r in recs if r["kind"] == "command" and r["msg"]["execute"] == "query-cpu-model-expansion"
                   and r["msg"]["arguments"]["type"] == "full")
    args = command["msg"]["arguments"]
    recorded = {"return": next(r["msg"]["return"] for r in recs if r["kind"] == "reply" and r["cmd"] == command["seq"])}
    actual = json.loads(json.dumps(recorded))
    actual["return"]["model"]["props"] = {"vmx": True, "pdpe1gb": False}  # this host's CPU
    diffs = compare_replies("query-cpu-model-expansion", recorded, actual, NORM, args)
    assert args["model"]["name"] in ("host", "max")
    assert diffs and all(d.host and d.host.startswith("cpu-model-expansion") for d in diffs)
    chardev = _reply(imported[4], "query-chardev")  # libvirt's charmonitor, and qmprr's own monitor now
    ours = {"return": [{"frontend-open": True, "filename": "unix:", "label": "qmprr-monitor"}]}
    diffs = compare_replies("query-chardev", chardev, ours, NORM)
    assert diffs and all(d.host and d.host.startswith("qmprr-monitor") for d in diffs), _texts(diffs)
    other = {"return": [{"frontend-open": True, "filename": "pty:/dev/pts/3", "label": "serial0"}]}
    assert any(d.host is None for d in compare_replies("query-chardev", chardev, other, NORM))


# -- normalization ------------------------------------------------------------------


@pytest.mark.qemu
def test_blockstats_timing_is_built_in_and_guest_progress_a_rule_set(tmp_path: Path) -> None:
    """QEMU's own query-blockstats of the capture's hot-plugged disk, its counters changed as another run's."""
    image = tmp_path / "hot.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    blockdev = next(r["msg"]["arguments"] for r in lines(_vm(tmp_path))
                    if r["kind"] == "command" and r["msg"]["execute"] == "blockdev-add")
    blockdev = json.loads(json.dumps(blockdev).replace("/tmp/qmprr-lvcap/images/hot.qcow2", str(image)))
    with qemu_with_qmp(tmp_path) as (_, sock), QmpClient(sock) as client:
        assert "return" in client.execute("blockdev-add", blockdev), blockdev
        reply = client.execute("query-blockstats", {"query-nodes": True})
    node = reply["return"][0]
    assert "rd_total_time_ns" in node["stats"], node
    other = json.loads(json.dumps(reply))
    stats = other["return"][0]["stats"]
    for name in ("rd_total_time_ns", "wr_total_time_ns", "flush_total_time_ns"):
        stats[name] += 12345
    stats["idle_time_ns"] = 987654321
    assert compare_replies("query-blockstats", reply, other, NORM) == []
    stats["rd_bytes"] += 512  # the firmware read its disk meanwhile
    stats["rd_operations"] += 1
    assert sorted(d.path for d in compare_replies("query-blockstats", reply, other, NORM)) == [
        f"return[node-name={node['node-name']}].stats.rd_bytes",
        f"return[node-name={node['node-name']}].stats.rd_operations",
    ]
    assert compare_replies("query-blockstats", reply, other, NORM.with_rules(load_rules("guest-progress"))) == []


def _vm(tmp_path: Path) -> Path:
    out = tmp_path / "vm.jsonl"
    if not out.exists():
        assert run_import("libvirt", LOG, "--monitor", "4", "--qemu-log", QEMU_LOG, "-o", out)[0] == 0
    return out


def test_query_stats_block_provider_timing_and_unknown_rule_set() -> None:
    recorded = {"return": [{"provider": "block", "qom-path": "/machine/peripheral/virtio-disk1/virtio-backend",
                            "stats": [{"name": "rd_total_time_ns", "value": 10}, {"name": "rd_bytes", "value": 1}]}]}
    actual = json.loads(json.dumps(recorded))
    actual["return"][0]["stats"][0]["value"] = 99
    assert compare_replies("query-stats", recorded, actual, NORM) == []
    actual["return"][0]["stats"][1]["value"] = 2
    assert len(compare_replies("query-stats", recorded, actual, NORM)) == 1
    assert compare_replies("query-stats", recorded, actual, NORM.with_rules(load_rules("guest-progress"))) == []
    with pytest.raises(RulesError, match="built-in sets: guest-progress"):
        load_rules("no-such-set")


# -- import -------------------------------------------------------------------------


def test_domain_xml_from_the_status_file_or_dumpxml_into_the_header(imported: dict[int, Path], tmp_path: Path) -> None:
    for index in (4, 5, 6):
        header = lines(imported[index])[0]
        assert header["domain_xml"].startswith("<domain") and "<name>qmprr-demo</name>" in header["domain_xml"]
        assert "domstatus" not in header["domain_xml"]  # the <domain> inside libvirt's status file
    assert "domain_xml" not in lines(imported[2])[0] or lines(imported[2])[0]["domain_xml"] is None  # a probe
    status, text = run_import("libvirt", LOG, "--monitor", "4", "--domain-xml", DUMPXML, "-o", tmp_path / "a.jsonl")
    assert status == 0, text
    assert "virtio-disk0" in lines(tmp_path / "a.jsonl")[0]["domain_xml"]
    bad = tmp_path / "bad.xml"
    bad.write_text("<notadomain/>")
    status, text = run_import("libvirt", LOG, "--monitor", "4", "--domain-xml", bad, "-o", tmp_path / "b.jsonl")
    assert status == 2 and text.startswith("qmprr: ") and "no <domain>" in text


def test_dump_guest_memory_is_attributed_to_qemuMonitorDumpToFd(imported: dict[int, Path]) -> None:
    callers = {r["msg"]["execute"]: r["orig"].get("caller") for r in lines(imported[4]) if r["kind"] == "command"}
    assert callers["getfd"] == "qemuMonitorSendFileHandle"
    assert callers["dump-guest-memory"] == "qemuMonitorDumpToFd"
    assert callers["qom-list"] == "qemuMonitorGetDeviceAliases"


def test_libvirts_sandbox_option_leaves_the_argv_like_its_monitor(imported: dict[int, Path]) -> None:
    header = lines(imported[4])[0]
    assert "-sandbox" not in header["qemu_argv"]
    note = next(r for r in lines(imported[4]) if r["kind"] == "note" and "removed" in (r.get("data") or {}))
    assert "-sandbox" in note["data"]["removed"]


def test_the_shutdown_of_destroy_is_external(imported: dict[int, Path]) -> None:
    for index in (5, 6):  # both destroys
        recs = lines(imported[index])
        shutdown = next(i for i, r in enumerate(recs) if r["kind"] == "event" and r["msg"]["event"] == "SHUTDOWN")
        assert recs[shutdown - 1]["kind"] == "note" and recs[shutdown - 1]["data"] == {"external": "SHUTDOWN"}
        script = load_script(imported[index])
        assert not any(e["event"] == "SHUTDOWN" for ex in script.exchanges for e in ex.events_before + ex.events_after)
        assert [e["event"] for ex in script.exchanges for e in ex.external_after] == ["SHUTDOWN"]
    events = [r["msg"]["event"] for r in lines(imported[4]) if r["kind"] == "event"]
    assert "STOP" in events  # events commands caused stay in their windows
    assert not any(r["kind"] == "note" and (r.get("data") or {}).get("external") for r in lines(imported[4]))


def test_the_fake_sends_external_events_only_when_asked(imported: dict[int, Path]) -> None:
    script = load_script(imported[6])
    last = next(ex for ex in script.exchanges if ex.external_after)
    for asked in (False, True):
        fake = FakeQemu(script, external_events=asked)
        for ex in script.exchanges:
            response = fake.respond(ex.msg)
            if ex is last:
                names = [e["event"] for e in response.events_after]
                assert ("SHUTDOWN" in names) == asked


async def test_replay_does_not_await_the_external_shutdown(imported: dict[int, Path]) -> None:
    report = await run_replay(str(imported[6]), RunOptions(target="fake"), ReplayOptions(event_timeout=0.2))
    assert report.reproduced and not any(d.what == "missing-event" for s in report.steps for d in s.differences)


def _two_phase(tmp_path: Path) -> Path:
    """libvirt's corpora hold a KVM phase and then a TCG phase: the excerpt twice, as libvirt writes it."""
    text = REPLIES.read_text()
    second = text.replace('"libvirt-', '"libvirt-1')  # the second phase's ids go on
    path = tmp_path / "caps_7.2.0_x86_64.replies"
    path.write_text(text + second)
    return path


def test_replies_phases_are_two_monitor_sessions(tmp_path: Path) -> None:
    out = tmp_path / "caps.jsonl"
    status, text = run_import("replies", _two_phase(tmp_path), "-o", out)
    assert status == 0, text
    recs = lines(out)
    notes = [r for r in recs if r["kind"] == "note" and "session" in (r.get("data") or {})]
    assert [n["data"]["session"] for n in notes] == [2]
    after = recs[recs.index(notes[0]) + 1]
    assert after["kind"] == "command" and after["msg"]["execute"] == "qmp_capabilities"
    script = load_script(out)
    assert sorted({ex.session for ex in script.exchanges}) == [1, 2]
    assert recs[0]["qemu_argv"][0] == "qemu-system-x86_64"  # the probe's command line, from the file name
    assert recs[0]["qemu_argv"][-2:] == ["-machine", "none,accel=kvm:tcg"]


async def test_replaying_two_phases_warns_at_the_new_session(tmp_path: Path) -> None:
    out = tmp_path / "caps.jsonl"
    assert run_import("replies", _two_phase(tmp_path), "-o", out)[0] == 0
    report = await run_replay(str(out), RunOptions(target="fake"), ReplayOptions())
    assert report.reproduced
    assert any("monitor session 2 starts" in w for w in report.warnings), report.warnings


# -- stats roles --------------------------------------------------------------------


def test_libvirts_role_is_its_commands_role(imported: dict[int, Path]) -> None:
    clients = compute(imported[4])["clients"]
    assert clients["libvirt"]["role"] == "primary"
    assert clients["qemu-monitor-command"]["role"] == "debug"
    assert compute(imported[1])["clients"]["libvirt"]["role"] == "primary"  # a probe: negotiation, then queries


# -- replay --domain with libvirt's expanded XML ------------------------------------------


def test_virsh_dumpxml_builds_with_notes_for_what_is_informational() -> None:
    from qmprr.domain import build_launch

    spec = build_launch(DUMPXML)
    notes = "\n".join(spec.warnings)
    for part in ("<alias> (x4)", "<address>", "<seclabel>", "attribute 'id' on <domain>", "<backingStore>",
                 "<input type='mouse' bus='ps2'>"):
        assert f"ignored {part}" in notes, notes
    assert "virtio-blk-pci,id=virtio-disk0,drive=disk-vda,bootindex=1" in spec.argv
    assert not any("0x02" in a for a in spec.argv)  # libvirt's PCI slot is not forced on QEMU


@pytest.mark.qemu
def test_replay_domain_from_virsh_dumpxml_runs_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "disk.qcow2"), "16M"], check=True)
    xml = tmp_path / "vm.xml"
    xml.write_text(DUMPXML.read_text().replace("/tmp/qmprr-lvcap/images", str(images)))
    status = main(["replay", str(_vm(tmp_path)), "--domain", str(xml), "--until", "12", "--keep-going",
                   "--ignore-unsupported", "--map-path", f"{images}={images}"])
    out, err = capsys.readouterr()
    assert status in (0, 1), err
    assert "replayed" in out and "0 interrupted" in out, out
    assert "ignored <alias>" in out + err


def test_qmprr_diff_aligns_lists_too(imported: dict[int, Path], tmp_path: Path) -> None:
    """Two imports of the VM, one with an entry less in a qom-list answer: one difference, named."""
    from replay_support import rewrite_recording

    from qmprr.analysis.diff import diff_recordings
    from qmprr.recording import Msg, Reply

    seq = next(r["seq"] for r in lines(imported[4]) if r["kind"] == "command" and r["msg"]["execute"] == "qom-list")
    gone: list[Any] = []

    def edit(record: Any) -> Any:
        if isinstance(record, Reply) and record.cmd == seq:
            entries = list(record.msg["return"])
            gone.append(entries.pop(1))
            return Reply(seq=record.seq, t=record.t, cmd=record.cmd, msg=Msg({**record.msg, "return": entries}))
        return record

    other = rewrite_recording(imported[4], tmp_path / "b.jsonl", edit)
    texts = [item.text for row in diff_recordings(imported[4], other).rows for item in row.items]
    assert texts == [f"reply return: 1 entry only in A: {gone[0]!r}"], texts


_entries = st.lists(st.fixed_dictionaries({"name": st.text(min_size=1, max_size=8), "v": st.integers(0, 3)}),
                    max_size=12, unique_by=lambda e: e["name"])


@given(_entries, st.randoms(use_true_random=False), st.data())
def test_property_set_answers_permuted_and_cut(entries: list[dict[str, Any]], rnd: Any, data: Any) -> None:
    """Any order is no difference; removing k entries is one difference naming k entries."""
    shuffled = entries[:]
    rnd.shuffle(shuffled)
    assert compare_replies("qom-list-types", {"return": entries}, {"return": shuffled}, NORM) == []
    k = data.draw(st.integers(0, len(entries)))
    kept = shuffled[k:]
    diffs = compare_replies("qom-list-types", {"return": entries}, {"return": kept}, NORM)
    if k == 0:
        assert diffs == []
    else:
        assert len(diffs) == 1 and sorted(e["name"] for e in diffs[0].recorded) == sorted(e["name"] for e in shuffled[:k])
        assert str(diffs[0]).startswith(f"reply return: {k} {'entry' if k == 1 else 'entries'} only in the recorded: ")
