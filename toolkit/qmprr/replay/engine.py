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
from collections.abc import Callable
from typing import Any, Literal

import attrs

from ..channel import Channel, ChannelError
from .compare import RATE_LIMITED_EVENTS, Difference, compare_replies, event_key
from .compare import field_differences as field_differences  # re-exported: it used to live here
from .normalize import Normalizer
from .safety import FD_COMMANDS, PLACEHOLDER_FD, PathMap, fill_secrets, refusal
from .script import Exchange, Script

Status = Literal["matched", "diverged", "skipped", "refused", "interrupted"]


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
    only_src: tuple[str, ...] = ()
    pace: float | None = None  # None: as fast as possible; 1.0: recorded timing; 2.0: twice as fast
    real_target: bool = True
    allow_unsafe: bool = False
    path_map: PathMap = attrs.Factory(PathMap)
    secrets: dict[str, str] = attrs.Factory(dict)
    normalizer: Normalizer = attrs.Factory(Normalizer)
    event_timeout: float = 3.0
    command_timeout: float = 60.0


@attrs.define
class ReplayReport:
    """Every step, and the verdict."""

    recording: str
    target: str
    steps: list[Step] = attrs.Factory(list)
    warnings: list[str] = attrs.Factory(list)
    error: str | None = None

    def count(self, status: str) -> int:
        return sum(1 for s in self.steps if s.status == status)

    @property
    def first_divergence(self) -> Step | None:
        return next((s for s in self.steps if s.status in ("diverged", "refused", "interrupted")), None)

    @property
    def reproduced(self) -> bool:
        return self.error is None and self.first_divergence is None


async def replay(
    script: Script,
    channel: Channel,
    options: ReplayOptions,
    report: ReplayReport,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Replay *script* through *channel*, filling and returning *report*."""
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
            if options.only_src and ex.src not in options.only_src:
                report.steps.append(Step(index, ex.seq, ex.command, ex.src, "skipped", "source not selected"))
                continue
            if options.pace:
                delay = (ex.t - first_t) / options.pace - (time.monotonic() - start)
                if delay > 0:
                    await asyncio.sleep(delay)
            step = await _run_step(index, ex, channel, events, options, norm)
            report.steps.append(step)
            if step.status == "interrupted":
                break
            if step.status in ("diverged", "refused") and not options.keep_going:
                break
    finally:
        events.close()
    return report


async def _run_step(
    index: int, ex: Exchange, channel: Channel, events: Any, options: ReplayOptions, norm: Normalizer
) -> Step:
    step = Step(index, ex.seq, ex.command, ex.src, "matched", recorded_reply=ex.reply)
    arguments = options.path_map.rewrite(ex.arguments) if options.path_map.pairs else ex.arguments
    if options.real_target:
        refused = refusal(
            ex.command,
            arguments,
            allow_unsafe=options.allow_unsafe,
            roots=options.path_map.allowed_roots(),
            secrets=options.secrets,
        )
        if refused is not None:
            kind, reason = refused
            step.status, step.reason = ("refused", reason) if kind == "unsafe" else ("skipped", reason)
            return step
    arguments = fill_secrets(ex.command, arguments, options.secrets) if options.secrets else arguments
    msg: dict[str, Any] = {"execute": ex.command}
    if arguments is not None:
        msg["arguments"] = arguments
    started = time.monotonic()
    placeholder = os.open(PLACEHOLDER_FD, os.O_RDWR) if ex.command in FD_COMMANDS else None
    if placeholder is not None:
        step.reason = f"a placeholder fd ({PLACEHOLDER_FD}) stood in for the recorded one"
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
        step.differences += compare_replies(ex.command, rewrite(ex.reply), actual, norm)
    expected_events = [rewrite(e) for e in ex.events_before + ex.events_after]
    step.differences += await _compare_events(expected_events, events, options, norm)
    if step.differences:
        step.status = "diverged"
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
    return diffs
