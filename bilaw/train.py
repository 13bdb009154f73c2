"""`python -m bilaw.train --config FILE.yaml [--set key=value ...] [--threads N] [--full-eval] --out DIR`:
train one config.

Writes DIR/config.yaml, DIR/metrics.json and DIR/best.pt; DIR/checkpoint.pt is written after
every epoch, so running the same command again resumes an interrupted run. The run uses the
torch thread count its config records (a search trial's best_config.yaml does), so a re-run
reproduces that run on the same machine; `--threads` overrides it, with a note
(bilaw/config/reproducibility.py). `--full-eval` applies the paper's evaluation (`FULL_EVAL`).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from bilaw.config.reproducibility import FULL_EVAL, evaluation_label, threads_note, use_threads
from bilaw.config.train_config import ConfigError, TrainConfig, choices, load_yaml_mapping, parse_overrides
from bilaw.data.datasets import MissingDatasetError
from bilaw.file_errors import DamagedFileError
from bilaw.metrics import LAST_TEST_CLEAN_ACC, LAST_TEST_PGD_ACC, TEST_AA_ACC, TEST_CLEAN_ACC, TEST_PGD_ACC


def _keys_help() -> str:
    lines = ["config keys (YAML, --set key=value) and their defaults (None = derived):"]
    allowed_names = choices()
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        allowed = f"  (one of: {', '.join(allowed_names[f.name])})" if f.name in allowed_names else ""
        lines.append(f"  {f.name:<22} {default!r}{allowed}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bilaw.train", description="Train one model with one method and write its results.",
        epilog=_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of config keys (optional: defaults train AT on digits)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable), e.g. --set method=bilaw --set eps=0.1")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (the config's `threads` key; default: the count the config records, "
                             "else torch's default); a count other than the recorded one is noted")
    parser.add_argument("--full-eval", action="store_true",
                        help="the paper's evaluation: " + ", ".join(f"{k}={v}" for k, v in FULL_EVAL.items())
                             + " (PGD-20 on the held-out set too; --set still overrides)")
    parser.add_argument("--out", required=True, help="output folder (re-running resumes from its checkpoint)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, only per-epoch lines")
    return parser


def load_config(config_path: str | None, overrides: list[str], *, full_eval: bool = False,
                threads: int | None = None) -> TrainConfig:
    """The config file's keys, then `FULL_EVAL` (with `full_eval`), the --set overrides and
    `threads`; an error in a key the file set names the file."""
    data = load_yaml_mapping(config_path) if config_path else {}
    changed = {**(FULL_EVAL if full_eval else {}), **parse_overrides(overrides),
               **({} if threads is None else {"threads": threads})}
    data.update(changed)
    try:
        return TrainConfig.from_dict(data).resolved()
    except ConfigError as exc:
        if not config_path:
            raise
        errors = [e if e.split(":")[0] in changed else f"{config_path}: {e}" for e in exc.errors]
        raise ConfigError(errors) from None


def recorded_threads(config_path: str | None) -> int | None:
    """The thread count a config file records (None: none, or no file)."""
    value = load_yaml_mapping(config_path).get("threads") if config_path else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bilaw.runs.saved import save_run
    from bilaw.training.trainer import NonFiniteLossError, train

    try:
        cfg = use_threads(load_config(args.config, args.set, full_eval=args.full_eval, threads=args.threads))
        out = Path(args.out)
        note = threads_note(recorded_threads(args.config), cfg.threads, f"{args.config}")
        if note:
            print(note, flush=True)
        threads = f"{cfg.threads} torch thread{'s' if cfg.threads != 1 else ''}"
        print(f"training {cfg.method} ({cfg.objective} + {cfg.weighting}) on {cfg.dataset} with {cfg.model}, "
              f"{cfg.norm} eps {cfg.eps}, {cfg.epochs} epochs, {threads} -> {out}\n"
              f"evaluation: {evaluation_label(cfg.to_dict())}", flush=True)
        progress = sys.stderr.isatty() and not args.no_progress
        result = train(cfg, checkpoint_dir=out, progress=progress, log=lambda s: print(s, flush=True))
    except (ConfigError, MissingDatasetError, DamagedFileError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_run(result, out)
    f = result.final
    aa = f"  AA {f[TEST_AA_ACC]:.4f}" if TEST_AA_ACC in f else ""
    print(f"best epoch {f['best_epoch']}: test clean {f[TEST_CLEAN_ACC]:.4f}  PGD-{cfg.eval_pgd_steps} "
          f"{f[TEST_PGD_ACC]:.4f}{aa}  | last epoch: clean {f[LAST_TEST_CLEAN_ACC]:.4f}  "
          f"PGD {f[LAST_TEST_PGD_ACC]:.4f}")
    extra = "".join(f", {name}" for name in ("analysis.pt", "plots/") if (out / name).exists())
    print(f"wrote {out}/config.yaml, metrics.json, best.pt{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
