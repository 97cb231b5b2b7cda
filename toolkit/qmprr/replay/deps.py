"""Which commands of a recording depend on which: what ``qmprr minimize`` keeps together.

Pure analysis over record dicts (as :func:`~qmprr.recording.rechain.read_edited`
gives them). A *unit* is what minimization keeps or drops whole: one command,
or every command of one qmprr transaction (``tx``). A unit depends on an
earlier one when one of its commands names something the earlier one made or
removed:

* ``blockdev-add``/``blockdev-create``-style node names, ``device_add``/``object-add``/``chardev-add``/
  ``netdev_add`` ids, and the ``-del``/``_del`` that remove them;
* a job's start (``job-id``, or for block jobs without one the ``device``) before its
  ``job-*``/``block-job-*`` commands and before other jobs of that id;
* a graph change (``blockdev-snapshot``, ``blockdev-reopen``, ...) before later users of its nodes;

"names" means a string anywhere in the arguments equal to the name, or a QOM
path ending in ``/NAME``. ``qmp_capabilities`` (and qmprr's own negotiation)
is pinned: kept in every candidate. Names no command made come from the QEMU
command line (``-blockdev node-name=...``): :func:`argv_names`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import attrs

#: Commands that make a name: command -> argument keys holding it.
MAKERS: dict[str, tuple[str, ...]] = {
    "blockdev-add": ("node-name",),
    "blockdev-create": ("job-id",),
    "blockdev-amend": ("job-id",),
    "device_add": ("id",),
    "object-add": ("id",),
    "chardev-add": ("id",),
    "netdev_add": ("id",),
    "drive_add": ("id",),
    "add-fd": ("opaque",),
    "getfd": ("fdname",),
    "block-dirty-bitmap-add": ("name",),
    "blockdev-snapshot-sync": ("snapshot-node-name",),
    "blockdev-snapshot-internal-sync": ("name",),
}

#: Commands that start a job: its id is ``job-id``, else (block jobs) ``device``.
JOB_STARTS = frozenset(
    {"block-commit", "block-stream", "blockdev-mirror", "drive-mirror", "blockdev-backup", "drive-backup",
     "blockdev-create", "blockdev-amend", "snapshot-save", "snapshot-load", "snapshot-delete"}
)

#: Commands that remove a name (they depend on its maker, like any user of the name).
REMOVERS = frozenset(
    {"blockdev-del", "device_del", "object-del", "chardev-remove", "netdev_del", "closefd", "remove-fd",
     "block-dirty-bitmap-remove", "job-dismiss", "x-blockdev-del"}
)

#: Commands that change what an existing node is (its backing, its medium): later users of the node need them.
GRAPH_CHANGERS = frozenset(
    {"blockdev-snapshot", "blockdev-snapshot-sync", "blockdev-reopen", "x-blockdev-reopen", "x-blockdev-change",
     "blockdev-insert-medium", "blockdev-remove-medium", "blockdev-change-medium"}
)

#: Never removed: the negotiation every session needs.
PINNED = frozenset({"qmp_capabilities"})


@attrs.define
class Unit:
    """Commands kept or dropped together (indexes into :attr:`Analysis.commands`)."""

    index: int
    commands: list[int]
    pinned: bool = False
    tx: int | None = None
    #: Units this one needs, each with the names it takes from it.
    needs: dict[int, set[str]] = attrs.Factory(dict)


@attrs.define
class Analysis:
    """The command records in file order, their units, and where each name came from."""

    commands: list[dict[str, Any]]
    units: list[Unit]
    unit_of: list[int]  # command index -> unit index

    def closure(self, keep: Iterable[int]) -> set[int]:
        """*keep* (unit indexes), the pinned units, and everything they need, transitively."""
        out = {u.index for u in self.units if u.pinned} | set(keep)
        todo = list(out)
        while todo:
            for dep in self.units[todo.pop()].needs:
                if dep not in out:
                    out.add(dep)
                    todo.append(dep)
        return out

    def removable(self) -> list[int]:
        """The units minimization may drop (all but the pinned)."""
        return [u.index for u in self.units if not u.pinned]

    def made_by(self, units: Iterable[int]) -> set[str]:
        """Every name the commands of *units* make."""
        out: set[str] = set()
        for u in units:
            for c in self.units[u].commands:
                out |= made(self.commands[c])
        return out


#: Commands that only read: whatever events come in their window were caused by earlier commands.
QUERIES = frozenset({"qom-get", "qom-list", "qom-list-types", "qom-list-properties", "device-list-properties"})


def side_effect_free(command: str) -> bool:
    """Whether *command* only reads QEMU's state (``query-*``, ``x-query-*``, QOM reads)."""
    return command.startswith(("query-", "x-query-")) or command in QUERIES


def command_name(record: dict[str, Any]) -> str:
    msg = record.get("msg") or {}
    name = msg.get("execute", msg.get("exec-oob"))
    return name if isinstance(name, str) else ""


def _arguments(record: dict[str, Any]) -> Any:
    return (record.get("msg") or {}).get("arguments")


def _actions(record: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(command, arguments)`` the record runs: itself, or each action of a QMP ``transaction``."""
    name, args = command_name(record), _arguments(record)
    if name == "transaction" and isinstance(args, dict) and isinstance(args.get("actions"), list):
        for action in args["actions"]:
            if isinstance(action, dict) and isinstance(action.get("type"), str):
                yield action["type"], action.get("data")
    else:
        yield name, args


def made(record: dict[str, Any]) -> set[str]:
    """The names a command makes (node names, ids, job ids), nested node names of ``blockdev-add`` too."""
    out: set[str] = set()
    for name, args in _actions(record):
        if not isinstance(args, dict):
            continue
        for key in MAKERS.get(name, ()):
            if isinstance(args.get(key), str):
                out.add(args[key])
        if name == "blockdev-add":
            out |= _nested_node_names(args)
        if name in JOB_STARTS:
            job = args.get("job-id", args.get("device"))
            if isinstance(job, str):
                out.add(job)
    return out


def _nested_node_names(node: Any) -> set[str]:
    """Every ``node-name`` inside a ``blockdev-add``'s arguments (iterative: hostile nesting is deep)."""
    out: set[str] = set()
    todo = [node]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            for key, v in value.items():
                if key == "node-name" and isinstance(v, str):
                    out.add(v)
                else:
                    todo.append(v)
        elif isinstance(value, list):
            todo.extend(value)
    return out


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, and the last part of each QOM-like path (``/a/b/NAME`` -> NAME)."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            yield v
            if v.startswith("/") and "/" in v[1:]:
                yield v.rstrip("/").rsplit("/", 1)[-1]
        elif isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)


def analyze(records: list[dict[str, Any]]) -> Analysis:
    """Units and dependencies of the command records among *records* (other kinds are ignored)."""
    commands = [r for r in records if r.get("kind") == "command"]
    units: list[Unit] = []
    unit_of: list[int] = []
    by_tx: dict[int, int] = {}
    for i, rec in enumerate(commands):
        tx = rec.get("tx")
        if isinstance(tx, int) and tx in by_tx:
            unit = units[by_tx[tx]]
            unit.commands.append(i)
        else:
            unit = Unit(len(units), [i], tx=tx if isinstance(tx, int) else None)
            units.append(unit)
            if unit.tx is not None:
                by_tx[unit.tx] = unit.index
        unit.pinned = unit.pinned or command_name(rec) in PINNED
        unit_of.append(unit.index)
    # the last unit to make or remove each name, walking in file order
    last: dict[str, int] = {}
    for i, rec in enumerate(commands):
        u = unit_of[i]
        new = made(rec)
        for name in set(strings(_arguments(rec))):
            if name in last and last[name] != u:
                units[u].needs.setdefault(last[name], set()).add(name)
        for name in new:
            last[name] = u
        changes = command_name(rec) in REMOVERS or any(n in GRAPH_CHANGERS for n, _ in _actions(rec))
        if changes:  # a later maker of the same name needs the removal; a later user, the change
            for name in set(strings(_arguments(rec))):
                if name in last:
                    last[name] = u
    return Analysis(commands, units, unit_of)


def argv_names(analysis: Analysis, units: Iterable[int]) -> set[str]:
    """Names the commands of *units* use that no command of the recording makes (the command line's, if any)."""
    made_anywhere: set[str] = set()
    for record in analysis.commands:
        made_anywhere |= made(record)
    used: set[str] = set()
    for u in units:
        for i in analysis.units[u].commands:
            used |= set(strings(_arguments(analysis.commands[i])))
    return used - made_anywhere
