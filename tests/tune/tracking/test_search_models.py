"""What a search leaves in MLflow for its winner, read the way a researcher reads it: the model
URIs the search prints fetch the winner's run, its logged model carries its run's test metrics
and its best epoch's metrics, its registered version its searched values, test metrics and a
description, and report.py, MLflow and the run's plot name one best epoch, counted from 1. The
search is the real command (`python tune/run_search.py ...`) with plots and --register: the
finished smoke search these tests share with others (tests/tune/conftest.py), read only."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from helpers import search_runs

NAME = "ablation_capacity"  # the shared search's space and experiment


@pytest.fixture(scope="module")
def search(smoke_search):
    """The search's printed output, its tracking URI, the MLflow client and its winner's run."""
    client, _, parents, _ = search_runs(smoke_search.uri, NAME)
    parent = parents[0]
    winner = client.get_run(parent.data.tags["winner_run_id"])
    return smoke_search.stdout, smoke_search.uri, client, parent, winner, smoke_search.root


def _printed(out: str) -> dict[str, str]:
    """The model URIs the search printed: the winner's logged model and its registered version."""
    model = re.search(r"^winner's model: (\S+) \(mlflow\.pytorch\.load_model; run (\w+)\)$", out, re.M)
    registered = re.search(r"^registered: (models:/\S+)$", out, re.M)
    assert model and registered, out[-2000:]
    return {"model": model.group(1), "run": model.group(2), "registered": registered.group(1)}


def _artifact(client, run_id: str, path: str, tmp: Path) -> Path:
    return Path(client.download_artifacts(run_id, path, str(tmp)))


@pytest.mark.slow
def test_fetch_model_takes_every_model_uri_the_search_prints(search, tmp_path):
    """`winner's model: models:/m-<id>` (MLflow 3's logged-model id) and `registered:
    models:/NAME/1`: fetch_model.py writes the winner's run from each, and rerun_best's --model
    (model_store.source_run) finds the winner's run from each."""
    import torch

    from bilaw.training.checkpoint import load_checkpoint
    from tune.fetch_model import main as fetch_main
    from tune.tracking.model_store import source_run

    out, uri, client, _, winner, _ = search
    printed = _printed(out)
    assert re.fullmatch(r"models:/m-[0-9a-f]{32}", printed["model"]) and printed["run"] == winner.info.run_id
    assert printed["registered"] == f"models:/{NAME}/1"
    saved = load_checkpoint(_artifact(client, winner.info.run_id, "best.pt", tmp_path / "a"))
    assert source_run(uri, f"models:/{NAME}/latest") == winner.info.run_id  # the only version is the latest
    for key in ("model", "registered"):
        assert source_run(uri, printed[key]) == winner.info.run_id, key
        folder = tmp_path / key
        assert fetch_main([printed[key], "--out", str(folder), "--tracking-uri", uri]) == 0, key
        fetched = load_checkpoint(folder / "best.pt")
        assert fetched["model"].keys() == saved["model"].keys()
        assert all(torch.equal(v, saved["model"][k]) for k, v in fetched["model"].items()), key
        assert (folder / "metrics.json").read_text() == _artifact(client, winner.info.run_id, "metrics.json",
                                                                  tmp_path / "b").read_text()


def _final_records(client, run_id: str) -> dict[str, float]:
    """The run's step-0 metric records: its final metrics."""
    return {key: m.value for key in client.get_run(run_id).data.metrics
            for m in client.get_metric_history(run_id, key) if m.step == 0}


@pytest.mark.slow
def test_the_logged_model_carries_its_runs_test_metrics_and_best_epoch(search, tmp_path):
    """The winner's logged model (MlflowClient.get_logged_model) holds its run's final metrics at
    step 0 (test_pgd_acc equal to metrics.json's) and its best epoch's per-epoch metrics at that
    epoch's step (val_pgd_acc equal to metrics.json's history at that epoch), nothing from
    another epoch; the run records the model at that step; the model holds config.yaml."""
    out, uri, client, _, winner, _ = search
    run_id = winner.info.run_id
    model = client.get_logged_model(_printed(out)["model"][len("models:/"):])
    assert model.source_run_id == run_id and model.name == "model"
    (found,) = client.search_logged_models([winner.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert found.model_id == model.model_id
    saved = json.loads(_artifact(client, run_id, "metrics.json", tmp_path).read_text())
    best = saved["final"]["best_epoch"]
    assert 1 <= best <= len(saved["history"]) and saved["history"][best - 1]["epoch"] == best
    linked = {(m.key, m.step): m.value for m in model.metrics}
    assert {s for _, s in linked} == {0, best}  # the final values and the best epoch's, no other epoch
    finals = {k: v for k, v in _final_records(client, run_id).items() if not k.startswith("last_")}
    assert {k: v for (k, s), v in linked.items() if s == 0} == finals
    assert linked[("test_pgd_acc", 0)] == saved["final"]["test_pgd_acc"]
    assert linked[("test_clean_acc", 0)] == saved["final"]["test_clean_acc"]
    assert linked[("best_epoch", 0)] == best and ("last_test_pgd_acc", 0) not in linked
    epoch = saved["history"][best - 1]
    for key in ("val_pgd_acc", "val_clean_acc", "train_loss", "best_val_pgd_acc"):
        assert linked[(key, best)] == epoch[key], key
        assert linked[(key, best)] == next(m.value for m in client.get_metric_history(run_id, key) if m.step == best)
    (output,) = client.get_run(run_id).outputs.model_outputs
    assert (output.model_id, output.step) == (model.model_id, best)
    assert "config.yaml" in {a.path for a in client.list_logged_model_artifacts(model.model_id)}


@pytest.mark.slow
def test_the_registered_version_carries_searched_values_test_metrics_and_a_description(search, tmp_path):
    """--register: the version is tagged with its run and search, the searched parameter's value,
    the seed and the test metrics (no config.* tags: the full config is the model's config.yaml),
    and its description says which search, space, seeds and metric chose it."""
    import mlflow

    _, uri, client, parent, winner, root = search
    version = client.get_model_version(NAME, "1")
    params, metrics = winner.data.params, winner.data.metrics
    assert version.run_id == winner.info.run_id

    def number(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else repr(v)

    expected = {"run_id": winner.info.run_id, "space": NAME, "workload": "smoke", "search_run_id": parent.info.run_id,
                "weight_net": params["weight_net"], "seed": "0",
                **{k: number(metrics[k]) for k in ("test_clean_acc", "test_pgd_acc", "test_aa_acc",
                                                   "test_pgd_acc_aa_subset", "test_points", "aa_points",
                                                   "best_epoch", "best_val_pgd_acc")}}
    assert {k: v for k, v in version.tags.items() if not k.startswith("mlflow.")} == expected
    assert expected["test_pgd_acc"] == repr(json.loads(_artifact(client, winner.info.run_id, "metrics.json",
                                                                 tmp_path).read_text())["final"]["test_pgd_acc"])
    text = version.description
    for part in (f"Chosen by best_val_pgd_acc (max) = {expected['best_val_pgd_acc']}", parent.info.run_name,
                 parent.info.run_id, f"space {NAME} on workload smoke", "sampler grid with sampler seed 0",
                 "trial seeds 0", f"weight_net={params['weight_net']}, seed 0", winner.info.run_id, "config.yaml"):
        assert part in text, (part, text)
    model = client.get_logged_model(version.source[len("models:/"):])  # the logged model it was made from
    config = Path(mlflow.artifacts.download_artifacts(f"{model.artifact_location}/config.yaml",
                                                      dst_path=str(tmp_path / "m"), tracking_uri=uri))
    assert config.read_text() == _artifact(client, winner.info.run_id, "config.yaml", tmp_path / "r").read_text()


@pytest.mark.slow
def test_report_mlflow_and_the_plot_agree_on_the_best_epoch(search, tmp_path, capsys):
    """One run, read three ways: report.py --trials' "best epoch" cell, MLflow (the best_epoch
    metric, and the step at which val_pgd_acc peaks first), and the run's learning-curve plot
    (the best epoch it marks, kept in the PNG's text) give the same epoch, counted from 1."""
    from PIL import Image

    from tune.report import main as report_main

    _, uri, client, _, winner, _ = search
    run_id = winner.info.run_id
    assert report_main(["--experiment", NAME, "--trials", "--format", "csv", "--tracking-uri", uri]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out.strip())))
    header, rows = table[0], {row[0]: row for row in table[1:]}
    from_report = int(rows[winner.info.run_name][header.index("best epoch")])
    history = sorted(client.get_metric_history(run_id, "val_pgd_acc"), key=lambda m: m.step)
    peak = max(m.value for m in history)
    from_steps = next(m.step for m in history if m.value == peak)
    from_metric = winner.data.metrics["best_epoch"]
    png = Image.open(_artifact(client, run_id, "plots/learning_curves.png", tmp_path))
    from_plot = int(png.text["best_epoch"])
    assert [m.step for m in history] == [1, 2]  # the smoke workload's 2 epochs
    assert from_report == from_steps == from_metric == from_plot
    assert 1 <= from_plot <= 2


@pytest.mark.slow
def test_final_metrics_are_values_and_epochs_curves_in_mlflows_ui(search, monkeypatch):
    """What MLflow's UI reads (its server's runs/get and logged-models endpoints): the final
    metrics' latest step is 0, which the UI's run page draws as a value (a bar; it draws a
    curve for a latest step >= 1, mlflow/server/js: getBaseChartAndSectionConfigs), and the
    per-epoch metrics' steps run 1..E."""
    import mlflow.server.handlers as handlers

    out, uri, client, _, winner, _ = search
    monkeypatch.setenv("_MLFLOW_SERVER_FILE_STORE", uri)
    monkeypatch.setattr(handlers, "_tracking_store", None)  # the server's store: this search's
    from mlflow.server import app

    api = app.test_client()
    got = api.get(f"/ajax-api/2.0/mlflow/runs/get?run_id={winner.info.run_id}").get_json()
    latest = {m["key"]: int(m.get("step", 0)) for m in got["run"]["data"]["metrics"]}

    def chart(key: str) -> str:  # the UI's rule for a run's metric chart
        return "line" if latest[key] >= 1 else "bar"

    finals = ("test_clean_acc", "test_pgd_acc", "test_aa_acc", "aa_points", "test_points", "best_epoch",
              "last_test_pgd_acc", "epochs_trained", "robust_overfit_gap")
    epochs = ("val_pgd_acc", "val_clean_acc", "train_loss", "best_val_pgd_acc", "lr", "system/cpu_utilization_percentage")
    assert {k: chart(k) for k in finals} == {k: "bar" for k in finals}
    assert {k: chart(k) for k in epochs} == {k: "line" for k in epochs}
    for key in finals:  # one record each, at step 0
        assert [m.step for m in client.get_metric_history(winner.info.run_id, key)] == [0], key
    for key in epochs:
        assert sorted(m.step for m in client.get_metric_history(winner.info.run_id, key)) == [1, 2], key
    model_id = _printed(out)["model"][len("models:/"):]
    shown = api.get(f"/ajax-api/2.0/mlflow/logged-models/{model_id}").get_json()["model"]["data"]["metrics"]
    assert {m["key"] for m in shown if int(m.get("step", 0)) == 0} >= {"test_clean_acc", "test_pgd_acc", "test_aa_acc"}
