"""What the RelaxNG schema allows, element by element, read from ``domain.rng`` itself.

lxml's RelaxNG validator says *that* a document is wrong, and inside an
``interleave`` hardly *where*. This module reads the same grammar into
per-element rules (allowed and required attributes and children, enumerated
values, data types) so :mod:`.check` can name each unsupported or invalid
part and its line; the validator stays the final word. Only the RelaxNG
patterns ``domain.rng`` uses are understood.
"""

from __future__ import annotations

import re

import attrs
from lxml import etree

RNG = "http://relaxng.org/ns/structure/1.0"
_R = "{" + RNG + "}"


@attrs.frozen
class DataType:
    """An XML Schema datatype with facets (the few ``domain.rng`` uses)."""

    name: str
    params: tuple[tuple[str, str], ...] = ()

    def problem(self, text: str) -> str | None:
        """Why *text* is not of this type, or None."""
        if self.name in ("positiveInteger", "nonNegativeInteger"):
            word = text.strip()
            if not re.fullmatch(r"\+?[0-9]+", word) or (self.name == "positiveInteger" and int(word) == 0):
                kind = "a positive" if self.name == "positiveInteger" else "a non-negative"
                return f"must be {kind} integer"
            return None
        if self.name != "string":
            raise ValueError(f"domain.rng: datatype {self.name!r} is not understood")
        for facet, value in self.params:
            if facet == "minLength" and len(text) < int(value):
                return "must not be empty" if value == "1" else f"must be at least {value} characters"
            if facet == "pattern" and not re.fullmatch(value, text):
                return f"must match {value}"
        return None


@attrs.define
class Content:
    """What text (of an element or an attribute) may be."""

    any_text: bool = False
    values: set[str] = attrs.field(factory=set)
    types: list[DataType] = attrs.field(factory=list)

    @property
    def enumerated(self) -> bool:
        """Only listed values are allowed (a value outside them is unsupported, not malformed)."""
        return bool(self.values) and not self.any_text and not self.types

    def problem(self, text: str) -> str | None:
        """Why *text* is not allowed here, or None."""
        if self.any_text:
            return None
        if " ".join(text.split()) in self.values:
            return None
        problems = [p for p in (t.problem(text) for t in self.types)]
        if self.types and None in problems:
            return None
        if problems:
            return problems[0]
        return "must be one of " + ", ".join(sorted(self.values))


@attrs.define
class AttrRule:
    required: bool
    content: Content


@attrs.define
class ChildRule:
    """A child element: its rules, whether it must appear, whether it may repeat."""

    spec: ElementSpec
    required: bool
    repeat: bool
    label: str


@attrs.define(eq=False)
class ElementSpec:
    """What one element may hold."""

    attributes: dict[str, AttrRule] = attrs.field(factory=dict)
    any_attrs: bool = False
    named: dict[str, ChildRule] = attrs.field(factory=dict)  # by Clark name {ns}local
    by_ns: dict[str, ChildRule] = attrs.field(factory=dict)  # any name in that namespace
    any_child: ChildRule | None = None
    text: Content | None = None  # None: no text (other than whitespace)
    node: etree._Element | None = None  # the RelaxNG <element> pattern it was read from

    def child_rule(self, tag: str) -> ChildRule | None:
        """The rule for a child named *tag* (Clark notation), or None when not allowed."""
        if tag in self.named:
            return self.named[tag]
        ns = tag[1:].split("}", 1)[0] if tag.startswith("{") else ""
        return self.by_ns.get(ns, self.any_child)


class Grammar:
    """The rules of a RelaxNG grammar that uses ``domain.rng``'s patterns."""

    def __init__(self, root: etree._Element) -> None:
        self._defines = {d.get("name"): d for d in root.iter(_R + "define")}
        self._specs: dict[etree._Element, ElementSpec] = {}
        start = root.find(_R + "start")
        if start is None:
            raise ValueError("domain.rng: no <start>")
        top = ElementSpec()
        self._collect_children(start, top, optional=False, repeat=False)
        self.start = top  # its children: the allowed root elements

    def _element_spec(self, node: etree._Element) -> ElementSpec:
        spec = self._specs.get(node)
        if spec is None:
            spec = self._specs[node] = ElementSpec(node=node)
            body = node if node.get("name") is not None else node[1:]
            self._collect_children(body, spec, optional=False, repeat=False)
        return spec

    def _collect_children(self, parent: etree._Element | list[etree._Element], spec: ElementSpec,
                          *, optional: bool, repeat: bool) -> None:  # fmt: skip
        for node in parent:
            if isinstance(node.tag, str) and node.tag.startswith(_R):
                self._collect(node, spec, optional=optional, repeat=repeat)

    def _collect(self, node: etree._Element, spec: ElementSpec, *, optional: bool, repeat: bool) -> None:
        kind = node.tag[len(_R):]
        if kind == "element":
            child = self._element_spec(node)
            for name_class in _name_classes(node):
                rule = ChildRule(child, required=not optional, repeat=repeat, label=_label(name_class))
                _add_child(spec, name_class, rule)
        elif kind == "attribute":
            name = node.get("name")
            if name is None:
                if node.find(_R + "anyName") is None:
                    raise ValueError("domain.rng: attribute name classes other than anyName are not understood")
                spec.any_attrs = True
                return
            content = Content()
            _collect_content(self, node, content)
            if not any(isinstance(c.tag, str) for c in node):
                content.any_text = True
            old = spec.attributes.get(name)
            if old is None:
                spec.attributes[name] = AttrRule(required=not optional, content=content)
            else:
                old.required = old.required and not optional
                old.content.any_text |= content.any_text
                old.content.values |= content.values
                old.content.types += content.types
        elif kind in ("optional", "zeroOrMore", "choice"):
            self._collect_children(node, spec, optional=True, repeat=repeat or kind == "zeroOrMore")
        elif kind == "oneOrMore":
            self._collect_children(node, spec, optional=optional, repeat=True)
        elif kind in ("group", "interleave"):
            self._collect_children(node, spec, optional=optional, repeat=repeat)
        elif kind == "ref":
            self._collect_children(self.define(node.get("name")), spec, optional=optional, repeat=repeat)
        elif kind in ("text", "value", "data"):
            if spec.text is None:
                spec.text = Content()
            _collect_content(self, node, spec.text, direct=True)
        elif kind != "empty":
            raise ValueError(f"domain.rng: pattern <{kind}> is not understood here")

    def define(self, name: str | None) -> etree._Element:
        try:
            return self._defines[name]
        except KeyError:
            raise ValueError(f"domain.rng: no define {name!r}") from None


def _collect_content(grammar: Grammar, node: etree._Element, content: Content, *, direct: bool = False) -> None:
    """Add what text *node* (or, unless *direct*, its children) allows to *content*."""
    for item in [node] if direct else list(node):
        if not isinstance(item.tag, str):
            continue
        kind = item.tag[len(_R):]
        if kind == "text":
            content.any_text = True
        elif kind == "value":
            content.values.add(" ".join((item.text or "").split()))
        elif kind == "data":
            params = tuple((p.get("name", ""), p.text or "") for p in item.iter(_R + "param"))
            content.types.append(DataType(item.get("type", ""), params))
        elif kind in ("choice", "group"):
            _collect_content(grammar, item, content)
        elif kind == "ref":
            _collect_content(grammar, grammar.define(item.get("name")), content)
        else:
            raise ValueError(f"domain.rng: <{kind}> is not understood in text content")


def inherited_ns(node: etree._Element) -> str:
    for ancestor in node.iterancestors():
        if ancestor.get("ns") is not None:
            return str(ancestor.get("ns"))
    return ""


NameClass = tuple[str, str]  # ("name", "{ns}local") | ("ns", uri) | ("any", "")


def _name_classes(element: etree._Element) -> list[NameClass]:
    name = element.get("name")
    if name is not None:
        ns = element.get("ns", inherited_ns(element))
        return [("name", f"{{{ns}}}{name}" if ns else name)]
    return _read_name_class(element[0])


def _read_name_class(node: etree._Element) -> list[NameClass]:
    kind = node.tag[len(_R):]
    if kind == "name":
        ns = node.get("ns", inherited_ns(node))
        local = (node.text or "").strip()
        return [("name", f"{{{ns}}}{local}" if ns else local)]
    if kind == "nsName" and len(node) == 0:
        return [("ns", node.get("ns", inherited_ns(node)))]
    if kind == "anyName" and len(node) == 0:
        return [("any", "")]
    if kind == "choice":
        return [nc for child in node for nc in _read_name_class(child)]
    raise ValueError(f"domain.rng: name class <{kind}> is not understood")


def _label(name_class: NameClass) -> str:
    kind, value = name_class
    if kind == "name":
        return value.rsplit("}", 1)[-1]
    return "any element" if kind == "any" else f"any element in namespace {value or '(none)'}"


def _add_child(spec: ElementSpec, name_class: NameClass, rule: ChildRule) -> None:
    kind, value = name_class
    if kind == "name":
        old = spec.named.get(value)
        if old is not None and old.spec is not rule.spec:
            raise ValueError(f"domain.rng: element {value} is defined twice in one context")
        if old is not None:
            old.required, old.repeat = old.required and rule.required, True
            return
        spec.named[value] = rule
    elif kind == "ns":
        spec.by_ns[value] = rule
    else:
        spec.any_child = rule
