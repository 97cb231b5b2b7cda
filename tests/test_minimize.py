"""``qmprr minimize``: dependency units, ddmin, and whole runs against the fake and a real QEMU."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmprr.bench import minimize as bench
from qmprr.cli import main
from qmprr.recording import RecordingReader
from qmprr.recording.rechain import read_edited
from qmprr.replay import deps
from qmprr.replay.ddmin import Budget, Search
from qmprr.replay.minimize import _Recording, parse_budget, split_argv
from replay_support import RUNNING, Step, event, fake_process, qmprr, write_recording


def cmd(seq: int, execute: str, arguments: dict[str, Any] | None = None, tx: int | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"execute": execute}
    if arguments is not None:
        msg["arguments"] = arguments
    d: dict[str, Any] = {"seq": seq, "kind": "command", "src": "primary-1", "role": "primary", "msg": msg}
    if tx is not None:
        d["tx"] = tx
    return d


def seqs(analysis: deps.Analysis, units: set[int]) -> list[int]:
    return sorted(analysis.commands[c]["seq"] for u in units for c in analysis.units[u].commands)


# -- dependency analysis -----------------------------------------------------------------------


def test_a_node_its_job_and_the_job_commands_are_kept_together() -> None:
    records = [
        cmd(1, "qmp_capabilities"),
        cmd(2, "blockdev-add", {"driver": "null-co", "node-name": "a"}),
        cmd(3, "blockdev-add", {"driver": "qcow2", "node-name": "b", "file": {"driver": "null-co", "node-name": "bf"}}),
        cmd(4, "query-status"),
        cmd(5, "blockdev-mirror", {"job-id": "j", "device": "a", "target": "b", "sync": "full"}),
        cmd(6, "job-pause", {"id": "j"}),
        cmd(7, "qom-get", {"path": "/machine", "property": "type"}),
        cmd(8, "block-stream", {"device": "bf"}),  # no job-id: the job is named after its device
        cmd(9, "block-job-cancel", {"device": "bf"}),
    ]
    a = deps.analyze(records)
    by_seq = {a.commands[c]["seq"]: a.unit_of[c] for c in range(len(a.commands))}
    assert seqs(a, a.closure({by_seq[6]})) == [1, 2, 3, 5, 6]
    assert seqs(a, a.closure({by_seq[9]})) == [1, 3, 8, 9]  # the stream job, then its node
    assert seqs(a, a.closure({by_seq[4]})) == [1, 4]  # the negotiation is pinned
    assert by_seq[1] not in a.removable()
    assert a.units[by_seq[5]].needs == {by_seq[2]: {"a"}, by_seq[3]: {"b"}}


def test_devices_objects_removals_and_recreation() -> None:
    records = [
        cmd(1, "object-add", {"qom-type": "iothread", "id": "io0"}),
        cmd(2, "device_add", {"driver": "virtio-blk-pci", "id": "disk0", "iothread": "io0"}),
        cmd(3, "qom-get", {"path": "/machine/peripheral/disk0", "property": "type"}),  # a QOM path names it too
        cmd(4, "device_del", {"id": "disk0"}),
        cmd(5, "device_add", {"driver": "virtio-blk-pci", "id": "disk0"}),  # needs the removal first
        cmd(6, "query-status"),
    ]
    a = deps.analyze(records)
    assert seqs(a, a.closure({a.unit_of[2]})) == [1, 2, 3]
    assert seqs(a, a.closure({a.unit_of[4]})) == [1, 2, 4, 5]
    assert seqs(a, a.closure({a.unit_of[5]})) == [6]


def test_a_transaction_is_one_unit_and_a_qmp_transaction_makes_its_nodes() -> None:
    records = [
        cmd(1, "blockdev-add", {"driver": "null-co", "node-name": "base"}),
        cmd(2, "query-status", tx=7),
        cmd(3, "transaction", {"actions": [
            {"type": "blockdev-snapshot-sync", "data": {"node-name": "base", "snapshot-file": "s.qcow2",
                                                        "snapshot-node-name": "snap"}}]}, tx=7),
        cmd(4, "query-name"),
        cmd(5, "block-stream", {"job-id": "s", "device": "snap"}),
    ]
    a = deps.analyze(records)
    tx_unit = a.unit_of[1]
    assert a.unit_of[2] == tx_unit and a.units[tx_unit].tx == 7 and len(a.units) == 4
    assert seqs(a, a.closure({a.unit_of[4]})) == [1, 2, 3, 5]  # never half a transaction


def test_a_graph_change_comes_before_later_users_of_its_nodes() -> None:
    records = [
        cmd(1, "blockdev-add", {"driver": "null-co", "node-name": "base"}),
        cmd(2, "blockdev-add", {"driver": "qcow2", "node-name": "top", "backing": None}),
        cmd(3, "blockdev-snapshot", {"node": "base", "overlay": "top"}),
        cmd(4, "block-commit", {"job-id": "c", "device": "top"}),
    ]
    a = deps.analyze(records)
    assert seqs(a, a.closure({a.unit_of[3]})) == [1, 2, 3, 4]


def test_names_from_the_command_line_and_argv_options() -> None:
    a = deps.analyze([cmd(1, "blockdev-add", {"driver": "qcow2", "node-name": "top", "file": "disk0"})])
    assert deps.argv_names(a, {0}) >= {"disk0"}
    assert split_argv(["-machine", "none", "-S", "-nodefaults", "-blockdev", "driver=null-co,node-name=disk0"]) == [
        ["-machine", "none"], ["-S"], ["-nodefaults"], ["-blockdev", "driver=null-co,node-name=disk0"]]


def test_budget_parsing() -> None:
    assert (parse_budget("200").tries, parse_budget("200").seconds) == (200, None)
    assert parse_budget("60s").seconds == 60 and parse_budget("2m").seconds == 120
    for bad in ("0", "-3", "abc", "5x", "nans"):
        with pytest.raises(ValueError):
            parse_budget(bad)


# -- ddmin ------------------------------------------------------------------------------------


@given(
    n=st.integers(2, 120),
    needed=st.sets(st.integers(0, 119), min_size=1, max_size=4),
    edges=st.dictionaries(st.integers(0, 119), st.sets(st.integers(0, 119), max_size=3), max_size=10),
    jobs=st.integers(1, 4),
)
def test_ddmin_finds_exactly_the_needed_items_and_what_they_need(
    n: int, needed: set[int], edges: dict[int, set[int]], jobs: int
) -> None:
    needed = {x % n for x in needed}
    graph = {k % n: {v % n for v in vs} for k, vs in edges.items()}

    def close(items: Any) -> frozenset[int]:
        out, todo = set(items), list(items)
        while todo:
            for dep in graph.get(todo.pop(), ()):
                if dep not in out:
                    out.add(dep)
                    todo.append(dep)
        return frozenset(out)

    tried: list[frozenset[int]] = []

    async def test(config: frozenset[int]) -> bool:
        tried.append(config)
        return needed <= config

    result = asyncio.run(Search(test, close=close, jobs=jobs).run(range(n)))
    assert result.complete
    assert result.config == close(needed)
    assert len(tried) == len(set(tried)) == result.tries  # a configuration is never tried twice


def test_ddmin_stops_at_its_budget_with_the_best_so_far() -> None:
    async def test(config: frozenset[int]) -> bool:
        return {3, 50, 97} <= config

    result = asyncio.run(Search(test, jobs=2, budget=Budget(tries=12)).run(range(100)))
    assert result.tries == 12 and not result.complete
    assert {3, 50, 97} <= result.config and len(result.config) < 100


# -- candidates -------------------------------------------------------------------------------


def test_a_candidate_keeps_its_replies_its_events_and_a_kept_jobs_events(tmp_path: Path) -> None:
    rec = write_recording(tmp_path / "r.jsonl", [
        Step("blockdev-add", {"driver": "null-co", "node-name": "n0"}),
        Step("blockdev-mirror", {"job-id": "j0", "device": "n0", "target": "n0", "sync": "full"},
             before=[event("JOB_STATUS_CHANGE", {"status": "created", "id": "j0"})]),
        Step("query-status", reply={"return": RUNNING},
             after=[event("JOB_STATUS_CHANGE", {"status": "ready", "id": "j0"}), event("STOP")]),
        Step("block-job-cancel", {"device": "j0"}, after=[event("BLOCK_JOB_CANCELLED", {"device": "j0"})]),
        Step("quit", role="internal", src="qmprr",  # names nothing, yet causes the kept job's end: goes with it
             after=[event("JOB_STATUS_CHANGE", {"status": "aborting", "id": "j0"}), event("SHUTDOWN")]),
    ])
    r = _Recording(str(rec))
    a = r.analysis
    mirror = next(u for u in a.units if deps.command_name(a.commands[u.commands[0]]) == "blockdev-mirror")
    kept = r.records_for(r.close({mirror.index}))
    names = [(d["kind"], (d.get("msg") or {}).get("execute") or (d.get("msg") or {}).get("event")) for d in kept]
    assert ("command", "query-status") not in names and ("command", "block-job-cancel") not in names
    events = [n for k, n in names if k == "event"]
    # the job's own events stay (also the one in the window of query-status, a query); STOP, the cancel's
    # and quit's go with their commands
    assert events == ["JOB_STATUS_CHANGE", "JOB_STATUS_CHANGE"]
    assert sum(1 for k, _ in names if k == "reply") == 3  # negotiation, blockdev-add, blockdev-mirror


# -- whole runs against the fake ---------------------------------------------------------------


def noisy(n: int, special: dict[int, Step]) -> list[Step]:
    """*n* unrelated queries with *special* steps at their positions."""
    out = []
    for i in range(n):
        if i in special:
            out.append(special[i])
        out.append(Step("query-status", reply={"return": RUNNING}) if i % 2 else
                   Step("qom-get", {"path": "/machine", "property": "type"}, reply={"return": "none-machine"}))
    return out


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["minimize", *args])
    out, err = capsys.readouterr()
    return status, out, err


def last_hash(path: Path) -> str:
    return json.loads(path.read_bytes().splitlines()[-1])["h"]


def test_error_class_against_the_fake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = write_recording(tmp_path / "bug.jsonl", noisy(200, {
        30: Step("blockdev-add", {"driver": "null-co", "node-name": "n0"}),
        60: Step("blockdev-add", {"driver": "null-co", "node-name": "other"}),
        150: Step("block-job-pause", {"device": "n0"},
                  reply={"error": {"class": "DeviceNotFound", "desc": "Block job 'n0' not found"}}),
    }))
    out = tmp_path / "small.jsonl"
    status, stdout, err = run_cli(capsys, str(rec), "-o", str(out), "--target", "fake", "--error-class", "DeviceNotFound")
    assert status == 0, err
    assert "204 -> 3 command(s)" in stdout and "1-minimal" in stdout
    assert "blockdev-add: cannot be removed without breaking" in stdout and "(names 'n0')" in stdout
    with RecordingReader(out) as reader:
        header = reader.header
        commands = [r.msg["execute"] for r in reader if r.kind == "command"]
    assert commands == ["qmp_capabilities", "blockdev-add", "block-job-pause"]
    derived = header.derived_from
    assert derived is not None and derived["how"] == "minimized" and derived["file"] == "bug.jsonl"
    assert derived["final_hash"] == last_hash(rec)
    assert derived["minimized"]["criterion"] == "error class DeviceNotFound"
    assert derived["minimized"]["commands"] == [204, 3] and derived["minimized"]["tries"] <= 200
    assert qmprr("verify", str(out)).returncode == 0
    replayed = qmprr("replay", str(out), "--target", "fake")
    assert replayed.returncode == 0 and "DeviceNotFound" not in replayed.stderr


def test_event_and_predicate_against_the_fake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = write_recording(tmp_path / "bug.jsonl", noisy(120, {
        70: Step("stop", after=[event("STOP")]),
        90: Step("system_reset", after=[event("RESET", {"guest": False, "reason": "host-qmp-system-reset"})]),
    }))
    out = tmp_path / "stop.jsonl"
    status, stdout, err = run_cli(capsys, str(rec), "-o", str(out), "--target", "fake", "--event", "STOP")
    assert status == 0, err
    assert [r["msg"]["execute"] for r in read_edited(str(out))[0] if r["kind"] == "command"] == [
        "qmp_capabilities", "stop"]
    script = tmp_path / "still.py"
    script.write_text("import json, sys\nr = json.load(sys.stdin)\n"
                      "sys.exit(0 if any(s['command'] == 'system_reset' and s['status'] == 'matched'"
                      " for s in r['steps']) else 1)\n")
    out2 = tmp_path / "reset.jsonl"
    status, stdout, err = run_cli(capsys, str(rec), "-o", str(out2), "--target", "fake", "--jobs", "1",
                                  "--predicate", f"{sys.executable} {script}")
    assert status == 0, err
    kept = [r for r in read_edited(str(out2))[0] if r["kind"] in ("command", "event")]
    assert [r["msg"].get("execute", r["msg"].get("event")) for r in kept] == ["qmp_capabilities", "system_reset", "RESET"]


def test_the_budget_stops_early_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = write_recording(tmp_path / "bug.jsonl", noisy(100, {
        10: Step("stop", after=[event("STOP")]), 80: Step("cont", after=[event("RESUME")])}))
    out = tmp_path / "small.jsonl"
    status, stdout, err = run_cli(capsys, str(rec), "-o", str(out), "--target", "fake", "--event", "STOP",
                                  "--budget", "3", "--jobs", "1")
    assert status == 0, err
    assert "in 3 tries (budget spent: smaller may exist)" in stdout
    assert read_edited(str(out))[0][0]["derived_from"]["minimized"]["complete"] is False


def test_an_original_that_does_not_fail_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = write_recording(tmp_path / "ok.jsonl", noisy(20, {}))
    out = tmp_path / "small.jsonl"
    status, stdout, err = run_cli(capsys, str(rec), "-o", str(out), "--target", "fake")  # the fake reproduces itself
    assert status == 1 and not out.exists()
    assert err.count("\n") == 1 and err.startswith("qmprr: ") and "does not show the failure" in err
    status, _, err = run_cli(capsys, str(rec), "-o", str(out), "--target", "fake", "--error-class", "GenericError")
    assert status == 1 and "error class GenericError" in err


@pytest.mark.parametrize("case", ["missing", "exists", "argv-fake", "budget", "tampered", "not-a-recording",
                                  "bad-target", "no-folder", "predicate", "predicate-quote"])
def test_bad_input_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    rec = write_recording(tmp_path / "r.jsonl", noisy(10, {5: Step("stop", after=[event("STOP")])}))
    out = tmp_path / "out.jsonl"
    args = [str(rec), "-o", str(out), "--target", "fake", "--event", "STOP"]
    if case == "missing":
        args[0] = str(tmp_path / "nope.jsonl")
    elif case == "exists":
        out.write_text("mine\n")
    elif case == "argv-fake":
        args.append("--argv")
    elif case == "budget":
        args += ["--budget", "soon"]
    elif case == "tampered":
        rec.write_bytes(rec.read_bytes().replace(b"query-status", b"query-statuz", 1))
    elif case == "not-a-recording":
        rec.write_text("hello\n")
    elif case == "bad-target":
        args[args.index("fake")] = "nowhere"
    elif case == "no-folder":
        args[2] = str(tmp_path / "no" / "out.jsonl")
    elif case == "predicate":
        args += ["--predicate", str(tmp_path / "no-such-program")]
    elif case == "predicate-quote":
        args += ["--predicate", "'unclosed"]
    status, _, err = run_cli(capsys, *args)
    assert status == 2, err
    assert err.startswith("qmprr: ") and err.count("\n") == 1 and "Traceback" not in err and "internal error" not in err
    if case == "exists":
        assert out.read_text() == "mine\n"
    elif case != "no-folder":
        assert not out.exists()


def test_help_has_an_example_and_exit_statuses() -> None:
    text = qmprr("minimize", "--help").stdout
    assert "Examples:\n  qmprr minimize" in text and "0 minimized" in text and "1 the original does not fail" in text


# -- against a real QEMU ------------------------------------------------------------------------


@pytest.mark.qemu
def test_a_bug_buried_in_a_long_session_against_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = Path(bench.record_session(str(tmp_path), noise=150, seed=2))
    out = tmp_path / "small.jsonl"
    status, stdout, err = run_cli(capsys, str(rec), "-o", str(out), "--target", "qemu", "--budget", "200")
    assert status == 0, err
    kept = [(r["msg"]["execute"], r["msg"].get("arguments")) for r in read_edited(str(out))[0] if r["kind"] == "command"]
    # the bug's steps, in order, and at most the goal's 2x: a try a loaded host made fail to run may keep one more
    assert [k for k in kept if k in bench.BUG_STEPS] == bench.BUG_STEPS, stdout
    assert kept[0] == ("qmp_capabilities", None) and len(kept) <= 2 * bench.KNOWN_MINIMAL, stdout
    assert int(stdout.split(" tries")[0].rsplit(" ", 1)[1]) <= 200
    replayed = qmprr("replay", str(out))  # what 'qmprr replay' makes of it: the same divergence
    assert replayed.returncode == 1, replayed.stdout + replayed.stderr
    assert "first divergence at step 4" in replayed.stdout and "blockdev-del" in replayed.stdout
    assert "reply return vs error" in replayed.stdout and "in use" in replayed.stdout


@pytest.mark.qemu
def test_argv_keeps_what_the_kept_commands_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*bench.QEMU_NONE, "-m", "64", "-name", "argvtest", "-blockdev", "driver=null-co,node-name=cl0,size=67108864"]
    steps = [("blockdev-add", {"driver": "null-co", "node-name": "src0", "size": 67108864}),
             ("blockdev-mirror", {"job-id": "m0", "device": "src0", "target": "cl0", "sync": "full", "speed": 1}),
             ("blockdev-del", {"node-name": "cl0"})]
    rec = Path(bench.record_session(str(tmp_path), noise=40, seed=3, qemu_argv=argv, steps=steps))
    out = tmp_path / "small.jsonl"
    status, stdout, err = run_cli(capsys, str(rec), "-o", str(out), "--target", "qemu", "--argv")
    assert status == 0, err
    header = read_edited(str(out))[0][0]
    kept = header["qemu_argv"]
    assert kept[0] == "qemu-system-x86_64"
    assert "-blockdev" in kept and "driver=null-co,node-name=cl0,size=67108864" in kept  # named by the kept commands
    assert "argvtest" not in kept and "-m" not in kept
    assert header["derived_from"]["minimized"]["argv"] == [len(argv), len(kept)]
    assert qmprr("replay", str(out)).returncode == 1


@pytest.mark.qemu
def test_the_figure_script_meets_its_goal_on_a_short_session(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.run(noise=100, budget=200, jobs=2, seed=5) == 0
    assert "goal <= 2x in <= 200 tries: met" in capsys.readouterr().out


def test_an_edited_reply_against_a_fake_of_the_original_on_a_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    special = {40: Step("query-name", reply={"return": {"name": "vm1"}})}
    original = write_recording(tmp_path / "original.jsonl", noisy(80, special))
    edited = write_recording(tmp_path / "edited.jsonl", noisy(80, {40: Step("query-name", reply={"return": {"name": "vm2"}})}))
    sock = tmp_path / "fake.sock"
    out = tmp_path / "small.jsonl"
    with fake_process(original, sock, "--mode", "lenient", "--reuse", "--keep-serving"):
        status, stdout, err = run_cli(capsys, str(edited), "-o", str(out), "--target", f"socket:{sock}", "--jobs", "2")
    assert status == 0, err
    assert "one at a time" in err  # --jobs 2 against one socket: said, and not done
    assert [r["msg"]["execute"] for r in read_edited(str(out))[0] if r["kind"] == "command"] == [
        "qmp_capabilities", "query-name"]
    assert "first divergence: query-name diverged (reply return.name)" in stdout


def test_a_transaction_is_kept_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = Path(__file__).resolve().parent.parent / "recordings" / "inject-during-transaction.jsonl"
    out = tmp_path / "small.jsonl"
    status, stdout, err = run_cli(capsys, str(rec), "-o", str(out), "--target", "fake", "--event", "RESUME")
    assert status == 0, err
    records = read_edited(str(out))[0]
    assert [r["msg"]["execute"] for r in records if r["kind"] == "command"] == [
        "qmp_capabilities", "stop", "dump-guest-memory", "cont"]  # cont alone sends RESUME: its tx comes whole
    assert [r["action"] for r in records if r["kind"] == "tx"] == ["begin", "end"]
    assert "(transaction 1, 3 commands)" in stdout and "could not run" not in stdout


@pytest.fixture(scope="module")
def mixed_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mixed")
    return write_recording(folder / "mixed.jsonl", noisy(30, {
        3: Step("blockdev-add", {"driver": "null-co", "node-name": "n0"}),
        8: Step("blockdev-mirror", {"job-id": "j0", "device": "n0", "target": "n0", "sync": "full"},
                before=[event("JOB_STATUS_CHANGE", {"status": "created", "id": "j0"})]),
        12: Step("stop", after=[event("STOP")]),
        20: Step("job-pause", {"id": "j0"}, fd="fd0"),
        25: Step("blockdev-del", {"node-name": "n0"}, reply=None),  # in flight at the end
    }))


@given(keep=st.sets(st.integers(0, 40)))
def test_every_candidate_is_a_valid_recording_with_its_commands_replies_and_fds(
    mixed_recording: Path, keep: set[int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from qmprr.recording import verify
    from qmprr.recording.rechain import write_derived
    from qmprr.replay.script import load_script

    r = _Recording(str(mixed_recording))
    config = r.close({k for k in keep if k < len(r.analysis.units)})
    out = tmp_path_factory.mktemp("cand") / "c.jsonl"
    write_derived(r.records_for(config), str(out), r.derived({"stage": "test"}))
    assert verify(out).ok
    script = load_script(out)
    wanted = sorted(r.analysis.commands[c]["seq"] for u in config for c in r.analysis.units[u].commands)
    originals = {d["seq"]: d for d in r.records}
    assert [e.command for e in script.exchanges] == [
        originals[s]["msg"]["execute"] for s in wanted if originals[s]["role"] != "internal"]
    by_name = {e.command: e for e in script.exchanges}
    if "job-pause" in by_name:
        assert [f.placeholder for f in by_name["job-pause"].fds] == ["fd0"]
        assert "blockdev-mirror" in by_name and "blockdev-add" in by_name  # what it needs came along
    if "blockdev-del" in by_name:
        assert by_name["blockdev-del"].reply is None


def test_a_time_budget_that_is_spent_tries_nothing() -> None:
    async def test(config: frozenset[int]) -> bool:
        return 7 in config

    result = asyncio.run(Search(test, budget=Budget(seconds=1e-9)).run(range(20)))
    assert result.tries == 0 and not result.complete and result.config == frozenset(range(20))


def test_a_sealed_original_gives_an_unsealed_file_that_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "key"
    key.write_bytes(bytes(range(32)))
    sealed = tmp_path / "sealed.jsonl"
    src = Path(__file__).resolve().parent.parent / "recordings" / "inject-during-transaction.jsonl"
    assert qmprr("rechain", str(src), str(sealed), "--seal-key", str(key)).returncode == 0
    out = tmp_path / "small.jsonl"
    status, _, err = run_cli(capsys, str(sealed), "-o", str(out), "--target", "fake", "--event", "RESUME")
    assert status == 0, err
    records = read_edited(str(out))[0]
    assert "seal" not in records[0] and not [r for r in records if r["kind"] == "note" and "seal" in r["text"]]
    checked = qmprr("verify", str(out))
    assert checked.returncode == 0 and "ok" in checked.stdout


@pytest.mark.qemu
def test_an_error_class_against_qemu_keeps_what_makes_qemu_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench.record_session(str(tmp_path), noise=80, seed=4)
    raw = tmp_path / "session.jsonl"  # as recorded, not edited: QEMU refuses the delete of the busy node
    out = tmp_path / "small.jsonl"
    status, stdout, err = run_cli(capsys, str(raw), "-o", str(out), "--target", "qemu", "--error-class", "GenericError")
    assert status == 0, err
    kept = [(r["msg"]["execute"], r["msg"].get("arguments")) for r in read_edited(str(out))[0] if r["kind"] == "command"]
    # the delete fails only while the mirror runs, and the mirror needs both nodes
    assert kept == [("qmp_capabilities", None), *bench.BUG_STEPS], stdout
    assert "needed for the failure" in stdout


# -- compressed files and segment sets; replay's options --------------------------------------


def as_set(src: Path, stem: Path, size: int = 3000) -> list[str]:
    """*src*'s records written again as a rotating, zstd-compressed set STEM.000001.jsonl...; its files."""
    from qmprr.recording import Fd, Reply, sets
    from qmprr.recording.rotate import Rotation, SegmentedWriter

    with RecordingReader(src) as reader:
        header, *rest = list(reader)
    seqs: dict[int, int] = {}  # the set's seqs skip its later headers: replies and fds follow
    with SegmentedWriter(str(stem), header, Rotation(size=size, compress="zstd")) as w:  # type: ignore[arg-type]
        for record in rest:
            if isinstance(record, Reply | Fd) and record.cmd is not None:
                record = attrs.evolve(record, cmd=seqs[record.cmd])
            recorded = record.seq
            seqs[recorded] = w.append(record).seq  # append sets the record's seq
    assert w.errors == []
    return [p for _, p in sets.segments_of(str(stem))]


BURIED = {
    30: Step("blockdev-add", {"driver": "null-co", "node-name": "n0"}),
    60: Step("blockdev-add", {"driver": "null-co", "node-name": "other"}),
    150: Step("block-job-pause", {"device": "n0"},
              reply={"error": {"class": "DeviceNotFound", "desc": "Block job 'n0' not found"}}),
}


def test_a_compressed_set_is_read_whole_and_gives_one_plain_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    single = write_recording(tmp_path / "bug.jsonl", noisy(200, BURIED))
    folder = tmp_path / "set"
    folder.mkdir()
    files = as_set(single, folder / "vm")
    assert len(files) > 3 and all(f.endswith(".jsonl.zst") for f in files[:-1])
    with RecordingReader(files[0]) as reader:
        set_id = reader.header.recording
    for n, path in enumerate((folder, Path(files[0]))):  # the folder, the first segment
        out = tmp_path / f"small{n}.jsonl"
        status, stdout, err = run_cli(capsys, str(path), "-o", str(out), "--target", "fake",
                                      "--error-class", "DeviceNotFound")
        assert status == 0, err
        assert "204 -> 3 command(s)" in stdout and "1-minimal" in stdout
        records = read_edited(str(out))[0]
        assert [r["msg"]["execute"] for r in records if r["kind"] == "command"] == [
            "qmp_capabilities", "blockdev-add", "block-job-pause"]
        header = records[0]
        assert not {"segment", "previous", "recording", "retention"} & header.keys()  # one file, not a segment
        derived = header["derived_from"]
        assert derived["file"] == Path(files[-1]).name and derived["final_hash"] == last_hash(Path(files[-1]))
        assert derived["segments"] == [Path(f).name for f in files] and derived["recording"] == set_id
        assert derived["minimized"]["commands"] == [204, 3]
        assert qmprr("verify", str(out)).returncode == 0


def test_one_zst_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    import zstandard

    single = write_recording(tmp_path / "bug.jsonl", noisy(200, BURIED))
    packed = tmp_path / "bug.jsonl.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(single.read_bytes()))
    single.unlink()
    out = tmp_path / "small.jsonl"
    status, stdout, err = run_cli(capsys, str(packed), "-o", str(out), "--target", "fake", "--error-class", "DeviceNotFound")
    assert status == 0, err
    derived = read_edited(str(out))[0][0]["derived_from"]
    assert derived["file"] == "bug.jsonl.zst" and derived["file_sha256"] == hashlib.sha256(packed.read_bytes()).hexdigest()
    assert "segments" not in derived and derived["minimized"]["commands"] == [204, 3]
    packed.write_bytes(packed.read_bytes()[:-9])  # a damaged .zst: refused, one line
    status, _, err = run_cli(capsys, str(packed), "-o", str(tmp_path / "again.jsonl"), "--target", "fake")
    assert status == 2 and err.startswith("qmprr: ") and err.count("\n") == 1, err


def test_rules_reach_every_try(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = write_recording(tmp_path / "original.jsonl", noisy(40, {20: Step("query-name", reply={"return": {"name": "vm1"}})}))
    edited = write_recording(tmp_path / "edited.jsonl", noisy(40, {20: Step("query-name", reply={"return": {"name": "vm2"}})}))
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\ncommand = "query-name"\npath = "name"\n')
    sock = tmp_path / "fake.sock"
    with fake_process(original, sock, "--mode", "lenient", "--reuse", "--keep-serving"):
        status, _, err = run_cli(capsys, str(edited), "-o", str(tmp_path / "a.jsonl"), "--target", f"socket:{sock}",
                                 "--rules", str(rules))
        assert status == 1 and "does not show the failure" in err, err  # the name no longer differs
        status, stdout, err = run_cli(capsys, str(edited), "-o", str(tmp_path / "b.jsonl"), "--target", f"socket:{sock}")
        assert status == 0 and "query-name diverged" in stdout, err


def test_allow_unsafe_says_so_once_and_bad_replay_options_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = write_recording(tmp_path / "r.jsonl", noisy(20, {5: Step("stop", after=[event("STOP")])}))
    status, _, err = run_cli(capsys, str(rec), "-o", str(tmp_path / "a.jsonl"), "--target", "fake", "--event", "STOP",
                             "--allow-unsafe", "--host-differences", "diverge", "--secret", "sec0=x",
                             "--map-path", f"/srv={tmp_path}")
    assert status == 0 and err.count("--allow-unsafe: no sandbox and no checks") == 1, err
    for bad in (["--map-path", "nowhere"], ["--secret", "novalue"], ["--rules", str(tmp_path / "none.toml")]):
        status, _, err = run_cli(capsys, str(rec), "-o", str(tmp_path / "b.jsonl"), "--target", "fake", *bad)
        assert status == 2 and err.startswith("qmprr: ") and err.count("\n") == 1, (bad, err)
        assert not (tmp_path / "b.jsonl").exists()


@pytest.mark.qemu
def test_a_compressed_set_recorded_by_launch_against_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qmprr.recording import sets

    bench.record_raw(str(tmp_path), noise=80, seed=4, launch=["--rotate-size", "4K", "--compress", "zstd"])
    files = [p for _, p in sets.segments_of(str(tmp_path / "session"))]
    assert len(files) > 2 and files[0].endswith(".jsonl.zst"), files
    out = tmp_path / "small.jsonl"
    status, stdout, err = run_cli(capsys, files[0], "-o", str(out), "--target", "qemu", "--error-class", "GenericError")
    assert status == 0, err
    records = read_edited(str(out))[0]
    kept = [(r["msg"]["execute"], r["msg"].get("arguments")) for r in records if r["kind"] == "command"]
    assert kept == [("qmp_capabilities", None), *bench.BUG_STEPS], stdout  # found across the segments
    derived = records[0]["derived_from"]
    assert derived["file"] == Path(files[-1]).name and derived["segments"] == [Path(f).name for f in files]
    with RecordingReader(files[0]) as reader:
        list(reader)
        assert derived["final_hash"] == reader.final_hash
    assert "segment" not in records[0] and qmprr("verify", str(out)).returncode == 0
    assert "did not show the failure again" not in stdout and "could not run" not in stdout  # OUT's own replay
