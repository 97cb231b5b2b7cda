"""The pytest plugin's ``new_episodes`` record mode (against a real QEMU) and Python matchers, via pytester."""

from __future__ import annotations

import pytest

from qmprr.recording import RecordingReader, verify
from test_plugin import run, suite

pytest_plugins = ["pytester"]
__all__ = ["suite"]  # the fixture, imported for these tests

EPISODES_TEST = '''
    import pytest
    from qmpclient import talk

    @pytest.mark.qmp_recording("recordings/lifecycle.jsonl", mode="lenient")
    def test_more(qmp_fake):
        replies = talk(qmp_fake.socket, "query-status", "query-name", "query-kvm")
        assert replies[0]["return"]["running"] is True   # recorded
        assert replies[1] == {"return": {}}                # new: a real QEMU's answer
        assert replies[2]["return"]["present"] is True     # new
'''


def _commands(path: object) -> list[str]:
    with RecordingReader(path) as reader:  # type: ignore[arg-type]
        return [r.msg["execute"] for r in reader if r.kind == "command"]  # type: ignore[attr-defined]


@pytest.mark.qemu
def test_new_episodes_appends_a_segment_then_serves_it(suite: pytest.Pytester) -> None:
    suite.makepyfile(EPISODES_TEST)
    folder = suite.path / "recordings"
    old = (folder / "lifecycle.jsonl").read_bytes()
    run(suite).assert_outcomes(failed=1)  # none: query-name was never recorded
    result = run(suite, "--qmp-record-mode=new_episodes")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*qmprr new_episodes*",
        "*test_more: 2 new exchange(s) appended to *lifecycle.000002.jsonl (1 answered from the recording)",
    ])
    segment = folder / "lifecycle.000002.jsonl"
    assert (folder / "lifecycle.jsonl").read_bytes() == old  # the recording itself is never rewritten
    assert verify(folder / "lifecycle.jsonl", jobs=1).ok  # the file and its new segment: one chain
    with RecordingReader(segment, one_file=True) as reader:
        assert reader.header.segment == 2 and reader.header.previous["file"] == "lifecycle.jsonl"
        assert reader.header.labels["made-by"] == "qmprr pytest plugin (new_episodes)"
    assert [c for c in _commands(segment) if c != "qmp_capabilities"] == ["query-name", "query-kvm"]
    assert _commands(folder / "lifecycle.jsonl")[-2:] == ["query-name", "query-kvm"]  # read as a set
    # Now the recording answers everything: none passes, and new_episodes adds nothing.
    run(suite).assert_outcomes(passed=1)
    result = run(suite, "--qmp-record-mode=new_episodes")
    result.assert_outcomes(passed=1)
    assert "qmprr new_episodes" not in result.stdout.str()
    assert not (folder / "lifecycle.000003.jsonl").exists()
    assert not list(folder.glob(".*episodes"))


@pytest.mark.qemu
def test_new_episodes_of_a_failing_test_are_dropped(suite: pytest.Pytester) -> None:
    suite.makepyfile(EPISODES_TEST.replace('== {"return": {}}', '== {"return": {"name": "x"}}'))
    run(suite, "--qmp-record-mode=new_episodes").assert_outcomes(failed=1)
    folder = suite.path / "recordings"
    assert not (folder / "lifecycle.000002.jsonl").exists()
    assert not list(folder.glob(".*episodes"))


def test_new_episodes_needs_lenient(suite: pytest.Pytester) -> None:
    suite.makepyfile('''
        import pytest

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl")
        def test_strict(qmp_fake):
            pass
    ''')
    result = run(suite, "--qmp-record-mode=new_episodes")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_strict: --qmp-record-mode=new_episodes needs mode='lenient'*"])
    assert "Traceback" not in result.stdout.str()


def test_python_matchers_in_the_marker(suite: pytest.Pytester) -> None:
    suite.makepyfile('''
        import json, socket
        import pytest
        from qmprr.fake import FakeQemu, register_matcher

        def same_device(recorded, actual):
            assert recorded["arguments"]["id"] == actual["arguments"]["id"], "another device id"

        def any_driver(recorded, actual):
            return True

        register_matcher("same-device", same_device)

        def send(path, msg):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            f = sock.makefile("rwb")
            f.readline()
            for m in ({"execute": "qmp_capabilities"}, msg):
                f.write(json.dumps(m).encode()); f.flush()
                reply = json.loads(f.readline())
            sock.close()
            return reply

        @pytest.mark.qmp_recording("recordings/hotplug.jsonl", mode="lenient", matchers=["same-device"])
        def test_refused_by_a_matcher(qmp_fake):
            send(qmp_fake.socket, {"execute": "device_del", "arguments": {"id": "nic9"}})

        @pytest.mark.qmp_recording("recordings/hotplug.jsonl", mode="lenient", matchers=[any_driver])
        def test_a_callable_accepts_other_arguments(qmp_fake):
            reply = send(qmp_fake.socket, {"execute": "device_del", "arguments": {"id": "nic9"}})
            assert "return" in reply

        @pytest.mark.qmp_recording("recordings/hotplug.jsonl", matchers=["nope"])
        def test_unknown_matcher(qmp_fake):
            pass
    ''')
    result = run(suite)
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*unmatched: device_del: device_del was recorded (seq *), but matcher 'same-device': another device id*",
    ])
    result.stdout.fnmatch_lines(["*qmp_recording: unknown matcher 'nope' (registered: arguments*"])


def test_new_episodes_refuses_what_the_replay_policy_refuses(suite: pytest.Pytester) -> None:
    suite.makepyfile('''
        import json, socket
        import pytest

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl", mode="lenient")
        def test_runs_a_program(qmp_fake):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(qmp_fake.socket)
            f = sock.makefile("rwb")
            f.readline()
            for m in ({"execute": "qmp_capabilities"},
                      {"execute": "human-monitor-command", "arguments": {"command-line": "migrate exec:true"}}):
                f.write(json.dumps(m).encode()); f.flush()
                reply = json.loads(f.readline())
            sock.close()
            assert "not forwarded to QEMU" in reply["error"]["desc"]
    ''')
    result = run(suite, "--qmp-record-mode=new_episodes")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*qmprr new_episodes serving *lifecycle.jsonl: 1 command(s) refused",
        "*refused: human-monitor-command: *",
    ])
    assert not (suite.path / "recordings" / "lifecycle.000002.jsonl").exists()
