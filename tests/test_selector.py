from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from labctl.errors import BadRequest, SelectorError
from labctl.selector import Requirement, Selector, parse

RPI = {"board": "rpi4", "site": "lab1", "dut.io/rev": "b-2"}


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("", {}, True),
        (" \t\n", RPI, True),
        ("board=rpi4", RPI, True),
        ("board==rpi4", RPI, True),
        ("board=rpi5", RPI, False),
        ("board=rpi4", {}, False),
        ("board!=rpi5", RPI, True),
        ("board!=rpi4", RPI, False),
        ("board!=rpi4", {}, True),  # like Kubernetes: != matches a missing key
        ("site in (lab1,lab2)", RPI, True),
        ("site in (lab2)", RPI, False),
        ("site in (lab1)", {}, False),
        ("site notin (lab2,lab3)", RPI, True),
        ("site notin (lab1)", RPI, False),
        ("site notin (lab1)", {}, True),
        ("board", RPI, True),
        ("broken", RPI, False),
        ("!broken", RPI, True),
        ("!board", RPI, False),
        ("dut.io/rev=b-2", RPI, True),
        ("board=rpi4, site in (lab1,lab2), !broken", RPI, True),
        ("board=rpi4, site in (lab1,lab2), !broken", {**RPI, "broken": "yes"}, False),
        ("board=rpi4,board=rpi5", RPI, False),
        ("  board = rpi4 ,site   notin(lab2 , lab3 ) , ! broken ", RPI, True),
        ("in=x, notin in (in)", {"in": "x", "notin": "in"}, True),  # keywords are fine as names
        ("board=RPI4", RPI, False),  # case-sensitive
    ],
)
def test_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse(text).matches(labels) is expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("board=rpi4, site in (lab1,lab2), !broken", "board=rpi4,!broken,site in (lab1,lab2)"),
        ("b==1,a", "a,b=1"),
        ("k notin ( z ,a,z )", "k notin (a,z)"),
        ("a!=1, a=1, a, a in (2), !a, a notin (3)", "a=1,a in (2),a,a!=1,a notin (3),!a"),
        ("x=1, x==1", "x=1"),
    ],
)
def test_canonical_form(text: str, canonical: str) -> None:
    sel = parse(text)
    assert str(sel) == canonical
    assert parse(canonical) == sel and hash(parse(canonical)) == hash(sel)


def test_equality_and_repr() -> None:
    assert parse("a=1,b") == Selector([Requirement("b", "exists"), Requirement("a", "=", ("1",))])
    assert parse("a=1") != parse("a=2")
    assert parse("a=1") != "a=1"
    assert repr(parse("b, a")) == "<Selector 'a,b'>"


def test_keys_equal() -> None:
    sel = parse("board=rpi4, rev==b, site in (lab1), x!=y, !broken, has")
    assert sel.keys_equal() == {"board": "rpi4", "rev": "b"}
    sel.keys_equal().clear()  # a copy each time
    assert sel.keys_equal() == {"board": "rpi4", "rev": "b"}
    assert parse("").keys_equal() == {}


def test_bad_requirement_rejected() -> None:
    with pytest.raises(ValueError):
        Selector([Requirement("a", "~", ("1",))])
    with pytest.raises(ValueError):
        Selector([Requirement("a", "in")])


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("board=,x", 7, "expected a value after '='"),
        ("board=", 7, "expected a value after '='"),
        ("board== ", 9, "expected a value after '=='"),
        ("board!=", 8, "expected a value after '!='"),
        ("a===b", 4, "expected a value after '=='"),
        ("a=(b)", 3, "expected a value after '='"),
        ("k in (a", 6, "unclosed '('"),
        ("k in (a,", 6, "unclosed '('"),
        ("k notin (", 9, "unclosed '('"),
        ("k in ()", 7, "'in' needs at least one value"),
        ("k notin ( )", 11, "'notin' needs at least one value"),
        ("k in (,a)", 7, "expected a value after '('"),
        ("k in (a,)", 9, "expected a value after ','"),
        ("k in (a b)", 9, "expected ',' or ')'"),
        ("k in a", 6, "expected '(' after 'in'"),
        ("k notin", 8, "expected '(' after 'notin'"),
        ("bo@rd=x", 3, "invalid character '@' in key"),
        ("@x", 1, "invalid character '@' in key"),
        ("bōard", 2, "invalid character 'ō' in key"),
        ("a=b@c", 4, "invalid character '@' in value"),
        ("k in (a;b)", 8, "invalid character ';' in value"),
        ("a=b,", 4, "trailing ','"),
        ("a=b , ", 5, "trailing ','"),
        ("a,,b", 3, "expected a key"),
        (",a", 1, "expected a key"),
        ("=v", 1, "expected a key"),
        ("!k=v", 3, "'!k' takes no operator or value"),
        ("!k != v", 4, "'!k' takes no operator or value"),
        ("!k in (a)", 4, "'!k' takes no operator or value"),
        ("!=v", 2, "expected a key after '!'"),
        ("!!k", 2, "expected a key after '!'"),
        ("!", 2, "expected a key after '!'"),
        ("a b", 3, "expected '=', '==', '!=', 'in', 'notin', ',' or end of selector"),
        ("k inx (a)", 3, "expected '=', '==', '!=', 'in', 'notin', ',' or end of selector"),
        ("a ! = b", 3, "expected '=', '==', '!=', 'in', 'notin', ',' or end of selector"),
        ("a=b c", 5, "expected ',' or end of selector"),
        ("a=b=c", 4, "expected ',' or end of selector"),
        ("k in (a))", 9, "expected ',' or end of selector"),
    ],
)
def test_errors(text: str, column: int, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse(text)
    err = info.value
    assert err.details == {"selector": text, "column": column}
    assert err.message.splitlines()[0] == f"invalid selector at column {column}: {message}"


def test_error_message_points_at_column() -> None:
    with pytest.raises(SelectorError) as info:
        parse("board=,x")
    assert str(info.value) == (
        "invalid selector at column 7: expected a value after '='\n  board=,x\n        ^"
    )
    assert isinstance(info.value, BadRequest) and info.value.code == "selector"


def test_error_caret_stays_aligned_with_tabs_and_newlines() -> None:
    with pytest.raises(SelectorError) as info:
        parse("a=1,\n\tb@")
    _, shown, caret = str(info.value).splitlines()
    assert shown == "  a=1,  b@" and caret.index("^") == shown.index("@")


def test_bench_script_runs() -> None:
    bench = runpy.run_path(str(Path(__file__).parents[1] / "bench" / "selector.py"))
    ms, matched = bench["bench"](n=120, repeat=1)
    assert ms >= 0 and matched == 10
