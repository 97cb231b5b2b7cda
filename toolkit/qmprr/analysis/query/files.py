"""Which files a query reads, and the catalog of what is known about each.

Paths may be files, folders (searched recursively) or globs. A recording is a
``.jsonl`` file, its segments (``NAME.000001.jsonl``) and the zstd-compressed
forms (``.jsonl.zst``). Each file's identity is its size, mtime, ctime and final
hash (the ``h`` of its last complete line): the catalog caches what was learnt
about a file (its chain verified, its export) under that identity, so a changed
file is looked at again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from ...errors import QmprrError

SUFFIXES = (".jsonl", ".jsonl.zst")
#: Bytes read from the end of a plain file to find its last complete line.
_TAIL = 1 << 16
CATALOG_NAME = ".qmprr-catalog.json"


class QueryError(QmprrError):
    """A query cannot run as asked (no recordings, bad SQL, a dataset of another schema)."""


def is_recording_name(name: str) -> bool:
    return name.endswith(SUFFIXES)


def expand(paths: Iterable[str]) -> list[str]:
    """Every recording under *paths* (files, folders searched recursively, globs), sorted, absolute."""
    found: set[str] = set()
    for p in paths:
        matches = glob.glob(p, recursive=True) if glob.has_magic(p) else [p]
        if not matches:
            raise QueryError(f"{p}: no such file or folder")
        for m in matches:
            if os.path.isdir(m):
                for root, _dirs, names in os.walk(m):
                    found.update(os.path.join(root, n) for n in names if is_recording_name(n))
            elif os.path.isfile(m):
                found.add(m)
            else:
                raise QueryError(f"{m}: no such file or folder")
    return sorted(os.path.abspath(f) for f in found)


@attrs.frozen
class FileInfo:
    """What the catalog keys a file by, and what cheap reading tells."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    final_hash: str | None
    torn: bool | None  # None: not known without decompressing

    @property
    def key(self) -> str:
        return f"{self.size}:{self.mtime_ns}:{self.ctime_ns}:{self.final_hash}"


def _tail_of(path: str, size: int) -> tuple[str | None, bool | None]:
    if path.endswith(".zst"):
        return None, None
    with open(path, "rb") as f:
        f.seek(max(0, size - _TAIL))
        tail = f.read()
    torn = bool(tail) and not tail.endswith(b"\n")
    lines = tail.split(b"\n")
    complete = lines[:-1]  # the part after the last newline is torn (or empty)
    for line in reversed(complete):
        i = line.rfind(b'"h":"')
        if i >= 0:
            return line[i + 5:i + 5 + 32].decode("ascii", "replace"), torn
    return None, torn


def file_info(path: str) -> FileInfo:
    st = os.stat(path)
    final, torn = _tail_of(path, st.st_size)
    return FileInfo(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, final, torn)


# -- the catalog ------------------------------------------------------------------


def catalog_path(files: Sequence[str]) -> Path:
    """Next to the data (the files' common folder) when writable, else in the user's cache."""
    root = Path(os.path.commonpath([os.path.dirname(f) for f in files])) if files else Path.cwd()
    if os.access(root, os.W_OK):
        return root / CATALOG_NAME
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qmprr"
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    return cache / f"catalog-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.json"


def load_catalog(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_catalog(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _verify_one(path: str) -> tuple[bool, str]:
    """In a worker: does *path*'s chain verify? (ok, why not)."""
    from ...recording import verify

    try:
        report = verify(path)
    except QmprrError as exc:
        return False, str(exc)
    except OSError as exc:
        return False, f"{path}: {exc.strerror or exc}"
    if not report.chain_checked:
        return False, f"{path}: sealed: the chain cannot be checked without the key"
    problems = [p for p in report.problems if report.torn is None or p.line != report.torn.line]
    if problems:  # a torn last line is a crash, not an edit: it is never read
        p = problems[0]
        return False, f"{path}:{p.line}: {p.message}"
    return True, ""


def verified(infos: Sequence[FileInfo], *, jobs: int | None = None) -> dict[str, tuple[bool, str]]:
    """Each file's chain verdict: from the catalog when its identity is unchanged, else
    verified afresh in parallel processes (and cached)."""
    if not infos:
        return {}
    where = catalog_path([i.path for i in infos])
    catalog = load_catalog(where)
    cached = catalog.setdefault("verified", {})
    out: dict[str, tuple[bool, str]] = {}
    todo = []
    for info in infos:
        entry = cached.get(info.path)
        if isinstance(entry, dict) and entry.get("key") == info.key:
            out[info.path] = (bool(entry.get("ok")), str(entry.get("why", "")))
        else:
            todo.append(info)
    if todo:
        jobs = jobs or max(1, min(len(os.sched_getaffinity(0)), len(todo)))
        paths = [i.path for i in todo]
        if jobs == 1 or len(todo) == 1:
            results = list(map(_verify_one, paths))
        else:
            with ProcessPoolExecutor(jobs) as pool:
                results = list(pool.map(_verify_one, paths, chunksize=max(1, len(todo) // (jobs * 8))))
        for info, (ok, why) in zip(todo, results, strict=True):
            out[info.path] = (ok, why)
            cached[info.path] = {"key": info.key, "ok": ok, "why": why}
        try:
            save_catalog(where, catalog)
        except OSError:
            pass  # a cache: not being able to write it only costs time next run
    return out
