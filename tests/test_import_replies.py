"""``qmprr import replies``: libvirt's ``.replies`` capability corpora.

``caps-x86_64.replies`` is the start of the real x86_64 probe in the capture,
written the way libvirt writes ``tests/qemucapabilitiesdata/*.replies``
(empty objects over two lines); the other form (``{}`` on one line) is made
from it here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from import_support import REPLIES, commands, lines, run_import

from qmprr.importers.replies import read_replies
from qmprr.recording import verify
from qmprr.replay.engine import ReplayOptions
from qmprr.replay.run import RunOptions, run_replay

TEXT = REPLIES.read_text()


def one_line_empties(text: str) -> str:
    return re.sub(r"\{\n\s*\}", "{}", re.sub(r"\[\n\s*\]", "[]", text))


def test_the_libvirt_form_with_empty_objects_over_two_lines(tmp_path: Path) -> None:
    assert '"return": {\n  },' in TEXT  # the form under test
    out = tmp_path / "caps.jsonl"
    status, text = run_import("replies", REPLIES, "-o", out)
    assert status == 0, text
    assert text == f"{REPLIES}: 10 commands, 10 replies -> {out} (21 records)\n"
    recs = lines(out)
    header = recs[0]
    assert header["labels"]["import"] == "libvirt-replies" and header["labels"]["source"] == "caps-x86_64.replies"
    assert header["qemu_version"]["qemu"] == {"micro": 22, "minor": 2, "major": 7}
    assert commands(recs)[:4] == ["qmp_capabilities", "query-version", "query-target", "query-qmp-schema"]
    assert recs[1]["role"] == "internal" and {r["role"] for r in recs[3:] if r["kind"] == "command"} == {"primary"}
    assert recs[2] == {**recs[2], "kind": "reply", "cmd": 1, "msg": {"return": {}, "id": "libvirt-1"}}
    assert all(r["t"] == 0.0 for r in recs)
    # orig: the line each object starts on.
    source = TEXT.splitlines()
    for r in recs[1:]:
        assert source[r["orig"]["line"] - 1] == "{"
        first = source[r["orig"]["line"]]
        assert first == (f'  "execute": "{r["msg"]["execute"]}",' if r["kind"] == "command" else first)
    assert verify(out).ok


def test_both_forms_give_the_same_records(tmp_path: Path) -> None:
    compact = tmp_path / "compact.replies"
    compact.write_text(one_line_empties(TEXT))
    assert '"return": {},' in compact.read_text() and '"return": {\n  },' not in compact.read_text()
    a, b = read_replies(str(REPLIES)), read_replies(str(compact))
    assert [i.record.msg for i in a.items] == [i.record.msg for i in b.items]  # type: ignore[attr-defined]
    assert not a.problems and not b.problems


async def test_the_fake_replays_libvirts_probe_sequence(tmp_path: Path) -> None:
    out = tmp_path / "caps.jsonl"
    assert run_import("replies", REPLIES, "-o", out)[0] == 0
    report = await run_replay(str(out), RunOptions(target="fake"), ReplayOptions())
    assert report.reproduced and report.count("matched") == len(report.steps) == 9


def test_damaged_objects_are_reported_and_the_rest_imported(tmp_path: Path) -> None:
    broken_text = TEXT.replace('"execute": "query-target",', '"execute": "query-target"', 1)
    line = broken_text[: broken_text.index('"execute": "query-target"')].count("\n")  # the object's "{" line
    path = tmp_path / "broken.replies"
    path.write_text(broken_text)
    status, text = run_import("replies", path, "-o", tmp_path / "out.jsonl")
    assert status == 1
    assert f"problem: {path}:{line}: not JSON" in text
    assert f"problem: {path}:{line + 5}: reply (id 'libvirt-3') to no command waiting for one; skipped" in text
    recs = lines(tmp_path / "out.jsonl")
    assert "query-target" not in commands(recs) and len(commands(recs)) == 9
    assert verify(tmp_path / "out.jsonl").ok


def test_a_command_without_its_reply(tmp_path: Path) -> None:
    objects = TEXT.split("\n\n")
    path = tmp_path / "short.replies"
    path.write_text("\n\n".join(objects[:5]) + "\n")  # ends with query-target's command
    status, text = run_import("replies", path, "-o", tmp_path / "out.jsonl")
    assert status == 0 and "3 commands, 2 replies, 1 without reply" in text
    report = verify(tmp_path / "out.jsonl")
    assert report.ok and [c.msg["execute"] for c in report.in_flight] == ["query-target"]


def test_not_a_replies_file(tmp_path: Path) -> None:
    path = tmp_path / "x.replies"
    path.write_text(json.dumps({"return": {}}) + "\n")
    status, text = run_import("replies", path, "-o", tmp_path / "out.jsonl")
    assert status == 2 and "no QMP commands found" in text
    assert not (tmp_path / "out.jsonl").exists()
    status, text = run_import("replies", tmp_path / "missing.replies", "-o", tmp_path / "out.jsonl")
    assert status == 2 and "cannot read" in text
