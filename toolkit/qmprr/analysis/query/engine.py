"""DuckDB over recordings (JSONL, explicit schema) or over an exported Parquet dataset.

:func:`open_recordings` and :func:`open_dataset` return a connection on which
the views of :mod:`.schema` exist; everything else (``query``, ``stats``,
``export``) is SQL on that connection.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import attrs

from .files import FileInfo, QueryError, expand, file_info, verified
from .schema import RECORD_COLUMNS, SCHEMA_VERSION, VIEWS, read_json_sql, view_sql


def _duckdb() -> Any:
    import duckdb

    return duckdb


@attrs.define
class Opened:
    """A connection with the views, and what was left out (``--verified``: file -> why)."""

    con: Any
    files: list[FileInfo]
    excluded: dict[str, str] = attrs.Factory(dict)
    #: The SQL that made the views (``--explain``).
    setup_sql: str = ""


def _connect(memory_limit: str | None) -> Any:
    # Without ICU, times are UTC. Beyond the memory limit (768 MB: with Python, under 1 GiB of
    # RSS), DuckDB spills to a private folder.
    config = {"memory_limit": memory_limit or os.environ.get("QMPRR_QUERY_MEMORY", "768MB"),
              "temp_directory": os.path.join(tempfile.gettempdir(), f"qmprr-duckdb-{os.getpid()}")}
    con = _duckdb().connect(config=config)
    con.execute("SET enable_progress_bar = false")  # on only for a terminal (the callers' progress=True)
    return con


def open_recordings(paths: Sequence[str], *, only_verified: bool = False, progress: bool = False,
                    memory_limit: str | None = None, on_exclude: Callable[[str, str], None] | None = None,
                    materialize: bool = False, columns: Collection[str] | None = None) -> Opened:
    """Views over the recordings under *paths*; with *only_verified*, only those whose chain verifies.

    *materialize*: read the files once into a table (spilled to a temporary folder beyond
    the memory limit) for many queries in a row (``stats``); otherwise each query reads them.
    *columns*: with *materialize*, read only these record fields (the others read as NULL),
    so that the table holds only what the queries need.
    """
    files = expand(paths)
    if not files:
        raise QueryError(f"no recordings (*.jsonl, *.jsonl.zst) under {' '.join(paths)}")
    for f in files:
        try:
            f.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(f).decode("utf-8", "backslashreplace")
            raise QueryError(f"{shown}: a file name that is not UTF-8 cannot be read by DuckDB; rename it") from None
    infos = [file_info(f) for f in files]
    excluded: dict[str, str] = {}
    verdicts: dict[str, bool] = {}
    if only_verified:
        for path, (ok, why) in verified(infos).items():
            verdicts[path] = ok
            if not ok:
                excluded[path] = why
                if on_exclude:
                    on_exclude(path, why)
        infos = [i for i in infos if verdicts[i.path]]
        if not infos:
            raise QueryError("no recording verifies (--verified)")
    con = _connect(memory_limit)
    if progress:
        con.execute("SET enable_progress_bar = true")
    con.execute("CREATE TABLE qmprr_files (path VARCHAR, size BIGINT, torn BOOLEAN, verified BOOLEAN)")
    con.executemany("INSERT INTO qmprr_files VALUES (?, ?, ?, ?)",
                    [(i.path, i.size, i.torn, verdicts.get(i.path) if only_verified else None) for i in infos])
    # raw_lines: one row per line, an unreadable one all NULL (but its file); raw: the records.
    source = read_json_sql([i.path for i in infos])
    if materialize:
        source = _materialize(con, source, columns)
    setup = (f"CREATE OR REPLACE VIEW raw_lines AS SELECT * FROM {source};\n"
             "CREATE OR REPLACE VIEW raw AS SELECT * FROM raw_lines WHERE kind IS NOT NULL;\n" + view_sql())
    con.execute(setup)
    return Opened(con, infos, excluded, setup)


def _materialize(con: Any, source: str, columns: Collection[str] | None) -> str:
    """Read *source* once into a compressed table of *columns*; a relation with every column.

    The table lives in DuckDB's compressed in-memory storage (a tenth of the plain temporary
    table's size for a recording: mostly NULL fields, repeated names); unread fields are NULL.
    """
    keep = [c for c in RECORD_COLUMNS if columns is None or c in columns]
    con.execute("ATTACH ':memory:' AS qmprr_mat (COMPRESS)")
    # The table's row order does not matter (the queries sort); without keeping it DuckDB loads in
    # parallel, streaming, instead of holding row groups back until their turn.
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"CREATE TABLE qmprr_mat.raw_lines_t AS SELECT {', '.join(keep)}, file FROM {source}")
    con.execute("RESET preserve_insertion_order")
    cols = ", ".join(c if c in keep else f"NULL::{t} AS {c}" for c, t in RECORD_COLUMNS.items())
    return f"(SELECT {cols}, file FROM qmprr_mat.raw_lines_t)"


#: Tables of an exported dataset: the views, materialized.
TABLES = VIEWS
DATASET_META = "_qmprr_dataset.json"


def open_dataset(folder: str, *, memory_limit: str | None = None, progress: bool = False) -> Opened:
    """The same views over a Parquet dataset written by ``qmprr export --format parquet``."""
    meta_path = Path(folder) / DATASET_META
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise QueryError(f"{folder}: not a qmprr Parquet dataset ({DATASET_META}: {exc})") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise QueryError(f"{folder}: dataset schema version {meta.get('schema_version')}, this qmprr reads "
                         f"{SCHEMA_VERSION}: export it again")
    con = _connect(memory_limit)
    if progress:
        con.execute("SET enable_progress_bar = true")
    stmts = []
    for table in TABLES:
        if any((Path(folder) / table).rglob("*.parquet")):
            glob = _quote(str(Path(folder) / table / "**" / "*.parquet"))
            stmts.append(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet({glob}, "
                         "hive_partitioning = true, hive_types = {'date': DATE, 'host': VARCHAR}, "
                         "union_by_name = true)")
        else:  # nothing exported yet: the table's columns, no rows
            empty = _quote(str(Path(folder) / SCHEMA_DIR / f"{table}.parquet"))
            stmts.append(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet({empty})")
    setup = ";\n".join(stmts)
    try:
        con.execute(setup)
    except _duckdb().Error as exc:
        raise QueryError(f"{folder}: cannot read the dataset: {exc}") from None
    return Opened(con, [], {}, setup)


#: Zero-row files with each table's columns, so that a table with no rows yet still has them.
SCHEMA_DIR = "_schema"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
