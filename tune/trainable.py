"""The Ray Tune function trainable around `bilaw.trainer.train`.

Per epoch it reports the scalar metrics, with a checkpoint (the trainer's own checkpoint file)
at the first epoch end `checkpoint_every_s` seconds after the last one and after the last epoch,
so a crashed trial retries from its last checkpoint and a resumed search continues it; it logs the same metrics to its
MLflow child run (an epoch redone after a retry is not logged twice). Everything the trial needs that is not a TrainConfig key
travels under the `_bilaw` config entry (never logged as a param); the tracking URI travels in
the environment so that credentials in it never land in Ray's result files.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from ray import tune

from bilaw.checkpoint import previous_path
from bilaw.config import TrainConfig
from bilaw.gpu_memory import cap_gpu_memory, gpu_oom_message
from bilaw.runs import save_run
from bilaw.trainer import CHECKPOINT_NAME, scalar_final, train
from bilaw.weight_health import health_label

from .tracking import NOT_SEARCHED_TAG, WEIGHTS_TAG, TrialRun

META_KEY = "_bilaw"
TRACKING_ENV = "BILAW_TRACKING_URI"
TRIAL_INDEX_KEY = "__trial_index__"  # set by ray.tune.search.Repeater: which seed of the config


def trial_config(config: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a trial: searched values + constants, the seed picked by the repeat index."""
    meta = config.get(META_KEY, {})
    values = {k: v for k, v in config.items() if k != META_KEY and k != TRIAL_INDEX_KEY}
    if TRIAL_INDEX_KEY in config and meta.get("seeds"):
        values["seed"] = meta["seeds"][int(config[TRIAL_INDEX_KEY])]
    return TrainConfig.from_dict(values).resolved()


def _restore_checkpoint(work: Path) -> None:
    """Copy the trial's last Ray checkpoint into its work folder: the trainer's checkpoint and
    the one before it, so a damaged latest falls back there as in any other run."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as d:
        copy_training_checkpoints(Path(d), work)


def copy_training_checkpoints(src: Path, work: Path) -> list[str]:
    """Copy checkpoint.pt and checkpoint.prev.pt (where present) from `src` to `work`."""
    copied = []
    for name in (CHECKPOINT_NAME, previous_path(CHECKPOINT_NAME).name):
        if (src / name).is_file():
            shutil.copy2(src / name, work / name)
            copied.append(name)
    return copied


def not_searched(config: dict[str, Any]) -> list[str]:
    """The space's params this trial was given no value for (their `when` did not hold)."""
    return [p for p in config.get(META_KEY, {}).get("searched", ()) if p not in config]


def _open_run(cfg: TrainConfig, config: dict[str, Any]) -> TrialRun | None:
    meta = config.get(META_KEY, {})
    uri = os.environ.get(TRACKING_ENV) or meta.get("tracking_uri")
    if not uri or not meta.get("experiment_id"):
        return None
    ctx = tune.get_context()
    tags = {"space": meta.get("space", ""), **meta.get("tags", {})}
    if not_searched(config):
        tags[NOT_SEARCHED_TAG] = ",".join(not_searched(config))
    try:
        return TrialRun(uri, meta["experiment_id"], meta.get("parent_run_id"), ctx.get_trial_id(),
                        ctx.get_trial_name(), cfg.to_dict(), tags=tags)
    except Exception as exc:  # tracking must not kill training; Ray's results still hold everything
        warnings.warn(f"MLflow tracking unavailable for this trial: {exc}")
        return None


def _safe(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:
        warnings.warn(f"MLflow logging failed: {exc}")


def apply_gpu_share(meta: dict[str, Any], cfg: TrainConfig) -> tuple[float, float | None]:
    """Cap the CUDA allocator at the trial's share of its GPU (`gpu_share`, from --gpus-per-trial);
    returns (share, allocator fraction set or None)."""
    share = float(meta.get("gpu_share", 0.0))
    if not 0.0 < share < 1.0 or cfg.device == "cpu":
        return share, None
    return share, cap_gpu_memory(share)


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune entry point: one trial = one `bilaw.train` run."""
    meta = config.get(META_KEY, {})
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one line per epoch otherwise
    torch.set_num_threads(max(1, int(meta.get("threads", 1))))
    cfg = trial_config(config)
    share, fraction = apply_gpu_share(meta, cfg)
    work = Path(tempfile.mkdtemp(prefix="bilaw-trial-"))
    try:
        _restore_checkpoint(work)
        run = _open_run(cfg, config)
        every = float(meta.get("checkpoint_every_s", 0.0))
        state: dict[str, Any] = {"final": None, "last_checkpoint": time.monotonic()}

        def on_epoch(metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
            if run is not None:
                _safe(run.log_epoch, metrics)
            numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            if "test_clean_acc" in metrics:  # the last epoch: reported below, once its run is logged
                state["final"] = numbers
                return
            now = time.monotonic()
            checkpoint = None
            if now - state["last_checkpoint"] >= every:
                checkpoint, state["last_checkpoint"] = tune.Checkpoint.from_directory(str(ckpt_dir)), now
            tune.report(numbers, checkpoint=checkpoint)

        try:
            result = train(cfg, on_epoch, checkpoint_dir=work, progress=False, log=None)
        except torch.cuda.OutOfMemoryError as exc:
            if share <= 0.0:
                raise
            total = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
            raise RuntimeError(gpu_oom_message(share, fraction, total)) from exc
        finally:  # what was logged stays logged, whatever stopped the trial
            if run is not None:
                _safe(run.flush)
        if run is not None:
            _safe(run.log_history, result.history)
            _log_final(run, result, work)
        # The final report comes last: a scheduler may stop the trial inside it (ASHA stops every
        # trial at max_t), which must not cost the saved run. Resumed after the last epoch, the
        # trainer made no callback: the test metrics are reported from its result.
        final = state["final"] or {k: v for k, v in {**result.history[-1], **scalar_final(result.final)}.items()
                                   if isinstance(v, (int, float))}
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _log_final(run: TrialRun, result, work: Path) -> None:
    out = save_run(result, work / "run")
    step = result.history[-1]["epoch"] if result.history else 0
    _safe(run.log_final, scalar_final(result.final), step, out)
    label = health_label(result.final)
    if label is not None:
        _safe(run.set_tags, {WEIGHTS_TAG: label})
