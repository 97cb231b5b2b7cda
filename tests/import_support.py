"""Helpers for the importer tests (not a test module of its own: it holds no tests).

The captures in ``tests/data/libvirt`` are real: ``regenerate.py`` there made
them with libvirtd 9.0 and QEMU 7.2 (see its docstring for the session).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from qmprr.errors import QmprrError
from qmprr.cli import build_parser

DATA = Path(__file__).parent / "data" / "libvirt"
LOG = DATA / "libvirtd-debug.log"
QEMU_LOG = DATA / "qmprr-demo.log"
REPLIES = DATA / "caps-x86_64.replies"


def run_import(*argv: str | Path) -> tuple[int, str]:
    """``qmprr import ARGV...`` in process: (exit status, what it printed, errors as 'qmprr: ...')."""
    args = build_parser().parse_args(["import", *map(str, argv)])
    out = io.StringIO()
    try:
        status = args.func(args, out=out)
    except QmprrError as exc:
        out.write(f"qmprr: {exc}\n")
        status = exc.exit_code
    return status, out.getvalue()


def lines(path: Path) -> list[dict[str, Any]]:
    """The records of a recording as plain dicts (the on-disk form)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def commands(records: list[dict[str, Any]]) -> list[str]:
    return [r["msg"]["execute"] for r in records if r["kind"] == "command"]
