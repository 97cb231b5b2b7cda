"""The qmprr/1 recording: writer, reader, locking, append, redaction, errors."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmprr import codec
from qmprr.errors import (
    CorruptRecord,
    NotARecording,
    RecordingError,
    RecordingLocked,
    TornTail,
)
from qmprr.recording import (
    ABSENT,
    REDACTED,
    ArgumentRule,
    Client,
    Close,
    Command,
    Event,
    Fd,
    Greeting,
    Header,
    HmpRule,
    Local,
    Note,
    Record,
    RecordingReader,
    RecordWriter,
    Redactor,
    Reply,
    Taint,
    Tx,
    new_header,
    verify,
)
from qmprr.recording import chain, convert

from qmprr.recording.redact import NO_REDACTION

GREETING = {
    "QMP": {
        "version": {"qemu": {"micro": 0, "minor": 2, "major": 8}, "package": "v8.2.0"},
        "capabilities": ["oob"],
    }
}


def fixed_header(**kw: Any) -> Header:
    return Header(
        started="2026-01-02T03:04:05.000006+00:00",
        started_epoch=1767323045.000006,
        host="testhost",
        qmprr_version="0.1.0",
        **kw,
    )


def sample_records() -> list[Record]:
    """One or more of every kind, optional fields both set and left out."""
    return [
        Greeting(msg=GREETING),
        Client(action="connect", name="primary-1", role="primary", peer="unix:/run/x.sock"),
        Client(action="connect", name="debug-1", role="debug"),
        Command(src="qmprr", role="internal", msg={"execute": "qmp_capabilities", "id": "qmprr-0"}),
        Reply(cmd=4, msg={"return": {}, "id": "qmprr-0"}),
        Command(
            src="primary-1",
            role="primary",
            msg={"execute": "stop", "id": "qmprr-1"},
            client_id="libvirt-7",
            tx=3,
        ),
        Event(msg={"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}),
        Reply(cmd=6, msg={"error": {"class": "GenericError", "desc": "nope ü"}, "id": "qmprr-1"}),
        Tx(action="begin", tx=3, label="migrate", owner="primary-1"),
        Tx(action="abort", tx=3, label="migrate", owner="primary-1", reason="idle timeout"),
        Taint(reason="custom-monitor", client="debug-1"),
        Fd(src="primary-1", placeholder="fd:0"),
        Fd(src="primary-1", placeholder="fd:1", cmd=6),
        Note(text="marker"),
        Note(text="with data", data={"a": [1, 2.5, None, True, "\u20ac"], "b": {}}),
        Client(action="disconnect", name="debug-1", role="debug"),
        Local(src="primary-1", role="primary", msg={"execute": "qmp_capabilities", "id": 1},
              reply={"return": {}, "id": 1}),
        Local(src="debug-1", role="debug", input='{"execute": x',
              reply={"error": {"class": "GenericError", "desc": "JSON parse error"}}),
        Close(reason="eof"),
        Close(reason="error", detail="connection reset by peer"),
    ]


def write(path: Path, records: list[Record], **kw: Any) -> list[Record]:
    """Write *records* after a header; return all records as the writer returned them."""
    kw.setdefault("header", fixed_header())
    with RecordWriter.create(path, **kw) as writer:
        out: list[Any] = [None]
        for r in records:
            out.append(writer.append(r))
    with RecordingReader(path) as reader:
        out[0] = reader.header
    return out


def read(path: Path, **kw: Any) -> list[Record]:
    with RecordingReader(path, **kw) as reader:
        return list(reader)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def sealed_line(d: dict, prev: str = chain.GENESIS) -> tuple[bytes, str]:
    return chain.seal(codec.dumps(d), prev)


# -- round trip ---------------------------------------------------------------


def test_every_record_kind_round_trips(tmp_recording: Path) -> None:
    written = write(tmp_recording, sample_records(), redactor=Redactor(keep_input=True))
    got = read(tmp_recording)
    assert len(got) == len(written) == len(sample_records()) + 1
    for w, g in zip(written, got):
        assert type(g) is type(w)
        assert attrs.asdict(g) == attrs.asdict(w)
        assert g == w
    assert got[0] == attrs.evolve(fixed_header(), seq=0, t=0.0)
    assert verify(tmp_recording).ok


def test_header_with_all_fields_round_trips(tmp_recording: Path) -> None:
    header = fixed_header(
        qemu_version=GREETING["QMP"]["version"],
        qemu_argv=["qemu-system-x86_64", "-qmp", "unix:/tmp/q,server"],
        qemu_env={"LANG": "C.UTF-8"},
        domain_xml="<domain type='kvm'><name>é</name></domain>",
        labels={"bug": "123"},
    )
    with RecordWriter.create(tmp_recording, header=header):
        pass
    (got,) = read(tmp_recording)
    assert got == header
    assert got.seq == 0 and got.t == 0.0


def test_new_header_is_stamped(tmp_recording: Path) -> None:
    with RecordWriter.create(tmp_recording, header=new_header(labels={"k": "v"})):
        pass
    h = read(tmp_recording)[0]
    assert isinstance(h, Header) and h.format == "qmprr/1" and h.labels == {"k": "v"}
    assert h.started.endswith("+00:00") and h.host and h.qmprr_version


def test_lines_are_compact_json_with_h_last(tmp_recording: Path) -> None:
    write(tmp_recording, sample_records())
    for raw in lines(tmp_recording):
        assert raw.endswith(b"\n") and raw.count(b"\n") == 1
        d = json.loads(raw)
        assert list(d)[:3] == ["seq", "t", "kind"]
        assert list(d)[-1] == "h" and re.fullmatch(r"[0-9a-f]{32}", d["h"])


def test_seq_has_no_gaps_and_t_never_decreases(tmp_recording: Path) -> None:
    with RecordWriter.create(tmp_recording, sync="none") as writer:
        returned = [writer.append(Event(msg={"event": "E", "n": i})) for i in range(500)]
    assert [r.seq for r in returned] == list(range(1, 501))
    got = read(tmp_recording)
    assert [r.seq for r in got] == list(range(501))
    assert got[0].t == 0.0
    ts = [r.t for r in got]
    assert ts == sorted(ts)
    assert all(isinstance(t, float) and t >= 0 for t in ts)


def test_writer_sets_seq_and_t_on_the_record_it_returns(tmp_recording: Path) -> None:
    with RecordWriter.create(tmp_recording) as writer:
        assert writer.next_seq == 1
        rec = Event(msg={"event": "X"})
        out = writer.append(rec)
        assert out is rec and out.seq == 1 and out.t >= 0
        assert writer.next_seq == 2


def test_client_id_absent_null_and_values_stay_distinct(tmp_recording: Path) -> None:
    ids = [ABSENT, None, "", 0, False, {"nested": [1, {"x": None}]}, [None], "libvirt-1"]
    cmds = [
        Command(src="p", role="primary", msg={"execute": "stop", "id": f"q-{i}"}, client_id=cid)
        for i, cid in enumerate(ids)
    ]
    write(tmp_recording, cmds)
    on_disk = [json.loads(raw) for raw in lines(tmp_recording)[1:]]
    assert "client_id" not in on_disk[0]
    assert on_disk[1]["client_id"] is None
    got = read(tmp_recording)[1:]
    assert got[0].client_id is ABSENT
    assert got[1].client_id is None
    for cid, rec in zip(ids[2:], got[2:]):
        assert rec.client_id == cid and type(rec.client_id) is type(cid)


_text = st.text(max_size=10)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | _text,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(_text, c, max_size=3),
    max_leaves=10,
)
_objects = st.dictionaries(_text, _json, max_size=4)


@given(
    st.lists(
        st.one_of(
            st.builds(Event, msg=_objects),
            st.builds(
                Command,
                src=_text,
                role=st.sampled_from(["primary", "debug", "internal"]),
                msg=_objects,
                client_id=st.just(ABSENT) | _json,
                tx=st.none() | st.integers(0, 2**31),
            ),
            st.builds(Reply, cmd=st.integers(0, 10), msg=_objects),
            st.builds(Note, text=_text, data=st.none() | _objects),
            st.builds(Local, src=_text, role=st.just("debug"), msg=st.none() | _objects,
                      input=st.none() | _text, reply=_objects),
        ),
        max_size=8,
    )
)
def test_arbitrary_messages_round_trip(records: list[Record]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.jsonl"
        written = write(path, copy.deepcopy(records), redactor=NO_REDACTION, sync="none")
        got = read(path)
    assert got == written


# -- locking, create, append_to ----------------------------------------------


def test_create_refuses_an_existing_file(tmp_recording: Path) -> None:
    tmp_recording.write_bytes(b"precious\n")
    with pytest.raises(RecordingError, match="exists"):
        RecordWriter.create(tmp_recording)
    assert tmp_recording.read_bytes() == b"precious\n"


def test_create_overwrite_replaces_an_unlocked_file(tmp_recording: Path) -> None:
    tmp_recording.write_bytes(b"x" * 10_000)
    with RecordWriter.create(tmp_recording, overwrite=True):
        pass
    assert len(read(tmp_recording)) == 1 and verify(tmp_recording).ok


def test_second_writer_in_process_is_refused(tmp_recording: Path) -> None:
    with RecordWriter.create(tmp_recording) as writer:
        writer.append(Note(text="one"))
        before = tmp_recording.read_bytes()
        with pytest.raises(RecordingLocked):
            RecordWriter.append_to(tmp_recording)
        with pytest.raises(RecordingLocked):
            RecordWriter.create(tmp_recording, overwrite=True)  # must not truncate it
        assert tmp_recording.read_bytes() == before
        writer.append(Note(text="two"))
    # Unlocked once closed.
    with RecordWriter.append_to(tmp_recording) as again:
        again.append(Note(text="three"))
    assert [r.text for r in read(tmp_recording)[1:]] == ["one", "two", "three"]
    assert verify(tmp_recording).ok


_HOLDER = textwrap.dedent(
    """
    import sys
    from qmprr.recording import RecordWriter, Note
    from qmprr.errors import RecordingLocked
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "hold":
        w = RecordWriter.append_to(path)
        w.append(Note(text="child"))
        print("holding", flush=True)
        sys.stdin.read()  # until the parent closes our stdin
        w.close()
    else:
        try:
            RecordWriter.append_to(path)
        except RecordingLocked as exc:
            print("locked:", exc, flush=True)
            sys.exit(3)
        sys.exit(0)
    """
)


def _child(path: Path, mode: str, **kw: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kw,
    )


def test_lock_held_by_another_process(tmp_recording: Path) -> None:
    with RecordWriter.create(tmp_recording):
        pass
    child = _child(tmp_recording, "hold")
    try:
        assert child.stdout.readline().strip() == "holding"
        with pytest.raises(RecordingLocked, match="another qmprr process"):
            RecordWriter.append_to(tmp_recording)
        with pytest.raises(RecordingLocked):
            RecordWriter.create(tmp_recording, overwrite=True)
    finally:
        child.stdin.close()
        assert child.wait(10) == 0
    with RecordWriter.append_to(tmp_recording) as w:
        w.append(Note(text="parent"))
    assert [r.text for r in read(tmp_recording)[1:]] == ["child", "parent"]


def test_lock_held_by_this_process_refuses_a_child(tmp_recording: Path) -> None:
    with RecordWriter.create(tmp_recording):
        pass
    with RecordWriter.append_to(tmp_recording) as w:
        child = _child(tmp_recording, "try")
        out, _ = child.communicate(timeout=10)
        assert child.returncode == 3, out
        assert out.startswith("locked:")
        w.append(Note(text="still mine"))
    assert verify(tmp_recording).ok


def test_append_to_continues_seq_t_and_chain(tmp_recording: Path) -> None:
    write(tmp_recording, sample_records()[:5])
    last = read(tmp_recording)[-1]
    for round_ in range(3):
        with RecordWriter.append_to(tmp_recording) as writer:
            assert writer.next_seq == last.seq + 1
            r = writer.append(Note(text=f"round {round_}"))
            assert r.seq == last.seq + 1 and r.t >= last.t
            writer.append(Event(msg={"event": "E"}))
        last = read(tmp_recording)[-1]
    got = read(tmp_recording)
    assert [r.seq for r in got] == list(range(len(got)))
    assert [r.t for r in got] == sorted(r.t for r in got)
    report = verify(tmp_recording)
    assert report.ok and report.records == len(got) == 6 + 6


def test_append_to_a_torn_file_raises_torn_tail(tmp_recording: Path) -> None:
    write(tmp_recording, sample_records()[:3])
    size = tmp_recording.stat().st_size
    with tmp_recording.open("ab") as f:
        f.write(b'{"seq":4,"t":0.5,"kind":"ev')
    before = tmp_recording.read_bytes()
    with pytest.raises(TornTail) as info:
        RecordWriter.append_to(tmp_recording)
    assert info.value.offset == size and info.value.size == len(before) - size
    assert "qmprr repair" in str(info.value)
    assert tmp_recording.read_bytes() == before  # untouched

    with RecordWriter.append_to(tmp_recording, repair=True) as writer:
        writer.append(Note(text="after repair"))
    got = read(tmp_recording)
    assert tmp_recording.read_bytes()[:size] == before[:size]
    repair_note, after = got[-2], got[-1]
    assert isinstance(repair_note, Note) and repair_note.text.startswith("repaired")
    assert repair_note.data == {"offset": size, "bytes": len(before) - size}
    assert repair_note.seq == 4 and after.seq == 5
    report = verify(tmp_recording)
    assert report.ok and report.torn is None


def test_append_to_repair_on_a_clean_file_adds_nothing(tmp_recording: Path) -> None:
    write(tmp_recording, sample_records()[:3])
    before = tmp_recording.read_bytes()
    RecordWriter.append_to(tmp_recording, repair=True).close()
    assert tmp_recording.read_bytes() == before


def test_closed_writer_refuses_records(tmp_recording: Path) -> None:
    writer = RecordWriter.create(tmp_recording)
    writer.close()
    writer.close()  # idempotent
    assert writer.closed
    with pytest.raises(RecordingError, match="closed"):
        writer.append(Note(text="late"))


# -- sync policies -----------------------------------------------------------


def _without_t(records: list[Record]) -> list[dict]:
    out = []
    for r in records:
        d = convert.unstructure(r)
        d.pop("t")
        out.append(d)
    return out


def test_sync_policies_write_the_same_records(tmp_path: Path) -> None:
    results = {}
    for sync in ("always", "batch", "none"):
        path = tmp_path / f"{sync}.jsonl"
        write(path, sample_records(), sync=sync)
        report = verify(path)
        assert report.ok, (sync, report.problems)
        results[sync] = _without_t(read(path))
    assert results["always"] == results["batch"] == results["none"]
    assert len(results["none"]) == len(sample_records()) + 1


def test_unknown_sync_policy_is_refused(tmp_recording: Path) -> None:
    with pytest.raises(ValueError):
        RecordWriter.create(tmp_recording, sync="sometimes")


# -- redaction ---------------------------------------------------------------

SECRET = "hunter2-Sup3rS3cret"


def _hmp(line: str) -> dict:
    return {"execute": "human-monitor-command", "arguments": {"command-line": line}, "id": 1}


REDACTION_CASES = {
    "object-add secret": (
        {"execute": "object-add", "arguments": {"qom-type": "secret", "id": "sec0", "data": SECRET}},
        lambda m: m["arguments"]["data"],
    ),
    "object-add secret base64": (
        {"execute": "object-add", "arguments": {"qom-type": "secret", "id": "sec0", "format": "base64",
                                                 "data": SECRET}, "id": "x"},
        lambda m: m["arguments"]["data"],
    ),
    "object-add secret props": (
        {"execute": "object-add", "arguments": {"qom-type": "secret", "id": "sec0", "props": {"data": SECRET}}},
        lambda m: m["arguments"]["props"]["data"],
    ),
    "set_password": (
        {"execute": "set_password", "arguments": {"protocol": "vnc", "password": SECRET}},
        lambda m: m["arguments"]["password"],
    ),
    "change-vnc-password": (
        {"execute": "change-vnc-password", "arguments": {"password": SECRET}},
        lambda m: m["arguments"]["password"],
    ),
    "hmp set_password": (
        _hmp(f"set_password vnc {SECRET}"),
        lambda m: m["arguments"]["command-line"],
    ),
    "hmp set_password spaced": (
        _hmp(f"  set_password  spice {SECRET} keep"),
        lambda m: m["arguments"]["command-line"],
    ),
    "hmp change vnc password": (
        _hmp(f"change vnc password {SECRET}"),
        lambda m: m["arguments"]["command-line"],
    ),
    "hmp object_add secret": (
        _hmp(f"object_add secret,id=sec0,data={SECRET}"),
        lambda m: m["arguments"]["command-line"],
    ),
    "hmp object_add secret escaped comma": (
        _hmp(f"object_add secret,id=sec0,data={SECRET},,more,format=raw"),
        lambda m: m["arguments"]["command-line"],
    ),
    "hmp object_add qom-type= first": (
        _hmp(f"object_add qom-type=secret,id=sec0,data={SECRET}"),
        lambda m: m["arguments"]["command-line"],
    ),
}


@pytest.mark.parametrize("case", list(REDACTION_CASES))
def test_default_redaction(tmp_recording: Path, case: str) -> None:
    msg, where = REDACTION_CASES[case]
    original = copy.deepcopy(msg)
    with RecordWriter.create(tmp_recording) as writer:
        returned = writer.append(Command(src="primary-1", role="primary", msg=msg))
    # The caller's message (forwarded to QEMU) is untouched.
    assert msg == original
    assert returned.msg is msg
    raw = tmp_recording.read_bytes()
    assert SECRET.encode() not in raw
    assert SECRET[:8].encode() not in raw  # not even part of it
    logged = read(tmp_recording)[1].msg
    assert REDACTED in where(logged)
    # Nothing else changed.
    assert _scrub(logged) == _scrub(original)
    assert verify(tmp_recording).ok


def _scrub(value: Any) -> Any:
    """*value* with every string holding the secret or the marker normalized."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str):
        value = re.sub(re.escape(SECRET) + r"(,,more)?", "S", value)
        return value.replace(REDACTED + ",,more", "S").replace(REDACTED, "S")
    return value


# QEMU parses HMP object_add with keyval_parse(str, "qom-type", ...) (or as
# JSON when it starts with '{'): "qom-type=secret" may come anywhere.
HMP_LEAKS = {
    "hmp object_add qom-type= not first": f"object_add id=sec0,qom-type=secret,data={SECRET}",
    "hmp object_add json": 'object_add {"qom-type": "secret", "id": "sec0", "data": "%s"}' % SECRET,
}


@pytest.mark.parametrize("case", list(HMP_LEAKS))
def test_hmp_object_add_secret_in_other_syntaxes_is_redacted(tmp_recording: Path, case: str) -> None:
    with RecordWriter.create(tmp_recording) as writer:
        writer.append(Command(src="primary-1", role="primary", msg=_hmp(HMP_LEAKS[case])))
    assert SECRET.encode() not in tmp_recording.read_bytes()


@pytest.mark.parametrize(
    "msg",
    [
        # qmprr answers these itself (Local records) yet logs the message as received.
        {"exec-oob": "set_password", "arguments": {"protocol": "vnc", "password": SECRET}},
        {"execute": "change-vnc-password", "arguments": {"password": SECRET}},  # e.g. before negotiation
        _hmp(f"set_password vnc {SECRET}"),  # e.g. refused by --deny policy
    ],
)
def test_local_records_are_redacted_too(tmp_recording: Path, msg: dict) -> None:
    original = copy.deepcopy(msg)
    with RecordWriter.create(tmp_recording) as writer:
        writer.append(Local(src="debug-1", role="debug", msg=msg,
                            reply={"error": {"class": "GenericError", "desc": "refused"}}))
    assert msg == original
    assert SECRET.encode() not in tmp_recording.read_bytes()


def test_redaction_leaves_other_commands_alone(tmp_recording: Path) -> None:
    msgs = [
        {"execute": "object-add", "arguments": {"qom-type": "memory-backend-ram", "id": "m", "size": 1,
                                                 "data": "not-a-secret"}},
        {"execute": "human-monitor-command", "arguments": {"command-line": "info status"}},
        {"execute": "set_password", "arguments": {"protocol": "vnc"}},  # nothing to redact
        {"execute": "set_password"},
        {"execute": "human-monitor-command", "arguments": {"command-line": 42}},
    ]
    write(tmp_recording, [Command(src="p", role="primary", msg=m) for m in msgs])
    assert [r.msg for r in read(tmp_recording)[1:]] == msgs


def test_redaction_applies_only_to_commands(tmp_recording: Path) -> None:
    # Events and notes are logged verbatim (qmprr only redacts what clients send).
    ev = {"event": "X", "data": {"password": "p"}}
    write(tmp_recording, [Event(msg=ev)])
    assert read(tmp_recording)[1].msg == ev


def test_user_rules(tmp_recording: Path) -> None:
    redactor = Redactor().with_rules(
        [
            ArgumentRule("x-vendor-*", ("auth", "token")),
            ArgumentRule("blockdev-add", ("key-secret-value",), {"driver": "luks"}),
            HmpRule(re.compile(r"^\s*vendor_login\s+\S+\s+(?P<secret>\S+)")),
        ]
    )
    msgs = [
        {"execute": "x-vendor-login", "arguments": {"user": "u", "auth": {"token": SECRET}}},
        {"execute": "blockdev-add", "arguments": {"driver": "luks", "key-secret-value": SECRET}},
        {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "key-secret-value": "kept"}},
        _hmp(f"vendor_login admin {SECRET}"),
        {"execute": "set_password", "arguments": {"protocol": "vnc", "password": SECRET}},  # defaults kept
        {"execute": "x-other", "arguments": {"auth": {"token": "kept"}}},
    ]
    originals = copy.deepcopy(msgs)
    with RecordWriter.create(tmp_recording, redactor=redactor) as writer:
        for m in msgs:
            writer.append(Command(src="p", role="primary", msg=m))
    assert msgs == originals
    assert SECRET.encode() not in tmp_recording.read_bytes()
    got = [r.msg for r in read(tmp_recording)[1:]]
    assert got[0]["arguments"] == {"user": "u", "auth": {"token": REDACTED}}
    assert got[1]["arguments"]["key-secret-value"] == REDACTED
    assert got[2] == msgs[2]
    assert got[3]["arguments"]["command-line"] == f"vendor_login admin {REDACTED}"
    assert got[4]["arguments"]["password"] == REDACTED
    assert got[5] == msgs[5]


def test_no_redaction_keeps_secrets(tmp_recording: Path) -> None:
    msg = REDACTION_CASES["set_password"][0]
    write(tmp_recording, [Command(src="p", role="primary", msg=msg)], redactor=NO_REDACTION)
    assert read(tmp_recording)[1].msg == msg


# -- reader error modes ---------------------------------------------------------


def _tamper_line(path: Path, lineno: int) -> None:
    """Change one character of a string inside line *lineno* (1-based); JSON stays valid."""
    ls = lines(path)
    raw = ls[lineno - 1]
    i = raw.index(b'"event":"E') + len(b'"event":"')
    ls[lineno - 1] = raw[:i] + b"F" + raw[i + 1 :]
    json.loads(ls[lineno - 1])
    path.write_bytes(b"".join(ls))


@pytest.fixture
def corrupt_at_5(tmp_recording: Path) -> Path:
    write(tmp_recording, [Event(msg={"event": "E", "n": i}) for i in range(1, 10)])
    _tamper_line(tmp_recording, 5)
    return tmp_recording


def test_reader_raise_mode(corrupt_at_5: Path) -> None:
    got = []
    with RecordingReader(corrupt_at_5) as reader:
        with pytest.raises(CorruptRecord) as info:
            for r in reader:
                got.append(r)
    assert info.value.line == 5 and "hash chain" in info.value.reason
    assert str(info.value).startswith(f"{corrupt_at_5}:5: ")
    assert [r.seq for r in got] == [0, 1, 2, 3]


def test_reader_stop_mode(corrupt_at_5: Path) -> None:
    with RecordingReader(corrupt_at_5, errors="stop") as reader:
        got = list(reader)
    assert [r.seq for r in got] == [0, 1, 2, 3]
    assert [p.line for p in reader.problems] == [5]
    assert reader.torn is None


def test_reader_skip_mode(corrupt_at_5: Path) -> None:
    with RecordingReader(corrupt_at_5, errors="skip") as reader:
        got = list(reader)
    assert [r.seq for r in got] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert [p.line for p in reader.problems] == [5]


def test_reader_reports_a_torn_tail_without_raising(tmp_recording: Path) -> None:
    write(tmp_recording, [Event(msg={"event": "E"})] * 3)
    n = len(lines(tmp_recording))
    with tmp_recording.open("ab") as f:
        f.write(b'{"seq":4,')
    with RecordingReader(tmp_recording) as reader:  # errors="raise"
        got = list(reader)
    assert len(got) == 4
    assert reader.torn is not None and reader.torn.line == n + 1 and reader.torn.size == 9
    assert [p.line for p in reader.problems] == [n + 1]


# -- not a recording ----------------------------------------------------------


def _not_recordings(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.jsonl"
    write(good, sample_records()[:3])
    ls = lines(good)
    cases = {
        "empty": b"",
        "text": b"hello\nworld\n",
        "binary": bytes(range(256)) * 4,
        "json lines": b'{"a": 1}\n{"b": 2}\n',
        "torn header only": ls[0][:-10],
        "header without newline": ls[0][:-1],
        "first record not a header": b"".join(ls[1:]),
    }
    header = json.loads(ls[0])
    del header["h"]
    header["format"] = "qmprr/2"
    cases["other format"] = sealed_line(header)[0]
    header["format"] = "qmprr/1"
    header["host"] = "edited"
    cases["header hash wrong"] = sealed_line(header)[0].replace(b'"edited"', b'"edited!"')
    out = {}
    for name, data in cases.items():
        p = tmp_path / (name.replace(" ", "-") + ".jsonl")
        p.write_bytes(data)
        out[name] = p
    return out


def test_not_a_recording(tmp_path: Path) -> None:
    paths = _not_recordings(tmp_path)
    before = {name: path.read_bytes() for name, path in paths.items()}
    for name, path in paths.items():
        with pytest.raises(NotARecording, match="not a qmprr/1 recording"):
            RecordingReader(path)
        with pytest.raises(NotARecording):
            verify(path)
        if name == "header hash wrong":
            continue  # see test_append_to_checks_the_header_hash
        with pytest.raises(RecordingError, match=r"not a qmprr/1 recording|no complete record"):
            RecordWriter.append_to(path).close()
        assert path.read_bytes() == before[name], name


def test_append_to_checks_the_header_hash(tmp_path: Path) -> None:
    """append_to must not extend a file the reader refuses as not a recording."""
    path = _not_recordings(tmp_path)["header hash wrong"]
    before = path.read_bytes()
    with pytest.raises(NotARecording):
        RecordingReader(path)
    with pytest.raises(NotARecording):
        RecordWriter.append_to(path).close()
    assert path.read_bytes() == before


def test_reader_and_append_to_refuse_a_header_with_the_same_words(tmp_path: Path) -> None:
    """One header check: the appending writer says what the reader says."""
    for name, path in _not_recordings(tmp_path).items():
        with pytest.raises(NotARecording) as by_reader:
            RecordingReader(path)
        with pytest.raises(NotARecording) as by_writer:
            RecordWriter.append_to(path).close()
        assert str(by_writer.value) == str(by_reader.value), name


def test_missing_file_is_a_recording_error(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="cannot read"):
        RecordingReader(tmp_path / "missing.jsonl")
    with pytest.raises(RecordingError, match="cannot open"):
        RecordWriter.append_to(tmp_path / "missing.jsonl")


def test_second_header_is_a_problem(tmp_recording: Path) -> None:
    write(tmp_recording, [Note(text="x")])
    ls = lines(tmp_recording)
    prev = json.loads(ls[-1])["h"]
    header = json.loads(ls[0])
    del header["h"]
    header["seq"] = 2
    tmp_recording.write_bytes(b"".join(ls) + sealed_line(header, prev)[0])
    report = verify(tmp_recording)
    assert [p.line for p in report.problems] == [3]
    assert "second header" in report.problems[0].message


def test_verify_reply_checks_and_in_flight(tmp_recording: Path) -> None:
    write(
        tmp_recording,
        [
            Command(src="p", role="primary", msg={"execute": "a"}),  # 1, answered
            Reply(cmd=1, msg={"return": {}}),  # 2
            Command(src="p", role="primary", msg={"execute": "b"}),  # 3, in flight
            Reply(cmd=1, msg={"return": {}}),  # 4: second reply
            Reply(cmd=2, msg={"return": {}}),  # 5: names a reply
            Reply(cmd=9, msg={"return": {}}),  # 6: names a later seq
        ],
    )
    report = verify(tmp_recording)
    assert [p.line for p in report.problems] == [5, 6, 7]
    assert [c.seq for c in report.in_flight] == [3]
    assert not report.ok


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=60))
def test_pending_pairs_a_reply_with_its_command_once_and_stays_bounded(steps: list[tuple[bool, int]]) -> None:
    from qmprr.recording.pairs import Pending

    dropped: list[int] = []
    pending: Pending[int] = Pending(limit=5, on_drop=dropped.append)
    model: dict[int, int] = {}
    for is_command, seq in steps:
        if is_command:
            pending.command(seq, seq)
            model[seq] = seq
            if len(model) > 5:
                oldest = next(iter(model))
                assert dropped[-1] == model.pop(oldest)
        else:
            assert pending.find(seq) == model.get(seq)
            assert pending.reply(seq) == model.pop(seq, None)
            assert pending.reply(seq) is None  # a second reply answers nothing
        assert len(pending) == len(model) <= 5
        assert pending.values() == list(model.values())
    assert pending.reply("1") is None and pending.reply(None) is None and pending.reply([1]) is None
