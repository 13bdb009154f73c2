"""AutoAttack on the study's test points (`tune/study.py`): every arm's best state is attacked on the
same first points, the training's own AutoAttack points reused and the rest run here, kept in
`study_aa.npz` with what AutoAttack's own sanity checks said of them."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

AA_NAME = "study_aa.npz"


def study_autoattack(folder: Path, n_points: int, log=print) -> np.ndarray | None:
    """Which of the first `n_points` test points the run's best state keeps correct under
    AutoAttack (its config's version and attacks): the training's own AutoAttack points, extended
    by running it on the rest, kept in `study_aa.npz`. None for a run without per-point results,
    or a kept copy (no best.pt) without enough stored points."""
    from bilaw.eval.per_point import PER_POINT_NAME

    per_point = folder / PER_POINT_NAME
    if not per_point.exists():
        return None
    with np.load(per_point) as npz:
        trained = npz["test_aa"] if "test_aa" in npz.files else np.zeros(0, dtype=bool)
    if len(trained) >= n_points:
        return trained[:n_points]
    stored = folder / AA_NAME
    if stored.exists():
        with np.load(stored) as npz:
            if len(npz["correct"]) >= n_points:
                return npz["correct"][:n_points]
    if not (folder / "best.pt").exists():  # a kept copy without the model: its AutoAttack stays as stored
        return None
    correct, seconds, checks = _autoattack_points(folder, len(trained), n_points, log)
    full = np.concatenate([trained, correct])
    np.savez_compressed(stored, correct=full, trained_points=len(trained), seconds=seconds,
                        warnings=np.asarray(checks, dtype=str))
    return full


def _autoattack_points(folder: Path, start: int, stop: int, log) -> tuple[np.ndarray, float, tuple[str, ...]]:
    import torch

    from bilaw.config.run_data import run_data_args
    from bilaw.data.datasets import load_data
    from bilaw.eval.autoattack import run_autoattack
    from bilaw.runs.saved import load_best

    model, cfg, _ = load_best(folder)
    data = load_data(cfg.dataset, **run_data_args(cfg))
    x, y = data.x_test[start:stop], data.y_test[start:stop]
    version = "custom" if cfg.aa_attacks else cfg.aa_version  # as the trainer calls it
    log(f"  AutoAttack ({version}) on test points {start}-{start + len(y) - 1} of {folder}")
    began = time.perf_counter()
    result = run_autoattack(model, x, y, norm=cfg.norm, eps=cfg.eps, n=len(y), version=version,
                            attacks=cfg.aa_attacks, n_iter=cfg.aa_n_iter, seed=cfg.seed)
    correct = result.y_pred.to(torch.device("cpu")).eq(y[:result.n].cpu()).numpy()
    for message in result.warnings:
        log(f"    AutoAttack's check: {message}")
    return correct, time.perf_counter() - began, result.warnings


def autoattack_checks(folder: Path, final: dict[str, Any], aa_points: int) -> tuple[list[str], str | None]:
    """What AutoAttack's own sanity checks said of a run's best state on the study's points, one
    line each naming the points: the training's evaluation (`autoattack_warnings` in its final
    metrics) and the study's extension (`study_aa.npz`); and the extension's points when that file
    was stored before its checks were kept (else None). A check does not change the AA accuracy,
    which counts every point any of its attacks broke; it says the white-box attacks may have
    missed some (e.g. Square, a black-box attack, beat them), so gradient attacks such as PGD may
    read high."""
    with np.load(folder / "per_point.npz") as npz:
        trained = len(npz["test_aa"]) if "test_aa" in npz.files else 0
    lines = [f"points 0-{trained - 1}: {first_sentence(m)}" for m in final.get("autoattack_warnings", [])]
    stored = folder / AA_NAME
    if aa_points > trained and stored.exists():
        with np.load(stored) as npz:
            where = f"points {trained}-{min(aa_points, len(npz['correct'])) - 1}"
            if "warnings" not in npz.files:
                return lines, where
            lines += [f"{where}: {first_sentence(str(m))}" for m in npz["warnings"]]
    return lines, None


def first_sentence(message: str) -> str:
    """AutoAttack's check up to its first full stop (the rest is its generic advice)."""
    head, dot, _ = message.partition(". ")
    return head + "." if dot else message


def check_note(found: dict, arms: list[str], seeds: list[int]) -> list[str]:
    """Which runs AutoAttack's own sanity checks flagged, on which of the study's points."""
    runs = [(a, s) for a in arms for s in seeds if (a, s) in found]
    if not runs:
        return []
    flagged = [(a, s) for a, s in runs if found[(a, s)]["aa_checks"][0]]
    unrecorded = [f"{a} seed {s} ({found[(a, s)]['aa_checks'][1]})" for a, s in runs if found[(a, s)]["aa_checks"][1]]
    lines = [f"AutoAttack's own checks (they leave AA as it is, the points any of its attacks broke, but say "
             f"that gradient attacks such as PGD may read high) flagged {len(flagged)} of {len(runs)} runs"
             + (":" if flagged else ".")]
    lines += [f"- {a} seed {s}, {check}" for a, s in flagged for check in found[(a, s)]["aa_checks"][0]]
    if unrecorded:
        lines.append(f"The checks on the points the study added were not recorded for {', '.join(unrecorded)}: "
                     f"their {AA_NAME} was written before the checks were kept.")
    return lines + [""]
