"""`first_trials:` (the configs a searcher tries first) and --sampler-seed, through the search's
own Optuna searcher (no Ray needed to draw trials)."""
from __future__ import annotations

import pytest

from tune import spaces as sp
from tune.plan import Plan
from tune.run_search import parse_options
from tune.search import make_searcher

TPE_SPACES = [name for name, _ in sp.list_spaces() if sp.load_space(name).sampler != "grid"]


def _draws(space: str, tmp_path, seed: int = 0, n: int = 2) -> list[dict]:
    plan = Plan.build(parse_options(["--space", space, "--sampler-seed", str(seed),
                                           "--storage-path", str(tmp_path / f"s{seed}")])[0])
    searcher = make_searcher(plan, tmp_path / f"s{seed}")
    return [searcher.suggest(f"t{i}") for i in range(n)]


@pytest.mark.parametrize("name", TPE_SPACES)
def test_every_shipped_sampled_space_tries_the_papers_setting_first(name, tmp_path):
    space = sp.load_space(name)
    assert space.first_trials, f"{name} lists no first_trials"
    (tmp_path / "s0").mkdir()
    first = _draws(name, tmp_path, n=1)[0]
    assert {k: first[k] for k in space.first_trials[0]} == space.first_trials[0]


def test_the_bilaw_spaces_start_from_the_default_meta_optimiser():
    from bilaw.config.train_config import TrainConfig

    default = TrainConfig()
    assert sp.load_space("bilaw_meta").first_trials[0] == {
        "meta_optimizer": default.meta_optimizer, "meta_lr": default.meta_lr,
        "meta_weight_decay": default.meta_weight_decay, "meta_grad_scale": default.meta_grad_scale}
    assert sp.load_space("bilaw_tpe").first_trials[0]["meta_lr"] == default.meta_lr


def test_sampler_seeds_repeat_and_vary_the_draws(tmp_path):
    for seed in (1, 2):
        (tmp_path / f"s{seed}").mkdir()
    one, two = _draws("bilaw_tpe", tmp_path, 1), _draws("bilaw_tpe", tmp_path, 2)
    assert one[0] == two[0]  # the listed first trial, whatever the seed
    assert one[1] != two[1]
    (tmp_path / "again").mkdir()
    plan = Plan.build(parse_options(["--space", "bilaw_tpe", "--sampler-seed", "1",
                                           "--storage-path", str(tmp_path / "again")])[0])
    searcher = make_searcher(plan, tmp_path / "again")
    assert [searcher.suggest("a"), searcher.suggest("b")] == one  # the same seed: the same trials


SPACE = """description: x
search:
  method: {choice: [bilaw, bilaw_trades]}
  trades_beta: {uniform: [1.0, 10.0], when: {method: [bilaw_trades]}}
  meta_lr: {loguniform: [0.001, 0.1]}
sampler: tpe
num_samples: 4
first_trials:
  - {method: bilaw, trades_beta: 6.0}
  - {methd: bilaw}
  - {method: bilaw_trades, meta_lr: 0.5}
  - {method: bilaw_trades, trades_beta: 6.0, meta_lr: 0.01}
"""


def test_bad_first_trials_are_all_named_at_once(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(SPACE)
    with pytest.raises(sp.SpaceError) as info:
        sp.load_space(str(path))
    msg = str(info.value)
    assert "first_trials[0]: trades_beta: given, but its condition" in msg
    assert "first_trials[1]: unknown searched parameter 'methd'" in msg and "did you mean 'method'" in msg
    assert "first_trials[2]: meta_lr: 0.5 is not a value of loguniform [0.001, 0.1]" in msg
    assert "first_trials[3]" not in msg
    path.write_text(SPACE.split("first_trials")[0].replace("sampler: tpe\nnum_samples: 4\n", "sampler: grid\n")
                    .replace("  trades_beta: {uniform: [1.0, 10.0], when: {method: [bilaw_trades]}}\n", "")
                    .replace("  meta_lr: {loguniform: [0.001, 0.1]}\n", "") + "first_trials:\n  - {method: bilaw}\n")
    with pytest.raises(sp.SpaceError, match="a grid runs every value anyway"):
        sp.load_space(str(path))
