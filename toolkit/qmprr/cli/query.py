"""``qmprr query`` and ``qmprr export --format parquet``: SQL over recordings, with DuckDB."""

from __future__ import annotations

import argparse
import csv
import datetime
import decimal
import sys
from typing import Any, TextIO

from ..analysis.query.files import QueryError
from .base import command

FORMATS = ("table", "json", "csv", "markdown", "parquet")


def _cell(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def write_rows(columns: list[str], rows: list[tuple[Any, ...]], fmt: str, out: TextIO) -> None:
    """*rows* under *columns* as a table, JSON Lines, CSV or Markdown."""
    if fmt == "json":
        import orjson

        for row in rows:
            out.write(orjson.dumps(dict(zip(columns, map(_cell, row))), default=str).decode() + "\n")
    elif fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(columns)
        w.writerows([[_cell(v) for v in row] for row in rows])
    elif fmt == "markdown":
        out.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
        for row in rows:
            out.write("| " + " | ".join("" if v is None else str(_cell(v)).replace("|", "\\|") for v in row) + " |\n")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns, show_lines=False)
        for row in rows:
            table.add_row(*("" if v is None else str(_cell(v)) for v in row))
        Console(file=out, width=200 if not out.isatty() else None).print(table)
        out.write(f"({len(rows):,} rows)\n")


def cmd_query(args: argparse.Namespace) -> int:
    from ..analysis.query.engine import open_dataset, open_recordings

    def excluded(path: str, why: str) -> None:
        print(f"qmprr: left out (does not verify): {why}", file=sys.stderr)

    progress = sys.stderr.isatty() and not args.explain
    if args.dataset:
        if args.paths:
            raise QueryError("give either --dataset DIR or recordings, not both")
        if args.verified:
            raise QueryError("--verified checks recordings; a dataset was checked when it was exported")
        opened = open_dataset(args.dataset, progress=progress)
    else:
        opened = open_recordings(args.paths or ["."], only_verified=args.verified, progress=progress,
                                 on_exclude=excluded)
    if args.explain:
        print(opened.setup_sql.strip() + ";\n\n" + args.sql.strip().rstrip(";") + ";")
        return 0
    import duckdb

    try:
        if args.format == "parquet":
            if not args.output:
                raise QueryError("--format parquet needs -o FILE")
            target = "'" + args.output.replace("'", "''") + "'"
            opened.con.execute(f"COPY ({args.sql.strip().rstrip(';')}) TO {target} "
                               "(FORMAT parquet, COMPRESSION zstd)")
            return 0
        rel = opened.con.execute(args.sql)
        columns = [d[0] for d in rel.description] if rel.description else []
        rows = rel.fetchall() if rel.description else []
    except duckdb.Error as exc:
        raise QueryError(" ".join(str(exc).split())) from None
    if args.output:
        with open(args.output, "w", newline="") as out:
            write_rows(columns, rows, args.format, out)
    else:
        write_rows(columns, rows, args.format, sys.stdout)
    return 0


def cmd_export_parquet(args: argparse.Namespace) -> int:
    from ..analysis.query.parquet import export_parquet

    result = export_parquet(args.files, args.output, only_verified=args.verified)
    for why in result.excluded.values():
        print(f"qmprr: left out (does not verify): {why}", file=sys.stderr)
    for path in result.changed:
        print(f"qmprr: {path}: changed since it was exported; left as exported", file=sys.stderr)
    rows = ", ".join(f"{n:,} {t}" for t, n in result.rows.items() if t != "records")
    print(f"{args.output}: {result.recordings:,} recordings exported ({result.records:,} records"
          f"{', ' + rows if rows else ''}), {result.skipped:,} already there")
    return 0


def register(sub: Any) -> None:
    """Add ``query`` to ``qmprr``'s subparsers."""
    p = command(
        sub, "query",
        help="SQL over many recordings (or an exported Parquet dataset), with DuckDB",
        description="Run SQL over the recordings under PATHS (files, folders searched recursively, globs; "
        ".jsonl, segments, .jsonl.zst), or over a dataset written by 'qmprr export --format parquet'. "
        "Records are read with an explicit schema; a torn last line is skipped; every row names its file.",
        note="Views: sessions, records, commands, locals, events, transactions, clients (columns in "
        "docs/query.md).",
        examples=["qmprr query \"SELECT command, count(*), quantile_cont(latency_ms, 0.99) AS p99 FROM commands "
                  "GROUP BY ALL ORDER BY 2 DESC\" /var/log/qmprr/",
                  "qmprr query \"SELECT * FROM events WHERE event = 'BLOCK_JOB_ERROR'\" --dataset /srv/qmp-dataset --format csv"],
        exits="0 ok, 2 bad SQL, no recordings, unreadable dataset.",
        func=cmd_query,
    )
    p.add_argument("sql", metavar="SQL")
    p.add_argument("paths", nargs="*", metavar="PATH", help="recordings (default: the current folder)")
    p.add_argument("--dataset", metavar="DIR", help="query an exported Parquet dataset instead")
    p.add_argument("--verified", action="store_true",
                   help="only recordings whose hash chain verifies (checked in parallel, cached in a catalog "
                   "next to the data); the others are named on stderr")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the result to FILE")
    p.add_argument("--explain", action="store_true", help="print the SQL the views expand to, and the query")


__all__ = ["cmd_export_parquet", "cmd_query", "register"]
