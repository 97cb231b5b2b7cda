"""``qmprr stats`` as SQL over the query views, for one recording or many at once.

Each figure is one query; its rows are typed (attrs classes below) and
:func:`stats_dict` unstructures them into the JSON documented in
docs/analysis.md. Percentiles are exact (``quantile_disc``: the smallest
latency with at least that share of replies at or below it).
"""

from __future__ import annotations

from typing import Any

import attrs
import cattrs

MAX_KEYS = 2_000
MAX_EXAMPLES = 20
OTHER = "(other)"

_converter = cattrs.Converter()

#: The record fields the figures below read (through the views); the others are not loaded.
STATS_COLUMNS = frozenset((
    "seq", "t", "kind", "src", "role", "msg", "tx", "queued", "cmd", "reply", "action", "name", "peer",
    "label", "owner", "reason", "client", "text", "detail", "format", "started_epoch", "host", "qemu_version"))


@attrs.frozen
class Latency:
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


@attrs.frozen
class CommandFigures:
    count: int
    errors: dict[str, int]
    replies: int
    no_reply: int
    latency_ms: Latency


@attrs.frozen
class LocalFigures:
    count: int
    errors: int


@attrs.frozen
class ClientFigures:
    role: str
    commands: int
    errors: int
    local: int
    first: float
    last: float


@attrs.frozen
class Wait:
    client: str
    tx: int
    start: float
    seconds: float


@attrs.frozen
class Examples:
    """The first :data:`MAX_EXAMPLES` rows of a list, and how many there were."""

    count: int = 0
    items: list[dict[str, Any]] = attrs.Factory(list)


def _q(con: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = con.execute(sql, list(params)).fetchall()
    return rows


def _ms(seconds_ms: float | None) -> float | None:
    return None if seconds_ms is None else round(seconds_ms, 3)


def _examples(con: Any, sql: str, names: tuple[str, ...]) -> Examples:
    (count,), = _q(con, f"SELECT count(*) FROM ({sql})")
    rows = _q(con, f"{sql} LIMIT {MAX_EXAMPLES}")
    return Examples(count, [dict(zip(names, r)) for r in rows])


def _capped(items: list[tuple[str, Any]], merge: Any) -> dict[str, Any]:
    """The first :data:`MAX_KEYS` names; the rest together under ``(other)``."""
    out = dict(items[:MAX_KEYS])
    rest = [v for _, v in items[MAX_KEYS:]]
    if rest:
        out[OTHER] = merge(rest)
    return out


def commands(con: Any) -> dict[str, CommandFigures]:
    rows = _q(con, """
        SELECT coalesce(command, '?') AS name, count(*), count(reply_seq),
               count(*) FILTER (WHERE result = 'none'),
               quantile_disc(latency_ms, 0.5), quantile_disc(latency_ms, 0.95),
               quantile_disc(latency_ms, 0.99), max(latency_ms)
        FROM (SELECT *, round(latency_ms * 1000) / 1000 AS latency_ms FROM commands)
        GROUP BY name ORDER BY count(*) DESC, name""")
    errors = {(name, cls): n for name, cls, n in _q(con, """
        SELECT coalesce(command, '?'), coalesce(error_class, '?'), count(*) FROM commands
        WHERE result = 'error' GROUP BY ALL""")}
    out = []
    for name, count, replies, no_reply, p50, p95, p99, mx in rows:
        errs = dict(sorted((cls, n) for (cmd, cls), n in errors.items() if cmd == name))
        out.append((name, CommandFigures(count, errs, replies, no_reply,
                                         Latency(_ms(p50), _ms(p95), _ms(p99), _ms(mx)))))

    def merge(rest: list[CommandFigures]) -> CommandFigures:
        errs: dict[str, int] = {}
        for c in rest:
            for k, v in c.errors.items():
                errs[k] = errs.get(k, 0) + v
        return CommandFigures(sum(c.count for c in rest), errs, sum(c.replies for c in rest),
                              sum(c.no_reply for c in rest), Latency(None, None, None, None))

    return _capped(out, merge)


def clients(con: Any) -> dict[str, ClientFigures]:
    rows = _q(con, """
        SELECT client, coalesce(any_value(role) FILTER (WHERE role <> 'internal'), any_value(role), '?'), sum(commands),
               sum(errors), sum(local), min(first_t), max(last_t)
        FROM clients GROUP BY client ORDER BY min(first_t), client""")
    items = [(r[0], ClientFigures(r[1], int(r[2]), int(r[3]), int(r[4]), r[5], r[6])) for r in rows]
    return _capped(items, lambda rest: ClientFigures("?", sum(c.commands for c in rest),
                                                     sum(c.errors for c in rest), sum(c.local for c in rest),
                                                     min(c.first for c in rest), max(c.last for c in rest)))


#: Waits for transactions. A command with ``queued`` waited for the latest transaction of
#: another owner that ended between its queued time and its sending; in logs without
#: ``queued``, a client that left a trace (taint, fd) during another's transaction waited
#: from that trace until its next command (unless it disconnected after the transaction
#: ended and before that command): a lower bound.
_WAITS = """
WITH x AS (SELECT * FROM transactions WHERE status <> 'open'),
q AS (
  SELECT c.file, c.src AS client, arg_max(x.tx, x.end_t) AS tx,
         arg_max(greatest(c.t - c.queued_ms / 1000, x.begin_t), x.end_t) AS start, max(x.end_t) AS stop
  FROM commands c JOIN x ON x.file = c.file AND x.owner <> c.src
       AND c.t - c.queued_ms / 1000 < x.end_t AND x.end_t <= c.t
  WHERE c.queued_ms IS NOT NULL GROUP BY c.file, c.seq, c.src
),
traces AS (
  SELECT r.file, coalesce(r.client, r.src) AS client, x.tx, x.end_seq, min(r.t) AS since
  FROM raw r JOIN x ON r.file = x.file AND r.seq > x.begin_seq AND r.seq < x.end_seq
  WHERE r.kind IN ('taint', 'fd') AND coalesce(r.client, r.src) <> x.owner
  GROUP BY ALL
),
nxt AS (
  SELECT tr.file, tr.client, tr.tx, tr.end_seq, tr.since, min(c.seq) AS cseq
  FROM traces tr JOIN raw c ON c.file = tr.file AND c.kind = 'command' AND c.src = tr.client
       AND c.seq > tr.end_seq
  GROUP BY ALL
),
t AS (
  SELECT n.file, n.client, n.tx, n.since AS start, c.t AS stop
  FROM nxt n JOIN raw c ON c.file = n.file AND c.seq = n.cseq
  WHERE c.queued IS NULL AND NOT EXISTS (
    SELECT 1 FROM raw d WHERE d.file = n.file AND d.kind = 'client' AND d.action = 'disconnect'
      AND d.name = n.client AND d.seq > n.end_seq AND d.seq < n.cseq)
)
SELECT client, tx, start, greatest(0, stop - start) AS seconds FROM (
  SELECT client, tx, start, stop FROM q UNION ALL SELECT client, tx, start, stop FROM t)
"""


def transactions(con: Any) -> dict[str, Any]:
    (count, ended, aborted, open_, held), = _q(con, """
        SELECT count(*), count(*) FILTER (WHERE status = 'end'), count(*) FILTER (WHERE status = 'abort'),
               count(*) FILTER (WHERE status = 'open'), coalesce(sum(held_s), 0) FROM transactions""")
    longest = _q(con, """SELECT tx, label, owner, begin_t, held_s, status FROM transactions
                         ORDER BY held_s DESC, file, begin_t LIMIT 1""")
    waits = _q(con, f"SELECT client, tx, start, seconds FROM ({_WAITS}) "
                    "ORDER BY seconds DESC, start DESC")
    return {
        "count": count, "ended": ended, "aborted": aborted, "open_at_end": open_,
        "held_seconds": round(held, 6),
        "longest": None if not longest else dict(zip(("tx", "label", "owner", "start", "seconds", "status"),
                                                     (*longest[0][:4], round(longest[0][4], 6), longest[0][5]))),
        "waited_seconds": round(sum(w[3] for w in waits), 6),
        "waits": {"count": len(waits),
                  "longest": [_converter.unstructure(Wait(c, tx, s, round(sec, 6)))
                              for c, tx, s, sec in waits[:MAX_EXAMPLES]]},
    }


def problems(con: Any, torn: dict[str, bool]) -> Examples:
    """What the reading skipped: unreadable lines, gaps in seq, torn last lines (see qmprr verify)."""
    items: list[dict[str, Any]] = []
    for file, n in _q(con, "SELECT file, count(*) FROM raw_lines WHERE kind IS NULL GROUP BY file ORDER BY file"):
        n -= bool(torn.get(file))
        if n:
            items.append({"file": file, "line": None, "problem": f"{n} unreadable line(s) skipped"})
    for file, seq, prev in _q(con, """
        SELECT file, seq, prev FROM (SELECT file, seq, lag(seq) OVER (PARTITION BY file ORDER BY seq) AS prev
                                     FROM raw) WHERE prev IS NOT NULL AND seq <> prev + 1 ORDER BY file, seq"""):
        items.append({"file": file, "line": None, "problem": f"seq {seq} after {prev}"})
    for file, is_torn in sorted(torn.items()):
        if is_torn:
            items.append({"file": file, "line": None, "problem": "torn last line (a writer crashed mid-record)"})
    return Examples(len(items), items[:MAX_EXAMPLES])


def stats_dict(con: Any, torn: dict[str, bool]) -> dict[str, Any]:
    """Every figure of ``qmprr stats`` over the views on *con*, as JSON-ready dicts."""
    (records, duration), = _q(con, "SELECT count(*), coalesce(max(duration), 0) FROM sessions")
    (records,), = _q(con, "SELECT count(*) FROM raw")
    cmds = commands(con)
    local = {name: LocalFigures(n, e) for name, n, e in _q(con, """
        SELECT CASE WHEN msg IS NULL THEN '(unparsable input)' ELSE coalesce(command, '?') END AS name,
               count(*), count(*) FILTER (WHERE json_exists(reply, '$.error'))
        FROM locals GROUP BY name ORDER BY count(*) DESC, name""")}
    events = _capped(_q(con, """SELECT coalesce(event, '?') AS name, count(*) FROM events
                                GROUP BY name ORDER BY count(*) DESC, name"""), sum)
    busiest = _q(con, """
        SELECT floor(t) AS s, count(*), count(*) FILTER (WHERE kind = 'command'),
               count(*) FILTER (WHERE kind = 'event')
        FROM raw WHERE kind IN ('command', 'reply', 'event', 'local')
        GROUP BY file, s ORDER BY count(*) DESC, file, s LIMIT 1""")
    out = {
        "records": records,
        "duration": duration,
        "kinds": dict(_q(con, "SELECT kind, count(*) FROM raw GROUP BY kind ORDER BY kind")),
        "commands": cmds,
        "commands_total": sum(c.count for c in cmds.values()),
        "errors_total": sum(sum(c.errors.values()) for c in cmds.values()),
        "local": local,
        "events": events,
        "clients": clients(con),
        "taint": _examples(con, "SELECT seq, t, reason, client FROM raw WHERE kind = 'taint' ORDER BY file, seq",
                           ("seq", "t", "reason", "client")),
        "transactions": transactions(con),
        "busiest_second": None if not busiest else dict(zip(("start", "messages", "commands", "events"),
                                                            (float(busiest[0][0]), *busiest[0][1:]))),
        "without_reply": _examples(con, "SELECT seq, t, command, src FROM commands WHERE result = 'none' "
                                        "ORDER BY file, seq", ("seq", "t", "command", "src")),
        "orphan_replies": _q(con, """SELECT count(*) FROM raw r WHERE kind = 'reply' AND NOT EXISTS (
                                     SELECT 1 FROM raw c WHERE c.file = r.file AND c.seq = r.cmd
                                     AND c.kind = 'command')""")[0][0],
        "notes": _examples(con, "SELECT seq, t, text FROM raw WHERE kind = 'note' ORDER BY file, seq",
                           ("seq", "t", "text")),
        "closes": _examples(con, "SELECT seq, t, reason, detail FROM raw WHERE kind = 'close' ORDER BY file, seq",
                            ("seq", "t", "reason", "detail")),
        "problems": problems(con, torn),
    }
    result: dict[str, Any] = _converter.unstructure(out)
    return result


def problem_lines(stats: dict[str, Any]) -> list[str]:
    """The ``qmprr: FILE: problem`` lines ``stats`` prints on stderr."""
    return [f"qmprr: {p.get('file', stats['file'])}: {p['problem']}" for p in stats["problems"]["items"]]
