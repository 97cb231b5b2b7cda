"""The channel's sans-IO core, driven by hand and by hypothesis: no sockets, no QEMU, no sleeps.

A fake log (a list that can be made to fail) and a fake QEMU (replies written
as bytes) stand in for the world; time is a number passed in.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import support
from qmprr import codec, wire
from qmprr.channel_core import (
    ATTRIBUTION,
    TX_RULES,
    Answer,
    Began,
    ChannelClosed,
    ChannelCore,
    ChannelWedged,
    Closed,
    CommandInterrupted,
    Fanout,
    IdMatch,
    LogUnavailable,
    ReplyNotRecorded,
    Route,
    Runstate,
    TransactionAborted,
    TxEnded,
    TxInput,
    TxState,
    Write,
)
from qmprr.recording import ABSENT, Command, Event, Local, Note, Reply, Tx


class Sink:
    """A log in memory; ``failing`` makes every append fail as a full disk would."""

    path = "test.qmprr"

    def __init__(self) -> None:
        self.records: list[Any] = []
        self.failing = False

    def append(self, record: Any) -> Any:
        if self.failing:
            raise support.disk_full(self.path)
        record.seq = len(self.records)
        self.records.append(record)
        return record

    def of(self, kind: type) -> list[Any]:
        return [r for r in self.records if isinstance(r, kind)]

    def notes(self, text: str) -> list[Note]:
        return [r for r in self.of(Note) if text in r.text]


def make(**kwargs: Any) -> tuple[ChannelCore, Sink]:
    sink = Sink()
    return ChannelCore(sink, now=0.0, **kwargs), sink


def writes(effects: list) -> list[Write]:
    return [e for e in effects if isinstance(e, Write)]


def answers(effects: list) -> dict[Any, Answer]:
    return {e.token: e for e in effects if isinstance(e, Answer)}


def wire_id(w: Write) -> str:
    return codec.loads(w.data)["id"]


def reply_to(w: Write, value: Any = None, **extra: Any) -> bytes:
    return wire.encode({"return": value if value is not None else {}, "id": wire_id(w), **extra})


# -- by hand -------------------------------------------------------------------------------


def test_fifo_one_in_flight_and_the_client_id_restored() -> None:
    core, sink = make()
    first = writes(core.ask("a", {"execute": "query-status"}, now=0, client_id=7))
    assert len(first) == 1 and core.in_flight == "a"
    assert writes(core.ask("b", {"execute": "query-name", "id": "ignored"}, now=0)) == []
    out = core.receive(reply_to(first[0], {"running": True}), now=1)
    assert answers(out)["a"].reply == {"return": {"running": True}, "id": 7}
    [second] = writes(out)
    assert wire_id(second) == "qmprr-1" and core.in_flight == "b"
    commands = sink.of(Command)
    assert [c.msg["execute"] for c in commands] == ["query-status", "query-name"]
    assert commands[0].client_id == 7 and commands[1].client_id is ABSENT
    assert commands[1].queued == 0  # it asked at 0 and went out at 1
    # Write-ahead: the reply is recorded before it is answered.
    assert sink.of(Reply)[0].seq < commands[1].seq


@pytest.mark.parametrize("stray", [
    {"return": {}},  # no id
    {"error": {"class": "GenericError", "desc": "JSON parse error"}},  # no id
    {"return": {}, "id": "qmprr-42"},  # someone else's id
    {"return": {}, "id": None},
    {"QMP": {"version": {}}},
])
def test_a_reply_that_is_not_the_in_flight_commands_goes_to_no_one(stray: dict) -> None:
    core, sink = make()
    [w] = writes(core.ask("a", {"execute": "query-status"}, now=0))
    out = core.receive(wire.encode(stray), now=1)
    assert answers(out) == {} and core.in_flight == "a"
    [note] = sink.notes("unexpected message from QEMU")
    assert note.data["msg"] == stray
    assert answers(core.receive(reply_to(w), now=2))["a"].reply == {"return": {}}


def test_attribution_table_covers_every_reply_and_event() -> None:
    for kind in (wire.MessageKind.RETURN, wire.MessageKind.ERROR, wire.MessageKind.EVENT):
        for match in IdMatch:
            assert (kind, match) in ATTRIBUTION
    assert {route for (_k, m), (route, _) in ATTRIBUTION.items() if m is IdMatch.IN_FLIGHT} == {
        Route.REPLY, Route.EVENT}
    assert all(route is not Route.REPLY for (_k, m), (route, _) in ATTRIBUTION.items() if m is not IdMatch.IN_FLIGHT)


def test_garbage_and_events_between_replies() -> None:
    core, sink = make()
    [w] = writes(core.ask("a", {"execute": "query-status"}, now=0))
    event = {"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}
    out = core.receive(b"}]\r\n" + wire.encode(event) + reply_to(w)[:5], now=1)
    assert [e.msg for e in out if isinstance(e, Fanout)] == [event]
    assert sink.of(Event)[0].msg == event and sink.notes("unparsable data from QEMU")
    assert answers(core.receive(reply_to(w)[5:], now=1))["a"].reply == {"return": {}}


def test_wire_timeout_wedges_then_the_late_reply_resumes() -> None:
    core, sink = make(wire_timeout=10)
    [w] = writes(core.ask("a", {"execute": "dump-guest-memory"}, now=0))
    core.ask("b", {"execute": "query-status"}, now=1, src="other", client_id="b-id")
    assert core.next_deadline() == 10
    assert core.tick(9.9) == []
    out = answers(core.tick(10))
    assert isinstance(out["a"].error, ChannelWedged) and "may still complete" in str(out["a"].error)
    assert "'dump-guest-memory' (seq 0) for 10 s" in str(out["b"].error)
    assert core.runstate is Runstate.WEDGED and sink.notes("the channel is wedged")
    # Later commands are refused (and the refusal is recorded) until QEMU answers.
    late = answers(core.ask("c", {"execute": "query-name"}, now=11, src="late", client_id=3))["c"]
    assert isinstance(late.error, ChannelWedged) and late.error.recorded
    refusals = [r for r in sink.of(Local) if r.src in ("other", "late")]
    assert [r.reply["id"] for r in refusals] == ["b-id", 3]
    assert all("wedged" in r.reply["error"]["desc"] for r in refusals)
    out = core.receive(reply_to(w), now=50)
    assert answers(out) == {}  # its caller was told already
    assert sink.of(Reply)[0].cmd == 0 and sink.notes("no longer wedged")
    assert core.runstate is Runstate.RUNNING
    assert len(writes(core.ask("d", {"execute": "query-name"}, now=51))) == 1


def test_a_reply_that_cannot_be_recorded_pauses_until_the_log_works() -> None:
    core, sink = make(log_wait_timeout=100)
    [w] = writes(core.ask("a", {"execute": "stop"}, now=0))
    sink.failing = True
    out = answers(core.receive(reply_to(w), now=1))
    err = out["a"].error
    assert isinstance(err, ReplyNotRecorded) and "DID run" in str(err) and sink.path in str(err)
    assert core.runstate is Runstate.PAUSED
    assert writes(core.ask("b", {"execute": "cont"}, now=2)) == []  # waits
    core.receive(wire.encode({"event": "STOP", "timestamp": {}}), now=2)  # lost, counted
    retry = core.next_deadline()
    assert retry is not None and retry <= 1.1
    assert writes(core.tick(retry)) == []  # still failing: backs off
    assert core.next_deadline() > retry
    sink.failing = False
    out = core.tick(core.next_deadline())
    assert [wire_id(x) for x in writes(out)] == ["qmprr-1"]
    [note] = sink.notes("writable again")
    assert note.data["lost"] == {"event": 1, "reply": 1}
    assert sink.records.index(note) < sink.records.index(sink.of(Command)[-1])


def test_commands_waiting_for_a_failed_log_give_up_with_its_name() -> None:
    core, sink = make(log_wait_timeout=5)
    sink.failing = True
    first = answers(core.ask("a", {"execute": "cont"}, now=0))["a"].error  # its record failed
    assert isinstance(first, LogUnavailable) and "command not sent" in str(first)
    core.ask("b", {"execute": "cont"}, now=1)
    out: list = []
    t = 1.0
    while "b" not in answers(out):
        t = core.next_deadline()
        out = core.tick(t)
    assert t == 6 and isinstance(answers(out)["b"].error, LogUnavailable)
    assert sink.path in str(answers(out)["b"].error)


def test_qmprrs_own_quit_goes_out_while_the_log_fails() -> None:
    core, sink = make()
    sink.failing = True
    core.ask("a", {"execute": "query-status"}, now=0)  # refused: cannot be recorded
    assert core.runstate is Runstate.PAUSED
    core.ask("b", {"execute": "query-status"}, now=0)  # waits for the log
    [w] = writes(core.ask("q", {"execute": "quit"}, now=0, src="qmprr", role="internal"))
    assert codec.loads(w.data)["execute"] == "quit"
    assert core.lost["command sent unrecorded"] == 1
    sink.failing = False
    core.receive(reply_to(w), now=1)
    assert not sink.of(Reply) and sink.notes("sent unrecorded by qmprr")  # no reply naming no command
    [w] = writes(core.ask("q2", {"execute": "quit"}, now=1, src="qmprr", role="internal"))
    out = core.eof("eof", "QEMU closed the monitor connection", now=1)
    assert isinstance(answers(out)["q2"].error, CommandInterrupted)
    assert isinstance(answers(out)["b"].error, ChannelClosed)
    assert any(isinstance(e, Closed) for e in out)


def test_transaction_rules_abort_while_busy_and_refusals_recorded() -> None:
    core, sink = make()
    [began] = [e for e in core.begin("t", "dump", "owner", now=0) if isinstance(e, Began)]
    [w] = writes(core.ask("in", {"execute": "stop"}, now=0, src="owner", tx=began.tx))
    assert writes(core.ask("out", {"execute": "query-status"}, now=0, src="other")) == []
    core.ask("in2", {"execute": "cont"}, now=0, src="owner", tx=began.tx)
    out = answers(core.abort_owner("owner", "its owner disconnected", now=1))
    assert isinstance(out["in2"].error, TransactionAborted)  # queued in it: refused, recorded
    assert core.tx == began.tx  # released when the command on the wire is answered
    out = core.receive(reply_to(w), now=2)
    assert [e for e in out if isinstance(e, TxEnded)] == [TxEnded(began.tx, "abort", "its owner disconnected")]
    assert len(writes(out)) == 1 and core.in_flight == "out"
    # The owner's next command in the aborted transaction is refused, and that is recorded.
    late = answers(core.ask("again", {"execute": "cont"}, now=3, src="owner", client_id="x", tx=began.tx))
    assert isinstance(late["again"].error, TransactionAborted) and "disconnected" in str(late["again"].error)
    assert [r.reply["id"] for r in sink.of(Local) if r.src == "owner" and r.msg.get("id") == "x"] == ["x"]
    assert [(r.action, r.reason) for r in sink.of(Tx)] == [("begin", None), ("abort", "its owner disconnected")]
    assert TX_RULES[(TxState.BUSY, TxInput.ABORT)] is TxState.ABORTING


def test_a_command_asked_in_a_transaction_after_its_end_is_refused_when_it_ends() -> None:
    core, sink = make()
    [began] = [e for e in core.begin("t", "dump", "owner", now=0) if isinstance(e, Began)]
    [w] = writes(core.ask("c1", {"execute": "stop"}, now=0, src="owner", tx=began.tx))
    core.end("end", began.tx, now=0, src="owner")
    assert answers(core.ask("c2", {"execute": "cont"}, now=0, src="owner", tx=began.tx)) == {}
    out = answers(core.receive(reply_to(w), now=1))
    assert out["end"].reply == {"tx": began.tx}
    assert isinstance(out["c2"].error, TransactionAborted) and "is over: it has ended" in str(out["c2"].error)
    assert core.waiting() == [] and core.tx is None
    assert [r.reply["error"]["desc"] for r in sink.of(Local)] == [str(out["c2"].error)]  # recorded


def test_idle_transaction_is_aborted_by_the_clock() -> None:
    core, _sink = make(tx_idle_timeout=5)
    [began] = [e for e in core.begin("t", "idle", "owner", now=0) if isinstance(e, Began)]
    assert core.next_deadline() == 5
    out = core.tick(5)
    assert [e.reason for e in out if isinstance(e, TxEnded)] == ["idle for more than 5 s"]
    end = answers(core.end("e", began.tx, now=6, src="owner", client_id="e"))["e"].error
    assert isinstance(end, TransactionAborted) and "idle" in str(end) and end.recorded


def test_cancel_withdraws_a_waiting_command_and_keeps_one_in_flight() -> None:
    core, sink = make()
    [w] = writes(core.ask("a", {"execute": "query-status"}, now=0))
    core.ask("b", {"execute": "blockdev-add", "arguments": {"secret": "hunter2"}}, now=0, src="c1")
    core.cancel("b", now=1)
    [note] = sink.notes("withdrawn")
    assert note.data == {"src": "c1", "command": "blockdev-add"} and "hunter2" not in repr(note)
    core.cancel("a", now=1)  # on the wire: its reply is still recorded, answered to no one
    out = core.receive(reply_to(w), now=2)
    assert answers(out) == {} and sink.of(Reply) and core.in_flight is None


def test_impossible_inputs_are_recorded_not_raised() -> None:
    core, sink = make()
    core.ask("a", {"execute": "query-status"}, now=0)
    assert core.ask("a", {"execute": "query-status"}, now=0) == []
    assert sink.notes("impossible input")
    assert answers(core.end("e", 99, now=0))["e"].error is not None
    core.eof("eof", "gone", now=1)
    assert isinstance(answers(core.ask("z", {"execute": "x"}, now=2))["z"].error, ChannelClosed)
    assert core.receive(b'{"return": {}}', now=3) == [] and core.tick(4) == []


# -- hypothesis: arbitrary interleavings -------------------------------------------------------

CLIENTS = ("c0", "c1", "c2")
_ask = st.tuples(st.just("ask"), st.sampled_from(CLIENTS), st.booleans())
_answer = st.tuples(st.just("answer"), st.sampled_from(["return", "error"]), st.integers(1, 4))
_other = st.one_of(
    st.tuples(st.just("internal")),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("begin"), st.sampled_from(CLIENTS)),
    st.tuples(st.just("end"), st.sampled_from(CLIENTS)),
    st.tuples(st.just("abort"), st.sampled_from(CLIENTS)),
    st.tuples(st.just("stray"), st.sampled_from([
        b'{"return": {}}\r\n', b'{"error": {"class": "GenericError", "desc": "x"}}\r\n',
        b'{"return": {}, "id": "qmprr-999"}\r\n', b'{"return": {}, "id": 5}\r\n',
        b"}{]garbage\r\n", b'{"QMP": {}}\r\n', b"\xff\r\n"])),
    st.tuples(st.just("event")),
    st.tuples(st.just("time"), st.sampled_from([0.5, 3.0, 8.0, 20.0])),
    st.tuples(st.just("log"), st.booleans()),
)
# Asks and answers weigh more, so queues build up and drain.
op = st.integers(0, 99).flatmap(lambda n: _ask if n < 35 else _answer if n < 60 else _other)


class World:
    """Drives a core and checks every effect against what the fake QEMU and log saw."""

    def __init__(self) -> None:
        self.core, self.sink = make(wire_timeout=15, tx_idle_timeout=6, log_wait_timeout=10)
        self.now = 0.0
        self.next = 0
        self.asked: dict[int, dict] = {}  # token -> what was asked
        self.order: list[int] = []  # tokens in the order they asked (outside transactions)
        self.granted: list[int] = []  # ... in the order they got the wire (Write or Began)
        self.answered: dict[int, Answer | Began] = {}
        self.qemu: list[tuple[int, str]] = []  # written, not yet answered by QEMU: (token, wire id)
        self.tx_of: dict[str, int] = {}
        self.withdrawn: set[int] = set()

    def apply(self, effects: list) -> None:
        for e in effects:
            if isinstance(e, Write):
                msg = codec.loads(e.data)
                assert not self.qemu, "a second command went out while one was in flight"
                rec = [r for r in self.sink.of(Command) if r.msg["id"] == msg["id"]]
                internal = self.asked[e.token]["role"] == "internal"
                assert rec or internal, "a command went out unrecorded"
                self.qemu.append((e.token, msg["id"]))
                if self.asked[e.token]["tx"] is None:
                    self.granted.append(e.token)
            elif isinstance(e, Began):
                assert e.token not in self.answered
                self.answered[e.token] = e
                self.granted.append(e.token)
                self.tx_of[self.asked[e.token]["src"]] = e.tx
                assert self.sink.of(Tx) and self.sink.of(Tx)[-1].tx == e.tx
            elif isinstance(e, Answer):
                assert e.token not in self.answered, "answered twice"
                assert e.token not in self.withdrawn
                self.answered[e.token] = e
                a = self.asked[e.token]
                if e.reply is not None and "tx" not in e.reply:
                    # Its own reply, never another's: QEMU's reply names the token.
                    body = e.reply.get("return") or e.reply["error"]["desc"]
                    assert str(e.token) == str(body if isinstance(body, str) else body["tok"])
                    assert e.reply.get("id", ABSENT) == a["client_id"]
                    assert [r for r in self.sink.of(Reply) if r.msg.get("return", r.msg.get("error")) ==
                            e.reply.get("return", e.reply.get("error"))], "delivered unrecorded"
                elif e.error is not None and not self.sink.failing and self.core.closed_reason is None:
                    recorded = any(r.reply["error"]["desc"] == str(e.error) for r in self.sink.of(Local))
                    assert recorded or isinstance(e.error, (ChannelWedged, LogUnavailable)), e.error

    def ask(self, src: str, role: str = "primary", in_tx: bool = False) -> None:
        token = self.next
        self.next += 1
        tx = self.tx_of.get(src) if in_tx else None
        cid = f"{src}-{token}" if token % 3 else ABSENT
        self.asked[token] = {"src": src, "role": role, "tx": tx, "client_id": cid}
        if tx is None:
            self.order.append(token)
        self.apply(self.core.ask(token, {"execute": "query-status"}, now=self.now, src=src, role=role,
                                 client_id=cid, tx=tx))

    def run(self, op: tuple) -> None:
        kind = op[0]
        if kind == "ask":
            self.ask(op[1], in_tx=op[2])
        elif kind == "internal":
            self.ask("qmprr", role="internal")
        elif kind == "cancel":
            token = op[1]
            if token in self.asked and token not in self.answered:
                waiting = token in self.core.waiting()
                self.apply(self.core.cancel(token, now=self.now))
                if waiting:
                    self.withdrawn.add(token)
                elif self.core.in_flight == token:
                    self.withdrawn.add(token)  # its reply goes to no one now
        elif kind == "begin":
            token = self.next
            self.next += 1
            self.asked[token] = {"src": op[1], "role": "primary", "tx": None, "client_id": ABSENT}
            self.order.append(token)
            self.apply(self.core.begin(token, "t", op[1], now=self.now))
        elif kind == "end" and op[1] in self.tx_of:
            token = self.next
            self.next += 1
            self.asked[token] = {"src": op[1], "role": "primary", "tx": None, "client_id": ABSENT}
            self.apply(self.core.end(token, self.tx_of.pop(op[1]), now=self.now, src=op[1]))
        elif kind == "abort":
            self.apply(self.core.abort_owner(op[1], "gone", now=self.now))
        elif kind == "answer" and self.qemu:
            token, wid = self.qemu.pop(0)
            body = {"return": {"tok": token}} if op[1] == "return" else {
                "error": {"class": "GenericError", "desc": str(token)}}
            data = wire.encode({**body, "id": wid})
            cut = len(data) * op[2] // 5
            self.apply(self.core.receive(data[:cut], now=self.now))
            self.apply(self.core.receive(data[cut:], now=self.now))
        elif kind == "stray":
            self.apply(self.core.receive(op[1], now=self.now))
        elif kind == "event":
            n = len(self.sink.records)
            self.apply(self.core.receive(wire.encode({"event": "X", "data": {"n": n}, "timestamp": {}}), now=self.now))
        elif kind == "time":
            self.now += op[1]
            self.apply(self.core.tick(self.now))
        elif kind == "log":
            self.sink.failing = op[1]
        self.check()

    def check(self) -> None:
        # FIFO: outside transactions, the wire is granted in the order of asking.
        position = {t: i for i, t in enumerate(self.order)}
        granted = [position[t] for t in self.granted if self.asked[t]["role"] != "internal"]
        assert granted == sorted(granted), "FIFO order broken"
        in_flight = self.core.in_flight
        assert (in_flight is None) or (self.qemu and self.qemu[0][0] == in_flight)

    def finish(self) -> None:
        self.sink.failing = False
        self.apply(self.core.eof("eof", "done", now=self.now))
        for token, asked in self.asked.items():
            if token in self.withdrawn:
                continue
            assert token in self.answered or asked.get("ended"), f"token {token} never answered"
        for answer in self.answered.values():
            if isinstance(answer, Answer) and answer.error is not None and asked_in_flight(answer):
                assert isinstance(answer.error, (CommandInterrupted, ChannelWedged, ReplyNotRecorded))


def asked_in_flight(answer: Answer) -> bool:
    return isinstance(answer.error, CommandInterrupted)


@settings(max_examples=300)
@given(st.lists(op, min_size=5, max_size=80))
def test_any_interleaving_keeps_order_attribution_and_the_log(ops: list[tuple]) -> None:
    world = World()
    for o in ops:
        world.run(o)
    world.finish()
    # Every exchange is in the log: each reply record names a command record.
    commands = {r.seq for r in world.sink.of(Command)}
    assert all(r.cmd in commands for r in world.sink.of(Reply))


# -- messages read together: one write for their records -------------------------------------


class BatchSink(Sink):
    """A sink that also takes several reply/event records at once, as RecordWriter.append_many."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def append_many(self, records: list[tuple[int | None, dict[str, Any]]]) -> list[int]:
        if self.failing:
            raise support.disk_full(self.path)
        self.batches.append(len(records))
        return [self.append(Event(msg=msg) if cmd is None else Reply(cmd=cmd, msg=msg)).seq
                for cmd, msg in records]


def test_a_reply_and_events_read_together_are_recorded_with_one_write_before_any_effect() -> None:
    sink = BatchSink()
    core = ChannelCore(sink, now=0.0)
    [w] = writes(core.ask("a", {"execute": "stop"}, now=0))
    assert writes(core.ask("b", {"execute": "query-status"}, now=0)) == []
    data = (wire.encode({"event": "STOP", "data": {}}) + reply_to(w)
            + wire.encode({"event": "X", "data": {"n": 1}}))
    out = core.receive(data, now=1)
    assert sink.batches == [3]
    kinds = [type(r).__name__ for r in sink.records]
    # The three in wire order, then the next command (its record before its bytes go out).
    assert kinds == ["Command", "Event", "Reply", "Event", "Command"]
    # The next command goes out before the reply is handed over (both recorded already).
    assert [type(e).__name__ for e in out] == ["Fanout", "Write", "Answer", "Fanout"]
    assert answers(out)["a"].reply == {"return": {}}
    assert sink.of(Reply)[0].cmd == sink.of(Command)[0].seq


def test_a_batch_that_cannot_be_written_withholds_the_reply_and_the_events() -> None:
    sink = BatchSink()
    core = ChannelCore(sink, now=0.0)
    [w] = writes(core.ask("a", {"execute": "stop"}, now=0))
    sink.failing = True
    out = core.receive(wire.encode({"event": "STOP"}) + reply_to(w), now=1)
    assert isinstance(answers(out)["a"].error, ReplyNotRecorded)
    assert not [e for e in out if isinstance(e, Fanout)]
    assert core.runstate is Runstate.PAUSED and core.lost == {"event": 1, "reply": 1}


def test_messages_read_together_with_a_stray_go_one_by_one() -> None:
    sink = BatchSink()
    core = ChannelCore(sink, now=0.0)
    [w] = writes(core.ask("a", {"execute": "stop"}, now=0))
    out = core.receive(wire.encode({"return": {}, "id": "qmprr-77"}) + reply_to(w), now=1)
    assert sink.batches == [] and answers(out)["a"].reply == {"return": {}}
    assert sink.notes("unexpected message from QEMU")
