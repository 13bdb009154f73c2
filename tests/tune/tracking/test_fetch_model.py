"""tune/fetch_model.py's model URIs (tune/tracking/model_store.py `resolve_model`, also rerun_best's
--model): a URI of another form, or one naming nothing in the store, is one `error:` line that
names it and says what is taken; nothing is written. The URIs a search prints are fetched in
tests/tune/tracking/test_search_models.py."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tune.fetch_model import main
from tune.tracking.model_store import ModelStoreError, source_run

FORMS = ("runs:/RUN_ID/model, models:/m-MODEL_ID (a logged model, as a search prints it), models:/NAME/VERSION "
         "(or models:/NAME/latest) or models:/NAME@ALIAS")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tracking store with one run that logged nothing (read only by the tests)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlruns.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("x"))
    return uri, run.info.run_id


@pytest.mark.parametrize("uri", ["models:/ablation_capacity", "runs:/", "s3://bucket/model", "models:/x/newest",
                                 "models:/m-", "m-0123abcd", "models:/x@"])
def test_a_uri_of_another_form_is_one_error_naming_the_forms_taken(store, uri, tmp_path, capsys):
    tracking, _ = store
    assert main([uri, "--out", str(tmp_path / "out"), "--tracking-uri", tracking]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {uri!r} is not a model URI this project takes; pass {FORMS}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("uri, says", [
    ("models:/m-0123abcd", "Logged model with ID 'm-0123abcd' not found"),
    ("models:/nosuch/1", "Model Version (name=nosuch, version=1) not found"),
    ("models:/nosuch/latest", "Registered Model with name=nosuch not found"),
    ("models:/nosuch@champion", "Registered Model with name=nosuch not found"),
    ("runs:/0123456789abcdef/model", "Run with id=0123456789abcdef not found")])
def test_a_uri_naming_nothing_is_one_error_with_mlflows_reason(store, uri, says, tmp_path, capsys):
    tracking, _ = store
    assert main([uri, "--out", str(tmp_path / "out"), "--tracking-uri", tracking]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {uri}: ") and says in err and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(ModelStoreError, match=rf"^{uri}: .*not found"):  # rerun_best --model's reading
        source_run(tracking, uri)


def test_a_run_without_a_logged_model_says_what_it_lacks(store, tmp_path, capsys):
    tracking, run_id = store
    assert source_run(tracking, f"runs:/{run_id}/model") == run_id
    assert main([f"runs:/{run_id}/model", "--out", str(tmp_path / "out"), "--tracking-uri", tracking]) == 2
    assert capsys.readouterr().err == (f"error: runs:/{run_id}/model: run {run_id} has no config.yaml, metrics.json, "
                                       f"best.pt (was its model logged by a search of this project, with "
                                       f"--log-models?)\n")
