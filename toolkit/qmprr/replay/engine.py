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
from .policy import Decision, ReplayPolicy
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

    def policy(self, *, checks: bool = True, roots: tuple[str, ...] = ()) -> ReplayPolicy:
        """The decisions for a target: *checks* for a real QEMU, *roots* besides the --map-path targets."""
        return ReplayPolicy(
            path_map=self.path_map,
            roots=(*roots, *self.path_map.allowed_roots()),
            secrets=self.secrets,
            only_src=self.only_src,
            checks=checks and not self.allow_unsafe,
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
    try:
        for index, ex in enumerate(exchanges):
            if options.until is not None and ex.seq > options.until:
                break
            if progress is not None:
                progress(index, len(exchanges))
            if index and ex.session != exchanges[index - 1].session:
                report.warnings.append(f"step {index + 1}, seq {ex.seq}: monitor session {ex.session} starts (a new"
                                       " QEMU and negotiation when recorded); replayed into the same QEMU")
            decision = policy.decide(ex)
            if not decision.sends:
                status: Status = "skipped" if decision.action == "skip" else "refused"
                report.steps.append(Step(index, ex.seq, ex.command, ex.src, status, decision.reason))
                if status == "refused" and not options.keep_going:
                    break
                continue
            if options.pace:
                delay = (ex.t - first_t) / options.pace - (time.monotonic() - start)
                if delay > 0:
                    await asyncio.sleep(delay)
            step = await _run_step(index, ex, decision, channel, events, options, norm)
            if step.status == "interrupted" and exit_signal is not None and await exit_signal() == SECCOMP_SIGNAL:
                step.status = "refused"
                step.reason = ("refused by QEMU's sandbox: QEMU was killed by SIGSYS (seccomp) when this"
                               " command made a forbidden system call, such as running a program")
                report.steps.append(step)
                break
            if options.from_seq is not None and ex.seq < options.from_seq and step.status in ("matched", "diverged"):
                step.status = "prelude"  # its differences stay in --report, but do not count
            report.steps.append(step)
            if step.status == "matched":
                report.warnings += [f"step {index + 1}, seq {ex.seq} {ex.command}: {d}" for d in step.differences]
            if step.status == "interrupted":
                break
            if step.status in ("diverged", "refused") and not options.keep_going:
                break
    finally:
        events.close()
    return report


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
    if any(d.host is None or options.host_differences == "diverge" for d in step.differences):
        step.status = "diverged"
    elif step.differences:
        step.reason = "; ".join(filter(None, [step.reason, "host differences only (warnings)"]))
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

    queue = events.queue
    while True:
        timeout = deadline - time.monotonic() if missing() else 0.0
        try:
            msg = await asyncio.wait_for(queue.get(), timeout) if timeout > 0 else queue.get_nowait()
        except (TimeoutError, asyncio.QueueEmpty):
            break
        if msg is None:
            break
        key = event_key(norm, msg)
        if seen[key] < expected.get(key, 0) or (key[0] in RATE_LIMITED_EVENTS and key in expected):
            seen[key] += 1
        else:
            extras.append(key)
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
