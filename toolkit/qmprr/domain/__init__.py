"""Domain XML (libvirt's, with the qemu namespace) to a QEMU argv and back.

* :func:`build_launch` -- a domain XML (text or path) to the argv and environment that start it;
* :func:`load` -- the same, keeping the parsed :class:`~.model.Domain`;
* :func:`from_argv` -- a QEMU command line to a domain XML that gives it back.

Pipeline: :mod:`.safe` parsing, :mod:`.check` (unsupported and invalid parts
by line, rules read from ``domain.rng``), :mod:`.schema` (RelaxNG via
lxml), :mod:`.model`, then :mod:`.argv`/:mod:`.devices`. See docs/domain.md.
"""

from __future__ import annotations

import os

import attrs

from ..files import InputError, InputTooLarge, read_limited
from .argv import domain_argv
from .check import check_tree, raise_for
from .errors import DomainError, MalformedXMLError, SchemaError, UnsafeXMLError, UnsupportedError
from .fromargv import from_argv
from .informational import strip_informational
from .model import Domain, read_domain
from .safe import MAX_BYTES, parse_xml
from .schema import QEMU_NS, schema_text, validate
from .schema import grammar as _grammar

__all__ = [
    "QEMU_NS",
    "DomainError",
    "LaunchSpec",
    "Loaded",
    "MalformedXMLError",
    "SchemaError",
    "UnsafeXMLError",
    "UnsupportedError",
    "build_launch",
    "from_argv",
    "load",
    "schema_text",
]


@attrs.frozen
class LaunchSpec:
    """How to start QEMU for a domain: argv (binary first), extra environment, and the XML itself."""

    argv: list[str]
    env: dict[str, str]
    xml: str
    warnings: tuple[str, ...] = ()  # unsupported parts dropped under ignore_unsupported


@attrs.frozen
class Loaded:
    """A checked domain and what was dropped from it."""

    domain: Domain
    xml: str
    source: str
    warnings: tuple[str, ...] = ()


Source = str | bytes | os.PathLike[str]


def _read(source: Source) -> tuple[bytes, str]:
    """(document bytes, name for messages). A str starting with ``<`` is XML text, else a path."""
    if isinstance(source, bytes):
        return source, "<xml>"
    if isinstance(source, str) and source.lstrip("\ufeff \t\r\n").startswith("<"):
        return source.encode("utf-8"), "<xml>"
    name = os.fspath(source)
    try:  # the size is checked before reading; a pipe or device is read to MAX_BYTES + 1 at most
        return read_limited(name, MAX_BYTES, what="domain XML"), name
    except InputTooLarge as exc:
        raise UnsafeXMLError(str(exc)) from None
    except InputError as exc:
        raise DomainError(f"cannot read {name}: {exc.strerror or exc}") from None


def load(source: Source, *, ignore_unsupported: bool = False) -> Loaded:
    """Parse and check a domain XML (text, bytes or path).

    What only libvirt's expanded XML says (aliases, addresses, seclabels:
    :mod:`.informational`) is dropped and noted in ``warnings``. Unsupported
    parts raise :class:`UnsupportedError`, or with *ignore_unsupported* are
    dropped and listed in ``warnings``.
    """
    data, name = _read(source)
    root = parse_xml(data, name)
    notes = strip_informational(root, name)  # libvirt's expanded XML: aliases, addresses, seclabels
    problems = check_tree(root, _grammar(), drop_unsupported=ignore_unsupported, source=name)
    warnings: tuple[str, ...] = notes
    if ignore_unsupported:
        warnings += tuple(p.warning(name) for p in problems if p.unsupported)
        problems = [p for p in problems if not p.unsupported]
    raise_for(problems, name)
    validate(root, name)
    encoding = root.getroottree().docinfo.encoding or "utf-8"
    try:
        text = data.decode(encoding)
    except (LookupError, UnicodeDecodeError):
        text = data.decode("utf-8", "replace")
    return Loaded(read_domain(root, name), text, name, warnings)


def build_launch(source: Source, *, ignore_unsupported: bool = False) -> LaunchSpec:
    """The argv and environment that start the domain in *source* (XML text, bytes or a path)."""
    loaded = load(source, ignore_unsupported=ignore_unsupported)
    argv = domain_argv(loaded.domain, loaded.source)
    return LaunchSpec(argv, dict(loaded.domain.commandline.env), loaded.xml, loaded.warnings)
