"""Record or check the golden training traces of tests/bilaw/training/test_golden.py.

    python tests/golden_runs.py            # rewrite tests/data/golden_runs.json (only on purpose)

Short seeded runs on digits (one thread, CPU) of AT, TRADES, GAIRAT, MAIL and BiLAW with no
burn-in: their per-epoch training losses and held-out accuracies, and the weights the first 64
training samples got in each epoch. Refactors must reproduce them to 1e-6.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bilaw.config.train_config import TrainConfig  # noqa: E402
from bilaw.training.trainer import train  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_runs.json"
METHODS = ("at", "trades", "gairat", "mail", "bilaw")
BASE = {"dataset": "digits", "model": "fc1", "batch_size": 256, "epochs": 2, "burn_in_epochs": 0,
        "meta_val_size": 100, "holdout_val_size": 100, "pgd_steps": 5, "eval_pgd_steps": 5, "aa_samples": 0,
        "analysis_samples": 0, "plots": False, "device": "cpu", "seed": 3,
        # the meta optimiser the traces were recorded with, pinned so a change of its defaults does not move them
        "meta_optimizer": "adam", "meta_lr": 1e-3, "meta_weight_decay": 1e-4, "meta_grad_scale": "raw"}
SAMPLES = 64


def trace(method: str) -> dict[str, list]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reduction order of a matmul depends on the thread count
    try:
        result = train(TrainConfig.from_dict({**BASE, "method": method}), progress=False, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return {"train_loss": [h["train_loss"] for h in result.history],
            "val_clean_acc": [h["val_clean_acc"] for h in result.history],
            "val_pgd_acc": [h["val_pgd_acc"] for h in result.history],
            "weights": result.sample_weights[:, :SAMPLES].tolist()}


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"config": BASE, "runs": {m: trace(m) for m in METHODS}}, indent=1))
    print(f"wrote {GOLDEN}")
