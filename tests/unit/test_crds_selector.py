"""Calico's selector language: syntax errors say where; evaluation matches Calico's semantics."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crds import SelectorError, parse_selector

LABELS = {"route-reflector": "true", "zone": "b", "projectcalico.org/name": "n1"}


@pytest.mark.parametrize("text, expected", [
    ("", True), ("all()", True), ("route-reflector == 'true'", True),
    ("route-reflector == \"false\"", False), ("zone != 'a'", True), ("missing != 'a'", True),
    ("has(zone)", True), ("!has(zone)", False), ("has(missing)", False),
    ("zone in {'a', 'b'}", True), ("zone in {}", False), ("missing in {'a'}", False),
    ("zone not in {'a','c'}", True), ("missing not in {'a'}", True),
    ("projectcalico.org/name starts with 'n'", True), ("zone ends with 'b'", True),
    ("route-reflector contains 'ru'", True), ("missing contains ''", False),
    ("zone == 'a' || zone == 'b'", True), ("zone == 'b' && !has(route-reflector)", False),
    ("zone == 'a' || zone == 'b' && has(missing)", False),  # && binds tighter than ||
    ("(zone == 'a' || zone == 'b') && has(zone)", True), ("!(zone == 'a')", True),
    ("all == 'x'", False),  # a label may be called "all"
])
def test_evaluation(text, expected):
    assert parse_selector(text).matches(LABELS) is expected


@pytest.mark.parametrize("text, words", [
    ("zone = 'a'", "offset 5"), ("zone == a", "quoted value"), ("has(zone", "')'"),
    ("zone == 'a' &&", "end of the selector"), ("zone in {'a' 'b'}", "',' or '}'"),
    ("zone == 'a' zone", "'&&', '||' or the end"), ("zone @ 'a'", "unexpected character '@'"),
    ("zone starts 'a'", "'starts with'"), ("(zone == 'a'", "')'"), ("zone == 'a", "unexpected"),
])
def test_syntax_errors_say_where_and_what(text, words):
    with pytest.raises(SelectorError, match=words.replace("(", r"\(").replace(")", r"\)")
                       .replace("|", r"\|").replace("{", r"\{").replace("}", r"\}")):
        parse_selector(text)


keys = st.sampled_from(["a", "b", "zone", "x.io/k"])
values = st.sampled_from(["1", "2", "true"])
label_dicts = st.dictionaries(keys, values)
atoms = st.one_of(
    st.builds(lambda k: f"has({k})", keys),
    st.builds(lambda k, v: f"{k} == '{v}'", keys, values),
    st.builds(lambda k, v: f"{k} != '{v}'", keys, values),
    st.builds(lambda k, vs: f"{k} in {{{', '.join(repr(v) for v in vs)}}}", keys, st.lists(values)),
)


@given(atoms, atoms, label_dicts)
def test_boolean_algebra_holds(a, b, labels):
    A, B = parse_selector(a).matches(labels), parse_selector(b).matches(labels)
    assert parse_selector(f"{a} && {b}").matches(labels) == (A and B)
    assert parse_selector(f"{a} || {b}").matches(labels) == (A or B)
    assert parse_selector(f"!({a} || {b})").matches(labels) == \
        parse_selector(f"!({a}) && !({b})").matches(labels)


@given(keys, st.lists(values), label_dicts)
def test_not_in_is_the_negation_of_in(key, vals, labels):
    body = ", ".join(f"'{v}'" for v in vals)
    assert parse_selector(f"{key} not in {{{body}}}").matches(labels) != \
        parse_selector(f"{key} in {{{body}}}").matches(labels)


@given(st.text(max_size=30))
def test_arbitrary_text_parses_or_raises_selector_error(text):
    try:
        parse_selector(text)
    except SelectorError:
        pass
