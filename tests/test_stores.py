"""The search's stores under hostile names and real faults (issue 24): every value that goes into
an MLflow search filter is quoted so that MLflow's own parser finds exactly it; a storage path
with an apostrophe runs and resumes; a damaged MLflow or Optuna store, a full disk and a wrong
--state-dir each stop with one `error:` line that says what is intact and how to go on."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tune.run_search import main
from tune.tracking import UnquotableFilterValue, find_runs, quote_filter_value

# Each is a value a user's path, experiment name or run key may hold.
HOSTILE = ["d'été runs", 'a"b', "back\\slash", "ends in a backslash\\", "ünïcødé ✓ 実験", "a'b\"c",
           "x\\'y", "it''s", "100% _sure_", "/tmp/d'été runs/ablation_capacity", "both'\"\\"]


@pytest.mark.parametrize("value", HOSTILE)
def test_quoted_values_read_back_exactly_by_mlflows_parser(value):
    from mlflow.utils.search_utils import SearchUtils

    try:
        literal = quote_filter_value(value)
    except UnquotableFilterValue as exc:
        # only these may be refused (find_runs looks for them another way, tested below)
        assert ("'" in value and '"' in value) or value.endswith("\\"), value
        assert repr(value) in str(exc)
        return
    parsed = SearchUtils.parse_search_filter(f"tags.`k` = {literal} and attributes.status = 'RUNNING'")
    assert [c["value"] for c in parsed] == [value, "RUNNING"]


def test_find_runs_finds_each_hostile_value_exactly_in_a_real_store(tmp_path):
    """One run per hostile value (and decoys that differ by case or by a wildcard's character), in
    a real SQLite store: searching for a value finds its own run and no other."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("d'été \"runs\"")
    decoys = ["D'ÉTÉ RUNS", "d_été runs", 'a_b', "both_\"\\", "both'_\\", "x\\_y"]
    ids = {v: client.create_run(exp, tags={"ray_experiment_path": v}).info.run_id for v in HOSTILE + decoys}
    client.set_terminated(ids["d'été runs"], "FINISHED")
    for value in HOSTILE:
        found = find_runs(client, [exp], {"tags.ray_experiment_path": value})
        assert [r.info.run_id for r in found] == [ids[value]], value
    assert find_runs(client, [exp], {"tags.ray_experiment_path": "d'été runs", "attributes.status": "RUNNING"}) == []
    finished = find_runs(client, [exp], {"tags.ray_experiment_path": "d'été runs", "attributes.status": "FINISHED"})
    assert [r.info.run_id for r in finished] == [ids["d'été runs"]]
    # a value that needs the LIKE search: the decoys LIKE also matches are dropped, max_results counts matches
    assert [r.info.run_id for r in find_runs(client, [exp], {"tags.ray_experiment_path": "a'b\"c"}, max_results=1)] \
        == [ids["a'b\"c"]]
    assert find_runs(client, [exp], {"tags.ray_experiment_path": "not there"}) == []


def test_filter_keys_are_checked():
    with pytest.raises(ValueError, match="tags.KEY, params.KEY or attributes.KEY"):
        find_runs(None, ["0"], {"ray_experiment_path": "x"})


def _runs(uri: str, experiment: str) -> tuple[list, list]:
    """(parent runs, child runs) of an experiment."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


@pytest.mark.slow
def test_a_search_under_a_path_with_an_apostrophe_runs_and_resumes(tmp_path, capfd):
    """The storage path and the tracking database under `d'été runs`: the search runs, and its
    --resume finds the parent run by that path (it died with "Invalid clause(s) in filter
    string" when the path went into the filter unquoted)."""
    root = tmp_path / "d'été runs"
    uri = f"sqlite:///{root / 'mlruns.db'}"
    argv = ["--space", "ablation_capacity", "--workload", "smoke", "--storage-path", str(root / "rr"),
            "--tracking-uri", uri]
    assert main(argv) == 0
    capfd.readouterr()
    assert main([*argv, "--resume"]) == 0
    out = capfd.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text and "Invalid clause" not in text
    assert "error:" not in text
    parents, children = _runs(uri, "ablation_capacity")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["ray_experiment_path"] == str(root / "rr" / "ablation_capacity")
    assert sorted(r.data.params["weight_net"] for r in children) == ["128", "256", "64", "64-64"]
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
               for r in children)
