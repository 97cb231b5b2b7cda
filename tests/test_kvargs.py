"""qmp-shell's key=value arguments (:mod:`qmprr.kvargs`), checked against qmp-shell itself.

The reference is the installed qemu.qmp's ``QMPShell._parse_value`` and
``QMPShell._cli_expr``: where qmp-shell gives a value, qmprr gives the same.
"""

from __future__ import annotations

import types
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from qemu.qmp.qmp_shell import QMPShell, QMPShellError

from qmprr.kvargs import ArgumentsError, add_pairs, build_command, parse_value


def shell_value(text: str) -> Any:
    return QMPShell._parse_value(text)


def shell_arguments(words: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    QMPShell._cli_expr(types.SimpleNamespace(_parse_value=QMPShell._parse_value), words, out)  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize(
    "text, value",
    [
        ("top", "top"),
        ("3", 3),
        ("-1", -1),
        ("1.5", "1.5"),  # qmp-shell: only int() numbers
        ("null", "null"),  # qmp-shell: null only inside { } or [ ]
        ("TRUE", True),
        ("false", False),
        ('{"a": [1, null]}', {"a": [1, None]}),
        ("{'a':true,'b':null}", {"a": True, "b": None}),  # Python literal with JSON names
        ("[1,'x']", [1, "x"]),
        ("{not json", "{not json"),
        ("{[1]:2}", "{[1]:2}"),  # qmp-shell raises TypeError here; qmprr keeps the text
        ('"quoted"', '"quoted"'),
        ("", ""),
    ],
)
def test_values(text: str, value: Any) -> None:
    assert parse_value(text) == value


@given(st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\A[-+ ]?[0-9_]{1,8}\Z"),
    st.sampled_from(["true", "False", "null", "None", "{}", "[]", "{'a': None}", "[true, false, null]", "1e3"]),
    st.builds(lambda inner: "{" + inner, st.text(max_size=20)),
    st.builds(lambda inner: "[" + inner + "]", st.text(max_size=20)),
))
def test_values_are_qmp_shells(text: str) -> None:
    try:
        expected = shell_value(text)
    except Exception:  # qmp-shell crashes (e.g. TypeError on {[1]:2}): qmprr keeps the text
        assert parse_value(text) == text
        return
    got = parse_value(text)
    assert got == expected and type(got) is type(expected)


keys = st.lists(st.sampled_from(["a", "b", "node-name", "c_d"]), min_size=1, max_size=3).map(".".join)
pairs = st.lists(st.tuples(keys, st.sampled_from(["1", "x", "true", "[1]", "{'k':2}"])).map("=".join), max_size=6)


def flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(flatten(item, f"{prefix}{key}."))
        else:
            out[prefix + key] = item
    return out


leaves = st.lists(st.tuples(keys, st.sampled_from(["1", "x", "true", "[1]"])).map("=".join), max_size=6)


@given(leaves)
def test_dotted_keys_nest_from_the_top(words: list[str]) -> None:
    split = [w.partition("=") for w in words]
    keys = [k for k, _, _ in split]
    leaf_and_node = any(j.startswith(k + ".") for k in keys for j in keys)
    if len(set(keys)) < len(keys) or leaf_and_node:
        with pytest.raises(ArgumentsError):
            add_pairs(words)
        return
    got = add_pairs(words)
    assert flatten(got) == {k: parse_value(v) for k, _, v in split}


@given(pairs)
def test_dotted_keys_are_qmp_shells_where_it_nests_right(words: list[str]) -> None:
    assume(not any("." in w.partition("=")[0] for w in words[:-1]))  # qmp-shell 0.0.6 slips after a dotted key
    try:
        expected = shell_arguments(words)
    except QMPShellError:
        with pytest.raises(ArgumentsError):
            add_pairs(words)
        return
    assert add_pairs(words) == expected


def test_qmp_shells_dotted_key_slip_is_not_copied() -> None:
    words = ["driver=raw", "file.driver=null-co", "file.size=4096"]
    assert shell_arguments(words) == {"driver": "raw", "file": {"driver": "null-co", "file": {"size": 4096}}}
    assert add_pairs(words) == {"driver": "raw", "file": {"driver": "null-co", "size": 4096}}


@pytest.mark.parametrize(
    "words, needle",
    [
        (["path"], "key=value"),
        (["a=1", "a=2"], 'set "a" multiple times'),
        (["a=1", "a.b=2"], '"a" as both leaf and non-leaf'),
        (["a.b=1", "a=2"], '"a" as both leaf and non-leaf'),
        (["=1"], "empty key"),
        (["a..b=1"], "empty key"),
    ],
)
def test_pair_errors(words: list[str], needle: str) -> None:
    with pytest.raises(ArgumentsError, match=needle.replace(".", r"\.")):
        add_pairs(words)


def test_build_command() -> None:
    assert build_command("query-status") == {"execute": "query-status"}
    assert build_command("blockdev-del", ["node-name=top"]) == {"execute": "blockdev-del", "arguments": {"node-name": "top"}}
    assert build_command("x", ["file.size=4096"], '{"driver": "raw", "file": {"driver": "null-co"}}') == {
        "execute": "x", "arguments": {"driver": "raw", "file": {"driver": "null-co", "size": 4096}}}
    assert build_command("x", [], "{}") == {"execute": "x", "arguments": {}}
    assert build_command('{"execute": "stop"}') == {"execute": "stop"}
    for command, words, js, needle in [
        ('{"execute": "stop"}', ["a=1"], None, "not with a whole JSON message"),
        ("x", [], "[1]", "JSON object"),
        ("x", [], "{", "not JSON"),
        ("x", ["driver=raw"], '{"driver": "raw"}', "multiple times"),
        (None, ["a=1"], None, "no command name"),
        ("no such!", [], None, "not JSON and not a command name"),
    ]:
        with pytest.raises(ArgumentsError, match=needle):
            build_command(command, words, js)


@given(st.builds(lambda k, v: f"{k}={v}", st.text(max_size=10), st.text(max_size=20)))
def test_any_word_is_a_value_or_a_clear_error(word: str) -> None:
    try:
        out = add_pairs([word])
    except ArgumentsError:
        return
    assert isinstance(out, dict) and out
