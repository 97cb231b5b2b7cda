"""``qmprr stats``: what a recording holds, in one streaming pass.

Per command: count, errors by class, latency percentiles (exact below
256 µs, within 0.5 % above), commands left without a reply. Events by name;
clients with their role and command counts; taint; transactions (holds and
the waits they caused, see :mod:`~qmprr.analysis.waits`); the busiest
second. The accumulating is :class:`~qmprr.analysis.stats_builder.StatsBuilder`'s
job, in flat memory. The hash chain is not checked here (``qmprr verify``
does). Large files are cut into segments read by parallel workers
(:mod:`~qmprr.analysis.stats_parallel`) whose builders are merged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import attrs

from .source import Scanner
from .stats_builder import Examples, StatsBuilder

#: Files at least this big are read by parallel workers.
PARALLEL_MIN_BYTES = 32 * 2**20
MAX_JOBS = 4


def compute_records(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Statistics of record dicts (header first)."""
    builder = StatsBuilder()
    builder.consume(records)
    return builder.finish()


def jobs_for(path: str | os.PathLike[str]) -> int:
    """Workers :func:`compute` uses by default: one per CPU (at most :data:`MAX_JOBS`) for big files."""
    if os.path.getsize(path) < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), MAX_JOBS))


def compute(path: str | os.PathLike[str], *, jobs: int | None = None) -> dict[str, Any]:
    """Statistics of the recording at *path*, with its header facts and read problems.

    *jobs*: parallel workers (default: one per CPU, at most :data:`MAX_JOBS`,
    for files of :data:`PARALLEL_MIN_BYTES` or more; 1 reads in this process).
    """
    problems = Examples()

    def report(p: Any) -> None:
        problems.add({"line": p.line, "problem": p.message})

    with Scanner(path, check_chain=False, on_problem=report) as scanner:
        header = scanner.header
        if jobs is None:
            jobs = jobs_for(scanner.path)
        if len(scanner.files) > 1 or scanner.path.endswith(".zst"):
            jobs = 1  # the parallel reader splits one plain file; a set or a .zst is read in order
        if jobs > 1:
            from .stats_parallel import consume_parallel

            first = next(iter(scanner))[0]
            stats = consume_parallel(scanner.path, first, scanner.body_offset, jobs, report).finish()
        else:
            stats = compute_records(d for d, _ in scanner)
    qemu = header.qemu_version.get("qemu") if isinstance(header.qemu_version, dict) else None
    version: dict[str, Any] = qemu if isinstance(qemu, dict) else {}
    return {
        "file": scanner.path,
        "started": header.started,
        "host": header.host,
        "qemu": ".".join(str(version.get(k, "?")) for k in ("major", "minor", "micro")) if version else None,
        **stats,
        "problems": attrs.asdict(problems),
    }
