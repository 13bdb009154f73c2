"""The search's own figures (tune/results/figures.py): real Optuna studies drawn to PNGs, the skip
rules for importances and parallel coordinates, the per-epoch plot from MLflow-style histories,
and reading those histories back from a real MLflow SQLite store."""
from __future__ import annotations

import struct
import warnings

import optuna
import pytest

from tune.results import figures as sf

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HISTORIES = {"trial_a": [(0, 0.20), (1, 0.31), (2, 0.35)], "trial_b": [(0, 0.18), (1, 0.25)]}


def _png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and decoding it."""
    from matplotlib import image

    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE, path.name
    width, height = struct.unpack(">II", raw[16:24])
    pixels = image.imread(path)
    assert pixels.shape[:2] == (height, width), path.name
    return width, height


def _study(n: int, params: str = "lr,opt", directions: tuple[str, ...] = ("maximize",)) -> optuna.Study:
    """An in-memory study of n trials from a simple function over a float and a categorical."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=list(directions), sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True) if "lr" in params else 0.01
        opt = trial.suggest_categorical("opt", ["sgd", "adam"]) if "opt" in params else "sgd"
        wd = trial.suggest_float("wd", 0.0, 1e-3) if "wd" in params else 0.0
        acc = 0.5 - abs(lr - 0.02) * 3 + (0.05 if opt == "adam" else 0.0) - wd * 10
        return (acc, 1.0 - acc / 2) if len(directions) > 1 else acc

    study.optimize(objective, n_trials=n)
    return study


def _draw(study, tmp_path, histories=HISTORIES, metrics=("best_val_pgd_acc",)):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a figure that fails, or draws badly, would show up here
        return sf.draw_search_figures(study, histories, tmp_path / "search", list(metrics))


def test_every_figure_of_a_one_objective_search_is_a_valid_png(tmp_path):
    written = _draw(_study(6, "lr,opt,wd"), tmp_path)
    names = {p.name for p in written}
    assert names == {sf.HISTORY_PNG, sf.PARALLEL_PNG, sf.IMPORTANCES_PNG, sf.SLICE_PNG, sf.EPOCHS_PNG}
    assert {p.name for p in (tmp_path / "search").iterdir()} == names
    for path in written:
        assert path.parent == tmp_path / "search" and path.stat().st_size > 1000
        width, height = _png_size(path)
        assert width > 200 and height > 150, path.name


@pytest.mark.slow
def test_a_two_objective_search_plots_its_first_objective(tmp_path):
    study = _study(6, directions=("maximize", "minimize"))
    written = _draw(study, tmp_path, metrics=("best_val_pgd_acc", "val_clean_acc"))
    assert {p.name for p in written} == {sf.HISTORY_PNG, sf.PARALLEL_PNG, sf.IMPORTANCES_PNG, sf.SLICE_PNG,
                                         sf.EPOCHS_PNG}
    for path in written:
        _png_size(path)


def test_first_objective_is_the_target_of_a_two_objective_study():
    study = _study(3, directions=("maximize", "minimize"))
    kw = sf._target(study, ["best_val_pgd_acc", "val_clean_acc"])
    assert kw["target_name"] == "best_val_pgd_acc"
    assert [kw["target"](t) for t in study.trials] == [t.values[0] for t in study.trials]
    assert sf._target(_study(2), ["best_val_pgd_acc"]) == {"target_name": "best_val_pgd_acc"}


def test_importances_and_parallel_coordinates_need_two_varied_params(tmp_path):
    written = {p.name for p in _draw(_study(6, "lr"), tmp_path)}
    assert written == {sf.HISTORY_PNG, sf.SLICE_PNG, sf.EPOCHS_PNG}


def test_a_param_fixed_across_trials_does_not_count_as_varied(tmp_path):
    study = optuna.create_study(direction="maximize")
    for i in range(5):
        study.enqueue_trial({"lr": 0.01 * (i + 1), "opt": "sgd"})
    study.optimize(lambda t: t.suggest_float("lr", 1e-3, 1.0) + len(t.suggest_categorical("opt", ["sgd", "adam"])),
                   n_trials=5)
    assert sf.varied_params(study) == ["lr"]
    assert {p.name for p in _draw(study, tmp_path)} == {sf.HISTORY_PNG, sf.SLICE_PNG, sf.EPOCHS_PNG}


def test_one_complete_trial_draws_its_history_but_no_slice(tmp_path):
    assert {p.name for p in _draw(_study(1), tmp_path)} == {sf.HISTORY_PNG, sf.EPOCHS_PNG}


@pytest.mark.slow
def test_slices_include_a_conditional_param_the_common_plots_leave_out(tmp_path):
    study = optuna.create_study(direction="maximize")
    for i in range(6):
        wd = {"wd": i * 1e-4} if i % 2 else {}
        study.enqueue_trial({"lr": 0.01 * (i + 1), "opt": ["sgd", "adam"][i % 2], **wd})

    def objective(t):
        opt = t.suggest_categorical("opt", ["sgd", "adam"])
        wd = t.suggest_float("wd", 0.0, 1e-3) if opt == "adam" else 0.0
        return t.suggest_float("lr", 1e-3, 1.0) - wd

    study.optimize(objective, n_trials=6)
    assert sf.varied_params(study) == ["lr", "opt"]
    assert sf.varied_params(study, common=False) == ["lr", "opt", "wd"]
    assert len(_draw(study, tmp_path)) == 5


def test_importances_need_three_complete_trials(tmp_path):
    study = _study(2, "lr,opt")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    assert sf.varied_params(study) == ["lr", "opt"]
    names = {p.name for p in _draw(study, tmp_path)}
    assert sf.IMPORTANCES_PNG not in names and sf.PARALLEL_PNG in names


def test_no_complete_trial_draws_only_the_per_epoch_plot(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    assert [p.name for p in _draw(study, tmp_path)] == [sf.EPOCHS_PNG]
    assert _draw(optuna.create_study(), tmp_path / "empty", histories={}) == []


@pytest.mark.slow
def test_the_per_epoch_plot_draws_one_line_per_trial_from_the_histories(tmp_path, monkeypatch):
    drawn = {}
    original = sf._plot_epochs

    def spy(histories):
        ax = original(histories)
        drawn.update({line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in ax.get_lines()})
        return ax

    monkeypatch.setattr(sf, "_plot_epochs", spy)
    histories = {**HISTORIES, "trial_c": []}
    written = sf.draw_search_figures(optuna.create_study(), histories, tmp_path, ["best_val_pgd_acc"])
    assert [p.name for p in written] == [sf.EPOCHS_PNG]
    assert drawn == {k: v for k, v in HISTORIES.items()}


def test_a_failing_figure_warns_and_the_others_are_still_drawn(tmp_path, monkeypatch):
    from matplotlib import pyplot as plt
    from optuna.visualization import matplotlib as ovm

    def broken(*args, **kwargs):
        plt.subplots()  # leaves a figure open before failing
        raise ValueError("boom")

    monkeypatch.setattr(ovm, "plot_slice", broken)
    open_before = len(plt.get_fignums())
    with pytest.warns(RuntimeWarning, match="slices not drawn: ValueError: boom"):
        written = sf.draw_search_figures(_study(6), HISTORIES, tmp_path, ["best_val_pgd_acc"])
    assert sf.SLICE_PNG not in {p.name for p in written} and sf.IMPORTANCES_PNG in {p.name for p in written}
    assert not (tmp_path / sf.SLICE_PNG).exists()
    assert len(plt.get_fignums()) == open_before


def test_figures_leave_no_open_figure_nor_optuna_style_behind(tmp_path):
    import matplotlib
    from matplotlib import pyplot as plt

    face = matplotlib.rcParams["axes.facecolor"]
    open_before = len(plt.get_fignums())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sf.draw_search_figures(_study(6), HISTORIES, tmp_path, ["best_val_pgd_acc"])
    assert len(plt.get_fignums()) == open_before
    assert matplotlib.rcParams["axes.facecolor"] == face
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]


@pytest.mark.slow
def test_trial_histories_reads_val_pgd_acc_from_mlflow_sorted_by_step(tmp_path):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("figs", artifact_location=(tmp_path / "art").as_uri())
    a = client.create_run(exp, run_name="trial_a")
    b = client.create_run(exp, run_name="trial_b")
    empty = client.create_run(exp, run_name="trial_empty")
    out_of_order = [(2, 0.35), (0, 0.2), (1, 0.31)]
    client.log_batch(a.info.run_id, metrics=[Metric("val_pgd_acc", v, 1000 + s, s) for s, v in out_of_order])
    client.log_batch(b.info.run_id, metrics=[Metric("val_pgd_acc", 0.18, 1000, 0), Metric("val_pgd_acc", 0.2, 1000, 1),
                                             Metric("val_pgd_acc", 0.25, 1001, 1), Metric("train_loss", 1.0, 1000, 0)])
    client.log_metric(empty.info.run_id, "train_loss", 1.0, step=0)
    runs = client.search_runs([exp])
    assert sf.trial_histories(client, runs) == HISTORIES
    written = sf.draw_search_figures(optuna.create_study(), sf.trial_histories(client, runs), tmp_path / "s", ["m"])
    assert [p.name for p in written] == [sf.EPOCHS_PNG]
