"""What a re-run needs to reproduce a run besides its config keys, and what "the paper's
evaluation" is.

Threads: a CPU run's float sums are split across torch's threads, so the thread count changes
its numbers. A run records the count it used as its `threads` key (`use_threads`: a config's
value, or where it has none, torch's default in this process), so that its config.yaml re-runs
it exactly on the same machine. The trainer sets no determinism flag (torch's defaults: cuDNN
autotuning off, non-deterministic CUDA kernels allowed), so there is no other setting to record;
README.md ("Re-running a config") says what still varies across machines.

`FULL_EVAL` is the paper's evaluation, the one definition that `python -m bilaw.train --full-eval`,
tune/rerun_best.py and tune/report.py's headings use: PGD-20 (held-out validation too, which
picks the best epoch) and standard AutoAttack with its own iterations on the first 1,000 test
points. `evaluation_label` names the evaluation a config had.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from bilaw.config.train_config import TrainConfig

FULL_EVAL: dict[str, Any] = {"eval_pgd_steps": 20, "aa_version": "standard", "aa_attacks": None, "aa_n_iter": None,
                             "aa_samples": 1000}


def use_threads(cfg: TrainConfig) -> TrainConfig:
    """Set torch's thread count to `cfg.threads` (None: keep torch's default here) and return the
    config with the count used recorded, which is what the run's config.yaml should say."""
    threads = torch.get_num_threads() if cfg.threads is None else cfg.threads
    torch.set_num_threads(threads)
    return cfg if cfg.threads == threads else cfg.replace(threads=threads)


def threads_note(recorded: int | None, used: int, source: str) -> str | None:
    """One line where a re-run uses another thread count than the run it re-runs recorded
    (`source` names where that count is written); None where they agree or none was recorded."""
    if recorded is None or recorded == used:
        return None
    return (f"note: running with {used} torch thread{'s' if used != 1 else ''}, not the {recorded} {source} "
            f"records: float sums differ with the count, so the numbers will not match that run's exactly")


def pgd_label(steps: Any) -> str:
    """'PGD-20' for 20 evaluation steps."""
    return f"PGD-{steps}"


def aa_label(values: Mapping[str, Any]) -> str:
    """A config's AutoAttack as words: 'standard', 'plus', 'rand', or its custom subset, with the
    iterations where set ('apgd-ce+apgd-t, 20 iterations'); 'none' without AutoAttack. `values`
    may be a config dict or MLflow's string params ("None"; a list joined by commas)."""
    def given(key: str) -> Any:
        value = values.get(key)
        return None if value in (None, "None", "null", "", []) else value

    if str(values.get("aa_samples", "1")) == "0":
        return "none"
    attacks = given("aa_attacks")
    if isinstance(attacks, str):
        attacks = [a.strip() for a in attacks.strip("[]").replace("'", "").split(",") if a.strip()]
    name = "+".join(attacks) if attacks else str(given("aa_version") or "standard")
    iters = given("aa_n_iter")
    return name + (f", {iters} iterations" if iters is not None else "")


def evaluation_label(values: Mapping[str, Any], *, mark_full: bool = True) -> str:
    """A config's evaluation in words, 'PGD-20, AutoAttack standard on 1000 test points', ending
    ' (the paper's evaluation)' where it is exactly `FULL_EVAL` (unless not `mark_full`)."""
    aa = aa_label(values)
    text = pgd_label(values["eval_pgd_steps"]) + (", no AutoAttack" if aa == "none" else
                                                  f", AutoAttack {aa} on {values['aa_samples']} test points")
    return text + (" (the paper's evaluation)" if mark_full and is_full_eval(values) else "")


def is_full_eval(values: Mapping[str, Any]) -> bool:
    """Whether a config's evaluation keys are exactly `FULL_EVAL`'s."""
    return all(values.get(k) == v for k, v in FULL_EVAL.items())
