"""The shipped RelaxNG schema (``domain.rng``): loading it and validating with lxml."""

from __future__ import annotations

import copy
import functools
from importlib import resources

from lxml import etree

from .check import label
from .errors import SchemaError
from .grammar import RNG, ElementSpec, Grammar, inherited_ns

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
SCHEMA_FILE = "domain.rng"


def schema_text() -> bytes:
    """The schema as shipped in the package."""
    return resources.files(__package__).joinpath(SCHEMA_FILE).read_bytes()


@functools.cache
def _schema_tree() -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)
    return etree.fromstring(schema_text(), parser)


@functools.cache
def relaxng() -> etree.RelaxNG:
    """The compiled validator."""
    return etree.RelaxNG(_schema_tree())


@functools.cache
def grammar() -> Grammar:
    """The schema read as per-element rules (see :mod:`.grammar`)."""
    return Grammar(_schema_tree())


def validate(root: etree._Element, source: str) -> None:
    """Raise :class:`SchemaError` unless *root* is valid, naming the innermost failing element's line.

    libxml2 blames the outermost element of an ``interleave``; so the element's
    children are validated one by one against their own patterns, down to the
    element that fails while its children pass.
    """
    validator = relaxng()
    if validator.validate(root):
        return
    el, log = root, validator.error_log
    rule = grammar().start.child_rule(root.tag)
    spec = rule.spec if rule is not None else None
    while spec is not None:
        for child in el.iterchildren(etree.Element):
            child_rule = spec.child_rule(child.tag)
            if child_rule is None:
                continue
            sub = _validator(child_rule.spec)
            if sub is not None and not sub.validate(child):
                el, spec, log = child, child_rule.spec, sub.error_log
                break
        else:
            break
    detail = "; ".join(dict.fromkeys(e.message for e in log))
    if etree.QName(el).namespace == QEMU_NS and len(el) == 0 and not el.attrib:
        detail = "a structured option needs its implied-key attribute or at least one property element"
    raise SchemaError(f"{source}:{el.sourceline}: {label(el)} does not match qmprr's domain schema: {detail}")


_validators: dict[int, etree.RelaxNG | None] = {}


def _validator(spec: ElementSpec) -> etree.RelaxNG | None:
    """A validator whose start is the one element pattern *spec* was read from."""
    key = id(spec)
    if key not in _validators:
        _validators[key] = None
        if spec.node is not None:
            schema = copy.deepcopy(_schema_tree())
            start = schema.find(f"{{{RNG}}}start")
            assert start is not None
            element = copy.deepcopy(spec.node)
            element.set("ns", element.get("ns", inherited_ns(spec.node)))
            start[:] = [element]
            _validators[key] = etree.RelaxNG(schema)
    return _validators[key]
