"""QEMU option strings: comma escaping, implied first keys, what has an element form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmprr.domain import keyval, options, schema

KEYS = st.from_regex(r"[a-z_][a-z0-9_.\-]{0,8}", fullmatch=True)
# Values QEMU users trip over: commas, equals signs, quotes, spaces, leading dashes, non-ASCII.
VALUES = st.text(alphabet=st.sampled_from(list(",,,=='\" -\\x/é漢🙂\tab")), max_size=12)


@pytest.mark.parametrize(
    ("pairs", "bare", "text"),
    [
        ([("id", "a,b")], False, "id=a,,b"),
        ([("driver", "virtio-rng-pci"), ("id", "rng0")], True, "virtio-rng-pci,id=rng0"),
        ([("driver", "a,b"), ("x", "")], True, "a,,b,x="),
        ([("driver", "a=b")], True, "driver=a=b"),  # a bare a=b would read as key a
        ([("driver", "")], True, "driver="),
        ([("file", ",lead"), ("k", "v=w,")], False, "file=,,lead,k=v=w,,"),
    ],
)
def test_join_escapes_commas_and_writes_implied_bare(pairs: list[tuple[str, str]], bare: bool, text: str) -> None:
    assert keyval.join(pairs, bare) == text


@pytest.mark.parametrize(
    ("text", "implied", "expected"),
    [
        ("virtio-rng-pci,id=rng0", "driver", ([("driver", "virtio-rng-pci"), ("id", "rng0")], True)),
        ("driver=x,id=a,,b", "driver", ([("driver", "x"), ("id", "a,b")], False)),
        ("a,,b=c", "driver", None),  # QEMU reads driver 'a,b=c': no bare form gives that back
        ("file=x,,,y=1", None, ([("file", "x,"), ("y", "1")], False)),  # ,, then the separating ,
        ("socket,id=c,server,wait=off", "backend", None),  # a flag without '='
        ("x,id=1", None, None),  # a bare first item without an implied key
        ("id=1,", None, None),  # trailing comma
        ("", "driver", None),
        ('{"driver":"null-co"}', "driver", None),  # JSON syntax stays verbatim
    ],
)
def test_split_reads_as_qemu_or_refuses(text: str, implied: str | None, expected: object) -> None:
    assert keyval.split(text, implied) == expected


@given(st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=5), st.booleans())
def test_split_inverts_join(pairs: list[tuple[str, str]], bare: bool) -> None:
    bare = bare and keyval.can_be_bare(pairs[0][1])
    text = keyval.join(pairs, bare)
    assert keyval.split(text, pairs[0][0] if bare else None) == (pairs, bare)


@given(st.text(alphabet=st.sampled_from(list(",=ab-")), max_size=14), st.sampled_from(["driver", None]))
def test_split_result_always_joins_back(text: str, implied: str | None) -> None:
    parsed = keyval.split(text, implied)
    if parsed is not None:
        assert keyval.join(*parsed) == text


def test_option_text_and_parse_option() -> None:
    assert options.option_text("device", "virtio-blk-pci", [("drive", "d,0")]) == "virtio-blk-pci,drive=d,,0"
    assert options.option_text("drive", None, [("file", "a b.img"), ("if", "virtio")]) == "file=a b.img,if=virtio"
    assert options.parse_option("object", "memory-backend-ram,id=m,size=1G") == (
        "memory-backend-ram", [("id", "m"), ("size", "1G")])  # fmt: skip
    assert options.parse_option("drive", "file=x,if=none") == (None, [("file", "x"), ("if", "none")])
    assert options.parse_option("drive", "x.img") is None  # -drive has no implied key
    assert options.parse_option("cpu", "qemu64,+x") is None  # not a key=value option
    assert options.parse_option("device", "e1000,1bad=2") is None  # key is no element name


def test_schema_lists_the_same_options_and_implied_keys() -> None:
    """domain.rng and options.IMPLIED_KEYS must agree (one structured element per option)."""
    spec = schema.grammar().start.named["domain"].spec
    cmdline = spec.named[f"{{{schema.QEMU_NS}}}commandline"].spec
    in_schema = {}
    for name, rule in cmdline.named.items():
        local = name.rsplit("}", 1)[1]
        if local not in ("arg", "env"):
            in_schema[local] = next(iter(rule.spec.attributes), None)
    assert in_schema == options.IMPLIED_KEYS


def test_docs_table_lists_every_option() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "domain.md").read_text(encoding="utf-8")
    for name, implied in options.IMPLIED_KEYS.items():
        assert re.search(rf"`{re.escape(name)}`\s*\|\s*{re.escape(f'`{implied}`' if implied else '—')}", docs), name
