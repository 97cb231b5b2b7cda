"""``qmprr show``: lines, filters that combine, JSON output, colour rules.

The analysis commands are run through :func:`qmprr.cli.main`
(in-process, as ``qmprr`` runs them) or, where a terminal matters, as
``python -m qmprr.cli`` in a pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from qmprr.cli import main
from qmprr.analysis.filters import FilterError, Position, parse_position
from qmprr.bench.analysis import write_records

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
TX = RECORDINGS / "inject-during-transaction.jsonl"
ERRORS = RECORDINGS / "errors.jsonl"
ANSI = "\x1b["


def qmprr(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def show_seqs(capsys: pytest.CaptureFixture[str], *argv: str) -> list[int]:
    """The seqs ``show --json`` selects."""
    rc, out, err = qmprr(capsys, "show", "--json", *argv)
    assert rc == 0 and err == "", err
    return [json.loads(line)["seq"] for line in out.splitlines()]


def header(**extra: Any) -> dict[str, Any]:
    return {"seq": 0, "t": 0.0, "kind": "header", "format": "qmprr/1", "started": "2026-01-01T00:00:00+00:00",
            "started_epoch": 1767225600.0, "host": "test", "qmprr_version": "0.1.0", **extra}


def timed(path: Path, records: list[dict[str, Any]]) -> None:
    """Write *records* (without seq) after a header, numbering them."""
    write_records(path, [header(), *({"seq": i, **r} for i, r in enumerate(records, 1))])


# -- lines ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in RECORDINGS.glob("*.jsonl")))
def test_one_line_per_record_of_each_real_recording(capsys: pytest.CaptureFixture[str], name: str) -> None:
    path = RECORDINGS / name
    rc, out, err = qmprr(capsys, "show", str(path))
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == len(path.read_bytes().splitlines())
    assert [int(line.split()[1]) for line in lines] == list(range(len(lines)))
    assert ANSI not in out


def test_transactions_are_bracketed_and_debug_stands_out(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = qmprr(capsys, "show", str(TX))
    assert rc == 0
    lines = out.splitlines()
    assert "[[" in lines[10] and "transaction 1 begin 'dump'" in lines[10]
    assert all("|" in lines[i] for i in range(11, 21))  # the gutter while the channel is held
    assert "]]" in lines[21] and "|" not in lines[21] and "|" not in lines[22]
    assert "!! TAINTED custom-monitor" in lines[11]
    assert "query-status [debug]" in lines[22]
    assert "dump-guest-memory" in lines[17] and "116.873 ms" in lines[17]


def test_a_reply_keeps_its_command_when_the_command_is_filtered_out(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = qmprr(capsys, "show", "--errors", "--kind", "reply", str(ERRORS))
    lines = out.splitlines()
    assert len(lines) == 5
    assert "no-such-command ERROR CommandNotFound" in lines[0] and "0.668 ms" in lines[0]
    assert all(line.split()[2] == "primary-2" for line in lines)


def test_problems_are_reported_and_bad_lines_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(TX.read_bytes().replace(b'"event":"STOP"', b'"event":"STOQ"') + b'{"seq":30,"t":')
    rc, out, err = qmprr(capsys, "show", str(path))
    assert rc == 0
    assert len(out.splitlines()) == 29
    assert err.splitlines() == [
        f"qmprr: {path}:line 14: hash chain broken: the line was edited, or a line before it was"
        " deleted, inserted or moved",
        f"qmprr: {path}:line 31: torn last line (14 bytes, no newline)",
    ]


def test_not_a_recording_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text("hello\n")
    rc, out, err = qmprr(capsys, "show", str(path))
    assert rc == 2 and out == ""
    assert err.startswith("qmprr: ") and "not a qmprr/1 recording" in err and len(err.splitlines()) == 1
    rc, _, err = qmprr(capsys, "show", str(tmp_path / "missing.jsonl"))
    assert rc == 2 and "cannot read recording" in err


# -- filters ------------------------------------------------------------------------


def test_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert show_seqs(capsys, "--kind", "tx", str(TX)) == [10, 21]
    assert show_seqs(capsys, "--kind", "taint,tx", str(TX)) == [10, 11, 21]
    assert show_seqs(capsys, "--kind", "event", "--kind", "close", str(TX)) == [13, 16, 19, 27, 29]


def test_unknown_kind_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = qmprr(capsys, "show", "--kind", "comand", str(TX))
    assert rc == 2 and out == ""
    assert "unknown record kind(s) comand" in err and "command" in err


def test_src_and_role_include_replies_and_the_clients_own_records(capsys: pytest.CaptureFixture[str]) -> None:
    debug = [6, 7, 11, 22, 23, 25]  # connect, local, taint, command, its reply, disconnect
    assert show_seqs(capsys, "--src", "debug-1", str(TX)) == debug
    assert show_seqs(capsys, "--src", "debug-*", str(TX)) == debug
    assert show_seqs(capsys, "--role", "debug", str(TX)) == debug
    assert show_seqs(capsys, "--role", "internal", str(TX)) == [2, 3, 26, 28]
    assert show_seqs(capsys, "--src", "qmprr,debug-1", "--kind", "command", str(TX)) == [2, 22, 26]


def test_command_and_event_globs(capsys: pytest.CaptureFixture[str]) -> None:
    assert show_seqs(capsys, "--command", "query-*", str(TX)) == [8, 9, 22, 23]
    assert show_seqs(capsys, "--command", "qmp_capabilities", str(TX)) == [2, 3, 5, 7]  # with qmprr's answers
    assert show_seqs(capsys, "--event", "RES*,SHUT*", str(TX)) == [19, 27]
    # together: commands named X or events named Y
    assert show_seqs(capsys, "--command", "stop", "--event", "STOP", str(TX)) == [12, 13, 14]


def test_errors(capsys: pytest.CaptureFixture[str]) -> None:
    seqs = show_seqs(capsys, "--errors", str(ERRORS))
    assert seqs == [5, 7, 14, 16, 18, 20, 22, 23, 24, 25, 29]
    assert show_seqs(capsys, "--errors", "--role", "debug", str(ERRORS)) == [29]
    assert show_seqs(capsys, "--errors", "--kind", "local", "--src", "primary-1", str(ERRORS)) == [5, 7]


def test_tx_shows_the_transaction_from_begin_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert show_seqs(capsys, "--tx", "1", str(TX)) == list(range(10, 22))
    assert show_seqs(capsys, "--tx", "1", "--kind", "event", str(TX)) == [13, 16, 19]
    assert show_seqs(capsys, "--tx", "2", str(TX)) == []


def test_from_and_to_by_seq_and_by_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert show_seqs(capsys, "--from", "20", "--to", "23", str(TX)) == [20, 21, 22, 23]
    assert show_seqs(capsys, "--from", "27", str(TX)) == [27, 28, 29]
    # t: 0.161364 (16) .. 0.162948 (19)
    assert show_seqs(capsys, "--from", "+161.364ms", "--to", "+0.162948s", str(TX)) == [16, 17, 18, 19]
    assert show_seqs(capsys, "--from", "161364us", "--to", "+0.162948", str(TX)) == [16, 17, 18, 19]
    assert show_seqs(capsys, "--to", "+0", str(TX)) == [0]


def test_grep_and_combinations(capsys: pytest.CaptureFixture[str]) -> None:
    assert show_seqs(capsys, "--grep", "guest.dump", str(TX)) == [15]
    assert show_seqs(capsys, "--grep", "running", "--src", "debug-1", str(TX)) == [23]
    assert show_seqs(capsys, "--grep", "running", "--from", "+100ms", str(TX)) == [23]
    assert show_seqs(capsys, "--grep", "no such text", str(TX)) == []


def test_reading_stops_after_to(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(TX.read_bytes().replace(b'"event":"SHUTDOWN"', b'"event":"SHUTDOWX"'))
    rc, out, err = qmprr(capsys, "show", "--to", "20", str(path))
    assert rc == 0 and err == "" and len(out.splitlines()) == 21  # the bad line 28 was never read
    rc, out, err = qmprr(capsys, "show", str(path))
    assert "line 28: hash chain broken" in err


def test_json_prints_the_lines_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = qmprr(capsys, "show", "--json", "--command", "dump-guest-memory", str(TX))
    lines = TX.read_text().splitlines()
    assert out.splitlines() == [lines[15], lines[17]]


def test_time_filters_on_controlled_times(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.jsonl"
    timed(path, [{"t": float(t), "kind": "event", "msg": {"event": f"E{t}"}} for t in range(0, 200, 10)])
    assert show_seqs(capsys, "--from", "+1m", "--to", "+1.5m", str(path)) == [7, 8, 9, 10]
    assert show_seqs(capsys, "--from", "+30", "--to", "50s", str(path)) == [4, 5, 6]
    assert show_seqs(capsys, "--from", "+0.05h", str(path)) == [19, 20]


@pytest.mark.parametrize(("text", "expected"), [
    ("120", Position(seq=120)),
    ("0", Position(seq=0)),
    ("+1.5", Position(t=1.5)),
    ("+1.5s", Position(t=1.5)),
    ("1.5s", Position(t=1.5)),
    ("250ms", Position(t=0.25)),
    ("+30us", Position(t=0.00003)),
    ("+2m", Position(t=120.0)),
    ("1h", Position(t=3600.0)),
    ("+.5s", Position(t=0.5)),
])
def test_position_syntax(text: str, expected: Position) -> None:
    got = parse_position(text)
    assert got.seq == expected.seq
    assert got.t == pytest.approx(expected.t) if expected.t is not None else got.t is None


@pytest.mark.parametrize("text", ["", "abc", "1.5", "-3", "+", "5 days", "1e3", "+1.5x"])
def test_bad_positions(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FilterError):
        parse_position(text)
    rc, out, err = qmprr(capsys, "show", "--from", text, str(TX))
    assert rc == 2 and out == "" and err.startswith("qmprr: position") and len(err.splitlines()) == 1


# -- colour ----------------------------------------------------------------------------


def run_in_pty(argv: list[str], env: dict[str, str]) -> str:
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "qmprr.cli", *argv], stdout=slave,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
    finally:
        os.close(slave)
    chunks = []
    try:
        while select.select([master], [], [], 30)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    assert proc.wait(30) == 0
    return b"".join(chunks).decode()


def user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env["TERM"] = "xterm-256color"
    return {**env, **extra}


def test_colour_on_a_terminal_only_and_never_with_no_color() -> None:
    argv = ["show", "--errors", str(ERRORS)]
    assert ANSI in run_in_pty(argv, user_env())
    assert ANSI not in run_in_pty(argv, user_env(NO_COLOR="1"))
    assert ANSI in run_in_pty(argv, user_env(NO_COLOR=""))  # no-color.org: empty does not count
    assert ANSI not in run_in_pty([*argv, "--color", "never"], user_env())
    assert ANSI not in run_in_pty(["stats", str(ERRORS)], user_env(NO_COLOR="yes"))
    assert ANSI in run_in_pty(["stats", str(ERRORS)], user_env())


def test_colour_always_into_a_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = qmprr(capsys, "show", "--color", "always", "--kind", "reply", str(ERRORS))
    assert all(ANSI in line for line in out.splitlines())
    _, out, _ = qmprr(capsys, "show", "--kind", "reply", str(ERRORS))
    assert ANSI not in out
