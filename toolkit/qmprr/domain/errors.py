"""Errors about domain XML and QEMU command lines. All exit with status 2 (unusable input)."""

from __future__ import annotations

from ..errors import QmprrError


class DomainError(QmprrError):
    """A domain XML (or a QEMU argv given for conversion) cannot be used."""


class MalformedXMLError(DomainError):
    """The input is not well-formed XML."""


class UnsafeXMLError(DomainError):
    """The XML declares a DTD or entities, or is too large: refused before it is read."""


class SchemaError(DomainError):
    """The XML does not match qmprr's domain schema (message names the line)."""


class UnsupportedError(DomainError):
    """The XML uses elements, attributes or values qmprr does not turn into QEMU options."""
