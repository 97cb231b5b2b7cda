"""Checking a domain XML tree against the schema's rules, naming each problem and its line.

Two kinds of problem: *unsupported* (an element, attribute or enumerated
value the schema does not list: qmprr would not know what QEMU options it
means) and *invalid* (a required part missing, a repeated one, text where
none belongs, a value of the wrong type). Unsupported parts can be dropped
(``--ignore-unsupported``), invalid ones cannot.
"""

from __future__ import annotations

import attrs
from lxml import etree

from .errors import SchemaError, UnsupportedError
from .grammar import ChildRule, ElementSpec, Grammar

#: Problems named in one error message; the rest are counted.
MAX_LISTED = 5


@attrs.frozen
class Problem:
    line: int
    message: str
    unsupported: bool
    dropped: str = ""  # what --ignore-unsupported drops for it, when more than the part named

    def render(self, source: str) -> str:
        return f"{source}:{self.line}: {self.message}"

    def warning(self, source: str) -> str:
        """The line listed when the part is dropped."""
        return f"{self.render(source)}; ignored{' ' + self.dropped if self.dropped else ''}"


def label(el: etree._Element) -> str:
    """``<prefix:name>`` as the document writes it."""
    local = etree.QName(el).localname
    return f"<{el.prefix}:{local}>" if el.prefix else f"<{local}>"


def check_tree(
    root: etree._Element, grammar: Grammar, *, drop_unsupported: bool, source: str = "<xml>"
) -> list[Problem]:
    """All problems in *root*; with *drop_unsupported*, unsupported parts are removed from the tree."""
    rule = grammar.start.child_rule(root.tag)
    if rule is None:
        raise SchemaError(f"{source}:{root.sourceline}: root element is {label(root)}, not <domain>: not a domain XML")
    problems: list[Problem] = []
    if _visit(root, rule.spec, problems, drop_unsupported):
        # An unsupported value on the root itself (e.g. <domain type='xen'>) cannot be dropped.
        problems[-1] = attrs.evolve(problems[-1], unsupported=False)
    return problems


def raise_for(problems: list[Problem], source: str) -> None:
    """Raise one error naming the *problems* (unsupported only: :class:`UnsupportedError`)."""
    if not problems:
        return
    listed = "; ".join(p.render(source) for p in problems[:MAX_LISTED])
    more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    if all(p.unsupported for p in problems):
        raise UnsupportedError(f"{listed}{more}; --ignore-unsupported drops unsupported parts with a warning")
    raise SchemaError(listed + more)


def _visit(el: etree._Element, spec: ElementSpec, problems: list[Problem], drop: bool) -> bool:
    """Check *el*; True when it has an unsupported value and must go as a whole."""
    line = el.sourceline or 0
    # Linear in the attributes: lxml's items() and del look each one up by a scan (quadratic), so
    # values are fetched only for the attributes the schema names, and dropping rebuilds the set.
    names = el.attrib.keys()
    known = [name for name in names if name in spec.attributes]
    if len(known) < len(names) and not spec.any_attrs:
        for name in names:
            if name not in spec.attributes:
                shown = etree.QName(name).localname
                problems.append(Problem(line, f"unsupported attribute '{shown}' on {label(el)}", True))
        if drop:
            kept = [(name, el.get(name)) for name in known]
            el.attrib.clear()
            for name, value in kept:
                el.set(name, value)
    for name in known:
        attr = spec.attributes[name]
        value = el.get(name)
        why = attr.content.problem(value)
        if why is not None and attr.content.enumerated:
            problems.append(Problem(line, f"unsupported value {name}='{value}' on {label(el)}"
                                    f" (supported: {', '.join(sorted(attr.content.values))})", True,
                                    f"with its whole {label(el)}"))  # fmt: skip
            return True
        if why is not None:
            problems.append(Problem(line, f"attribute {name}='{value}' on {label(el)} {why}", False))
    for name, attr in spec.attributes.items():
        if attr.required and name not in el.attrib:
            problems.append(Problem(line, f"{label(el)} needs attribute '{name}'", False))
    if _check_text(el, spec, problems):
        return True
    _check_children(el, spec, problems, drop)
    return False


def _check_text(el: etree._Element, spec: ElementSpec, problems: list[Problem]) -> bool:
    line = el.sourceline or 0
    pieces = [el.text or ""] + [child.tail or "" for child in el]
    text = "".join(pieces)
    if spec.text is None:
        if text.strip():
            problems.append(Problem(line, f"text {text.strip()[:40]!r} is not allowed in {label(el)}", False))
        return False
    why = spec.text.problem(text)
    if why is None:
        return False
    if spec.text.enumerated:
        problems.append(Problem(line, f"unsupported value '{text.strip()}' in {label(el)}"
                                f" (supported: {', '.join(sorted(spec.text.values))})", True,
                                f"with its whole {label(el)}"))  # fmt: skip
        return True
    problems.append(Problem(line, f"{label(el)} {why}, not {text.strip()[:40]!r}", False))
    return False


def _check_children(el: etree._Element, spec: ElementSpec, problems: list[Problem], drop: bool) -> None:
    seen: dict[int, tuple[ChildRule, list[etree._Element]]] = {}
    for child in list(el):
        if not isinstance(child.tag, str):
            continue  # comments and processing instructions
        rule = spec.child_rule(child.tag)
        if rule is None:
            problems.append(Problem(child.sourceline or 0, f"unsupported element {label(child)} in {label(el)}", True))
            if drop:
                el.remove(child)
            continue
        if _visit(child, rule.spec, problems, drop):
            if drop:
                el.remove(child)
            continue
        seen.setdefault(id(rule), (rule, []))[1].append(child)
    for rule, children in seen.values():
        if not rule.repeat and len(children) > 1:
            first = children[0].sourceline
            problems.append(Problem(children[1].sourceline or 0,
                                    f"{label(children[1])} given again (first at line {first}); only one is allowed",
                                    False))  # fmt: skip
    for name, rule in spec.named.items():
        # A required child still present was reported unsupported already: no second problem.
        if rule.required and id(rule) not in seen and not any(child.tag == name for child in el):
            problems.append(Problem(el.sourceline or 0, f"{label(el)} needs a <{rule.label}> element", False))
