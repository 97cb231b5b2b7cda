"""The hot path's records (command, reply, event built straight to bytes) are the typed path's.

A hypothesis property drives two encoders (and two writers) with the same
sequence of records, one through ``encode(convert.unstructure(record))`` and
one through the direct builders (falling back to the typed path where they
decline, as the writer does), with and without redaction rules, secret
values and a seal key: every line and every hash must be byte-identical.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from qmprr import codec
from qmprr.recording import ABSENT, Command, Event, Msg, RecordWriter, Reply, convert
from qmprr.recording.chain import SealKey
from qmprr.recording.encode import LineEncoder
from qmprr.recording.redact import NO_REDACTION, Redactor
from test_wire import INT64, json_values, text

SECRET = "hunter2-secret-value"
# Commands the redaction rules look at, and ones they do not; a value that is a known secret.
names = st.sampled_from(["query-status", "object-add", "qom-get", "human-monitor-command",
                         "blockdev-add", "x-custom", "qom-set"])
leaf = st.one_of(json_values, st.just(SECRET), st.integers(min_value=2**64, max_value=2**70))
arguments = st.dictionaries(st.sampled_from(["id", "qom-type", "data", "path", "property", "password",
                                             "command-line", "node-name", "file"]) | text, leaf, max_size=4)


@st.composite
def commands(draw: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"execute": draw(names), "id": f"qmprr-{draw(st.integers(0, 10**6))}"}
    if draw(st.booleans()):
        msg["arguments"] = draw(arguments)
    return msg


op = st.one_of(
    st.tuples(st.just("command"), commands(), st.sampled_from(["primary-1", "debug-2", "qmprr", 'q"\\é']),
              st.sampled_from(["primary", "debug", "internal"]), st.one_of(st.just(ABSENT), json_values),
              st.none() | st.integers(1, 99), st.none() | st.floats(0, 1e6)),
    st.tuples(st.just("reply"), st.dictionaries(st.sampled_from(["return", "error", "id"]), leaf, max_size=3)),
    st.tuples(st.just("event"), st.fixed_dictionaries({"event": text}, optional={"data": json_values})),
)
redactors = st.sampled_from([
    Redactor(), NO_REDACTION, Redactor().with_values([SECRET]),
])
times = st.floats(min_value=0, max_value=1e7, allow_nan=False)


def _typed(op: tuple[Any, ...], seq: int, t: float, last_cmd: int) -> dict[str, Any]:
    kind = op[0]
    if kind == "command":
        _, msg, src, role, client_id, tx, queued = op
        record: Any = Command(src=src, role=role, msg=Msg(msg), client_id=client_id, tx=tx, queued=queued)
    elif kind == "reply":
        record = Reply(cmd=last_cmd, msg=Msg(op[1]))
    else:
        record = Event(msg=Msg(op[1]))
    record.seq, record.t = seq, t
    return convert.unstructure(record)


@given(st.lists(st.tuples(op, times), max_size=12), redactors, st.booleans())
def test_direct_lines_are_the_typed_lines(ops: list[tuple[Any, float]], redactor: Redactor, sealed: bool) -> None:
    key = SealKey.from_bytes(b"k" * 32) if sealed else None
    typed, direct = LineEncoder(redactor, key), LineEncoder(redactor, key)
    last_cmd = 0
    for seq, (o, t) in enumerate(ops, start=1):
        expected = typed.encode(_typed(o, seq, t, last_cmd))
        if o[0] == "command":
            _, msg, src, role, client_id, tx, queued = o
            wire_bytes = codec.dumps(msg) if seq % 2 else None  # the channel passes the bytes it sends
            got = direct.encode_command(seq, t, src, role, msg, client_id, tx, queued, wire_bytes)
        elif o[0] == "reply":
            got = direct.encode_reply(seq, t, last_cmd, o[1])
        else:
            got = direct.encode_event(seq, t, o[1])
        if got is None:  # declined: the writer takes the typed path
            got = direct.encode(_typed(o, seq, t, last_cmd))
        assert got == expected
        typed.commit(expected[1])
        direct.commit(got[1])
        if o[0] == "command":
            last_cmd = seq


@given(st.lists(op, min_size=1, max_size=8), st.integers(0, 2**31))
def test_writer_hot_path_writes_the_same_file(tmp_path_factory: Any, ops: list[Any], tag: int) -> None:
    """The writer's append_command/reply/event against append(Record) on the same clock."""
    folder = tmp_path_factory.mktemp("enc")
    clock = iter(range(10**6))
    import qmprr.recording.writer as writer_module

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return next(clock) / 8

        time = staticmethod(lambda: 1.7e9)

    real = writer_module.time
    writer_module.time = Clock  # type: ignore[assignment]  # a deterministic clock for both writers
    try:
        files = []
        for hot in (False, True):
            path = os.path.join(folder, f"{hot}-{tag}.jsonl")
            clock = iter(range(10**6))
            header = writer_module.new_header()
            header.started, header.started_epoch, header.host = "then", 1.0, "h"
            with RecordWriter.create(path, header, sync="none") as log:
                last = 0
                for o in ops:
                    if o[0] == "command":
                        _, msg, src, role, client_id, tx, queued = o
                        if hot:
                            last = log.append_command(src=src, role=role, msg=msg, client_id=client_id,
                                                      tx=tx, queued=queued)
                        else:
                            last = log.append(Command(src=src, role=role, msg=Msg(msg), client_id=client_id,
                                                      tx=tx, queued=queued)).seq
                    elif o[0] == "reply":
                        if hot:
                            log.append_reply(cmd=last, msg=o[1])
                        else:
                            log.append(Reply(cmd=last, msg=Msg(o[1])))
                    elif hot:
                        log.append_event(msg=o[1])
                    else:
                        log.append(Event(msg=Msg(o[1])))
            with open(path, "rb") as f:
                files.append(f.read())
        assert files[0] == files[1]
    finally:
        writer_module.time = real  # type: ignore[assignment]


def test_fast_path_is_taken_for_plain_commands() -> None:
    """Not a vacuous property: the builders do produce lines for ordinary traffic."""
    enc = LineEncoder(Redactor())
    assert enc.encode_command(1, 0.5, "primary-1", "primary", {"execute": "query-status", "id": "qmprr-1"},
                              ABSENT, None, None) is not None
    assert enc.encode_reply(2, 0.6, 1, {"return": {}, "id": "qmprr-1"}) is not None
    assert enc.encode_event(3, 0.7, {"event": "STOP"}) is not None
    assert enc.encode_command(1, 0.5, "p", "primary", {"execute": "object-add", "arguments": {}}, ABSENT,
                              None, None) is None  # redaction looks at it
    assert INT64 is not None


def test_append_many_is_one_write_of_the_same_lines_or_nothing(tmp_path: Any, monkeypatch: Any) -> None:
    import qmprr.recording.writer as writer_module
    from qmprr.errors import RecordingError
    from qmprr.recording import verify

    ticks = iter(range(10**6))
    monkeypatch.setattr(writer_module.time, "monotonic", lambda: next(ticks) / 8)
    records = [(None, {"event": "STOP"}), (1, {"return": {}, "id": "qmprr-0"}), (None, {"event": "X", "data": {}})]
    files = []
    for many in (False, True):
        ticks = iter(range(10**6))
        path = tmp_path / f"{many}.jsonl"
        header = writer_module.new_header()
        header.started, header.started_epoch = "then", 1.0
        with RecordWriter.create(path, header, sync="none") as log:
            log.append_command(src="p", role="primary", msg={"execute": "stop", "id": "qmprr-0"})
            if many:
                writes: list[bytes] = []
                real = os.write

                def counted(fd: int, data: bytes, writes: list[bytes] = writes, real: Any = real) -> int:
                    writes.append(data)
                    return real(fd, data)  # type: ignore[no-any-return]

                monkeypatch.setattr(writer_module.os, "write", counted)
                assert log.append_many(records) == [2, 3, 4]
                monkeypatch.setattr(writer_module.os, "write", real)
                assert len(writes) == 1 and writes[0].count(b"\n") == 3
            else:
                for cmd, msg in records:
                    log.append_event(msg=msg) if cmd is None else log.append_reply(cmd=cmd, msg=msg)
        files.append(path.read_bytes())
    assert files[0] == files[1]
    # A failed batch leaves nothing: the next record chains on the last one written.
    path = tmp_path / "fail.jsonl"
    with RecordWriter.create(path, sync="none") as log:
        log.append_command(src="p", role="primary", msg={"execute": "stop", "id": "qmprr-0"})
        monkeypatch.setattr(writer_module.os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(28, "No space")))
        try:
            log.append_many(records)
        except RecordingError:
            pass
        else:
            raise AssertionError("the batch should have failed")
        monkeypatch.undo()
        assert log.append_reply(cmd=1, msg={"return": {}}) == 2
    assert verify(path).ok


@given(commands(), st.one_of(st.none(), st.integers(), text), st.integers(0, 10**9))
def test_command_sent_from_its_body_is_the_encoded_command(msg: dict[str, Any], client_id: Any, n: int) -> None:
    """The serve loop's body with qmprr's id spliced in is what encoding the sent dict gives."""
    from qmprr import wire
    from qmprr.session import command_body

    if client_id is not None:
        msg = {**msg, "id": client_id}
    wire_id = f"qmprr-{n}"
    sent = {k: v for k, v in msg.items() if k != "id"}
    sent["id"] = wire_id
    assert wire.encode_with_id(command_body(msg), wire_id) == wire.encode(sent)
