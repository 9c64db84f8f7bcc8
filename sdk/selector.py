"""Kubernetes-style label selectors: parse once, then match many label dicts fast.

Requirements are joined by ``,`` (AND); whitespace around tokens is ignored::

    key=value  key==value  key!=value  key in (v1,v2)  key notin (v1,v2)  key  !key

As in Kubernetes, ``!=`` and ``notin`` also match labels that lack the key. Keys and values
are ASCII letters, digits and ``-_./``. Unlike Kubernetes, a value may not be empty
(``key=`` and ``key in ()`` are errors), so a forgotten value is caught, not matched
against ``""``. An empty selector matches everything.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple, NoReturn

from .errors import SelectorError

__all__ = ["Requirement", "Selector", "parse"]

Labels = Mapping[str, str]
_Check = Callable[[Labels], bool]

# Operators, in the order requirements on one key are printed and checked (likely to fail first).
_OPS = ("=", "in", "exists", "!=", "notin", "!exists")
_RANK = {op: i for i, op in enumerate(_OPS)}
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "-_./")
_SPACE = frozenset(" \t\r\n")
_ENDS_NAME = _SPACE | frozenset("=!(),")


class Requirement(NamedTuple):
    """One AND-ed term. ``op`` is one of ``= != in notin exists !exists``."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return f"!{self.key}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        return f"{self.key}{self.op}{self.values[0]}"


def _compile(req: Requirement) -> _Check:
    key, op, values = req
    if op == "exists":
        return lambda labels: key in labels
    if op == "!exists":
        return lambda labels: key not in labels
    if op in ("=", "!=") and len(values) == 1:
        value = values[0]
        if op == "=":
            return lambda labels: labels.get(key) == value
        return lambda labels: labels.get(key) != value
    if op in ("in", "notin") and values:
        allowed = frozenset(values)
        if op == "in":
            return lambda labels: labels.get(key) in allowed
        return lambda labels: labels.get(key) not in allowed
    raise ValueError(f"bad selector requirement {req!r}")


def _order(req: Requirement) -> tuple[str, int, tuple[str, ...]]:
    return req.key, _RANK.get(req.op, len(_OPS)), req.values


class Selector:
    """An immutable AND of requirements; equal selectors have equal ``str()`` and hash."""

    __slots__ = ("_checks", "_equal", "requirements")

    def __init__(self, requirements: Iterable[Requirement] = ()) -> None:
        unique = {Requirement(r.key, r.op, tuple(sorted(set(r.values)))) for r in requirements}
        self.requirements: tuple[Requirement, ...] = tuple(sorted(unique, key=_order))
        # Checks run in operator order: equality first, since it rejects most devices.
        by_op = sorted(self.requirements, key=lambda r: _RANK.get(r.op, len(_OPS)))
        self._checks: tuple[_Check, ...] = tuple(_compile(r) for r in by_op)
        self._equal = {r.key: r.values[0] for r in self.requirements if r.op == "="}

    def matches(self, labels: Labels) -> bool:
        """Whether ``labels`` satisfies every requirement."""
        # A plain loop: about twice as fast as all() over a generator, which allocates.
        for check in self._checks:  # noqa: SIM110
            if not check(labels):
                return False
        return True

    def keys_equal(self) -> dict[str, str]:
        """The ``key=value`` requirements, for index look-ups; still call ``matches`` after."""
        return dict(self._equal)

    def __str__(self) -> str:
        return ",".join(map(str, self.requirements))

    def __repr__(self) -> str:
        return f"<Selector {str(self)!r}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Selector):
            return NotImplemented
        return self.requirements == other.requirements

    def __hash__(self) -> int:
        return hash(self.requirements)


def parse(text: str) -> Selector:
    """Parse ``text``; a SelectorError's message points at the first offending character."""
    return Selector(_Parser(text).selector())


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, pos: int | None = None) -> NoReturn:
        pos = self.pos if pos is None else pos
        shown = "".join(" " if c in _SPACE else c for c in self.text)  # keeps the caret aligned
        raise SelectorError(
            f"invalid selector at column {pos + 1}: {message}\n  {shown}\n  {' ' * pos}^",
            {"selector": self.text, "column": pos + 1},
        )

    def skip_space(self) -> str:
        """Skip whitespace; return the next character, or ``""`` at the end."""
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in _SPACE:
            pos += 1
        self.pos = pos
        return text[pos] if pos < len(text) else ""

    def name(self, noun: str, after: str = "") -> str:
        self.skip_space()
        start = end = self.pos
        while end < len(self.text) and self.text[end] in _NAME_CHARS:
            end += 1
        self.pos = end
        if end < len(self.text) and self.text[end] not in _ENDS_NAME:
            self.fail(f"invalid character {self.text[end]!r} in {noun}")
        if end == start:
            self.fail(f"expected a {noun}{after}")
        return self.text[start:end]

    def keyword(self) -> str:
        for word in ("in", "notin"):
            end = self.pos + len(word)
            if self.text.startswith(word, self.pos) and self.text[end : end + 1] not in _NAME_CHARS:
                self.pos = end
                return word
        return ""

    def selector(self) -> list[Requirement]:
        if not self.skip_space():
            return []
        requirements = [self.requirement()]
        while next_char := self.skip_space():
            if next_char != ",":
                self.fail("expected ',' or end of selector")
            comma = self.pos
            self.pos += 1
            if not self.skip_space():
                self.fail("trailing ','", comma)
            requirements.append(self.requirement())
        return requirements

    def requirement(self) -> Requirement:
        if self.skip_space() == "!":
            self.pos += 1
            key = self.name("key", " after '!'")
            if self.skip_space() not in ("", ","):
                self.fail(f"'!{key}' takes no operator or value")
            return Requirement(key, "!exists")
        key = self.name("key")
        if self.skip_space() in ("", ","):
            return Requirement(key, "exists")
        for op in ("==", "!=", "="):
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                value = self.name("value", f" after '{op}'")
                return Requirement(key, "=" if op == "==" else op, (value,))
        if word := self.keyword():
            return Requirement(key, word, self.values(word))
        self.fail("expected '=', '==', '!=', 'in', 'notin', ',' or end of selector")

    def values(self, op: str) -> tuple[str, ...]:
        if self.skip_space() != "(":
            self.fail(f"expected '(' after '{op}'")
        opened = self.pos
        self.pos += 1
        if self.skip_space() == ")":
            self.fail(f"'{op}' needs at least one value")
        values: list[str] = []
        after = "'('"
        while True:
            if not self.skip_space():
                self.fail("unclosed '('", opened)
            values.append(self.name("value", f" after {after}"))
            next_char = self.skip_space()
            if next_char == ")":
                self.pos += 1
                return tuple(values)
            if next_char == ",":
                self.pos += 1
                after = "','"
            elif next_char:
                self.fail("expected ',' or ')'")
