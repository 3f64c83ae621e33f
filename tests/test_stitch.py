import json

import pytest

from snnet import Cut, Stitch


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "2",
        "0:3-1:4",
        "1:11-2:0",
        "0:3-1:4:7-2:8",
        "0:0-1:0:0-2:0:3-3:5",
        "1:3-0:4",  # large→small
        "1:3-0:4:7-1:8",  # large→small→large
        "0:3-1:4:7-0:8",  # small→large→small
    ],
)
def test_string_and_json_round_trip(text):
    s = Stitch.parse(text)
    assert str(s) == text
    assert Stitch.parse(str(s)) == s
    assert Stitch.from_json(s.to_json()) == s
    assert repr(s) == f"Stitch({text!r})"


def test_value_semantics():
    a, b = Stitch.parse("0:3-1:4"), Stitch.between(0, 3, 1, 4)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a.hops == ((0, 1, Cut(3, 4)),)
    assert a.segments([12, 12]) == ((0, 0, 4), (1, 4, 12))
    assert Stitch.anchor(1).is_anchor and not a.is_anchor
    with pytest.raises(AttributeError):
        a.route = (1,)  # frozen


@pytest.mark.parametrize(
    "bad", ["", "a", "0:1", "0-1", "0:1-2", "0:1:2-1:3", "1:-2:3", "0:1-1:2:3"]
)
def test_bad_strings_explain_the_form(bad):
    with pytest.raises(ValueError, match="stitch"):
        Stitch.parse(bad)


def test_inconsistent_values_are_rejected():
    with pytest.raises(ValueError, match="cuts"):
        Stitch((0, 1), ())
    with pytest.raises(ValueError, match="non-negative"):
        Stitch((0, -1), (Cut(0, 0),))


def test_two_way_routes_as_values():
    s = Stitch.parse("1:3-0:4:7-1:8")
    assert s.route == (1, 0, 1) and s.cuts == (Cut(3, 4), Cut(7, 8))
    assert s.hops == ((1, 0, Cut(3, 4)), (0, 1, Cut(7, 8)))
    assert s.segments([12, 12]) == ((1, 0, 4), (0, 4, 8), (1, 8, 12))
    assert s.to_json() == {"route": [1, 0, 1], "cuts": [[3, 4], [7, 8]]}
    assert Stitch.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert Stitch.parse("0:3-1:4:7-0:8") != Stitch.parse("1:3-0:4:7-1:8")
