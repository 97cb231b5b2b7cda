"""pytest plugin: test QMP-using code against a recording, with no VM.

Registered through the ``pytest11`` entry point (``qmprr``), so installing
qmprr is enough: no conftest needed. A test marks the recording it wants and
takes the ``qmp_fake`` fixture::

    @pytest.mark.qmp_recording("recordings/lifecycle.jsonl", mode="strict")
    def test_pause(qmp_fake):
        assert pause_vm(qmp_fake.socket) == "paused"   # your code, talking QMP to a socket

``qmp_fake.socket`` is the path of a UNIX socket served by a
:class:`~qmprr.fake.FakeQemu` (``qmp_fake.fake``, for assertions). The fake
runs in a background thread with its own asyncio loop, so synchronous code
under test works as well as asynchronous code.

Marker: ``qmp_recording(path, mode="strict", reuse=False, qemu_argv=None, rules=None, matchers=None)``

* ``path``: the recording. A relative path is looked up next to the test
  file first, then under pytest's rootdir; a recording made by ``once`` /
  ``rewrite`` is written where it was found (next to the test file when it
  does not exist yet). An absolute path is used as it is.
* ``mode``: ``strict`` (the exact recorded sequence), ``ordered`` (recorded
  order, skipping allowed) or ``lenient`` (consume-once matching); ``reuse``
  lets lenient answer an already used command again.
* ``qemu_argv``: the QEMU to record against (default
  ``qemu-system-x86_64 -machine none -nodefaults -display none``).
* ``rules``: a normalization rules file (TOML, see
  :mod:`qmprr.replay.normalize`) for argument matching, relative like ``path``.
* ``matchers``: Python matchers beside the rules (names given to
  :func:`qmprr.fake.register_matcher`, or callables; ``"arguments"`` is the
  built-in comparison, the default): see :mod:`qmprr.replay.matchers`.

``--qmp-record-mode`` (or the ``qmp_record_mode`` ini option):

* ``none`` (default): never start QEMU; a missing recording is an error.
* ``once``: when the recording is missing, start QEMU from ``qemu_argv`` and
  give the test a socket of qmprr's recording proxy (Channel + QmpServer, in
  the background thread) instead of a fake; the recording is saved when the
  test passes. ``qmp_fake.fake`` is then None and ``qmp_fake.recording_now``
  True.
* ``rewrite``: always record again (the old file is replaced only when the
  test passes).
* ``new_episodes`` (VCR's): recorded exchanges are served; a command the
  recording cannot answer goes to a real QEMU started from the recording's
  command line (sandboxed and checked as ``qmprr replay`` does, on the first
  such command) and its exchange is appended to the recording as its next
  segment (``NAME.jsonl`` is continued by ``NAME.000002.jsonl``, a set's
  last segment by the next number), saved when the test passes; the
  terminal summary says how many were new. A missing recording is recorded
  as with ``once``. Only ``mode="lenient"``: new exchanges come after the
  recorded ones in the file, whatever order the test sent them in.

``--qmp-chaos=SEED`` (and ``--qmp-chaos-max-delay=SECONDS``) serves every
fake in chaos mode (:mod:`qmprr.fake_chaos`): events a command caused move
across its reply, replies wait, the output is cut at any byte. A failing
test's report gets a ``qmprr chaos`` section with the seed and the schedule.

A recording QEMU runs in :mod:`qmprr.sandbox` (QEMU's seccomp filter, the
host read-only, loopback only), in a fresh temporary folder it may write.

Fixture ``qmp_serve``: a function serving any :class:`~qmprr.fake.FakeQemu`
(e.g. built with ``FakeQemu.builder()``) the same way:
``endpoint = qmp_serve(fake)``.

When the test ends, commands the fake could not match, and in strict mode
recorded commands never used, fail the test with the fake's near-miss
message (what was expected, or which recorded command came closest and the
fields that differ). Commands a fixture sends while being torn down are
checked at the fixture's teardown (reported as a teardown error).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine, Generator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from . import wire
from .fake import FakeQemu, FakeReport
from .plugin_markers import MARKER, SIGNATURE, MarkerError, RecordingMarker, misuse, read_marker

RECORD_MODES = ("none", "once", "rewrite", "new_episodes")
DEFAULT_QEMU_ARGV = ("qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none")
#: How long to wait, when the test returns, for its clients' connections to end.
SETTLE_SECONDS = 0.2
#: The same at the fixture's teardown (after other fixtures closed their clients).
TEARDOWN_SETTLE_SECONDS = 2.0
#: Unused commands listed in a failure message (the rest are counted).
MAX_UNUSED_SHOWN = 10
_KEY = pytest.StashKey[list["QmpEndpoint"]]()
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_NEW = pytest.StashKey[list[str]]()  # new_episodes: what each test appended, for the terminal summary


# -- hooks ---------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qmprr", "QMP record & replay (qmprr)")
    group.addoption(
        "--qmp-record-mode",
        choices=RECORD_MODES,
        default=None,
        help="none (default): serve recordings from a fake QEMU, never start QEMU; "
        "once: record missing recordings against a real QEMU; rewrite: record them all again; "
        "new_episodes: serve what is recorded, forward the rest to a real QEMU and append it",
    )
    parser.addini(
        "qmp_record_mode", "default for --qmp-record-mode (none, once, rewrite, new_episodes)", default="none"
    )
    group.addoption("--qmp-chaos", type=int, default=None, metavar="SEED",
                    help="serve every fake in chaos mode with this seed (qmprr.fake_chaos): events move across "
                    "replies, replies wait, output is cut anywhere; a failure prints the schedule")
    group.addoption("--qmp-chaos-max-delay", type=float, default=None, metavar="SECONDS",
                    help="--qmp-chaos: the longest random pause (default 0.02)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{SIGNATURE.removeprefix('@pytest.mark.')}: "
        "the qmprr recording the qmp_fake fixture serves (path relative to the test file's "
        "folder, else to rootdir); mode strict|ordered|lenient",
    )
    mode = config.getoption("--qmp-record-mode") or config.getini("qmp_record_mode")
    if mode not in RECORD_MODES:
        raise pytest.UsageError(f"qmp_record_mode must be one of {', '.join(RECORD_MODES)}, not {mode!r}")
    delay = config.getoption("--qmp-chaos-max-delay")
    if delay is not None and not 0 <= delay < float("inf"):
        raise pytest.UsageError(f"--qmp-chaos-max-delay must be a finite number of seconds >= 0, not {delay!r}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """After the test body: fail it with the fake's near-miss message if something did not match."""
    try:
        result = yield
    except BaseException:
        for endpoint in _fakes(item):
            problems = endpoint.problems(final=False)
            if problems:
                item.add_report_section("call", "qmprr fake", problems)
        raise
    failures = []
    for endpoint in _fakes(item):  # read now: qmp_serve adds endpoints during the test
        idle = endpoint.settle(SETTLE_SECONDS)
        problems = endpoint.problems(final=idle)
        endpoint.checked = idle or bool(problems)
        if problems:
            failures.append(problems)
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
    return result


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """new_episodes: how many exchanges each test appended, and where."""
    lines = config.stash.get(_NEW, [])
    if lines:
        terminalreporter.section("qmprr new_episodes")
        for line in lines:
            terminalreporter.write_line(line)


def _fakes(item: pytest.Item) -> list[QmpEndpoint]:
    return [e for e in item.stash.get(_KEY, []) if e.fake is not None]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    if report.failed:
        for endpoint in item.stash.get(_KEY, []):
            if endpoint.fake is not None and endpoint.fake.chaos is not None:
                report.sections.append(("qmprr chaos", "\n".join(endpoint.fake.chaos.lines())))
    return report


# -- the fixture -----------------------------------------------------------------


@attrs.define(eq=False)
class QmpEndpoint:
    """What ``qmp_fake`` yields: the socket for the code under test, and the fake."""

    socket: str
    recording: Path | None  # None for a fake built in code (qmp_serve)
    mode: str
    fake: FakeQemu | None  # None while recording against a real QEMU
    recording_now: bool = False
    checked: bool = False
    _loop: _LoopThread | None = attrs.field(default=None, repr=False, alias="_loop")
    _live: _Connections | None = attrs.field(default=None, repr=False, alias="_live")
    hybrid: Any = None  # new_episodes: the HybridFake forwarding to a real QEMU (qmprr.fake_forward)

    def hybrid_report(self) -> Any:
        """new_episodes: where each answer came from (:class:`~qmprr.fake_forward.HybridReport`), or None."""
        if self.hybrid is None:
            return None
        assert self._loop is not None
        return self._loop.call(_hybrid_report(self.hybrid))

    def report(self) -> FakeReport:
        """The fake's report so far (answered, unused, unmatched), taken in the fake's thread."""
        if self.fake is None:
            raise RuntimeError("no fake: this test is recording against a real QEMU")
        assert self._loop is not None
        report: FakeReport = self._loop.call(_report(self.fake))
        return report

    def settle(self, timeout: float) -> bool:
        """Wait up to *timeout* for every client connection to end; True when none is left."""
        return self._live is None or self._live.wait_idle(timeout)

    def problems(self, *, final: bool) -> str:
        """The near-miss text: unmatched commands, and (strict, when *final*) unused ones."""
        if self.fake is None:
            return ""
        report = self.report()
        unused = report.unused if (final and self.mode == "strict") else []
        hybrid = self.hybrid_report()
        refused = [a for a in hybrid.answers if a.source == "refused"] if hybrid is not None else []
        if refused:
            return "\n".join([f"qmprr new_episodes serving {self.recording}: {len(refused)} command(s) refused"]
                             + [f"  {a.line()}" for a in refused])
        if not report.unmatched and not unused:
            return ""
        where = self.recording if self.recording is not None else "a script built in code"
        lines = [
            f"qmprr fake ({self.mode}) serving {where}: {len(report.unmatched)} unmatched,"
            f" {len(unused)} unused command(s)"
        ]
        shown = FakeReport(report.answered, unused[:MAX_UNUSED_SHOWN], report.unmatched)
        lines += [f"  {line}" for line in shown.lines()]
        if len(unused) > MAX_UNUSED_SHOWN:
            lines.append(f"  ... and {len(unused) - MAX_UNUSED_SHOWN} more unused")
        return "\n".join(lines)


async def _report(fake: FakeQemu) -> FakeReport:
    return fake.report()


async def _hybrid_report(hybrid: Any) -> Any:
    return hybrid.report()


@pytest.fixture
def qmp_fake(request: pytest.FixtureRequest) -> Iterator[QmpEndpoint]:
    """A QMP socket for the code under test, serving the marked recording (see the module docstring)."""
    nodeid = request.node.nodeid
    marker = request.node.get_closest_marker(MARKER)
    if marker is None:
        misuse(nodeid, "qmp_fake needs a recording", f"mark the test @pytest.mark.{MARKER}('path/to/recording.jsonl')")
    options = read_marker(marker)
    if isinstance(options, MarkerError):
        misuse(nodeid, f"@pytest.mark.{MARKER}: {options}")
    config = request.config
    record_mode = config.getoption("--qmp-record-mode") or config.getini("qmp_record_mode")
    test_dir, rootdir = Path(request.path).parent, Path(config.rootpath)
    path = _resolve(options.path, test_dir, rootdir)
    record = record_mode == "rewrite" or (record_mode in ("once", "new_episodes") and not path.exists())
    if not record and not path.exists():
        misuse(nodeid, f"recording {options.path} not found (looked next to the test file and under rootdir)",
               "run with --qmp-record-mode=once to record it against a real QEMU")
    with _Serving(request) as serving:
        if record:
            yield from _recording_endpoint(request, serving, path, options)
            return
        from .errors import QmprrError
        from .replay.normalize import Normalizer, RulesError, load_rules

        normalizer, problem = Normalizer(), None
        try:
            if options.rules:
                normalizer = normalizer.with_rules(load_rules(str(_resolve(options.rules, test_dir, rootdir))))
        except RulesError as exc:
            problem = (str(exc), f"fix the rules file, or the marker's rules={options.rules!r}")
        try:
            fake = FakeQemu.from_recording(path, mode=options.mode, reuse=options.reuse, normalizer=normalizer,
                                           matchers=options.matchers)
        except (ValueError, TypeError) as exc:  # an unknown or bad matcher
            problem = problem or (f"{MARKER}: {exc}", "name a matcher given to qmprr.fake.register_matcher, or pass a callable")
        except QmprrError as exc:
            problem = problem or (str(exc), f"check it with 'qmprr verify {path}', or record it again"
                                  " (--qmp-record-mode=rewrite)")
        if problem is not None:  # outside the except: one line, no chained traceback
            misuse(nodeid, *problem)
        if record_mode == "new_episodes":
            yield from _new_episodes_endpoint(request, serving, path, fake)
            return
        yield serving.serve(fake, recording=path)


@pytest.fixture
def qmp_serve(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A function serving any :class:`FakeQemu` (e.g. from ``FakeQemu.builder()``) on a socket.

    ``endpoint = qmp_serve(fake)`` returns the same kind of object as
    ``qmp_fake``; the fake is checked the same way when the test ends.
    """
    with _Serving(request) as serving:
        yield serving.serve


class _Serving:
    """The background loop, a temporary folder for sockets, and the fakes served for one test."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request
        self.folder = tempfile.mkdtemp(prefix="qmprr-pytest-")
        self.loop = _LoopThread()
        self.endpoints: list[QmpEndpoint] = []
        self._servers: list[tuple[asyncio.Server, _Connections]] = []

    def __enter__(self) -> _Serving:
        return self

    def socket_path(self) -> str:
        return os.path.join(self.folder, f"qmp-{len(self.endpoints)}.sock")

    def serve(self, fake: FakeQemu, *, recording: Path | None = None, hybrid: Any = None) -> QmpEndpoint:
        seed = self.request.config.getoption("--qmp-chaos")
        if seed is not None and fake.chaos is None:
            from .fake_chaos import DEFAULT_MAX_DELAY, Chaos

            delay = self.request.config.getoption("--qmp-chaos-max-delay")
            fake.chaos = Chaos(seed, DEFAULT_MAX_DELAY if delay is None else delay)
        live = _Connections()
        path = self.socket_path()
        server = self.loop.call(_serve_fake(hybrid if hybrid is not None else fake, path, live))
        self._servers.append((server, live))
        endpoint = QmpEndpoint(path, recording, fake.mode, fake, _loop=self.loop, _live=live, hybrid=hybrid)
        self.add(endpoint)
        return endpoint

    def add(self, endpoint: QmpEndpoint) -> None:
        self.endpoints.append(endpoint)
        self.request.node.stash.setdefault(_KEY, []).append(endpoint)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._final_check()
        finally:
            for server, live in self._servers:
                with contextlib.suppress(Exception):
                    self.loop.call(_close_fake(server, live))
            self.loop.stop()
            shutil.rmtree(self.folder, ignore_errors=True)

    def _final_check(self) -> None:
        """Teardown: what the call-phase check could not see yet (a client was still connected)."""
        call = self.request.node.stash.get(_REPORTS, {}).get("call")
        if call is not None and not call.passed:
            return
        failures = []
        for endpoint in self.endpoints:
            if endpoint.fake is None or endpoint.checked:
                continue
            endpoint.settle(TEARDOWN_SETTLE_SECONDS)
            problems = endpoint.problems(final=True)
            if problems:
                failures.append(problems)
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)


def _recording_endpoint(
    request: pytest.FixtureRequest, serving: _Serving, path: Path, options: RecordingMarker
) -> Iterator[QmpEndpoint]:
    argv = list(options.qemu_argv or DEFAULT_QEMU_ARGV)
    if shutil.which(argv[0]) is None:
        pytest.fail(f"cannot record {path}: QEMU binary {argv[0]!r} not found", pytrace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.recording")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    socket_path = serving.socket_path()
    saved = False
    recorder = None
    try:
        recorder = serving.loop.call(_Recorder.start(argv, partial, socket_path, request.node.nodeid))
        endpoint = QmpEndpoint(socket_path, path, options.mode, None, recording_now=True, _loop=serving.loop)
        serving.add(endpoint)
        yield endpoint
    finally:
        if recorder is not None:
            serving.loop.call(recorder.stop())
        call = request.node.stash.get(_REPORTS, {}).get("call")
        try:
            if call is not None and call.passed:
                from .recording import verify

                checked = verify(partial)
                if not checked.ok:
                    problems = "; ".join(f"line {p.line}: {p.message}" for p in checked.problems[:3])
                    pytest.fail(f"the new recording of {path} does not verify: {problems}", pytrace=False)
                os.replace(partial, path)
                saved = True
        finally:
            if not saved:
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()


def _new_episodes_endpoint(
    request: pytest.FixtureRequest, serving: _Serving, path: Path, fake: FakeQemu
) -> Iterator[QmpEndpoint]:
    """Serve *fake* as a hybrid: what the recording lacks goes to a real QEMU and is appended as its next segment."""
    from .errors import QmprrError
    from .fake_forward import SANDBOXED, HybridFake, continuation, upstream_qemu

    if fake.mode != "lenient":
        pytest.fail(
            f"{request.node.nodeid}: --qmp-record-mode=new_episodes needs mode='lenient' in {MARKER}"
            f" (new exchanges are appended after the recorded ones), not {fake.mode!r}",
            pytrace=False,
        )
    try:
        target, link = continuation(str(path))
        partial = Path(target).with_name(f".{Path(target).name}.{os.getpid()}.episodes")
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        labels = {"made-by": "qmprr pytest plugin (new_episodes)", "test": request.node.nodeid}
        hybrid = HybridFake(fake, upstream_qemu(fake.script, str(partial), labels, link=link), record=str(partial),
                            policy=SANDBOXED)
    except QmprrError as exc:
        pytest.fail(f"cannot record new episodes of {path}: {exc}", pytrace=False)
    endpoint = serving.serve(fake, recording=path, hybrid=hybrid)
    try:
        yield endpoint
    finally:
        try:
            serving.loop.call(hybrid.close())
            report = hybrid.report()
            new = report.count("qemu")
            call = request.node.stash.get(_REPORTS, {}).get("call")
            if new and call is not None and call.passed:
                from .recording import verify

                checked = verify(partial, jobs=1)  # no fork: this process runs the fake's thread
                if not checked.ok:
                    problems = "; ".join(f"line {p.line}: {p.message}" for p in checked.problems[:3])
                    pytest.fail(f"the new episodes of {path} do not verify: {problems}", pytrace=False)
                try:
                    os.link(partial, target)  # never over a segment written meanwhile
                except FileExistsError:
                    pytest.fail(f"{target} appeared meanwhile (another run?): the new episodes are not saved",
                                pytrace=False)
                request.node.user_properties.append(("qmp_new_episodes", new))
                request.config.stash.setdefault(_NEW, []).append(
                    f"{request.node.nodeid}: {new} new exchange(s) appended to {target}"
                    f" ({report.count('recording')} answered from the recording)"
                )
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()  # saved: linked as the next segment; else dropped with the failed test


def _resolve(name: str | os.PathLike[str], test_dir: Path, rootdir: Path) -> Path:
    """An absolute path as it is; a relative one next to the test file, else under rootdir."""
    path = Path(name)
    if path.is_absolute():
        return path
    for base in (test_dir, rootdir):
        if (base / path).exists():
            return base / path
    return test_dir / path


# -- the background loop -----------------------------------------------------------


class _LoopThread:
    """An asyncio loop of its own in a daemon thread; coroutines run there via :meth:`call`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="qmprr-pytest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.call(_cancel_all(), timeout=10.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10.0)
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_all() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _Connections:
    """Counts the fake's live client connections (across threads)."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()
        self.writers: set[asyncio.StreamWriter] = set()

    def opened(self, writer: asyncio.StreamWriter) -> None:
        with self._cond:
            self._count += 1
            self.writers.add(writer)

    def closed(self, writer: asyncio.StreamWriter) -> None:
        with self._cond:
            self._count -= 1
            self.writers.discard(writer)
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout)


async def _serve_fake(fake: Any, path: str, live: _Connections) -> asyncio.Server:
    from .server import bind_unix

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        live.opened(writer)
        try:
            await fake.handle(reader, writer)
        finally:
            live.closed(writer)

    return await asyncio.start_unix_server(handle, sock=bind_unix(path), limit=wire.DEFAULT_MAX_MESSAGE)


async def _close_fake(server: asyncio.Server, live: _Connections) -> None:
    server.close()
    for writer in list(live.writers):
        writer.close()
    with contextlib.suppress(OSError):
        for sock in server.sockets:
            name = sock.getsockname()
            if isinstance(name, str) and name:
                os.unlink(name)


@attrs.define(eq=False)
class _Recorder:
    """A real QEMU behind qmprr's recording proxy (Channel + QmpServer), in its own work folder."""

    channel: Any
    server: Any
    workdir: str  # QEMU's folder: the only one it may write (the host is read-only in its sandbox)
    running: contextlib.AsyncExitStack  # the work folder, QEMU and the channel, closed by :meth:`stop`

    @classmethod
    async def start(cls, argv: list[str], record: Path, socket_path: str, nodeid: str) -> _Recorder:
        from .qemu_channel import qemu_channel, work_folder
        from .recording import RecordWriter, header_for_greeting, relevant_env
        from .sandbox import Sandbox
        from .server import QmpServer

        def make_log(greeting: dict[str, Any]) -> RecordWriter:
            header = header_for_greeting(
                greeting,
                qemu_argv=argv,
                qemu_env=relevant_env(),
                labels={"made-by": "qmprr pytest plugin", "test": nodeid},
            )
            return RecordWriter.create(record, header)

        stack = contextlib.AsyncExitStack()  # closed here on failure, else by stop()
        try:
            workdir = stack.enter_context(work_folder("qmprr-record-"))
            _, channel = await stack.enter_async_context(
                qemu_channel(argv, make_log, workdir=workdir, env={"TMPDIR": workdir}, sandbox=Sandbox((workdir,))))
            server = QmpServer(channel)
            await server.listen(socket_path, "primary")
        except BaseException:
            await stack.aclose()
            raise
        return cls(channel, server, workdir, stack)

    async def stop(self) -> None:
        """Disconnect the clients, close the channel and the log (no ``quit`` is recorded), stop QEMU."""
        await self.server.close()
        await self.running.aclose()
