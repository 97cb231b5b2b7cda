"""What replay does with each recorded command, and why: one place.

:meth:`ReplayPolicy.decide` runs an ordered list of rules (like vcrpy's list
of request matchers); the first that has an opinion decides, and says why.
The policy is built once, before the replay, and never changes during it.

Actions: ``send`` (as recorded, paths mapped), ``skip`` (not sent; not a
divergence), ``refuse`` (not sent; a divergence: it would run a host program
or reach the host), ``placeholder`` (sent with ``/dev/null`` for the recorded
fd), ``secret`` (sent with the ``--secret`` value for a redacted one).

The fake decides with the same policy (:meth:`ReplayPolicy.for_fake`): for
it ``send`` means "answer from the recording"; qmprr's own commands are
skipped (clients never send them) and a command recorded without a reply is
refused (there is nothing to answer). Commands the hybrid fake forwards to a
real QEMU (:mod:`qmprr.fake_forward`) are decided by the replay rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import attrs

from ..recording.redact import hmp_tokens
from . import network as net
from .safety import FD_COMMANDS, PLACEHOLDER_FD, PathMap, fill_secrets, refusal, secret_missing
from .script import Exchange

Action = Literal["send", "skip", "refuse", "placeholder", "secret"]


@attrs.frozen
class Decision:
    """What to do with one exchange: *action*, *reason* (None for a plain send), what to send."""

    action: Action
    reason: str | None = None
    arguments: Any = None

    @property
    def sends(self) -> bool:
        return self.action in ("send", "placeholder", "secret")


Rule = Callable[["ReplayPolicy", Exchange, Any], "Decision | None"]


def _internal(policy: ReplayPolicy, ex: Exchange, args: Any) -> Decision | None:
    if not policy.internal and ex.role == "internal":
        return Decision("skip", "qmprr's own command (its shutdown quit): not expected from clients")
    return None


def _unanswered(policy: ReplayPolicy, ex: Exchange, args: Any) -> Decision | None:
    if ex.reply is None:
        return Decision(
            "refuse",
            f"the recording has no reply to {ex.command} (seq {ex.seq}): it was in flight when recording ended",
        )
    return None


def _source(policy: ReplayPolicy, ex: Exchange, args: Any) -> Decision | None:
    if policy.only_src and ex.src not in policy.only_src:
        return Decision("skip", "source not selected")
    return None


def _secret(policy: ReplayPolicy, ex: Exchange, args: Any) -> Decision | None:
    missing = secret_missing(ex.command, args, policy.secrets)
    return Decision("skip", missing) if missing else None


def _safety(policy: ReplayPolicy, ex: Exchange, args: Any) -> Decision | None:
    if not policy.checks:
        return None
    reason = refusal(ex.command, args, policy.roots)
    return Decision("refuse", reason) if reason else None


def _network(policy: ReplayPolicy, ex: Exchange, args: Any) -> Decision | None:
    if not policy.checks or policy.network:
        return None
    reason = net.refusal(ex.command, args)
    if reason is None:
        return None
    return Decision("refuse", f"{reason}, and this QEMU is on the host's network (not in qmprr's sandbox)")


def _fd(policy: ReplayPolicy, ex: Exchange, args: Any) -> Decision | None:
    hmp = args.get("command-line", "") if isinstance(args, dict) and ex.command == "human-monitor-command" else ""
    if ex.command in FD_COMMANDS or (isinstance(hmp, str) and [t[2] for t in hmp_tokens(hmp)[:1]] == ["getfd"]):
        return Decision("placeholder", f"a placeholder fd ({PLACEHOLDER_FD}) stood in for the recorded one", args)
    return None


def _fill(policy: ReplayPolicy, ex: Exchange, args: Any) -> Decision | None:
    filled = fill_secrets(ex.command, args, policy.secrets) if policy.secrets else args
    return Decision("secret", "sent with the --secret value", filled) if filled is not args else None


#: The rules, in order; the first that returns a decision wins, else ``send``.
RULES: tuple[Rule, ...] = (_internal, _source, _secret, _safety, _network, _fd, _fill)
#: The fake's rules: what it may answer from the recording.
FAKE_RULES: tuple[Rule, ...] = (_internal, _unanswered)


@attrs.frozen
class ReplayPolicy:
    """Decides for every exchange; *checks* off means a fake target or ``--allow-unsafe``."""

    path_map: PathMap = attrs.Factory(PathMap)
    roots: tuple[str, ...] = ()  # where paths may point: the work folder, the --map-path targets
    secrets: dict[str, str] = attrs.Factory(dict)
    only_src: tuple[str, ...] = ()
    checks: bool = True
    internal: bool = True  # qmprr's own commands (role internal) take part; the fake's clients never send them
    #: QEMU is in qmprr's network namespace (only loopback): commands may open sockets there.
    #: False for a QEMU someone else started: those are refused (:mod:`qmprr.replay.network`).
    network: bool = False
    rules: tuple[Rule, ...] = RULES

    @classmethod
    def for_fake(cls, *, internal: bool = False) -> ReplayPolicy:
        """The fake's policy: answer from the recording (``send``), skip or refuse; nothing runs."""
        return cls(checks=False, internal=internal, rules=FAKE_RULES)

    def decide(self, ex: Exchange) -> Decision:
        """What to do with *ex*, and why."""
        args = self.path_map.rewrite(ex.arguments) if self.path_map.pairs else ex.arguments
        for rule in self.rules:
            decision = rule(self, ex, args)
            if decision is not None:
                return decision
        return Decision("send", None, args)
