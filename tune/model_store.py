"""Trained models in MLflow: logging a trial's best model with its run, registering a search's
winner, and fetching a logged model back as a folder `bilaw` reads (bilaw never imports MLflow).

Format: the model is logged with `mlflow.pytorch.log_model` as a pickled `nn.Module` together
with a copy of the `bilaw` package (`code_paths`), so `mlflow.pytorch.load_model("runs:/ID/model")`
returns the module itself on any machine with torch: it takes [0, 1] images, has train/eval
modes and gradients (an attack can run on it). A TorchScript or `torch.export` program would not
need the code, but the first is deprecated in torch and the second has no train/eval switch nor
plain autograd through it. Next to the MLflow model, the run keeps `best.pt` (bilaw's own file)
so that `fetch_model` can rebuild a run folder with `config.yaml` and `metrics.json`.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

LOG_MODELS = ("winner", "finished", "none")
MODEL_NAME = "model"
BILAW_DIR = Path(__file__).resolve().parents[1] / "bilaw"


class ModelStoreError(ValueError):
    """A model URI that names no model this project logged; the message says what to pass."""


def pip_requirements() -> list[str]:
    """What a loaded model needs, given explicitly (MLflow's inference costs seconds a call)."""
    import numpy
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}", "pyyaml"]


LAST_MODEL_NAME = "last_model"


def log_model(uri: str, run_id: str, run_dir: Path, last_checkpoint: Path | None = None) -> str:
    """Log the best model of the saved run `run_dir` (its best.pt) to MLflow run `run_id` as
    `model`, with best.pt beside it, and with `last_checkpoint` (the trainer's checkpoint.pt)
    the last epoch's model as `last_model`; returns the best model's URI (`models:/m-...`,
    which `mlflow.pytorch.load_model` and the registry take; `runs:/RUN_ID/model` works too)."""
    import copy

    import mlflow
    import torch

    from bilaw.checkpoint import load_checkpoint
    from bilaw.runs import BEST_NAME, load_best

    model, _, best = load_best(run_dir)
    shape = tuple(best["input_shape"])
    example = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0)).numpy()
    models = {MODEL_NAME: model}
    if last_checkpoint is not None and Path(last_checkpoint).is_file():
        last = copy.deepcopy(model)
        last.load_state_dict(load_checkpoint(last_checkpoint)["model"])
        models[LAST_MODEL_NAME] = last.eval()
    mlflow.set_tracking_uri(uri)
    uris = {}
    with mlflow.start_run(run_id=run_id):
        for name, module in models.items():
            info = mlflow.pytorch.log_model(module, name=name, input_example=example,
                                            pip_requirements=pip_requirements(), code_paths=[str(BILAW_DIR)],
                                            serialization_format="pickle")  # see the module docstring
            uris[name] = info.model_uri
        mlflow.log_artifact(str(Path(run_dir) / BEST_NAME))
    return uris[MODEL_NAME]


def register(uri: str, model_uri: str, name: str, tags: dict[str, str]) -> Any:
    """Register the logged model `model_uri` under `name`; the version gets `tags`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    version = mlflow.register_model(model_uri, name, await_registration_for=60)
    client = MlflowClient(uri)
    for k, v in tags.items():
        client.set_model_version_tag(name, version.version, k, str(v)[:5000])
    return version


def source_run(uri: str, model_uri: str) -> str:
    """The MLflow run id a `runs:/ID/...` or `models:/NAME/VERSION` (or `models:/NAME@ALIAS`) URI comes from."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        if model_uri.startswith("runs:/"):
            return client.get_run(model_uri[len("runs:/"):].split("/", 1)[0]).info.run_id
        if model_uri.startswith("models:/"):
            rest = model_uri[len("models:/"):]
            if "@" in rest:
                name, alias = rest.split("@", 1)
                return client.get_model_version_by_alias(name, alias).run_id
            name, _, version = rest.partition("/")
            if version.isdigit():
                return client.get_model_version(name, version).run_id
    except Exception as exc:  # MLflow's "not found" for a run, model or version
        raise ModelStoreError(f"{model_uri}: {str(exc).splitlines()[0]}") from None
    raise ModelStoreError(f"{model_uri!r}: expected runs:/RUN_ID/model, models:/NAME/VERSION or models:/NAME@ALIAS")


def fetch_run_folder(uri: str, model_uri: str, out: Path) -> Path:
    """Download config.yaml, metrics.json and best.pt of the run behind `model_uri` into `out`,
    a folder `bilaw.runs.load_run` and `python -m bilaw.evaluate` read."""
    from mlflow.tracking import MlflowClient

    from bilaw.runs import BEST_NAME, CONFIG_NAME, METRICS_NAME

    run_id = source_run(uri, model_uri)
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
