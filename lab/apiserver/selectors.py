"""Label and field selectors as the API server parses them (``k8s.io/apimachinery/pkg/labels``).

Purely computational; no I/O.

>>> sel = parse_label_selector("app=web,tier in (a, b),!legacy")
>>> sel({"app": "web", "tier": "b"}), sel({"app": "web", "tier": "c"})
(True, False)
>>> parse_field_selector("metadata.name=x")({"metadata": {"name": "x"}})
True
"""
from __future__ import annotations

import re
from collections.abc import Callable

Matcher = Callable[[dict], bool]

_TOKEN = re.compile(r"\s*(!=|==|=|\(|\)|,|!|[A-Za-z0-9_./-]+)")


class SelectorError(ValueError):
    """The selector does not parse; the message is what the API server answers (400)."""


def _tokens(text: str) -> list[str]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise SelectorError(f"unable to parse requirement: unexpected {text[pos:]!r}")
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


def parse_label_selector(text: str | None) -> Matcher:
    """``key=v``, ``key==v``, ``key!=v``, ``key in (a,b)``, ``key notin (a)``, ``key``, ``!key``."""
    if not text or not text.strip():
        return lambda labels: True
    tokens = _tokens(text)
    requirements: list[Matcher] = []
    pos = 0
    while pos < len(tokens):
        requirement, pos = _requirement(tokens, pos)
        requirements.append(requirement)
        if pos < len(tokens):
            if tokens[pos] != ",":
                raise SelectorError(f"found '{tokens[pos]}', expected: ',' or 'end of string'")
            pos += 1
            if pos == len(tokens):
                raise SelectorError("found '', expected: identifier")
    return lambda labels: all(r(labels or {}) for r in requirements)


def _requirement(tokens: list[str], pos: int) -> tuple[Matcher, int]:
    if tokens[pos] == "!":
        key = _identifier(tokens, pos + 1)
        return (lambda labels: key not in labels), pos + 2
    key = _identifier(tokens, pos)
    pos += 1
    op = tokens[pos] if pos < len(tokens) else ","
    if op == ",":
        return (lambda labels: key in labels), pos
    if op in ("=", "==", "!="):
        value = tokens[pos + 1] if pos + 1 < len(tokens) and tokens[pos + 1] != "," else ""
        _check_value(value)
        step = 2 if value else 1
        if op == "!=":
            return (lambda labels: labels.get(key) != value), pos + step
        return (lambda labels: labels.get(key) == value), pos + step
    if op in ("in", "notin"):
        values, pos = _value_set(tokens, pos + 1)
        if op == "in":
            return (lambda labels: labels.get(key) in values), pos
        return (lambda labels: labels.get(key) not in values), pos
    raise SelectorError(f"found '{op}', expected: in, notin, =, ==, !=, or end of string")


def _identifier(tokens: list[str], pos: int) -> str:
    if pos >= len(tokens) or tokens[pos] in ("!", "=", "==", "!=", "(", ")", ","):
        found = tokens[pos] if pos < len(tokens) else ""
        raise SelectorError(f"found '{found}', expected: identifier")
    return tokens[pos]


def _check_value(value: str) -> None:
    if value in ("(", ")", "!", "=", "==", "!="):
        raise SelectorError(f"found '{value}', expected: identifier")


def _value_set(tokens: list[str], pos: int) -> tuple[frozenset[str], int]:
    if pos >= len(tokens) or tokens[pos] != "(":
        raise SelectorError("found '', expected: '('")
    values: set[str] = set()
    pos += 1
    while pos < len(tokens) and tokens[pos] != ")":
        if tokens[pos] != ",":
            _check_value(tokens[pos])
            values.add(tokens[pos])
        pos += 1
    if pos >= len(tokens):
        raise SelectorError("found '', expected: ')'")
    return frozenset(values), pos + 1


def parse_field_selector(text: str | None, allowed: frozenset[str] = frozenset(
        {"metadata.name", "metadata.namespace"})) -> Matcher:
    """``field=v``, ``field==v``, ``field!=v`` joined by commas, over the object's dotted paths."""
    if not text or not text.strip():
        return lambda obj: True
    terms: list[Matcher] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([A-Za-z0-9_.]+)\s*(!=|==|=)\s*(.*?)\s*", part)
        if not match:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = match.groups()
        if field not in allowed:
            raise SelectorError(f'field label not supported: {field}')
        terms.append(_field_term(field.split("."), op == "!=", value))
    return lambda obj: all(t(obj) for t in terms)


def _field_term(path: list[str], negate: bool, value: str) -> Matcher:
    def matches(obj: dict) -> bool:
        node = obj
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        actual = "" if node is None else str(node)
        return (actual != value) if negate else (actual == value)
    return matches
