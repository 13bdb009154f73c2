"""Finding MLflow runs by value: `find_runs` is the one way tune/ searches MLflow by a tag's,
param's or attribute's value, and `quote_filter_value` the one way a value goes into an MLflow
`filter_string`, so that a user's path, experiment name or key with quotes, backslashes or any
unicode finds exactly its runs (an unquoted apostrophe once stopped --resume with "Invalid
clause(s) in filter string"). tune/tracking/runs.py re-exports both."""
from __future__ import annotations

import re


class UnquotableFilterValue(ValueError):
    """A value MLflow's search filter cannot hold exactly (see `quote_filter_value`)."""


# A probe clause after the value: a literal that runs on past its closing quote (a value ending in
# a backslash reads as escaping it) swallows this clause, and the parse shows it.
_PROBE_TAIL = " and tags.`probe_a` = 'x' and tags.`probe_b` = \"y\""


def _reads_back(literal: str, value: str) -> bool:
    """Whether MLflow's own filter parser reads `literal` as exactly `value`, also when more
    clauses follow it."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.search_utils import SearchUtils

    try:
        parsed = SearchUtils.parse_search_filter(f"tags.`probe` = {literal}{_PROBE_TAIL}")
    except MlflowException:
        return False
    return len(parsed) == 3 and parsed[0]["value"] == value and [c["value"] for c in parsed[1:]] == ["x", "y"]


def quote_filter_value(value: str) -> str:
    """`value` as a quoted string for an MLflow `filter_string` (`tags.KEY = VALUE`), such that
    MLflow searches for exactly `value`.

    MLflow's parser takes the text between the quotes as it stands: it undoes no escape (`'it''s'`
    searches for `it''s`), so an apostrophe cannot be escaped, only quoted with the other quote
    (`"d'été runs"`). The first of 'VALUE' and "VALUE" that MLflow's own parser reads back as
    exactly `value` is returned; a value it cannot read back either way (one holding both kinds
    of quote, or ending in a backslash that reads as escaping the closing quote) raises
    UnquotableFilterValue: `find_runs` searches for such a value another way."""
    value = str(value)
    for quote in ("'", '"'):
        literal = f"{quote}{value}{quote}"
        if _reads_back(literal, value):
            return literal
    raise UnquotableFilterValue(f"the value {value!r} cannot be written exactly in an MLflow search filter "
                                f"(MLflow's parser reads it back as another value whichever quote encloses it)")


def _filter_key(field: str) -> str:
    """`tags.KEY`, `params.KEY` or `attributes.KEY` with the key in backticks (a key may hold dots)."""
    kind, _, key = field.partition(".")
    if kind not in ("tags", "params", "attributes") or not key or "`" in key:
        raise ValueError(f"filter field {field!r}: expected tags.KEY, params.KEY or attributes.KEY "
                         f"(no backtick in KEY)")
    return f"{kind}.`{key}`"


def find_runs(client, experiment_ids: list[str], equal: dict[str, str], max_results: int = 50000,
              order_by: list[str] | None = None) -> list:
    """The runs of `experiment_ids` whose fields equal the given values exactly, e.g.
    `{"tags.ray_experiment_path": path, "attributes.status": "FINISHED"}`: the one way tune/
    searches MLflow by value, so that a user's path, experiment name or key with quotes,
    backslashes or any unicode finds its runs.

    Every value is quoted by `quote_filter_value`. A value no quoting can hold exactly is looked
    for with LIKE, its quotes and backslashes as one-character wildcards, and the runs found are
    kept only where the value is equal (LIKE is also case-blind on SQLite); then every page is
    read, so that `max_results` counts exact matches only."""
    clauses, inexact = [], {}
    for field, value in equal.items():
        key = _filter_key(field)
        try:
            clauses.append(f"{key} = {quote_filter_value(value)}")
        except UnquotableFilterValue:
            pattern = re.sub(r"['\"\\]", "_", str(value))
            clauses.append(f"{key} LIKE '{pattern}'")
            inexact[field] = str(value)
    filter_string = " and ".join(clauses)
    if not inexact:
        return list(client.search_runs(experiment_ids, filter_string=filter_string, max_results=max_results,
                                       order_by=order_by))
    found, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=min(max_results, 1000),
                                  order_by=order_by, page_token=token)
        found += [run for run in page if all(_run_field(run, f) == v for f, v in inexact.items())]
        token = page.token
        if not token or len(found) >= max_results:
            return found[:max_results]


def _run_field(run, field: str) -> str | None:
    """The value of `tags.KEY`, `params.KEY` or `attributes.KEY` in a found run."""
    kind, _, key = field.partition(".")
    if kind == "tags":
        return run.data.tags.get(key)
    if kind == "params":
        return run.data.params.get(key)
    return str(getattr(run.info, key, None))
