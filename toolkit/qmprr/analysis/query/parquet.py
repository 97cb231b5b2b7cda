"""``qmprr export --format parquet``: the views as a Hive-partitioned Parquet dataset.

``DIR/<table>/date=YYYY-MM-DD/host=HOST/part-<uuid>.parquet`` for every view
(the session's start date, UTC, and host), zstd-compressed, each file's
key-value metadata naming the schema version. ``DIR/_qmprr_dataset.json``
holds the schema version and the identity of every recording exported, so a
second run exports only recordings it has not seen; one that changed since
(it was still being written) is reported and left as exported.
``DIR/_schema/<table>.parquet`` has each table's columns and no rows.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any
from collections.abc import Sequence
from pathlib import Path

import attrs

from .engine import DATASET_META, SCHEMA_DIR, TABLES, _quote, open_recordings
from .files import QueryError, expand, file_info
from .schema import SCHEMA_VERSION


@attrs.frozen
class ExportResult:
    recordings: int
    records: int
    rows: dict[str, int]
    skipped: int
    changed: list[str]
    excluded: dict[str, str]


def _select(table: str) -> str:
    if table == "sessions":
        return "SELECT *, started::DATE AS date FROM sessions"
    return f"SELECT t.*, p.date, p.host FROM {table} t JOIN qmprr_part p USING (file)"


def export_parquet(paths: Sequence[str], folder: str, *, only_verified: bool = False) -> ExportResult:
    out = Path(folder)
    meta_path = out / DATASET_META
    meta: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "exported": {}}
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            raise QueryError(f"{meta_path}: not a qmprr dataset description") from None
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise QueryError(f"{folder}: dataset of schema version {meta.get('schema_version')}; this qmprr "
                             f"writes {SCHEMA_VERSION}: export into a new folder")
    elif out.exists() and any(out.iterdir()):
        raise QueryError(f"{folder}: exists and is not a qmprr dataset")
    exported: dict[str, str] = meta.setdefault("exported", {})
    new, changed, skipped = [], [], 0
    for path in expand(paths):
        key = file_info(path).key
        if path not in exported:
            new.append(path)
        elif exported[path] != key:
            changed.append(path)
        else:
            skipped += 1
    out.mkdir(parents=True, exist_ok=True)
    if not new:
        _write_meta(meta_path, meta)
        return ExportResult(0, 0, {}, skipped, changed, {})
    opened = open_recordings(new, only_verified=only_verified, materialize=True)
    con = opened.con
    con.execute("CREATE TEMP TABLE qmprr_part AS SELECT file, started::DATE AS date, host FROM sessions")
    kv = f"{{qmprr_schema_version: '{SCHEMA_VERSION}'}}"
    batch = uuid.uuid4().hex[:12]
    rows: dict[str, int] = {}
    (out / SCHEMA_DIR).mkdir(exist_ok=True)
    for table in TABLES:
        target = _quote(str(out / table))
        res = con.execute(f"COPY ({_select(table)}) TO {target} (FORMAT parquet, COMPRESSION zstd, "
                          f"PARTITION_BY (date, host), FILENAME_PATTERN 'part-{batch}-{{i}}', "
                          f"OVERWRITE_OR_IGNORE true, KV_METADATA {kv})").fetchone()
        rows[table] = int(res[0]) if res else 0
        schema_file = out / SCHEMA_DIR / f"{table}.parquet"
        if not schema_file.exists():
            con.execute(f"COPY ({_select(table)} LIMIT 0) TO {_quote(str(schema_file))} "
                        f"(FORMAT parquet, KV_METADATA {kv})")
    for info in opened.files:
        exported[info.path] = info.key
    _write_meta(meta_path, meta)
    return ExportResult(len(opened.files), rows.get("records", 0), rows, skipped, changed, opened.excluded)


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    meta["schema_version"] = SCHEMA_VERSION
    meta["tables"] = list(TABLES)
    meta["partitioning"] = ["date", "host"]
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, path)
