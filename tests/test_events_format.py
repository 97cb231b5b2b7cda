"""``qmprr events`` lines (:func:`qmprr.events.format_event`) from untrusted event messages."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from qmprr.events import format_event, matches

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


def test_virsh_format() -> None:
    stop = {"event": "STOP", "timestamp": {"seconds": 1660071944, "microseconds": 4667}}
    assert format_event(stop) == "event STOP at 1660071944.004667: <null>"
    job = {**stop, "event": "JOB_STATUS_CHANGE", "data": {"id": "j0", "status": "running"}}
    assert format_event(job) == 'event JOB_STATUS_CHANGE at 1660071944.004667: {"id":"j0","status":"running"}'
    assert format_event({"event": "X", "data": None}) == "event X at ?: null"


@given(st.dictionaries(st.sampled_from(["event", "timestamp", "data", "x"]),
                       json_values | st.fixed_dictionaries({"seconds": json_values, "microseconds": json_values})))
def test_any_event_is_one_printable_ascii_line(msg: dict[str, Any]) -> None:
    line = format_event(msg)
    assert line.isascii() and line.isprintable()
    assert line.startswith("event ")


def test_filters() -> None:
    assert matches("BLOCK_JOB_COMPLETED", ["block_job_*"])
    assert matches("STOP", [])
    assert not matches("RESUME", ["STOP", "BLOCK*"])
    assert not matches(None, ["*"])
