"""Search spaces and workloads: every shipped file validates, samplers draw inside the declared
distributions, conditions hold, and each kind of broken file gives an error naming file, key, value."""
from __future__ import annotations

import math
import pickle
import textwrap

import optuna
import pytest

from bilaw.config.train_config import ConfigError, TrainConfig
from bilaw.training.trainer import lr_at
from tune import spaces as sp

optuna.logging.set_verbosity(optuna.logging.WARNING)

REQUIRED_SPACES = ("ablation_capacity", "ablation_trades", "ablation_margin_input", "gairat", "wmmr", "mail",
                   "compare_methods", "bilaw_tpe", "pareto")
SHIPPED = [name for name, _ in sp.list_spaces()]
PAPER_SCHEDULE = dict(epochs=100, batch_size=128, lr=0.1, lr_milestones=[0.3, 0.6], pgd_steps=10,
                      eval_pgd_steps=20, aa_samples=1000, meta_val_size=1000, holdout_val_size=1000)
VALID = """\
description: a small valid space
workload: smoke
base: {method: bilaw}
search:
  weight_net: {choice: ["64", "128"]}
sampler: grid
metric: best_val_pgd_acc
mode: max
"""


@pytest.fixture(scope="module")
def workloads() -> dict[str, sp.Workload]:
    return sp.load_workloads()


def write(tmp_path, text: str, name: str = "space.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def space_error(path, loader=sp.load_space) -> str:
    with pytest.raises(sp.SpaceError) as info:
        loader(str(path))
    msg = str(info.value)
    assert str(path) in msg, msg
    return msg


# ----- shipped files ------------------------------------------------------------------------------
def test_list_spaces_has_every_required_space_with_a_description():
    names = [name for name, _ in sp.list_spaces()]
    assert names == sorted(names)
    assert set(REQUIRED_SPACES) <= set(names)
    assert "workloads" not in names
    assert all(description for _, description in sp.list_spaces())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_validates_on_its_default_and_paper_workloads(name, workloads):
    space = sp.load_space(name)
    assert space.name == name and space.path == sp.SPACES_DIR / f"{name}.yaml"
    assert space.workload == "digits" and space.paper_workload in workloads
    assert (space.metric[0], space.mode[0]) == ("best_val_pgd_acc", "max")
    assert (space.grid_size() if space.sampler == "grid" else space.num_samples) >= 1 and space.seeds
    for choice in (None, "paper", "smoke"):
        base = sp.base_config(space, sp.resolve_workload(space, choice, workloads))
        sp.check_space_against_config(space, base)


def test_workloads_are_the_papers_settings(workloads):
    for name, w in workloads.items():
        cfg = TrainConfig.from_dict(w.config).resolved()
        assert w.name == name and w.description
        if name not in ("digits", "smoke", "fmnist_fc1_linf_rank"):
            assert {k: getattr(cfg, k) for k in PAPER_SCHEDULE} == PAPER_SCHEDULE, name
    # the ranking schedule of the meta-optimiser search: the paper's setting cut to 5 epochs, both lr drops in it
    rank = TrainConfig.from_dict(workloads["fmnist_fc1_linf_rank"].config).resolved()
    assert (rank.dataset, rank.model, rank.norm, rank.eps, rank.aa_samples) == ("fashion_mnist", "fc1", "linf", 0.1, 0)
    assert [lr_at(rank, e) for e in range(rank.epochs)] == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.001])
    assert (rank.holdout_val_size, rank.meta_val_size, rank.pgd_steps, rank.eval_pgd_steps) == (1000, 1000, 10, 20)
    mnist_like = {f"{d}_{m}_{n}" for d in ("mnist", "fmnist") for m in ("fc1", "tiny_cnn") for n in ("linf", "l2")}
    cifar = {"cifar10_small_cnn_linf2", "cifar10_small_cnn_linf8", "cifar10_wrn32_linf2", "cifar10_wrn32_linf8",
             "cifar100_wrn32_linf8"}
    assert mnist_like | cifar | {"digits", "smoke"} <= set(workloads)
    fm = TrainConfig.from_dict(workloads["fmnist_tiny_cnn_l2"].config)
    assert (fm.dataset, fm.model, fm.norm, fm.eps) == ("fashion_mnist", "tiny_cnn", "l2", 0.3)
    assert workloads["cifar10_small_cnn_linf2"].config["eps"] == 0.0078
    c100 = TrainConfig.from_dict(workloads["cifar100_wrn32_linf8"].config)
    assert (c100.dataset, c100.model, c100.eps) == ("cifar100", "wrn32_10", 0.031)
    digits, smoke = (TrainConfig.from_dict(workloads[n].config) for n in ("digits", "smoke"))
    assert (digits.epochs, digits.batch_size, digits.aa_attacks, digits.aa_n_iter) == (10, 32, ["apgd-ce", "apgd-t"], 20)
    assert (smoke.epochs, smoke.aa_samples, smoke.aa_attacks) == (2, 16, ["apgd-ce"])
    # YAML anchors share lists between workloads; each workload must own its copy
    workloads["mnist_fc1_l2"].config["lr_milestones"].append(0.9)
    assert workloads["mnist_fc1_linf"].config["lr_milestones"] == [0.3, 0.6]


def test_grid_values_and_sizes():
    cap = sp.load_space("ablation_capacity")
    assert cap.grid_values() == {"weight_net": ["128", "64", "64-64", "256"]}
    assert cap.grid_size() == 4 and cap.num_samples is None
    assert sp.load_space("compare_methods").grid_size() == 9
    assert sp.load_space("ablation_trades").grid_values() == {"trades_beta": [1.0, 5.0, 6.0, 10.0]}
    tpe = sp.load_space("bilaw_tpe")
    with pytest.raises(sp.SpaceError, match="only sampler 'grid'"):
        tpe.grid_values()


def test_describe():
    space = sp.load_space("bilaw_tpe")
    assert space.params["weight_net"].describe() == "choice ['64', '128', '256', '64-64']"
    assert space.params["meta_lr"].describe() == "loguniform [0.0025, 0.25]"
    assert space.params["trades_beta"].describe() == "uniform [1.0, 10.0] when method in ['bilaw_trades']"


# ----- define-by-run with real Optuna studies --------------------------------------------------
def make_study(space: sp.SearchSpace) -> optuna.Study:
    samplers = {
        "grid": lambda: optuna.samplers.GridSampler(space.grid_values(), seed=0),
        "tpe": lambda: optuna.samplers.TPESampler(seed=0, n_startup_trials=3),
        "random": lambda: optuna.samplers.RandomSampler(seed=0),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=0, population_size=4),
    }
    return optuna.create_study(sampler=samplers[space.sampler](), directions=["maximize"] * len(space.metric))


def inside(p: sp.Param, value) -> bool:
    if p.kind == "choice":
        return value in p.values
    if p.kind == "int":
        return isinstance(value, int) and p.low <= value <= p.high
    return p.low <= value <= p.high


@pytest.mark.parametrize("name", SHIPPED)
def test_define_by_run_draws_inside_the_distributions(name, workloads):
    space = sp.load_space(name)
    base = sp.base_config(space, workloads["smoke"])
    fn, study = sp.define_by_run(space, base), make_study(space)
    unconditioned = {k for k, p in space.params.items() if not p.when}

    def objective(trial: optuna.Trial) -> list[float]:  # optimize(), not ask/tell: GridSampler
        assert fn(trial) is None                         # calls study.stop() once exhausted
        for key, value in trial.params.items():
            assert inside(space.params[key], value), (key, value)
        assert unconditioned <= set(trial.params)
        return [0.1 * (trial.number % 3)] * len(space.metric)

    n = space.grid_size() if space.sampler == "grid" else min(space.num_samples, 8)
    study.optimize(objective, n_trials=n)
    assert len(study.trials) == n
    if space.sampler == "grid":  # every grid point exactly once
        seen = {tuple(t.params[k] for k in space.params) for t in study.trials}
        assert len(seen) == space.grid_size()


def test_when_param_is_sampled_only_when_its_condition_holds(workloads):
    space = sp.load_space("bilaw_tpe")
    fn = sp.define_by_run(space, sp.base_config(space, workloads["digits"]))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    methods = []
    for _ in range(30):
        trial = study.ask()
        fn(trial)
        methods.append(trial.params["method"])
        assert ("trades_beta" in trial.params) == (trial.params["method"] == "bilaw_trades")
        study.tell(trial, 0.5)
    assert set(methods) == {"bilaw", "bilaw_trades"}


def test_when_on_an_unsearched_key_reads_the_base_config(tmp_path, workloads):
    path = write(tmp_path, """\
        description: mail only
        base: {method: mail}
        search:
          lr: {loguniform: [1e-3, 1e-1]}
          mail_gamma: {uniform: [1, 10], when: {method: [mail]}}
        sampler: random
        num_samples: 3
        """)
    space = sp.load_space(str(path))
    assert space.name == "space" and space.workload == "digits"
    assert (space.params["lr"].low, space.params["lr"].high) == (0.001, 0.1)  # YAML reads 1e-3 as text
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for method, expected in (("mail", {"lr", "mail_gamma"}), ("at", {"lr"})):
        trial = study.ask()
        sp.define_by_run(space, {"method": method})(trial)
        assert set(trial.params) == expected
    with pytest.raises(sp.SpaceError, match=r"search\.mail_gamma\.when\.method.*never holds.*'at'"):
        sp.check_space_against_config(space, sp.base_config(space, workloads["digits"], {"method": "at"}))


def test_choice_values_take_the_keys_type(tmp_path, workloads):
    space = sp.load_space(str(write(tmp_path, """\
        description: types
        search:
          weight_net: {choice: [128, 64-64]}
          trades_beta: {choice: [1, 6]}
          lr_milestones: {choice: [[0.3, 0.6], [0.5, 0.75]]}
          wmmr_detach: {choice: [true, false]}
        sampler: grid
        """)))
    assert space.grid_values() == {"weight_net": ["128", "64-64"], "trades_beta": [1.0, 6.0],
                                   "lr_milestones": ["[0.3, 0.6]", "[0.5, 0.75]"], "wmmr_detach": [True, False]}
    assert space.grid_size() == 16
    sp.check_space_against_config(space, sp.base_config(space, workloads["smoke"]))
    assert TrainConfig.from_dict({"lr_milestones": "[0.5, 0.75]"}).lr_milestones == [0.5, 0.75]


def test_define_by_run_pickles_and_suggests_the_same_params(workloads):
    """Ray pickles the searcher, and with it this function, into its experiment snapshots."""
    space = sp.load_space("bilaw_tpe")
    fn = sp.define_by_run(space, sp.base_config(space, workloads["digits"]))
    data = pickle.dumps(fn)
    assert sp.DefineByRun.__module__ == "tune.spaces" and b"tune.spaces." in data  # the path old snapshots name
    again = pickle.loads(data)
    assert type(again) is sp.DefineByRun and again.base == fn.base and again.ordered == fn.ordered
    fixed = {"method": "bilaw_trades", "weight_net": "64-64", "margin_input": "margin", "trades_beta": 3.5,
             "meta_lr": 0.005, "meta_interval": 2}
    for params in (fixed, {**fixed, "method": "bilaw"}):
        trials = [optuna.trial.FixedTrial(params) for _ in range(2)]
        fn(trials[0]), again(trials[1])
        assert trials[0].params == trials[1].params
        assert ("trades_beta" in trials[1].params) == (params["method"] == "bilaw_trades")
    drawn = []  # and the same draws from equally seeded studies
    for f in (fn, again):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        trials = [study.ask() for _ in range(5)]
        for trial in trials:
            f(trial)
        drawn.append([trial.params for trial in trials])
    assert drawn[0] == drawn[1]


# ----- broken spaces: one per rule --------------------------------------------------------------
def replace(**changes: str) -> str:
    """VALID with top-level entries replaced (value None removes the key)."""
    lines, skip = [], False
    for line in VALID.splitlines():
        key = line.split(":")[0] if not line.startswith(" ") else None
        if key is not None:
            skip = key in changes
            if skip and changes[key] is not None:
                lines.append(f"{key}: {changes[key]}")
        if not skip:
            lines.append(line)
    lines += [f"{k}: {v}" for k, v in changes.items() if v is not None and f"{k}:" not in VALID]
    return "\n".join(lines) + "\n"


TPE = dict(sampler="tpe", num_samples="4")
BROKEN = {
    "unknown top-level key": (replace(samplr="grid"), ["samplr", "did you mean 'sampler'"]),
    "missing description": (replace(description=None), ["description", "None"]),
    "search key not a config key": (replace(search="{weight_nett: {choice: ['64']}}"),
                                    ["search.weight_nett", "did you mean 'weight_net'"]),
    "seed searched": (replace(search="{seed: {choice: [0, 1]}}"), ["search.seed", "seeds"]),
    "empty search": (replace(search="{}"), ["search", "non-empty"]),
    "unknown distribution": (replace(**TPE, search="{lr: {logunifrom: [0.01, 0.1]}}"),
                             ["search.lr.logunifrom", "did you mean 'loguniform'"]),
    "two distributions": (replace(**TPE, search="{lr: {uniform: [0.1, 0.2], choice: [0.1]}}"),
                          ["search.lr", "exactly one distribution"]),
    "not a distribution": (replace(**TPE, search="{lr: 0.1}"), ["search.lr", "0.1", "uniform: [low, high]"]),
    "reversed bounds": (replace(**TPE, search="{lr: {uniform: [0.5, 0.1]}}"),
                        ["search.lr.uniform", "[0.5, 0.1]", "low < high"]),
    "equal bounds": (replace(**TPE, search="{meta_interval: {int: [2, 2]}}"), ["search.meta_interval.int", "2 >= high 2"]),
    "loguniform low 0": (replace(**TPE, search="{lr: {loguniform: [0, 0.1]}}"),
                         ["search.lr.loguniform", "[0, 0.1]", "low > 0"]),
    "bounds not numbers": (replace(**TPE, search="{lr: {uniform: [a, 0.1]}}"), ["search.lr.uniform", "'a'", "two finite"]),
    "int bounds not whole": (replace(**TPE, search="{meta_interval: {int: [1, 2.5]}}"),
                             ["search.meta_interval.int", "2.5", "whole numbers"]),
    "empty choice": (replace(search="{weight_net: {choice: []}}"), ["search.weight_net.choice", "[]", "non-empty"]),
    "repeated choice": (replace(search="{weight_net: {choice: ['64', 64]}}"), ["search.weight_net.choice", "'64'", "twice"]),
    "list for a scalar key": (replace(search="{lr: {choice: [[0.1]]}}"), ["search.lr.choice", "[0.1]", "single value"]),
    "unknown sampler": (replace(sampler="tpee"), ["sampler", "tpee", "did you mean 'tpe'"]),
    "unknown metric": (replace(metric="best_val_pgd"), ["metric", "best_val_pgd", "did you mean 'best_val_pgd_acc'"]),
    "bad mode": (replace(mode="maximize"), ["mode", "maximize", "max, min"]),
    "metric/mode lengths": (replace(sampler="nsga2", num_samples="4", metric="[best_val_pgd_acc, val_clean_acc]"),
                            ["mode", "'max'", "one mode per metric"]),
    "nsga2 with one metric": (replace(sampler="nsga2", num_samples="4"), ["metric", "'nsga2'", "exactly 2"]),
    "tpe with two metrics": (replace(**TPE, metric="[best_val_pgd_acc, val_clean_acc]", mode="[max, max]"),
                             ["metric", "'tpe'", "exactly 1"]),
    "grid with uniform": (replace(search="{lr: {uniform: [0.01, 0.1]}}"), ["search.lr", "grid", "'uniform'"]),
    "grid with when": (replace(search="{weight_net: {choice: ['64'], when: {method: [bilaw]}}}"),
                       ["search.weight_net.when", "grid", "conditional"]),
    "grid num_samples not the grid size": (replace(num_samples="3"), ["num_samples", "3", "grid size 2"]),
    "num_samples 0": (replace(sampler="tpe", num_samples="0"), ["num_samples", "0", ">= 1"]),
    "num_samples missing": (replace(sampler="random"), ["num_samples", "missing", "'random'"]),
    "seeds empty": (replace(seeds="[]"), ["seeds", "[]", "non-empty list"]),
    "seeds negative": (replace(seeds="[0, -1]"), ["seeds", "[0, -1]", ">= 0"]),
    "seeds not a list": (replace(seeds="0"), ["seeds", "0", "list"]),
    "seeds repeated": (replace(seeds="[1, 1]"), ["seeds", "[1, 1]", "repeats"]),
    "unknown scheduler": (replace(scheduler="hyperband"), ["scheduler", "hyperband", "asha"]),
    "unknown asha option": (replace(scheduler="{asha: {grace: 2}}"), ["scheduler.asha.grace", "grace_period"]),
    "asha grace 0": (replace(scheduler="{asha: {grace_period: 0}}"), ["scheduler.asha.grace_period", "0", ">= 1"]),
    "asha factor 1": (replace(scheduler="{asha: {reduction_factor: 1}}"), ["scheduler.asha.reduction_factor", "1", ">= 2"]),
    "asha with nsga2": (replace(sampler="nsga2", num_samples="4", metric="[best_val_pgd_acc, val_clean_acc]",
                                mode="[max, max]", scheduler="asha"), ["scheduler", "nsga2", "Pareto"]),
    "asha with seeds": (replace(scheduler="asha", seeds="[0, 1]"), ["scheduler", "[0, 1]", "one seed"]),
    "asha on a final metric": (replace(scheduler="asha", metric="test_pgd_acc"), ["scheduler", "test_pgd_acc", "per-epoch"]),
    "negative gpu": (replace(resources="{gpu: -1}"), ["resources.gpu", "-1", ">= 0"]),
    "unknown resource": (replace(resources="{memory: 4}"), ["resources.memory", "cpu, gpu"]),
    "max_concurrent 0": (replace(max_concurrent="0"), ["max_concurrent", "0", ">= 1"]),
    "unknown workload": (replace(workload="digts"), ["workload", "digts", "did you mean 'digits'"]),
    "unknown paper workload": (replace(paper_workload="cifar10_wrn32_linf9"),
                               ["paper_workload", "cifar10_wrn32_linf9", "did you mean 'cifar10_wrn32_linf8'"]),
    "unknown base key": (replace(base="{methd: bilaw}"), ["base.methd", "did you mean 'method'"]),
    "when key unknown": (replace(**TPE, search="{trades_beta: {uniform: [1, 5], when: {methd: [bilaw_trades]}}}"),
                         ["search.trades_beta.when.methd", "did you mean 'method'"]),
    "when list empty": (replace(**TPE, search="{trades_beta: {uniform: [1, 5], when: {method: []}}}"),
                        ["search.trades_beta.when.method", "[]", "non-empty"]),
    "when value not searched": (replace(**TPE, search="{method: {choice: [bilaw, bilaw_trades]}, "
                                        "trades_beta: {uniform: [1, 5], when: {method: [bilaw_trade]}}}"),
                                ["search.trades_beta.when.method", "'bilaw_trade'", "searched values"]),
    "malformed yaml": ("description: broken\nsampler: grid\nsearch:\n  weight_net: {choice: ['64'\nmetric: x\n",
                       ["line 5", "malformed YAML"]),
    "not a mapping": ("- a\n- b\n", ["expected a mapping"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_space_names_file_key_and_value(case, tmp_path):
    text, fragments = BROKEN[case]
    msg = space_error(write(tmp_path, text))
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    path = write(tmp_path, replace(samplr="grid", seeds="[0, -1]", resources="{gpu: -1}"))
    with pytest.raises(sp.SpaceError) as info:
        sp.load_space(str(path))
    assert len(info.value.errors) == 3, info.value.errors
    msg = str(info.value)
    assert msg.startswith("3 problems:\n  - "), msg
    for fragment in ("samplr", "did you mean 'sampler'", "seeds: [0, -1]", ">= 0", "resources.gpu: -1"):
        assert fragment in msg, (fragment, msg)
    assert all(line.startswith(f"  - {path}: ") for line in msg.splitlines()[1:]), msg
    again = pickle.loads(pickle.dumps(info.value))  # e.g. sent between Ray processes
    assert again.errors == info.value.errors and str(again) == msg


def test_a_dependent_check_is_skipped_after_the_problem_it_depends_on(tmp_path):
    # an unknown sampler: no grid or num_samples complaints built on a guess of the sampler
    msg = space_error(write(tmp_path, replace(sampler="gird", search="{lr: {uniform: [0.1, 0.2]}}")))
    assert "did you mean 'grid'" in msg and "choice lists" not in msg and "num_samples" not in msg, msg
    # a bad param and a bad seed list are both reported; the grid size is not checked on a broken search
    msg = space_error(write(tmp_path, replace(search="{weight_net: {choice: []}}", seeds="[]", num_samples="5")))
    assert "search.weight_net.choice" in msg and "seeds" in msg and "grid size" not in msg, msg


def test_choice_values_are_converted_as_the_config_converts_them(tmp_path):
    space = sp.load_space(str(write(tmp_path, """\
        description: types
        search:
          trades_beta: {choice: [1e-4, 6]}
          aa_attacks: {choice: [apgd-ce, [apgd-ce, apgd-t], null]}
        sampler: grid
        """)))
    assert space.grid_values() == {"trades_beta": [0.0001, 6.0], "aa_attacks": ["[apgd-ce]", "[apgd-ce, apgd-t]", None]}
    msg = space_error(write(tmp_path, replace(search="{pgd_steps: {choice: [3, true, 2.5]}, lr: {choice: [fast]}}")))
    for fragment in ("search.pgd_steps.choice: pgd_steps: True is not an integer", "2.5 is not an integer",
                     "search.lr.choice: lr: 'fast' is not a number"):
        assert fragment in msg, (fragment, msg)


def test_a_check_against_the_config_lists_every_bad_value(tmp_path, workloads):
    space = sp.load_space(str(write(tmp_path, """\
        description: x
        search:
          weight_net: {choice: ["64", abc, "0-1"]}
          mail_gamma: {uniform: [-1, 5]}
        sampler: tpe
        num_samples: 4
        """)))
    with pytest.raises(sp.SpaceError) as info:
        sp.check_space_against_config(space, sp.base_config(space, workloads["smoke"]))
    assert [e.split(": ")[1:3] for e in info.value.errors] == [
        ["search.weight_net", "value 'abc' gives an invalid config"],
        ["search.weight_net", "value '0-1' gives an invalid config"],
        ["search.mail_gamma", "value -1.0 gives an invalid config"]], info.value.errors


def test_the_valid_template_loads(tmp_path):
    space = sp.load_space(str(write(tmp_path, VALID)))
    assert space.grid_size() == 2 and space.seeds == [0] and space.scheduler is None and space.resources == {}
    asha = sp.load_space(str(write(tmp_path, replace(scheduler="asha", resources="{cpu: 2, gpu: 0.5}"))))
    assert asha.scheduler == {"asha": {"grace_period": 1, "reduction_factor": 2}}
    assert asha.resources == {"cpu": 2.0, "gpu": 0.5}


def test_bad_value_is_caught_against_the_config(tmp_path, workloads):
    space = sp.load_space(str(write(tmp_path, replace(search="{weight_net: {choice: ['64', abc]}}"))))
    with pytest.raises(sp.SpaceError) as info:
        sp.check_space_against_config(space, sp.base_config(space, workloads["smoke"]))
    msg = str(info.value)
    assert all(s in msg for s in (str(space.path), "search.weight_net", "'abc'", "capacity string")), msg


def test_conditional_bound_is_checked_with_its_condition(tmp_path, workloads):
    space = sp.load_space(str(write(tmp_path, """\
        description: x
        search:
          method: {choice: [at, mail]}
          mail_gamma: {uniform: [-1, 5], when: {method: [mail]}}
        sampler: tpe
        num_samples: 4
        """)))
    with pytest.raises(sp.SpaceError, match=r"search\.mail_gamma: value -1\.0 with method='mail'.*mail_gamma"):
        sp.check_space_against_config(space, sp.base_config(space, workloads["smoke"]))


def test_asha_grace_period_must_fit_the_epochs(tmp_path, workloads):
    space = sp.load_space(str(write(tmp_path, replace(scheduler="{asha: {grace_period: 3}}"))))
    sp.check_space_against_config(space, sp.base_config(space, workloads["digits"]))  # 10 epochs
    with pytest.raises(sp.SpaceError, match=r"scheduler\.asha\.grace_period: 3 > epochs 2"):
        sp.check_space_against_config(space, sp.base_config(space, workloads["smoke"]))


def test_unknown_space_name_lists_the_shipped_ones(tmp_path):
    with pytest.raises(sp.SpaceError) as info:
        sp.load_space("ablation_capacty")
    msg = str(info.value)
    assert "did you mean 'ablation_capacity'" in msg and "compare_methods" in msg
    with pytest.raises(sp.SpaceError, match="does not exist"):
        sp.load_space(str(tmp_path / "missing.yaml"))


def test_broken_workloads_file(tmp_path):
    good = "w:\n  description: fine\n  config: {dataset: digits, epochs: 2}\n"
    assert sp.load_workloads(write(tmp_path, good, "wl.yaml"))["w"].config == {"dataset": "digits", "epochs": 2}
    cases = {
        "w:\n  description: bad eps\n  config: {eps: 2.0}\n": ["w.config", "eps", "2.0"],
        "w:\n  description: typo\n  config: {epoch: 2}\n": ["w.config", "did you mean 'epochs'"],
        "w:\n  descripton: x\n  config: {epochs: 2}\n": ["w.descripton", "did you mean 'description'"],
        "w:\n  config: {epochs: 2}\n": ["w.description"],
        "w:\n  description: no config\n": ["w.config", "None"],
        "paper:\n  description: reserved\n  config: {epochs: 2}\n": ["paper", "reserved"],
        "w: [1, 2\n": ["line 2", "malformed YAML"],
    }
    for text, fragments in cases.items():
        msg = space_error(write(tmp_path, text, "wl.yaml"), sp.load_workloads)
        assert all(f in msg for f in fragments), (fragments, msg)


# ----- workloads and base configs ---------------------------------------------------------------
def test_resolve_workload(tmp_path, workloads):
    space = sp.load_space("ablation_capacity")
    assert sp.resolve_workload(space, None, workloads).name == "digits"
    assert sp.resolve_workload(space, "paper", workloads).name == "cifar10_wrn32_linf8"
    assert sp.resolve_workload(space, "mnist_tiny_cnn_l2", workloads).name == "mnist_tiny_cnn_l2"
    assert sp.resolve_workload(sp.load_space("compare_methods"), "paper", workloads).name == "fmnist_fc1_linf"
    with pytest.raises(sp.SpaceError, match=r"--workload: unknown workload 'smok'.*did you mean 'smoke'"):
        sp.resolve_workload(space, "smok", workloads)
    no_paper = sp.load_space(str(write(tmp_path, VALID)))
    with pytest.raises(sp.SpaceError, match="paper_workload: space 'space' names no paper workload"):
        sp.resolve_workload(no_paper, "paper", workloads)


def test_base_config_precedence_and_errors(tmp_path, workloads):
    space = sp.load_space(str(write(tmp_path, replace(base="{method: bilaw, epochs: 5}"))))
    smoke = workloads["smoke"]
    assert smoke.config["epochs"] == 2
    base = sp.base_config(space, smoke)
    assert (base["epochs"], base["method"], base["batch_size"]) == (5, "bilaw", 64)
    base = sp.base_config(space, smoke, {"epochs": 3, "method": "at"})
    assert (base["epochs"], base["method"], base["meta_val_size"]) == (3, "at", 60)
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        sp.base_config(space, smoke, {"epoch": 3})
    with pytest.raises(ValueError, match="eps"):
        sp.base_config(space, smoke, {"eps": 5})
    assert math.isclose(TrainConfig.from_dict(sp.base_config(space, workloads["digits"])).resolved().eps, 0.2)


def test_summaries_show_a_dash_for_a_conditional_parameter_a_trial_lacks():
    space = sp.load_space("bilaw_tpe")
    beta = space.params["trades_beta"]
    assert beta.shown_for(TrainConfig(method="bilaw").resolved()) == "-"
    assert beta.shown_for(TrainConfig(method="bilaw_trades", trades_beta=3.5).resolved()) == 3.5
    assert space.params["meta_lr"].shown_for(TrainConfig(meta_lr=0.01)) == 0.01
