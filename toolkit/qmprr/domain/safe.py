"""Parsing untrusted XML: no DTDs, no entities, no network, no huge trees.

A domain XML needs none of these, and a file from a bug report may use them
to attack (billion laughs, external entities reading local files). A first
pass stops at any DOCTYPE before its declarations are read, and at a document
with more elements, or an element with more attributes, than any domain needs
(libxml2's RelaxNG validation and lxml's attribute access are quadratic in
them); the second pass builds the tree with every loader off.
"""

from __future__ import annotations

from lxml import etree

from .errors import MalformedXMLError, UnsafeXMLError

#: Largest document accepted, in bytes (a domain XML is a few KiB).
MAX_BYTES = 4 * 1024 * 1024
#: Most elements in one document (a large VM's domain XML has a few hundred).
MAX_ELEMENTS = 10_000
#: Most attributes on one element (libvirt's elements have a handful).
MAX_ATTRIBUTES = 64


class _DoctypeFound(Exception):
    pass


class _TooMany(Exception):
    pass


class _Screen:
    """Parser target that refuses any DOCTYPE (called before its internal subset is read) and
    documents over :data:`MAX_ELEMENTS` elements or :data:`MAX_ATTRIBUTES` attributes on one."""

    def __init__(self) -> None:
        self.elements = 0

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise _DoctypeFound(system or pubid or name)

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise _TooMany(f"more than {MAX_ELEMENTS:,} elements")
        if len(attrib) > MAX_ATTRIBUTES:
            local = tag.rpartition("}")[2]
            raise _TooMany(f"<{local}> has {len(attrib):,} attributes (more than {MAX_ATTRIBUTES})")

    def end(self, tag: str) -> None:
        pass

    def data(self, data: str) -> None:
        pass

    def close(self) -> None:
        return None


def _parser(**kwargs: object) -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        attribute_defaults=False,
        collect_ids=False,
        **kwargs,
    )


def parse_xml(data: bytes | str, source: str = "<xml>") -> etree._Element:
    """The root element of *data*: :class:`UnsafeXMLError` for a DTD or entities, else
    :class:`MalformedXMLError` when it is not well-formed.

    *source* names the document in messages (a path, or ``<xml>``).
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
        encoding: str | None = "utf-8"  # the text was decoded already: ignore any declared encoding
    else:
        encoding = None
    if len(data) > MAX_BYTES:
        raise UnsafeXMLError(f"{source}: {len(data)} bytes is more than a domain XML needs ({MAX_BYTES} at most)")
    try:
        etree.fromstring(data, _parser(target=_Screen(), encoding=encoding))
        root = etree.fromstring(data, _parser(encoding=encoding))
    except _TooMany as exc:
        raise UnsafeXMLError(f"{source}: {exc}; a domain XML needs far fewer") from None
    except _DoctypeFound:
        raise UnsafeXMLError(
            f"{source}: has a DOCTYPE; DTDs and entity declarations are refused (they can expand"
            " without bound or read other files), and a domain XML needs none"
        ) from None
    except etree.XMLSyntaxError as exc:
        line = exc.lineno or 1
        message = exc.msg.split(", line ")[0] if exc.msg else str(exc)
        raise MalformedXMLError(f"{source}:{line}: not well-formed XML: {message}") from None
    if root is None:
        raise UnsafeXMLError(f"{source}: no root element")
    return root
