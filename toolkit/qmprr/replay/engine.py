"""The replay engine: send a recording's commands again and compare.

Commands go out in recorded order (all sources, as the channel serialized
them) through a :class:`~qmprr.channel.Channel` to the target, so the replay
is itself recorded. Each reply is compared with the recorded one after
normalization: same kind (return/error), same error class, equal data. Then
the events the recording shows between this command and the next are
awaited (up to ``event_timeout``) and compared as a multiset within that
window, so timing differences are not divergences; rate-limited events QEMU
may coalesce only need to appear.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import attrs

from .. import codec
from ..channel import Channel, ChannelError
from ..sandbox import SECCOMP_SIGNAL
from .compare import RATE_LIMITED_EVENTS, Difference, compare_replies, event_key
from .compare import field_differences as field_differences  # re-exported: it used to live here
from .normalize import Normalizer
from .policy import RULES, Decision, ReplayPolicy
from .safety import PLACEHOLDER_FD, PathMap
from .script import Exchange, Script

#: ``prelude``: sent before ``--from-segment``'s first command to rebuild QEMU's state; not compared.
Status = Literal["matched", "diverged", "skipped", "refused", "interrupted", "prelude"]


@attrs.define
class Step:
    """What happened to one recorded exchange."""

    index: int
    seq: int
    command: str
    src: str
    status: Status
    reason: str | None = None
    differences: list[Difference] = attrs.Factory(list)
    recorded_reply: dict[str, Any] | None = None
    actual_reply: dict[str, Any] | None = None
    seconds: float = 0.0


@attrs.define
class ReplayOptions:
    """How to replay (see ``qmprr replay --help``)."""

    keep_going: bool = False
    until: int | None = None
    #: ``--from-segment``: commands before this seq are replayed (QEMU needs their state) but not compared.
    from_seq: int | None = None
    only_src: tuple[str, ...] = ()
    pace: float | None = None  # None: as fast as possible; 1.0: recorded timing; 2.0: twice as fast
    allow_unsafe: bool = False  # no checks and no sandbox
    path_map: PathMap = attrs.Factory(PathMap)
    secrets: dict[str, str] = attrs.Factory(dict)
    normalizer: Normalizer = attrs.Factory(Normalizer)
    event_timeout: float = 3.0
    host_differences: Literal["warn", "diverge"] = "warn"  # differences a host rule explains (compare.HOST_RULES)
    command_timeout: float = 60.0

    def policy(self, *, checks: bool = True, roots: tuple[str, ...] = (), network: bool = False) -> ReplayPolicy:
        """The decisions for a target: *checks* for a real QEMU, *roots* besides the --map-path targets,
        *network* when QEMU is in qmprr's network namespace."""
        return ReplayPolicy(
            path_map=self.path_map,
            roots=(*roots, *self.path_map.allowed_roots()),
            secrets=self.secrets,
            only_src=self.only_src,
            checks=checks and not self.allow_unsafe,
            network=network,
        )


@attrs.define
class ReplayReport:
    """Every step, and the verdict."""

    recording: str
    target: str
    steps: list[Step] = attrs.Factory(list)
    warnings: list[str] = attrs.Factory(list)
    error: str | None = None
    scratch_images: list[str] = attrs.Factory(list)  # blank images made for the replay (qmprr.replay.scratch)

    def count(self, status: str) -> int:
        return sum(1 for s in self.steps if s.status == status)

    @property
    def first_divergence(self) -> Step | None:
        return next((s for s in self.steps if s.status in ("diverged", "refused", "interrupted")), None)

    @property
    def replayed(self) -> int:
        """Steps whose command was sent."""
        return sum(1 for s in self.steps if s.status in ("matched", "diverged", "interrupted"))

    @property
    def reproduced(self) -> bool:
        """No error, no divergence, and something was replayed at all."""
        return self.error is None and self.first_divergence is None and self.replayed > 0


async def replay(
    script: Script,
    channel: Channel,
    options: ReplayOptions,
    report: ReplayReport,
    progress: Callable[[int, int], None] | None = None,
    *,
    policy: ReplayPolicy | None = None,
    exit_signal: Callable[[], Awaitable[int | None]] | None = None,
) -> ReplayReport:
    """Replay *script* through *channel*, filling and returning *report*.

    *policy* decides each step (default: ``options.policy()``); *exit_signal*
    tells, once the channel broke, which signal ended the target (QEMU's
    seccomp sandbox kills with SIGSYS: such a step is refused, not interrupted).
    """
    policy = policy if policy is not None else options.policy()
    events = channel.subscribe("replay", maxsize=100_000)
    norm = options.normalizer
    exchanges = script.exchanges
    start = time.monotonic()
    first_t = exchanges[0].t if exchanges else 0.0
    decide = _cached_decide(policy)

    def settle(step: Step) -> bool:
        """Put a finished step in the report; whether the replay goes on."""
        ex = exchanges[step.index]
        if options.from_seq is not None and ex.seq < options.from_seq and step.status in ("matched", "diverged"):
            step.status = "prelude"  # its differences stay in --report, but do not count
        report.steps.append(step)
        if step.status == "matched":
            if step.differences:
                report.warnings += [f"step {step.index + 1}, seq {ex.seq} {ex.command}: {d}" for d in step.differences]
            return True
        return step.status != "interrupted" and (step.status not in ("diverged", "refused") or options.keep_going)

    def begin(index: int) -> Decision | None:
        """The checks before step *index* is sent: its decision, or None when the replay stops here."""
        ex = exchanges[index]
        if options.until is not None and ex.seq > options.until:
            return None
        if progress is not None:
            progress(index, len(exchanges))
        if index and ex.session != exchanges[index - 1].session:
            report.warnings.append(f"step {index + 1}, seq {ex.seq}: monitor session {ex.session} starts (a new"
                                   " QEMU and negotiation when recorded); replayed into the same QEMU")
        return decide(ex)

    chain = _Chain(exchanges, channel, events, options, norm, settle, begin)
    try:
        index = 0
        decision = begin(0) if exchanges else None
        while decision is not None:
            ex = exchanges[index]
            if not decision.sends:
                status: Status = "skipped" if decision.action == "skip" else "refused"
                report.steps.append(Step(index, ex.seq, ex.command, ex.src, status, decision.reason))
                if status == "refused" and not options.keep_going:
                    break
            else:
                if options.pace:
                    delay = (ex.t - first_t) / options.pace - (time.monotonic() - start)
                    if delay > 0:
                        await asyncio.sleep(delay)
                if _chainable(ex, decision, options):
                    step, index, decision = await chain.run(index, decision)
                    if step is None:  # the chain settled its steps and stopped at *index* with *decision*
                        continue
                else:
                    step = await _run_step(index, ex, decision, channel, events, options, norm)
                if step.status == "interrupted" and exit_signal is not None and await exit_signal() == SECCOMP_SIGNAL:
                    step.status = "refused"
                    step.reason = ("refused by QEMU's sandbox: QEMU was killed by SIGSYS (seccomp) when this"
                                   " command made a forbidden system call, such as running a program")
                    report.steps.append(step)
                    break
                if not settle(step):
                    break
            index += 1
            decision = begin(index) if index < len(exchanges) else None
    finally:
        events.close()
    return report


def _cached_decide(policy: ReplayPolicy) -> Callable[[Exchange], Decision]:
    """``policy.decide``, worked out once per (command, role, src, arguments as JSON).

    Only for the built-in rules, which are pure functions of those: a replay
    of 10,000 ``query-status`` decides once, and a repeated ``qom-list`` of
    one path too. Equal JSON sends equal bytes, so a cached decision's
    arguments stand in for another exchange's.
    """
    if policy.rules is not RULES:
        return policy.decide
    cache: dict[tuple[str, str, str, bytes | None], Decision] = {}

    def decide(ex: Exchange) -> Decision:
        args = None if ex.arguments is None else codec.dumps(ex.arguments)
        if args is not None and len(args) > MAX_CACHED_ARGUMENTS:
            return policy.decide(ex)
        key = (ex.command, ex.role, ex.src, args)
        decision = cache.get(key)
        if decision is None:
            decision = policy.decide(ex)
            if len(cache) < 4096:  # names and arguments come from recordings: bounded
                cache[key] = decision
        return decision

    return decide


#: Longer arguments (as JSON) are decided afresh: the cache stays small.
MAX_CACHED_ARGUMENTS = 1024


def _chainable(ex: Exchange, decision: Decision, options: ReplayOptions) -> bool:
    """Whether step *ex* can run from the channel's callback: sent as is, no events to wait for, no pacing."""
    return (decision.action in ("send", "secret") and not ex.events_before and not ex.events_after
            and not options.pace)


class _Chain:
    """Runs consecutive plain steps from the channel's ``done`` callback, with no task hop between them.

    Each reply is compared, and the next step begun and sent, inside the
    callback that read the reply, exactly as :func:`_run_step` and the loop of
    :func:`replay` would. The chain hands back to that loop at the first step
    it cannot run this way (fds, events to wait for, a skip), an interrupted
    step (the loop asks how QEMU ended), or the end.
    """

    def __init__(self, exchanges: list[Exchange], channel: Channel, events: Any, options: ReplayOptions,
                 norm: Normalizer, settle: Callable[[Step], bool], begin: Callable[[int], Decision | None]) -> None:
        self.exchanges, self.channel, self.events, self.options, self.norm = exchanges, channel, events, options, norm
        self.settle, self.begin = settle, begin
        self.rewrite = options.path_map.rewrite if options.path_map.pairs else None
        self.future: asyncio.Future[tuple[Step | None, int, Decision | None]] | None = None
        self.index = 0
        self.decision: Decision | None = None
        self.started = 0.0
        self.token: Any = None
        self.timer: asyncio.TimerHandle | None = None

    async def run(self, index: int, decision: Decision) -> tuple[Step | None, int, Decision | None]:
        """Run from step *index*: ``(interrupted step, its index, None)`` or ``(None, next index, its decision)``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Step | None, int, Decision | None]] = loop.create_future()
        self.future = future
        self.timer = loop.call_later(self.options.command_timeout, self._on_timer)
        try:
            self._send(index, decision)
            return await future
        except asyncio.CancelledError:
            if self.token is not None:
                self.channel.withdraw(self.token)
            raise
        finally:
            self.token = None
            self.future = None
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def _send(self, index: int, decision: Decision) -> None:
        ex = self.exchanges[index]
        self.index, self.decision = index, decision
        msg: dict[str, Any] = {"execute": ex.command}
        if decision.arguments is not None:
            msg["arguments"] = decision.arguments
        self.started = time.monotonic()
        self.token = None
        token = self.channel.submit(msg, done=self._done, src=ex.src, role=ex.role)
        if self.index == index and self.future is not None and not self.future.done() and self.token is None \
                and self.decision is decision:
            self.token = token  # still in flight (done was not called from submit)

    def _on_timer(self) -> None:
        """The lazy per-step timeout: one timer, set again for the step in flight."""
        self.timer = None
        future = self.future
        if future is None or future.done():
            return
        left = self.started + self.options.command_timeout - time.monotonic()
        if left > 0:
            self.timer = asyncio.get_running_loop().call_later(left, self._on_timer)
            return
        if self.token is not None:
            self.channel.withdraw(self.token)
            self.token = None
        self._done(None, None)

    def _done(self, actual: dict[str, Any] | None, error: ChannelError | None) -> None:
        future = self.future
        if future is None or future.done():
            return
        self.token = None
        try:
            index, ex = self.index, self.exchanges[self.index]
            decision = self.decision
            assert decision is not None
            if actual is None:
                reason = (str(error) if error is not None else "") or "no reply in time"
                future.set_result((Step(index, ex.seq, ex.command, ex.src, "interrupted", reason,
                                        recorded_reply=ex.reply), index, None))
                return
            step = Step(index, ex.seq, ex.command, ex.src, "matched", decision.reason, self._differences(ex, actual),
                        recorded_reply=ex.reply, actual_reply=actual, seconds=time.monotonic() - self.started)
            _verdict(step, self.options)
            if not self.settle(step):
                future.set_result((None, len(self.exchanges), None))
                return
            index += 1
            decision = self.begin(index) if index < len(self.exchanges) else None
            if decision is None:
                future.set_result((None, len(self.exchanges), None))
            elif not decision.sends or not _chainable(self.exchanges[index], decision, self.options):
                future.set_result((None, index, decision))
            else:
                self._send(index, decision)
        except BaseException as exc:  # a bug must reach replay()'s caller, not the event loop's handler
            if not future.done():
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def _differences(self, ex: Exchange, actual: dict[str, Any]) -> list[Difference]:
        """How *actual* differs from the recorded reply, and the events that came meanwhile (all extra)."""
        diffs: list[Difference] = []
        if ex.reply is not None:
            recorded = self.rewrite(ex.reply) if self.rewrite is not None else ex.reply
            diffs = compare_replies(ex.command, recorded, actual, self.norm, ex.arguments)
        if not self.events.queue.empty():  # none expected (else not chained): every one is extra
            diffs += _unexpected_events(self.events, self.norm)
        return diffs


def _verdict(step: Step, options: ReplayOptions) -> None:
    """Diverged when a difference is not a host difference (or those diverge too); host ones only warn."""
    if not step.differences:
        return
    if any(d.host is None or options.host_differences == "diverge" for d in step.differences):
        step.status = "diverged"
    else:
        step.reason = "; ".join(filter(None, [step.reason, "host differences only (warnings)"]))


async def _run_step(
    index: int, ex: Exchange, decision: Decision, channel: Channel, events: Any, options: ReplayOptions, norm: Normalizer
) -> Step:
    step = Step(index, ex.seq, ex.command, ex.src, "matched", decision.reason, recorded_reply=ex.reply)
    msg: dict[str, Any] = {"execute": ex.command}
    if decision.arguments is not None:
        msg["arguments"] = decision.arguments
    started = time.monotonic()
    placeholder = os.open(PLACEHOLDER_FD, os.O_RDWR) if decision.action == "placeholder" else None
    try:
        async with asyncio.timeout(options.command_timeout):  # unlike wait_for, no extra task per command
            actual = await channel.execute(
                msg, src=ex.src, role=ex.role, fds=(placeholder,) if placeholder is not None else ()
            )
    except (ChannelError, TimeoutError) as exc:
        step.status, step.reason = "interrupted", str(exc) or "no reply in time"
        return step
    finally:
        if placeholder is not None:
            os.close(placeholder)
    step.seconds = time.monotonic() - started
    step.actual_reply = actual
    rewrite = options.path_map.rewrite if options.path_map.pairs else (lambda v: v)
    if ex.reply is not None:
        step.differences += compare_replies(ex.command, rewrite(ex.reply), actual, norm, ex.arguments)
    if ex.events_before or ex.events_after or not events.queue.empty():
        expected_events = [rewrite(e) for e in ex.events_before + ex.events_after]
        step.differences += await _compare_events(expected_events, events, options, norm)
    _verdict(step, options)
    return step


async def _compare_events(
    expected_msgs: list[dict[str, Any]], events: Any, options: ReplayOptions, norm: Normalizer
) -> list[Difference]:
    expected = collections.Counter(event_key(norm, m) for m in expected_msgs)
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    extras: list[tuple[str, str]] = []
    deadline = time.monotonic() + options.event_timeout

    def missing() -> bool:
        return any(
            seen[k] < (1 if k[0] in RATE_LIMITED_EVENTS else n) for k, n in expected.items()
        )

    while (msg := await _next_event(events.queue, deadline if missing() else None)) is not None:
        key = event_key(norm, msg)
        if seen[key] < expected.get(key, 0) or (key[0] in RATE_LIMITED_EVENTS and key in expected):
            seen[key] += 1
        else:
            extras.append(key)
    return _event_differences(expected, seen, extras)


def _unexpected_events(events: Any, norm: Normalizer) -> list[Difference]:
    """What :func:`_compare_events` says when no event is expected: the queued ones are extra (no waiting)."""
    extras: list[tuple[str, str]] = []
    queue = events.queue
    while not queue.empty() and (msg := queue.get_nowait()) is not None:
        extras.append(event_key(norm, msg))
    return _event_differences(collections.Counter(), collections.Counter(), extras)


async def _next_event(queue: asyncio.Queue[Any], deadline: float | None) -> Any:
    """The next queued event, or None (the queue's end, or none by *deadline*; no deadline: no waiting).

    Waits under :func:`asyncio.timeout`: unlike ``wait_for``, no task per event.
    """
    if not queue.empty():
        return queue.get_nowait()
    left = deadline - time.monotonic() if deadline is not None else 0.0
    if left <= 0:
        return None
    try:
        async with asyncio.timeout(left):
            return await queue.get()
    except TimeoutError:
        return None


def _event_differences(expected: collections.Counter[tuple[str, str]], seen: collections.Counter[tuple[str, str]],
                       extras: list[tuple[str, str]]) -> list[Difference]:
    diffs = []
    for key, n in expected.items():
        need = 1 if key[0] in RATE_LIMITED_EVENTS else n
        if seen[key] < need:
            diffs.append(Difference("missing-event", key[0], f"{n} x {key[1]}", f"{seen[key]} seen"))
    for key in extras:
        diffs.append(Difference("extra-event", key[0], None, key[1]))
    for d in diffs:
        if _guest_caused(d.recorded if d.what == "missing-event" else d.actual):
            d.host = GUEST_TIMING
    return diffs


#: Why an event the guest caused is a host difference: the guest runs on its own clock, not the replay's.
GUEST_TIMING = ("guest-timing: the guest caused this event (\"guest\": true) on its own clock, which"
                " replay does not control (firmware rebooting, a guest shutting down)")


def _guest_caused(data: Any) -> bool:
    """Whether an event's canonical data (``N x {...}`` for a missing one) says ``"guest": true``."""
    text = data.split(" x ", 1)[1] if isinstance(data, str) and " x {" in data else data
    try:
        parsed = codec.loads(text) if isinstance(text, str) else None
    except codec.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("guest") is True
