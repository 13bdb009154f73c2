"""The runs docs/results.md reports are the runs its commands make with today's code and
defaults: each stored config equals the config its documented command builds now (so
`tune/reproduce.py` reuses the stored Table 1 runs instead of training, as the document says)."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO

from bilaw.config.train_config import REUSE_FREE_KEYS, TrainConfig, config_differences, yaml_load
from tune.reproduce import build_parser, config_difference, parse_seeds, plan_jobs, select

RUNS = REPO / "docs" / "results" / "runs"
TABLE1 = ["--table", "1", "--dataset", "fashion_mnist", "--model", "fc1", "--norm", "linf", "--epochs", "15",
          "--seeds", "2"]


def test_every_stored_table1_run_is_what_the_documented_command_plans():
    args = build_parser().parse_args(TABLE1)
    table, settings, rows = select(args)
    jobs = plan_jobs(args, table, settings, rows, parse_seeds(args.seeds))
    stored = sorted(p.parent.relative_to(RUNS) for p in (RUNS / "table1").rglob("config.yaml"))
    assert sorted(Path(job.key) for job in jobs) == stored  # 6 methods x 2 seeds, nothing else
    for job in jobs:
        saved = yaml_load((RUNS / job.key / "config.yaml").read_text())
        assert config_difference(saved, job.cfg) == [], job.key


@pytest.mark.parametrize("method", ["at", "gairat", "wmmr", "mail", "nonparam", "bilaw"])
def test_every_stored_label_noise_run_is_what_the_documented_command_makes(method):
    """docs/results.md: python -m bilaw.train --set method=M --set label_noise=0.2 --set seed=S
    --set aa_samples=0 --set plots=false (the other keys at their defaults)."""
    for seed in (0, 1):
        saved = yaml_load((RUNS / "label_noise" / "digits" / method / f"seed{seed}" / "config.yaml").read_text())
        cfg = TrainConfig.from_dict({"method": method, "label_noise": 0.2, "seed": seed, "aa_samples": 0,
                                     "plots": False}).resolved()
        assert config_differences(saved, cfg, REUSE_FREE_KEYS) == [], (method, seed)
