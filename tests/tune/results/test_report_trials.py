"""tune/report.py --trials: one row per finished trial, best held-out PGD first, with the weight
health read from the run's own metrics."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from tune.report import build_rows, choose_by, format_trials, trial_table


def _run(name, params, metrics, tags=None):
    return SimpleNamespace(info=SimpleNamespace(run_name=name),
                           data=SimpleNamespace(params=params, metrics=metrics, tags=tags or {}))


RUNS = [
    _run("a", {"meta_optimizer": "adam", "meta_lr": "0.001", "seed": "0"},
         {"best_val_pgd_acc": 0.70, "test_clean_acc": 0.81, "test_pgd_acc": 0.66,
          "weight_std_peak": 0.277, "weight_std_last": 0.0195}),
    _run("b", {"meta_optimizer": "adamw", "meta_lr": "0.01", "seed": "0"},
         {"best_val_pgd_acc": 0.72, "test_clean_acc": 0.80, "test_pgd_acc": 0.67,
          "weight_std_peak": 0.30, "weight_std_last": 0.20}),
    _run("c", {"meta_optimizer": "sgd", "meta_lr": "0.1", "seed": "0"},
         {"best_val_pgd_acc": 0.69, "test_clean_acc": 0.79, "test_pgd_acc": 0.65,
          "weight_std_peak": 1.4, "weight_std_last": 0.5, "weights_collapsed_epoch": 1.0}),
]


def test_trials_are_listed_best_first_with_their_values_and_weight_state():
    header, rows = trial_table(RUNS)
    assert header == ["run", "meta_lr", "meta_optimizer", "held-out PGD (best)", "Clean", "PGD", "w std peak",
                      "w std last", "last/peak", "weights"]
    assert [r[0] for r in rows] == ["b", "a", "c"]
    assert rows[0] == ["b", "0.01", "adamw", "72.00", "80.00", "67.00", "0.3000", "0.2000", "0.67", "alive"]
    assert rows[1][-2:] == ["0.07", "faded"]        # 0.0195 / 0.277
    assert rows[2][-2:] == ["0.36", "collapsed"]    # collapse wins over the ratio


def test_the_weights_column_shows_the_status_the_run_was_tagged_with():
    """A run tracked with the learning statistics carries its status as the `weights` tag
    (untrained or learned, which its final metrics alone cannot rebuild); runs from before keep
    the rule on their metrics."""
    tagged = [_run("u", {"meta_optimizer": "sgd", "meta_lr": "1e-09", "seed": "0"},
                   {"best_val_pgd_acc": 0.73, "test_clean_acc": 0.8, "test_pgd_acc": 0.6,
                    "weight_std_peak": 0.036, "weight_std_last": 0.035}, {"weights": "untrained"}),
              _run("l", {"meta_optimizer": "sgd", "meta_lr": "0.025", "seed": "0"},
                   {"best_val_pgd_acc": 0.71, "test_clean_acc": 0.8, "test_pgd_acc": 0.6,
                    "weight_std_peak": 0.2, "weight_std_last": 0.18}, {"weights": "learned"})]
    _, rows = trial_table([*RUNS, *tagged])
    assert {r[0]: r[-1] for r in rows} == {"u": "untrained", "b": "alive", "l": "learned", "a": "faded",
                                            "c": "collapsed"}


def test_a_parameter_only_some_trials_have_shows_a_dash():
    runs = [*RUNS, _run("d", {"meta_optimizer": "adam", "meta_lr": "0.001", "trades_beta": "6.0", "seed": "0"},
                        {"best_val_pgd_acc": 0.5, "test_clean_acc": 0.7, "test_pgd_acc": 0.4})]
    header, rows = trial_table(runs)
    col = header.index("trades_beta")
    assert [r[col] for r in rows] == ["-", "-", "-", "6.0"]
    assert rows[-1][-4:] == ["-", "-", "-", "-"]    # no learned weights: no weight columns
    text = format_trials(header, rows, "md")
    assert text.splitlines()[0].startswith("| run | meta_lr | meta_optimizer | trades_beta | held-out PGD (best) |")
    assert "| d | 0.001 | adam | 6.0 | 50.00 | 70.00 | 40.00 | - | - | - | - |" in text


def test_a_conditional_param_a_trial_was_never_given_is_a_dash_not_its_default():
    """A BiLAW trial of a space that searches trades_beta only for BiLAW-TRADES logs the default
    6.0 with every other config key; its run's not_searched tag keeps it out of the 6.0 group."""
    metrics = {"best_val_pgd_acc": 0.5, "test_clean_acc": 0.7, "test_pgd_acc": 0.4}
    runs = [_run("p", {"method": "bilaw", "trades_beta": "6.0"}, metrics, {"not_searched": "trades_beta"}),
            _run("q", {"method": "bilaw_trades", "trades_beta": "6.0"}, {**metrics, "test_pgd_acc": 0.5}),
            _run("r", {"method": "bilaw_trades", "trades_beta": "2.0"}, metrics)]
    rows = {row.value: row for row in build_rows(runs, choose_by(runs, "trades_beta"))}
    assert sorted(rows) == ["-", "2.0", "6.0"] and rows["6.0"].n == 1 and rows["-"].n == 1
    assert rows["6.0"].cells["PGD"] == (0.5, 0.0) and rows["-"].cells["PGD"] == (0.4, 0.0)
    header, table = trial_table(runs)
    col = header.index("trades_beta")
    assert {r[0]: r[col] for r in table} == {"p": "-", "q": "6.0", "r": "2.0"}


def test_best_epoch_and_robust_overfitting_are_shown_next_to_each_other():
    metrics = {"best_val_pgd_acc": 0.70, "test_clean_acc": 0.8, "test_pgd_acc": 0.6, "best_epoch": 11.0,
               "robust_overfit_gap": 0.034}
    header, rows = trial_table([_run("a", {"lr": "0.1"}, metrics), _run("b", {"lr": "0.2"}, {**metrics,
                                                                                              "best_epoch": 2.0})])
    i = header.index("best epoch")
    assert header[i + 1] == "overfit gap"
    assert {r[0]: (r[i], r[i + 1]) for r in rows} == {"a": ("12", "3.40"), "b": ("3", "3.40")}  # 1-based, in %


def test_report_rows_carry_wilson_for_one_run_and_t_for_several():
    from tune.report import build_rows, format_csv, format_markdown
    from tune.results.uncertainty import t_interval, wilson_interval

    def run(name, net, clean, pgd):
        return _run(name, {"weight_net": net}, {"test_clean_acc": clean, "test_pgd_acc": pgd, "test_points": 360.0})

    runs = [run("a", "64", 0.9, 0.45), run("b", "128", 0.9, 0.40), run("c", "128", 0.8, 0.50)]
    rows = {r.value: r for r in build_rows(runs, "weight_net")}
    assert rows["64"].intervals["PGD"][:2] == wilson_interval(162, 360) and rows["64"].intervals["AA"] is None
    lo, hi = t_interval([0.9, 0.8])
    assert 0 < lo and hi > 1 and rows["128"].intervals["Clean"][:2] == pytest.approx((lo, 1.0))  # kept in [0, 1]
    text = format_markdown(list(rows.values()), "weight_net")
    lo, hi = wilson_interval(162, 360)
    assert "| 64 | 90.00 [" in text and f"45.00 [{100 * lo:.2f}, {100 * hi:.2f}]" in text
    assert "95% Wilson interval over its test points" in text and "t-interval of the mean (df = n - 1)" in text
    assert "| 64 | 90.00 [" in text and "| -45.00 | 1 |" in text  # one run's gap: no "± 0.00"
    assert text.endswith("; test points per run: Clean 360, PGD 360")
    assert "pgd_lo,pgd_hi" in format_csv(list(rows.values()), "weight_net").splitlines()[0]


def test_a_run_flagged_for_gradient_masking_is_marked():
    metrics = {"best_val_pgd_acc": 0.7, "test_clean_acc": 0.8, "test_pgd_acc": 0.6}
    header, rows = trial_table([_run("a", {"lr": "0.1"}, metrics, {"suspect_gradient_masking": "true"}),
                                _run("b", {"lr": "0.2"}, metrics)])
    assert header[-1] == "gradient masking"
    assert {r[0]: r[-1] for r in rows} == {"a": "suspect", "b": "-"}
    checked = {**metrics, "aa_points": 1000.0}
    few = {**metrics, "aa_points": 100.0}  # the digits workload's AutoAttack points
    header, rows = trial_table([_run("c", {"lr": "0.1"}, checked), _run("d", {"lr": "0.2"}, few),
                                _run("e", {"lr": "0.3"}, metrics)])
    assert header[-1] == "gradient masking"
    assert {r[0]: r[-1] for r in rows} == {"c": "no", "d": "unchecked: 100 AA points, needs 500", "e": "-"}


def test_a_suspect_trial_never_wins_unless_allowed():
    from types import SimpleNamespace as NS

    from tune.results.search_outcome import best_config
    from tune.trainable import META_KEY

    space = NS(metric=["best_val_pgd_acc"], mode=["max"])
    results = [NS(error=None, metrics={"best_val_pgd_acc": 0.9, "suspect_gradient_masking": True},
                  config={"lr": 0.2, META_KEY: {}}),
               NS(error=None, metrics={"best_val_pgd_acc": 0.7}, config={"lr": 0.1, META_KEY: {}})]
    cfg, values = best_config(NS(space=space, seeds=[0], options=NS(allow_suspect=False)), results)
    assert cfg.lr == 0.1 and values == [0.7]
    cfg, values = best_config(NS(space=space, seeds=[0], options=NS(allow_suspect=True)), results)
    assert cfg.lr == 0.2 and values == [0.9]


def test_the_winning_run_is_never_a_flagged_seed_of_the_winning_config():
    from types import SimpleNamespace as NS

    from tune.results.search_outcome import _winner
    from tune.trainable import META_KEY, TRIAL_INDEX_KEY

    space = NS(metric=["best_val_pgd_acc"], mode=["max"])
    meta = {META_KEY: {"seeds": [0, 1]}}
    results = [NS(error=None, metrics={"best_val_pgd_acc": 0.9, "trial_id": "a", "suspect_gradient_masking": True},
                  config={"lr": 0.1, TRIAL_INDEX_KEY: 0, **meta}),
               NS(error=None, metrics={"best_val_pgd_acc": 0.7, "trial_id": "b"},
                  config={"lr": 0.1, TRIAL_INDEX_KEY: 1, **meta})]
    tags = {}
    tracking = NS(parent_run_id="p", client=NS(set_tag=lambda run, k, v: tags.__setitem__(k, v)))
    child_runs = [NS(data=NS(tags={"ray_trial_id": t}), info=NS(run_id=f"run-{t}", run_name=t)) for t in "ab"]
    plan = NS(space=space, seeds=[0, 1], options=NS(allow_suspect=False))
    from tune.results.search_outcome import best_config

    cfg, _ = best_config(plan, results)
    metrics, run_id, best = _winner(plan, results, tracking, cfg, child_runs)
    assert run_id == "run-b" and best is results[1] and metrics["winner_best_val_pgd_acc"] == 0.7
    plan.options.allow_suspect = True
    assert _winner(plan, results, tracking, best_config(plan, results)[0], child_runs)[1] == "run-a"
