"""The Ray Tune function trainable around `bilaw.training.trainer.train`.

Per epoch it reports the scalar metrics, with a checkpoint (the trainer's own checkpoint files)
at the first epoch end `checkpoint_every_s` seconds after the last one, so a crashed trial
retries from its last checkpoint and a resumed search continues it. At the end it saves the run
(`bilaw.runs.saved.save_run`: config.yaml, metrics.json, plots, best.pt) into its folder and reports
the test metrics with that folder as the last checkpoint. A trial never writes to MLflow: the
driver does, from these results and that checkpoint (`tune/tracking/trial_callback.py`). Everything the
trial needs that is not a TrainConfig key travels under the `_bilaw` config entry.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from bilaw.analysis.plots import write_per_class
from bilaw.config.reproducibility import use_threads
from bilaw.config.train_config import TrainConfig
from bilaw.gpu_memory import cap_gpu_memory, gpu_oom_message
from bilaw.metrics import final_report, finished
from bilaw.runs.saved import save_run
from bilaw.training.checkpoint import previous_path
from bilaw.training.trainer import CHECKPOINT_NAME, train

from .library_adapters import RAY_TRIAL_STORAGE_LOGGER
from .system_metrics import SystemSampler, trial_interval_s

META_KEY = "_bilaw"
SAVED_RUN = "run"  # the saved run's folder inside a trial's last checkpoint
TRIAL_INDEX_KEY = "__trial_index__"  # set by ray.tune.search.Repeater: which seed of the config


VARIANT_KEY = "__variant__"  # a grid index into meta["variants"]: a list of whole configs to run
RAN_CONFIG_KEY = "train_config"  # in a trial's final report: the TrainConfig it ran, as JSON


def trial_values(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's TrainConfig values: searched values + constants, the seed picked by the repeat
    index, or (a list of configs run as one grid: the race, the re-runs) the variant's values."""
    meta = config.get(META_KEY, {})
    values = {k: v for k, v in config.items() if k not in (META_KEY, TRIAL_INDEX_KEY, VARIANT_KEY)}
    if VARIANT_KEY in config:
        values.update(meta["variants"][int(config[VARIANT_KEY])])
    elif meta.get("seeds"):  # the search's seeds: the repeat index picks one; a single seed is the seed
        values["seed"] = meta["seeds"][int(config.get(TRIAL_INDEX_KEY, 0))]
    return values


def variant_tags(config: dict[str, Any]) -> dict[str, str]:
    """The MLflow tags of a variant trial (tune/variant_runs.py), else none."""
    tags = config.get(META_KEY, {}).get("variant_tags") or []
    index = config.get(VARIANT_KEY)
    return dict(tags[int(index)]) if index is not None and int(index) < len(tags) else {}


def trial_config(config: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a trial (`trial_values`), resolved, with the torch thread count it runs
    with: its config's `threads`, else the search's (one per CPU of the trial), so that the run's
    config.yaml and the search's best_config.yaml record it (bilaw/config/reproducibility.py)."""
    values = trial_values(config)
    if values.get("threads") is None:
        values["threads"] = max(1, int(config.get(META_KEY, {}).get("threads", 1)))
    return TrainConfig.from_dict(values).resolved()


def ran_config(result: Any) -> TrainConfig:
    """The TrainConfig a trial ran, from its Ray result: the one its final report carries (resolved
    once, in the trial), else (a result without it: a trial that did not finish, or one of a search
    stored before reports carried it) rebuilt from the trial's Ray config by `trial_config`."""
    text = (getattr(result, "metrics", None) or {}).get(RAN_CONFIG_KEY)
    return TrainConfig.from_dict(json.loads(text)) if text else trial_config(result.config)


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
    values = trial_values(config)
    return [p for p in config.get(META_KEY, {}).get("searched", ()) if p not in values]


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
    logging.getLogger(RAY_TRIAL_STORAGE_LOGGER).setLevel(logging.WARNING)  # one line per epoch otherwise
    cfg = use_threads(trial_config(config))
    share, fraction = apply_gpu_share(meta, cfg)
    work = Path(tempfile.mkdtemp(prefix="bilaw-trial-"))
    interval = trial_interval_s()
    sampler = SystemSampler(interval) if interval > 0 else None
    try:
        _restore_checkpoint(work)
        every = float(meta.get("checkpoint_every_s", 0.0))
        state: dict[str, Any] = {"final": None, "last_checkpoint": time.monotonic()}

        def on_epoch(metrics: dict[str, Any], ckpt_dir: Path | None) -> None:
            numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            if sampler is not None:
                numbers.update(sampler.take())
            if finished(metrics):  # the last epoch: reported below, once its run is saved
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
        save_run(result, work / SAVED_RUN)
        write_per_class(work / SAVED_RUN, result.final.get("test_per_class_pgd_acc"), plot=result.config.plots)
        # The final report comes last: a scheduler may stop the trial inside it (ASHA stops every
        # trial at max_t), which must not cost the saved run. Resumed after the last epoch, the
        # trainer made no callback: the test metrics are reported from its result.
        final = state["final"] or {k: v for k, v in {**result.history[-1], **final_report(result.final)}.items()
                                   if isinstance(v, (int, float))}
        tune.report({**final, RAN_CONFIG_KEY: json.dumps(result.config.to_dict())},
                    checkpoint=tune.Checkpoint.from_directory(str(work)))
    finally:
        if sampler is not None:
            sampler.stop()
        shutil.rmtree(work, ignore_errors=True)
