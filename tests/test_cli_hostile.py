"""Every subcommand's file options given hostile values: one line on stderr, a documented exit status.

Each case runs ``python -m qmprr.cli`` in a subprocess: missing files,
folders, ``/dev/zero``, a FIFO nobody writes to (must not block), binary and
non-UTF-8 files, empty files, a recording with only a header, a 20 MB line,
and outputs that are folders, links, special files or in missing folders.
An error exits 2 with exactly one line, ``qmprr: ...``; no case may print a
traceback or qmprr's "internal error" line (a bug caught by the last resort).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from qmprr.recording import RecordWriter
from support import QMPRR

GOOD = str(Path(__file__).resolve().parent.parent / "recordings" / "block.jsonl")

#: Hostile values for a file that is read.
INPUTS = ["missing", "folder", "zero", "fifo", "binary", "latin1", "empty", "header-only", "huge-line"]
#: Hostile values for a file that is written.
OUTPUTS = ["folder", "link", "dangling-link", "null", "fifo", "no-folder"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Name -> path of each hostile value, in one folder for the module."""
    d = tmp_path_factory.mktemp("hostile")
    (d / "folder").mkdir()
    os.mkfifo(d / "fifo")
    (d / "binary").write_bytes(bytes(range(256)) * 4)
    (d / "latin1").write_bytes("règle = 'é'\n[[rule]]\npath = \"x\"\n".encode("latin-1"))
    (d / "empty").write_bytes(b"")
    with RecordWriter.create(d / "header-only", sync="none"):
        pass
    with open(d / "huge-line", "wb") as f:  # sparse: 20 MB of NUL bytes, no newline
        f.truncate(20 * 1024 * 1024)
    (d / "marker").write_text("untouched\n")
    os.symlink(d / "marker", d / "link")
    os.symlink(d / "nowhere", d / "dangling-link")
    paths = {name: str(d / name) for name in INPUTS + OUTPUTS}
    paths.update(zero="/dev/zero", null="/dev/null", missing=str(d / "missing"),
                 **{"no-folder": str(d / "no" / "such" / "out")})
    paths["dir"] = str(d)
    return paths


def run(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "QMPRR_DEBUG"}
    return subprocess.run([*QMPRR, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          stdin=subprocess.DEVNULL, env=env)


def assert_clean(res: subprocess.CompletedProcess[str], allowed: tuple[int, ...] = (1, 2)) -> None:
    """Exit status in *allowed*; no traceback; an error is exactly one ``qmprr:`` line."""
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    assert res.returncode in allowed, (res.returncode, res.stderr)
    if res.returncode == 2:
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("qmprr: "), res.stderr
    else:
        assert all(line.startswith("qmprr") for line in res.stderr.splitlines()), res.stderr


# Where a hostile input goes: {} is the hostile path, {out} a fresh output, {sock} a socket path.
INPUT_SLOTS = {
    "verify": ["verify", "{}"],
    "repair": ["repair", "{}"],
    "show": ["show", "{}"],
    "stats": ["stats", "{}"],
    "report": ["report", "{}", "-o", "{out}"],
    "export": ["export", "{}", "-o", "{out}"],
    "diff": ["diff", "{}", GOOD],
    "diff-rules": ["diff", GOOD, GOOD, "--rules", "{}"],
    "replay": ["replay", "{}", "--target", "fake"],
    "replay-rules": ["replay", GOOD, "--target", "fake", "--rules", "{}"],
    "replay-argv-file": ["replay", GOOD, "--argv-file", "{}"],
    "replay-domain": ["replay", GOOD, "--domain", "{}"],
    "fake": ["fake", "{}", "--socket", "{sock}"],
    "fake-rules": ["fake", GOOD, "--socket", "{sock}", "--rules", "{}"],
    "domain-argv": ["domain", "argv", "{}"],
    "launch-domain": ["launch", "--record", "{out}", "--socket", "{sock}", "--domain", "{}"],
    "import-replies": ["import", "replies", "{}", "-o", "{out}"],
    "import-libvirt": ["import", "libvirt", "{}", "-o", "{out}"],
    "import-qemu-log": ["import", "libvirt", str(Path(__file__).parent / "data" / "libvirt" / "libvirtd-debug.log"),
                        "--monitor", "1", "--qemu-log", "{}", "-o", "{out}"],
}
#: The values each slot gets: every value where the code path is its own, the telling ones where
#: it shares a reader with another slot (recordings: RecordingReader, Scanner, the replay script).
RECORDING_SHARED = ["zero", "fifo", "huge-line"]
VALUES = {
    "verify": INPUTS, "show": INPUTS, "replay": INPUTS, "replay-rules": INPUTS,
    "replay-argv-file": INPUTS, "domain-argv": INPUTS, "import-replies": INPUTS,
    "import-libvirt": ["zero", "fifo", "binary", "empty", "folder"],
    "fake": [v for v in INPUTS if v != "header-only"],  # a header-only recording is served: valid
    "diff-rules": ["latin1", "binary", "zero"], "fake-rules": ["latin1", "binary", "zero"],
    "replay-domain": ["zero", "fifo", "binary", "huge-line"], "launch-domain": ["zero", "fifo", "binary", "empty"],
    "import-qemu-log": ["zero", "fifo", "folder"],
}
CASES = [(slot, value) for slot in INPUT_SLOTS for value in VALUES.get(slot, RECORDING_SHARED)]

#: A header-only recording is a valid recording: commands that only read it may succeed; an empty
#: rules file holds no rules (a FIFO with no writer reads as empty).
MAY_SUCCEED = {(slot, "header-only") for slot in ("verify", "repair", "show", "stats", "report", "export")} | {
    ("replay-rules", "empty"), ("replay-rules", "fifo")}


@pytest.mark.parametrize("slot, value", CASES)
def test_hostile_input(hostile: dict[str, str], tmp_path: Path, slot: str, value: str) -> None:
    args = [a.format(hostile[value], out=str(tmp_path / "out"), sock=str(tmp_path / "s.sock"))
            for a in INPUT_SLOTS[slot]]
    res = run(*args, cwd=str(tmp_path))
    assert_clean(res, (0, 1, 2) if (slot, value) in MAY_SUCCEED else (1, 2))
    assert not (tmp_path / "s.sock").exists()


OUTPUT_SLOTS = {
    "report": ["report", GOOD, "-o", "{}"],
    "export": ["export", GOOD, "-o", "{}"],
    "replay-report": ["replay", GOOD, "--target", "fake", "--report", "{}"],
    "replay-record": ["replay", GOOD, "--target", "fake", "--record", "{}"],
    "import-replies": ["import", "replies", str(Path(__file__).parent / "data" / "libvirt" / "caps-x86_64.replies"),
                       "-o", "{}"],
}


OUTPUT_CASES = [(slot, value) for slot in OUTPUT_SLOTS
                for value in (OUTPUTS if slot in ("report", "replay-report") else ["link", "folder"])]


@pytest.mark.parametrize("slot, value", OUTPUT_CASES)
def test_hostile_output(hostile: dict[str, str], tmp_path: Path, slot: str, value: str) -> None:
    before = sorted(os.listdir(hostile["dir"]))
    res = run(*[a.format(hostile[value]) for a in OUTPUT_SLOTS[slot]], cwd=str(tmp_path))
    assert_clean(res, (2,))
    assert "cannot write" in res.stderr or "file exists" in res.stderr or "cannot read" in res.stderr
    assert Path(hostile["dir"], "marker").read_text() == "untouched\n"
    assert sorted(os.listdir(hostile["dir"])) == before  # no temporary file left, no link replaced
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


OPTION_VALUES = [
    ["inject", "--timeout", "-1", "{sock}", "query-status"],
    ["inject", "--timeout", "0", "{sock}", "query-status"],
    ["inject", "--timeout", "nan", "{sock}", "query-status"],
    ["inject", "--timeout", "soon", "{sock}", "query-status"],
    ["inject", "{sock}", "query-status"],
    ["inject", "{dir}", "query-status"],
    ["launch", "--record", "{out}", "--socket", "{sock}", "--tx-timeout", "-1", "--", "true"],
    ["proxy", "--record", "{out}", "--socket", "{sock}", "--upstream", "{dir}"],
    ["proxy", "--record", "{dir}", "--socket", "{sock}", "--upstream", "{sock}"],
    ["replay", GOOD, "--target", "fake", "--event-timeout", "0"],
    ["replay", GOOD, "--target", "fake", "--pace", "-1"],
    ["replay", GOOD, "--target", "fake", "--pace", "nan"],
    ["replay", GOOD, "--target", "fake", "--until", "x"],
    ["replay", GOOD, "--target", "fake", "--map-path", "nonsense"],
    ["replay", GOOD, "--target", "fake", "--secret", "nonsense"],
    ["replay", GOOD, "--target", "socket:{dir}"],
    ["replay", GOOD, "--target", "nowhere"],
    ["replay", GOOD, "--workdir", "{zero}"],
    ["fake", GOOD, "--socket", "{dir}"],
    ["fake", GOOD, "--socket", "{no-folder}"],
    ["show", GOOD, "--from", "yesterday"],
    ["show", GOOD, "--kind", "nonsense"],
    ["show", GOOD, "--to", "+1e999s"],
    ["bench", "log", "--records", "0"],
    ["bench", "analysis", "--records", "-5"],
    ["domain", "from-argv"],
    ["import", "libvirt", "{empty}", "--list", "-o", "{out}"],
    ["no-such-command"],
]


@pytest.mark.parametrize("argv", OPTION_VALUES, ids=lambda a: " ".join(a)[:60])
def test_hostile_option_value(hostile: dict[str, str], tmp_path: Path, argv: list[str]) -> None:
    res = run(*[a.format(sock=str(tmp_path / "s.sock"), out=str(tmp_path / "out"), **hostile)
                for a in argv], cwd=str(tmp_path))
    assert_clean(res, (2,))


def test_fifo_input_does_not_block(hostile: dict[str, str], tmp_path: Path) -> None:
    """A FIFO with no writer: refused as a recording, empty as a rules file; neither waits."""
    res = run("show", hostile["fifo"], cwd=str(tmp_path))
    assert res.returncode == 2 and "not a regular file" in res.stderr
    res = run("diff", GOOD, GOOD, "--rules", hostile["fifo"], cwd=str(tmp_path))
    assert res.returncode == 0 and res.stderr == ""  # an empty rules file: no rules


def test_arguments_and_names_that_are_not_utf8(tmp_path: Path) -> None:
    """Bytes from argv that are not UTF-8 (surrogates in Python) in text options and file names."""
    bad = b"\xff\xfe"
    named = tmp_path / os.fsdecode(b"rec-" + bad + b".jsonl")
    named.write_bytes(Path(GOOD).read_bytes())
    cases = [
        [b"show", GOOD.encode(), b"--grep", bad],
        [b"show", GOOD.encode(), b"--src", bad, b"--command", bad, b"--event", bad],
        [b"report", GOOD.encode(), b"-o", b"out.html", b"--title", bad],
        [b"report", os.fsencode(named), b"-o", b"out-" + bad + b".html"],
        [b"export", os.fsencode(named), b"-o", b"trace.json"],
        [b"stats", os.fsencode(named)],
        [b"diff", os.fsencode(named), GOOD.encode()],
        [b"verify", bad],
    ]
    for argv in cases:
        res = subprocess.run([*(os.fsencode(a) for a in QMPRR), *argv], capture_output=True, timeout=60,
                             cwd=tmp_path)
        err = res.stderr.decode("utf-8", "replace")
        assert "Traceback" not in err and "internal error" not in err, (argv, err)
        assert res.returncode in (0, 2), (argv, err)
