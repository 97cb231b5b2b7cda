"""A recording's header: the one way to build it and the one way to check it.

:func:`new_header` stamps the time, host and qmprr version (an importer gives
the source's own start and host); :func:`header_for_greeting` adds the QEMU
version a greeting names (every recorder starts from QEMU's greeting).
:func:`parse_header` checks a first line as the reader, the appending writer
and every other opener must: its size, JSON, kind, format and hash
(:func:`header_problem`, the kind and format, also for ``qmprr rechain``).
"""

from __future__ import annotations

import datetime
import socket
import time
from collections.abc import Mapping
from typing import Any

from .. import __version__, codec
from . import chain, convert
from .model import FORMAT, Header, Msg, Record

#: Longest header line read (it holds the QEMU argv and a domain XML of at most 4 MiB).
MAX_HEADER_BYTES = 16 * 1024 * 1024


class HeaderProblem(ValueError):
    """A first line that is not a header; the message says why, without the file's name."""


def iso_utc(epoch: float) -> str:
    """*epoch* as the header's ``started``: ISO 8601 with microseconds, UTC."""
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(timespec="microseconds")


def new_header(
    *,
    started_epoch: float | None = None,
    host: str | None = None,
    qemu_version: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    **fields: Any,
) -> Header:
    """A header stamped with *started_epoch* (default: now), *host* (default: this one) and qmprr's version.

    *fields*: any other :class:`~.model.Header` field (``qemu_argv``, ``domain_xml``, ``segment`` ...).
    """
    now = time.time() if started_epoch is None else started_epoch
    if fields.get("images"):
        fields["images"] = [Msg(dict(d)) for d in fields["images"]]
    return Header(
        started=iso_utc(now),
        started_epoch=round(now, 6) if started_epoch is None else started_epoch,
        host=socket.gethostname() if host is None else host,
        qmprr_version=__version__,
        qemu_version=Msg(dict(qemu_version)) if qemu_version is not None else None,
        labels=dict(labels or {}),
        **fields,
    )


def greeting_version(greeting: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``version`` member of a QMP greeting, None when it has none."""
    qmp = greeting.get("QMP")
    version = qmp.get("version") if isinstance(qmp, dict) else None
    return version if isinstance(version, dict) else None


def header_for_greeting(greeting: Mapping[str, Any], **fields: Any) -> Header:
    """:func:`new_header` for a recording that starts with *greeting* (its QEMU version)."""
    return new_header(qemu_version=greeting_version(greeting), **fields)


def header_problem(record: Record) -> str | None:
    """Why a recording's first record is not its header (its kind, its format), or None."""
    if not isinstance(record, Header):
        return f"first record is a {record.kind}, not a header"
    if record.format != FORMAT:
        return f"format {record.format!r} is not {FORMAT!r}"
    return None


def parse_header(first: bytes, *, check_chain: bool = True) -> tuple[Header, str]:
    """The header a first line (its newline included) holds and its hash; raises :class:`HeaderProblem`.

    *check_chain*: the hash must match the content (False: an edited file read as it is).
    """
    if not first:
        raise HeaderProblem("file is empty")
    if len(first) > MAX_HEADER_BYTES:
        raise HeaderProblem(f"its first line is over {MAX_HEADER_BYTES:,} bytes, more than any header")
    if not first.endswith(b"\n"):
        raise HeaderProblem("its only line is incomplete")
    try:
        body, h = chain.unseal(first)
        record = convert.structure(codec.loads(body))
    except ValueError as exc:
        raise HeaderProblem(f"first line is not a {FORMAT} header ({exc})") from None
    problem = header_problem(record)
    if problem is not None:
        raise HeaderProblem(problem)
    assert isinstance(record, Header)  # no problem: it is one
    if check_chain and chain.link(chain.GENESIS, body) != h:
        raise HeaderProblem("header's hash does not match its content")
    return record, h
