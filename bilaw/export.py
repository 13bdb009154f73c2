"""`python -m bilaw.export RUN --format robustbench --out DIR`: a finished run as a RobustBench entry.

RobustBench ranks models on CIFAR-10, CIFAR-100 and ImageNet; this project trains the first two
of those (other datasets are refused with an `ExportError`). The export writes to DIR:

- `model.pt`: `{"state_dict": ...}`, the layout RobustBench's loader reads (`checkpoint["state_dict"]`,
  then `load_state_dict(strict=True)`). Every model here takes [0, 1] images and none of the
  project's runs has a normalisation layer, so the network expects exactly what RobustBench feeds it.
- `model_info.json`: the leaderboard's fields (link, name, authors, additional_data,
  number_forward_passes, dataset, venue, architecture, eps, clean_acc, reported, autoattack_acc and,
  when needed, footnote) plus what a reader needs to judge the numbers: the threat model, how
  many test points each accuracy was measured on, the AutoAttack version, the input convention.
- `model_def.py`: rebuilds the architecture with `bilaw.models.build_model` and the run's exact
  arguments and loads `model.pt` into it.

Accuracies are percent strings with two decimals, as RobustBench writes them.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from bilaw.config.train_config import TrainConfig
from bilaw.eval.attacks import NORMS
from bilaw.file_errors import DamagedFileError
from bilaw.metrics import TEST_AA_ACC, TEST_CLEAN_ACC
from bilaw.models import Normalize, build_model, model_kwargs
from bilaw.runs.saved import load_run, read_metrics, read_run_config
from bilaw.training.checkpoint import atomic_write_text, save_checkpoint

FORMATS = ("robustbench",)
CHECKPOINT_NAME, MODEL_INFO_NAME, MODEL_DEF_NAME = "model.pt", "model_info.json", "model_def.py"
# RobustBench's datasets this project trains: name (RobustBench's own) -> (title, classes, image shape).
ROBUSTBENCH_DATASETS: dict[str, tuple[str, int, tuple[int, int, int]]] = {
    "cifar10": ("CIFAR-10", 10, (3, 32, 32)), "cifar100": ("CIFAR-100", 100, (3, 32, 32))}
# The budget of each RobustBench leaderboard, by (dataset, threat model); CIFAR-100 has no L2 one.
LEADERBOARD_EPS: dict[tuple[str, str], float] = {
    ("cifar10", "Linf"): 8 / 255, ("cifar10", "L2"): 0.5, ("cifar100", "Linf"): 8 / 255}
EPS_TOLERANCE = 1e-9
DEFAULT_VENUE = "Unpublished"  # what RobustBench shows for an entry with no venue
# RobustBench's loader strips these from any key that contains them (meant for wrapper prefixes).
MANGLED_BY_LOADER = ("module.", "model.")


class ExportError(ValueError):
    """A run that cannot be exported in the asked format (the message says why and what to do)."""


@dataclass
class ExportResult:
    """What `export_robustbench` wrote, the model_info it holds, and notes for the user (caveats
    about the numbers: AutoAttack on a subset, a non-standard AutoAttack, none at all)."""

    out_dir: Path
    files: list[Path]
    model_info: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def format_eps(eps: float, threat_model: str) -> str:
    """The budget as RobustBench writes it: "n/255" for an l-inf budget that is n/255 (within
    `EPS_TOLERANCE`), else the number as written in the config ("0.031", "0.5")."""
    if threat_model == "Linf":
        n = round(eps * 255)
        if n > 0 and abs(eps - n / 255) <= EPS_TOLERANCE:
            return f"{n}/255"
    return f"{eps:g}"


def eps_footnote(eps: float, dataset: str, threat_model: str) -> str | None:
    """A footnote when the run's budget is not its leaderboard's: GAIRAT's and the BiLAW paper's
    0.031 is 7.9/255, slightly under the 8/255 (0.03137...) of the l-inf leaderboards, which
    RobustBench marks with a footnote; None when the budgets agree."""
    title = ROBUSTBENCH_DATASETS[dataset][0]
    board = LEADERBOARD_EPS.get((dataset, threat_model))
    if board is None:
        return (f"RobustBench has no {title} {threat_model} leaderboard; evaluated at "
                f"eps = {format_eps(eps, threat_model)}.")
    if abs(eps - board) <= EPS_TOLERANCE:
        return None
    if threat_model == "Linf" and abs(eps - board) < 0.5 / 255:
        return (f"Uses \\(\\ell_{{\\infty}}\\) = {eps:g} \u2248 {eps * 255:.1f}/255 instead of "
                f"{format_eps(board, threat_model)} (= {board:.5f}).")
    return (f"Evaluated at {threat_model} eps = {format_eps(eps, threat_model)}, not the {title} leaderboard's "
            f"{format_eps(board, threat_model)}.")


def architecture_name(cfg: TrainConfig) -> str:
    """RobustBench's spelling of a WideResNet ("WideResNet-34-10"); other models by their
    registry name. `wrn34_10` keeps TRADES' depth convention, as RobustBench lists TRADES."""
    if cfg.model == "wrn":
        return f"WideResNet-{cfg.wrn_depth}-{cfg.wrn_width}"
    preset = re.fullmatch(r"wrn(\d+)_(\d+)", cfg.model)
    return f"WideResNet-{preset[1]}-{preset[2]}" if preset else f"{cfg.model} (bilaw.models)"


def _percent(fraction: Any, key: str) -> str:
    """An accuracy of metrics.json's "final" (a fraction) as RobustBench's percent string."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ExportError(f"metrics.json's final {key} is {fraction!r}, not an accuracy in [0, 1]: the run's "
                          f"metrics are damaged; train the run again")
    return f"{100 * fraction:.2f}"


def _test_points(final: dict[str, Any]) -> int | None:
    """How many test images the run's clean accuracy was measured on: the total count of its
    test confusion matrix (None for a run whose metrics.json predates it)."""
    conf = final.get("test_adv_confusion")
    try:
        return int(sum(sum(row) for row in conf))
    except TypeError:
        return None


def _check_robustbench_dataset(run_dir: Path, dataset: str) -> None:
    if dataset not in ROBUSTBENCH_DATASETS:
        raise ExportError(
            f"{run_dir} is a {dataset} run: RobustBench's leaderboards cover CIFAR-10, CIFAR-100 and "
            f"ImageNet, and of those this project trains CIFAR-10 and CIFAR-100 (dataset: cifar10 or "
            f"cifar100); a {dataset} model has no leaderboard to enter")


def robustbench_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights and buffers on the CPU, each its own compact tensor; a key that
    RobustBench's loader would rewrite (one containing "module." or "model.") is an ExportError."""
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    mangled = [k for k in state if any(s in k for s in MANGLED_BY_LOADER)]
    if mangled:
        raise ExportError(f"the model's parameter names {mangled[:3]} contain {' or '.join(MANGLED_BY_LOADER)}, "
                          f"which RobustBench's loader strips; rename that submodule to export it")
    return state


def model_def_source(cfg: TrainConfig, run_dir: Path, input_shape: Sequence[int], num_classes: int,
                     info: dict[str, Any]) -> str:
    """The text of model_def.py: `get_model()` (the untrained network, what a RobustBench model
    zoo entry builds) and `load_model()` (it with model.pt loaded, strict, in eval mode)."""
    args = ", ".join([repr(cfg.model), repr(tuple(input_shape)), repr(num_classes)]
                     + [f"{k}={v!r}" for k, v in model_kwargs(cfg).items()])
    title = ROBUSTBENCH_DATASETS[cfg.dataset][0]
    return f'''"""The network of the RobustBench export of the bilaw run {run_dir.name!r}.

{info["architecture"]} for {title} ({num_classes} classes), {info["threat_model"]} eps {info["eps"]}.
It takes images in [0, 1] of shape (B, {", ".join(map(str, input_shape))}) and returns logits; it has no
normalisation layer and expects no normalisation, which is what RobustBench feeds a model.
Needs PyTorch and the bilaw package (an install of the bilaw-tune repository).
"""
from pathlib import Path

import torch

from bilaw.models import build_model

CHECKPOINT = Path(__file__).resolve().with_name({CHECKPOINT_NAME!r})


def get_model() -> torch.nn.Module:
    """The architecture, untrained, built with the run's exact arguments."""
    return build_model({args})


def load_model(checkpoint=CHECKPOINT, device="cpu") -> torch.nn.Module:
    """get_model() with the exported weights (strict: every key must match), in eval mode."""
    model = get_model()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"], strict=True)
    return model.to(device).eval()


if __name__ == "__main__":
    net = load_model()
    logits = net(torch.rand(2, {", ".join(map(str, input_shape))}))
    print(f"loaded {{CHECKPOINT}}: {{sum(p.numel() for p in net.parameters())}} parameters, "
          f"logits {{tuple(logits.shape)}}")
'''


def build_model_info(cfg: TrainConfig, metrics: dict[str, Any], model: nn.Module, *, name: str, authors: str,
                     link: str, venue: str, reported: str | None, architecture: str | None
                     ) -> tuple[dict[str, Any], list[str]]:
    """The model_info dict (RobustBench's fields first, in its order, then this project's) and
    the notes on how far its numbers are from a leaderboard evaluation."""
    final = metrics["final"]
    threat = NORMS.facts(cfg.norm).get("autoattack")
    if threat not in ("Linf", "L2"):
        raise ExportError(f"the run's norm {cfg.norm!r} is no RobustBench threat model (Linf, L2)")
    n_test = _test_points(final)
    has_aa = isinstance(final.get(TEST_AA_ACC), (int, float))
    n_aa = (min(cfg.aa_samples, n_test) if n_test is not None else cfg.aa_samples) if has_aa else None
    aa_version = f"custom ({', '.join(cfg.aa_attacks)})" if cfg.aa_attacks else cfg.aa_version
    autoattack_acc = _percent(final[TEST_AA_ACC], TEST_AA_ACC) if has_aa else None
    footnote = eps_footnote(cfg.eps, cfg.dataset, threat)
    normalised = any(isinstance(m, Normalize) for m in model.modules())
    info: dict[str, Any] = {
        "link": link, "name": name, "authors": authors, "additional_data": False, "number_forward_passes": 1,
        "dataset": cfg.dataset, "venue": venue, "architecture": architecture or architecture_name(cfg),
        "eps": format_eps(cfg.eps, threat), "clean_acc": _percent(final[TEST_CLEAN_ACC], TEST_CLEAN_ACC),
        "reported": reported if reported is not None else autoattack_acc,
        **({"footnote": footnote} if footnote else {}),
        "autoattack_acc": autoattack_acc,
        "threat_model": threat,
        "clean_acc_n_examples": n_test,
        "autoattack_acc_n_examples": n_aa,
        "autoattack_version": aa_version if has_aa else None,
        "inputs": "images in [0, 1], " + ("normalised by the model's first layer" if normalised
                                          else "no normalisation (the model has no normalisation layer)"),
    }
    notes = []
    if not has_aa:
        notes.append("the run has no AutoAttack accuracy (aa_samples: 0), so autoattack_acc is null"
                     + (" and so is reported" if reported is None else "")
                     + "; evaluate the model with AutoAttack before submitting (README, Export for RobustBench)")
    else:
        if n_test is not None and n_aa < n_test:
            notes.append(f"autoattack_acc is on the first {n_aa} of the {n_test} test points; the leaderboards "
                         f"evaluate on the whole test set")
        if aa_version != "standard":
            notes.append(f"autoattack_acc is from AutoAttack version {aa_version!r}; the leaderboards use 'standard'")
    return info, notes


def export_robustbench(run_dir: str | Path, out_dir: str | Path, *, name: str | None = None, authors: str = "",
                       link: str = "", venue: str = DEFAULT_VENUE, reported: str | None = None,
                       architecture: str | None = None) -> ExportResult:
    """Write model.pt, model_info.json and model_def.py for the run in `run_dir` to `out_dir`.

    `name` (default: the run folder's name), `authors`, `link`, `venue`, `reported` (the robust
    accuracy in percent a paper reports; default: the run's AutoAttack accuracy) and
    `architecture` fill the leaderboard's descriptive fields. A run that is not CIFAR-10/100 is
    an `ExportError`; a missing or damaged run file is the readers' `DamagedFileError`.
    """
    run_dir, out = Path(run_dir), Path(out_dir)
    _check_robustbench_dataset(run_dir, str(read_run_config(run_dir)["dataset"]))
    model, cfg = load_run(run_dir, "cpu")
    _check_robustbench_dataset(run_dir, cfg.dataset)  # best.pt's config is the one its weights ran
    metrics = read_metrics(run_dir)
    title, num_classes, input_shape = ROBUSTBENCH_DATASETS[cfg.dataset]
    state = robustbench_state_dict(model)
    fresh = build_model(cfg.model, input_shape, num_classes, **model_kwargs(cfg))
    try:  # the arguments model_def.py writes must take these weights exactly
        fresh.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"{run_dir}: its weights do not fit a {cfg.model} for {title} "
                          f"({num_classes} classes, input {input_shape}): {str(exc)[:300]}") from None
    info, notes = build_model_info(cfg, metrics, model, name=name or run_dir.resolve().name, authors=authors,
                                   link=link, venue=venue, reported=reported, architecture=architecture)
    files = [out / CHECKPOINT_NAME, out / MODEL_INFO_NAME, out / MODEL_DEF_NAME]
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; pass a folder (it is created when missing)")
    try:
        save_checkpoint({"state_dict": state}, files[0])
        atomic_write_text(files[1], json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(files[2], model_def_source(cfg, run_dir, input_shape, num_classes, info))
    except OSError as exc:
        raise ExportError(f"cannot write the export to {out}: {exc.strerror or exc}") from None
    return ExportResult(out, files, info, notes)


def _reported(text: str) -> str:
    """--reported: a percentage in [0, 100], kept as written."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage in [0, 100] (e.g. 47.04)")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bilaw.export",
        description="Export a finished CIFAR-10/100 run as a RobustBench entry: model.pt ({'state_dict': ...}, "
                    "[0, 1] inputs), model_info.json and model_def.py.")
    parser.add_argument("run_dir", metavar="RUN", help="a folder written by `python -m bilaw.train --out DIR`")
    parser.add_argument("--format", choices=FORMATS, default="robustbench",
                        help="export format (default: robustbench)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the export to (created)")
    parser.add_argument("--name", default=None,
                        help="the entry's title, e.g. the paper's (default: the run folder's name)")
    parser.add_argument("--authors", default="", help="comma-separated authors (default: empty)")
    parser.add_argument("--link", default="", help="link to the paper or code (default: empty)")
    parser.add_argument("--venue", default=DEFAULT_VENUE, help=f"publication venue (default: {DEFAULT_VENUE})")
    parser.add_argument("--reported", type=_reported, default=None,
                        help="robust accuracy in percent a paper reports (default: the run's AutoAttack accuracy)")
    parser.add_argument("--architecture", default=None, help="architecture name (default: from the run's model)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = export_robustbench(args.run_dir, args.out, name=args.name, authors=args.authors, link=args.link,
                                    venue=args.venue, reported=args.reported, architecture=args.architecture)
    except (ExportError, DamagedFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = result.model_info
    aa = (f", AutoAttack {info['autoattack_acc']}% on {info['autoattack_acc_n_examples']}"
          if info["autoattack_acc"] is not None else "")
    print(f"{info['dataset']} {info['threat_model']} eps {info['eps']}: clean {info['clean_acc']}% on "
          f"{info['clean_acc_n_examples']} test images{aa}", flush=True)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {result.out_dir}/{CHECKPOINT_NAME}, {MODEL_INFO_NAME}, {MODEL_DEF_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
