"""The fast paths give the slow paths' answers, byte for byte and problem for problem.

* ``show --kind K --json`` (:meth:`Scanner.kind_raw`: one hash and one msgspec
  decode of seq/t/kind a line, raw lines out) against :meth:`Scanner.__iter__`
  (every line decoded) filtered by kind, on the real recordings and on
  generated ones with damage: edited bytes, lines deleted or duplicated,
  invalid JSON and UTF-8, torn tails, each either left with a broken chain or
  re-chained as a forger would.
* ``verify``'s line schema (:mod:`qmprr.recording.lineschema`) accepts no
  line that orjson/QEMU's grammar and the typed schema refuse, and its keyed
  and unkeyed hashing is :func:`qmprr.recording.chain.link`'s.
* A file split between processes gets the serial verdict, line for line.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qmprr import codec
from qmprr.cli import main
from qmprr.analysis import source
from qmprr.analysis.source import Scanner
from qmprr.bench.analysis import write_records
from qmprr.recording import chain, convert, lineschema, verify
from qmprr.recording.chain import SealKey

verify_mod = importlib.import_module("qmprr.recording.verify")

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
KINDS = ("command", "reply", "event", "local", "client", "note", "close", "greeting", "tx", "taint", "fd")


def forge(lines: list[bytes]) -> list[bytes]:
    """*lines* re-chained as a forger would (a line that is no chain link at all is left as it is)."""
    out, prev = [], chain.GENESIS
    for line in lines:
        try:
            line, prev = chain.seal(chain.unseal(line)[0], prev)
        except chain.ChainFormatError:
            pass
        out.append(line)
    return out


def header() -> dict[str, Any]:
    return {"seq": 0, "t": 0.0, "kind": "header", "format": "qmprr/1", "started": "2026-01-01T00:00:00+00:00",
            "started_epoch": 1767225600.0, "host": "test", "qmprr_version": "0.1.0"}


@pytest.fixture(params=["one process", "split"])
def split(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run the fast path in one process, or with any file cut in chunks scanned by forked workers."""
    if request.param == "split":
        monkeypatch.setattr(source, "MIN_SPLIT", 200)
        monkeypatch.setattr(source, "_cpus", lambda: 3)
    return request.param == "split"


def both_ways(path: Path, kinds: frozenset[str],
              fields: bool = False) -> tuple[tuple[list[bytes], list[Any]], tuple[list[bytes], list[Any]]]:
    """(lines, problems) of the fast path and of the slow one (*fields*: each line's fields checked too,
    the slow way by the typed schema, as plain ``show`` does)."""
    fast_problems: list[Any] = []
    with Scanner(path, on_problem=fast_problems.append) as s:
        fast = list(s.kind_raw(kinds, fields=fields))
        fast_torn = s.torn
        assert source.MIN_SPLIT > 200 or path.stat().st_size < 600 or source._chunks_of(str(path))  # it splits
    slow_problems: list[Any] = []
    slow = []
    with Scanner(path, on_problem=slow_problems.append) as s:
        for d, raw in s:
            if d.get("kind") not in kinds:
                continue
            if fields and d.get("kind") != "header":
                try:
                    convert.structure(d)
                except convert.RecordSchemaError as exc:
                    s.report(str(exc))
                    continue
            slow.append(raw)
        slow_torn = s.torn
    assert fast_torn == slow_torn
    return (fast, fast_problems), (slow, slow_problems)


@pytest.mark.parametrize("name", sorted(p.name for p in RECORDINGS.glob("*.jsonl")))
def test_show_json_by_kind_prints_the_recordings_own_lines(capsys: pytest.CaptureFixture[str], name: str,
                                                           split: bool) -> None:
    path = RECORDINGS / name
    lines = path.read_bytes().splitlines(keepends=True)
    present = sorted({json.loads(line)["kind"] for line in lines})
    for kinds in [[k] for k in present] + [present, ["event", "close"]]:
        fast, slow = both_ways(path, frozenset(kinds))
        assert fast == slow
        assert main(["show", "--json", "--kind", ",".join(kinds), str(path)]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        assert out.encode() == b"".join(line for line in lines if json.loads(line)["kind"] in kinds)


def _record(i: int, kind: str) -> dict[str, Any]:
    d: dict[str, Any] = {"seq": i, "t": i / 1000, "kind": kind}
    if kind == "command":
        d.update(src="c", role="primary", msg={"execute": "query-status", "id": i})
    elif kind == "reply":
        d.update(cmd=max(i - 1, 1), msg={"return": {"status": "running"}, "id": i - 1})
    elif kind == "event":
        d.update(msg={"event": "STOP", "data": {"é": "ü"}})
    else:
        d.update(text=f"note {i}")
    return d


#: Damage done to one line: (name, function of the line's bytes).
DAMAGE = {
    "flip a byte": lambda b, n: b[: n % len(b)] + bytes([b[n % len(b)] ^ 0x20]) + b[n % len(b) + 1 :],
    "invalid JSON": lambda b, n: b.replace(b'"t":', b'"t":,', 1),
    "invalid UTF-8": lambda b, n: b.replace(b',"kind"', b',"x":"\xff","kind"', 1),
    "encoded surrogate": lambda b, n: b.replace(b',"kind"', b',"x":"\xed\xa0\x80","kind"', 1),
    "unknown kind": lambda b, n: b.replace(b'"kind":"', b'"kind":"x', 1),
    "seq moved": lambda b, n: b.replace(b'"seq":', b'"seq":1', 1),
    "t not a number": lambda b, n: b.replace(b'"t":', b'"t":"', 1).replace(b',"kind"', b'","kind"', 1),
    "t too large": lambda b, n: b.replace(b'"t":', b'"t":1e999,"u":', 1),
    "kind twice": lambda b, n: b.replace(b'"kind":', b'"kind":"note","kind":', 1),
    "no h": lambda b, n: b[: b.rfind(b',"h":')] + b"}\n",
    "second header": lambda b, n: b.replace(b'"kind":"', b'"kind":"header","k":"', 1),
    # valid JSON and common fields, but not a record by the schema of its kind
    "msg not an object": lambda b, n: b.replace(b'"msg":{', b'"msg":"notanobject","m":{', 1),
    # (commands and replies: the typed schema takes "src":7 for "7" and an event's extra members)
    "field of the wrong type": lambda b, n: b.replace(b',"msg"', b',"role":7,"cmd":"x","src":7,"msg"', 1),
}
#: Damage the chain and the common fields do not see: only a schema check does.
FIELD_DAMAGE = ("msg not an object", "field of the wrong type")


@settings(max_examples=60)
@given(
    kinds=st.lists(st.sampled_from(["command", "reply", "event", "note"]), min_size=1, max_size=12),
    damage=st.lists(st.tuples(st.integers(1, 12), st.sampled_from(sorted(DAMAGE)), st.integers(0, 500),
                              st.booleans()), max_size=3),
    cut=st.sampled_from([None, "delete", "duplicate", "torn"]),
    where=st.integers(1, 12),
    selected=st.sets(st.sampled_from(["command", "reply", "event", "note"]), min_size=1),
)
def test_show_by_kind_fast_path_equals_the_slow_path_on_damaged_recordings(
        tmp_path_factory: pytest.TempPathFactory, kinds: list[str], damage: list[tuple[int, str, int, bool]],
        cut: str | None, where: int, selected: set[str]) -> None:
    with pytest.MonkeyPatch.context() as patch:  # and cut between processes (a fixture would outlive an example)
        patch.setattr(source, "MIN_SPLIT", 200)
        patch.setattr(source, "_cpus", lambda: 3)
        split_ways = [_damaged_both_ways(tmp_path_factory, kinds, damage, cut, where, selected, fields)
                      for fields in (False, True)]
    for split_fast, split_slow in split_ways:
        assert split_fast == split_slow
    for fields, (_, split_slow) in zip((False, True), split_ways):
        fast, slow = _damaged_both_ways(tmp_path_factory, kinds, damage, cut, where, selected, fields)
        assert fast == slow == split_slow


def _damaged_both_ways(tmp_path_factory: pytest.TempPathFactory, kinds: list[str],
                       damage: list[tuple[int, str, int, bool]], cut: str | None, where: int,
                       selected: set[str], fields: bool = False) -> tuple[Any, Any]:
    path = tmp_path_factory.mktemp("rec") / "r.jsonl"
    write_records(path, [header(), *(_record(i, k) for i, k in enumerate(kinds, 1))])
    lines = path.read_bytes().splitlines(keepends=True)
    forged = False
    for at, name, n, rechain in damage:
        if at < len(lines):
            lines[at] = DAMAGE[name](lines[at], n)
            forged = forged or rechain
    if forged:  # a forger re-chains every line after the damage (a plain chain has no key)
        prev = chain.GENESIS
        for i, line in enumerate(lines):
            try:
                body, _ = chain.unseal(line)
            except chain.ChainFormatError:
                continue
            lines[i], prev = chain.seal(body, prev)
    at = min(where, len(lines) - 1)
    if cut == "delete" and len(lines) > 2:
        del lines[at]
    elif cut == "duplicate":
        lines.insert(at, lines[at])
    elif cut == "torn":
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    path.write_bytes(b"".join(lines))
    return both_ways(path, frozenset(selected), fields)


@pytest.mark.parametrize("name", sorted(DAMAGE))
@pytest.mark.parametrize("rechain", [False, True])
def test_each_damage_reads_the_same_both_ways(tmp_path: Path, name: str, rechain: bool, split: bool) -> None:
    kinds = ["command", "reply", "event", "note", "event", "command", "reply"]
    path = tmp_path / "r.jsonl"
    write_records(path, [header(), *(_record(i, k) for i, k in enumerate(kinds, 1))])
    clean = path.read_bytes().splitlines(keepends=True)
    for at in range(1, len(clean)):
        lines = list(clean)
        lines[at] = DAMAGE[name](lines[at], 7 * at)
        path.write_bytes(b"".join(forge(lines) if rechain else lines))
        for selected in ({"event"}, {"command", "reply"}, set(kinds)):
            fast, slow = both_ways(path, frozenset(selected))
            assert fast == slow, (at, selected)
            assert (slow[1] or rechain and name in ("flip a byte", "t too large", "kind twice", *FIELD_DAMAGE)
                    or lines[at] == clean[at]), "damage unseen"  # (a field damage of a note: none)
            fields_fast, fields_slow = both_ways(path, frozenset(selected), fields=True)
            assert fields_fast == fields_slow, (at, selected)
            damaged_kind = json.loads(clean[at])["kind"]
            if rechain and damaged_kind in selected and (name == "msg not an object" and damaged_kind != "note"
                                                         or name == "field of the wrong type" and damaged_kind in
                                                         ("command", "reply")):  # seen now, and skipped
                assert [p.line for p in fields_slow[1]] == [at + 1] and lines[at] not in fields_slow[0]


def test_lineschema_hashing_is_chain_link() -> None:
    body = b'{"seq":1,"t":0.5,"kind":"note","text":"x"}'
    key = SealKey.from_bytes(b"k" * 32).key
    for k in (None, key):
        line, h = chain.seal(body, "0" * 32, k)
        assert h == chain.link("0" * 32, body, k)
        report_key = None if k is None else key
        # the fast loop's hashing (a copied base object, three updates) gives the same hash
        from hashlib import blake2b

        base = blake2b(digest_size=16) if report_key is None else blake2b(digest_size=16, key=report_key)
        hasher = base.copy()
        hasher.update(b"0" * 32)
        hasher.update(line[: len(line) - 41])
        hasher.update(b"}")
        assert hasher.hexdigest() == h


JSONISH = st.sampled_from([
    b"{", b"}", b"[", b"]", b",", b":", b'"', b'"a"', b"\\", b"\\u", b"d800", b"dc00", b"00", b"1", b"-", b"0",
    b".", b"e", b"+", b"true", b"null", b" ", b"\t", b"\x00", b"\x7f", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80",
    b"\xf0\x9f\x98\x80", b"\xf0\x9f", b"\xc0\x80", b"NaN", b"'", b"x", b"1e999", b"\xef\xbf\xbf",
])


TRICKY = [b'"\xff"', b'"\xed\xa0\x80"', b'"\xc0\x80"', b'"\xf4\x90\x80\x80"', b'"\\ud800"', b"1e999", b"'a'",
          b'{"a":1,"a":2}', b"[" * 300 + b"]" * 300, b"123456789012345678901234567890", b'"\x01"', b"NaN"]


@settings(max_examples=2000)
@given(inner=st.one_of(st.sampled_from(TRICKY), st.lists(JSONISH, max_size=10).map(b"".join)),
       kind=st.sampled_from(KINDS))
def test_the_line_schema_accepts_nothing_the_typed_schema_refuses(inner: bytes, kind: str) -> None:
    record = _record(1, kind) if kind in ("command", "reply", "event", "note") else {"seq": 1, "t": 0, "kind": kind}
    for line in (codec.dumps(record)[:-1] + b',"x":' + inner + b"}", codec.dumps(record).replace(b"{}", inner)):
        try:
            lineschema.decode(line)
        except lineschema.Refused:
            continue
        convert.structure(codec.loads(line))  # neither raises


@pytest.mark.parametrize("sealed", [False, True])
def test_a_file_split_between_processes_gets_the_serial_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 sealed: bool) -> None:
    from qmprr.recording import Command, Msg, RecordWriter, Reply

    key = SealKey.from_bytes(b"s" * 32) if sealed else None
    path = tmp_path / "big.jsonl"
    with RecordWriter.create(path, seal_key=key) as w:
        for i in range(1500):
            cmd = w.append(Command(src="c", role="primary", msg=Msg({"execute": "stop", "id": i})))
            if i % 7:  # every 7th command waits for ever: in flight across chunks
                w.append(Reply(cmd=cmd.seq, msg=Msg({"return": {}, "id": i})))
    monkeypatch.setattr(verify_mod, "MIN_SPLIT", 1000)
    whole = path.read_bytes()
    lines = whole.splitlines(keepends=True)
    damaged = list(lines)
    damaged[300] = damaged[300].replace(b'"stop"', b'"cont"')  # a broken link in the first chunk
    damaged[2000] = damaged[2000][:-5] + b'\xff"}\n'  # a bad line in the second
    del damaged[2400]  # a gap in the third
    damaged[-1] = damaged[-1][:-20]  # a torn tail
    for content in (whole, b"".join(damaged)):
        path.write_bytes(content)
        serial = verify(path, key=key, jobs=1)
        for jobs in (2, 3, 4):
            parallel = verify(path, key=key, jobs=jobs)
            assert [(p.line, p.message) for p in parallel.problems] == [(p.line, p.message) for p in serial.problems]
            assert (parallel.records, parallel.torn, parallel.end_sealed) == (serial.records, serial.torn,
                                                                               serial.end_sealed)
            assert [c.seq for c in parallel.in_flight] == [c.seq for c in serial.in_flight]
    assert len(serial.problems) >= 4


@pytest.mark.parametrize("name", ["invalid UTF-8", "encoded surrogate", "invalid JSON", "unknown kind",
                                  "t not a number", "second header", "no h", "seq moved"])
def test_verify_finds_each_damage_even_when_rechained(tmp_path: Path, name: str) -> None:
    kinds = ["command", "reply", "event", "note"]
    path = tmp_path / "r.jsonl"
    write_records(path, [header(), *(_record(i, k) for i, k in enumerate(kinds, 1))])
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = DAMAGE[name](lines[3], 0)
    path.write_bytes(b"".join(forge(lines)))
    assert 4 in [p.line for p in verify(path).problems]


def test_a_sealed_recording_shows_without_its_key(tmp_path: Path, split: bool) -> None:
    from qmprr.recording import Event, Msg, RecordWriter

    path = tmp_path / "sealed.jsonl"
    with RecordWriter.create(path, seal_key=SealKey.from_bytes(b"q" * 32)) as w:
        for i in range(30):
            w.append(Event(msg=Msg({"event": "X", "data": {"i": i}})))
    fast, slow = both_ways(path, frozenset({"event"}))
    assert fast == slow and slow[1] == [] and len(slow[0]) == 30  # the keyed chain is not taken for a broken one


@pytest.mark.parametrize("damage", [(2, b'"role":"primary"', b'"role":7'),  # a command
                                    (3, b'"cmd":', b'"cmd":"one","c":'),  # a reply
                                    (4, b'"msg":{', b'"msg":"notanobject","m":{')])  # an event
def test_show_json_skips_and_reports_a_rechained_line_the_schema_refuses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], split: bool, damage: tuple[int, bytes, bytes]) -> None:
    kinds = ["command", "reply", "event", "note"] * 40  # over 200 bytes: split, the bad line in the first chunk
    path = tmp_path / "r.jsonl"
    write_records(path, [header(), *(_record(i, k) for i, k in enumerate(kinds, 1))])
    lines = path.read_bytes().splitlines(keepends=True)
    at, old, new = damage
    for n in (at, at + 4 * 30):  # one early, one late (another chunk when split)
        assert old in lines[n - 1]
        lines[n - 1] = lines[n - 1].replace(old, new, 1)
    lines = forge(lines)  # re-chained as a forger would: the chain holds
    path.write_bytes(b"".join(lines))
    bad = {at, at + 4 * 30}
    verdict = {p.line: p.message for p in verify(path).problems}
    assert bad <= set(verdict) and not any("chain" in m for m in verdict.values())

    kind = json.loads(lines[at - 1])["kind"]
    runs = {"show": ["show", str(path)], "show --json": ["show", "--json", str(path)],
            f"show --kind {kind} --json": ["show", "--kind", kind, "--json", str(path)],
            "show --kind command --json": ["show", "--kind", "command", "--json", str(path)]}
    errs = {}
    for name, argv in runs.items():
        assert main(argv) == 0
        out, err = capsys.readouterr()
        errs[name] = err
        if "--json" in argv:
            shown = [n for n, line in enumerate(lines, 1) if line.decode() in out.splitlines(keepends=True)]
            expected = [n for n, line in enumerate(lines, 1) if n not in bad and
                        ("--kind" not in argv or json.loads(line)["kind"] == argv[2])]
            assert shown == expected, name
    reported = "".join(f"qmprr: {path}:line {n}: {verdict[n]}\n" for n in sorted(bad))  # verify's words
    for name in ("show", "show --json", f"show --kind {kind} --json"):
        assert errs[name] == reported, name
    if kind != "command":
        assert errs["show --kind command --json"] == ""  # not a line it prints: not read as one
