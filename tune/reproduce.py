"""`python tune/reproduce.py --table 1 --dataset fashion_mnist [--model fc1] [--norm linf]
[--epochs N] [--seeds S]`: the BiLAW paper's comparison tables at its fixed hyperparameters.

Every (setting, method, seed) is one training run in OUT/table<T>/<workload>/<method>/seed<s>
(resumed from its checkpoint when interrupted, reused when finished with the same config) and
one MLflow run tagged with that key (tag reproduce_key = table<T>/<workload>/<method>/seed<s>). The table is then read back from the tracked runs and
written in the paper's layout, mean and sample standard deviation over seeds, in percent:
OUT/table<T>_<dataset>.md (the best state: clean, PGD, AutoAttack; and the last state).

The paper's protocol: baselines train on the whole training set, BiLAW and the non-parametric
variant on what is left after the two 1,000-sample validation sets (baselines_full_train).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python tune/reproduce.py`
    import _script_path  # noqa: F401  (puts this repository first on sys.path)

from bilaw.config.train_config import (REUSE_FREE_KEYS, ConfigError, TrainConfig, config_differences,  # noqa: E402
                                       parse_overrides)
from bilaw.data.datasets import MissingDatasetError  # noqa: E402
from bilaw.file_errors import DamagedFileError  # noqa: E402
from bilaw.metrics import (LAST_TEST_CLEAN_ACC, LAST_TEST_PGD_ACC, TEST_AA_ACC, TEST_CLEAN_ACC,  # noqa: E402
                           TEST_PGD_ACC)
from bilaw.registry import unknown_name_message  # noqa: E402
from tune import spaces as sp  # noqa: E402
from tune.spaces.seeds import SeedsError  # noqa: E402
from tune.spaces.seeds import parse_seeds as seeds_rule  # noqa: E402
from tune.tracking.runs import TrackingError, absolute_tracking_uri, check_tracking_uri, redact_uri  # noqa: E402

KEY_TAG = "reproduce_key"
QUICK_DATASET = "digits"  # the embedded workload: every table's columns run anywhere, for checks


@dataclass(frozen=True)
class Row:
    label: str
    method: str
    overrides: dict = field(default_factory=dict, hash=False)
    name: str = ""      # the run folder's name for this row (default: method and overrides)


@dataclass(frozen=True)
class Setting:
    workload: str
    model: str
    norm: str
    label: str


@dataclass(frozen=True)
class Table:
    number: int
    datasets: dict            # dataset name -> [Setting] in the paper's column order
    rows: tuple


def _t1(prefix: str) -> list[Setting]:
    return [Setting(f"{prefix}_tiny_cnn_linf", "tiny_cnn", "linf", "Tiny-CNN, l-inf 0.1"),
            Setting(f"{prefix}_tiny_cnn_l2", "tiny_cnn", "l2", "Tiny-CNN, l-2 0.3"),
            Setting(f"{prefix}_fc1_linf", "fc1", "linf", "FC1, l-inf 0.1"),
            Setting(f"{prefix}_fc1_l2", "fc1", "l2", "FC1, l-2 0.3")]


TABLES = {
    1: Table(1, {"mnist": _t1("mnist"), "fashion_mnist": _t1("fmnist")},
             (Row("plain", "plain"), Row("AT", "at"), Row("GAIRAT", "gairat"), Row("WMMR", "wmmr"),
              Row("MAIL", "mail"), Row("BiLAW", "bilaw"))),
    2: Table(2, {"cifar10": [
        Setting("cifar10_small_cnn_linf2", "small_cnn", "linf", "Small-CNN, l-inf 0.0078"),
        Setting("cifar10_small_cnn_linf8", "small_cnn", "linf", "Small-CNN, l-inf 0.031"),
        Setting("cifar10_wrn32_linf2", "wrn32_10", "linf", "WRN-32-10, l-inf 0.0078"),
        Setting("cifar10_wrn32_linf8", "wrn32_10", "linf", "WRN-32-10, l-inf 0.031")]},
             (Row("GAIRAT", "gairat"), Row("WMMR", "wmmr"), Row("MAIL", "mail"), Row("AT", "at"),
              Row("TRADES (1/lambda = 6)", "trades"), Row("Non-parametric weighting", "nonparam"),
              Row("BiLAW", "bilaw"), Row("BiLAW-TRADES", "bilaw_trades"))),
    3: Table(3, {"cifar100": [Setting("cifar100_wrn32_linf8", "wrn32_10", "linf", "WRN-32-10, l-inf 0.031")]},
             (Row("BiLAW-TRADES", "bilaw_trades"), Row("AT", "at"),
              Row("TRADES (1/lambda = 1)", "trades", {"trades_beta": 1.0}),
              Row("TRADES (1/lambda = 6)", "trades", {"trades_beta": 6.0}),
              Row("GAIRAT", "gairat"), Row("WMMR", "wmmr"), Row("MAIL", "mail"))),
}
BEST_COLUMNS = [("Clean", TEST_CLEAN_ACC), ("PGD", TEST_PGD_ACC), ("AA", TEST_AA_ACC)]
LAST_COLUMNS = [("Clean", LAST_TEST_CLEAN_ACC), ("PGD", LAST_TEST_PGD_ACC)]


class ReproduceError(ValueError):
    """A bad argument or a run folder that does not match, found before any training."""


@dataclass
class Job:
    group: str          # what the run belongs to: "table1", "study", ...
    setting: Setting
    row: Row
    seed: int
    cfg: TrainConfig | None   # set by add_job once validated

    @property
    def slug(self) -> str:
        if self.row.name:
            return self.row.name
        return self.row.method + "".join(f"_{k}{v}" for k, v in sorted(self.row.overrides.items()))

    @property
    def key(self) -> str:
        """The MLflow tag value that identifies this run (and its folder below --out)."""
        return f"{self.group}/{self.setting.workload}/{self.slug}/seed{self.seed}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", type=int, required=True, help=f"the paper's table: {', '.join(map(str, TABLES))}")
    p.add_argument("--dataset", required=True,
                   help="a dataset of that table (1: mnist, fashion_mnist; 2: cifar10; 3: cifar100), or digits "
                        "for a quick check: the table's columns on the embedded digits workload")
    p.add_argument("--model", help="only this model's columns (e.g. fc1, tiny_cnn)")
    p.add_argument("--norm", help="only this threat model's columns (linf, l2)")
    p.add_argument("--methods", help="only these methods, comma-separated (default: the table's rows)")
    p.add_argument("--epochs", type=int, help="a reduced schedule (the paper: 100); milestones stay at 30%%/60%%")
    p.add_argument("--seeds", default="2", help="a count N (seeds 0..N-1) or a list '0,3' (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for every run (e.g. device=cuda, aa_samples=500)")
    p.add_argument("--out", default="results", help="folder for the runs and the table (default ./results)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns.db in this folder)")
    p.add_argument("--experiment", help="MLflow experiment (default reproduce_table<T>)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    return p


def parse_seeds(text: str) -> list[int]:
    try:
        return seeds_rule(text)
    except SeedsError as exc:
        raise ReproduceError(f"--seeds {text!r}: {exc}") from None


def select(args) -> tuple[Table, list[Setting], list[Row]]:
    if args.table not in TABLES:
        raise ReproduceError(f"--table {args.table}: allowed: {', '.join(map(str, TABLES))}")
    table = TABLES[args.table]
    if args.dataset == QUICK_DATASET:
        first = next(iter(table.datasets.values()))
        settings = [Setting(QUICK_DATASET, s.model, s.norm, f"{s.model}, {s.norm} (digits)") for s in first]
    elif args.dataset not in table.datasets:
        raise ReproduceError(f"--dataset {args.dataset!r}: " + unknown_name_message(
            "dataset", args.dataset, [*table.datasets, QUICK_DATASET]) + f" (table {table.number})")
    else:
        settings = table.datasets[args.dataset]
    for flag, attr in (("model", "model"), ("norm", "norm")):
        value = getattr(args, flag)
        if value is not None:
            allowed = sorted({getattr(s, attr) for s in settings})
            if value not in allowed:
                raise ReproduceError(f"--{flag} {value!r}: table {table.number} has {', '.join(allowed)}")
            settings = [s for s in settings if getattr(s, attr) == value]
    rows = list(table.rows)
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        known = {r.method for r in rows} | {r.label for r in rows}
        bad = [m for m in wanted if m not in known]
        if bad:
            raise ReproduceError(f"--methods: {bad} not in table {table.number}; allowed: "
                                 f"{', '.join(dict.fromkeys(r.method for r in rows))}")
        rows = [r for r in rows if r.method in wanted or r.label in wanted]
    return table, settings, rows


def plan_jobs(args, table: Table, settings: list[Setting], rows: list[Row], seeds: list[int]) -> list[Job]:
    workloads = sp.load_workloads()
    overrides = parse_overrides(args.set)
    jobs, errors = [], []
    for setting in settings:
        base = dict(workloads[setting.workload].config)
        if setting.workload == QUICK_DATASET:
            base.update(model=setting.model, norm=setting.norm)
        for row in rows:
            for seed in seeds:
                data = {**base, "method": row.method, **row.overrides,
                        "baselines_full_train": True, **overrides, "seed": seed}
                add_job(jobs, errors, Job(f"table{table.number}", setting, row, seed, None), data, args.epochs)
    if errors:
        raise ConfigError(errors)
    return jobs


def add_job(jobs: list[Job], errors: list[str], job: Job, data: dict, epochs: int | None) -> None:
    """Append `job` with the config `data` (its epochs replaced by `epochs` if given), validated;
    a config's errors are collected in `errors` instead, each once, so that all are said at once."""
    if epochs is not None:
        data = {**data, "epochs": epochs}
    try:
        job.cfg = TrainConfig.from_dict(data).resolved()
    except ConfigError as exc:
        errors += [e for e in exc.errors if e not in errors]
        return
    jobs.append(job)


def config_difference(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Where a finished run's config differs from `cfg`, outside the keys that change how a run
    is computed but not what (`REUSE_FREE_KEYS`)."""
    return [f"{k}: run {old!r} vs now {new!r}" for k, old, new in config_differences(saved, cfg, REUSE_FREE_KEYS)]


def check_finished(jobs: list[Job], out: Path) -> None:
    """Each finished run below `out` (one with metrics.json) has whole files of this job's config;
    a damaged one is a DamagedFileError naming the file, before any training."""
    from bilaw.runs.saved import METRICS_NAME, read_metrics, read_run_config

    for job in jobs:
        folder = out / job.key
        if (folder / METRICS_NAME).exists() or (folder / METRICS_NAME).is_symlink():
            read_metrics(folder)
            diff = config_difference(read_run_config(folder), job.cfg)
            if diff:
                raise ReproduceError(f"{folder} holds a finished run of another config ({'; '.join(diff[:4])}); "
                                     f"use another --out or remove that folder")


def run_job(job: Job, folder: Path, uri: str, experiment_id: str) -> None:
    """Train `job` into `folder` (resumed from its checkpoint, or reused when finished) and log
    it as one MLflow run tagged with its key."""
    from bilaw.config.reproducibility import use_threads
    from bilaw.metrics import scalar_final
    from bilaw.runs.saved import read_metrics, save_run
    from bilaw.training.trainer import train
    from tune.tracking.runs import TrialRun

    job.cfg = use_threads(job.cfg)  # the run's config records the thread count it trains with
    tags = {"reproduce_table": job.group.removeprefix("table"), "workload": job.setting.workload, "method": job.cfg.method,
            "row": job.row.label, "seed": str(job.seed), "run_dir": str(folder.resolve())}
    run = TrialRun(uri, experiment_id, None, job.key, f"{job.row.label} {job.setting.workload} seed {job.seed}",
                   job.cfg.to_dict(), tags=tags, key_tag=KEY_TAG)
    if (folder / "metrics.json").exists():  # trained before (here or by python -m bilaw.train): log it
        metrics = read_metrics(folder)
        history, final = metrics["history"], metrics["final"]
        print(f"  reusing {folder}", flush=True)
    else:
        print(f"  training {job.row.label} on {job.setting.workload}, seed {job.seed} -> {folder}", flush=True)
        try:
            result = train(job.cfg, lambda m, _: run.log_epoch(m), checkpoint_dir=folder, progress=False,
                           log=lambda s: print("    " + s, flush=True))
        except Exception:
            run.finish("FAILED")
            raise
        save_run(result, folder)
        history, final = result.history, result.final
    run.log_history(history)
    run.log_final(scalar_final(final), folder, history)
    run.finish()


def tracked_finals(uri: str, experiment_id: str, keys: list[str]) -> dict[str, dict[str, float]]:
    """key -> final metrics of the FINISHED MLflow run with that reproduce_key."""
    from tune.tracking.runs import client_for, find_runs

    client = client_for(uri)
    out = {}
    for key in keys:
        runs = find_runs(client, [experiment_id], {f"tags.{KEY_TAG}": key, "attributes.status": "FINISHED"},
                         max_results=1)
        if runs:
            out[key] = dict(runs[0].data.metrics)
    return out


def cell(values: list[float]) -> str:
    """Percent, one decimal: 'mean ± sample std' over seeds, just the mean for one seed."""
    if not values:
        return "–"
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.1f}"
    return f"{statistics.mean(pct):.1f} ± {statistics.stdev(pct):.1f}"


def markdown(table: Table, dataset: str, jobs: list[Job], finals: dict[str, dict]) -> str:
    settings = list(dict.fromkeys(j.setting for j in jobs))
    rows = list(dict.fromkeys(j.row for j in jobs))
    lines = [f"# Table {table.number}, {dataset}: mean ± sample std over seeds, percent", ""]
    for title, columns in (("Best state (held-out PGD accuracy)", BEST_COLUMNS), ("Last epoch's state", LAST_COLUMNS)):
        head = ["method"] + [f"{s.label}: {c}" for s in settings for c, _ in columns] + ["seeds × epochs"]
        lines += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            cells, runs = [row.label], []
            for s in settings:
                mine = [j for j in jobs if j.setting == s and j.row == row]
                got = [finals[j.key] for j in mine if j.key in finals]
                runs += [(j.seed, j.cfg.epochs) for j in mine if j.key in finals]
                cells += [cell([f[m] for f in got if m in f]) for _, m in columns]
            seeds = len({s for s, _ in runs})
            epochs = sorted({e for _, e in runs})
            cells.append(f"{seeds} × {'/'.join(map(str, epochs)) or '–'}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        table, settings, rows = select(args)
        seeds = parse_seeds(args.seeds)
        if args.epochs is not None and args.epochs < 1:
            raise ReproduceError(f"--epochs {args.epochs}: must be >= 1")
        jobs = plan_jobs(args, table, settings, rows, seeds)
        out = Path(args.out)
        if args.dry_run:
            for j in jobs:
                print(f"{j.key:<50} {j.cfg.epochs} epochs -> {out / j.key}")
            return 0
        check_finished(jobs, out)
        from tune.plan import check_data

        for cfg in {j.cfg.dataset: j.cfg for j in jobs}.values():
            check_data(cfg)
        uri = absolute_tracking_uri(args.tracking_uri)
        check_tracking_uri(uri)
    except (ReproduceError, ConfigError, MissingDatasetError, DamagedFileError, TrackingError, sp.SpaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from tune.tracking.runs import SearchTracking

    experiment = args.experiment or f"reproduce_table{table.number}"
    tracking = SearchTracking(uri, experiment)
    print(f"table {table.number}, {args.dataset}: {len(jobs)} runs ({len(rows)} methods x {len(settings)} "
          f"settings x {len(seeds)} seeds); MLflow {redact_uri(uri)}, experiment {experiment}", flush=True)
    try:
        for job in jobs:
            run_job(job, out / job.key, uri, tracking.experiment_id)
    except (ConfigError, DamagedFileError) as exc:  # a run's checkpoint of another config, or damaged
        print(f"error: {exc}", file=sys.stderr)    # (the runs finished so far are reused next time)
        return 2
    finals = tracked_finals(uri, tracking.experiment_id, [j.key for j in jobs])
    text = markdown(table, args.dataset, jobs, finals)
    path = out / f"table{table.number}_{args.dataset}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from tune.process_exit import exit_now

    exit_now(main())
