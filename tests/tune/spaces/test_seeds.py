"""The one seed rule (tune/spaces/seeds.py) that the search CLI, reproduce.py and search spaces share."""
from __future__ import annotations

import pytest

from tune.spaces.seeds import SeedsError, parse_seeds


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


def test_each_trial_gets_the_seed_the_search_names():
    from tune.trainable import META_KEY, TRIAL_INDEX_KEY, VARIANT_KEY, trial_config, variant_tags

    one = {"lr": 0.1, META_KEY: {"seeds": [7]}}  # one seed: no repeat index, the seed is still 7
    assert trial_config(one).seed == 7
    repeated = {"lr": 0.1, TRIAL_INDEX_KEY: 1, META_KEY: {"seeds": [3, 5]}}
    assert trial_config(repeated).seed == 5
    variant = {VARIANT_KEY: 1, META_KEY: {"variants": [{"lr": 0.2, "seed": 1}, {"lr": 0.3, "seed": 2}],
                                          "variant_tags": [{"race_config": "a"}, {"race_config": "b"}]}}
    cfg = trial_config(variant)
    assert (cfg.lr, cfg.seed) == (0.3, 2) and variant_tags(variant) == {"race_config": "b"}
    assert variant_tags(one) == {}


def test_a_search_refuses_a_seed_set_by_hand_or_by_its_workload(tmp_path, capsys, monkeypatch):
    from tune.run_search import main

    assert main(["--space", "ablation_capacity", "--workload", "smoke", "--set", "seed=3",
                 "--storage-path", str(tmp_path / "rr")]) == 2
    assert "--set seed=3: a search gives each trial its seed from --seeds; for that seed alone use --seeds '3,'" \
        in capsys.readouterr().err
    space = tmp_path / "s.yaml"
    space.write_text("description: d\nworkload: seeded\nsearch:\n  lr: {choice: [0.1, 0.2]}\nsampler: grid\n")
    workloads = tmp_path / "workloads.yaml"
    workloads.write_text("seeded:\n  description: d\n  config: {dataset: digits, epochs: 1, seed: 4}\n")
    from tune.spaces import catalog

    real = catalog.load_workloads
    monkeypatch.setattr(catalog, "load_workloads", lambda path=None: real(workloads))
    assert main(["--space", str(space), "--storage-path", str(tmp_path / "rr")]) == 2
    assert "the workload 'seeded''s seed=4: a search gives each trial its seed from --seeds" in capsys.readouterr().err
