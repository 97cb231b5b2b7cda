"""The pytest plugin, tested with pytester: marker, fixtures, record modes, near-miss failures.

Inner test runs load the plugin with ``-p qmprr.pytest_plugin`` unless the
``pytest11`` entry point already loads it. The ``once``/``rewrite`` tests
record against a real QEMU.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys

import pytest

from qmprr.recording import Header, RecordingReader, verify
from replay_support import RECORDINGS, ROOT

pytest_plugins = ["pytester"]


def _entry_point_registered() -> bool:
    return any(ep.name == "qmprr" for ep in importlib.metadata.entry_points(group="pytest11"))


PLUGIN_ARGS = [] if _entry_point_registered() else ["-p", "qmprr.pytest_plugin"]

CLIENT = '''
import json, socket

def talk(path, *commands):
    """A raw client: negotiate, send each command, return the replies (events skipped)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    f = sock.makefile("rwb")
    f.readline()
    replies = []
    for name in ("qmp_capabilities",) + commands:
        f.write(json.dumps({"execute": name}).encode()); f.flush()
        while True:
            msg = json.loads(f.readline())
            if "event" not in msg:
                break
        replies.append(msg)
    f.close()
    sock.close()
    return replies[1:]
'''


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A project with the recordings under recordings/ and a raw client module."""
    (pytester.path / "recordings").mkdir()
    for name in ("lifecycle.jsonl", "hotplug.jsonl"):
        shutil.copy(RECORDINGS / name, pytester.path / "recordings" / name)
    pytester.makepyfile(qmpclient=CLIENT)
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.syspathinsert()
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*PLUGIN_ARGS, *args)


LIFECYCLE_ORDER = '"query-status", "stop", "query-status", "cont", "system_reset", "query-status", "quit"'


def test_strict_recording_served_to_sync_code(suite: pytest.Pytester) -> None:
    suite.makepyfile(f'''
        import pytest
        from qmpclient import talk

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl")
        def test_cycle(qmp_fake):
            replies = talk(qmp_fake.socket, {LIFECYCLE_ORDER})
            assert replies[2] == {{"return": {{"status": "paused", "singlestep": False, "running": False}}}}
            assert qmp_fake.mode == "strict" and qmp_fake.recording.name == "lifecycle.jsonl"
            assert qmp_fake.fake.report().answered == 7
            assert not qmp_fake.recording_now
    ''')
    run(suite).assert_outcomes(passed=1)


def test_near_miss_fails_the_test(suite: pytest.Pytester) -> None:
    suite.makepyfile('''
        import pytest
        from qmpclient import talk

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl", mode="strict")
        def test_skips_the_first_query(qmp_fake):
            talk(qmp_fake.socket, "stop")   # the code under test ignores the error reply
    ''')
    result = run(suite)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*qmprr fake (strict) serving *lifecycle.jsonl: 1 unmatched, 7 unused command(s)",
        "*unmatched: stop: expected query-status next (recorded seq 6), got stop*",
        "*unused: seq 6 query-status from primary-1*",
    ])


def test_near_miss_with_differing_fields_and_a_failing_assertion(suite: pytest.Pytester) -> None:
    suite.makepyfile('''
        import json, socket
        import pytest

        @pytest.mark.qmp_recording("recordings/hotplug.jsonl", mode="lenient")
        def test_hotplug(qmp_fake):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(qmp_fake.socket)
            f = sock.makefile("rwb")
            f.readline()
            f.write(b'{"execute": "qmp_capabilities"}'); f.flush(); f.readline()
            f.write(b'{"execute": "device_add", "arguments": {"driver": "usb-kbd", "id": "kbd9", "bus": "xhci.0"}}')
            f.flush()
            reply = json.loads(f.readline())
            assert "return" in reply   # fails: the test's own assertion
    ''')
    result = run(suite)
    result.assert_outcomes(failed=1)
    # The fake's explanation is attached to the failure.
    result.stdout.fnmatch_lines([
        "*qmprr fake*",
        "*unmatched: device_add: device_add was recorded (seq 6) with other arguments: "
        "arguments.id: recorded 'kbd0', got 'kbd9'*",
    ])


def test_already_consumed_versus_never_recorded(suite: pytest.Pytester) -> None:
    suite.makepyfile('''
        import pytest
        from qmpclient import talk

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl", mode="lenient")
        def test_lenient(qmp_fake):
            talk(qmp_fake.socket, "stop", "stop", "query-stauts")
    ''')
    result = run(suite)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*unmatched: stop: stop was recorded, but its recorded answers are already consumed (use reuse to repeat)*",
        "*unmatched: query-stauts: query-stauts was never recorded; closest recorded command: query-status*",
    ])
    assert "unused:" not in result.stdout.str()  # lenient: unused commands are fine


def test_strict_unused_fails_lenient_and_reuse_pass(suite: pytest.Pytester) -> None:
    suite.makepyfile('''
        import pytest
        from qmpclient import talk

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl")
        def test_strict_partial(qmp_fake):
            talk(qmp_fake.socket, "query-status")

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl", mode="ordered")
        def test_ordered_partial(qmp_fake):
            talk(qmp_fake.socket, "stop", "cont")

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl", mode="lenient", reuse=True)
        def test_reuse(qmp_fake):
            replies = talk(qmp_fake.socket, *["query-status"] * 5)
            assert [r["return"]["status"] for r in replies] == ["running", "paused", "running", "running", "running"]
    ''')
    result = run(suite, "-rA")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*qmprr fake (strict) serving *lifecycle.jsonl: 0 unmatched, 6 unused command(s)",
        "  unused: seq 8 stop from primary-1",
        "*FAILED*test_strict_partial*",
    ])


def test_path_relative_to_the_test_file_and_module_marker(suite: pytest.Pytester) -> None:
    sub = suite.path / "sub"
    sub.mkdir()
    shutil.copy(RECORDINGS / "lifecycle.jsonl", sub / "mine.jsonl")
    (sub / "test_sub.py").write_text(
        "import pytest\nfrom qmpclient import talk\n"
        "pytestmark = pytest.mark.qmp_recording('mine.jsonl', mode='lenient')\n"
        "def test_here(qmp_fake):\n"
        "    assert qmp_fake.recording == __import__('pathlib').Path(__file__).parent / 'mine.jsonl'\n"
        "    talk(qmp_fake.socket, 'query-status')\n"
    )
    run(suite).assert_outcomes(passed=1)


def test_async_code_under_test(suite: pytest.Pytester) -> None:
    suite.makepyfile('''
        import pytest
        from qemu.qmp import QMPClient

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl", mode="lenient")
        async def test_async(qmp_fake):
            client = QMPClient("async-test")
            await client.connect(qmp_fake.socket)
            assert (await client.execute("stop")) == {}
            assert (await client.execute("query-status"))["status"] == "running"
            await client.disconnect()
    ''')
    run(suite).assert_outcomes(passed=1)


def test_builder_fake_with_qmp_serve(suite: pytest.Pytester) -> None:
    suite.makepyfile('''
        from qmprr.fake import FakeQemu
        from qmpclient import talk

        def test_builder(qmp_serve):
            fake = FakeQemu.builder().expect("stop").emits("STOP").returns().build()
            endpoint = qmp_serve(fake)
            assert talk(endpoint.socket, "stop") == [{"return": {}}]
            assert endpoint.recording is None and endpoint.fake is fake

        def test_builder_unused(qmp_serve):
            fake = FakeQemu.builder().expect("stop").expect("cont").build()
            talk(qmp_serve(fake).socket, "stop")
    ''')
    result = run(suite)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*qmprr fake (strict) serving a script built in code: 0 unmatched, 1 unused command(s)", "*unused: seq 1 cont from script*"])


def test_client_kept_by_a_fixture_is_checked_at_teardown(suite: pytest.Pytester) -> None:
    suite.makepyfile('''
        import pytest
        from qemu.qmp.legacy import QEMUMonitorProtocol

        @pytest.fixture
        def monitor(qmp_fake):
            mon = QEMUMonitorProtocol(qmp_fake.socket)
            mon.connect(negotiate=True)
            yield mon
            try:
                mon.cmd_raw("quit")   # a client library that quits on close
            finally:
                mon.close()

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl")
        def test_good(monitor):
            for name in ["query-status", "stop", "query-status", "cont", "system_reset", "query-status"]:
                monitor.cmd(name)

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl")
        def test_short(monitor):
            monitor.cmd("query-status")
    ''')
    result = run(suite)
    result.assert_outcomes(passed=2, errors=1)  # test_short: its teardown found the unused commands
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_short*",
        "*unmatched: quit: expected stop next (recorded seq 8), got quit",
        "*unused: seq 8 stop from primary-1*",
    ])


def test_missing_recording_and_missing_marker(suite: pytest.Pytester) -> None:
    """Misusing the marker: one line per test that names it and the fix, no fixture traceback."""
    (suite.path / "recordings" / "bad.jsonl").write_text("not a recording\n")
    suite.makepyfile(test_misuse='''
        import pytest

        @pytest.mark.qmp_recording("recordings/nope.jsonl")
        def test_missing(qmp_fake):
            pass

        def test_no_marker(qmp_fake):
            pass

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl", mode="sloppy")
        def test_bad_mode(qmp_fake):
            pass

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl", qemu_argv="qemu -m 1", reuse="yes", speed=2)
        def test_bad_types(qmp_fake):
            pass

        @pytest.mark.qmp_recording("recordings/lifecycle.jsonl", rules="nope.toml")
        def test_bad_rules(qmp_fake):
            pass

        @pytest.mark.qmp_recording("recordings/bad.jsonl")
        def test_bad_recording(qmp_fake):
            pass
    ''')
    result = run(suite)
    result.assert_outcomes(errors=6)
    fix = "write it as @pytest.mark.qmp_recording(path, mode='strict', *"
    result.stdout.fnmatch_lines_random([
        "test_misuse.py::test_missing: recording recordings/nope.jsonl not found*; run with --qmp-record-mode=once*",
        "test_misuse.py::test_no_marker: qmp_fake needs a recording; mark the test @pytest.mark.qmp_recording(*",
        f"test_misuse.py::test_bad_mode: @pytest.mark.qmp_recording: 'mode' must be one of 'strict', 'ordered',"
        f" 'lenient'; {fix}",
        "test_misuse.py::test_bad_types: @pytest.mark.qmp_recording: 'reuse' must be true or false; 'qemu_argv' must"
        f" be a list of strings; unknown key(s) 'speed'; {fix}",
        "test_misuse.py::test_bad_rules: */nope.toml: cannot read rules file*; fix the rules file, or the marker's"
        " rules='nope.toml'",
        "test_misuse.py::test_bad_recording: */bad.jsonl: not a qmprr/1 recording*; check it with 'qmprr verify *",
    ])
    errors = result.stdout.str().split("= ERRORS =")[1].split("short test summary")[0]
    sections = errors.split("ERROR at setup of ")[1:]
    assert len(sections) == 6
    for section in sections:
        body = [line for line in section.splitlines()[1:] if line.strip("_ =")]
        assert len(body) == 1, section  # the one line: no traceback, no chained exception


def test_rules_in_the_marker(suite: pytest.Pytester) -> None:
    (suite.path / "rules.toml").write_text('[[rule]]\ncommand = "device_add"\npath = "id"\n')
    suite.makepyfile('''
        import json, socket
        import pytest

        @pytest.mark.qmp_recording("recordings/hotplug.jsonl", mode="lenient", rules="rules.toml")
        def test_ids_do_not_matter(qmp_fake):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(qmp_fake.socket)
            f = sock.makefile("rwb")
            f.readline()
            f.write(b'{"execute": "qmp_capabilities"}'); f.flush(); f.readline()
            f.write(b'{"execute": "device_add", "arguments": {"driver": "usb-kbd", "id": "other", "bus": "xhci.0"}}')
            f.flush()
            assert json.loads(f.readline()) == {"return": {}}
    ''')
    run(suite).assert_outcomes(passed=1)


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest(*PLUGIN_ARGS, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.qmp_recording(path, mode='strict', reuse=False, qemu_argv=None, rules=None, matchers=None)*"])
    result = pytester.runpytest(*PLUGIN_ARGS, "--help")
    result.stdout.fnmatch_lines(["*--qmp-record-mode*"])
    result = pytester.runpytest(*PLUGIN_ARGS, "--qmp-record-mode=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


# -- recording against a real QEMU ----------------------------------------------------------


RECORDING_TEST = '''
    import pytest
    from qmpclient import talk

    @pytest.mark.qmp_recording("recordings/new.jsonl", qemu_argv=["qemu-system-x86_64", "-machine", "none",
                                                                  "-nodefaults", "-display", "none", "-name", "guest7"])
    def test_pause(qmp_fake):
        replies = talk(qmp_fake.socket, "query-name", "stop", "query-status")
        assert replies[0] == {"return": {"name": "guest7"}}
        assert replies[2]["return"]["status"] == "paused"
'''


@pytest.mark.qemu
def test_once_records_a_missing_recording_then_serves_it(suite: pytest.Pytester) -> None:
    suite.makepyfile(RECORDING_TEST)
    new = suite.path / "recordings" / "new.jsonl"
    run(suite).assert_outcomes(errors=1)  # none (default): missing recording
    assert not new.exists()
    run(suite, "--qmp-record-mode=once").assert_outcomes(passed=1)
    assert verify(new).ok
    with RecordingReader(new) as reader:
        header = reader.header
        kinds = [r.kind for r in reader]  # type: ignore[attr-defined]
    assert isinstance(header, Header) and header.qemu_argv is not None and header.qemu_argv[-1] == "guest7"
    assert header.labels["made-by"] == "qmprr pytest plugin"
    assert "quit" not in new.read_text()  # QEMU was stopped without a recorded quit
    assert kinds.count("command") == 4  # negotiation + 3
    first = new.read_bytes()
    result = run(suite, "--qmp-record-mode=once")  # exists: served from the fake, file untouched
    result.assert_outcomes(passed=1)
    assert new.read_bytes() == first
    run(suite).assert_outcomes(passed=1)  # and with none
    assert not list((suite.path / "recordings").glob(".*recording"))


@pytest.mark.qemu
def test_rewrite_records_again_only_when_the_test_passes(suite: pytest.Pytester) -> None:
    suite.makepyfile(RECORDING_TEST)
    new = suite.path / "recordings" / "new.jsonl"
    run(suite, "--qmp-record-mode=once").assert_outcomes(passed=1)
    first = new.read_bytes()
    run(suite, "--qmp-record-mode=rewrite").assert_outcomes(passed=1)
    second = new.read_bytes()
    assert second != first and verify(new).ok
    # A failing test keeps the old recording.
    suite.makepyfile(RECORDING_TEST.replace('"guest7"}}', '"someone-else"}}'))
    result = run(suite, "--qmp-record-mode=rewrite")
    result.assert_outcomes(failed=1)
    assert new.read_bytes() == second
    assert not list((suite.path / "recordings").glob(".*recording"))


@pytest.mark.qemu
def test_once_with_a_missing_qemu(suite: pytest.Pytester) -> None:
    suite.makepyfile('''
        import pytest

        @pytest.mark.qmp_recording("recordings/x.jsonl", qemu_argv=["/nonexistent/qemu"])
        def test_x(qmp_fake):
            pass
    ''')
    result = run(suite, "--qmp-record-mode=once")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*cannot record*QEMU binary '/nonexistent/qemu' not found*"])


@pytest.mark.qemu
def test_once_with_a_qemu_that_fails_to_start(suite: pytest.Pytester) -> None:
    suite.makepyfile('''
        import pytest

        @pytest.mark.qmp_recording("recordings/x.jsonl", qemu_argv=["qemu-system-x86_64", "-machine", "no-such-machine"])
        def test_x(qmp_fake):
            pass
    ''')
    result = run(suite, "--qmp-record-mode=once")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*QEMU exited at start-up*"])
    assert not list((suite.path / "recordings").glob("*x.jsonl*"))


# -- the example regression suite ----------------------------------------------------------------


def test_example_regression_suite() -> None:
    """examples/regression_suite runs as a user runs it (as a subprocess, its own rootdir rules)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *PLUGIN_ARGS, "examples/regression_suite", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
