"""``qmprr stats``: what recordings hold, as SQL over the query views (DuckDB).

Per command: count, errors by class, exact latency percentiles, commands left
without a reply. Events by name; clients with their role and command counts;
taint; transactions (holds and the waits they caused, see
:mod:`~qmprr.analysis.waits`); the busiest second. The figures are the
queries of :mod:`~qmprr.analysis.query.stats`; over several recordings they
add up across them. The hash chain is not checked here (``qmprr verify`` does).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any

from ..errors import NotARecording
from ..recording import RecordingReader


def _header_facts(path: str) -> dict[str, Any]:
    """The header's start, host and QEMU version (the reader refuses a non-recording here)."""
    with RecordingReader(path) as reader:
        header = reader.header
    qemu = header.qemu_version.get("qemu") if isinstance(header.qemu_version, dict) else None
    version: dict[str, Any] = qemu if isinstance(qemu, dict) else {}
    return {"started": header.started, "host": header.host,
            "qemu": ".".join(str(version.get(k, "?")) for k in ("major", "minor", "micro")) if version else None}


def compute_many(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Statistics of every recording under *paths* (files or folders), added up."""
    from .query.engine import open_recordings
    from .query.files import expand
    from .query.stats import STATS_COLUMNS, stats_dict

    files = expand([os.fspath(p) for p in paths])
    facts = [_header_facts(f) for f in files if not f.endswith(".zst")] if len(files) == 1 else []
    opened = open_recordings(files, materialize=True, columns=STATS_COLUMNS)
    stats = stats_dict(opened.con, {i.path: bool(i.torn) for i in opened.files})
    one = len(files) == 1
    head = facts[0] if facts else {"started": None, "host": None, "qemu": None}
    if not one:
        hosts = sorted({h for (h,) in opened.con.execute("SELECT DISTINCT host FROM sessions").fetchall() if h})
        versions = sorted({v for (v,) in opened.con.execute("SELECT DISTINCT qemu_version FROM sessions").fetchall()
                           if v})
        first = opened.con.execute("SELECT min(started_epoch) FROM sessions").fetchone()[0]
        started = datetime.datetime.fromtimestamp(first, datetime.timezone.utc).isoformat() if first else None
        head = {"started": started,  # the earliest of them
                "host": ", ".join(hosts), "qemu": ", ".join(versions) or None}
    if one:
        for p in stats["problems"]["items"]:
            p.pop("file", None)
    else:
        stats["duration"] = opened.con.execute("SELECT coalesce(sum(duration), 0) FROM sessions").fetchone()[0]
    return {"file": files[0] if one else f"{len(files)} recordings", "recordings": len(files), **head, **stats}


def compute(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Statistics of the recording at *path*, with its header facts and read problems."""
    if os.path.isdir(path):
        raise NotARecording(f"{os.fspath(path)}: a folder (compute_many reads folders)")
    return compute_many([path])
