"""What replay does with each recorded command, and why: one place.

:meth:`ReplayPolicy.decide` runs an ordered list of rules (like vcrpy's list
of request matchers); the first that has an opinion decides, and says why.
The policy is built once, before the replay, and never changes during it.

Actions: ``send`` (as recorded, paths mapped), ``skip`` (not sent; not a
divergence), ``refuse`` (not sent; a divergence: it would run a host program
or reach the host), ``placeholder`` (sent with ``/dev/null`` for the recorded
fd), ``secret`` (sent with the ``--secret`` value for a redacted one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import attrs

from ..recording.redact import hmp_tokens
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


def _fd(policy: ReplayPolicy, ex: Exchange, args: Any) -> Decision | None:
    hmp = args.get("command-line", "") if isinstance(args, dict) and ex.command == "human-monitor-command" else ""
    if ex.command in FD_COMMANDS or (isinstance(hmp, str) and [t[2] for t in hmp_tokens(hmp)[:1]] == ["getfd"]):
        return Decision("placeholder", f"a placeholder fd ({PLACEHOLDER_FD}) stood in for the recorded one", args)
    return None


def _fill(policy: ReplayPolicy, ex: Exchange, args: Any) -> Decision | None:
    filled = fill_secrets(ex.command, args, policy.secrets) if policy.secrets else args
    return Decision("secret", "sent with the --secret value", filled) if filled is not args else None


#: The rules, in order; the first that returns a decision wins, else ``send``.
RULES: tuple[Rule, ...] = (_source, _secret, _safety, _fd, _fill)


@attrs.frozen
class ReplayPolicy:
    """Decides for every exchange; *checks* off means a fake target or ``--allow-unsafe``."""

    path_map: PathMap = attrs.Factory(PathMap)
    roots: tuple[str, ...] = ()  # where paths may point: the work folder, the --map-path targets
    secrets: dict[str, str] = attrs.Factory(dict)
    only_src: tuple[str, ...] = ()
    checks: bool = True
    rules: tuple[Rule, ...] = RULES

    def decide(self, ex: Exchange) -> Decision:
        """What to do with *ex*, and why."""
        args = self.path_map.rewrite(ex.arguments) if self.path_map.pairs else ex.arguments
        for rule in self.rules:
            decision = rule(self, ex, args)
            if decision is not None:
                return decision
        return Decision("send", None, args)
