"""The one seed rule (tune/seeds.py) that the search CLI, reproduce.py and search spaces share."""
from __future__ import annotations

import pytest

from tune.seeds import SeedsError, parse_seeds


@pytest.mark.parametrize("value, seeds", [("3", [0, 1, 2]), ("0,3,7", [0, 3, 7]), ("[0, 3]", [0, 3]),
                                          ("5,", [5]), ([2, 0], [2, 0])])
def test_counts_and_lists(value, seeds):
    assert parse_seeds(value) == seeds


@pytest.mark.parametrize("value, message", [
    ("0", "a count of seeds must be >= 1"), ("two", "expected a count such as 3"), ("0,-1", "expected a count"),
    ("1,1", "repeats a seed"), ([], "expected a count"), ([0, True], "integers >= 0"), ("[a]", "expected a count")])
def test_bad_seeds_say_what_is_wrong(value, message):
    with pytest.raises(SeedsError, match=message):
        parse_seeds(value)


def test_a_yaml_list_is_required_where_counts_are_not_allowed():
    assert parse_seeds([0, 1], allow_count=False) == [0, 1]
    for value in (3, "3", []):
        with pytest.raises(SeedsError, match=r"a non-empty list of integers >= 0 is required"):
            parse_seeds(value, allow_count=False)
