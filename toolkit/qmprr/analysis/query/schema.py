"""The explicit column types DuckDB reads recordings with, and the views over them.

Every ``qmprr/1`` field has one SQL type here; DuckDB never infers a schema
from a file (slow, and unstable across files: a field absent from one file
would change another's type). A field a record lacks (an older format, an
optional field at its default) reads as NULL. Objects are ``JSON``.
``docs/query.md`` documents every view column.
"""

from __future__ import annotations

#: Bumped when a view or exported table changes incompatibly (see docs/query.md).
SCHEMA_VERSION = 1

#: Every field of every record kind (recordings/README.md) and its SQL type.
RECORD_COLUMNS: dict[str, str] = {
    "seq": "BIGINT", "t": "DOUBLE", "kind": "VARCHAR",
    # header
    "format": "VARCHAR", "started": "VARCHAR", "started_epoch": "DOUBLE", "host": "VARCHAR",
    "qmprr_version": "VARCHAR", "qemu_version": "JSON", "qemu_argv": "JSON", "qemu_env": "JSON",
    "domain_xml": "VARCHAR", "labels": "JSON", "qemu_pid": "BIGINT", "monitor_socket": "VARCHAR",
    "previous": "JSON", "seal": "JSON", "derived_from": "JSON",
    # traffic
    "src": "VARCHAR", "role": "VARCHAR", "msg": "JSON", "client_id": "JSON", "tx": "BIGINT",
    "queued": "DOUBLE", "cmd": "BIGINT", "reply": "JSON",
    "input_sha256": "VARCHAR", "input_len": "BIGINT", "input": "VARCHAR",
    # client, tx, taint, fd, note, close
    "action": "VARCHAR", "name": "VARCHAR", "peer": "VARCHAR", "label": "VARCHAR", "owner": "VARCHAR",
    "reason": "VARCHAR", "client": "VARCHAR", "placeholder": "VARCHAR", "text": "VARCHAR",
    "data": "JSON", "detail": "VARCHAR",
    "orig": "JSON", "h": "VARCHAR",
}

#: Columns of the ``records`` view besides ``file`` (the header-only ones live in ``sessions``).
_HEADER_ONLY = ("format", "started", "started_epoch", "host", "qmprr_version", "qemu_version", "qemu_argv",
                "qemu_env", "domain_xml", "labels", "qemu_pid", "monitor_socket", "previous", "seal",
                "derived_from")
RECORD_VIEW_COLUMNS = tuple(c for c in RECORD_COLUMNS if c not in _HEADER_ONLY)


def read_json_sql(files: list[str]) -> str:
    """The table function reading *files* with the explicit schema."""
    paths = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    cols = ", ".join(f"{name}: '{typ}'" for name, typ in RECORD_COLUMNS.items())
    return (f"read_json([{paths}], format = 'newline_delimited', "
            f"columns = {{{cols}}}, ignore_errors = true, filename = 'file', "
            f"compression = 'auto_detect', maximum_object_size = 33554432)")


# The views. ``raw`` is every complete record with its file (a torn last line reads as
# an all-NULL row, dropped here); over a Parquet dataset ``raw`` is replaced by the
# exported ``records`` and ``sessions`` tables, so everything below is written once.
_SESSIONS = """
CREATE OR REPLACE VIEW sessions AS
WITH hdr AS (
  SELECT file, format, started_epoch, host, qmprr_version, qemu_version, qemu_argv, labels, domain_xml,
         qemu_pid, seal, derived_from, previous
  FROM raw WHERE kind = 'header'
), agg AS (
  SELECT file, count(*) AS records, max(t) AS duration,
         count(*) FILTER (WHERE kind = 'command') AS commands,
         count(*) FILTER (WHERE kind = 'event') AS events,
         count(*) FILTER (WHERE kind = 'taint') > 0 AS tainted,
         count(*) FILTER (WHERE kind = 'close') > 0 AS closed,
         arg_max(h, seq) AS final_hash
  FROM raw GROUP BY file
)
SELECT hdr.file, hdr.format, to_timestamp(hdr.started_epoch) AS started, hdr.started_epoch, hdr.host,
       hdr.qmprr_version,
       concat_ws('.', hdr.qemu_version->>'$.qemu.major', hdr.qemu_version->>'$.qemu.minor',
                 hdr.qemu_version->>'$.qemu.micro') AS qemu_version,
       hdr.qemu_version->>'$.package' AS qemu_package,
       hdr.qemu_argv, hdr.labels, hdr.qemu_pid,
       regexp_extract(hdr.domain_xml, '<name>([^<]*)</name>', 1) AS domain_name,
       regexp_extract(hdr.domain_xml, '<uuid>([^<]*)</uuid>', 1) AS domain_uuid,
       hdr.seal IS NOT NULL AS sealed, hdr.derived_from, hdr.previous,
       agg.records, agg.duration, agg.commands, agg.events, agg.tainted, agg.closed,
       coalesce(f.torn, false) AS torn, f.verified, agg.final_hash
FROM hdr JOIN agg USING (file) LEFT JOIN qmprr_files f ON f.path = hdr.file
"""

_DERIVED = """
CREATE OR REPLACE VIEW records AS
SELECT r.file, {columns}, to_timestamp(s.started_epoch + r.t) AS time
FROM raw r LEFT JOIN (SELECT file, started_epoch FROM raw WHERE kind = 'header') s USING (file);

CREATE OR REPLACE VIEW commands AS
WITH m AS MATERIALIZED (  -- one scan of the files for both sides of the join
       SELECT file, seq, t, kind, src, role, msg, client_id, tx, queued, cmd FROM raw
       WHERE kind IN ('command', 'reply')),
     c AS (SELECT * FROM m WHERE kind = 'command'),
     r AS (SELECT file, cmd, seq, t, msg FROM m WHERE kind = 'reply')
SELECT c.file, c.seq, c.t, c.src, c.role,
       coalesce(c.msg->>'execute', c.msg->>'exec-oob') AS command,
       c.msg->'arguments' AS arguments, c.client_id, c.tx,
       r.seq AS reply_seq, (r.t - c.t) * 1000 AS latency_ms,
       CASE WHEN c.queued IS NULL THEN NULL ELSE (c.t - c.queued) * 1000 END AS queued_ms,
       CASE WHEN r.seq IS NULL THEN 'none' WHEN json_exists(r.msg, '$.error') THEN 'error'
            ELSE 'return' END AS result,
       r.msg->>'$.error.class' AS error_class, r.msg->>'$.error.desc' AS error_desc,
       c.msg, r.msg AS reply
FROM c LEFT JOIN r ON r.file = c.file AND r.cmd = c.seq;

CREATE OR REPLACE VIEW locals AS
SELECT file, seq, t, src, role, coalesce(msg->>'execute', msg->>'exec-oob') AS command, msg, reply,
       reply->>'$.error.class' AS error_class, input_sha256, input_len
FROM raw WHERE kind = 'local';

CREATE OR REPLACE VIEW events AS
WITH e AS (SELECT file, seq, t, msg FROM raw WHERE kind = 'event'),
     c AS (SELECT file, seq, coalesce(msg->>'execute', msg->>'exec-oob') AS command FROM raw
           WHERE kind = 'command')
SELECT e.file, e.seq, e.t, e.msg->>'event' AS event, e.msg->'data' AS data,
       (e.msg->>'$.timestamp.seconds')::DOUBLE + (e.msg->>'$.timestamp.microseconds')::DOUBLE / 1e6
         AS qemu_time,
       c.seq AS after_seq, c.command AS after_command
FROM e ASOF LEFT JOIN c ON e.file = c.file AND e.seq > c.seq;

CREATE OR REPLACE VIEW transactions AS
WITH b AS (SELECT file, tx, seq, t, label, owner FROM raw WHERE kind = 'tx' AND action = 'begin'),
     e AS (SELECT file, tx, seq, t, action, reason FROM raw WHERE kind = 'tx' AND action IN ('end', 'abort')),
     last AS (SELECT file, max(t) AS t FROM raw GROUP BY file),
     cmds AS (SELECT file, tx, count(*) AS n FROM raw WHERE kind = 'command' AND tx IS NOT NULL
              GROUP BY file, tx)
SELECT b.file, b.tx, b.label, b.owner, b.seq AS begin_seq, b.t AS begin_t, e.seq AS end_seq, e.t AS end_t,
       coalesce(e.action, 'open') AS status, e.reason,
       coalesce(e.t, last.t) - b.t AS held_s, coalesce(cmds.n, 0) AS commands
FROM b LEFT JOIN e USING (file, tx) JOIN last USING (file) LEFT JOIN cmds USING (file, tx);

CREATE OR REPLACE VIEW clients AS
WITH seen AS (
  SELECT file, coalesce(name, src) AS client, role, peer, action, t, kind, cmd, msg, reply
  FROM raw WHERE kind IN ('client', 'command', 'local') AND coalesce(name, src) IS NOT NULL
)
-- A client's role is its commands' role; 'internal' only when it did nothing but negotiate.
SELECT s.file, s.client,
       coalesce(any_value(s.role) FILTER (WHERE s.kind = 'command' AND s.role <> 'internal'),
                any_value(s.role) FILTER (WHERE s.role IS NOT NULL AND s.role <> 'internal'),
                any_value(s.role) FILTER (WHERE s.role IS NOT NULL)) AS role,
       any_value(s.peer) FILTER (WHERE s.peer IS NOT NULL) AS peer,
       min(s.t) AS first_t, max(s.t) AS last_t,
       min(s.t) FILTER (WHERE s.action = 'connect') AS connect_t,
       max(s.t) FILTER (WHERE s.action = 'disconnect') AS disconnect_t,
       count(*) FILTER (WHERE s.kind = 'command') AS commands,
       count(*) FILTER (WHERE s.kind = 'local') AS local,
       coalesce(max(k.errors), 0) + count(*) FILTER (WHERE s.kind = 'local' AND json_exists(s.reply, '$.error'))
         AS errors
FROM seen s LEFT JOIN (SELECT file, src, count(*) AS errors FROM commands WHERE result = 'error'
                       GROUP BY file, src) k ON k.file = s.file AND k.src = s.client
GROUP BY s.file, s.client;
"""

VIEWS = ("sessions", "records", "commands", "locals", "events", "transactions", "clients")


def view_sql() -> str:
    """The statements creating every view over a relation ``raw`` (and the table ``qmprr_files``)."""
    columns = ", ".join(f"r.{c}" for c in RECORD_VIEW_COLUMNS)
    return _SESSIONS + ";\n" + _DERIVED.format(columns=columns)
