"""Calico's label selector language: parse once, evaluate against a label dict.

Purely computational; no I/O. The grammar is the one Calico's ``libcalico-go/lib/selector`` accepts:
``all()``, ``has(k)``, ``k == 'v'``, ``k != 'v'``, ``k in {'a','b'}``, ``k not in {...}``,
``k contains 's'``, ``k starts with 's'``, ``k ends with 's'``, ``!expr``, ``(expr)``, ``&&``, ``||``
(``&&`` binds tighter). An empty selector matches everything, as in Calico.

>>> rr = parse_selector("route-reflector == 'true' && !has(disabled)")
>>> rr.matches({"route-reflector": "true"}), rr.matches({"route-reflector": "true", "disabled": ""})
(True, False)
>>> parse_selector("zone in {'a', 'b'} || all()").matches({})
True
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Labels = Mapping[str, str]
_Match = Callable[[Labels], bool]

# Longest alternatives first, so "!=" is not read as "!" then "=".
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>'[^']*'|"[^"]*")
  | (?P<op>&&|\|\||==|!=|!|\(|\)|\{|\}|,)
  | (?P<word>[A-Za-z0-9_./\-]+)
""", re.VERBOSE)


class SelectorError(ValueError):
    """Not a selector: the message says where (character offset) and what was expected."""


@dataclass(frozen=True)
class Selector:
    """A parsed selector; ``text`` is what the user wrote, unchanged."""

    text: str
    _match: _Match

    def matches(self, labels: Labels) -> bool:
        return self._match(labels)


def parse_selector(text: str) -> Selector:
    """Parse ``text``; SelectorError naming the offset and the expectation if it is not a selector."""
    if not isinstance(text, str):
        raise SelectorError(f"{text!r} is not a selector string")
    parser = _Parser(_tokens(text))
    match = parser.expression() if parser.tokens else (lambda labels: True)
    if parser.pos < len(parser.tokens):
        raise parser.error("'&&', '||' or the end")
    return Selector(text, match)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, value, offset) for each token; strings lose their quotes."""
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise SelectorError(f"unexpected character {text[pos]!r} at offset {pos}")
        if m.lastgroup == "string":
            out.append(("string", m.group()[1:-1], pos))
        elif m.lastgroup != "space":
            out.append((m.lastgroup, m.group(), pos))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent: expression := term ('||' term)*; term := factor ('&&' factor)*."""

    def __init__(self, tokens: list[tuple[str, str, int]]) -> None:
        self.tokens, self.pos = tokens, 0

    def error(self, expected: str) -> SelectorError:
        if self.pos >= len(self.tokens):
            return SelectorError(f"expected {expected} at the end of the selector")
        _, value, offset = self.tokens[self.pos]
        return SelectorError(f"expected {expected} at offset {offset}, found {value!r}")

    def peek(self, value: str) -> bool:
        return self.pos < len(self.tokens) and self.tokens[self.pos][1] == value \
            and self.tokens[self.pos][0] in ("op", "word")

    def take(self, kind: str, expected: str, value: str | None = None) -> str:
        if self.pos >= len(self.tokens):
            raise self.error(expected)
        tkind, tvalue, _ = self.tokens[self.pos]
        if tkind != kind or (value is not None and tvalue != value):
            raise self.error(expected)
        self.pos += 1
        return tvalue

    def expression(self) -> _Match:
        parts = [self.term()]
        while self.peek("||"):
            self.pos += 1
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else (lambda labels: any(p(labels) for p in parts))

    def term(self) -> _Match:
        parts = [self.factor()]
        while self.peek("&&"):
            self.pos += 1
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else (lambda labels: all(p(labels) for p in parts))

    def factor(self) -> _Match:
        if self.peek("!"):
            self.pos += 1
            inner = self.factor()
            return lambda labels: not inner(labels)
        if self.peek("("):
            self.pos += 1
            inner = self.expression()
            self.take("op", "')'", ")")
            return inner
        if self.peek("all") and self._next_is("("):
            self.pos += 1
            self.take("op", "'('", "(")
            self.take("op", "')'", ")")
            return lambda labels: True
        if self.peek("has") and self._next_is("("):
            self.pos += 1
            self.take("op", "'('", "(")
            key = self.take("word", "a label key")
            self.take("op", "')'", ")")
            return lambda labels: key in labels
        return self.comparison(self.take("word", "a label key, 'all()', 'has(', '!' or '('"))

    def _next_is(self, value: str) -> bool:
        return self.pos + 1 < len(self.tokens) and self.tokens[self.pos + 1][1] == value

    def comparison(self, key: str) -> _Match:
        if self.peek("==") or self.peek("!="):
            negate = self.tokens[self.pos][1] == "!="
            self.pos += 1
            value = self.take("string", "a quoted value")
            return lambda labels: (labels.get(key) == value) != negate
        if self.peek("in") or self.peek("not"):
            return self._membership(key)
        for words, test in _STRING_TESTS:
            if self.peek(words[0]):
                for word in words:
                    self.take("word", f"'{' '.join(words)}'", word)
                value = self.take("string", "a quoted value")
                return lambda labels, t=test: key in labels and t(labels[key], value)
        raise self.error("'==', '!=', 'in', 'not in', 'contains', 'starts with' or 'ends with'")

    def _membership(self, key: str) -> _Match:
        negate = self.peek("not")
        if negate:
            self.pos += 1
        self.take("word", "'in'", "in")
        self.take("op", "'{'", "{")
        values: set[str] = set()
        while not self.peek("}"):
            values.add(self.take("string", "a quoted value or '}'"))
            if not self.peek("}"):
                self.take("op", "',' or '}'", ",")
        self.pos += 1
        # Calico: "k not in {..}" also matches a missing key; "k in {..}" needs the key.
        return lambda labels: (labels.get(key) in values) != negate


_STRING_TESTS: tuple[tuple[tuple[str, ...], Callable[[str, str], bool]], ...] = (
    (("contains",), lambda have, want: want in have),
    (("starts", "with"), lambda have, want: have.startswith(want)),
    (("ends", "with"), lambda have, want: have.endswith(want)),
)
