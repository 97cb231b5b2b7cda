"""The sans-IO client session: negotiation, triage, transactions, policy. No sockets.

Error shapes and texts are QEMU 7.2's (checked by hand, and against a real
QEMU in ``test_clients.py::test_errors_match_qemu``).
"""

from __future__ import annotations

from typing import Any

import pytest

from qmprr import wire
from qmprr.recording import ABSENT
from qmprr.session import (
    DEFAULT_DEBUG_DENY,
    TX_BEGIN,
    TX_END,
    Answer,
    DETACH,
    BeginTx,
    ClientSession,
    Detach,
    EndTx,
    Forward,
    Policy,
    State,
    client_greeting,
    qmp_error,
    qmp_return,
)

GREETING = {
    "QMP": {
        "version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "test"},
        "capabilities": ["oob"],
    }
}
GREETING_NO_OOB = {"QMP": {"version": GREETING["QMP"]["version"], "capabilities": []}}

EXPECTING = "Expecting capabilities negotiation with 'qmp_capabilities'"
ALREADY = "Capabilities negotiation is already complete, command ignored"

#: Client ids are any JSON value; each must come back as it was.
IDS = [1, "abc", None, 0, "", {"a": [1, None]}, [1, 2], 2.5, True]


def negotiated(role: str = "primary", policy: Policy | None = None) -> ClientSession:
    session = ClientSession(GREETING, role=role, policy=policy)
    action = session.handle({"execute": "qmp_capabilities"})
    assert action == Answer(qmp_return(), msg={"execute": "qmp_capabilities"})
    assert session.negotiated
    return session


def error_of(action: Any) -> tuple[str, str]:
    assert isinstance(action, Answer), action
    err = action.reply["error"]
    assert set(err) == {"class", "desc"}
    return err["class"], err["desc"]


def hmp(line: str, **extra: Any) -> dict[str, Any]:
    return {"execute": "human-monitor-command", "arguments": {"command-line": line}, **extra}


# -- reply builders -------------------------------------------------------------


def test_qmp_error_and_return_shapes() -> None:
    assert qmp_error("boom") == {"error": {"class": "GenericError", "desc": "boom"}}
    assert qmp_error("boom", "CommandNotFound", id=None) == {
        "error": {"class": "CommandNotFound", "desc": "boom"},
        "id": None,
    }
    assert qmp_return() == {"return": {}}
    assert qmp_return([], id=0) == {"return": [], "id": 0}
    assert qmp_return({"a": 1}, id="x") == {"return": {"a": 1}, "id": "x"}


# -- before negotiation ------------------------------------------------------------


@pytest.mark.parametrize("cid", IDS)
def test_command_before_negotiation_is_command_not_found_with_its_id(cid: Any) -> None:
    session = ClientSession(GREETING)
    msg = {"execute": "query-status", "id": cid}
    action = session.handle(msg)
    assert action == Answer(
        {"error": {"class": "CommandNotFound", "desc": EXPECTING}, "id": cid}, msg=msg
    )
    assert action.reply["id"] == cid and type(action.reply["id"]) is type(cid)
    assert session.state is State.GREETED and not session.negotiated


def test_command_before_negotiation_without_id_has_no_id() -> None:
    session = ClientSession(GREETING)
    action = session.handle({"execute": "query-status"})
    assert isinstance(action, Answer)
    assert action.reply == {"error": {"class": "CommandNotFound", "desc": EXPECTING}}


@pytest.mark.parametrize("name", [TX_BEGIN, TX_END, "quit", "human-monitor-command"])
def test_nothing_but_qmp_capabilities_works_before_negotiation(name: str) -> None:
    session = ClientSession(GREETING, role="debug")
    action = session.handle({"execute": name, "arguments": {"label": "x"}, "id": 9})
    assert error_of(action) == ("CommandNotFound", EXPECTING)
    assert action.reply["id"] == 9
    assert not session.negotiated


def test_qmp_capabilities_without_arguments() -> None:
    session = ClientSession(GREETING)
    msg = {"execute": "qmp_capabilities", "id": "neg"}
    assert session.handle(msg) == Answer({"return": {}, "id": "neg"}, msg=msg)
    assert session.state is State.NEGOTIATED
    assert session.capabilities == []


@pytest.mark.parametrize("enable", [[], ["oob"]])
def test_qmp_capabilities_enables_offered_capabilities(enable: list[str]) -> None:
    session = ClientSession(GREETING)
    msg = {"execute": "qmp_capabilities", "arguments": {"enable": enable}, "id": 1}
    action = session.handle(msg)
    assert action == Answer({"return": {}, "id": 1}, msg=msg)
    assert session.negotiated
    assert session.capabilities == enable


def test_unknown_capability_is_refused_with_qemus_text() -> None:
    session = ClientSession(GREETING)
    msg = {"execute": "qmp_capabilities", "arguments": {"enable": ["foo"]}, "id": "x"}
    action = session.handle(msg)
    assert action == Answer(
        {"error": {"class": "GenericError", "desc": "Parameter 'null' does not accept value 'foo'"}, "id": "x"},
        msg=msg,
    )
    # Still not negotiated: a command is refused, and negotiating properly works.
    assert not session.negotiated
    assert error_of(session.handle({"execute": "query-status"})) == ("CommandNotFound", EXPECTING)
    assert session.handle({"execute": "qmp_capabilities"}).reply == {"return": {}}
    assert session.negotiated


def test_oob_is_refused_when_the_greeting_does_not_offer_it() -> None:
    # What clients of qmprr meet: its greeting offers no capabilities.
    session = ClientSession(client_greeting(GREETING))
    action = session.handle({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": 1})
    # QEMU 7.2, monitor/qmp-cmds-control.c qmp_caps_accept(): a capability QEMU
    # knows but did not offer is "Capability %s not available"; "Parameter 'null'
    # does not accept value" is only for names that are not capabilities at all.
    assert error_of(action) == ("GenericError", "Capability oob not available")
    assert action.reply["id"] == 1
    assert not session.negotiated
    assert session.handle({"execute": "qmp_capabilities"}).reply == {"return": {}}


def test_unknown_capability_is_still_unknown_when_nothing_is_offered() -> None:
    session = ClientSession(GREETING_NO_OOB)
    action = session.handle({"execute": "qmp_capabilities", "arguments": {"enable": ["foo"]}})
    assert error_of(action) == ("GenericError", "Parameter 'null' does not accept value 'foo'")


def test_client_greeting_keeps_the_version_and_offers_nothing() -> None:
    seen = client_greeting(GREETING)
    assert seen == {"QMP": {"version": GREETING["QMP"]["version"], "capabilities": []}}
    assert GREETING["QMP"]["capabilities"] == ["oob"]  # QEMU's own greeting is not changed
    odd = {"QMP": "weird"}
    assert client_greeting(odd) == odd  # type: ignore[arg-type]


def test_a_greeting_that_is_not_an_object_offers_nothing() -> None:
    session = ClientSession({"QMP": "weird"})  # type: ignore[dict-item]
    assert isinstance(session.handle({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}), Answer)
    assert not session.negotiated
    assert session.handle({"execute": "qmp_capabilities"}).reply == {"return": {}}


@pytest.mark.parametrize(
    "arguments, desc",
    [
        ([], "QMP input member 'arguments' must be an object"),
        ("oob", "QMP input member 'arguments' must be an object"),
        ({"bogus": 1}, "Parameter 'bogus' is unexpected"),
        ({"enable": "oob"}, "Invalid parameter type for 'enable', expected: array"),
        ({"enable": None}, "Invalid parameter type for 'enable', expected: array"),
    ],
)
def test_malformed_qmp_capabilities(arguments: Any, desc: str) -> None:
    session = ClientSession(GREETING)
    action = session.handle({"execute": "qmp_capabilities", "arguments": arguments, "id": 4})
    assert error_of(action) == ("GenericError", desc)
    assert action.reply["id"] == 4
    assert not session.negotiated


# -- after negotiation -----------------------------------------------------------


@pytest.mark.parametrize("cid", [ABSENT, 3, None])
def test_second_qmp_capabilities_is_command_not_found(cid: Any) -> None:
    session = negotiated()
    msg: dict[str, Any] = {"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}
    if cid is not ABSENT:
        msg["id"] = cid
    action = session.handle(msg)
    expected: dict[str, Any] = {"error": {"class": "CommandNotFound", "desc": ALREADY}}
    if cid is not ABSENT:
        expected["id"] = cid
    assert action == Answer(expected, msg=msg)
    assert session.negotiated
    assert session.capabilities == []  # the ignored command changed nothing


@pytest.mark.parametrize("cid", IDS)
def test_commands_are_forwarded_with_the_client_id(cid: Any) -> None:
    session = negotiated()
    msg = {"execute": "query-status", "id": cid}
    action = session.handle(msg)
    assert isinstance(action, Forward)
    assert action.msg is msg
    assert action.client_id == cid and type(action.client_id) is type(cid)


def test_a_command_without_id_is_forwarded_with_absent_id() -> None:
    session = negotiated()
    action = session.handle({"execute": "query-status"})
    assert action == Forward({"execute": "query-status"}, ABSENT)
    assert action.client_id is ABSENT


SHAPE_ERRORS = [
    ({"id": 1}, "QMP input lacks member 'execute'"),
    ({"execute": 42, "id": 1}, "QMP input member 'execute' must be a string"),
    ({"execute": None, "id": 1}, "QMP input member 'execute' must be a string"),
    ({"execute": "query-name", "extra": 1, "id": 1}, "QMP input member 'extra' is unexpected"),
    ({"execute": "qmp_capabilities", "extra": 1, "id": 1}, "QMP input member 'extra' is unexpected"),
    ({"execute": "query-name", "arguments": [], "id": 1}, "QMP input member 'arguments' must be an object"),
    ({"execute": "query-name", "arguments": None, "id": 1}, "QMP input member 'arguments' must be an object"),
    ({"exec-oob": "query-name", "id": 1}, "QMP input member 'exec-oob' is unexpected"),
    ({"execute": "query-name", "exec-oob": "query-name", "id": 1}, "QMP input member 'exec-oob' is unexpected"),
]


@pytest.mark.parametrize("msg, desc", SHAPE_ERRORS)
@pytest.mark.parametrize("role, negotiate", [("primary", False), ("primary", True), ("debug", True)])
def test_malformed_commands_get_qemus_errors_in_any_state(
    msg: dict[str, Any], desc: str, role: str, negotiate: bool
) -> None:
    # QEMU checks a request's shape before the negotiation state and the name
    # (qmp_dispatch_check_obj); these texts are QEMU 7.2's.
    session = negotiated(role) if negotiate else ClientSession(GREETING, role=role)
    action = session.handle(msg)
    assert action == Answer({"error": {"class": "GenericError", "desc": desc}, "id": 1}, msg=msg)
    assert session.negotiated is negotiate


# -- framing errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, desc",
    [
        (b'{"execute": x}\n', "JSON parse error, invalid keyword 'x'"),
        (b"42\n", "QMP input must be a JSON object"),
        (b"[1, 2]", "QMP input must be a JSON object"),
        (b'{"execute": "q\xffs", "id": 1}', "JSON parse error, stray '\"q\ufffd'"),  # QEMU 7.2's text
    ],
)
@pytest.mark.parametrize("negotiate", [False, True])
def test_framing_error_is_answered_without_id(data: bytes, desc: str, negotiate: bool) -> None:
    session = negotiated() if negotiate else ClientSession(GREETING)
    items = wire.StreamDecoder().feed(data)
    assert items and all(isinstance(i, wire.FramingError) for i in items)
    action = session.handle(items[0])
    assert isinstance(action, Answer)
    assert action.reply == {"error": {"class": "GenericError", "desc": desc}}
    assert action.msg is None
    assert action.input == items[0].excerpt and data.startswith(action.input)
    assert session.negotiated is negotiate  # a framing error changes no state


def test_framing_error_input_is_at_most_64_bytes() -> None:
    data = b'{"execute": "' + b"a" * 300 + b'",}\n'
    (item,) = wire.StreamDecoder().feed(data)
    action = negotiated().handle(item)
    assert isinstance(action, Answer) and action.input == data[:64]


# -- out-of-band -------------------------------------------------------------------------


@pytest.mark.parametrize("negotiate", [False, True])
def test_exec_oob_is_refused_with_its_id(negotiate: bool) -> None:
    # Never forwarded: the channel serializes everything. The text is QEMU's for
    # a client that did not negotiate oob (as no client of qmprr can).
    session = ClientSession(client_greeting(GREETING))
    if negotiate:
        session.handle({"execute": "qmp_capabilities"})
    msg = {"exec-oob": "migrate-pause", "id": "o1"}
    action = session.handle(msg)
    assert action == Answer(
        {"error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}, "id": "o1"},
        msg=msg,
    )
    assert session.negotiated is negotiate


def test_exec_oob_without_id_is_refused_without_id() -> None:
    action = negotiated().handle({"exec-oob": "query-status"})
    assert isinstance(action, Answer) and "id" not in action.reply


# -- transactions ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["primary", "debug"])
def test_transaction_begin_with_label(role: str) -> None:
    session = negotiated(role)
    msg = {"execute": TX_BEGIN, "arguments": {"label": "dump"}, "id": "t1"}
    assert session.handle(msg) == BeginTx("dump", msg, "t1")


def test_transaction_begin_with_empty_arguments_has_empty_label() -> None:
    msg = {"execute": TX_BEGIN, "arguments": {}}
    assert negotiated().handle(msg) == BeginTx("", msg, ABSENT)


def test_transaction_begin_without_arguments_has_empty_label() -> None:
    # No "arguments" at all means what '{"arguments": {}}' means: an empty label.
    msg = {"execute": TX_BEGIN, "id": 5}
    assert negotiated().handle(msg) == BeginTx("", msg, 5)


@pytest.mark.parametrize("arguments", [{"label": 7}, {"label": None}, {"label": ["a"]}])
def test_transaction_begin_with_a_bad_label_is_refused(arguments: Any) -> None:
    msg = {"execute": TX_BEGIN, "arguments": arguments, "id": 2}
    action = negotiated().handle(msg)
    assert action == Answer(
        {"error": {"class": "GenericError", "desc": "Invalid parameter type for 'label', expected: string"}, "id": 2},
        msg=msg,
    )


@pytest.mark.parametrize("arguments", [["label"], "x", None])
def test_transaction_begin_with_arguments_not_an_object(arguments: Any) -> None:
    msg = {"execute": TX_BEGIN, "arguments": arguments, "id": 2}
    action = negotiated().handle(msg)
    assert error_of(action) == ("GenericError", "QMP input member 'arguments' must be an object")


@pytest.mark.parametrize("cid", [ABSENT, "t2", None])
def test_transaction_end(cid: Any) -> None:
    msg: dict[str, Any] = {"execute": TX_END}
    if cid is not ABSENT:
        msg["id"] = cid
    action = negotiated().handle(msg)
    assert action == EndTx(msg, cid)


def test_transaction_commands_are_not_subject_to_policy() -> None:
    session = negotiated("debug", Policy.build(deny=["qmprr-*"]))
    assert isinstance(session.handle({"execute": TX_BEGIN, "arguments": {"label": "x"}}), BeginTx)
    assert isinstance(session.handle({"execute": TX_END}), EndTx)


# -- policy ------------------------------------------------------------------------------------


def test_default_policy_denies_quit_to_debug_clients() -> None:
    assert Policy().deny == DEFAULT_DEBUG_DENY
    assert set(DEFAULT_DEBUG_DENY) == {"quit", "hmp:quit", "hmp:q"}
    session = negotiated("debug")
    msg = {"execute": "quit", "id": 11}
    action = session.handle(msg)
    cls, desc = error_of(action)
    assert cls == "GenericError"
    assert desc == (
        "qmprr policy refuses 'quit' from debug clients (start qmprr with --allow 'quit' to permit it)"
    )
    assert action.reply["id"] == 11 and action.msg == msg


def test_quit_is_forwarded_for_the_primary_client() -> None:
    session = negotiated("primary")
    assert session.handle({"execute": "quit"}) == Forward({"execute": "quit"}, ABSENT)
    assert isinstance(session.handle(hmp("quit")), Forward)
    assert isinstance(session.handle(hmp("q")), Forward)


@pytest.mark.parametrize("line, refused", [("quit", "hmp:quit"), ("q", "hmp:q"), ("  quit  ", "hmp:quit"), ("q now", "hmp:q")])
def test_hmp_quit_is_denied_to_debug_clients_only(line: str, refused: str) -> None:
    msg = hmp(line, id="h")
    action = negotiated("debug").handle(msg)
    cls, desc = error_of(action)
    assert f"'{refused}'" in desc and f"--allow '{refused}'" in desc
    assert action.reply["id"] == "h"
    assert Policy().refusal(msg) == refused
    assert isinstance(negotiated("primary").handle(msg), Forward)


@pytest.mark.parametrize("line", ["info status", "quitx", "qq", "info quit", "", "   "])
def test_other_hmp_commands_pass_for_debug_clients(line: str) -> None:
    msg = hmp(line)
    assert Policy().refusal(msg) is None
    assert negotiated("debug").handle(msg) == Forward(msg, ABSENT)


@pytest.mark.parametrize(
    "msg",
    [
        {"execute": "human-monitor-command"},
        {"execute": "human-monitor-command", "arguments": {"command-line": 5}},
        {"execute": "human-monitor-command", "arguments": {}},
    ],
)
def test_malformed_hmp_is_left_to_qemu(msg: dict[str, Any]) -> None:
    assert Policy().refusal(msg) is None
    assert isinstance(negotiated("debug").handle(msg), Forward)


def test_allow_overrides_the_default_deny() -> None:
    policy = Policy.build(allow=["quit"])
    assert policy.refusal({"execute": "quit"}) is None
    assert isinstance(negotiated("debug", policy).handle({"execute": "quit"}), Forward)
    # Allowing QMP quit does not allow HMP quit.
    assert policy.refusal(hmp("quit")) == "hmp:quit"
    policy = Policy.build(allow=["hmp:quit", "hmp:q"])
    assert policy.refusal(hmp("quit")) is None and policy.refusal(hmp("q")) is None
    assert policy.refusal({"execute": "quit"}) == "quit"


def test_build_adds_to_the_default_deny() -> None:
    policy = Policy.build(deny=["stop", "hmp:stop"])
    assert policy.deny == (*DEFAULT_DEBUG_DENY, "stop", "hmp:stop")
    assert policy.refusal({"execute": "stop"}) == "stop"
    assert policy.refusal(hmp("stop")) == "hmp:stop"
    assert policy.refusal({"execute": "quit"}) == "quit"  # defaults still apply
    assert policy.refusal({"execute": "cont"}) is None


def test_globs_in_deny_and_allow() -> None:
    policy = Policy.build(deny=["device_*", "hmp:*"], allow=["device_list_*", "hmp:info"])
    assert policy.refusal({"execute": "device_add"}) == "device_add"
    assert policy.refusal({"execute": "device_del"}) == "device_del"
    assert policy.refusal({"execute": "device_list_properties"}) is None
    assert policy.refusal({"execute": "query-status"}) is None
    assert policy.refusal(hmp("info status")) is None
    assert policy.refusal(hmp("system_reset")) == "hmp:system_reset"
    # With "hmp:*" denied, the QMP command carrying HMP is itself fine: the HMP word decides.
    assert policy.refusal(hmp("info block")) is None
    # Globs are case-sensitive, like QMP names.
    assert Policy.build(deny=["Stop"]).refusal({"execute": "stop"}) is None
    assert Policy.build(deny=["?top"]).refusal({"execute": "stop"}) == "stop"
    assert Policy.build(deny=["[sc]*"]).refusal({"execute": "cont"}) == "cont"


def test_allow_star_permits_everything() -> None:
    policy = Policy.build(allow=["*"])
    for msg in ({"execute": "quit"}, hmp("quit"), hmp("q")):
        assert policy.refusal(msg) is None
        assert isinstance(negotiated("debug", policy).handle(msg), Forward)


def test_policy_does_not_apply_to_primary_or_internal_roles() -> None:
    policy = Policy.build(deny=["*"])
    for role in ("primary", "internal"):
        assert isinstance(negotiated(role, policy).handle({"execute": "query-status"}), Forward)
    action = negotiated("debug", policy).handle({"execute": "query-status"})
    assert isinstance(action, Answer) and "'query-status'" in action.reply["error"]["desc"]


def test_the_session_default_policy_is_the_default() -> None:
    assert ClientSession(GREETING).policy == Policy()
    assert Policy.build() == Policy()


def test_detach_is_local_after_negotiation_only() -> None:
    msg = {"execute": DETACH, "id": "d"}
    before = ClientSession(GREETING)
    assert error_of(before.handle(msg)) == ("CommandNotFound", EXPECTING)
    assert negotiated().handle(msg) == Detach(msg, "d")
    assert negotiated("debug", Policy.build(deny=["qmprr-*"])).handle(msg) == Detach(msg, "d")  # not a QEMU command
