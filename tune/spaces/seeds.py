"""The one rule for seeds, wherever they are given: on a command line (`--seeds 3` for seeds 0, 1,
2, or `--seeds 0,3,7` / `[0, 3, 7]`) or as a YAML list in a search space. Seeds are integers
>= 0, at least one, none repeated. Callers put the message into their own error (naming the
option or the file)."""
from __future__ import annotations

from typing import Any

LIST_RULE = "a non-empty list of integers >= 0 is required, e.g. [0, 1, 2]"
CLI_RULE = "expected a count such as 3 (seeds 0, 1, 2) or a list such as 0,3,7 (integers >= 0)"


class SeedsError(ValueError):
    """Seeds that break the rule; the message says which part."""


def parse_seeds(value: Any, allow_count: bool = True) -> list[int]:
    """The seeds `value` names: a count N (seeds 0..N-1; a command line only) or a list, given
    as a YAML list or as text such as "0,3,7" or "[0, 3]"."""
    rule = CLI_RULE if allow_count else LIST_RULE
    if isinstance(value, str):
        text = value.strip()
        if "," in text or text.startswith("["):
            try:
                value = [int(s) for s in text.strip("[]").split(",") if s.strip()]
            except ValueError:
                raise SeedsError(rule) from None
        elif allow_count:
            try:
                count = int(text)
            except ValueError:
                raise SeedsError(rule) from None
            if count < 1:
                raise SeedsError(f"a count of seeds must be >= 1; {rule}")
            return list(range(count))
    if not isinstance(value, list) or not value or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise SeedsError(rule)
    if len(set(value)) != len(value):
        raise SeedsError("repeats a seed")
    return list(value)
