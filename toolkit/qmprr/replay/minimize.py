"""``qmprr minimize``: the smallest recording that still shows the same failure.

Delta debugging (:mod:`.ddmin`) over the recording's commands, kept together
as :mod:`.deps` says (a ``blockdev-add`` with the commands naming its node, a
job's start with its ``job-*`` commands, a transaction whole). Each try writes
a candidate recording (the kept commands with their replies, fds and events)
and replays it exactly as ``qmprr replay`` does (:func:`.run.run_replay`: a
fresh sandboxed QEMU per try for ``--target qemu``), up to ``jobs`` at once.
"The same failure" is the first divergence's command, status and differences,
unless a :class:`Criterion` names an error class, an event or a predicate
program. With ``argv``, the recorded QEMU command line is then minimized the
same way (options the kept commands name are kept). The input is any recording
a reader takes (``.jsonl``, ``.jsonl.zst``, a segment set read whole, in order);
the result is written as one new ``.jsonl`` recording whose header's
``derived_from`` names the original's (last) file, its final hash and how it
was reduced.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import Any, TextIO

import attrs

from .. import qemuopts
from ..errors import QmprrError, RecordingError
from ..recording import RecordingReader, convert, sets
from ..recording.encode import END_SEAL_TEXT
from ..recording.rechain import write_derived
from . import deps
from .criteria import Criterion, MinimizeError, signature
from .ddmin import Budget, Config, Search
from .engine import ReplayOptions
from .run import UNSAFE_WARNING, RunOptions, run_replay

__all__ = ["Criterion", "MinimizeError", "NotFailing", "Outcome", "Settings", "minimize", "run_minimize"]

#: Header fields that tie a file to its segment set: moved from the header to ``derived_from``.
SET_FIELDS = ("recording", "segment", "previous", "retention")

#: Times a try is run when the target cannot start or be reached (a loaded host: a QEMU slow to start).
RUN_ATTEMPTS = 2


class NotFailing(QmprrError):
    """The original recording does not show the failure: nothing to minimize."""

    exit_code = 1


@attrs.define
class Settings:
    """How to minimize (see ``qmprr minimize --help``)."""

    run: RunOptions
    replay: ReplayOptions
    criterion: Criterion = attrs.Factory(Criterion)
    jobs: int = 1
    budget: Budget = attrs.Factory(Budget)
    argv: bool = False
    progress: bool = False


@attrs.define
class Outcome:
    """What :func:`minimize` did."""

    commands_before: int
    commands_after: int
    tries: int
    complete: bool
    kept: list[str]  # one line per kept unit: why it stays
    argv_before: list[str] | None = None
    argv_after: list[str] | None = None
    check_ok: bool = True  # the written file's own replay showed the failure
    not_run: int = 0  # tries that could not run (counted as not failing)
    last_error: str | None = None


class _Recording:
    """The original's records and dependency analysis, and candidates made from a kept set of units."""

    def __init__(self, path: str) -> None:
        try:
            self.files = sets.resolve(path)
            with RecordingReader(path, errors="raise") as reader:
                self.records = [convert.unstructure(r) for r in reader]
                self.final_hash: str | None = reader.final_hash
            with open(self.files[-1], "rb") as f:  # a regular file: the reader opened it already
                self.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
        except (RecordingError, OSError) as exc:
            raise MinimizeError(str(exc) if isinstance(exc, RecordingError) else f"{path}: {exc}") from None
        # one normal recording: the links to a set (its id, segment number, previous segment) stay behind
        self.set_id = self.records[0].get("recording")
        for key in SET_FIELDS:
            self.records[0].pop(key, None)
        self.path = path
        self.analysis = deps.analyze(self.records)
        if not self.analysis.commands:
            raise MinimizeError(f"{path}: the recording has no commands to minimize")

    def size(self, config: Iterable[int]) -> int:
        """Commands in *config* (units)."""
        return sum(len(self.analysis.units[u].commands) for u in config)

    def close(self, units: Iterable[int]) -> Config:
        return frozenset(self.analysis.closure(units))

    def records_for(self, config: Iterable[int], argv: list[str] | None = None) -> list[dict[str, Any]]:
        """The original's records with only the commands of *config* (and their replies, fds, events)."""
        a = self.analysis
        kept_seqs = {a.commands[c]["seq"] for u in config for c in a.units[u].commands}
        kept_tx = {a.commands[c].get("tx") for u in config for c in a.units[u].commands}
        names = a.made_by(config)
        out: list[dict[str, Any]] = []
        owner: int | None = None  # the seq of the command whose window this is
        owner_quiet = False  # it is a query: the events in its window came from earlier commands
        for rec in self.records:
            kind = rec.get("kind")
            if kind == "command":
                owner = rec["seq"]
                if owner not in kept_seqs:
                    owner_quiet = deps.side_effect_free(deps.command_name(rec))
                    continue
            elif kind in ("reply", "fd"):
                cmd = rec.get("cmd", owner)
                if cmd is not None and cmd not in kept_seqs:
                    continue
            elif kind == "event":
                # A dropped command's event goes with it, unless the command was a query (it causes no
                # events) and the event names something a kept command made (a kept job's, in its window).
                if owner is not None and owner not in kept_seqs and not (
                        owner_quiet and names & set(deps.strings(rec.get("msg")))):
                    continue
            elif kind == "tx" and rec.get("tx") not in kept_tx:
                continue
            elif kind == "note" and rec.get("text") == END_SEAL_TEXT:
                continue  # the original's end seal: this chain is not sealed
            elif kind == "header":
                rec = {k: v for k, v in rec.items() if k != "seal"}  # the new chain is not sealed
                if argv is not None:
                    rec["qemu_argv"] = argv
            out.append(rec)
        return out

    def derived(self, how: dict[str, Any]) -> dict[str, Any]:
        """``derived_from``: the input's last file (a set's last segment) by name, final hash and SHA-256."""
        derived: dict[str, Any] = {
            "file": os.path.basename(self.files[-1]),
            "final_hash": self.final_hash,
            "file_sha256": self.sha256,
            "how": "minimized",
            "records": len(self.records),
        }
        if len(self.files) > 1:
            derived["segments"] = [os.path.basename(f) for f in self.files]
        if self.set_id is not None:
            derived["recording"] = self.set_id
        derived["minimized"] = how
        return derived


class _Tries:
    """Writes candidates and replays them; counts tries and tracks the best (smallest failing) size."""

    def __init__(self, rec: _Recording, settings: Settings, folder: str) -> None:
        self.rec, self.settings, self.folder = rec, settings, folder
        self.counter = 0
        self.errors: list[str] = []
        self.failed_to_run = 0  # tries that could not run even when run again
        self.options = attrs.evolve(settings.replay, keep_going=not settings.criterion.default or settings.replay.keep_going)

    async def replay(self, records: list[dict[str, Any]], how: dict[str, Any], out: str | None = None) -> bool:
        """Write *records* as a candidate (or as *out*), replay it, and tell whether it still fails."""
        if not any(r.get("kind") == "command" and not (r.get("role") == "internal" and deps.command_name(r) in deps.PINNED)
                   for r in records):
            return False  # only the negotiation: nothing to replay, nothing to fail
        self.counter += 1
        folder = os.path.join(self.folder, f"try-{self.counter}")
        os.mkdir(folder)
        try:
            path = out or os.path.join(folder, "candidate.jsonl")
            write_derived(records, path, self.rec.derived(how), src=self.rec.path)
            log = os.path.join(folder, "replay.jsonl")
            run = attrs.evolve(self.settings.run, record=log, report=None, progress=False, keep_workdir=False)
            report = None
            for _attempt in range(RUN_ATTEMPTS):  # a try that could not run says nothing about the candidate
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(log)
                try:
                    report = await run_replay(path, run, self.options)
                    break
                except MinimizeError:
                    raise
                except (QmprrError, OSError) as exc:  # OSError: a QEMU that died at start-up, seen by uvloop
                    self.errors.append(str(exc))
            if report is None:
                self.failed_to_run += 1
                return False
            if self.settings.criterion.default and self.settings.criterion.signature is None:
                self.settings.criterion.signature = signature(report)  # the original's: what later tries match
            return await self.settings.criterion.holds(report, log)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


async def minimize(path: str, out: str, settings: Settings, err: TextIO | None = None) -> Outcome:
    """Minimize the recording at *path* into *out* (must not exist); see the module docstring.

    Raises :class:`NotFailing` when the original does not fail, :class:`MinimizeError`
    (or another :class:`~qmprr.errors.QmprrError`) when it cannot be run.
    """
    err = err or sys.stderr
    if os.path.exists(out):
        raise MinimizeError(f"{out}: file exists; recordings are never overwritten")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise MinimizeError(f"-o {out}: its folder does not exist")
    rec = _Recording(path)
    if settings.run.target.startswith("socket:") and settings.jobs > 1:
        print("qmprr: --target socket: tries run one at a time into the same QEMU (its state carries over)",
              file=err)
        settings = attrs.evolve(settings, jobs=1)
    if settings.argv and settings.run.target != "qemu":
        raise MinimizeError("--argv minimizes the QEMU command line: it needs --target qemu")
    header_argv = rec.records[0].get("qemu_argv")
    if settings.argv and not header_argv:
        raise MinimizeError(f"{path}: --argv: the recording has no QEMU command line")
    if settings.replay.allow_unsafe:
        print(UNSAFE_WARNING, file=err)  # the tries' own warnings go where their output goes: nowhere
    a = rec.analysis
    settings.budget.started = time.monotonic()  # a time budget counts from here
    everything = rec.close(range(len(a.units)))
    total = rec.size(everything)
    with tempfile.TemporaryDirectory(prefix="qmprr-minimize-") as folder, \
            _progress(settings.progress, total, settings.budget, err) as show:
        tries = _Tries(rec, settings, folder)
        baseline = {"stage": "original"}
        # run_replay prints each try's summary, and relays QEMU's stderr (a try's QEMU may well fail): not here
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
            if not await tries.replay(rec.records_for(everything), baseline):
                if tries.errors:
                    raise MinimizeError(f"cannot replay {path}: {tries.errors[-1]}")
                raise NotFailing(f"{path}: the original does not show the failure ({settings.criterion.describe()})"
                                 f" against {settings.run.target}: nothing to minimize")
            best = [total]

            def tried(n: int, config: Config, failed: bool) -> None:
                size = rec.size(config)
                if failed:
                    best[0] = min(best[0], size)
                show(n, size, best[0])

            async def test(config: Config) -> bool:
                return await tries.replay(rec.records_for(config), {"stage": "try"})

            search = Search(test, close=rec.close, jobs=settings.jobs, budget=settings.budget, tried=tried)
            result = await search.run(a.removable())
            config = result.config
            argv_after = header_argv
            argv_tries = 0
            if settings.argv and header_argv and not search.exhausted:
                argv_after, argv_tries, argv_complete = await _minimize_argv(rec, config, header_argv, settings, tries,
                                                                             show, result.tries, best)
                result.complete = result.complete and argv_complete
            how = {
                "by": "ddmin",
                "criterion": settings.criterion.describe(),
                "target": settings.run.target,
                "tries": result.tries + argv_tries,
                "complete": result.complete,
                "commands": [total, rec.size(config)],
                "kept_seq": sorted(a.commands[c]["seq"] for u in config for c in a.units[u].commands),
            }
            if argv_after != header_argv:
                how["argv"] = [len(header_argv or []), len(argv_after or [])]
            check = await tries.replay(rec.records_for(config, argv_after), how, out=out)
    return Outcome(
        commands_before=total,
        commands_after=rec.size(config),
        tries=result.tries + argv_tries,
        complete=result.complete,
        kept=explain(a, config),
        argv_before=header_argv,
        argv_after=argv_after,
        check_ok=check,
        not_run=tries.failed_to_run,
        last_error=tries.errors[-1] if tries.errors else None,
    )


def split_argv(argv: list[str]) -> list[list[str]]:
    """QEMU's arguments (after the program) grouped into options: ``-name VALUE`` or a lone ``-flag``."""
    groups: list[list[str]] = []
    i = 0
    while i < len(argv):
        if argv[i].startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            groups.append(argv[i : i + 2])
            i += 2
        else:
            groups.append([argv[i]])
            i += 1
    return groups


async def _minimize_argv(
    rec: _Recording, config: Config, argv: list[str], settings: Settings, tries: _Tries, show: Any,
    used: int, best: list[int],
) -> tuple[list[str], int, bool]:
    """ddmin over the options of *argv*; options whose values name what the kept commands use are kept."""
    program, groups = argv[0], split_argv(argv[1:])
    names = deps.argv_names(rec.analysis, config)
    named = {i for i, g in enumerate(groups) if len(g) == 2 and names & set(qemuopts.values(g[1]))}
    records_cache: dict[Config, list[str]] = {}

    def argv_of(options: Iterable[int]) -> list[str]:
        return [program, *(a for i in sorted(options) for a in groups[i])]

    def close(options: Iterable[int]) -> Config:
        return frozenset(options) | frozenset(named)

    async def test(options: Config) -> bool:
        candidate = records_cache.setdefault(options, argv_of(options))
        return await tries.replay(rec.records_for(config, candidate), {"stage": "argv"})

    def tried(n: int, options: Config, failed: bool) -> None:
        show(used + n, rec.size(config), best[0])

    budget = attrs.evolve(settings.budget, tries=None if settings.budget.tries is None
                          else max(0, settings.budget.tries - used))
    search = Search(test, close=close, jobs=settings.jobs, budget=budget, tried=tried)
    result = await search.run(range(len(groups)))
    return argv_of(result.config), result.tries, result.complete


def explain(analysis: deps.Analysis, config: Config) -> list[str]:
    """Why each kept unit stays: pinned, needed by a later kept step (and for which names), or the failure's own."""
    lines = []
    for u in sorted(config):
        unit = analysis.units[u]
        first = analysis.commands[unit.commands[0]]
        what = f"seq {first['seq']} {deps.command_name(first)}" + (
            f" (transaction {unit.tx}, {len(unit.commands)} commands)" if unit.tx is not None else "")
        users = [(v, analysis.units[v].needs[u]) for v in sorted(config) if u in analysis.units[v].needs]
        if unit.pinned:
            why = "pinned: the session's negotiation"
        elif users:
            why = "cannot be removed without breaking " + "; ".join(
                f"seq {analysis.commands[analysis.units[v].commands[0]]['seq']}"
                f" {deps.command_name(analysis.commands[analysis.units[v].commands[0]])}"
                f" (names {', '.join(repr(n) for n in sorted(names))})" for v, names in users)
        else:
            why = "needed for the failure"
        lines.append(f"{what}: {why}")
    return lines


def print_outcome(path: str, out: str, outcome: Outcome, settings: Settings, file: TextIO) -> None:
    """The summary of a minimization, for people."""
    state = "1-minimal" if outcome.complete else "budget spent: smaller may exist"
    print(f"minimized {path}: {outcome.commands_before} -> {outcome.commands_after} command(s) in"
          f" {outcome.tries} tries ({state}) against {settings.run.target}", file=file)
    print(f"failure: {settings.criterion.describe()}", file=file)
    print("kept:", file=file)
    for line in outcome.kept:
        print(f"  {line}", file=file)
    if outcome.argv_before is not None and outcome.argv_after is not None and outcome.argv_after != outcome.argv_before:
        dropped = [g for g in split_argv(outcome.argv_before[1:]) if _sub(g, outcome.argv_after[1:]) is False]
        print(f"argv: {len(outcome.argv_before)} -> {len(outcome.argv_after)} argument(s), dropped "
              + " ".join(" ".join(g) for g in dropped), file=file)
    if outcome.not_run:
        print(f"warning: {outcome.not_run} tries could not run (counted as not failing): {outcome.last_error}",
              file=file)
    print(f"wrote {out}", file=file)
    if not outcome.check_ok:
        print(f"warning: replaying {out} did not show the failure again (a flaky failure?)", file=file)


def _sub(group: list[str], argv: list[str]) -> bool:
    n = len(group)
    return any(argv[i : i + n] == group for i in range(len(argv) - n + 1))


@contextlib.contextmanager
def _progress(enabled: bool, total: int, budget: Budget, err: TextIO) -> Any:
    """A rich progress bar on a terminal: tries, the current candidate's size, the best size so far."""
    if not enabled:
        yield lambda tries, size, best: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("minimizing"), TextColumn("tries {task.fields[tries]}"),
               TextColumn("current {task.fields[size]}"), TextColumn("best {task.fields[best]}/" + str(total)),
               TimeElapsedColumn())
    of = f"/{budget.tries}" if budget.tries is not None else ""
    with Progress(*columns, console=Console(file=err), transient=True) as bar:
        task = bar.add_task("minimize", total=None, tries=f"0{of}", size=total, best=total)

        def show(tries: int, size: int, best: int) -> None:
            bar.update(task, tries=f"{tries}{of}", size=size, best=best)

        yield show


def parse_budget(text: str) -> Budget:
    """``--budget``: a number of tries (``200``) or a time (``60s``, ``5m``, ``1h``)."""
    t = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(t[-1:])
    number = t[:-1] if scale else t
    try:
        value = float(number) if scale else int(number)
    except ValueError:
        raise ValueError(f"--budget takes a number of tries (200) or a time (60s, 5m), not {text!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"--budget must be positive, not {text!r}")
    return Budget(seconds=value * scale) if scale else Budget(tries=int(value))


async def run_minimize(path: str, out: str, settings: Settings) -> int:
    """``qmprr minimize``: minimize, print the summary on stdout; 0 (errors are raised)."""
    outcome = await minimize(path, out, settings)
    print_outcome(path, out, outcome, settings, sys.stdout)
    return 0
