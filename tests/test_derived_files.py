"""Derived files (report, export, replay --report, import -o) are 0600 and never written through a link.

Hostile by construction: a symbolic link at the output path points at a
marker file elsewhere; the marker must keep its content and the command must
fail with one line. Modes are checked with umask 0, where a plain ``open``
would give 0666.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmprr.files import OutputError, check_output, replace_file
from support import QMPRR

ROOT = Path(__file__).resolve().parent.parent
GOOD = str(ROOT / "recordings" / "block.jsonl")
REPLIES = str(ROOT / "tests" / "data" / "libvirt" / "caps-x86_64.replies")

#: command -> argv with {} for the output path
WRITERS = {
    "report": ["report", GOOD, "-o", "{}"],
    "export": ["export", GOOD, "-o", "{}"],
    "replay --report": ["replay", GOOD, "--target", "fake", "--report", "{}"],
    "replay --record": ["replay", GOOD, "--target", "fake", "--record", "{}"],
    "import replies": ["import", "replies", REPLIES, "-o", "{}"],
}


def run(argv: list[str], out: Path, *, umask: int = 0) -> subprocess.CompletedProcess[str]:
    def set_umask() -> None:
        os.umask(umask)

    return subprocess.run([*QMPRR, *[a.format(out) for a in argv]], capture_output=True, text=True,
                          timeout=60, cwd=out.parent, preexec_fn=set_umask)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """A file outside the output folder that no command may change."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = elsewhere / "marker"
    path.write_text("secret config\n")
    yield path
    assert path.read_text() == "secret config\n"


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_written_0600_whatever_the_umask(tmp_path: Path, command: str) -> None:
    out = tmp_path / "out" / "file"
    out.parent.mkdir()
    res = run(WRITERS[command], out, umask=0)
    assert res.returncode == 0, res.stderr
    assert mode(out) == 0o600
    assert os.listdir(out.parent) == ["file"]  # no temporary file left beside it


@pytest.mark.parametrize("command", ["report", "export", "replay --report"])
def test_an_existing_readable_file_is_replaced_by_a_0600_one(tmp_path: Path, command: str) -> None:
    out = tmp_path / "old.txt"
    out.write_text("old")
    out.chmod(0o644)
    res = run(WRITERS[command], out, umask=0o022)
    assert res.returncode == 0, res.stderr
    assert mode(out) == 0o600 and out.read_text() != "old"


@pytest.mark.parametrize("command", sorted(WRITERS))
@pytest.mark.parametrize("dangling", [False, True], ids=["link", "dangling-link"])
def test_a_link_at_the_output_is_refused(tmp_path: Path, marker: Path, command: str, dangling: bool) -> None:
    out = tmp_path / "out.file"
    target = marker.parent / "new-file" if dangling else marker
    out.symlink_to(target)
    res = run(WRITERS[command], out)
    assert res.returncode == 2 and res.stdout == ""  # refused before any work: no replay summary
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("qmprr: ")
    assert "symbolic link" in res.stderr
    assert out.is_symlink() and not (marker.parent / "new-file").exists()
    assert sorted(os.listdir(marker.parent)) == ["marker"]


def test_replay_report_to_a_folder_fails_before_replaying(tmp_path: Path) -> None:
    res = run(WRITERS["replay --report"], tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == f"qmprr: --report {tmp_path}: cannot write: it is a folder; give a file name\n"


def test_the_input_is_not_an_output(tmp_path: Path) -> None:
    copy = tmp_path / "rec.jsonl"
    copy.write_bytes(Path(GOOD).read_bytes())
    res = run(["report", str(copy), "-o", "{}"], copy)
    assert res.returncode == 2 and "is the input" in res.stderr
    assert copy.read_bytes() == Path(GOOD).read_bytes()


def test_a_link_planted_during_the_write_is_refused(tmp_path: Path, marker: Path) -> None:
    out = tmp_path / "out.html"
    with pytest.raises(OutputError, match="symbolic link"), replace_file(out) as f:
        f.write(b"derived data")
        out.symlink_to(marker)  # after the first check, before the rename
    assert out.is_symlink() and sorted(os.listdir(tmp_path)) == ["elsewhere", "out.html"]


def test_special_files_are_never_replaced(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    for path in ("/dev/null", str(tmp_path / "fifo")):
        with pytest.raises(OutputError, match="not a regular file"):
            check_output(path, option="-o")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
