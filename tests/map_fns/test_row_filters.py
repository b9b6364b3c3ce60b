"""Score filters on the source's columns: their form, and which rows they keep."""

import math

import pytest

from map_fns.flags import ConfigError
from map_fns.row_filters import RowFilter, filter_reasons, parse_filter, row_filters


@pytest.mark.parametrize("text, column, op, limit", [
    ("punsafe<=0.5", "punsafe", "<=", 0.5),
    (" pwatermark < 0.8 ", "pwatermark", "<", 0.8),
    ("similarity>=0.3", "similarity", ">=", 0.3),
    ("WIDTH>255", "WIDTH", ">", 255.0),
    ("NSFW==0", "NSFW", "==", 0.0),
    ("aesthetic!=-1e3", "aesthetic", "!=", -1000.0),
])
def test_the_forms_of_a_filter(text, column, op, limit):
    assert parse_filter(text) == RowFilter(column, op, limit)


@pytest.mark.parametrize("text", ["punsafe", "punsafe<=", "<=0.5", "punsafe=<0.5", "punsafe<=high", "punsafe<=nan",
                                  "punsafe<=inf", "a b<=1", "punsafe<=0.5 and pwatermark<=0.5", ""])
def test_a_malformed_filter_is_one_line_naming_it(text):
    with pytest.raises(ConfigError) as err:
        parse_filter(text)
    assert "\n" not in str(err.value) and repr(text) in str(err.value)


def test_the_max_flags_are_filters_after_the_given_ones():
    assert row_filters(["WIDTH>=64"], 0.5, None) == [RowFilter("WIDTH", ">=", 64.0), RowFilter("punsafe", "<=", 0.5)]
    assert row_filters([], None, 0.8) == [RowFilter("pwatermark", "<=", 0.8)]
    assert row_filters([], None, None) == []


def test_rows_pass_only_every_filter_and_a_value_it_cannot_judge_fails():
    batch = {"URL": list("abcdefgh"),
             "punsafe": [0.1, 0.5, 0.51, None, math.nan, "0.1", True, 0.2],
             "WIDTH": [300, 300, 300, 300, 300, 300, 300, 10]}
    reasons = filter_reasons([RowFilter("punsafe", "<=", 0.5), RowFilter("WIDTH", ">=", 64)], batch)
    assert reasons[:2] == [None, None]  # 0.5 is not above 0.5
    assert reasons[2] == "punsafe 0.51 fails filter punsafe<=0.5"
    assert reasons[3] == "punsafe is missing (filter punsafe<=0.5)"
    assert reasons[4] == "punsafe nan is not a number (filter punsafe<=0.5)"
    assert reasons[5] == "punsafe '0.1' is not a number (filter punsafe<=0.5)"
    assert reasons[6] == "punsafe True is not a number (filter punsafe<=0.5)"
    assert reasons[7] == "WIDTH 10 fails filter WIDTH>=64"  # the second filter, once the first passed


@pytest.mark.parametrize("op, kept", [("<", [True, False, False]), ("<=", [True, True, False]),
                                      (">", [False, False, True]), (">=", [False, True, True]),
                                      ("==", [False, True, False]), ("!=", [True, False, True])])
def test_each_operator(op, kept):
    reasons = filter_reasons([RowFilter("x", op, 1.0)], {"URL": ["a", "b", "c"], "x": [0.5, 1, 2.0]})
    assert [reason is None for reason in reasons] == kept
