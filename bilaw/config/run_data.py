"""The data a run of a config trains and is judged on: `load_data`'s arguments for it. Here, not
in bilaw/data/, because which sets a run holds out depends on its weighting (bilaw/methods/)."""
from __future__ import annotations

from typing import Any

from bilaw.config.train_config import TrainConfig
from bilaw.methods.weighting import holds_out_validation


def run_data_args(cfg: TrainConfig) -> dict[str, Any]:
    """`load_data`'s arguments (all but the dataset and device) for a run of `cfg`: a weighting
    that learns from the validation sets (or is the control of one that does) never has them in
    its training set (`weighting.holds_out_validation`)."""
    return dict(data_dir=cfg.data_dir, meta_val_size=cfg.meta_val_size, holdout_val_size=cfg.holdout_val_size,
                seed=cfg.seed, label_noise=cfg.label_noise,
                include_val_in_train=cfg.baselines_full_train and not holds_out_validation(cfg.weighting))
