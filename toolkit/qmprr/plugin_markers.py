"""The pytest plugin's ``qmp_recording`` marker, checked by cattrs (:mod:`qmprr.validate`).

:func:`read_marker` turns the marker's arguments into a :class:`RecordingMarker`
or raises :class:`MarkerError`; :func:`misuse` fails the test's set-up with one
line that names the test, what is wrong and how to write it instead (never a
fixture traceback).
"""

from __future__ import annotations

import os
import typing
from typing import Any, Literal, NoReturn

import attrs
import pytest

from . import validate
from .fake import MODES

MARKER = "qmp_recording"
#: The marker as a test writes it (the fix every marker error points to).
SIGNATURE = f"@pytest.mark.{MARKER}(path, mode='strict', reuse=False, qemu_argv=None, rules=None, matchers=None)"
FIX = f"write it as {SIGNATURE}; mode is strict, ordered or lenient"

Mode = Literal["strict", "ordered", "lenient"]
assert typing.get_args(Mode) == tuple(MODES), "the marker's modes are the fake's"


@attrs.frozen
class RecordingMarker:
    """``qmp_recording``'s arguments (see :mod:`qmprr.pytest_plugin`)."""

    path: str
    mode: Mode = "strict"
    reuse: bool = False
    qemu_argv: list[str] | None = None
    rules: str | None = None
    #: Python matchers (names given to ``register_matcher``, or callables); None: the built-in one.
    matchers: Any = None


_NAMES = tuple(a.name for a in attrs.fields(RecordingMarker))


class MarkerError(Exception):
    """A ``qmp_recording`` marker that cannot be used; the message says why."""


def read_marker(marker: pytest.Mark) -> RecordingMarker | MarkerError:
    """The marker's arguments, checked, or the :class:`MarkerError` saying why not (returned, not
    raised: :func:`misuse` then fails the test outside any ``except``, so no traceback is chained)."""
    try:
        return _read(marker)
    except MarkerError as exc:
        return exc


def _read(marker: pytest.Mark) -> RecordingMarker:
    if len(marker.args) > len(_NAMES):
        raise MarkerError(f"takes at most {len(_NAMES)} positional arguments, not {len(marker.args)}")
    given: dict[str, Any] = dict(zip(_NAMES, marker.args))
    twice = sorted(set(given) & set(marker.kwargs))
    if twice:
        raise MarkerError(f"{', '.join(map(repr, twice))} given twice")
    given.update(marker.kwargs)
    for name in ("path", "rules"):  # a pathlib.Path is as good as a string
        if isinstance(given.get(name), os.PathLike):
            given[name] = os.fspath(given[name])
    try:
        options = validate.check(given, RecordingMarker)
    except validate.Invalid as exc:
        raise MarkerError(str(exc)) from None
    if not options.path:
        raise MarkerError("'path' is empty: name the recording")
    matchers = options.matchers
    if matchers is None:
        matchers = ("arguments",)
    elif isinstance(matchers, str) or callable(matchers):
        matchers = (matchers,)
    elif isinstance(matchers, (list, tuple)):
        matchers = tuple(matchers)
    else:
        raise MarkerError(f"'matchers' must be a matcher's name, a callable or a list of them, not {matchers!r}")
    return attrs.evolve(options, matchers=matchers)


def misuse(nodeid: str, problem: str, fix: str = FIX) -> NoReturn:
    """Fail the test's set-up with one line: the test, the *problem*, and the *fix*."""
    pytest.fail(f"{nodeid}: {problem}; {fix}", pytrace=False)
