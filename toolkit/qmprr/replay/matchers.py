"""Python matchers beside the TOML rules (VCR's ``register_matcher``).

A matcher is a callable given the recorded command and the actual one (QMP
messages: ``{"execute": NAME, "arguments": {...}}``, without ``id``) that
returns a true value (or None) for a match; to refuse, it raises (any
exception; :class:`MatchError` or ``assert`` read best) or returns False. Its
message is what the fake's near-miss error shows::

    def same_node(recorded, actual):
        assert recorded["arguments"]["node-name"] == actual["arguments"]["node-name"], "another node"

    register_matcher("same-node", same_node)
    FakeQemu.from_recording(path, mode="lenient", matchers=["same-node"])

The command name always has to be equal. The built-in matcher ``arguments``
(normalized arguments equal, the TOML rules applied) is the default; a list
without it compares the arguments only through the matchers it names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Matcher = Callable[[dict[str, Any], dict[str, Any]], object]

#: The built-in matcher: arguments equal after normalization.
ARGUMENTS = "arguments"
_REGISTRY: dict[str, Matcher] = {}


class MatchError(Exception):
    """Raised by a matcher: not a match, and why."""


def register_matcher(name: str, fn: Matcher) -> None:
    """Make *fn* usable by *name* in ``matchers=[...]`` (a later registration replaces it)."""
    if not isinstance(name, str) or not name or name == ARGUMENTS:
        raise ValueError(f"a matcher needs a name other than {ARGUMENTS!r} (built in)")
    if not callable(fn):
        raise TypeError(f"matcher {name!r}: {fn!r} is not callable")
    _REGISTRY[name] = fn


def unregister_matcher(name: str) -> None:
    """Forget the matcher registered as *name* (nothing if there is none)."""
    _REGISTRY.pop(name, None)


def resolve(specs: Sequence[str | Matcher]) -> tuple[tuple[str, Matcher | None], ...]:
    """``(name, fn)`` for each of *specs* (registered names or callables); ``fn`` None for ``arguments``."""
    out: list[tuple[str, Matcher | None]] = []
    for spec in specs:
        if spec == ARGUMENTS:
            out.append((ARGUMENTS, None))
        elif isinstance(spec, str):
            if spec not in _REGISTRY:
                known = ", ".join(sorted([ARGUMENTS, *_REGISTRY]))
                raise ValueError(f"unknown matcher {spec!r} (registered: {known}); see register_matcher")
            out.append((spec, _REGISTRY[spec]))
        elif callable(spec):
            out.append((getattr(spec, "__name__", repr(spec)), spec))
        else:
            raise TypeError(f"a matcher is a registered name or a callable, not {spec!r}")
    return tuple(out)


def refusal(matchers: Sequence[tuple[str, Matcher | None]], recorded: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """Why the custom *matchers* refuse *actual* as *recorded*, or None when they all accept it."""
    for name, fn in matchers:
        if fn is None:
            continue
        try:
            result = fn(recorded, actual)
        except Exception as exc:  # a matcher's refusal (or its bug): either way, not a match
            text = str(exc) or type(exc).__name__
            return f"matcher {name!r}: {text}"
        if result is False:
            return f"matcher {name!r}: no match"
    return None
