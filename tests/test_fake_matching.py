"""The fake's decisions through ReplayPolicy, Python matchers, and sets continued by new segments (no QEMU)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmprr.fake import FakeQemu, MatchError, register_matcher, unregister_matcher
from qmprr.fake_forward import continuation
from qmprr.recording import RecordingReader, sets, verify
from qmprr.replay.policy import ReplayPolicy
from qmprr.replay.script import Exchange, load_script
from qmprr.replay.targets import log_factory
from replay_support import RECORDINGS, Step, write_recording

LIFECYCLE = RECORDINGS / "lifecycle.jsonl"
HOTPLUG = RECORDINGS / "hotplug.jsonl"


def cmd(name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"execute": name, **({"arguments": arguments} if arguments is not None else {})}


# -- the fake's decisions are the replay policy's ---------------------------------------------


def test_fake_policy_skips_internal_and_refuses_unanswered() -> None:
    policy = ReplayPolicy.for_fake()
    assert policy.decide(Exchange("quit", role="internal", reply={"return": {}})).action == "skip"
    refused = policy.decide(Exchange("stop", seq=9))
    assert refused.action == "refuse" and "no reply to stop (seq 9)" in (refused.reason or "")
    assert policy.decide(Exchange("stop", reply={"return": {}})).action == "send"
    # replay's policy sends internal commands and unanswered ones (nothing to compare, but sent)
    assert ReplayPolicy().decide(Exchange("quit", role="internal")).action == "send"
    assert ReplayPolicy.for_fake(internal=True).decide(Exchange("quit", role="internal", reply={})).action == "send"


def test_fake_serves_what_the_policy_allows(tmp_path: Path) -> None:
    rec = write_recording(tmp_path / "r.jsonl", [Step("query-status", reply={"return": {"running": True}}),
                                                 Step("quit", role="internal"), Step("stop", reply=None)])
    fake = FakeQemu.from_recording(rec, mode="strict")
    assert [e.command for e in fake.script.exchanges] == ["query-status", "stop"]  # internal skipped
    assert fake.respond(cmd("query-status")).reply == {"return": {"running": True}}
    response = fake.respond(cmd("stop"))
    assert "in flight when recording ended" in response.reply["error"]["desc"] and response.refused
    # a policy given explicitly decides instead (here: internal commands are served too)
    fake = FakeQemu.from_recording(rec, mode="strict", policy=ReplayPolicy.for_fake(internal=True))
    assert [e.command for e in fake.script.exchanges] == ["query-status", "quit", "stop"]


# -- Python matchers ---------------------------------------------------------------------------


def same_id(recorded: dict[str, Any], actual: dict[str, Any]) -> None:
    if recorded["arguments"]["id"] != actual["arguments"]["id"]:
        raise MatchError(f"id {actual['arguments']['id']!r} is not the recorded {recorded['arguments']['id']!r}")


def test_a_matcher_refuses_with_its_message_and_replaces_the_argument_comparison() -> None:
    register_matcher("same-id", same_id)
    try:
        fake = FakeQemu.from_recording(HOTPLUG, mode="lenient", matchers=["same-id"])
        reply = fake.respond(cmd("device_del", {"id": "mouse0"})).reply
        assert reply["error"]["desc"] == (
            "qmprr fake: device_del was recorded (seq 12), but matcher 'same-id': id 'mouse0' is not the recorded 'kbd0'"
        )
        # extra arguments do not matter to this matcher: it looks at the id only
        answered = fake.respond(cmd("device_del", {"id": "tablet0", "extra": 1}))
        assert answered.seq == 15 and "return" in answered.reply
        assert fake.report().unmatched[0].reason.endswith("id 'mouse0' is not the recorded 'kbd0'")
    finally:
        unregister_matcher("same-id")


def test_matchers_with_arguments_and_every_way_to_refuse() -> None:
    def returns_false(recorded: dict[str, Any], actual: dict[str, Any]) -> bool:
        return False

    def asserts(recorded: dict[str, Any], actual: dict[str, Any]) -> None:
        assert actual.get("arguments", {}).get("ok"), "wants ok"

    def buggy(recorded: dict[str, Any], actual: dict[str, Any]) -> None:
        raise KeyError("oops")

    for matcher, text in ((returns_false, "matcher 'returns_false': no match"), (asserts, "wants ok"),
                          (buggy, "matcher 'buggy': 'oops'")):
        fake = FakeQemu.from_recording(LIFECYCLE, mode="strict", matchers=["arguments", matcher])
        assert text in fake.respond(cmd("query-status")).reply["error"]["desc"]
    # with "arguments" kept, other arguments are refused before the matcher is asked
    fake = FakeQemu.from_recording(HOTPLUG, mode="ordered", matchers=["arguments", lambda r, a: True])
    assert "with other arguments" in fake.respond(cmd("device_del", {"id": "nope"})).reply["error"]["desc"]


def test_matcher_names_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown matcher 'nope'"):
        FakeQemu.from_recording(LIFECYCLE, matchers=["nope"])
    with pytest.raises(ValueError, match="built in"):
        register_matcher("arguments", same_id)
    with pytest.raises(TypeError, match="not callable"):
        register_matcher("x", 3)  # type: ignore[arg-type]


NAMES = ["query-status", "stop", "cont", "system_reset", "quit", "query-name"]


@given(st.lists(st.sampled_from(NAMES), max_size=12), st.sampled_from(["strict", "ordered", "lenient"]),
       st.booleans())
def test_an_accepting_matcher_changes_nothing(names: list[str], mode: str, reuse: bool) -> None:
    """Python matchers take the scanning path; one that accepts all must answer as the indexed path does."""
    script = load_script(LIFECYCLE)
    plain = FakeQemu(script, mode=mode, reuse=reuse)  # type: ignore[arg-type]
    scanned = FakeQemu(script, mode=mode, reuse=reuse, matchers=["arguments", lambda r, a: True])  # type: ignore[arg-type]
    for name in names:
        a, b = plain.respond(cmd(name)), scanned.respond(cmd(name))
        assert (a.reply, a.events_before, a.events_after, a.seq) == (b.reply, b.events_before, b.events_after, b.seq)
    ra, rb = plain.report(), scanned.report()
    assert (ra.answered, [e.seq for e in ra.unused]) == (rb.answered, [e.seq for e in rb.unused])
    assert [u.reason for u in ra.unmatched] == [u.reason for u in rb.unmatched]


# -- a plain recording continued by a segment reads as one set -------------------------------


def _append_segment(path: Path, command: str) -> Path:
    target, link = continuation(str(path))
    make = log_factory(target, None, {"made-by": "tests"}, link=link)
    from qmprr.recording import Command, Greeting, Msg, Reply

    with make({"QMP": {"version": {}, "capabilities": []}}) as writer:
        writer.append(Greeting(msg=Msg({"QMP": {"version": {}, "capabilities": []}})))
        sent = writer.append(Command(src="primary-1", role="primary", msg=Msg(cmd(command))))
        writer.append(Reply(cmd=sent.seq, msg=Msg({"return": {}})))
    return Path(target)


def test_a_plain_file_and_its_continuations_are_one_chain(tmp_path: Path) -> None:
    rec = tmp_path / "vm.jsonl"
    shutil.copy(LIFECYCLE, rec)
    second = _append_segment(rec, "query-name")
    assert second.name == "vm.000002.jsonl"
    third = _append_segment(rec, "query-kvm")
    assert third.name == "vm.000003.jsonl"
    assert sets.resolve(str(rec)) == [str(rec), str(second), str(third)]
    assert sets.resolve(str(tmp_path)) == [str(rec), str(second), str(third)]  # the folder too
    checked = verify(rec, jobs=1)
    assert checked.ok, checked.problems
    with RecordingReader(rec) as reader:
        names = [r.msg["execute"] for r in reader if r.kind == "command"]  # type: ignore[attr-defined]
    assert names[-2:] == ["query-name", "query-kvm"]
    fake = FakeQemu.from_recording(rec, mode="lenient")
    assert fake.respond(cmd("query-kvm")).seq is not None  # the fake serves the whole set
    # a segment that does not name the file is not its continuation
    other = tmp_path / "other.jsonl"
    shutil.copy(LIFECYCLE, other)
    shutil.copy(second, tmp_path / "other.000002.jsonl")
    assert sets.resolve(str(other)) == [str(other)]
    # the set is one recording: a change in the continued file fails it
    rec.write_bytes(rec.read_bytes().replace(b'"running":true', b'"running":false', 1))
    assert not verify(rec, jobs=1).ok
