"""``qmprr diff``: equal recordings and replays are equivalent, edits are named precisely,
rules hide what they cover, unreadable files exit 2.

Edited copies are written with :class:`RecordWriter` (valid hash chain), so
they are real recordings that just say something else.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmprr.analysis import diff as diff_module
from qmprr.analysis.diff import align, diff_recordings
from qmprr.cli import main
from qmprr.recording import Command, Event, Msg, RecordingReader, RecordWriter, Reply, verify
from replay_support import ALL_RECORDINGS, RECORDINGS, RUNNING, Step, event, write_recording

LIFECYCLE = RECORDINGS / "lifecycle.jsonl"


def diff(*args: Any, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["diff", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def differences(out: str) -> list[str]:
    """The lines after 'differences:', whitespace squeezed."""
    lines = out.split("differences:\n", 1)[1].splitlines()
    return [" ".join(line.split()) for line in lines]


def edited_lifecycle(dst: Path, *, status: bool = True, drop: bool = True, extra: bool = True,
                     reset: bool = True) -> Path:
    """lifecycle.jsonl with: the paused query-status (seq 11) answered 'running'; cont (seq 13) with its
    RESUME and reply dropped; an extra query-name after system_reset; RESET with guest true."""
    with RecordingReader(LIFECYCLE) as reader:
        records = list(reader)
    new_seq: dict[int, int] = {}
    with RecordWriter.create(dst, records[0], sync="none") as writer:  # type: ignore[arg-type]
        for record in records[1:]:
            old = record.seq
            if drop and old in (13, 14, 15):
                continue
            if isinstance(record, Reply):
                if status and record.cmd == 11:
                    record.msg = Msg({**record.msg, "return": {**record.msg["return"], "status": "running"}})
                record.cmd = new_seq[record.cmd]
            if reset and isinstance(record, Event) and record.msg["event"] == "RESET":
                record.msg = Msg({**record.msg, "data": {**record.msg["data"], "guest": True}})
            new_seq[old] = writer.append(record).seq
            if extra and old == 18:  # system_reset's reply
                cmd = writer.append(Command(src="primary-1", role="primary",
                                            msg=Msg({"execute": "query-name", "id": "qmprr-x"})))
                writer.append(Reply(cmd=cmd.seq, msg=Msg({"return": {}, "id": "qmprr-x"})))
    assert verify(dst).ok
    return dst


# -- equivalent ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_RECORDINGS)
def test_a_recording_equals_itself(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = diff(RECORDINGS / name, RECORDINGS / name, capsys=capsys)
    assert status == 0 and err == ""
    assert out.count("\n") == 1 and out.rstrip().endswith("0 missing in B, 0 extra in B: equivalent")


@pytest.mark.parametrize("name", ALL_RECORDINGS)
def test_a_replay_against_the_fake_equals_the_original(name: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    replayed = tmp_path / "replay.jsonl"
    assert main(["replay", str(RECORDINGS / name), "--target", "fake", "--record", str(replayed)]) == 0
    capsys.readouterr()
    # ids, times, thread ids, client records, the close reason differ: normalization and alignment hide them
    assert replayed.read_bytes() != (RECORDINGS / name).read_bytes()
    status, out, _ = diff(RECORDINGS / name, replayed, capsys=capsys)
    assert status == 0, out
    assert out.rstrip().endswith(": equivalent") and "warning" not in out
    result = diff_recordings(RECORDINGS / name, replayed, internal=True)
    assert result.equivalent and result.counts().aligned == result.counts().commands_a > 0


# -- an edited copy ------------------------------------------------------------------------------


def test_edits_are_each_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edited = edited_lifecycle(tmp_path / "edited.jsonl")
    status, out, err = diff(LIFECYCLE, edited, capsys=capsys)
    assert status == 1 and err == ""
    assert out.splitlines()[0] == (f"{LIFECYCLE} vs {edited}: 7 / 7 commands, 6 aligned (2 differ), "
                                   "1 missing in B, 1 extra in B: 4 difference(s)")
    assert differences(out) == [
        "seq 11 / seq 11 query-status: reply return.status: A 'paused', B 'running'",
        "seq 13 / - cont: missing in B",
        "seq 16 / seq 13 system_reset: event RESET data.guest: A False, B True",
        "- / seq 16 query-name: extra in B",
    ]
    # The first divergence, with the aligned commands before it.
    first = out.split("first divergence: ", 1)[1].split("\ndifferences:", 1)[0]
    assert first.splitlines()[:2] == ["seq 11 / seq 11  query-status",
                                      "  reply return.status: A 'paused', B 'running'"]
    context = [" ".join(line.split()) for line in first.split("context:\n")[1].strip().splitlines()]
    assert context == ["seq 6 / seq 6 query-status same", "seq 8 / seq 8 stop same",
                       ">> seq 11 / seq 11 query-status differs"]


def test_edits_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edited = edited_lifecycle(tmp_path / "edited.jsonl")
    status, out, _ = diff(LIFECYCLE, edited, "--json", capsys=capsys)
    assert status == 1
    data = json.loads(out)
    assert data["equivalent"] is False
    assert data["counts"] == {"commands_a": 7, "commands_b": 7, "aligned": 6, "same": 4, "differs": 2,
                              "missing": 1, "extra": 1, "differences": 4}
    items = [(d["kind"], d["seq_a"], d["seq_b"], d["command"], d["path"], d["a"], d["b"]) for d in data["differences"]]
    assert items == [
        ("reply", 11, 11, "query-status", "return.status", "paused", "running"),
        ("missing", 13, None, "cont", "", None, None),
        ("event", 16, 13, "system_reset", "RESET.data.guest", False, True),
        ("extra", None, 16, "query-name", "", None, None),
    ]
    assert data["first_divergence"] == data["differences"][0]
    assert [r["status"] for r in data["alignment"]] == ["same", "same", "differs", "missing", "differs",
                                                       "extra", "same", "same"]


def test_the_json_form_reads_back_as_the_typed_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qmprr.analysis.diff import DiffReport, diff_recordings
    from qmprr.results import structure, unstructure

    edited = edited_lifecycle(tmp_path / "edited.jsonl")
    status, out, _ = diff(LIFECYCLE, edited, "--json", capsys=capsys)
    typed = structure(json.loads(out), DiffReport)
    assert typed == diff_recordings(LIFECYCLE, edited).report()
    assert typed.counts.differs == 2 and typed.first_divergence == typed.differences[0]
    assert json.loads(out) == json.loads(json.dumps(unstructure(typed)))


def test_rules_make_differences_disappear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\ncommand = "query-status"\npath = "status"\n\n'
                     '[[rule]]\nevent = "RESET"\npath = "guest"\n')
    edited = edited_lifecycle(tmp_path / "edited.jsonl")
    status, out, _ = diff(LIFECYCLE, edited, "--rules", rules, capsys=capsys)
    assert status == 1
    assert differences(out) == ["seq 13 / - cont: missing in B", "- / seq 16 query-name: extra in B"]
    # An edit the rules cover entirely: equivalent.
    only = edited_lifecycle(tmp_path / "only.jsonl", drop=False, extra=False)
    assert diff(LIFECYCLE, only, capsys=capsys)[0] == 1
    status, out, _ = diff(LIFECYCLE, only, "--rules", rules, capsys=capsys)
    assert status == 0 and out.rstrip().endswith(": equivalent")


# -- finer points, on synthetic recordings ---------------------------------------------------------


def pair(tmp_path: Path, a: list[Step], b: list[Step], **kw: Any) -> tuple[Path, Path]:
    return write_recording(tmp_path / "a.jsonl", a, **kw), write_recording(tmp_path / "b.jsonl", b, **kw)


def test_arguments_replies_and_missing_replies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = pair(tmp_path, [
        Step("device_add", {"driver": "usb-kbd", "id": "kbd0"}),
        Step("blockdev-add", {"node-name": "n", "file": "/tmp/qmprr-1/a.img"}),  # temporary paths normalized
        Step("query-iothreads", reply={"return": [{"id": "io0", "thread-id": 101}]}),
        Step("query-block", reply={"error": {"class": "GenericError", "desc": "x"}}),
        Step("query-name", reply={"return": {}}),
        Step("query-kvm", reply={"error": {"class": "GenericError", "desc": "no"}}),
        Step("query-cpus-fast"),
    ], [
        Step("device_add", {"driver": "usb-kbd", "id": "kbd1"}),
        Step("blockdev-add", {"node-name": "n", "file": "/tmp/qmprr-2/a.img"}),
        Step("query-iothreads", reply={"return": [{"id": "io0", "thread-id": 202}]}),
        Step("query-block", reply={"error": {"class": "DeviceNotFound", "desc": "y"}}),
        Step("query-name", reply={"error": {"class": "CommandNotFound", "desc": "z"}}),
        Step("query-kvm", reply={"error": {"class": "GenericError", "desc": "other words"}}),
        Step("query-cpus-fast", reply=None),
    ])
    status, out, _ = diff(a, b, capsys=capsys)
    assert status == 1
    assert differences(out) == [
        "seq 4 / seq 4 device_add: arguments.id: A 'kbd0', B 'kbd1'",
        "seq 10 / seq 10 query-block: error-class error.class: A 'GenericError', B 'DeviceNotFound'",
        "seq 12 / seq 12 query-name: reply return vs error: A {}, B {'class': 'CommandNotFound', 'desc': 'z'}",
        "seq 16 / seq 16 query-cpus-fast: no reply recorded in B (the other has {\"return\":{}})",
    ]


def test_event_windows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = event("JOB_STATUS_CHANGE", {"id": "j", "status": "running"})
    a, b = pair(tmp_path, [
        Step("stop", before=[event("STOP", seconds=1)]),
        Step("job-pause", after=[job, job]),
        Step("query-status", after=[event("RTC_CHANGE", {"offset": 1}), event("RTC_CHANGE", {"offset": 1})]),
        Step("cont", after=[event("RESUME")]),
        Step("query-name", after=[event("RTC_CHANGE", {"offset": 2})]),
    ], [
        Step("stop", after=[event("STOP", seconds=2)]),  # after the reply instead of before, another time: same
        Step("job-pause", after=[job]),
        Step("query-status", after=[event("RTC_CHANGE", {"offset": 1})]),  # rate-limited: presence is enough
        Step("cont", after=[event("RESUME"), event("POWERDOWN")]),
        Step("query-name"),
    ], initial_events=[event("NIC_RX_FILTER_CHANGED", {"path": "/machine/peripheral/net0"})])
    status, out, _ = diff(a, b, capsys=capsys)
    assert status == 1
    assert differences(out) == [
        'seq 8 / seq 8 job-pause: event JOB_STATUS_CHANGE {"id":"j","status":"running"}: 2 in A, 1 in B',
        "seq 16 / seq 14 cont: extra event POWERDOWN in B",
        'seq 19 / seq 18 query-name: event RTC_CHANGE {"offset":2} only in A (rate-limited: presence compared)',
    ]


def test_initial_events_and_internal_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    quit_ = Step("quit", src="qmprr", role="internal", after=[event("SHUTDOWN", {"guest": False})])
    a = write_recording(tmp_path / "a.jsonl", [Step("query-status", reply={"return": RUNNING}), quit_],
                        initial_events=[event("RESUME")])
    b = write_recording(tmp_path / "b.jsonl", [Step("query-status", reply={"return": RUNNING})])
    status, out, _ = diff(a, b, capsys=capsys)
    assert status == 1
    assert "warning: qmprr's own commands left out: 1 in A, 0 in B (--internal compares them)" in out
    assert "first divergence: before the first command\n  event RESUME missing in B\n" in out
    assert differences(out) == ["start / start (before the first command): event RESUME missing in B"]
    status, out, _ = diff(a, b, "--internal", capsys=capsys)
    assert differences(out) == ["start / start (before the first command): event RESUME missing in B",
                                "seq 7 / - quit: missing in B"]


def test_qemu_versions_are_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    steps = [Step("query-status", reply={"return": RUNNING})]
    a = write_recording(tmp_path / "a.jsonl", steps)
    version = {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "local build"}
    b = write_recording(tmp_path / "b.jsonl", steps, greeting={"QMP": {"version": version, "capabilities": []}})
    status, out, _ = diff(a, b, capsys=capsys)
    assert status == 0
    assert "warning: QEMU build differs: A 'Debian 1:7.2+dfsg-7+deb12u18+b3', B 'local build'" in out
    version = {"qemu": {"micro": 0, "minor": 0, "major": 8}, "package": ""}
    c = write_recording(tmp_path / "c.jsonl", steps, greeting={"QMP": {"version": version, "capabilities": []}})
    status, out, _ = diff(a, c, "--json", capsys=capsys)
    assert status == 0 and json.loads(out)["warnings"] == ["QEMU version differs: A 7.2.22, B 8.0.0"]


def test_colour_only_when_asked_or_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    edited = edited_lifecycle(tmp_path / "edited.jsonl")
    _, out, _ = diff(LIFECYCLE, edited, capsys=capsys)  # captured: not a terminal
    assert "\x1b[" not in out
    _, out, _ = diff(LIFECYCLE, edited, "--color", "always", capsys=capsys)
    assert "\x1b[31m" in out and "\x1b[32m" in out and "\x1b[33m" in out

    class Tty:
        def isatty(self) -> bool:
            return True

    from qmprr.cli.options import use_color

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_color(Tty())  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty())  # type: ignore[arg-type]


# -- alignment ---------------------------------------------------------------------------------


def check_ops(a: list[str], b: list[str], ops: list[tuple[str, int, int, int, int]]) -> int:
    """*ops* cover both sides in order, equal ranges are equal; returns how many keys pair."""
    i = j = paired = 0
    for tag, i1, i2, j1, j2 in ops:
        assert (i1, j1) == (i, j) and i2 >= i1 and j2 >= j1 and (i2 > i1 or j2 > j1)
        if tag == "equal":
            assert a[i1:i2] == b[j1:j2]
            paired += i2 - i1
        i, j = i2, j2
    assert (i, j) == (len(a), len(b))
    return paired


keys = st.lists(st.sampled_from("abc"), max_size=60)


@given(keys, keys)
def test_alignment_is_an_edit_script(a: list[str], b: list[str]) -> None:
    check_ops(a, b, align(a, b))


@given(keys, keys)
def test_alignment_in_small_windows_is_an_edit_script(a: list[str], b: list[str]) -> None:
    saved = diff_module.WINDOW, diff_module.MAX_WINDOW, diff_module.MIN_RUN
    diff_module.WINDOW, diff_module.MAX_WINDOW, diff_module.MIN_RUN = 2, 8, 2  # grows, and gives up
    try:
        check_ops(a, b, align(a, b))
    finally:
        diff_module.WINDOW, diff_module.MAX_WINDOW, diff_module.MIN_RUN = saved


def test_long_repetitive_recordings_align_in_linear_time() -> None:
    # Whole-sequence SequenceMatcher takes minutes here (few keys, each repeated thousands of times).
    import random

    rng = random.Random(7)
    a = [rng.choice(["query-status", "query-block", "query-jobs", "stop", "cont"]) for _ in range(60_000)]
    dropped = {100, 30_000, 59_000}
    b = [k for n, k in enumerate(a) if n not in dropped]
    b[45_000:45_000] = ["device_add"]
    ops = align(a, b)
    assert check_ops(a, b, ops) == len(a) - 3
    assert sum(i2 - i1 for tag, i1, i2, _, _ in ops if tag != "equal") == 3
    assert sum(j2 - j1 for tag, _, _, j1, j2 in ops if tag != "equal") == 1


# -- cannot compare -------------------------------------------------------------------------------


def test_not_a_recording_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    status, out, err = diff(LIFECYCLE, text, capsys=capsys)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"qmprr: {text}: not a qmprr/1 recording")
    status, _, err = diff(tmp_path / "absent.jsonl", LIFECYCLE, capsys=capsys)
    absent = tmp_path / "absent.jsonl"
    assert status == 2 and err == f"qmprr: {absent}: cannot read recording: No such file or directory\n"
    rules = tmp_path / "rules.toml"
    rules.write_text("[[rule]]\naction = 'ignore'\n")
    status, _, err = diff(LIFECYCLE, LIFECYCLE, "--rules", rules, capsys=capsys)
    assert status == 2 and err.startswith(f"qmprr: {rules}: rule 1: 'path' is required") and err.count("\n") == 1


def test_exit_status_of_the_real_command(tmp_path: Path) -> None:
    edited = edited_lifecycle(tmp_path / "edited.jsonl")
    cli = [sys.executable, "-m", "qmprr.cli", "diff"]
    result = subprocess.run([*cli, str(LIFECYCLE), str(edited)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "seq 13 / -          cont: missing in B" in result.stdout
    result = subprocess.run([*cli, str(LIFECYCLE), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"qmprr: {tmp_path}: cannot read recording: Is a directory with no segment set (NAME.000001.jsonl ...)\n"
