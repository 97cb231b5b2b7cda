"""Normalization: built-in rules for run-to-run noise, and user rules from TOML.

Unit tests on :class:`Normalizer` and :func:`load_rules`, then the same rules
end to end: ``qmprr replay --rules`` against a real QEMU, the
``version.package`` warning, and a bad rules file (exit 2, one line).
"""

from __future__ import annotations

import copy
import fnmatch
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from qmprr.cli import main
from qmprr.replay.normalize import (
    PLACEHOLDER,
    Normalizer,
    Rule,
    RulesError,
    load_rules,
    _Part,
    package_warning,
)
from qmprr.recording import Greeting, Msg, Record
from replay_support import RECORDINGS, RUNNING, VERSION, Step, event, rewrite_recording, write_recording

N = Normalizer()


def same_reply(command: str, a: Any, b: Any, norm: Normalizer = N) -> bool:
    return norm.reply(command, {"return": a}) == norm.reply(command, {"return": b})


# -- built-in rules ------------------------------------------------------------------


def test_event_timestamps_are_ignored() -> None:
    a = event("STOP", seconds=1)
    b = event("STOP", seconds=2)
    assert N.event(a) == N.event(b) == ("STOP", None)
    assert N.event(event("RESET", {"guest": False})) != N.event(event("RESET", {"guest": True}))


def test_thread_ids() -> None:
    cpus = [{"cpu-index": 0, "thread-id": 1234, "qom-path": "/machine/unattached/device[0]", "target": "x86_64"}]
    other = copy.deepcopy(cpus)
    other[0]["thread-id"] = 9876
    assert same_reply("query-cpus-fast", cpus, other)
    other[0]["cpu-index"] = 1
    assert not same_reply("query-cpus-fast", cpus, other)


def test_auto_node_names() -> None:
    a = [{"node-name": "#block123", "backing_file_depth": 0}, {"node-name": "disk0"}]
    b = [{"node-name": "#block4567", "backing_file_depth": 0}, {"node-name": "disk0"}]
    assert same_reply("query-named-block-nodes", a, b)
    assert N.reply("x", {"return": "#block12 and #block7"}) == ("return", f"{PLACEHOLDER} and {PLACEHOLDER}")
    b[1]["node-name"] = "disk1"  # a user's node name is not noise
    assert not same_reply("query-named-block-nodes", a, b)


@pytest.mark.parametrize(
    "path_a, path_b",
    [
        ("unix:/tmp/qmp-1234.sock,server=on", "unix:/tmp/qmp-9999.sock,server=on"),
        ("/var/tmp/pytest-of-me/pytest-3/disk.img", "/var/tmp/elsewhere/disk.img"),
        ("/run/user/1000/qemu/mon.sock", "/run/user/0/qemu/mon.sock"),
        ("file:/dev/shm/x", "file:/dev/shm/y"),
    ],
)
def test_temporary_and_socket_paths(path_a: str, path_b: str) -> None:
    chardev = [{"label": "mon", "filename": path_a, "frontend-open": True}]
    other = [{"label": "mon", "filename": path_b, "frontend-open": True}]
    assert same_reply("query-chardev", chardev, other)


def test_paths_outside_temporary_folders_still_count() -> None:
    assert not same_reply("query-chardev", [{"filename": "/srv/a.sock"}], [{"filename": "/srv/b.sock"}])


def test_job_counters() -> None:
    job = {"device": "commit0", "type": "commit", "len": 65536, "offset": 65536, "busy": False, "ready": True, "speed": 0}
    later = {**job, "len": 131072, "offset": 4096, "busy": True}
    assert same_reply("query-block-jobs", [job], [later])
    assert not same_reply("query-block-jobs", [job], [{**later, "ready": False}])
    jobs = [{"id": "j", "type": "commit", "status": "running", "current-progress": 1, "total-progress": 10}]
    assert same_reply("query-jobs", jobs, [{**jobs[0], "current-progress": 7, "total-progress": 12}])
    ready = event("BLOCK_JOB_READY", {"device": "commit0", "len": 65536, "offset": 65536, "speed": 0, "type": "commit"})
    other = event("BLOCK_JOB_READY", {"device": "commit0", "len": 1, "offset": 0, "speed": 0, "type": "commit"})
    assert N.event(ready) == N.event(other)
    # Only for jobs: an 'offset' elsewhere is data.
    assert not same_reply("query-other", {"offset": 1}, {"offset": 2})


def test_version_package_is_not_a_divergence_but_a_warning() -> None:
    built_here = {**VERSION, "package": "v7.2.0-dirty"}
    assert same_reply("query-version", VERSION, built_here)
    assert not same_reply("query-version", VERSION, {**built_here, "qemu": {"micro": 0, "minor": 2, "major": 7}})
    warning = package_warning(VERSION, built_here)
    assert warning is not None and "QEMU build differs" in warning and "v7.2.0-dirty" in warning
    assert package_warning(VERSION, VERSION) is None
    assert package_warning(VERSION, {"qemu": {"micro": 0, "minor": 0, "major": 8}, "package": ""}) is None
    assert package_warning(None, VERSION) is None


def test_errors_compare_by_class_only() -> None:
    a = {"error": {"class": "GenericError", "desc": "Failed to find node with node-name='x'"}}
    b = {"error": {"class": "GenericError", "desc": "a different text"}}
    assert N.reply("blockdev-del", a) == N.reply("blockdev-del", b) == ("error", "GenericError")
    assert N.reply("x", a) != N.reply("x", {"error": {"class": "CommandNotFound", "desc": ""}})


def test_normalizing_does_not_change_the_input() -> None:
    msg = {"return": [{"thread-id": 5, "qom-path": "/tmp/x"}]}
    before = copy.deepcopy(msg)
    N.reply("query-cpus-fast", msg)
    assert msg == before


# -- rule semantics -----------------------------------------------------------------------


def test_rule_paths_and_globs() -> None:
    payload = {"a": {"b": 1, "c": 2}, "list": [{"x": 1, "y": 2}, {"x": 3}], "deep": {"k": {"x": 9}}}

    def run(rule: Rule) -> Any:
        return Normalizer(()).with_rules([rule]).reply("cmd", {"return": copy.deepcopy(payload)})[1]

    assert run(Rule("a.b")) == {**payload, "a": {"c": 2}}
    assert run(Rule("a.*"))["a"] == {}
    assert run(Rule("list.*.x"))["list"] == [{"y": 2}, {}]
    assert run(Rule("list.1"))["list"] == [{"x": 1, "y": 2}, PLACEHOLDER]  # list positions are kept
    assert run(Rule("**.x")) == {"a": {"b": 1, "c": 2}, "list": [{"y": 2}, {}], "deep": {"k": {}}}
    assert run(Rule("de*"))  == {"a": {"b": 1, "c": 2}, "list": payload["list"]}
    assert run(Rule("")) == PLACEHOLDER  # the whole payload
    assert run(Rule("no.such.path")) == payload


def test_rule_scope_by_command_and_event() -> None:
    norm = Normalizer(()).with_rules([Rule("name", command="query-n*"), Rule("device", event="DEVICE_*")])
    assert norm.reply("query-name", {"return": {"name": "a"}}) == ("return", {})
    assert norm.reply("query-status", {"return": {"name": "a"}}) == ("return", {"name": "a"})
    assert norm.event(event("DEVICE_DELETED", {"device": "d", "path": "/p"})) == ("DEVICE_DELETED", {"path": "/p"})
    assert norm.event(event("BLOCK_IO_ERROR", {"device": "d"})) == ("BLOCK_IO_ERROR", {"device": "d"})
    # Command-scoped rules also shape argument matching (the fake uses this).
    assert norm.arguments("query-name", {"name": "x", "k": 1}) == {"k": 1}


def test_pattern_rule_replaces_only_the_match() -> None:
    norm = Normalizer(()).with_rules([Rule("**.file", action="pattern", pattern=r"^/srv/images/[^/]+/")])
    a = norm.reply("query-block", {"return": [{"inserted": {"file": "/srv/images/host1/disk.qcow2"}}]})
    b = norm.reply("query-block", {"return": [{"inserted": {"file": "/srv/images/host2/disk.qcow2"}}]})
    assert a == b == ("return", [{"inserted": {"file": f"{PLACEHOLDER}disk.qcow2"}}])
    c = norm.reply("query-block", {"return": [{"inserted": {"file": "/srv/images/host2/other.qcow2"}}]})
    assert c != a


_names = st.text(alphabet="ab*?[]!=-0", max_size=5)


def _picks(part: str, node: Any) -> list[Any]:
    """What a path part selects, as the module docstring says: globs over keys, ``*`` or an index in lists."""
    select = re.fullmatch(r"\[([^=\]]+)=([^\]]*)\]", part)
    if select is not None:
        key, glob = select.groups()
        return [i for i, item in enumerate(node) if isinstance(item, dict) and key in item
                and fnmatch.fnmatchcase(str(item[key]), glob)] if isinstance(node, list) else []
    if isinstance(node, dict):
        return [k for k in node if fnmatch.fnmatchcase(k, part)]
    if part in ("*", "[]"):
        return list(range(len(node)))
    return [int(part)] if part.isdigit() and int(part) < len(node) else []


@given(part=_names | st.builds("[a={}]".format, _names), keys=st.lists(_names, max_size=6, unique=True))
def test_a_compiled_path_part_picks_what_its_glob_says(part: str, keys: list[str]) -> None:
    """Rules compile each path part once (a plain key is looked up): the same keys and items as fnmatch picks."""
    assume(part != "**")
    for node in (dict.fromkeys(keys, 0), list(keys), [{"a": k} for k in keys] + [{"b": 0}], "leaf"):
        assert _Part.parse(part).keys(node) == (_picks(part, node) if isinstance(node, (dict, list)) else [])


# -- TOML rules files ---------------------------------------------------------------------------


def test_load_rules_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        """
# ignore every 'filename'
[[rule]]
path = "**.filename"
action = "ignore"

[[rule]]
command = "query-block"
path = "*.inserted.file"
pattern = "^/srv/images/"      # action defaults to 'pattern' when a pattern is given

[[rule]]
event = "MIGRATION*"
path = "status"
"""
    )
    rules = load_rules(str(path))
    assert rules == [
        Rule("**.filename"),
        Rule("*.inserted.file", action="pattern", pattern="^/srv/images/", command="query-block"),
        Rule("status", event="MIGRATION*"),
    ]
    norm = Normalizer().with_rules(rules)
    assert norm.reply("query-block", {"return": [{"inserted": {"file": "/srv/images/a"}}]}) == (
        "return", [{"inserted": {"file": f"{PLACEHOLDER}a"}}]
    )
    assert load_rules(str(_write(tmp_path, "empty.toml", ""))) == []


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[rule]]\ncommand = "x"\n', "rule 1: 'path' is required"),
        ('[[rule]]\npath = "a"\nwhat = 1\n', "rule 1: unknown key(s) 'what'"),
        ('[[rule]]\npath = "a"\naction = "drop"\n', "rule 1: 'action' must be one of 'ignore', 'pattern'"),
        ('[[rule]]\npath = "a"\naction = "pattern"\n', "'action' must be 'ignore', or 'pattern' with a 'pattern'"),
        ('[[rule]]\npath = "a"\n[[rule]]\npath = 5\n', "rule 2: 'path' must be a string"),
        ('[[rule]]\npath = "a"\ncommand = ["x"]\n', "rule 1: 'command' must be a string"),
        ('[[rule]]\npath = "a"\npattern = "("\n', "rule 1: invalid pattern"),
        ('[[rule]\npath = "a"\n', "invalid TOML"),
    ],
)
def test_bad_rules_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, "bad.toml", text)
    with pytest.raises(RulesError, match=None) as info:
        load_rules(str(path))
    assert message in str(info.value) and str(path) in str(info.value)


def test_missing_rules_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules"):
        load_rules(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("text", ['[[rule]]\npath = 5\n', '[[rule]]\npath = "a"\ncommand = 5\n', '[[rule]]\npath = ["a"]\n'])
def test_mistyped_rule_values_are_rules_errors(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, "bad.toml", text)
    with pytest.raises(RulesError):
        rules = load_rules(str(path))
        Normalizer().with_rules(rules).reply("query-status", {"return": {}})


@pytest.mark.parametrize("text", ['[[rules]]\npath = "a"\n', 'rule = "a"\n'])
def test_rules_file_shape_is_checked(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, "bad.toml", text)
    with pytest.raises(RulesError, match=r"\[\[rule\]\]"):
        load_rules(str(path))


def test_cli_bad_rules_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "bad.toml", '[[rule]]\npath = "a"\npattern = "(unclosed"\n')
    lifecycle = str(RECORDINGS / "lifecycle.jsonl")
    assert main(["replay", lifecycle, "--target", "fake", "--rules", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qmprr: {path}: rule 1: invalid pattern") and err.count("\n") == 1
    assert main(["fake", lifecycle, "--socket", str(tmp_path / "s.sock"), "--rules", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read rules" in capsys.readouterr().err


# -- end to end against a real QEMU ----------------------------------------------------------------


@pytest.mark.qemu
def test_replay_with_user_rules_against_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Recorded on another host: a named guest, a chardev socket under /srv.
    rec = write_recording(tmp_path / "other-host.jsonl", [
        Step("query-name", reply={"return": {"name": "guest-on-host1"}}),
        Step("query-status", reply={"return": RUNNING}),
    ])
    assert main(["replay", str(rec), "--target", "qemu"]) == 1
    out = capsys.readouterr().out
    assert "reply return.name: recorded 'guest-on-host1', got (absent)" in out
    rules = _write(tmp_path, "rules.toml", '[[rule]]\ncommand = "query-name"\npath = "name"\n')
    assert main(["replay", str(rec), "--target", "qemu", "--rules", str(rules)]) == 0
    assert "reproduced: no divergence" in capsys.readouterr().out


@pytest.mark.qemu
def test_package_difference_is_a_warning_against_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other_build = {**VERSION, "package": "v7.2.22-built-elsewhere"}

    def edit(record: Record) -> Record:
        if isinstance(record, Greeting):
            record.msg = Msg({"QMP": {**record.msg["QMP"], "version": other_build}})
        return record

    rec = rewrite_recording(RECORDINGS / "errors.jsonl", tmp_path / "errors-elsewhere.jsonl", edit)
    assert main(["replay", str(rec), "--target", "qemu"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "warning: QEMU build differs: recorded 'v7.2.22-built-elsewhere'" in out
    assert "reproduced: no divergence" in out
    # query-version itself: the package may differ, the version may not.
    rec2 = write_recording(tmp_path / "version.jsonl", [Step("query-version", reply={"return": other_build})])
    assert main(["replay", str(rec2), "--target", "qemu"]) == 0
    capsys.readouterr()
    wrong = {**other_build, "qemu": {"micro": 0, "minor": 0, "major": 9}}
    rec3 = write_recording(tmp_path / "version9.jsonl", [Step("query-version", reply={"return": wrong})])
    assert main(["replay", str(rec3), "--target", "qemu"]) == 1
    assert "reply return.qemu.major: recorded 9, got 7" in capsys.readouterr().out



