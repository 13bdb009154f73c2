"""Trained models in MLflow: logging a trial's best model with its run, registering a search's
winner, and fetching a logged model back as a folder `bilaw` reads (bilaw never imports MLflow).

Format: the model is logged with `mlflow.pytorch.log_model` as a pickled `nn.Module` together
with a copy of the `bilaw` package (`code_paths`), so `mlflow.pytorch.load_model("runs:/ID/model")`
returns the module itself on any machine with torch: it takes [0, 1] images, has train/eval
modes and gradients (an attack can run on it). A TorchScript or `torch.export` program would not
need the code, but the first is deprecated in torch and the second has no train/eval switch nor
plain autograd through it. Next to the MLflow model, the run keeps `best.pt` (bilaw's own file)
so that `fetch_model` can rebuild a run folder with `config.yaml` and `metrics.json`.

What a logged model carries (its page in MLflow's UI): the best model is logged at its best
epoch's step, where MLflow links it to that epoch's metrics (held-out accuracy, loss, ...), and
it is linked to its run's final metrics, which tune/tracking/runs.py logs at step 0 (the best state's
test metrics, best_epoch, ...); the last model (`--log-models finished`) likewise to the last
epoch and to the last state's test metrics (`last_*`). Both hold the run's config.yaml.

A registered version (`register`) is tagged with its run and search, the values of the searched
parameters and the run's test metrics, and described by which search, space, seeds and metric
chose it; the full config is the model's config.yaml, not 60 tags.

Model URIs (`resolve_model`, used by fetch_model.py and rerun_best.py --model): every form a
search prints or registers, URI_FORMS.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

LOG_MODELS = ("winner", "finished", "none")
MODEL_NAME = "model"
LAST_MODEL_NAME = "last_model"
BILAW_DIR = Path(__file__).resolve().parents[2] / "bilaw"
URI_FORMS = ("runs:/RUN_ID/model, models:/m-MODEL_ID (a logged model, as a search prints it), models:/NAME/VERSION "
             "(or models:/NAME/latest) or models:/NAME@ALIAS")
LAST_STATE_PREFIX = "last_"  # final metrics of the last epoch's state: the last model's, not the best's


class ModelStoreError(ValueError):
    """A model URI that names no model this project logged; the message says what to pass."""


def pip_requirements() -> list[str]:
    """What a loaded model needs, given explicitly (MLflow's inference costs seconds a call)."""
    import numpy
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}", "pyyaml"]


def log_model(uri: str, run_id: str, run_dir: Path, last_checkpoint: Path | None = None) -> str:
    """Log the best model of the saved run `run_dir` (its best.pt) to MLflow run `run_id` as
    `model`, with best.pt beside it, and with `last_checkpoint` (the trainer's checkpoint.pt)
    the last epoch's model as `last_model`, each at its epoch's step, linked to its final metrics
    and holding config.yaml (see the module docstring); returns the best model's URI
    (`models:/m-...`, which `mlflow.pytorch.load_model` and the registry take; `runs:/RUN_ID/model`
    works too). The run's final metrics must be logged first (tune/tracking/runs.py `log_final`)."""
    import copy

    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from bilaw.runs.saved import BEST_NAME, CONFIG_NAME, load_best, read_metrics
    from bilaw.training.checkpoint import load_checkpoint
    from tune.tracking.runs import EPOCHS_FROM_TAG

    model, _, best = load_best(run_dir)
    shape = tuple(best["input_shape"])
    example = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0)).numpy()
    models = {MODEL_NAME: model}
    if last_checkpoint is not None and Path(last_checkpoint).is_file():
        last = copy.deepcopy(model)
        last.load_state_dict(load_checkpoint(last_checkpoint)["model"])
        models[LAST_MODEL_NAME] = last.eval()
    metrics = read_metrics(run_dir)  # epochs counted from 1: an epoch's step
    last_epoch = int(metrics["history"][-1]["epoch"]) if metrics["history"] else 0
    client = MlflowClient(uri)
    # a run logged before epochs counted from 1 (no epochs_from tag) has its epochs at steps 0..E-1
    # and its final metrics at the last one: the models go to their epochs' steps, no final is linked
    legacy = client.get_run(run_id).data.tags.get(EPOCHS_FROM_TAG) != "1"
    steps = {MODEL_NAME: max(int(metrics["final"].get("best_epoch") or last_epoch) - legacy, 0),
             LAST_MODEL_NAME: max(last_epoch - legacy, 0)}
    mlflow.set_tracking_uri(uri)
    uris = {}
    with mlflow.start_run(run_id=run_id):
        for name, module in models.items():
            info = mlflow.pytorch.log_model(module, name=name, input_example=example, step=steps[name],
                                            pip_requirements=pip_requirements(), code_paths=[str(BILAW_DIR)],
                                            serialization_format="pickle")  # see the module docstring
            if not legacy:
                link_final_metrics(client, run_id, info.model_id, last=name == LAST_MODEL_NAME)
            client.log_model_artifact(info.model_id, str(Path(run_dir) / CONFIG_NAME))
            uris[name] = info.model_uri
        mlflow.log_artifact(str(Path(run_dir) / BEST_NAME))
    return uris[MODEL_NAME]


def link_final_metrics(client: Any, run_id: str, model_id: str, last: bool = False) -> list[str]:
    """Link run `run_id`'s final metrics (its step-0 records) to logged model `model_id` as the
    same records: the last state's (`last_*`) with `last`, the others without; returns their keys."""
    from mlflow.entities import Metric

    linked = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=run_id)
              for key in client.get_run(run_id).data.metrics if key.startswith(LAST_STATE_PREFIX) == last
              for m in client.get_metric_history(run_id, key) if m.step == 0]
    for i in range(0, len(linked), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=linked[i:i + 1000])
    return sorted(m.key for m in linked)


def _parse(model_uri: str) -> tuple[str, str, str]:
    """(form, first, second) of a model URI: ("run", RUN_ID, NAME), ("logged", MODEL_ID, ""),
    ("version", NAME, VERSION) or ("alias", NAME, ALIAS)."""
    if model_uri.startswith("runs:/"):
        run_id, _, path = model_uri[len("runs:/"):].partition("/")
        if run_id:
            return "run", run_id, path.strip("/") or MODEL_NAME
    elif model_uri.startswith("models:/"):
        rest = model_uri[len("models:/"):]
        name, alias = rest.split("@", 1) if "@" in rest else (rest, None)
        if alias is not None:
            if name and alias and "/" not in alias:
                return "alias", name, alias
        elif "/" in rest:
            name, version = rest.split("/", 1)
            if name and (version.isdigit() or version == "latest"):
                return "version", name, version
        elif rest.startswith("m-") and len(rest) > 2:
            return "logged", rest, ""
    raise ModelStoreError(f"{model_uri!r} is not a model URI this project takes; pass {URI_FORMS}")


def resolve_model(uri: str, model_uri: str) -> tuple[str, str, str | None]:
    """(run id, model name, logged model id or None) behind `model_uri` (URI_FORMS); one of
    another form, or naming nothing in the store `uri`, is a ModelStoreError saying so."""
    from mlflow.tracking import MlflowClient

    form, first, second = _parse(model_uri)
    client = MlflowClient(uri)
    try:
        if form == "run":
            return client.get_run(first).info.run_id, second, None
        if form == "logged":
            model = client.get_logged_model(first)
            if not model.source_run_id:
                raise ModelStoreError(f"{model_uri}: logged model {first} comes from no run (not one a search logged)")
            return model.source_run_id, model.name, model.model_id
        if form == "version" and second == "latest":
            second = _latest_version(client, first)
        version = (client.get_model_version_by_alias(first, second) if form == "alias"
                   else client.get_model_version(first, second))
        model_id = version_model_id(version)
        return version.run_id, client.get_logged_model(model_id).name if model_id else MODEL_NAME, model_id
    except ModelStoreError:
        raise
    except Exception as exc:  # MLflow's "not found" for a run, model or version
        raise ModelStoreError(f"{model_uri}: {str(exc).splitlines()[0]}") from None


def _latest_version(client: Any, name: str) -> str:
    """The highest version number registered under `name`."""
    from tune.tracking.queries import quote_filter_value

    client.get_registered_model(name)  # MLflow's "not found" for a name never registered
    versions = [int(v.version) for v in client.search_model_versions(f"name = {quote_filter_value(name)}")]
    if not versions:
        raise ModelStoreError(f"models:/{name}/latest: the registered model {name!r} has no version")
    return str(max(versions))


def version_model_id(version: Any) -> str | None:
    """The logged model a registered version was made from (its source `models:/m-ID`), or None."""
    source = str(getattr(version, "source", "") or "")
    found = getattr(version, "model_id", None) or (source[len("models:/"):] if source.startswith("models:/m-") else "")
    return found or None


def source_run(uri: str, model_uri: str) -> str:
    """The MLflow run id a model URI (URI_FORMS) comes from."""
    return resolve_model(uri, model_uri)[0]


def fetch_run_folder(uri: str, model_uri: str, out: Path) -> Path:
    """Download config.yaml, metrics.json and best.pt of the run behind `model_uri` into `out`,
    a folder `bilaw.runs.saved.load_run` and `python -m bilaw.evaluate` read. The folder holds the run's
    best model: a URI of its last model is refused (load that one with mlflow.pytorch.load_model)."""
    from mlflow.tracking import MlflowClient

    from bilaw.runs.saved import BEST_NAME, CONFIG_NAME, METRICS_NAME

    run_id, name, _ = resolve_model(uri, model_uri)
    if name != MODEL_NAME:
        raise ModelStoreError(f"{model_uri} is run {run_id}'s {name!r}, not its best model: the folder holds the best "
                              f"model (best.pt); pass runs:/{run_id}/{MODEL_NAME} or that model's models:/m-... URI")
    client = MlflowClient(uri)
    names = {a.path for a in client.list_artifacts(run_id)}
    missing = [n for n in (CONFIG_NAME, METRICS_NAME, BEST_NAME) if n not in names]
    if missing:
        raise ModelStoreError(f"{model_uri}: run {run_id} has no {', '.join(missing)} (was its model logged by a "
                              f"search of this project, with --log-models?)")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in (CONFIG_NAME, METRICS_NAME, BEST_NAME):
            shutil.copy2(client.download_artifacts(run_id, name, tmp), out / name)
    return out


def register(uri: str, model_uri: str, name: str, tags: dict[str, Any]) -> Any:
    """Register the logged model `model_uri` under `name`; returns the version. It is tagged with
    `tags` (the caller's: run_id, space, workload), its search run, the searched parameters'
    values and its run's test metrics (`version_tags`), and described by which search, space,
    seeds and metric chose it (tune/tracking/model_registry.py); the model's files get the run's
    config.yaml where they lack it (the full config is that file, not tags)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from tune.tracking.model_registry import describe, version_tags

    run_id, _, model_id = resolve_model(uri, model_uri)
    client = MlflowClient(uri)
    found = version_tags(client, run_id)
    given = {k: str(v)[:5000] for k, v in tags.items()}
    mlflow.set_tracking_uri(uri)
    version = mlflow.register_model(model_uri, name, await_registration_for=60, tags={**given, **found.tags})
    model_id = version_model_id(version) or model_id
    if model_id:
        _add_config_file(client, run_id, model_id)
    return client.update_model_version(name, version.version, description=describe(found))


def _add_config_file(client: Any, run_id: str, model_id: str) -> None:
    """The run's config.yaml among the logged model's files (a model logged before they held it)."""
    from bilaw.runs.saved import CONFIG_NAME

    if CONFIG_NAME in {a.path for a in client.list_logged_model_artifacts(model_id)}:
        return
    with tempfile.TemporaryDirectory() as tmp:
        client.log_model_artifact(model_id, client.download_artifacts(run_id, CONFIG_NAME, tmp))
