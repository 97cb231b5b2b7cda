"""The one QEMU option parser (qmprr.qemuopts): QEMU's escaping, and agreement with domain/keyval."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from qmprr import qemuopts
from qmprr.domain import keyval
from qmprr.qemuopts import Item

KEYS = st.from_regex(r"[a-z_][a-z0-9_.\-]{0,8}", fullmatch=True)
VALUES = st.text(alphabet=st.sampled_from(list(",,,=='\" -/x:{}é")), max_size=12)


@pytest.mark.parametrize(
    ("text", "implied", "items"),
    [
        # issue 18: ',,,' is a literal comma, then the separator: 'file' is a key of its own
        ("serial=a,,,file=/some/path,if=none", False,
         [Item("serial", "a,"), Item("file", "/some/path"), Item("if", "none")]),
        ("if=none,serial=a,,,file=/x", False, [Item("if", "none"), Item("serial", "a,"), Item("file", "/x")]),
        ("a,,b,id=x", True, [Item(None, "a,b"), Item("id", "x")]),
        ("socket,server,nowait", True, [Item(None, "socket"), Item("server", "on", True), Item("nowait", "on", True)]),
        ("file:/x=y", True, [Item("file:/x", "y")]),  # a key runs to the first '='
        ("id=a,,,,b", False, [Item("id", "a,,b")]),
        ("k=v,", False, [Item("k", "v")]),
        ("", False, []),
    ],
)
def test_parse_reads_as_qemu_does(text: str, implied: bool, items: list[Item]) -> None:
    assert qemuopts.parse(text, implied=implied) == items


@given(st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=5))
def test_parse_inverts_keyval_join(pairs: list[tuple[str, str]]) -> None:
    """Whatever domain/keyval writes, qemuopts reads back as the same pairs (so the checks see what QEMU sees)."""
    text = keyval.join(pairs)
    assert [(i.key, i.value) for i in qemuopts.parse(text)] == pairs
    assert keyval.split(text) == (pairs, False)


@given(st.text(alphabet=st.sampled_from(list("ab=,/")), max_size=16))
def test_keyval_split_agrees_with_parse(text: str) -> None:
    split = keyval.split(text, "driver")
    if split is not None:
        pairs, bare = split
        items = qemuopts.parse(text, implied=True)
        assert [i.value for i in items] == [v for _, v in pairs]
        assert bare == (items[0].key is None)


@given(st.text(alphabet=",=ab\\\"x", max_size=30), st.booleans())
def test_unparse_reads_back_as_parsed(text: str, implied: bool) -> None:
    items = qemuopts.parse(text, implied=implied)
    assume(all(item.key != "" and (item.key is not None or item.value) for item in items))  # empty items (',,' at the start, a trailing ',') vanish
    assert qemuopts.parse(qemuopts.unparse(items), implied=implied) == items
